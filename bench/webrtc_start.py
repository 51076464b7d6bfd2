"""How often does the camera fail to start on the first click? With and without pages/camera.py's guard.

streamlit-webrtc 0.79 sometimes drops the stream right after Start (0-2 frames, then the button shows
Start again). ``pages/camera.py`` guards against it (``keep_context_on_rerun``); ``EXPR_WEBRTC_GUARD=0``
switches the guard off so the two can be compared. For each setting this starts the app, then runs

- ``fresh``: N cycles on a fresh browser context each time: load /capture, click Start, wait for the
  first frames, watch them for a few seconds, click Stop;
- ``same``: N start -> frames -> stop cycles on one page;
- ``reruns``: like ``same``, but right after each Start click the page reruns twice (the "Largest face
  only" toggle is flipped and flipped back while the call is being set up), the situation in which a
  late script-run counter makes streamlit-webrtc throw the new stream away;

and counts the starts that needed another click (stream dropped, or no frames within the time limit).
Needs a non-127.0.0.1 address for WebRTC, so run it in the private namespace::

    scripts/in_netns.sh .venv/bin/python bench/webrtc_start.py --cycles 20 --out bench/webrtc_start.json

Prints (and writes with --out) JSON: ``{"guard_on": {"fresh": {...}, "same": {...}}, "guard_off": ...}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine  # noqa: E402
from tests.browser.conftest import (  # noqa: E402  (the test suite's server, clip and WebRTC helpers)
    CHROMIUM,
    CHROMIUM_FLAGS,
    browser_skip_reason,
    start_streamlit,
    wait_playing,
    webrtc_frame,
    write_y4m,
)


def one_start(page, max_tries: int, timeout: float, settle: float, reruns: bool = False) -> dict:
    """Click Start until the video plays for ``settle`` s; how many clicks and how long to frames."""
    frame = webrtc_frame(page)
    began = time.monotonic()
    for attempt in range(1, max_tries + 1):
        frame.get_by_role("button", name="Start", exact=True).wait_for(state="visible", timeout=30_000)
        clicked = time.monotonic()
        frame.get_by_role("button", name="Start", exact=True).click()
        if reruns:
            toggle = page.get_by_text("Largest face only", exact=True)
            for delay in (300, 400):
                page.wait_for_timeout(delay)
                toggle.click()
        if wait_playing(page, timeout=timeout, settle=settle):
            return {
                "tries": attempt,
                "seconds_to_stable": round(time.monotonic() - clicked - settle, 2),
                "seconds_total": round(time.monotonic() - began, 2),
            }
        stop = frame.get_by_role("button", name="Stop", exact=True)
        if stop.count():
            stop.click()
    return {"tries": None, "seconds_total": round(time.monotonic() - began, 2)}


def stop_camera(page) -> None:
    frame = webrtc_frame(page)
    stop = frame.get_by_role("button", name="Stop", exact=True)
    if stop.count():
        stop.click()
    frame.get_by_role("button", name="Start", exact=True).wait_for(state="visible", timeout=30_000)


def open_capture(context, url: str):
    page = context.new_page()
    page.goto(url + "/capture")
    try:
        webrtc_frame(page).get_by_role("button", name="Start", exact=True).wait_for(state="visible", timeout=60_000)
    except Exception:
        shot = Path(tempfile.gettempdir()) / f"webrtc_start-failed-{time.time():.0f}.png"
        page.screenshot(path=str(shot))
        print(f"the Capture page did not show Start; screenshot: {shot}", file=sys.stderr)
        raise
    return page


def summarise(starts: list[dict]) -> dict:
    ok = [s for s in starts if s["tries"]]
    return {
        "cycles": len(starts),
        "needed_retry": sum(1 for s in starts if s["tries"] != 1),
        "failed": sum(1 for s in starts if not s["tries"]),
        "tries": [s["tries"] for s in starts],
        "median_seconds_to_stable": round(statistics.median(s["seconds_to_stable"] for s in ok), 2) if ok else None,
    }


def run_setting(browser, root: Path, guard: bool, cycles: int, args) -> dict:
    server = start_streamlit(root, {"EXPR_WEBRTC_GUARD": "1" if guard else "0"})
    try:
        warm = browser.new_context()  # the first session of a fresh server is special (pages/ directory mode)
        warm.new_page().goto(server.url + "/")
        time.sleep(3)
        warm.close()
        results = {}
        fresh = []
        for i in range(cycles):
            context = browser.new_context()
            try:
                page = open_capture(context, server.url)
                fresh.append(one_start(page, args.max_tries, args.timeout, args.settle))
                stop_camera(page)
            finally:
                context.close()
            print(f"guard={guard} fresh {i + 1}/{cycles}: {fresh[-1]}", file=sys.stderr, flush=True)
        results["fresh"] = summarise(fresh)
        same = []
        context = browser.new_context()
        try:
            page = open_capture(context, server.url)
            for i in range(cycles):
                same.append(one_start(page, args.max_tries, args.timeout, args.settle))
                stop_camera(page)
                print(f"guard={guard} same {i + 1}/{cycles}: {same[-1]}", file=sys.stderr, flush=True)
        finally:
            context.close()
        results["same"] = summarise(same)
        if args.reruns:
            storm = []
            context = browser.new_context()
            try:
                page = open_capture(context, server.url)
                for i in range(cycles):
                    storm.append(one_start(page, args.max_tries, args.timeout, args.settle, reruns=True))
                    stop_camera(page)
                    print(f"guard={guard} reruns {i + 1}/{cycles}: {storm[-1]}", file=sys.stderr, flush=True)
            finally:
                context.close()
            results["reruns"] = summarise(storm)
        return results
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--guard", choices=["both", "on", "off"], default="both")
    parser.add_argument("--max-tries", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds from a click to stable frames")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds the video must keep playing")
    parser.add_argument("--no-reruns", dest="reruns", action="store_false", help="skip the 'reruns' cycles")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    reason = browser_skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    from playwright.sync_api import sync_playwright

    settings = {"both": [True, False], "on": [True], "off": [False]}[args.guard]
    report: dict = {"machine": machine(), "cycles": args.cycles, "settle_s": args.settle, "timeout_s": args.timeout}
    with tempfile.TemporaryDirectory(prefix="webrtc-start-") as tmp, sync_playwright() as pw:
        clip = write_y4m(Path(tmp) / "clip.y4m")
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={clip}"]
        )
        try:
            for guard in settings:
                report[f"guard_{'on' if guard else 'off'}"] = run_setting(
                    browser, Path(tmp) / f"guard-{guard}", guard, args.cycles, args
                )
        finally:
            browser.close()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
