"""AppTest of the Train, Models and Detect pages before any model exists."""

from __future__ import annotations

import numpy as np

from expr_core import atomic
from expr_core.data.store import DatasetStore, NewSample
from expr_core.jobs import folder as job
from expr_core.jobs import runs
from tests.app.conftest import open_page
from tests.app.test_home_capture_pages import _add


def test_detect_without_a_model_leads_to_capture_and_train(app, workspace):
    open_page(app, "pages/detect.py")
    assert any("no trained model yet" in i.value for i in app.info)
    assert not app.tabs  # nothing else is shown


def test_models_page_without_runs(app, workspace):
    open_page(app, "pages/models.py")
    assert any("No models yet" in i.value for i in app.info)


def test_train_refuses_a_dataset_that_cannot_be_validated(app, workspace):
    _add(workspace, "happy", 12)  # one label only, one capture session
    open_page(app, "pages/train.py")
    next(b for b in app.button if b.label == "Start training").click()
    app.run()
    assert not app.exception
    assert any("at least two labels" in e.value for e in app.error)
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())


def test_train_refuses_a_single_capture_session_per_label(app, workspace):
    _add(workspace, "happy", 12)
    _add(workspace, "sad", 12)
    open_page(app, "pages/train.py")
    next(b for b in app.button if b.label == "Start training").click()
    app.run()
    assert any("one capture session" in e.value for e in app.error)
    assert DatasetStore(workspace).stats() == {"happy": 12, "sad": 12}


def test_train_warns_before_start_when_validation_would_reward_knowing_who_it_is(app, workspace):
    crop = np.zeros((48, 48, 3), np.uint8)
    DatasetStore(workspace).add_samples(
        [
            NewSample(label, "webcam", f"{person}-{label}", captured_by=person, image=crop)
            for person in ("Ann", "Bob")
            for label in ("happy", "sad")
            for _ in range(4)
        ]
    )
    open_page(app, "pages/train.py")
    warnings = [w.value for w in app.warning if "recognises who it is" in w.value]
    assert len(warnings) == 2 and any("for Ann, or add another person" in w for w in warnings)
    assert not (workspace / "runs").exists()  # said before anything started


def test_train_warns_when_training_without_weights(app, workspace):
    open_page(app, "pages/train.py")
    weights = next(r for r in app.radio if r.label == "Starting weights")
    weights.set_value("none")
    next(b for b in app.button if b.label == "Start training").click()
    app.run()
    assert any("random values" in w.value and "higher learning rate" in w.value for w in app.warning)


def test_a_fresh_workspace_detects_with_the_starter_model(app, workspace, prepared_cache, fer_models, monkeypatch):
    """Nothing captured, nothing trained: Detect still works, with the pretrained model, and says what it is."""
    monkeypatch.setenv("EXPR_MODELS_DIR", str(fer_models))
    monkeypatch.setenv("EXPR_CACHE_DIR", str(prepared_cache))
    DatasetStore(workspace).add_label("thumbs-up")
    open_page(app, "pages/detect.py")
    (note,) = [w.value for w in app.warning if "Starter model" in w.value]
    assert "not trained on your team" in note and "cannot read 'thumbs-up'" in note
    assert any("Model **starter**" in c.value and "happy, sad" in c.value for c in app.caption)
    assert [t.label for t in app.tabs] == ["Live", "Images", "Video file"]
    assert app.session_state["detect_pipeline"].classifier.labels == ["happy", "sad"]


def test_the_train_page_says_before_start_which_backbone_works_offline(app, workspace, fer_models, monkeypatch):
    monkeypatch.setenv("EXPR_MODELS_DIR", str(fer_models))
    open_page(app, "pages/train.py")
    (backbone,) = [s for s in app.selectbox if s.label == "Backbone"]
    assert backbone.value == "mini-xception"
    assert any("ImageNet weights for DenseNet201 cannot be downloaded here" in i.value for i in app.info)
    backbone.set_value("densenet201").run()
    assert any("this run would stop at once" in w.value for w in app.warning)


def test_a_failed_run_says_why_above_the_form(app, workspace):
    """Review C2: the 'could not download the ImageNet weights' error sat below the re-shown form, off-screen."""
    run_id, folder = runs.create_run(workspace, {"backbone": "densenet201"})
    why = "Could not download the ImageNet weights for DenseNet201 (no internet)."
    atomic.write_json(folder / job.STATUS_FILE, {"job_id": run_id, "state": "failed", "error": why, "created": 1.0})
    open_page(app, "pages/train.py")
    order: list[str] = []

    def walk(node) -> None:
        for child in getattr(node, "children", {}).values():
            if getattr(child, "type", "") in ("error", "subheader"):
                order.append(f"{child.type}: {child.value}")
            walk(child)

    walk(app.main)
    failed = next(i for i, text in enumerate(order) if why in text)
    form = next(i for i, text in enumerate(order) if text == "subheader: New training run")
    assert failed < form, order
    assert sum(why in text for text in order) == 1, order  # said once


def test_phase_2s_first_batch_shows_moving_progress(app, workspace):
    """Review C3 / issue 11: during phase 2's long first batch the page showed a frozen time and no progress."""
    _, folder = runs.create_run(workspace, {"backbone": "densenet201"})
    writer = job.JobWriter(folder)  # this process plays the running worker
    try:
        writer.event(job.EventType.PHASE, phase="finetune", title="Phase 2: fine-tuning the whole network")
        writer.status(phase="finetune", first_batch_expected_s=100.0, version=1, val_accuracy=0.9, usable=True)
        open_page(app, "pages/train.py")
        bars = [p for p in app.get("progress") if "first batch" in p.proto.text]
        assert len(bars) == 1 and "of about 100 s (last time)" in bars[0].proto.text, [p.proto.text for p in bars]
        assert any("Model ready" in s.value for s in app.success)
    finally:
        writer.close()


def test_the_train_page_says_when_training_runs_on_a_ray_cluster(app, workspace, monkeypatch):
    open_page(app, "pages/train.py")
    assert not any("Ray cluster" in c.value for c in app.caption)  # the local backend by default
    monkeypatch.setenv("EXPR_RAY_ADDRESS", "ray://head.example:10001")
    open_page(app, "pages/train.py")
    assert any("runs on the Ray cluster at ray://head.example:10001" in c.value for c in app.caption)
