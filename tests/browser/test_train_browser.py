"""Capture -> Train in a real browser: record bursts with the fake webcam, train a tiny model from the Train page's
form, watch the live progress (surviving a reload), and read the finished run's charts and evaluation report.

Run inside the private network namespace: ``scripts/in_netns.sh .venv/bin/python -m pytest tests/browser -v``.
Screenshots land in ``test-artifacts/<test>/``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from expr_core.backbones import BACKBONES
from expr_core.data.store import DatasetStore
from expr_core.jobs import folder as job
from expr_core.jobs import runs
from expr_core.registry import ModelFiles, Registry
from tests.waiting import holds_for, wait_for

from .conftest import (
    metric_value,
    navigate,
    open_app_page,
    overlay_pixels,
    settle_number,
    start_camera,
    video_state,
    wait_playing,
    webrtc_frame,
)

CROPS = 8  # per burst
BURSTS = [("happy", 1), ("happy", 2), ("sad", 1), ("sad", 2)]  # two capture sessions per label: a grouped split
TINY = {
    "backbone": "mobilenetv3small",
    "weights": "none",
    "image_size": 48,
    "epochs_1": 3,
    "epochs_2": 4,  # early stopping (patience 3) cannot end it sooner: its bars stay up for several seconds
    "batch_size": 8,
    "quantize": False,
}
RUN_HEADING = re.compile(r"^Run \d{8}-\d{6}-\w+: (queued|running)$")
LAST_RUN_DONE = re.compile(r"^Last run (\d{8}-\d{6}-\w+): done$")
# A Vega chart that really drew something: vega-embed's canvas (or svg) with a non-zero size.
DRAWN_CHARTS_JS = """(root) => [...root.querySelectorAll('[data-testid="stVegaLiteChart"]')].map(el => {
    const c = el.querySelector('canvas, svg');
    return c ? {kind: c.tagName.toLowerCase(), width: c.clientWidth, height: c.clientHeight,
                label: (c.getAttribute('aria-label') || c.closest('[aria-label]')?.getAttribute('aria-label') || '')}
             : null;
})"""


def record_burst(page, store: DatasetStore, label: str) -> list:
    """Select ``label``, click Record, and wait for the burst's crops on disk; returns the new samples."""
    before = {s.id for s in store.samples()}
    radio = page.get_by_role("radiogroup", name="Label").get_by_role("radio", name=label, exact=True)
    if radio.get_attribute("aria-checked") != "true":
        radio.click()
    wait_for(lambda: radio.get_attribute("aria-checked") == "true", 10, f"label {label} selected")
    page.get_by_role("button", name="Record").click()
    wait_for(
        lambda: len([s for s in store.samples() if s.id not in before]) >= CROPS,
        60,
        f"{CROPS} new {label} crops in the workspace",
    )
    holds_for(
        lambda: len([s for s in store.samples() if s.id not in before]) == CROPS,
        0.5,
        f"exactly {CROPS} new {label} crops (the burst is complete: nothing more may arrive)",
    )
    return [s for s in store.samples() if s.id not in before]


def set_select_slider(page, label: str, value: str) -> None:
    """Move an ``st.select_slider`` to its first option with the keyboard (Home) and check it shows ``value``."""
    slider = page.get_by_test_id("stSlider").filter(has_text=label).get_by_role("slider")
    # while a rerun redraws the form, the old slider may still be on the page beside the new one
    wait_for(lambda: slider.count() == 1, 30, f"one {label!r} slider on the page")
    slider.focus()
    slider.press("Home")
    page.wait_for_function(
        "([el, v]) => el.getAttribute('aria-valuetext') === v || el.textContent.trim() === v",
        arg=[slider.element_handle(), value],
        timeout=10_000,
    )


def fill_form_number(page, label: str, value: int) -> None:
    """A number input inside a form: type and leave the box (Tab) so the value is kept until Submit."""
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")
    page.wait_for_function("([el, v]) => parseFloat(el.value) === v", arg=[box.element_handle(), value], timeout=10_000)


def fill_train_form(page, form: dict) -> None:
    """The Train page's settings for a cheap run: ``form``'s backbone from random weights ('none'), its input
    size, batch size and epochs, no quantised file (the conversion alone takes ~10 s here; the CLI tests cover
    the default)."""
    page.get_by_test_id("stSelectbox").filter(has_text="Backbone").click()
    page.get_by_role("option", name=BACKBONES[form["backbone"]].title, exact=True).click()
    page.get_by_role("radiogroup", name="Starting weights").get_by_text("none", exact=True).click()
    # Backbone and weights sit outside the form: each choice reruns the page and redraws the form with that
    # backbone's defaults. Only once the weights-none advice is shown is the form the final one to fill in.
    page.get_by_text("Without pretrained weights the network starts from random values").wait_for(timeout=30_000)
    set_select_slider(page, "Input size (pixels)", str(form["image_size"]))
    set_select_slider(page, "Batch size", str(form["batch_size"]))
    fill_form_number(page, "Phase 1 epochs (base frozen; 0 = skip)", form["epochs_1"])
    fill_form_number(page, "Phase 2 epochs (fine-tune all; 0 = skip)", form["epochs_2"])
    page.get_by_text("Advanced", exact=True).click()
    quantize = page.get_by_role("checkbox", name="Also make a quantised (faster) serving file")
    quantize.uncheck(force=True)
    assert not quantize.is_checked()


def live_progress_shown(page) -> str | None:
    """What the live section shows: the phase text with its bars, or None while it is not visible."""
    if page.get_by_role("heading", name=RUN_HEADING).count() == 0:
        return None
    if page.get_by_test_id("stProgress").count():
        return "bars: " + " | ".join(page.get_by_test_id("stProgress").all_inner_texts())
    starting = page.get_by_text(re.compile(r"(Starting the training process|Reading the dataset|Computing|Phase \d)"))
    return ("text: " + starting.first.inner_text()) if starting.count() else None


@pytest.mark.browser_timeout(420)
def test_capture_then_train_shows_the_run_with_its_charts(server_factory, page, artifacts: Path, results):
    server = server_factory()
    store = DatasetStore(server.workspace)
    began = time.monotonic()

    # -- Capture: burst settings first (every committed value reruns the page), then the camera.
    open_app_page(page, server.url + "/capture", "Capture")
    page.get_by_text("Burst settings", exact=True).click()
    settle_number(page, "Crops per burst", CROPS)
    settle_number(page, "Seconds between crops", 0.1)
    settle_number(page, "Countdown (s)", 0)
    tries = start_camera(page)
    wait_for(lambda: overlay_pixels(page)["green"] >= 300, 20, "the green face box in the returned video")
    sessions: dict[str, set[str]] = {}
    for label, n in BURSTS:
        if not (video_state(page) or {}).get("playing") or not wait_playing(page, timeout=5, settle=1):
            tries += start_camera(page)  # a label click's rerun stopped the camera: retry, and count it
        new = record_burst(page, store, label)
        assert len(new) == CROPS and {s.label for s in new} == {label} and {s.source for s in new} == {"webcam"}
        assert len({s.session for s in new}) == 1, "one burst is one capture session"
        sessions.setdefault(label, set()).update(s.session for s in new)
        page.screenshot(path=str(artifacts / f"01-captured-{label}-{n}.png"))
    assert {label: len(ids) for label, ids in sessions.items()} == {"happy": 2, "sad": 2}
    wait_for(lambda: metric_value(page, "sad") == str(2 * CROPS), 15, "the page's sad count")
    webrtc_frame(page).get_by_role("button", name="Stop", exact=True).click()
    captured = time.monotonic()
    results("capture_start_tries", tries)
    results("capture_seconds", round(captured - began, 1))

    # -- Train: tiny settings in the form, then Start.
    results("train_nav_clicks", navigate(page, "Train", "Train"))
    page.get_by_text(f"happy: {2 * CROPS} · sad: {2 * CROPS}").wait_for()
    fill_train_form(page, TINY)
    page.screenshot(path=str(artifacts / "02-train-form.png"), full_page=True)
    page.get_by_role("button", name="Start training").click()
    clicked = time.monotonic()

    # -- Live progress, and a reload while it runs reattaches to the job.
    first = wait_for(lambda: live_progress_shown(page), 30, "the live progress section")
    run_id = runs.active_run(server.workspace)
    assert run_id, "no training job is running in the workspace after Start"
    config = json.loads((runs.run_dir(server.workspace, run_id) / job.CONFIG_FILE).read_text())
    assert {k: config[k] for k in TINY} == TINY, "the run did not get the form's settings"
    bars = wait_for(
        lambda: (s := live_progress_shown(page)) and s.startswith("bars") and s, 120, "the epoch/batch progress bars"
    )
    page.screenshot(path=str(artifacts / "03-training.png"), full_page=True)
    assert re.search(r"epoch \d+/\d+", bars), bars
    state_before_reload = runs.run_status(server.workspace, run_id)["state"]
    page.reload()
    page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=60_000)
    if state_before_reload == "running" and runs.run_status(server.workspace, run_id)["state"] == "running":
        again = wait_for(lambda: live_progress_shown(page), 30, "the live progress after a reload")
        assert page.get_by_role("button", name="Start training").count() == 0, "the form shows while a job runs"
        # ...and its bars come back (unless the run ends first: the next phase may start with a long first batch).
        again = wait_for(
            lambda: (
                ((s := live_progress_shown(page)) and s.startswith("bars") and s)
                or (runs.active_run(server.workspace) is None and again)
            ),
            90,
            "the progress bars after a reload",
        )
        page.screenshot(path=str(artifacts / "04-reloaded.png"), full_page=True)
        reattached = True
    else:
        again, reattached = "(the run ended before the reload)", False
    results("train_reload_reattached", reattached)
    assert reattached, "training ended before the reload could be tested"

    # -- Done: the last run's section with learning curves and the evaluation report.
    done = page.get_by_role("heading", name=LAST_RUN_DONE)
    done.wait_for(timeout=240_000)
    finished = time.monotonic()
    assert LAST_RUN_DONE.match(done.inner_text().strip()).group(1) == run_id
    page.get_by_test_id("stMetric").filter(has_text="Validation accuracy").wait_for()
    accuracy = metric_value(page, "Validation accuracy")
    assert re.fullmatch(r"\d{1,3}\.\d%", accuracy), accuracy
    charts = wait_for(
        lambda: (
            (c := page.evaluate_handle("document").evaluate(DRAWN_CHARTS_JS))
            and len(c) >= 3
            and all(x and x["width"] > 100 and x["height"] > 100 for x in c)
            and c
        ),
        30,
        "three drawn Vega charts (loss, accuracy, confusion matrix)",
    )
    page.wait_for_timeout(1000)
    done.scroll_into_view_if_needed()  # Streamlit scrolls its main area, not the document: scroll, then shoot
    page.screenshot(path=str(artifacts / "05-done-curves.png"))
    page.get_by_text("Misclassified validation faces").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "06-done-report.png"))
    assert page.get_by_text("Misclassified validation faces").count() == 1
    assert page.get_by_role("link", name="Compare and activate models").count() == 1

    # On disk: a done run with a published model and the report the page showed.
    listed = Registry(server.workspace).runs()
    assert [(r.run_id, r.state) for r in listed] == [(run_id, "done")]
    report = Registry(server.workspace).metrics(run_id)
    assert f"{report['accuracy']:.1%}" == accuracy
    assert sum(map(sum, report["confusion_matrix"])) == report["n"] > 0
    assert ModelFiles(Registry(server.workspace).model_dir(run_id)).servable()  # base + head, or fine-tuned
    # The worker writes "done" and then exits (TensorFlow's teardown takes a few seconds on a busy machine).
    wait_for(lambda: not job.worker_alive(runs.run_dir(server.workspace, run_id)), 60, "the training worker to exit")

    results("train_first_progress", first)
    results("train_progress_after_reload", again)
    results("train_charts", [f"{c['kind']} {c['width']}x{c['height']}" for c in charts])
    results("train_validation_accuracy", accuracy)
    results("train_start_to_done_seconds", round(finished - clicked, 1))
    results("capture_and_train_total_seconds", round(finished - began, 1))
