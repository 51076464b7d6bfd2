"""The team password on a fresh server, in a real browser: nothing of the app before it, not even page names,
and no request from any page to another machine.

Review B15: before the first login on a fresh server, the sidebar listed the helper modules of ``pages/``
(``common``, ``camera``, ``report``) as pages, because ``st.navigation`` had not run yet in the process.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from .conftest import open_app_page

HELPERS = ("common", "camera", "report", "upload_gate", "upload gate")


@pytest.mark.browser_timeout(180)
def test_before_the_password_the_sidebar_lists_nothing_and_after_it_the_app(server_factory, new_page, artifacts):
    server = server_factory(secrets='team_password = "s3cret-team"\n')
    page = new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    open_app_page(page, server.url + "/capture", "Facial Expression Studio")  # a deep link, first visit
    page.get_by_label("Team password").wait_for()
    page.screenshot(path=str(artifacts / "01-login.png"))
    links = page.locator("a").all_inner_texts()
    assert not [text for text in links if text.strip().lower() in HELPERS], links
    assert page.get_by_test_id("stSidebarNav").count() == 0
    page.get_by_label("Team password").fill("s3cret-team")
    page.get_by_role("button", name="Enter").click()
    page.get_by_role("heading", name="Capture", exact=True).wait_for(timeout=60_000)  # where the link pointed
    nav = page.get_by_test_id("stSidebarNav")
    assert [t.split()[-1] for t in nav.get_by_role("link").all_inner_texts()] == [  # after each icon's name
        "Home",
        "Capture",
        "Train",
        "Models",
        "Detect",
    ]
    page.screenshot(path=str(artifacts / "02-after-login.png"))
    # Review C1: nothing the pages load may leave this machine (the page icon came from fonts.gstatic.com).
    hosts = {urlsplit(url).hostname for url in requested if urlsplit(url).scheme in ("http", "https", "ws", "wss")}
    assert hosts <= {"127.0.0.1", "localhost"}, sorted(url for url in requested if "127.0.0.1" not in url)


UPLOAD_JS = """async ([session, xsrfName]) => {
    const token = document.cookie.split('; ').find(c => c.startsWith(xsrfName + '='))?.split('=')[1] ?? '';
    const form = new FormData();
    form.append('file', new Blob([new Uint8Array(1 << 20)]), 'probe.jpg');
    const response = await fetch(`/_stcore/upload_file/${session}/probe-${Date.now()}`,
                                 {method: 'PUT', body: form, headers: {'X-Xsrftoken': token}});
    return response.status;
}"""


def session_ids_of(page) -> list[str]:
    """The Streamlit session ids the server announces to ``page`` over its websocket (NewSession messages)."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    seen: list[str] = []

    def on_frame(payload) -> None:
        if isinstance(payload, bytes):
            msg = ForwardMsg.FromString(payload)
            if msg.WhichOneof("type") == "new_session":
                seen.append(msg.new_session.initialize.session_id)

    page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    return seen


@pytest.mark.browser_timeout(180)
def test_a_visitor_without_the_password_cannot_upload_and_a_signed_in_one_can(server_factory, new_page):
    """Review B1: the page of a visitor who never entered the password could PUT files into server memory
    through Streamlit's upload endpoint (3 x 60 MB held for ten minutes). The upload gate refuses them."""
    from streamlit.web.server.starlette.starlette_server_config import XSRF_COOKIE_NAME

    server = server_factory(secrets='team_password = "s3cret-team"\n')
    page = new_page()
    sessions = session_ids_of(page)
    open_app_page(page, server.url, "Facial Expression Studio")
    page.get_by_label("Team password").wait_for()
    assert sessions, "the server announced no session"
    assert page.evaluate(UPLOAD_JS, [sessions[-1], XSRF_COOKIE_NAME]) == 403
    page.get_by_label("Team password").fill("s3cret-team")
    page.get_by_role("button", name="Enter").click()
    page.get_by_test_id("stSidebarNav").wait_for(timeout=60_000)  # Home, behind the login
    assert page.evaluate(UPLOAD_JS, [sessions[-1], XSRF_COOKIE_NAME]) == 204  # the same session, now signed in
