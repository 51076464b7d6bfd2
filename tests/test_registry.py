"""The model registry: atomic publish, one active model, delete, and the checks on imported .keras files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from expr_core import atomic
from expr_core.jobs import folder as job
from expr_core.jobs import runs
from expr_core.registry import ACTIVE_FILE, FINETUNED_DIR, STAGING_DIR, ModelFiles, Registry, RegistryError
from expr_core.settings import Settings


@pytest.fixture
def registry(settings: Settings) -> Registry:
    return Registry(settings.workspace)


def _staged_run(
    registry: Registry, files: tuple[str, ...] = ("model.keras", "model.tflite")
) -> tuple[str, job.JobWriter]:
    """A running run (this process plays its worker) with a staged model."""
    run_id, folder = runs.create_run(registry.workspace, {"backbone": "test", "image_size": 32})
    writer = job.JobWriter(folder)
    staged = registry.staging_dir(run_id)
    for name in files:
        (staged / name).write_bytes(b"model bytes")
    atomic.write_json(staged / "labels.json", ["happy", "sad"])
    return run_id, writer


def _publish(registry: Registry, run_id: str, writer: job.JobWriter, val_accuracy: float) -> None:
    """What a worker does at the end: the atomic rename, then the run is done, then the first model goes live."""
    registry.publish(run_id)
    writer.status(state=job.JobState.DONE, val_accuracy=val_accuracy, labels=["happy", "sad"])
    registry.activate_if_none(run_id)


def _published(registry: Registry) -> str:
    run_id, writer = _staged_run(registry)
    _publish(registry, run_id, writer, 0.5)
    writer.close()
    return run_id


def test_publish_renames_then_marks_done_and_the_first_model_becomes_active(registry: Registry):
    run_id, writer = _staged_run(registry)
    assert registry.get(run_id).state == "running" and registry.active_id() is None
    _publish(registry, run_id, writer, 0.75)
    info = registry.get(run_id)
    assert (info.state, info.val_accuracy, info.labels, info.active) == ("done", 0.75, ["happy", "sad"], True)
    assert not (info.path / STAGING_DIR).exists()
    assert set(registry.files(run_id)) == {"keras", "tflite"}


def test_an_incomplete_model_is_never_published(registry: Registry):
    run_id, _writer = _staged_run(registry, files=("model.keras", "head.npz"))  # a head model without its base
    with pytest.raises(RegistryError, match="its model file or labels.json is missing"):
        registry.publish(run_id)
    assert registry.get(run_id).state == "running"
    assert not registry.model_dir(run_id).exists()
    with pytest.raises(RegistryError, match="it is running"):
        registry.activate(run_id)


def test_a_first_model_is_usable_while_fine_tuning_goes_on_and_the_newer_version_takes_over(registry: Registry):
    run_id, writer = _staged_run(registry, files=("base.tflite", "head.npz"))
    registry.publish(run_id, version=1)
    assert not registry.get(run_id).has_model  # published, but not yet recorded: not listed, not activatable
    writer.status(version=1, labels=["happy", "sad"], usable=True)
    assert registry.activate_if_none(run_id) and registry.active_id() == run_id  # live while the run still runs
    info = registry.get(run_id)
    assert (info.state, info.version, info.has_model, info.labels) == ("running", 1, True, ["happy", "sad"])
    first = registry.model_dir(run_id)
    assert first.name == "model" and ModelFiles(first).served() == first / "base.tflite"

    staged = registry.staging_dir(run_id)
    for name in ("model.keras", "model.tflite"):
        (staged / name).write_bytes(b"model bytes")
    atomic.write_json(staged / "labels.json", ["happy", "sad"])
    registry.publish(run_id, version=2)
    writer.status(version=2, state=job.JobState.DONE)
    writer.close()
    newest = registry.model_dir(run_id)
    assert newest.name == FINETUNED_DIR and ModelFiles(newest).served() == newest / "model.tflite"
    assert registry.active_id() == run_id and (first / "head.npz").is_file()  # the first version is kept
    assert set(registry.files(run_id)) == {"keras", "tflite"}


def test_a_run_whose_fine_tuning_died_keeps_its_first_model(registry: Registry):
    run_id, writer = _staged_run(registry, files=("base.tflite", "head.npz"))
    registry.publish(run_id, version=1)
    writer.status(version=1, labels=["happy", "sad"], usable=True)
    writer.close()
    atomic.write_json(
        runs.run_dir(registry.workspace, run_id) / job.STATUS_FILE,
        {**job.read_status(runs.run_dir(registry.workspace, run_id)), "state": "failed", "error": "killed"},
    )
    assert registry.get(run_id).has_model
    registry.activate(run_id)
    assert registry.active_id() == run_id


def test_activate_switches_atomically_and_only_to_finished_runs(registry: Registry):
    first, second = _published(registry), _published(registry)
    assert registry.active_id() == first  # auto-activation only when nothing is active
    registry.activate(second)
    assert atomic.read_json(registry.workspace / ACTIVE_FILE)["run_id"] == second
    assert [r.run_id for r in registry.runs() if r.active] == [second]
    assert not list(registry.workspace.glob(".tmp-*"))


def test_a_run_judged_not_usable_is_activated_only_when_confirmed(registry: Registry):
    good = _published(registry)
    run_id, writer = _staged_run(registry)
    registry.publish(run_id)
    why = ["It calls 100% of faces 'happy' (only 71% are): it has not learned to tell the expressions apart."]
    writer.status(state=job.JobState.DONE, labels=["happy", "sad"], usable=False, warnings=[*why, "split note"])
    writer.close()
    info = registry.get(run_id)
    assert (info.usable, info.warnings) == (False, [*why, "split note"])
    assert registry.get(good).usable is None and registry.get(good).warnings == []  # not judged: activates freely
    with pytest.raises(RegistryError, match=f"Run {run_id} is not usable.*calls 100% of faces.*--force"):
        registry.activate(run_id)
    assert registry.active_id() == good
    registry.activate(run_id, confirm_unusable=True)
    assert registry.active_id() == run_id
    registry.activate(good)


def test_delete_refuses_the_active_model_unless_forced_and_running_runs(registry: Registry):
    active, other = _published(registry), _published(registry)
    with pytest.raises(RegistryError, match="active model"):
        registry.delete(active)
    registry.delete(other)
    assert [r.run_id for r in registry.runs()] == [active]
    registry.delete(active, force=True)
    assert registry.runs() == [] and registry.active_id() is None
    running, writer = _staged_run(registry)
    with pytest.raises(RegistryError, match="still running"):
        registry.delete(running)
    writer.close()


def test_files_of_an_unfinished_run_are_refused(registry: Registry):
    run_id, folder = runs.create_run(registry.workspace, {})
    atomic.write_json(folder / job.STATUS_FILE, {"job_id": run_id, "state": "failed", "created": time.time()})
    with pytest.raises(RegistryError, match="it is failed"):
        registry.files(run_id)


# -- imported .keras files (checked in this process; the CLI path is covered end to end elsewhere) -------------
@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory):
    """``keras_file(input_shape, outputs)``: a tiny saved .keras model of that shape."""
    import keras

    folder = tmp_path_factory.mktemp("keras")

    def make(input_shape: tuple[int, ...], outputs: int) -> Path:
        inputs = keras.Input(input_shape)
        x = keras.layers.GlobalAveragePooling2D()(inputs) if len(input_shape) == 3 else inputs
        model = keras.Model(inputs, keras.layers.Dense(outputs, activation="softmax")(x))
        path = folder / f"m{'x'.join(map(str, input_shape))}-{outputs}.keras"
        model.save(path)
        return path

    return make


def test_a_good_keras_file_passes_the_checks(keras_file):
    from expr_core.worker.convert import load_checked

    assert load_checked(keras_file((48, 48, 3), 2), 2).output_shape == (None, 2)


@pytest.mark.parametrize(
    "shape, outputs, labels, message",
    [
        ((48, 48, 1), 2, 2, r"input shape is \(None, 48, 48, 1\); expected square RGB"),
        ((48, 32, 3), 2, 2, "expected square RGB"),
        ((10,), 2, 2, "expected square RGB"),
        ((48, 48, 3), 3, 2, "3 outputs but 2 labels"),
    ],
)
def test_keras_files_of_the_wrong_shape_are_refused(keras_file, shape, outputs, labels, message):
    from expr_core.worker.convert import ImportRejected, load_checked

    with pytest.raises(ImportRejected, match=message):
        load_checked(keras_file(shape, outputs), labels)


def test_files_that_are_not_keras_models_are_refused(tmp_path: Path):
    from expr_core.worker.convert import ImportRejected, load_checked

    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ImportRejected, match="not a Keras model file"):
        load_checked(broken, 2)
    with pytest.raises(ImportRejected, match="no such file"):
        load_checked(tmp_path / "missing.keras", 2)
    wrong_type = tmp_path / "model.h5"
    wrong_type.write_bytes(b"\x89HDF")
    with pytest.raises(ImportRejected, match="expected a .keras file"):
        load_checked(wrong_type, 2)


def test_import_refuses_bad_label_lists_before_writing_anything(settings: Settings, keras_file):
    from expr_core.worker.convert import ImportRejected, import_model

    with pytest.raises(ImportRejected, match="already a label"):
        import_model(settings.workspace, keras_file((48, 48, 3), 2), ["happy", "Happy"])
    assert not runs.runs_dir(settings.workspace).exists()


def test_the_last_training_config_skips_imports(registry: Registry, monkeypatch: pytest.MonkeyPatch):
    assert registry.last_training_config() == {}
    ids = iter(["20261101-100000-aaaa", "20261101-110000-bbbb"])  # the import is the newer run
    monkeypatch.setattr(job, "new_job_id", lambda: next(ids))
    runs.create_run(registry.workspace, {"backbone": "mobilenetv3small", "image_size": 64})
    runs.create_run(registry.workspace, {"imported_from": "x.keras", "image_size": 96}, kind="import")
    assert registry.last_training_config() == {"backbone": "mobilenetv3small", "image_size": 64}
