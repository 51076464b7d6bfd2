"""Base features computed when a sample is saved, so that a run trains its first model in seconds.

The tiny base (MobileNetV3Small, 32 px, weights 'none', seeded) is prepared once per test session through
the same function the `base prepare` worker runs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from expr_core import atomic, bases
from expr_core.bases import BaseKey
from expr_core.data.features import VIEWS, FeatureStore, Featurizer, views
from expr_core.data.store import DatasetStore, NewSample
from expr_core.jobs import folder as job
from expr_core.jobs import runs
from expr_core.live.capture import SampleWriter
from expr_core.registry import ModelFiles, Registry
from expr_core.serving import LiteRTModel
from expr_core.settings import Settings
from tests.test_train_split import TINY, add_face_samples

KEY = BaseKey.of(TINY)
WAIT_S = 600


@pytest.fixture(scope="session")
def base_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the prepared tiny base."""
    from expr_core.worker.base import prepare_base

    cache = tmp_path_factory.mktemp("cache")
    prepare_base(Settings(workspace=cache / "unused", cache_dir=cache, allow_downloads=False), KEY)
    return cache


@pytest.fixture
def prepared(settings: Settings, base_cache: Path) -> Settings:
    """Settings whose cache has the tiny base, chosen for the workspace (as the Train page does)."""
    ready = settings.with_(cache_dir=base_cache)
    bases.remember(ready, KEY)
    return ready


def _crops(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(n)]


def test_saved_samples_get_their_features_and_lose_them_with_the_sample(prepared: Settings):
    store = DatasetStore(prepared.workspace, Featurizer(prepared))
    crops = _crops(10)  # more than one interpreter call's worth of samples
    added = store.add_samples([NewSample("happy", "webcam", "s1", image=c) for c in crops])
    features = FeatureStore(store.root, KEY.slug())
    assert features.missing(s.id for s in added) == []
    base = LiteRTModel(ModelFiles(bases.folder(prepared, KEY)).tflite)
    for sample, crop in zip(added, crops, strict=True):
        kept = features.load(sample.id)
        assert kept is not None and kept.shape == (VIEWS, base.outputs)
        # clean, mirrored and jittered views: what phase 1's augmentation needs, computed as serving computes
        np.testing.assert_allclose(kept, base.run(views(crop, sample.id)), atol=1e-5)
        scale = np.abs(kept[0]).max()  # a random MobileNet's features are tiny, so compare relative to them
        assert np.abs(kept[0] - kept[1]).max() > 1e-3 * scale and np.abs(kept[0] - kept[2]).max() > 1e-3 * scale
    store.delete_samples([added[0].id])
    assert features.load(added[0].id) is None and features.load(added[1].id) is not None


def test_capture_writes_features_on_its_writer_thread(prepared: Settings):
    store = DatasetStore(prepared.workspace, Featurizer(prepared))
    writer, outcome = SampleWriter(store), []
    writer.submit(
        [NewSample("sad", "webcam", "s", image=c) for c in _crops(3)], lambda n, err: outcome.append((n, err))
    )
    writer.flush()
    assert outcome == [(3, None)]
    assert FeatureStore(store.root, KEY.slug()).missing(s.id for s in store.samples()) == []


def test_without_a_prepared_base_samples_are_saved_without_features(settings: Settings):
    bases.remember(settings, KEY)  # chosen, but not prepared in this (empty) cache
    store = DatasetStore(settings.workspace, Featurizer(settings))
    (added,) = store.add_samples([NewSample("happy", "webcam", "s", image=_crops(1)[0])])
    assert FeatureStore(store.root, KEY.slug()).missing([added.id]) == [added.id]


def test_a_broken_base_never_loses_a_saved_sample(prepared: Settings, tmp_path: Path, caplog):
    broken = prepared.with_(cache_dir=tmp_path / "broken-cache")
    folder = bases.folder(broken, KEY)
    folder.mkdir(parents=True)
    atomic.write_bytes(ModelFiles(folder).tflite, b"not a model")
    bases.remember(broken, KEY)
    store = DatasetStore(broken.workspace, Featurizer(broken))
    with caplog.at_level(logging.WARNING):
        (added,) = store.add_samples([NewSample("happy", "webcam", "s", image=_crops(1)[0])])
    assert store.samples() == [added] and "could not compute the features" in caplog.text


def test_the_chosen_base_is_remembered_and_a_bad_record_falls_back_to_the_default(settings: Settings):
    default = bases.current_key(settings)
    assert default.backbone in ("densenet201", "mini-xception")  # offline with an empty models folder: either way
    bases.remember(settings, KEY)
    assert bases.current_key(settings) == KEY
    (settings.workspace / bases.CHOSEN_FILE).write_text("{not json")
    assert bases.current_key(settings) == default


def test_a_base_is_named_with_the_weights_it_really_has(tmp_path: Path):
    """The progress line of a run with weights 'none' said "Preparing MobileNetV3Small (ImageNet)"."""
    assert BaseKey("mobilenetv3small", 96, "imagenet").title() == "MobileNetV3Small (ImageNet)"
    assert BaseKey("mobilenetv3small", 48, "none").title() == "MobileNetV3Small (untrained)"
    assert BaseKey("densenet201", 96, str(tmp_path / "mine.weights.h5")).title() == (
        "DenseNet201 (weights from mine.weights.h5)"
    )


def test_a_run_on_samples_with_features_skips_straight_to_the_head(prepared: Settings, astronaut_bgr):
    """Features made at capture time and the base in the server's cache are what the worker uses: no base to
    prepare, no features to compute, and a first model seconds after Start."""
    add_face_samples(prepared.workspace, astronaut_bgr, featurizer=Featurizer(prepared))
    run_id = runs.start_training(prepared, TINY)
    status = job.wait(runs.run_dir(prepared.workspace, run_id), timeout_s=WAIT_S)
    assert (status["state"], status["version"]) == ("done", 1), status
    events = job.read_events(runs.run_dir(prepared.workspace, run_id))[0]
    assert [e["phase"] for e in events if e["type"] == "phase"] == ["prepare", "head", "evaluate", "publish"]
    assert ModelFiles(Registry(prepared.workspace).model_dir(run_id)).is_head_model


def test_phase_2_remembers_its_first_batch_so_the_next_run_shows_progress_through_it(prepared: Settings, astronaut_bgr):
    """Review C3: phase 2's first batch (graph building, about 100 s for DenseNet201) looked hung."""
    add_face_samples(prepared.workspace, astronaut_bgr, featurizer=Featurizer(prepared))
    config = dataclasses.replace(TINY, epochs_2=1)
    first = runs.start_training(prepared, config)
    assert job.wait(runs.run_dir(prepared.workspace, first), timeout_s=WAIT_S)["state"] == "done"
    measured = bases.first_batch_seconds(prepared, KEY, config.batch_size)
    assert measured is not None and measured > 0
    second = runs.start_training(prepared, config)
    status = job.wait(runs.run_dir(prepared.workspace, second), timeout_s=WAIT_S)
    assert status["state"] == "done" and status["first_batch_expected_s"] == measured
