"""AppTest of the Train, Models and Detect pages before any model exists."""

from __future__ import annotations

from expr_core.data.store import DatasetStore
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


def test_train_warns_when_training_without_weights(app, workspace):
    open_page(app, "pages/train.py")
    weights = next(r for r in app.radio if r.label == "Starting weights")
    weights.set_value("none")
    next(b for b in app.button if b.label == "Start training").click()
    app.run()
    assert any("random values" in w.value and "higher learning rate" in w.value for w in app.warning)
