"""One tiny model trained through the command line (both phases), then served, evaluated, listed and imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from expr_core.data.store import DatasetStore
from expr_core.jobs.folder import JobError
from expr_core.jobs.run_cli import import_keras
from expr_core.registry import FINETUNED_DIR, MODEL_DIR, ModelFiles, Registry
from expr_core.serving import Classifier, HeadClassifier, open_model
from tests.conftest import REPO
from tests.test_train_split import TINY_ARGS, add_face_samples

TIMEOUT_S = 600


def cli(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "expr_core", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, _astronaut: np.ndarray) -> dict:
    """The CLI's JSON result for a tiny run with phase 2 switched on for one epoch."""
    workspace = tmp_path_factory.mktemp("e2e") / "ws"
    add_face_samples(workspace, _astronaut)
    args = [*TINY_ARGS, "--epochs-2", "1"]  # the later --epochs-2 wins
    done = cli("train", "--workspace", workspace, *args, "--json")
    return {**json.loads(done.stdout), "workspace": workspace, "stderr": done.stderr}


@pytest.fixture(scope="module")
def labelled_folder(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset's crops as ``<label>/<id>.jpg``: what ``evaluate`` reads."""
    folder = tmp_path_factory.mktemp("labelled")
    store = DatasetStore(trained["workspace"])
    for sample in store.samples():
        (folder / sample.label).mkdir(exist_ok=True)
        (folder / sample.label / f"{sample.id}.jpg").write_bytes(store.image_path(sample).read_bytes())
    return folder


def test_cli_training_reports_and_publishes_both_phases(trained: dict):
    assert trained["state"] == "done"
    assert trained["labels"] == ["happy", "sad"]
    assert np.array(trained["confusion_matrix"]).sum() == 6  # the two held-out sessions
    assert "Phase 1" in trained["stderr"] and "finetune epoch 1/1" in trained["stderr"]
    registry = Registry(trained["workspace"])
    first = ModelFiles(registry.version_dir(trained["run_id"], 1))
    assert first.is_head_model and not first.keras.is_file()  # the first model: prepared base + head
    if trained["version"] == 2:  # fine-tuning beat it: the run's model is the whole fine-tuned network
        assert Path(trained["model_path"]).name == FINETUNED_DIR
        assert Path(trained["keras_path"]).is_file() and Path(trained["tflite_path"]).is_file()
    history = registry.history(trained["run_id"])
    assert set(history) == {"head", "finetune"} and len(history["finetune"]["val_accuracy"]) == 1


def test_models_lists_and_activates(trained: dict, tmp_path: Path):
    listed = json.loads(cli("models", "--workspace", trained["workspace"], "--json").stdout)
    assert [(r["run_id"], r["state"], r["active"]) for r in listed] == [
        (trained["run_id"], "done", trained["activated"])
    ]
    assert listed[0]["val_accuracy"] == trained["val_accuracy"] and listed[0]["usable"] == trained["usable"]
    failed = cli("models", "activate", "20990101-000000-abcd", "--workspace", trained["workspace"], check=False)
    assert failed.returncode == 2 and "no run" in failed.stderr.lower()


def test_evaluate_on_a_labelled_folder(trained: dict, labelled_folder: Path):
    report = json.loads(
        cli(
            "evaluate",
            "--model",
            trained["workspace"] / "runs" / trained["run_id"],
            "--data",
            labelled_folder,
            "--cropped",
            "--json",
        ).stdout
    )
    assert report["n"] == 18 and set(report["per_class"]) == {"happy", "sad"}
    assert 0 <= report["accuracy"] <= 1 and 0 <= report["balanced_accuracy"] <= 1
    assert np.array(report["confusion_matrix"]).sum() == 18


def test_detect_with_a_model_labels_every_face(trained: dict, face_jpg: Path):
    run = trained["workspace"] / "runs" / trained["run_id"]
    for model in filter(None, (trained["tflite_path"], run, trained["model_path"], run / MODEL_DIR)):
        result = json.loads(cli("detect", face_jpg, "--model", model, "--detector", "haar", "--json").stdout)
        face = result[0]["faces"][0]
        assert face["label"] in ("happy", "sad") and set(face["probs"]) == {"happy", "sad"}
        assert sum(face["probs"].values()) == pytest.approx(1, abs=1e-3)


def test_classifier_batches_threads_and_colour_order(trained: dict, astronaut_bgr: np.ndarray):
    classifier = open_model(Path(trained["model_path"]))
    crops = [cv2.resize(astronaut_bgr[y : y + 200, x : x + 200], (64, 64)) for x, y in ((150, 50), (100, 100), (0, 0))]
    together = classifier.predict(crops)
    one_by_one = np.concatenate([classifier.predict([c]) for c in crops])
    assert together.shape == (3, 2)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(classifier.predict([c[..., ::-1] for c in crops], bgr=False), together, atol=1e-5)
    results = [None] * 8

    def work(i: int) -> None:
        results[i] = classifier.predict(crops[: 1 + i % 3])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, probs in enumerate(results):
        np.testing.assert_allclose(probs, together[: 1 + i % 3], atol=1e-5)
    assert classifier.predict([]).shape == (0, 2)


def test_importing_a_keras_model_makes_a_servable_run(trained: dict, astronaut_bgr: np.ndarray):
    registry = Registry(trained["workspace"])
    run_id = import_keras(registry.workspace, Path(trained["keras_path"]), ["happy", "sad"])
    info = registry.get(run_id)
    assert (info.state, info.kind, info.labels, info.usable) == ("done", "import", ["happy", "sad"], None)
    assert info.active is not trained["activated"]  # an import goes live by itself only if no model is active
    crop = [cv2.resize(astronaut_bgr[50:250, 150:350], (64, 64))]
    imported = open_model(registry.model_dir(run_id)).predict(crop)
    np.testing.assert_allclose(imported, open_model(Path(trained["model_path"])).predict(crop), atol=1e-4)
    registry.delete(run_id, force=info.active)
    assert run_id not in [r.run_id for r in registry.runs()]


def test_importing_something_that_is_not_a_keras_model_says_so(trained: dict, tmp_path: Path):
    fake = tmp_path / "model.keras"
    fake.write_bytes(b"this is not a zip archive")
    with pytest.raises(JobError, match="not a Keras model file"):
        import_keras(trained["workspace"], fake, ["happy", "sad"])
    assert len(Registry(trained["workspace"]).runs()) == 1  # nothing half-imported is left behind


@pytest.fixture(scope="module")
def first_model(tmp_path_factory: pytest.TempPathFactory, _astronaut: np.ndarray) -> dict:
    """The CLI's JSON result for a tiny run with phase 2 off: its model is the prepared base plus the head."""
    workspace = tmp_path_factory.mktemp("first") / "ws"
    add_face_samples(workspace, _astronaut)
    done = cli("train", "--workspace", workspace, *TINY_ARGS, "--json")
    return {**json.loads(done.stdout), "workspace": workspace}


def test_a_first_model_is_served_as_base_plus_head_and_assembles_into_the_same_network(
    first_model: dict, astronaut_bgr: np.ndarray
):
    folder = Path(first_model["model_path"])
    files = ModelFiles(folder)
    assert files.is_head_model and first_model["keras_path"] is None and first_model["tflite_path"] is None
    assert sorted(Registry(first_model["workspace"]).files(first_model["run_id"])) == []
    made = json.loads(
        cli("models", "assemble", first_model["run_id"], "--workspace", first_model["workspace"], "--json").stdout
    )
    assert set(made) == {"keras", "tflite"} and files.keras.is_file() and files.tflite.is_file()
    crops = [cv2.resize(astronaut_bgr[y : y + 200, x : x + 200], (64, 64)) for x, y in ((150, 50), (100, 100), (0, 0))]
    served = open_model(folder)
    assert isinstance(served, HeadClassifier)  # assembling changes what is downloaded, not what is served
    whole = Classifier(files.tflite, files.labels())
    np.testing.assert_allclose(served.predict(crops), whole.predict(crops), atol=1e-4)
    again = json.loads(
        cli("models", "assemble", first_model["run_id"], "--workspace", first_model["workspace"], "--json").stdout
    )
    assert again == made  # nothing is made twice, nothing replaced


def test_explain_works_on_a_first_model(first_model: dict, face_jpg: Path, tmp_path: Path):
    result = json.loads(
        cli(
            "explain", face_jpg, "--model", first_model["model_path"], "--out", tmp_path / "heat", "--detector", "haar"
        ).stdout
    )
    (face,) = result["faces"]
    assert face["label"] in ("happy", "sad") and Path(face["heatmap"]).is_file()
