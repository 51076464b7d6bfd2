"""The upload gate (review B1): Streamlit's upload endpoint refuses sessions that have not logged in, before
reading the body; every other request passes untouched. The browser test proves it in front of the real app."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from pages.upload_gate import AllowedSessions, UploadGate


def call(gate: UploadGate, method: str, path: str) -> tuple[int | None, bool]:
    """The response status the gate sent itself (None if it sent none) and whether the app behind it ran."""
    reached: list[bool] = []
    sent: list[dict] = []

    async def app(scope, receive, send) -> None:
        reached.append(True)

    async def receive() -> dict:
        raise AssertionError("the gate read the request body")

    async def send(message: dict) -> None:
        sent.append(message)

    gate.app = app
    # A thread of its own: the browser tests' Playwright keeps an event loop running on this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, gate({"type": "http", "method": method, "path": path}, receive, send)).result()
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    return status, bool(reached)


def test_an_upload_from_a_session_without_access_is_refused_unread():
    gate = UploadGate(app=None, allowed=AllowedSessions())  # type: ignore[arg-type]
    assert call(gate, "PUT", "/_stcore/upload_file/s1/f1") == (403, False)
    assert call(gate, "PUT", "/prefix/_stcore/upload_file/s1/f1") == (403, False)  # behind a base URL path


def test_a_session_with_access_uploads_until_it_loses_it():
    allowed = AllowedSessions()
    gate = UploadGate(app=None, allowed=allowed)  # type: ignore[arg-type]
    allowed.record("s1", True)
    assert call(gate, "PUT", "/_stcore/upload_file/s1/f1") == (None, True)
    assert call(gate, "PUT", "/_stcore/upload_file/s2/f1") == (403, False)  # another session is not let in
    allowed.record("s1", False)  # logged out
    assert call(gate, "PUT", "/_stcore/upload_file/s1/f2") == (403, False)


def test_everything_else_passes():
    gate = UploadGate(app=None, allowed=AllowedSessions())  # type: ignore[arg-type]
    assert call(gate, "DELETE", "/_stcore/upload_file/s1/f1") == (None, True)  # removing a file frees memory
    assert call(gate, "GET", "/") == (None, True)
    assert call(gate, "GET", "/_stcore/health") == (None, True)
