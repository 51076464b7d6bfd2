"""pages/camera.py's guard against streamlit-webrtc dropping a live camera on a rerun of the same page.

The library resets its context when the script-run counter moved by more than one since it last rendered
(meant for "the user went to another page and came back"); Streamlit bumps that counter late, so an
ordinary rerun can look like that. The guard must step in on a same-page rerun, and must NOT step in after
navigation from another page (there the reset is right: the browser remounted the component).

The middle tests drive streamlit-webrtc's real ``_get_or_create_context``, so they also fail if an upgrade
changes the internals the guard relies on.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

component = pytest.importorskip("streamlit_webrtc.component")
from pages.camera import keep_context_on_rerun  # noqa: E402

KEY = "capture-camera"
ROOT = Path(__file__).resolve().parents[1]


def live_context(last_rendered: int):
    """A context as the library leaves it while the camera plays, last rendered at run ``last_rendered``."""
    context = component.WebRtcStreamerContext(
        worker=None, state=component.WebRtcStreamerState(playing=True, signalling=False)
    )
    context._last_rendered_run_count = last_rendered
    context._sdp_answer_json = '{"type": "answer", "sdp": "v=0"}'
    return context


def library_render(monkeypatch, state: dict, run_count: int):
    """What webrtc_streamer() does first on a run whose session counter reads ``run_count``."""
    monkeypatch.setattr(component, "st", SimpleNamespace(session_state=state))
    monkeypatch.setattr(component, "get_this_session_info", lambda: SimpleNamespace(script_run_count=run_count))
    return component._get_or_create_context(KEY)


# -- the decision ----------------------------------------------------------------------------------
def test_intervenes_on_a_rerun_of_the_same_page():
    state = {"previous_page": "capture", "current_page": "capture", KEY: live_context(3)}
    assert keep_context_on_rerun(state, KEY) is True
    assert state[KEY]._last_rendered_run_count is None


@pytest.mark.parametrize("previous", ["", "train", None], ids=["from-home", "from-another-page", "first-run"])
def test_leaves_the_library_alone_after_navigation_or_on_a_first_run(previous):
    state = {"previous_page": previous, "current_page": "capture", KEY: live_context(3)}
    assert keep_context_on_rerun(state, KEY) is False
    assert state[KEY]._last_rendered_run_count == 3


def test_does_nothing_before_the_component_exists():
    state = {"previous_page": "capture", "current_page": "capture"}
    assert keep_context_on_rerun(state, KEY) is False
    assert KEY not in state


# -- its effect on the real library ----------------------------------------------------------------
def test_a_late_counter_on_a_same_page_rerun_no_longer_stops_the_camera(monkeypatch):
    # Rendered at run 3; the counter now reads 5 because the end of run 4 was flushed late.
    state = {"previous_page": "capture", "current_page": "capture", KEY: live_context(3)}
    keep_context_on_rerun(state, KEY)
    context = library_render(monkeypatch, state, run_count=5)
    assert context.state.playing, "the guard let the library reset a live camera on a same-page rerun"
    assert context._sdp_answer_json is not None
    assert context._last_rendered_run_count == 5, "the library's own bookkeeping resumes after the guard"


def test_without_the_guard_the_library_does_reset(monkeypatch):
    """The failure the guard exists for (if this fails, the library changed and the guard may be obsolete)."""
    state = {KEY: live_context(3)}
    context = library_render(monkeypatch, state, run_count=5)
    assert not context.state.playing
    assert context._sdp_answer_json is None


def test_after_navigation_the_stale_context_is_still_reset(monkeypatch):
    # Back on Capture after a Home run: the browser remounted the component, the old state must go.
    state = {"previous_page": "", "current_page": "capture", KEY: live_context(3)}
    keep_context_on_rerun(state, KEY)
    context = library_render(monkeypatch, state, run_count=5)
    assert not context.state.playing
    assert context._sdp_answer_json is None


# -- the page bookkeeping it relies on (streamlit_app.py) ------------------------------------------
def _navigation_mode(monkeypatch) -> None:
    """Run AppTest the way a served app runs once st.navigation has run: not in 'pages/ directory' mode.

    Streamlit switches an app that has a folder named ``pages/`` to the old directory mode until
    ``st.navigation`` first runs, and AppTest resets that before every run: left alone, AppTest would run
    ``pages/capture.py`` directly and never run ``streamlit_app.py`` (see the browser test of deep links).
    """
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


def test_streamlit_app_records_previous_and_current_page(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    _navigation_mode(monkeypatch)
    monkeypatch.setattr(component, "get_this_session_info", lambda: None)  # AppTest has no real session
    monkeypatch.setenv("EXPR_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("EXPR_DOWNLOADS", "0")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.run()
    home = at.session_state["current_page"]
    at.switch_page("pages/capture.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    navigated = {k: at.session_state[k] for k in ("previous_page", "current_page")}
    assert navigated == {"previous_page": home, "current_page": "capture"}
    assert keep_context_on_rerun({**navigated, KEY: live_context(1)}, KEY) is False
    at.run()  # a rerun of the same page
    rerun = {k: at.session_state[k] for k in ("previous_page", "current_page")}
    assert rerun == {"previous_page": "capture", "current_page": "capture"}
    assert keep_context_on_rerun({**rerun, KEY: live_context(1)}, KEY) is True
