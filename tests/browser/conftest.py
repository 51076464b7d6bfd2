"""Real-browser fixtures: a fake webcam clip, a ``streamlit run server.py`` server, headless Chromium, page helpers.

Every browser test (Capture now; Train and Detect later) builds on these:

- ``webcam_clip``: a Y4M video (640x480, 30 fps, C420jpeg) made at test time from a real face photo
  (``skimage.data.astronaut()``), with a slow sway so it is a real video. Chromium loops it as its webcam.
- ``streamlit_server`` (one per session) and ``app`` (per test: the server, plus its log copied into
  ``test-artifacts/<test>/`` when the test fails). ``start_streamlit()`` starts an extra server with
  other environment variables.
- ``browser`` (one Chromium per session, flags from ``docs/browser-testing.md`` of the shared docs)
  and ``page`` (a fresh context and page per test).
- ``artifacts``: the test's folder under ``test-artifacts/`` for screenshots.
- ``webrtc`` helpers: :func:`start_camera` (clicks Start, retries when streamlit-webrtc drops the stream,
  returns how many tries it took) and :func:`overlay_pixels` (reads the returned video's pixels).

WebRTC needs an address other than 127.0.0.1 (aioice never offers 127.0.0.1 as a host candidate): run
the suite through ``scripts/in_netns.sh`` (a private network namespace with only loopback plus
127.0.0.2, which also proves nothing leaves the machine). Without such an address the tests SKIP with
the reason instead of hanging in "signalling".

Every browser test has an overall time limit (default ``BROWSER_TEST_TIMEOUT`` = 180 s, or
``@pytest.mark.browser_timeout(seconds)``), and the server dies with the test process even if that is
killed (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("EXPR_CHROMIUM", "/usr/bin/chromium")
BROWSER_TEST_TIMEOUT = 180.0
SERVER_START_TIMEOUT = 60.0
WIDTH, HEIGHT, FPS, CLIP_SECONDS = 640, 480, 30, 3

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]  # fmt: skip


# -- environment checks -----------------------------------------------------------------------------
def webrtc_host_addresses() -> list[str]:
    """The IPv4 addresses the server's ICE (aioice) would offer: all but 127.0.0.1, exactly as aioice picks them."""
    from aioice.ice import get_host_addresses

    return get_host_addresses(use_ipv4=True, use_ipv6=False)


def browser_skip_reason() -> str | None:
    """Why browser tests cannot run here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set EXPR_CHROMIUM)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    if not webrtc_host_addresses():
        return (
            "no IPv4 address other than 127.0.0.1: WebRTC (aioice) would hang in 'signalling'. Run the tests in "
            "a private network namespace: scripts/in_netns.sh .venv/bin/python -m pytest tests/browser"
        )
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: real-browser test (headless Chromium + streamlit run)")
    config.addinivalue_line("markers", "browser_timeout(seconds): overall time limit of a browser test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = None
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)
            reason = reason or browser_skip_reason() or ""
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(node: pytest.Item) -> bool:
    return any(getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))


# -- overall time limit -----------------------------------------------------------------------------
class BrowserTestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _time_limit(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail (never hang) a browser test that runs longer than its limit; covers setup, call and teardown."""
    marker = request.node.get_closest_marker("browser_timeout")
    limit = float(marker.args[0]) if marker else BROWSER_TEST_TIMEOUT

    def on_alarm(signum, frame):
        raise BrowserTestTimeout(f"browser test exceeded its overall limit of {limit:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    # Last resort if the exception cannot get through (e.g. stuck in C code): dump stacks and exit. The server
    # dies with us (PR_SET_PDEATHSIG), Chromium with Playwright's driver.
    faulthandler.dump_traceback_later(limit + 60, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


# -- artifacts --------------------------------------------------------------------------------------
@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """``test-artifacts/<test name>/``, emptied first: screenshots and logs of this test (gitignored)."""
    folder = ARTIFACTS / request.node.name.replace("/", "_")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


# -- the fake webcam --------------------------------------------------------------------------------
def face_canvas(offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A 640x480 BGR frame: the astronaut photo (real face) scaled to 420x420 on a grey background."""
    from skimage import data

    photo = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (420, 420), interpolation=cv2.INTER_AREA)
    canvas = np.full((HEIGHT, WIDTH, 3), 96, np.uint8)
    x0 = int(round((WIDTH - 420) / 2 + offset[0]))
    y0 = int(round((HEIGHT - 420) / 2 + offset[1]))
    canvas[y0 : y0 + 420, x0 : x0 + 420] = photo
    return canvas


def write_y4m(path: Path, seconds: float = CLIP_SECONDS, fps: int = FPS) -> Path:
    """Write the fake webcam clip: the face sways a few pixels (one full period per clip, so the loop is seamless)."""
    frames = int(seconds * fps)
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            phase = 2 * math.pi * i / frames
            frame = face_canvas((12 * math.sin(phase), 6 * math.sin(2 * phase)))
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())  # Y, then U, then V planes
    return path


@pytest.fixture(scope="session")
def webcam_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake webcam clip (about 40 MB, in tmp; never committed)."""
    return write_y4m(tmp_path_factory.mktemp("webcam") / "astronaut.y4m")


# -- the Streamlit server ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shared_models_dir() -> Path | None:
    """``$EXPR_SHARED/models`` (default ``../shared/models``) when it exists; else the app uses Haar."""
    folder = Path(os.environ.get("EXPR_SHARED") or REPO.parent / "shared") / "models"
    return folder if folder.is_dir() else None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, however it dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class StreamlitServer:
    """A running ``streamlit run server.py`` (the app behind its upload gate)."""

    url: str
    workspace: Path
    log_path: Path
    process: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the server's own process group, SIGKILL after 10 s; then end the job workers (training,
        video, base preparation) it started, which run in sessions of their own so that they outlive a page reload."""
        try:
            self._stop_server()
        finally:
            stop_job_workers(self.workspace)

    def _stop_server(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def stop_job_workers(workspace: Path, grace: float = 10.0) -> list[str]:
    """SIGTERM (then SIGKILL) every live worker of the workspace's training runs, video jobs and base
    preparations; returns the folders whose worker had to be stopped. Workers are recognised by their recorded ``pid:start-time``
    identity (``expr_core.jobs.folder``), so an unrelated process with a recycled pid is never signalled."""
    from expr_core.jobs import folder as job

    stopped = []
    folders = [folder for kind in ("runs", "videos", "prepare") for folder in Path(workspace, kind).glob("*/")]
    for folder in folders:
        if not job.worker_alive(folder):
            continue
        pid = int(job.worker_identity(folder).split(":")[0])
        stopped.append(folder.name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while job.worker_alive(folder) and time.monotonic() < deadline:
            time.sleep(0.2)
        if job.worker_alive(folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return stopped


# Never inherited by the test server: app settings, and TURN credentials that would make it call out.
ISOLATED_ENV_PREFIXES = ("EXPR_", "STREAMLIT_", "TWILIO_", "CLOUDFLARE_TURN_", "HF_TOKEN")


def start_streamlit(
    root: Path, extra_env: dict[str, str] | None = None, secrets: str = "", timeout: float = SERVER_START_TIMEOUT
) -> StreamlitServer:
    """Start the app on a free port with its workspace in ``root/workspace``; returns once /_stcore/health is ok.

    The server sees only ``root/secrets.toml`` (``secrets``, empty by default), not the developer's secrets.
    """
    root.mkdir(parents=True, exist_ok=True)
    models = shared_models_dir()
    (root / "secrets.toml").write_text(secrets)
    env = {k: v for k, v in os.environ.items() if not k.startswith(ISOLATED_ENV_PREFIXES)}
    env.update(
        EXPR_HOME=str(root / "workspace"),
        EXPR_DOWNLOADS="0",
        EXPR_CACHE_DIR=str(root / "cache"),
        EXPR_MODELS_DIR=str(models or root / "no-models"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    port = free_port()
    log_path = root / f"streamlit-{port}.log"
    cmd = [
        sys.executable, "-m", "streamlit", "run", "server.py", "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
        "--secrets.files", str(root / "secrets.toml"),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip
    server = StreamlitServer(f"http://127.0.0.1:{port}", Path(env["EXPR_HOME"]), log_path, process, env)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {process.returncode}:\n{server.log()[-3000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as response,
        ):
            if response.status == 200:
                return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"streamlit not healthy after {timeout:.0f} s:\n{server.log()[-3000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def streamlit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamlitServer]:
    """One app server for the whole session (workspace in tmp). Tests sharing it compare counts before/after."""
    server = start_streamlit(tmp_path_factory.mktemp("app"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def app(
    streamlit_server: StreamlitServer, request: pytest.FixtureRequest, artifacts: Path
) -> Iterator[StreamlitServer]:
    """The session's server for this test; its log goes to the test's artifacts when the test fails."""
    assert streamlit_server.process.poll() is None, f"streamlit died:\n{streamlit_server.log()[-3000:]}"
    yield streamlit_server
    if _failed(request.node):
        (artifacts / "streamlit.log").write_text(streamlit_server.log())


# -- the browser ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def playwright_driver():
    """The one Playwright driver of the session (the sync API allows one per thread); every browser comes from it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


def launch_chromium(pw, clip: Path):
    """Headless Debian Chromium whose webcam plays ``clip`` (never ``playwright install``)."""
    return pw.chromium.launch(
        executable_path=CHROMIUM, timeout=60_000, args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={clip}"]
    )


@pytest.fixture(scope="session")
def browser(playwright_driver, webcam_clip: Path):
    """Headless Debian Chromium with the fake webcam (30 fps), shared by the session's tests."""
    with contextlib.closing(launch_chromium(playwright_driver, webcam_clip)) as browser:
        yield browser


@pytest.fixture(scope="session")
def webcam_clip_15fps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same fake webcam at 15 frames per second (a typical webcam in dim light; half the server's work)."""
    return write_y4m(tmp_path_factory.mktemp("webcam15") / "astronaut-15fps.y4m", fps=15)


@pytest.fixture
def browser_15fps(playwright_driver, webcam_clip_15fps: Path):
    """A second Chromium whose webcam runs at 15 fps, for this test only."""
    with contextlib.closing(launch_chromium(playwright_driver, webcam_clip_15fps)) as browser:
        yield browser


@pytest.fixture
def page(browser, request: pytest.FixtureRequest, artifacts: Path):
    """A fresh context and page; a screenshot and the browser console go to the artifacts on failure."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    try:
        yield page
    finally:
        if _failed(request.node):
            with contextlib.suppress(Exception):
                page.screenshot(path=str(artifacts / "failure.png"), full_page=True, timeout=10_000)
            (artifacts / "console.log").write_text("\n".join(console))
        with contextlib.suppress(Exception):
            context.close()


# -- WebRTC helpers ---------------------------------------------------------------------------------
WEBRTC_IFRAME = "iframe[title*='webrtc']"
START_ACK_TIMEOUT = 20.0  # the longest a Start click may take to turn the button into Stop before we retry

VIDEO_STATE_JS = """(video) => ({playing: !video.paused && video.readyState >= 2 && video.videoWidth > 0,
                                  time: video.currentTime, width: video.videoWidth, height: video.videoHeight})"""

# Count pixels of the overlay's green (BGR 80,200,60 = RGB 60,200,80) in the video's current frame.
OVERLAY_PIXELS_JS = """(video) => {
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth; canvas.height = video.videoHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(video, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let green = 0;
    for (let i = 0; i < data.length; i += 4) {
        const r = data[i], g = data[i + 1], b = data[i + 2];
        if (g > 150 && r < 130 && b < 140 && g - Math.max(r, b) > 70) green++;
    }
    return {green, width: canvas.width, height: canvas.height};
}"""


def green_pixels(bgr: np.ndarray) -> int:
    """The same overlay-green test as OVERLAY_PIXELS_JS, on a BGR array (to check the clip has none)."""
    b, g, r = (bgr[..., i].astype(int) for i in range(3))
    return int(np.count_nonzero((g > 150) & (r < 130) & (b < 140) & (g - np.maximum(r, b) > 70)))


def webrtc_frame(page):
    return page.frame_locator(WEBRTC_IFRAME)


def video_state(page) -> dict | None:
    video = webrtc_frame(page).locator("video")
    if video.count() == 0:
        return None
    return video.first.evaluate(VIDEO_STATE_JS)


def wait_playing(page, timeout: float = 20.0, settle: float = 2.0) -> bool:
    """True once the returned video has played and advanced for ``settle`` seconds; False when it does not
    within ``timeout`` or the component shows Start again (streamlit-webrtc dropped the stream).

    On a busy machine the component can keep showing Start for many seconds after the click (measured: 9 s
    with a load average of 9) before it switches to Stop: that is not a drop, and clicking Start again then
    starts a second connection that breaks both. Start counts as a drop only once Stop has been shown, or
    when the click has not registered within :data:`START_ACK_TIMEOUT`.
    """
    frame = webrtc_frame(page)
    clicked = time.monotonic()
    first: tuple[float, float] | None = None  # (wall clock, video time) of the first frame seen playing
    left_start = False
    while time.monotonic() - clicked < timeout:
        if not _shows_start(frame):
            left_start = True
        elif left_start or time.monotonic() - clicked > START_ACK_TIMEOUT:
            return False
        state = video_state(page)
        if state and state["playing"]:
            if first is None:
                first = (time.monotonic(), state["time"])
            elif time.monotonic() - first[0] >= settle and state["time"] > first[1]:
                return True
        page.wait_for_timeout(200)
    return False


def _shows_start(frame) -> bool:
    return frame.get_by_role("button", name="Start", exact=True).count() > 0


def start_camera(page, max_tries: int = 3, timeout: float = 20.0) -> int:
    """Click Start until frames arrive; returns how many clicks it took (1 = no retry needed).

    streamlit-webrtc 0.79 can drop the stream right after Start (see pages/camera.py); a retry after a drop
    is allowed but counted, and raises AssertionError after ``max_tries``.
    """
    frame = webrtc_frame(page)
    for attempt in range(1, max_tries + 1):
        start = frame.get_by_role("button", name="Start", exact=True)
        start.wait_for(state="visible", timeout=30_000)
        start.click()
        if wait_playing(page, timeout):
            return attempt
        # Not playing: if the component still shows Stop, click it so the next Start is clean.
        stop = frame.get_by_role("button", name="Stop", exact=True)
        if stop.count():
            stop.click()
    raise AssertionError(f"the camera did not start in {max_tries} tries")


def overlay_pixels(page) -> dict:
    """Overlay-green pixels in the returned video's current frame (proves the server drew on the frames)."""
    return webrtc_frame(page).locator("video").first.evaluate(OVERLAY_PIXELS_JS)


# -- more servers, more pages, results --------------------------------------------------------------
@pytest.fixture
def server_factory(
    tmp_path: Path, request: pytest.FixtureRequest, artifacts: Path
) -> Iterator[Callable[..., StreamlitServer]]:
    """``server_factory(extra_env=None, prepare=None, secrets="")``: a fresh server with a workspace of its own
    in the test's tmp folder; ``prepare(workspace)`` runs before the server starts (e.g. copy a trained model
    in). Every server is stopped (with its job workers) at the end; logs go to the artifacts on failure."""
    servers: list[StreamlitServer] = []

    def make(
        extra_env: dict[str, str] | None = None, prepare: Callable[[Path], object] | None = None, secrets: str = ""
    ) -> StreamlitServer:
        root = tmp_path / f"server-{len(servers)}"
        if prepare is not None:
            (root / "workspace").parent.mkdir(parents=True, exist_ok=True)
            prepare(root / "workspace")
        server = start_streamlit(root, extra_env, secrets)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for i, server in enumerate(servers):
            server.stop()
            if _failed(request.node):
                (artifacts / f"streamlit-{i}.log").write_text(server.log())


@pytest.fixture
def new_page(browser, request: pytest.FixtureRequest, artifacts: Path):
    """``new_page(init_script=None, in_browser=None)``: another context and page (a separate browser session, like
    another user's tab), in the session's browser unless ``in_browser`` is given; closed at the end, with a
    screenshot and console log of each on failure."""
    opened: list[tuple[object, object, list[str]]] = []

    def make(init_script: str | None = None, in_browser=None):
        context = (in_browser or browser).new_context(viewport={"width": 1440, "height": 1000})
        context.set_default_timeout(30_000)
        if init_script:
            context.add_init_script(init_script)  # runs in every frame, the component's iframe included
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        opened.append((context, page, console))
        return page

    try:
        yield make
    finally:
        for i, (context, page, console) in enumerate(opened):
            if _failed(request.node):
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(artifacts / f"failure-{i}.png"), full_page=True, timeout=10_000)
                (artifacts / f"console-{i}.log").write_text("\n".join(console))
            with contextlib.suppress(Exception):
                context.close()


@pytest.fixture
def results(record_property, capsys) -> Callable[[str, object], None]:
    """``results(name, value)``: a measured number, printed in the test output and kept as a JUnit property."""

    def record(name: str, value: object) -> None:
        record_property(name, value)
        with capsys.disabled():
            print(f"\n[result] {name} = {value}", end="")

    return record


# -- page helpers -----------------------------------------------------------------------------------
def open_app_page(page, url: str, heading: str, timeout: float = 60.0) -> None:
    """Go to ``url`` and wait for the page's title heading (the first script run can take a while)."""
    page.goto(url)
    page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=timeout * 1000)


def open_tab(page, name: str, timeout: float = 30.0) -> None:
    """Click the tab ``name`` until it is the selected one: a click landing while the page redraws its tabs can
    be lost, and what the hidden tab then holds (an upload's file list) never becomes visible."""
    tab = page.get_by_role("tab", name=name)
    wait_for(lambda: tab.click() or tab.get_attribute("aria-selected") == "true", timeout, f"the {name} tab", 0.5)


def navigate(page, link: str, heading: str, tries: int = 3, timeout: float = 30.0) -> int:
    """Click the sidebar link ``link`` until the page's ``heading`` shows; returns the clicks it took.

    Seen once with a load average of 13: a click on Train while the Capture page's 0.5 s fragment was rerunning
    did not navigate within 60 s. A user clicks again; so does this helper, and the count is reported.
    """
    for attempt in range(1, tries + 1):
        page.get_by_test_id("stSidebarNav").get_by_role("link", name=link).click()
        try:
            page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=timeout * 1000)
            return attempt
        except Exception:
            if attempt == tries:
                raise
    raise AssertionError("unreachable")


# Values of the st.metric elements labelled exactly ``label``, skipping stale ones: while a fragment or the page
# reruns, Streamlit keeps the previous run's elements (data-stale="true") beside the new ones for a moment.
METRIC_VALUES_JS = """(label) => [...document.querySelectorAll('[data-testid="stMetric"]')]
    .filter(m => !m.closest('[data-stale="true"]'))
    .filter(m => (m.querySelector('[data-testid="stMetricLabel"]')?.innerText || '').trim() === label)
    .map(m => m.querySelector('[data-testid="stMetricValue"]').innerText.trim())"""


def metric_value(page, label: str, timeout: float = 10.0) -> str:
    """The value of the (one, current) ``st.metric`` labelled ``label``."""
    deadline = time.monotonic() + timeout
    while True:
        values = page.evaluate(METRIC_VALUES_JS, label)
        if len(values) == 1:
            return values[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"expected one current metric {label!r}, found {values}")
        page.wait_for_timeout(100)


def settle_number(page, label: str, value: float) -> None:
    """Type into a number input and commit it (Enter), as a user does; this reruns the page."""
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_function("([el, v]) => parseFloat(el.value) === v", arg=[box.element_handle(), value], timeout=10_000)


# -- reading a <video>'s pixels ---------------------------------------------------------------------
# For each target RGB colour, the pixels within ``tol`` on every channel; and the share of the top ``band`` rows
# within ``band_tol`` of ``band_rgb`` (the Detect page's status banner). Works for the WebRTC video and for a file's <video>.
COLOR_STATS_JS = """(video, [targets, tol, band, bandRgb, bandTol]) => {
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth; canvas.height = video.videoHeight;
    if (!canvas.width || !canvas.height) return null;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(video, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const near = (i, c, t) => Math.abs(data[i] - c[0]) <= t && Math.abs(data[i + 1] - c[1]) <= t
                              && Math.abs(data[i + 2] - c[2]) <= t;
    const counts = targets.map(() => 0);
    let bandHits = 0;
    const bandEnd = band * canvas.width * 4;
    for (let i = 0; i < data.length; i += 4) {
        for (let k = 0; k < targets.length; k++) if (near(i, targets[k], tol)) counts[k]++;
        if (i < bandEnd && bandRgb && near(i, bandRgb, bandTol)) bandHits++;
    }
    return {counts, band: band ? bandHits / (band * canvas.width) : 0,
            width: canvas.width, height: canvas.height};
}"""


def color_stats(
    video,
    targets_rgb: list[tuple[int, int, int]],
    tol: int = 40,
    band: int = 0,
    band_rgb: tuple[int, int, int] | None = None,
    band_tol: int = 15,
) -> dict | None:
    """:data:`COLOR_STATS_JS` on a ``<video>`` locator (None before its first frame)."""
    return video.evaluate(
        COLOR_STATS_JS, [[list(c) for c in targets_rgb], tol, band, list(band_rgb) if band_rgb else None, band_tol]
    )


def color_stats_np(
    bgr: np.ndarray,
    targets_rgb: list[tuple[int, int, int]],
    tol: int = 40,
    band: int = 0,
    band_rgb: tuple[int, int, int] | None = None,
    band_tol: int = 15,
) -> dict:
    """The same counts on a BGR array (the raw fake-webcam frame), to show the colours come from the overlay."""
    rgb = bgr[..., ::-1].astype(int)

    def near(c, t):
        return np.all(np.abs(rgb - np.array(c)) <= t, axis=-1)

    return {
        "counts": [int(near(c, tol).sum()) for c in targets_rgb],
        "band": float(near(band_rgb, band_tol)[:band].mean()) if band and band_rgb else 0.0,
    }


# Frames the <video> has decoded so far (Chromium's playback quality counters).
FRAMES_JS = "(v) => { const q = v.getVideoPlaybackQuality(); return {frames: q.totalVideoFrames, dropped: q.droppedVideoFrames, t: performance.now()}; }"
