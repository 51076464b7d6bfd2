"""Keras models to LiteRT files, and importing outside ``.keras`` models into the registry.

Imports TensorFlow/Keras: only worker processes and the CLI may import this module.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import keras
import tensorflow as tf

from expr_core import atomic
from expr_core.data.store import validate_label
from expr_core.errors import InvalidLabel, ModelFileError
from expr_core.jobs import runs
from expr_core.jobs.folder import JobState, JobWriter
from expr_core.registry import KERAS_FILE, LABELS_FILE, TFLITE_DYNAMIC_FILE, TFLITE_FILE, Registry


class ImportRejected(ModelFileError):
    """A ``.keras`` file that cannot serve as an expression model."""


def export_tflite(model: keras.Model, folder: Path, quantize: bool) -> dict[str, float]:
    """Write ``model.tflite`` (float32) and, if asked, ``model.dynamic.tflite`` into ``folder``; seconds per step.

    The model is exported once as a SavedModel with a dynamic batch dimension (so the server can
    classify all faces of a frame in one call) and converted from there, once per variant. Only
    built-in LiteRT ops are allowed: the runtime the app uses has no TensorFlow ops.
    """
    timings = {}
    size = model.inputs[0].shape[1:]
    with tempfile.TemporaryDirectory() as saved_model:
        start = time.perf_counter()
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serve",
            functools.partial(model.__call__, training=False),
            input_signature=[tf.TensorSpec((None, *size), tf.float32, name="image")],
        )
        archive.write_out(saved_model, verbose=False)
        timings["saved_model_s"] = time.perf_counter() - start
        variants = [(TFLITE_FILE, [])] + ([(TFLITE_DYNAMIC_FILE, [tf.lite.Optimize.DEFAULT])] if quantize else [])
        for name, optimizations in variants:
            start = time.perf_counter()
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            converter.optimizations = optimizations
            atomic.write_bytes(Path(folder) / name, converter.convert())
            timings[f"{name}_s"] = time.perf_counter() - start
    return {k: round(v, 2) for k, v in timings.items()}


# What a .keras archive's members may expand to. DenseNet201's config is about 0.5 MB and its weights 80 MB; a
# few-kB file whose config expands to 150 MB cost 300 MB of memory before Keras refused it.
MAX_MEMBER_BYTES = {"config.json": 16 * 2**20, "metadata.json": 2**20}
MAX_WEIGHTS_BYTES = 2 * 2**30


def _check_sizes(path: Path) -> None:
    """Refuse, before anything is read, an archive whose members would expand past their limits."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            limit = MAX_MEMBER_BYTES.get(info.filename, MAX_WEIGHTS_BYTES)
            if info.file_size > limit:
                raise ImportRejected(
                    f"{path.name}: its member {info.filename} expands to {info.file_size:,} bytes, over the "
                    f"{limit:,}-byte limit; this is not a model saved by this app or Keras."
                )


def load_checked(path: Path, n_labels: int) -> keras.Model:
    """Load a ``.keras`` file and check it takes square RGB images and has one output per label."""
    path = Path(path)
    if not path.is_file():
        raise ImportRejected(f"{path}: no such file.")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ImportRejected(f"{path.name}: not a Keras model file (expected a .keras file saved by Keras 3).")
    _check_sizes(path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for foreign or damaged files
        raise ImportRejected(f"{path.name}: Keras could not load it ({type(exc).__name__}: {exc}).") from exc
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ImportRejected(f"{path.name}: the model must have one input and one output.")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or not shape[1]:
        raise ImportRejected(
            f"{path.name}: its input shape is {shape}; expected square RGB images (None, size, size, 3), "
            "taking pixel values 0..255 with any preprocessing inside the model."
        )
    outputs = model.outputs[0].shape[-1]
    if outputs != n_labels:
        raise ImportRejected(
            f"{path.name}: it has {outputs} outputs but {n_labels} labels were given; give one label "
            "per output, in output order."
        )
    return model


def _checked_labels(labels: list[str]) -> list[str]:
    checked: list[str] = []
    for label in labels:
        try:
            checked.append(validate_label(label, checked))
        except InvalidLabel as exc:
            raise ImportRejected(f"Label list: {exc}") from exc
    return checked


def import_model(workspace: Path, path: Path, labels: list[str], quantize: bool = False) -> str:
    """Check, convert and publish a ``.keras`` file as a finished run of kind ``import``; returns its run id.

    All checks happen before anything is written; a conversion failure removes the half-made run.
    """
    labels = _checked_labels(labels)
    model = load_checked(path, len(labels))
    size = int(model.inputs[0].shape[1])
    run_id, folder = runs.create_run(workspace, {"imported_from": Path(path).name, "image_size": size}, kind="import")
    registry = Registry(workspace)
    writer = JobWriter(folder)
    try:
        staged = registry.staging_dir(run_id)
        shutil.copyfile(path, staged / KERAS_FILE)
        export_tflite(model, staged, quantize)
        atomic.write_json(staged / LABELS_FILE, labels)
        registry.publish(run_id)
        writer.status(state=JobState.DONE, finished=time.time(), labels=labels)
        registry.activate_if_none(run_id)
    except BaseException:
        writer.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    writer.close()
    return run_id
