"""AppTest fixtures: a fresh workspace per test, no downloads, and streamlit-webrtc made renderable.

AppTest crashes on pages with ``webrtc_streamer`` (``Mock object has no attribute '_session_mgr'``:
streamlit-webrtc's session lookup catches only RuntimeError). Returning no session info lets the page
render; the component is inert, which is fine: AppTest never runs frames (the browser tests do).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _webrtc_without_session(monkeypatch):
    import streamlit_webrtc.component as component

    monkeypatch.setattr(component, "get_this_session_info", lambda: None)


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EXPR_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("EXPR_DOWNLOADS", "0")
    monkeypatch.setenv("EXPR_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.chdir(ROOT)
    return tmp_path / "ws"


@pytest.fixture
def app(workspace) -> AppTest:
    """The whole app (navigation included), not yet run."""
    return AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=30)


def open_page(app: AppTest, page: str) -> AppTest:
    """Run the app, then switch to ``page`` (a path like ``pages/capture.py``) and run it."""
    app.run()
    app.switch_page(page)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app
