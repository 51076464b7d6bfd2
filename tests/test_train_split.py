"""The honest train/validation split, the training settings, and the tiny real-face dataset other tests train on."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from expr_core.data.split import SplitError, split_samples
from expr_core.data.store import DatasetStore, NewSample, Sample
from expr_core.train_config import ConfigError, TrainConfig
from expr_core.vision.faces import Face, HaarDetector, crop_face

# The smallest settings that still run both the feature cache and the head: seconds, not minutes.
TINY = TrainConfig(
    backbone="mobilenetv3small",
    weights="none",
    image_size=32,
    batch_size=8,
    epochs_1=3,
    epochs_2=0,
    feature_copies=1,
    quantize=False,
)
TINY_ARGS = [
    "--backbone",
    "mobilenetv3small",
    "--weights",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--epochs-1",
    "3",
    "--epochs-2",
    "0",
    "--feature-copies",
    "1",
    "--no-quantize",
]


def add_face_samples(workspace: Path, photo_bgr: np.ndarray, sessions: int = 3, per_session: int = 3) -> list[Sample]:
    """Real face crops of the astronaut photo, a few capture sessions per label with small variations.

    'sad' crops are upside down so the two labels really differ; each session is one split group.
    """
    face = max(HaarDetector().detect(photo_bgr), key=lambda f: f.area)
    rng = np.random.default_rng(0)
    items = []
    for label in ("happy", "sad"):
        for session in range(sessions):
            for k in range(per_session):
                x, y, w, h = face.box
                dx, dy = (int(v) for v in rng.integers(-8, 9, 2))
                crop = crop_face(photo_bgr, Face((x + dx, y + dy, w, h), 1.0), 0.1 + 0.1 * k, 64)
                items.append(
                    NewSample(
                        label, "webcam", f"{label}-{session}", image=cv2.flip(crop, 0) if label == "sad" else crop
                    )
                )
    return DatasetStore(workspace).add_samples(items)


def _sample(i: int, label: str, session: str, subject: str | None = None) -> Sample:
    return Sample(id=f"s{i}", label=label, source="webcam", session=session, created=time.time(), subject=subject)


def _many(label: str, groups: int, per_group: int, start: int = 0) -> list[Sample]:
    return [_sample(start + g * per_group + k, label, f"{label}-{g}") for g in range(groups) for k in range(per_group)]


def test_no_group_is_on_both_sides_and_every_label_is_on_both():
    samples = _many("happy", 10, 5) + _many("sad", 6, 3, start=1000)
    split = split_samples(samples, ["happy", "sad"], val_fraction=0.2, seed=1)
    assert {s.group for s in split.train}.isdisjoint({s.group for s in split.val})
    assert len(split.train) + len(split.val) == len(samples)
    counts = split.counts()
    assert all(c["train"] > 0 and c["val"] > 0 for c in counts.values())
    assert counts["happy"]["val"] == 10  # exactly 20 %: two of ten equal sessions
    assert 3 <= counts["sad"]["val"] <= 6


def test_subjects_group_across_sessions():
    samples = [_sample(i, "happy", f"sess{i}", subject="ann" if i < 4 else "bob") for i in range(8)]
    samples += [_sample(100 + i, "sad", f"sess{100 + i}", subject="cy" if i < 4 else "di") for i in range(8)]
    split = split_samples(samples, ["happy", "sad"])
    val_subjects = {s.subject for s in split.val}
    assert not val_subjects & {s.subject for s in split.train}
    assert len(val_subjects) == 2


def test_split_is_deterministic_for_a_seed():
    samples = _many("happy", 7, 2) + _many("sad", 7, 2, start=100)
    first = split_samples(samples, ["happy", "sad"], seed=3)
    assert [s.id for s in split_samples(samples, ["happy", "sad"], seed=3).val] == [s.id for s in first.val]


@pytest.mark.parametrize(
    "samples, labels, message",
    [
        (_many("happy", 3, 3), ["happy"], "at least two labels"),
        ([], [], "no samples"),
        (_many("happy", 3, 3) + _many("sad", 1, 2, 50), ["happy", "sad"], "'sad' has 2 sample"),
        (_many("happy", 3, 3) + _many("sad", 1, 9, 50), ["happy", "sad"], "'sad' has all its samples from one"),
    ],
)
def test_too_little_data_is_refused_with_the_reason(samples, labels, message):
    with pytest.raises(SplitError, match=message):
        split_samples(samples, labels)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"backbone": "resnet"}, "Unknown backbone"),
        ({"weights": "/no/such/file.h5"}, "Weights"),
        ({"image_size": 16}, "between 32 and 512"),
        ({"epochs_1": 0, "epochs_2": 0}, "Both phases"),
        ({"batch_size": 0}, "Batch size"),
    ],
)
def test_bad_training_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes).validated()


def test_config_round_trips_through_json_ignoring_unknown_keys():
    assert TrainConfig.from_dict({**TINY.to_dict(), "from_the_future": 1}) == TINY
