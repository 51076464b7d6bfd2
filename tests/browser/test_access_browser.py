"""The team password on a fresh server, in a real browser: nothing of the app before it, not even page names,
and no request from any page to another machine.

Review B15: before the first login on a fresh server, the sidebar listed the helper modules of ``pages/``
(``common``, ``camera``, ``report``) as pages, because ``st.navigation`` had not run yet in the process.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from .conftest import open_app_page

HELPERS = ("common", "camera", "report")


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
