"""Several people at once, and a remote-style (TURN) configuration, in a real browser.

- Three browser sessions (separate contexts, like three people's tabs) stream the fake webcam (15 fps) through
  the Capture page at the same time; every one of them gets processed frames back (the server's face box), and
  the frame rate each one sees is reported.
- A session that closes its tab gives back its camera worker: the server's media (UDP) sockets and threads
  return to what they were, and its memory does not grow from one opened-and-closed session to the next.
- With ICE servers configured (``ice_servers`` in secrets.toml, TURN on 127.0.0.2 where nothing listens), the browser's
  RTCPeerConnection gets exactly those servers; with none configured it gets an empty list: no public STUN
  server is ever added. Nothing here reaches beyond loopback (the suite runs in a private network namespace).

Run: ``scripts/in_netns.sh .venv/bin/python -m pytest tests/browser -v``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.waiting import wait_for

from .conftest import (
    FRAMES_JS,
    WEBRTC_IFRAME,
    open_app_page,
    overlay_pixels,
    start_camera,
    video_state,
    wait_playing,
    webrtc_frame,
)

SESSIONS = 3
MEASURE_SECONDS = 8.0
MIN_OVERLAY_PIXELS = 300
# Start to first frames took 4-23 s for the third stream with the machine loaded by others (load average 7);
# a Stop/Start retry after a too-short wait only adds load.
START_TIMEOUT = 45.0
START_TRIES = 4
MEASURE_ROUNDS = 3
MIN_FPS_EACH = 1.0  # "receiving processed frames": each viewer's video keeps advancing (2 shared cores; see output)
TURN = [{"urls": ["turn:127.0.0.2:3478"], "username": "u", "credential": "p"}]
TURN_SECRETS = """
[[ice_servers]]
urls = ["turn:127.0.0.2:3478"]
username = "u"
credential = "p"
"""

# Wraps RTCPeerConnection in every frame (the component's iframe included) to keep the configuration each call
# passes and the one the created connection reports (getConfiguration(): what Chromium will really use).
RECORD_RTC_JS = """(() => {
    const Original = window.RTCPeerConnection;
    if (!Original || Original.__recorded) return;
    const calls = [];
    window.__rtcCalls = calls;
    window.__pcs = [];
    function Recorded(config, ...rest) {
        const pc = new Original(config, ...rest);
        window.__pcs.push(pc);
        let effective = null;
        try { effective = pc.getConfiguration().iceServers; } catch (e) { effective = String(e); }
        calls.push({passed: config === undefined ? null : JSON.parse(JSON.stringify(config)), effective});
        return pc;
    }
    Recorded.prototype = Original.prototype;
    Object.setPrototypeOf(Recorded, Original);
    Recorded.__recorded = true;
    window.RTCPeerConnection = Recorded;
    if (window.webkitRTCPeerConnection) window.webkitRTCPeerConnection = Recorded;
})();"""


def _frames(video) -> dict | None:
    try:
        return video.evaluate(FRAMES_JS, timeout=5_000)
    except Exception:  # the stream dropped: the component removed its <video>
        return None


def measure_fps(pages: list, seconds: float) -> list[float | None]:
    """Frames each page's returned video decoded per second, over the same ``seconds`` for all of them
    (None for a page whose video vanished)."""
    videos = [webrtc_frame(p).locator("video").first for p in pages]
    first = [_frames(v) for v in videos]
    time.sleep(seconds)
    last = [_frames(v) for v in videos]
    return [
        round((b["frames"] - a["frames"]) / ((b["t"] - a["t"]) / 1000), 1) if a and b else None
        for a, b in zip(first, last, strict=True)
    ]


def ensure_playing(page) -> int:
    """Restart a session's camera if its stream dropped; returns the Start clicks it took (0: it was playing)."""
    if (video_state(page) or {}).get("playing") and wait_playing(page, timeout=10, settle=1):
        return 0
    return start_camera(page, max_tries=START_TRIES, timeout=START_TIMEOUT)


def start_until_boxed(page, what: str) -> int:
    """Start a session's camera until the server's face box shows in its returned video; returns the clicks.

    On 2 loaded cores a new stream can start and then stop before its first processed frame (streamlit-webrtc
    stops a stream whose ICE consent answers come late): a user presses Start again, and so does this, counted.
    """
    clicks = 0
    for _ in range(START_TRIES):
        clicks += start_camera(page, max_tries=START_TRIES, timeout=START_TIMEOUT)
        try:
            wait_for(lambda: overlay_pixels(page)["green"] >= MIN_OVERLAY_PIXELS, 30, what)
            return clicks
        except AssertionError:
            stop = webrtc_frame(page).get_by_role("button", name="Stop", exact=True)
            if stop.count():
                stop.click()
    raise AssertionError(f"{what}: not seen after {clicks} Start clicks")


@pytest.mark.browser_timeout(420)
def test_three_sessions_stream_at_once(app, browser_15fps, new_page, artifacts: Path, results):
    # 15 fps webcams (issue 5 counts 15 fps streams). Measured here: one 30 fps stream alone keeps ~1.1 cores of
    # the server busy (30 fps back), one 15 fps stream ~0.8; three 30 fps streams kept dropping while other jobs
    # loaded the machine (load average 9-10).
    # Open the three sessions first (a page load is the heaviest thing the server does), then start the cameras.
    pages = [new_page(in_browser=browser_15fps) for _ in range(SESSIONS)]
    for page in pages:
        open_app_page(page, app.url + "/capture", "Capture")
    tries, alone = [], None
    for i, page in enumerate(pages):
        clicked = time.monotonic()
        tries.append(start_until_boxed(page, f"session {i + 1}: the server's face box in its returned video"))
        results(f"sessions_start_seconds_{i + 1}", round(time.monotonic() - clicked, 1))
        if i == 0:
            alone = measure_fps(pages[:1], MEASURE_SECONDS / 2)[0]
    results("sessions_fps_alone", alone)
    results("sessions_start_tries", tries)

    # All three at once. streamlit-webrtc's frontend stops the camera when ICE turns "disconnected" (the server,
    # starved of CPU, answers consent checks late): restart such a stream and measure again, at most twice,
    # reporting every restart.
    rounds = []
    for _ in range(MEASURE_ROUNDS):
        restarts = [ensure_playing(page) for page in pages]
        fps = measure_fps(pages, MEASURE_SECONDS)
        playing = [bool((video_state(page) or {}).get("playing")) for page in pages]
        rounds.append({"restarts": restarts, "fps": fps, "playing_after": playing})
        if all(playing):
            break
    results("sessions_rounds", rounds)
    for i, page in enumerate(pages):
        page.screenshot(path=str(artifacts / f"session-{i + 1}.png"))
    results("sessions_fps_each", fps)
    results("sessions_fps_total", round(sum(f or 0 for f in fps), 1))
    assert all(playing), f"a session stopped while the three streamed: {rounds}"
    overlays = [overlay_pixels(page)["green"] for page in pages]
    results("sessions_overlay_green_pixels", overlays)
    assert all(n >= MIN_OVERLAY_PIXELS for n in overlays), overlays
    assert all(f is not None and f >= MIN_FPS_EACH for f in fps), f"a session got almost no frames: {fps} fps"
    for page in pages:
        webrtc_frame(page).get_by_role("button", name="Stop", exact=True).click()


SESSION_TTL_S = 5  # server.disconnectedSessionTTL for this test (default 120 s): how long a closed tab's session waits
TAB_CYCLES = 4
# Memory after each closed session, measured: 260, 283, 315, 324, 302, 314, 306 MB over 7 cycles: the first
# sessions warm caches and allocator arenas, then it stays flat. A session kept alive would add its page state
# and frame buffers every cycle.
RSS_GROWTH_LIMIT_MB = 60


def media_sockets(process: psutil.Process) -> int:
    """UDP sockets of the server: WebRTC's ICE/RTP transports (the server opens no others)."""
    return len(process.net_connections(kind="udp"))


@pytest.mark.browser_timeout(420)
def test_closing_a_tab_releases_its_camera_worker_and_memory(server_factory, new_page, results):
    server = server_factory(extra_env={"STREAMLIT_SERVER_DISCONNECTED_SESSION_TTL": str(SESSION_TTL_S)})
    process = psutil.Process(server.process.pid)
    idle_sockets = media_sockets(process)
    cycles = []
    for _cycle in range(TAB_CYCLES):
        page = new_page()
        open_app_page(page, server.url + "/capture", "Capture")
        start_camera(page)
        wait_for(lambda page=page: overlay_pixels(page)["green"] >= MIN_OVERLAY_PIXELS, 30, "the server's face box")
        streaming = {"sockets": media_sockets(process), "threads": process.num_threads()}
        assert streaming["sockets"] > idle_sockets, "a streaming session must hold media sockets"
        closed = time.monotonic()
        page.context.close()  # the user closes the tab, without pressing Stop
        wait_for(lambda: media_sockets(process) == idle_sockets, 60, "the closed tab's media sockets to close")
        released_s = round(time.monotonic() - closed, 1)
        time.sleep(SESSION_TTL_S + 3)  # the session itself (its page state) goes after the TTL
        cycles.append(
            {
                **streaming,
                "released_s": released_s,
                "threads_after": process.num_threads(),
                "rss_mb_after": round(process.memory_info().rss / 2**20),
            }
        )
    results("tab_close_cycles", cycles)
    warm, last = cycles[1], cycles[-1]
    assert last["threads_after"] <= cycles[0]["threads_after"] + 3, cycles  # no threads left behind per session
    assert all(c["threads_after"] < c["threads"] for c in cycles), cycles  # the stream's threads ended
    assert last["rss_mb_after"] - warm["rss_mb_after"] < RSS_GROWTH_LIMIT_MB, cycles


def recorded_rtc_calls(page) -> dict[str, list[dict]]:
    """The RTCPeerConnection calls recorded in each frame that made any: ``{frame url: calls}``."""
    found = {}
    for frame in page.frames:
        try:
            calls = frame.evaluate("window.__rtcCalls || []")
        except Exception:  # a frame navigating away
            continue
        if calls:
            found[frame.url] = calls
    return found


def start_and_read_config(page, url: str) -> tuple[list[dict], dict]:
    """Open Capture, click Start, and return the recorded calls of the component's frame plus what happened."""
    open_app_page(page, url + "/capture", "Capture")
    component = page.locator(WEBRTC_IFRAME).element_handle().content_frame()
    assert component.evaluate("typeof window.__rtcCalls") == "object", "the recorder did not run in the iframe"
    clicked = time.monotonic()
    webrtc_frame(page).get_by_role("button", name="Start", exact=True).click()
    wait_for(lambda: recorded_rtc_calls(page), 20, "an RTCPeerConnection to be created")
    played = wait_playing(page, timeout=25, settle=1)
    outcome = {"played": played, "seconds": round(time.monotonic() - clicked, 1)}
    calls = recorded_rtc_calls(page)
    assert list(calls) == [component.url], f"RTCPeerConnection made outside the component: {list(calls)}"
    return calls[component.url], outcome


@pytest.mark.browser_timeout(240)
def test_browser_receives_exactly_the_configured_ice_servers(app, server_factory, new_page, artifacts: Path, results):
    # Remote-style: TURN servers in the secrets file, as on a hosted deployment (nothing listens on
    # 127.0.0.2:3478, which is fine).
    remote = server_factory(secrets=TURN_SECRETS)
    page = new_page(RECORD_RTC_JS)
    calls, outcome = start_and_read_config(page, remote.url)
    page.screenshot(path=str(artifacts / "turn-configured.png"))
    results("ice_turn_configured_calls", calls)
    results("ice_turn_configured_outcome", outcome)
    assert [call["passed"]["iceServers"] for call in calls] == [TURN], calls
    assert all(server["urls"] == TURN[0]["urls"] for call in calls for server in call["effective"]), calls
    assert page.get_by_text("No ICE (STUN/TURN) servers are configured").count() == 0
    if webrtc_frame(page).get_by_role("button", name="Stop", exact=True).count():
        webrtc_frame(page).get_by_role("button", name="Stop", exact=True).click()

    # Nothing configured: an empty list, no public STUN server added behind the user's back.
    page = new_page(RECORD_RTC_JS)
    calls, outcome = start_and_read_config(page, app.url)
    results("ice_unconfigured_calls", calls)
    results("ice_unconfigured_outcome", outcome)
    assert [call["passed"]["iceServers"] for call in calls] == [[]], calls
    assert all(call["effective"] == [] for call in calls), calls
    assert "stun:" not in json.dumps(calls).lower()
    assert outcome["played"], "with no ICE servers the loopback call must still connect"
    webrtc_frame(page).get_by_role("button", name="Stop", exact=True).click()


# -- the hosted path through a real TURN relay (review D) ------------------------------------------------------
# The pair of candidates the connection really uses (the transport's selected pair), with their types.
SELECTED_PAIR_JS = """async () => {
    for (const pc of window.__pcs || []) {
        const stats = await pc.getStats();
        let id = null;
        stats.forEach(r => { if (r.type === 'transport' && r.selectedCandidatePairId) id = r.selectedCandidatePairId; });
        if (!id) stats.forEach(r => { if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') id = r.id; });
        if (!id) continue;
        const pair = stats.get(id), local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
        return {local: local.candidateType, localAddress: local.address, remote: remote.candidateType,
                state: pair.state, bytesReceived: pair.bytesReceived, bytesSent: pair.bytesSent};
    }
    return null;
}"""
RELAY_SECRETS = 'ice_transport_policy = "relay"\n' + TURN_SECRETS  # top-level keys before TOML tables


@pytest.fixture
def turn_server(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """coturn on 127.0.0.2:3478 (user u, password p), inside the test network namespace, relaying to loopback."""
    exe = shutil.which("turnserver")
    if exe is None:
        pytest.skip("coturn's turnserver is not installed (scripts/test.sh installs it with Chromium)")
    log = open(tmp_path / "turnserver.log", "wb")  # noqa: SIM115 - closed below, after the server
    command = [exe, "-n", "--listening-ip=127.0.0.2", "--relay-ip=127.0.0.2", "--listening-port=3478"]
    command += ["--min-port=49160", "--max-port=49300", "--lt-cred-mech", "--user=u:p", "--realm=studio.test"]
    command += ["--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls", "--log-file=stdout", "--simple-log"]
    process = subprocess.Popen([*command, f"--pidfile={tmp_path / 'turn.pid'}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: any(c.laddr.port == 3478 for c in psutil.Process(process.pid).net_connections(kind="udp")),
            20,
            "coturn to listen on 127.0.0.2:3478",
        )
        yield process
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.mark.browser_timeout(240)
def test_media_flows_through_a_real_turn_relay(
    server_factory, new_page, turn_server, tmp_path: Path, artifacts, results
):
    """With ``ice_transport_policy = "relay"`` the browser may only use the TURN relay: the processed video
    still plays, and the connection's selected candidate pair is a relay one, allocated on coturn."""
    server = server_factory(secrets=RELAY_SECRETS)
    page = new_page(RECORD_RTC_JS)
    calls, outcome = start_and_read_config(page, server.url)
    component = page.locator(WEBRTC_IFRAME).element_handle().content_frame()
    pair = wait_for(lambda: component.evaluate(SELECTED_PAIR_JS), 20, "a selected candidate pair")
    page.screenshot(path=str(artifacts / "relay-playing.png"))
    results("relay_outcome", outcome)
    results("relay_selected_pair", pair)
    assert [call["passed"].get("iceTransportPolicy") for call in calls] == ["relay"], calls
    assert outcome["played"], "the processed video did not play through the relay"
    assert pair["local"] == "relay" and pair["localAddress"] == "127.0.0.2", pair
    assert pair["bytesReceived"] > 10_000, pair  # video came back through it
    relayed = [c.laddr.port for c in psutil.Process(turn_server.pid).net_connections(kind="udp")]
    assert any(49160 <= port <= 49300 for port in relayed), relayed  # coturn allocated a relay port for the call
    webrtc_frame(page).get_by_role("button", name="Stop", exact=True).click()
