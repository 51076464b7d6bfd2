"""Uploads only from browser sessions that passed the login.

Streamlit accepts a file on ``/_stcore/upload_file/<session>/<file>`` from any open session and keeps it in
memory until the session ends, so a visitor who never typed the team password could fill the server's memory
(review B1: 3 x 60 MB stayed ten minutes). Streamlit has no upload hook, but ``st.App`` runs middleware before
its own routes: :class:`UploadGate` refuses an upload, before reading its body, unless the session is in
:data:`ALLOWED`, which :func:`pages.common.has_access` keeps up to date on every script run of that session.
"""

from __future__ import annotations

import logging
import re
import threading

from starlette.types import ASGIApp, Receive, Scope, Send

LOG = logging.getLogger(__name__)
UPLOAD_PATH = re.compile(r"/_stcore/upload_file/(?P<session>[^/]+)/")


class AllowedSessions:
    """Session ids whose last script run had access; shared by script threads and the server's event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()

    def record(self, session_id: str, allowed: bool) -> None:
        with self._lock:
            (self._ids.add if allowed else self._ids.discard)(session_id)

    def __contains__(self, session_id: object) -> bool:
        with self._lock:
            return session_id in self._ids


ALLOWED = AllowedSessions()


class UploadGate:
    """ASGI middleware: 403 for an upload (PUT) from a session without access; everything else passes."""

    def __init__(self, app: ASGIApp, allowed: AllowedSessions = ALLOWED) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = UPLOAD_PATH.search(scope.get("path", "")) if scope["type"] == "http" else None
        if match and scope.get("method") == "PUT" and match["session"] not in self.allowed:
            LOG.warning("Refused an upload from session %s, which has not logged in", match["session"])
            await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"Log in before uploading files."})
            return
        await self.app(scope, receive, send)
