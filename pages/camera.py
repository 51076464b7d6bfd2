"""The webcam component as every camera page uses it: explicit ICE servers and a stale-state guard.

Not a page itself (it is not listed in streamlit_app.py's navigation).
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from typing import Any

import av
import streamlit as st
from streamlit_webrtc import (
    WebRtcMode,
    get_cloudflare_ice_servers,
    get_hf_ice_servers,
    get_twilio_ice_servers,
    webrtc_streamer,
)

from pages import common

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# TURN services whose credentials streamlit-webrtc can fetch: provider -> (secret names, fetcher).
TURN_PROVIDERS: dict[str, tuple[tuple[str, ...], Callable[..., Any]]] = {
    "cloudflare": (("CLOUDFLARE_TURN_KEY_ID", "CLOUDFLARE_TURN_KEY_API_TOKEN"), get_cloudflare_ice_servers),
    "twilio": (("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"), get_twilio_ice_servers),
    "huggingface": (("HF_TOKEN",), get_hf_ice_servers),
}


def ice_servers() -> tuple[list[dict[str, Any]], str | None]:
    """ICE servers for both ends of the call, and a warning when a configured TURN service failed.

    An explicit list (secrets ``ice_servers`` or ``EXPR_ICE_SERVERS``) wins; otherwise the first TURN
    service whose credentials are all set (in secrets or the environment) is asked for short-lived
    credentials. With nothing configured the list is empty: no public server is ever added behind the
    user's back, and the call works on this machine and its network only.
    """
    explicit = common.settings().ice_servers
    if explicit:
        return list(explicit), None
    for provider, (names, fetch) in TURN_PROVIDERS.items():
        values = [common.secret(name) for name in names]
        if all(values):
            try:
                return list(fetch(*values)), None
            except ValueError as exc:
                return [], f"Could not get TURN credentials from {provider} ({exc}); remote viewers may not connect."
    return [], None


def keep_context_on_rerun(state: MutableMapping[str, Any] | Any, key: str) -> bool:
    """Stop streamlit-webrtc from resetting a live camera on an ordinary rerun of the same page.

    streamlit-webrtc 0.79 resets its context when the session's script-run counter has moved by more
    than one since it last rendered, to detect that the user navigated away and back. Streamlit bumps
    that counter asynchronously when it *sends* the end-of-run message, so quick reruns (the Start
    click itself triggers some) can read it late and look like a page change: the camera stops right
    after Start (measured: 7 of 39 first clicks). We know better: ``streamlit_app.py`` records the
    page of the previous full run, and when it is this same page the context is not stale, so the
    check is disabled for this run. Returns True when it intervened.

    ``EXPR_WEBRTC_GUARD=0`` switches it off (read in :func:`camera`), only so that
    ``bench/webrtc_start.py`` can compare Start reliability with and without it.
    """
    same_page = state.get("previous_page") is not None and state.get("previous_page") == state.get("current_page")
    context = state.get(key)
    if same_page and context is not None and hasattr(context, "_last_rendered_run_count"):
        context._last_rendered_run_count = None
        return True
    return False


def remote_viewer_warning(servers: list[dict[str, Any]]) -> str | None:
    """Why a viewer on another machine may see no video: no TURN/STUN servers are configured."""
    if servers:
        return None
    host = (st.context.headers.get("Host") or "").rsplit(":", 1)[0]
    if host in LOCAL_HOSTS or not host:
        return None
    return (
        "No ICE (STUN/TURN) servers are configured, so the video only connects when the browser can reach this "
        "server directly (same machine or network). For viewers elsewhere, configure a TURN server: see the "
        "README section 'Hosting'."
    )


def camera(key: str, frame_callback: Callable[[av.VideoFrame], av.VideoFrame]):
    """Render the webcam streamer; ``frame_callback`` runs on a worker thread for every frame."""
    servers, turn_error = ice_servers()
    relay_only = common.settings().ice_transport_policy == "relay"
    no_relay = "ICE transport policy 'relay' needs a TURN server, and none is configured: the video cannot connect."
    for warning in filter(
        None, [turn_error, remote_viewer_warning(servers), no_relay if relay_only and not servers else None]
    ):
        st.warning(warning, icon=":material/wifi_off:")
    if os.environ.get("EXPR_WEBRTC_GUARD", "1") != "0":  # EXPR_WEBRTC_GUARD=0: off, only for bench/webrtc_start.py
        keep_context_on_rerun(st.session_state, key)
    return webrtc_streamer(
        key=key,
        mode=WebRtcMode.SENDRECV,
        rtc_configuration={"iceServers": servers, "iceTransportPolicy": common.settings().ice_transport_policy},
        media_stream_constraints={"video": {"width": {"ideal": 640}, "height": {"ideal": 480}}, "audio": False},
        video_frame_callback=frame_callback,
        async_processing=True,
    )
