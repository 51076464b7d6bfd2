"""AppTest of the Home and Capture pages: they render, show the dataset, and manage labels."""

from __future__ import annotations

import numpy as np
from skimage import data

from expr_core import atomic
from expr_core.data.review import ReviewQueue
from expr_core.data.store import DatasetStore, NewSample
from expr_core.jobs import folder as job
from expr_core.jobs import runs, video
from expr_core.live.pipeline import FaceReading
from expr_core.registry import Registry
from expr_core.train_config import TrainConfig
from tests.app.conftest import open_page


def _add(workspace, label: str, n: int) -> None:
    crop = np.ascontiguousarray(data.astronaut()[60:180, 170:290, ::-1])
    DatasetStore(workspace).add_samples([NewSample(label, "webcam", "s1", image=crop) for _ in range(n)])


def test_home_shows_counts_and_steps(app, workspace):
    _add(workspace, "happy", 3)
    app.run()
    assert not app.exception
    assert app.title[0].value == "Facial Expression Studio"
    assert [m.value for m in app.metric] == ["3"]
    assert any("happy: 3 · sad: 0" in c.value for c in app.caption)


def test_capture_page_renders_counts_and_falls_back_to_haar(app, workspace):
    _add(workspace, "sad", 2)
    open_page(app, "pages/capture.py")
    metrics = {m.label: m.value for m in app.metric}
    assert metrics == {"happy": "0", "sad": "2"}
    # No YuNet file and downloads off: the page says it uses the fallback and why.
    assert any("Haar fallback" in w.value for w in app.warning)


def test_the_burst_controls_never_say_stop_twice_and_the_box_number_is_explained(app, workspace):
    """Review C8: the camera's own Stop sat beside a second "Stop" (the burst's), and the box's score was unexplained."""
    open_page(app, "pages/capture.py")
    labels = [b.label for b in app.button]
    assert {"Record", "Snapshot", "Cancel"} <= set(labels) and "Stop" not in labels, labels
    assert next(b for b in app.button if b.label == "Cancel").help == "Stop the burst (the camera stays on)"
    assert any("how sure the detector is that it is a face" in c.value for c in app.caption)


def test_capture_page_adds_and_rejects_labels(app, workspace):
    open_page(app, "pages/capture.py")
    new_label = next(t for t in app.text_input if t.label == "New label")
    new_label.input("surprised")
    next(b for b in app.button if b.label == "Add label").click()
    app.run()
    assert DatasetStore(workspace).labels() == ["happy", "sad", "surprised"]

    new_label = next(t for t in app.text_input if t.label == "New label")
    new_label.input("../etc")
    next(b for b in app.button if b.label == "Add label").click()
    app.run()
    assert any("not allowed" in e.value for e in app.error)
    assert DatasetStore(workspace).labels() == ["happy", "sad", "surprised"]


def test_record_without_label_is_refused_with_a_message(app, workspace):
    DatasetStore(workspace).delete_label("happy")
    DatasetStore(workspace).delete_label("sad")
    open_page(app, "pages/capture.py")
    next(b for b in app.button if b.label == "Record").click()
    app.run()
    assert any("Pick a label" in e.value for e in app.error)


def test_delete_all_data_needs_the_confirmation_word(app, workspace):
    """It says it removes every sample, label, review item and model: it does (and video jobs, which show faces)."""
    _add(workspace, "happy", 2)
    reading = FaceReading(1, (0, 0, 32, 32), "happy", 0.55, {"happy": 0.55, "sad": 0.45})
    assert ReviewQueue(workspace).add(np.zeros((32, 32, 3), np.uint8), reading, "someone")
    run_id, folder = runs.create_run(workspace, {"backbone": "earlier"})
    (folder / "model").mkdir()
    (folder / "model" / "model.tflite").write_bytes(b"model learnt from the faces")
    atomic.write_json(folder / "model" / "labels.json", ["happy", "sad"])
    atomic.write_json(folder / job.STATUS_FILE, {"job_id": run_id, "state": "done", "created": 1.0})
    Registry(workspace).activate(run_id)
    video_job = job.create_job(video.videos_dir(workspace), "video")
    atomic.write_json(video_job / job.STATUS_FILE, {"job_id": video_job.name, "state": "done", "created": 1.0})
    app.run()
    form_input = next(t for t in app.text_input if t.label.startswith("Type DELETE"))
    form_input.input("yes")
    next(b for b in app.button if b.label == "Delete all data").click()
    app.run()
    assert any("Nothing deleted" in e.value for e in app.error)
    assert DatasetStore(workspace).stats()["happy"] == 2

    form_input = next(t for t in app.text_input if t.label.startswith("Type DELETE"))
    form_input.input("DELETE")
    next(b for b in app.button if b.label == "Delete all data").click()
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert DatasetStore(workspace).stats() == {"happy": 0, "sad": 0}
    assert list((workspace / "dataset" / "images").glob("*.jpg")) == []
    assert ReviewQueue(workspace).items() == [] and runs.run_ids(workspace) == []
    assert Registry(workspace).active_id() is None and video.video_jobs(workspace) == []
    assert any("1 runs with their models and 1 video jobs" in s.value for s in app.success)


def test_the_gallery_sets_whose_face_the_selected_samples_are(app, workspace):
    """Validation keeps people apart, so a burst recorded without a name can be given its person."""
    _add(workspace, "happy", 3)
    open_page(app, "pages/capture.py")
    boxes = [c for c in app.checkbox if c.label == "select"]
    assert len(boxes) == 3
    boxes[0].check()
    boxes[1].check()
    next(t for t in app.text_input if t.label == "Person in the selected samples").input("Ann")
    app.run()
    next(b for b in app.button if b.label == "Set person").click()
    app.run()
    assert not app.exception
    people = sorted(str(s.who) for s in DatasetStore(workspace).samples())
    assert people == ["Ann", "Ann", "None"]


def test_retrain_starts_a_run_with_the_last_settings(app, workspace):
    """After labelling faces from the review queue, one button trains again with what the last run used."""
    last = TrainConfig.for_backbone("mini-xception", epochs_2=3, seed=7).to_dict()
    earlier, folder = runs.create_run(workspace, last)
    atomic.write_json(folder / job.STATUS_FILE, {"job_id": earlier, "state": "done", "created": 1.0})
    open_page(app, "pages/capture.py")
    retrain = next(b for b in app.button if b.label == "Retrain")
    retrain.click().run()
    assert not app.exception, [e.value for e in app.exception]
    started = [r for r in runs.run_ids(workspace) if r != earlier]
    assert len(started) == 1 and runs.run_config(workspace, started[0]) == last
    job.wait(runs.run_dir(workspace, started[0]), timeout_s=60)  # an empty dataset: it fails at once, saying why
    assert "no samples" in (runs.run_status(workspace, started[0]).get("error") or "")
