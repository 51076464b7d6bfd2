"""Prepared bases in TensorFlow: converting one once, and putting a first model back into one whole network.

Preparing runs in a worker process (``python -m expr_core base prepare``, or in a training worker when a
run needs a base that is not there yet). Assembling makes a first model's ``.keras`` and LiteRT downloads
(``python -m expr_core models assemble RUN``). See :mod:`expr_core.bases` for what a prepared base is for.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import keras

from expr_core import atomic, bases
from expr_core.backbones import NO_WEIGHTS
from expr_core.bases import BaseKey
from expr_core.errors import ModelFileError
from expr_core.head import HeadWeights
from expr_core.registry import KERAS_FILE, ModelFiles
from expr_core.settings import Settings
from expr_core.worker.convert import export_tflite
from expr_core.worker.model import Network, build_network, inference_copy, resolve_weights


def base_network(settings: Settings, key: BaseKey, n_labels: int) -> Network:
    """The network whose frozen base is exactly the prepared base of ``key`` (random starts are seeded)."""
    if key.weights == NO_WEIGHTS:
        keras.utils.set_random_seed(bases.NONE_SEED)
    return build_network(key.backbone, n_labels, key.image_size, resolve_weights(key.weights, settings))


def prepare_base(settings: Settings, key: BaseKey) -> Path:
    """The prepared base's folder, converting the extractor (float32 and dynamic-range) if it is not there."""

    def fill(staging: Path) -> None:
        start = time.perf_counter()
        extractor = base_network(settings, key, 2).extractor
        timings = export_tflite(extractor, staging, quantize=True)
        meta = {
            **key.to_dict(),
            "features": int(extractor.output.shape[-1]),
            "seconds": timings,
            "prepared_s": round(time.perf_counter() - start, 1),
        }
        atomic.write_json(staging / bases.META_FILE, meta)

    return atomic.fill_folder(bases.folder(settings, key), fill, lambda _: bases.is_prepared(settings, key))


def whole_network(settings: Settings, files: ModelFiles) -> keras.Model:
    """The full Keras network of a "prepared base + head" model: its base rebuilt from the same weights, the
    head's weights put in. What the ``.keras`` download and Grad-CAM of a first model are made from."""
    meta = atomic.read_json(files.folder / bases.META_FILE, {}) or {}
    try:
        key = BaseKey(str(meta["backbone"]), int(meta["image_size"]), str(meta["weights"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{files.folder}: {bases.META_FILE} does not say which base this model has.") from exc
    labels = files.labels()
    net = base_network(settings, key, len(labels))
    net.head.set_weights(HeadWeights.load(files.head, n_labels=len(labels)).as_list())
    return inference_copy(net)


def assemble(settings: Settings, files: ModelFiles, quantize: bool = True) -> dict[str, Path]:
    """Add ``model.keras`` and ``model.tflite`` (and the quantised variant) of the whole network to a first
    model's folder, for downloads; nothing there is replaced, and serving keeps using base + head. Returns
    the downloads."""
    if files.is_head_model and not files.keras.is_file():  # a fine-tuned model has them all already
        model = whole_network(settings, files)
        with tempfile.TemporaryDirectory(dir=files.folder, prefix=atomic.TMP_PREFIX) as tmp:
            export_tflite(model, Path(tmp), quantize)
            model.save(Path(tmp) / KERAS_FILE)
            for made in sorted(Path(tmp).iterdir()):
                os.replace(made, files.folder / made.name)  # model.keras last: its presence means "assembled"
    return files.downloads()
