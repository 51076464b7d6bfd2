"""AppTest of the pages once a real (tiny) model exists: Detect, Train's report, Models, the review queue."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest

from expr_core import atomic
from expr_core.data.review import ReviewQueue
from expr_core.data.store import DatasetStore
from expr_core.jobs import folder as job
from expr_core.jobs import video
from expr_core.live.pipeline import EVERY_FACE, FaceReading
from expr_core.registry import ModelFiles, Registry
from pages import report
from tests.app.conftest import open_page


@pytest.fixture
def workspace_with_model(workspace, tiny_model):
    """A copy of the tiny-model workspace, so each test may change it."""
    shutil.copytree(tiny_model, workspace)
    return workspace


def test_detect_shows_the_active_model_and_its_tabs(app, workspace_with_model):
    run_id = Registry(workspace_with_model).active_id()
    open_page(app, "pages/detect.py")
    assert any(run_id in c.value and "happy, sad" in c.value for c in app.caption)
    assert [t.label for t in app.tabs] == ["Live", "Images", "Video file"]
    assert [s.label for s in app.slider][:1] == ["Smoothing (seconds)"]
    (per_frame,) = app.select_slider
    assert per_frame.label == "Faces classified per frame" and per_frame.value == "1"
    per_frame.set_value("all").run()
    assert not app.exception
    assert app.session_state["detect_pipeline"].schedule == EVERY_FACE


def test_train_page_reports_the_last_run(app, workspace_with_model):
    run = Registry(workspace_with_model).runs()[0]
    open_page(app, "pages/train.py")
    assert any(f"Last run {run.run_id}: done" in h.value for h in app.subheader)
    labels = [m.label for m in app.metric]
    assert "Validation accuracy" in labels and "Balanced accuracy" in labels
    assert not app.exception


def test_train_page_says_the_last_run_is_not_usable_and_reads_it_per_person(app, workspace_with_model):
    open_page(app, "pages/train.py")  # the tiny run calls every face the same (it was activated by force)
    (error,) = [e.value for e in app.error if "not usable" in e.value]
    assert "it was made active by hand anyway" in error and "not clearly better than guessing" in error
    assert any(
        "Validation holds other capture sessions of people also in training (unknown)" in c.value for c in app.caption
    )
    assert any(list(d.value.columns)[:2] == ["person", "n"] for d in app.dataframe)


def test_models_page_asks_before_activating_a_model_that_is_not_usable(app, workspace_with_model):
    registry = Registry(workspace_with_model)
    (run,) = registry.runs()
    (workspace_with_model / "active.json").unlink()
    open_page(app, "pages/models.py")
    assert app.dataframe[0].value["usable"].tolist() == ["no"]
    assert any("not usable, so it was not made active" in e.value for e in app.error)
    activate = next(b for b in app.button if b.label == "Activate")
    assert activate.disabled
    next(c for c in app.checkbox if c.label == "I understand this model is not usable").check().run()
    next(b for b in app.button if b.label == "Activate").click().run()
    assert not app.exception and registry.active_id() == run.run_id
    app.run()
    assert any("not usable, it was made active by hand anyway" in e.value for e in app.error)


def test_the_train_form_starts_from_the_last_runs_settings(app, workspace_with_model):
    open_page(app, "pages/train.py")  # the tiny run: mobilenetv3small, weights none, 32 px, batch 8, 3 + 0 epochs
    assert any("settings of the last run" in c.value for c in app.caption)
    assert next(s for s in app.selectbox if s.label == "Backbone").value == "mobilenetv3small"
    assert next(r for r in app.radio if r.label == "Starting weights").value == "none"
    sliders = {s.label: s.value for s in app.select_slider}
    assert sliders["Batch size"] == 8 and sliders["Input size (pixels)"] == 96  # 32 px is not offered: default
    numbers = {n.label: n.value for n in app.number_input}
    assert numbers["Phase 1 epochs (base frozen; 0 = skip)"] == 3
    assert numbers["Phase 2 epochs (fine-tune all; 0 = skip)"] == 0


def test_models_page_lists_activates_and_deletes(app, workspace_with_model):
    registry = Registry(workspace_with_model)
    (run,) = registry.runs()
    open_page(app, "pages/models.py")
    assert app.dataframe[0].value["run"].tolist() == [run.run_id]
    assert app.dataframe[0].value["active"].tolist() == ["●"]
    next(b for b in app.button if b.label == "Yes, delete").click()
    app.run()
    assert registry.runs() == [] and registry.active_id() is None
    assert DatasetStore(workspace_with_model).stats()["happy"] > 0  # the dataset is untouched


def test_review_queue_items_are_labelled_into_the_dataset(app, workspace_with_model, astronaut_bgr):
    queue = ReviewQueue(workspace_with_model)
    crop = cv2.resize(astronaut_bgr[60:200, 170:310], (96, 96))
    for _ in range(2):
        queue.add(crop, FaceReading(1, (0, 0, 96, 96), "happy", 0.55, {"happy": 0.55, "sad": 0.45}), "cy")
    before = DatasetStore(workspace_with_model).stats()
    open_page(app, "pages/capture.py")
    assert any(t.label == "Review (2)" for t in app.tabs)
    picks = [c for c in app.checkbox if c.key and c.key.startswith("rev-")]
    picks[0].check()
    app.run()
    app.selectbox(key="review_label").set_value("sad")
    next(b for b in app.button if b.label == "Add 1 to dataset").click()
    app.run()
    after = DatasetStore(workspace_with_model).stats()
    assert after["sad"] == before["sad"] + 1 and len(queue.items()) == 1
    assert DatasetStore(workspace_with_model).samples("sad")[-1].source == "review"


def test_video_jobs_of_the_same_file_are_told_apart_by_their_start_time(app, workspace_with_model):
    """Review C9: two jobs of clip.mp4 were listed identically."""
    for created in (1_700_000_000.0, 1_700_000_600.0):
        folder = job.create_job(video.videos_dir(workspace_with_model), "video", name="clip.mp4")
        atomic.write_json(
            folder / job.STATUS_FILE, {**job.read_status(folder), "state": "cancelled", "created": created}
        )
    open_page(app, "pages/detect.py")
    shown = [m.value for m in app.markdown if "clip.mp4" in m.value]
    assert len(shown) == 2 and len(set(shown)) == 2, shown
    assert all("started" in text for text in shown)


def test_a_first_model_gets_its_downloads_put_together_on_request(app, workspace_with_model):
    registry = Registry(workspace_with_model)
    (run,) = registry.runs()
    assert ModelFiles(registry.model_dir(run.run_id)).is_head_model and registry.files(run.run_id) == {}
    open_page(app, "pages/models.py")
    assert not list(app.get("download_button"))  # nothing to download yet
    next(b for b in app.button if b.label == "Prepare downloads").click()
    app.run(timeout=600)
    assert not app.exception, [e.value for e in app.exception]
    assert set(registry.files(run.run_id)) == {"keras", "tflite"}
    assert {b.proto.label for b in app.get("download_button")} == {"Download .keras", "Download TFLite"}


def test_the_confusion_matrix_has_square_cells_and_level_labels(app, workspace_with_model):
    """Review C7: two rows about 18 px high, with rotated axis labels."""
    open_page(app, "pages/train.py")
    (chart,) = [c for c in app.get("vega_lite_chart") if "Confusion matrix" in c.proto.spec]
    spec = json.loads(chart.proto.spec)
    assert spec["width"] == spec["height"] >= 2 * report.CELL_PX
    for layer in spec["layer"]:
        for channel in ("x", "y"):
            assert layer["encoding"][channel]["axis"]["labelAngle"] == 0


def test_a_broken_active_model_file_is_reported_on_detect_not_a_traceback(app, workspace_with_model):
    """Review B9: a broken active .tflite reached the Detect page as a traceback."""
    registry = Registry(workspace_with_model)
    files = ModelFiles(registry.model_dir(registry.active_id()))
    files.served().write_bytes(b"not a model any more")
    files.served(quantized=True).write_bytes(b"not a model any more")
    app.run()
    app.switch_page("pages/detect.py")
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("not a usable LiteRT model" in e.value for e in app.error), [e.value for e in app.error]
