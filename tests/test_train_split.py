"""The honest train/validation split, the training settings, and the tiny real-face dataset other tests train on."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from expr_core.data.features import Featurizer
from expr_core.data.split import PEOPLE, SESSIONS, SplitError, person_of, split_samples
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
    "--no-quantize",
]


def add_face_samples(
    workspace: Path,
    photo_bgr: np.ndarray,
    sessions: int = 3,
    per_session: int = 3,
    featurizer: Featurizer | None = None,
) -> list[Sample]:
    """Real face crops of the astronaut photo, a few capture sessions per label with small variations.

    'sad' crops are upside down so the two labels really differ; each session is one split group. With a
    ``featurizer``, their features are computed as the app's store does.
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
    return DatasetStore(workspace, featurizer).add_samples(items)


def _sample(i: int, label: str, session: str, subject: str | None = None, captured_by: str = "anonymous") -> Sample:
    return Sample(
        id=f"s{i}",
        label=label,
        source="webcam",
        session=session,
        created=time.time(),
        subject=subject,
        captured_by=captured_by,
    )


def _bursts(people: dict[str, dict[str, int]], size: int = 30) -> list[Sample]:
    """``{person: {label: bursts}}`` recorded on the webcam by each person under their own name."""
    samples: list[Sample] = []
    for person, labels in people.items():
        for label, bursts in labels.items():
            for burst in range(bursts):
                session = f"{person}-{label}-{burst}"
                samples += [_sample(len(samples), label, session, captured_by=person) for _ in range(size)]
    return samples


def _persons_by_label(samples: list[Sample]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for s in samples:
        found.setdefault(person_of(s), set()).add(s.label)
    return found


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


def test_four_people_with_one_burst_each_are_validated_on_people_never_seen_in_training():
    samples = _bursts({name: {"happy": 1, "sad": 1} for name in ("Ann", "Bob", "Cy", "Di")})
    split = split_samples(samples, ["happy", "sad"], val_fraction=0.2)
    assert split.mode == PEOPLE and split.warnings == [] and split.identity_risks == []
    val, train = _persons_by_label(split.val), _persons_by_label(split.train)
    assert len(val) == 1 and len(train) == 3 and not set(val) & set(train)  # 60 of 240 faces: the closest to 20 %
    assert all(labels == {"happy", "sad"} for labels in val.values())
    assert {label for labels in train.values() for label in labels} == {"happy", "sad"}
    assert split.persons("val") == sorted(val) and split.persons("train") == sorted(train)


def test_people_mode_keeps_two_complete_people_in_training_and_unnamed_faces_out_of_validation():
    samples = _bursts({"Ann": {"happy": 1, "sad": 1}, "Bob": {"happy": 1, "sad": 1}, "Cy": {"happy": 1, "sad": 1}})
    samples += [_sample(1000 + i, label, f"anon-{label}-{i // 30}") for i in range(60) for label in ("happy", "sad")]
    for fraction in (0.2, 0.5):
        split = split_samples(samples, ["happy", "sad"], val_fraction=fraction)
        assert split.mode == PEOPLE and len(split.persons("val")) == 1
        assert "unknown" in split.persons("train") and "unknown" not in split.persons("val")


def test_two_people_with_one_burst_per_label_get_a_warning_naming_who_and_what_to_record():
    samples = _bursts({"Ann": {"happy": 1, "sad": 1}, "Bob": {"happy": 1, "sad": 1}})
    split = split_samples(samples, ["happy", "sad"])
    assert split.mode == SESSIONS
    assert split.identity_risks == [("Ann", "happy"), ("Ann", "sad"), ("Bob", "happy"), ("Bob", "sad")]
    assert len(split.warnings) == 2
    ann = next(w for w in split.warnings if w.startswith("Ann"))
    assert "record another burst each of 'happy' and 'sad' for Ann, or add another person" in ann
    assert "recognises who it is" in ann


def test_one_missing_burst_is_named_exactly():
    samples = _bursts({"Ann": {"happy": 2, "sad": 1}, "Bob": {"happy": 2, "sad": 2}})
    split = split_samples(samples, ["happy", "sad"])
    assert (split.mode, split.identity_risks) == (SESSIONS, [("Ann", "sad")])
    assert split.warnings == [
        "Ann has only one burst of 'sad', so validation cannot tell a model that reads the expression from one "
        "that recognises who it is: record another burst of 'sad' for Ann, or add another person."
    ]


def test_unnamed_faces_count_as_one_person_and_are_told_to_type_a_name():
    samples = _many("happy", 2, 5) + _many("sad", 1, 5, start=100) + _bursts({"Bo": {"happy": 1, "sad": 1}})
    split = split_samples(samples, ["happy", "sad"])
    assert ("unknown", "sad") in split.identity_risks
    assert any(w.startswith("The unnamed person") and "sidebar" in w for w in split.warnings)


def test_sessions_mode_puts_each_persons_labels_on_both_sides():
    samples = _bursts({"Ann": {"happy": 2, "sad": 2}, "Bob": {"happy": 3, "sad": 2}})
    for seed in range(5):
        split = split_samples(samples, ["happy", "sad"], val_fraction=0.2, seed=seed)
        assert split.mode == SESSIONS and split.warnings == []
        assert {s.group for s in split.train}.isdisjoint({s.group for s in split.val})
        assert (
            _persons_by_label(split.val)
            == _persons_by_label(split.train)
            == {
                "Ann": {"happy", "sad"},
                "Bob": {"happy", "sad"},
            }
        )


def test_ck_plus_like_subjects_leave_whole_subjects_out():
    """Imported photos with a subject column, 207 happy and 84 sad: some subjects show both, some one."""
    rng = np.random.default_rng(0)
    samples: list[Sample] = []
    for subject in range(40):
        wanted = {"happy": int(rng.integers(3, 8)), "sad": int(rng.integers(2, 5)) if subject % 3 else 0}
        for label, n in wanted.items():
            samples += [
                Sample(
                    id=f"s{len(samples)}",
                    label=label,
                    source="import",
                    session="ck",
                    created=0.0,
                    captured_by="cli",
                    subject=f"S{subject:03d}",
                    origin=f"S{subject:03d}_{label}_{k}.png",
                )
                for k in range(n)
            ]
    split = split_samples(samples, ["happy", "sad"], val_fraction=0.2, seed=7)
    assert split.mode == PEOPLE and split.warnings == []
    val, train = _persons_by_label(split.val), _persons_by_label(split.train)
    assert not set(val) & set(train) and all(labels == {"happy", "sad"} for labels in val.values())
    share = len(split.val) / len(samples)
    assert 0.15 <= share <= 0.25, share
    assert split.imbalance() == round(split.counts()["happy"]["train"] / split.counts()["sad"]["train"], 2)
    again = split_samples(samples, ["happy", "sad"], val_fraction=0.2, seed=7)
    assert [s.id for s in again.val] == [s.id for s in split.val]


def test_class_weights_make_every_label_weigh_the_same():
    from expr_core.worker.train import class_weights

    y = np.array([0] * 207 + [1] * 84 + [2] * 9)
    weights = class_weights(y, 3)
    assert weights == pytest.approx({0: 300 / (3 * 207), 1: 300 / (3 * 84), 2: 300 / (3 * 9)})
    assert 207 * weights[0] == pytest.approx(84 * weights[1]) == pytest.approx(9 * weights[2])


def test_balanced_accuracy_is_in_the_logs_before_early_stopping_and_history_read_them():
    import keras

    from expr_core.worker.train import MONITOR, BalancedAccuracy

    x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    y = np.array([0] * 30 + [1] * 10)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=5)
    history = model.fit(
        x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[BalancedAccuracy(x, y, ["a", "b"], 8), stop]
    )
    assert len(history.history[MONITOR]) == 2 and all(0 <= v <= 1 for v in history.history[MONITOR])
    assert stop.best == max(history.history[MONITOR])  # early stopping saw the value


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


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr_1": float("nan")}, "phase 1 learning rate"),
        ({"lr_2": float("inf")}, "phase 2 learning rate"),
        ({"lr_1": 5.0}, "phase 1 learning rate"),
        ({"val_fraction": float("nan")}, "validation fraction"),
        ({"batch_size": float("nan")}, "batch size must be a whole number"),
        ({"epochs_1": float("inf")}, "phase 1 epochs must be a whole number"),
        ({"epochs_2": True}, "phase 2 epochs must be a whole number"),
        ({"image_size": 64.5}, "image size must be a whole number"),
        ({"seed": float("nan")}, "seed must be a whole number"),
        ({"epochs_1": 100_000}, "epochs at most 1000 per phase"),
        ({"batch_size": 100_000}, "batch size can be at most 1024"),
    ],
)
def test_non_finite_or_out_of_range_settings_are_refused_before_training(changes, message):
    """A NaN or absurd setting from a hand-edited config or the command line must not start a run that fails (or
    runs for days) later."""
    with pytest.raises(ConfigError, match=f"(?i){message}"):
        TrainConfig(**changes).validated()


def test_config_round_trips_through_json_ignoring_unknown_keys():
    assert TrainConfig.from_dict({**TINY.to_dict(), "from_the_future": 1}) == TINY
