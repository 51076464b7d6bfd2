"""Every run's published model, and which one is active.

A run (see :mod:`expr_core.jobs.folder` for the folder) that finished has ``model/`` holding:

``model.keras``            the trained Keras model (preprocessing inside, no optimizer state)
``model.tflite``           the float32 LiteRT file the app serves
``model.dynamic.tflite``   a dynamic-range quantised variant (smaller, faster; optional)
``labels.json``            output labels in order
``metrics.json``           validation report (see :func:`expr_core.evaluate.classification_report`) plus
                           ``misclassified`` ``[{"id", "label", "predicted", "confidence"}]``,
                           ``quantized`` ``{"accuracy", "agreement"}`` when the quantised variant exists,
                           ``per_person``, ``split``, ``imbalance`` and ``quality`` ``{"usable", "warnings"}``
                           (see :func:`expr_core.worker.train.validation_report`, :mod:`expr_core.quality`)
``history.json``           per-phase epoch metrics ``{"head": {"loss": [...], ...}, "finetune": {...}}``
``dataset.json``           snapshot summary: labels, counts per label and side, train/val sample ids
``config.json``            the training config (or, for imports, where the model came from)

A first model (phase 1) is "prepared base + head": ``base.tflite`` (+ ``base.dynamic.tflite``), the
frozen backbone's extractor prepared once for every run (:mod:`expr_core.bases`), and ``head.npz``, the head
trained on its features (:mod:`expr_core.head`); ``model.keras`` and ``model.tflite`` of the whole
network are assembled on request for downloads. When phase 2 beats it, the run gets a second version,
``model.finetuned/`` (the layout above); the newest version is the run's model.

Publishing is atomic: the worker fills ``.tmp-model/``, renames it to ``model/`` (or
``model.finetuned/``) and only then records the version in the status. A run has a model only once its
status says so (``version``, or ``done`` for older runs), so a model killed halfway can never become
active; a run whose fine-tuning dies keeps its first model. ``<workspace>/active.json`` names the active
run and is replaced atomically.
A run whose status says ``usable: false`` (its model does not tell the expressions apart) is published
for inspection but becomes active only when the user confirms.

This module never imports TensorFlow (the Streamlit server uses it); importing a ``.keras`` file is
done by a short-lived ``python -m expr_core models import`` process (:func:`expr_core.jobs.run_cli.import_keras`).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from expr_core import atomic
from expr_core.errors import CorruptFile, ModelFileError, UserError
from expr_core.jobs import folder as job
from expr_core.jobs import runs

MODEL_DIR, STAGING_DIR = "model", atomic.TMP_PREFIX + "model"
FINETUNED_DIR = "model.finetuned"  # version 2 of a run: phase 2's model, published only when it beats phase 1
KERAS_FILE, TFLITE_FILE, TFLITE_DYNAMIC_FILE = "model.keras", "model.tflite", "model.dynamic.tflite"
HEAD_FILE, BASE_FILE, BASE_DYNAMIC_FILE = "head.npz", "base.tflite", "base.dynamic.tflite"
LABELS_FILE, METRICS_FILE, HISTORY_FILE, DATASET_FILE = "labels.json", "metrics.json", "history.json", "dataset.json"
ACTIVE_FILE = "active.json"


class RegistryError(UserError):
    """A registry request that cannot be honoured."""


@dataclass(frozen=True)
class RunInfo:
    """One run as the Models page lists it."""

    run_id: str
    state: str
    kind: str  # "train" or "import"
    active: bool
    created: float | None
    finished: float | None
    labels: list[str]
    val_accuracy: float | None
    backbone: str | None
    image_size: int | None
    error: str | None
    path: Path
    usable: bool | None  # None: not judged (imports, runs from before the quality check)
    warnings: list[str]

    version: int | None = None  # the newest published version (1: the first model; 2: fine-tuned)

    @property
    def has_model(self) -> bool:
        return runs.has_model({"state": self.state, "version": self.version})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class ModelFiles:
    """The files of one published model folder: what is served, what is downloaded, where the labels are.

    The one place that knows the layout of ``model/``; serving, explanation, the CLI and the Models page
    all find their files through it.
    """

    folder: Path

    @classmethod
    def locate(cls, path: Path) -> ModelFiles:
        """The model folder of a run folder, a ``model/`` folder, or a file inside one (``.keras``/``.tflite``)."""
        path = Path(path)
        if path.is_file():
            return cls(path.parent)
        return cls(path / MODEL_DIR if (path / MODEL_DIR).is_dir() else path)

    @property
    def keras(self) -> Path:
        return self.folder / KERAS_FILE

    @property
    def tflite(self) -> Path:
        return self.folder / TFLITE_FILE

    @property
    def tflite_dynamic(self) -> Path:
        return self.folder / TFLITE_DYNAMIC_FILE

    @property
    def head(self) -> Path:
        """The head's weights of a "prepared base + head" model (its LiteRT files are then the base's)."""
        return self.folder / HEAD_FILE

    @property
    def is_head_model(self) -> bool:
        """A "prepared base + head" model: served as the base's LiteRT file followed by the head in NumPy."""
        return self.head.is_file()

    def served(self, quantized: bool = False) -> Path:
        """The LiteRT file to serve (for a head model: the base's): quantised when asked for and present."""
        plain, dynamic = (
            (self.folder / BASE_FILE, self.folder / BASE_DYNAMIC_FILE)
            if self.is_head_model
            else (self.tflite, self.tflite_dynamic)
        )
        return dynamic if quantized and dynamic.is_file() else plain

    def servable(self) -> bool:
        return self.served().is_file() and (self.folder / LABELS_FILE).is_file()

    def labels(self) -> list[str]:
        """The output labels in order; :class:`ModelFileError` when ``labels.json`` is missing or empty."""
        labels = atomic.read_json(self.folder / LABELS_FILE)
        if not labels:
            raise ModelFileError(
                f"{self.folder}: {LABELS_FILE} is missing beside the model, so its outputs have no names."
            )
        return list(labels)

    def downloads(self) -> dict[str, Path]:
        """Downloadable files that exist: ``keras``, ``tflite`` and, if made, ``tflite_dynamic``."""
        files = {"keras": self.keras, "tflite": self.tflite, "tflite_dynamic": self.tflite_dynamic}
        return {key: path for key, path in files.items() if path.is_file()}


class Registry:
    """The runs of one workspace. Cheap to create; holds no state beyond the workspace path."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = Path(workspace)

    # -- reading ------------------------------------------------------------------------------
    def runs(self) -> list[RunInfo]:
        """All runs, newest first, with dead workers' runs reported as failed."""
        active = self.active_id()
        return [self._info(run_id, active) for run_id in runs.run_ids(self.workspace)]

    def get(self, run_id: str) -> RunInfo:
        return self._info(run_id, self.active_id())

    def _info(self, run_id: str, active: str | None) -> RunInfo:
        status = runs.run_status(self.workspace, run_id)
        folder = runs.run_dir(self.workspace, run_id)
        config = _tolerant(folder / job.CONFIG_FILE, {})
        return RunInfo(
            run_id=run_id,
            state=status.get("state", "queued"),
            kind=status.get("kind", "train"),
            active=run_id == active,
            created=status.get("created"),
            finished=status.get("finished"),
            labels=self.labels(run_id) if runs.has_model(status) else [],
            val_accuracy=status.get("val_accuracy"),
            backbone=config.get("backbone"),
            image_size=config.get("image_size"),
            error=status.get("error"),
            path=folder,
            usable=status.get("usable"),
            warnings=list(status.get("warnings") or []),
            version=status.get("version"),
        )

    def last_training_config(self) -> dict[str, Any]:
        """The settings of the newest training run (imports have none), or ``{}``: the Train form starts
        from them, because a user retraining after adding data usually wants the same settings."""
        for run_id in runs.run_ids(self.workspace):
            if runs.run_status(self.workspace, run_id).get("kind", "train") == "train":
                return atomic.read_json(runs.run_dir(self.workspace, run_id) / job.CONFIG_FILE, {}) or {}
        return {}

    def model_dir(self, run_id: str) -> Path:
        """The run's newest model version (the fine-tuned one once published, else the first)."""
        folder = runs.run_dir(self.workspace, run_id)
        return folder / FINETUNED_DIR if (folder / FINETUNED_DIR).is_dir() else folder / MODEL_DIR

    def version_dir(self, run_id: str, version: int) -> Path:
        return runs.run_dir(self.workspace, run_id) / (MODEL_DIR if version == 1 else FINETUNED_DIR)

    def _published(self, run_id: str) -> Path:
        """The model folder of a run that has one, or :class:`RegistryError` saying why there is none."""
        status = runs.run_status(self.workspace, run_id)
        if not runs.has_model(status):
            raise RegistryError(f"Run {run_id} has no model: it is {status.get('state')}.")
        return self.model_dir(run_id)

    def labels(self, run_id: str) -> list[str]:
        return _tolerant(self.model_dir(run_id) / LABELS_FILE, [])

    def _read(self, run_id: str, name: str) -> dict[str, Any]:
        return atomic.read_json(self._published(run_id) / name, {}) or {}

    def metrics(self, run_id: str) -> dict[str, Any]:
        return self._read(run_id, METRICS_FILE)

    def history(self, run_id: str) -> dict[str, Any]:
        return self._read(run_id, HISTORY_FILE)

    def dataset_summary(self, run_id: str) -> dict[str, Any]:
        return self._read(run_id, DATASET_FILE)

    def files(self, run_id: str) -> dict[str, Path]:
        """Downloadable files of a finished run (see :meth:`ModelFiles.downloads`)."""
        return ModelFiles(self._published(run_id)).downloads()

    # -- the active model ---------------------------------------------------------------------
    def active_id(self) -> str | None:
        """The active run, if it still exists and is done."""
        run_id = _tolerant(self.workspace / ACTIVE_FILE, {}).get("run_id")  # damaged: none is active
        if not run_id or not ModelFiles(self.model_dir(run_id)).servable():
            return None
        return run_id

    def activate(self, run_id: str, confirm_unusable: bool = False) -> None:
        """Make a finished run the one the app serves (atomic: readers see the old or the new one).

        A run judged not usable is refused unless ``confirm_unusable``: serving a model that calls every
        face the same should be a decision, not an accident.
        """
        self._published(run_id)
        status = runs.run_status(self.workspace, run_id)
        if status.get("usable") is False and not confirm_unusable:
            why = (status.get("warnings") or [""])[0]  # the reasons it is not usable come first
            raise RegistryError(
                f"Run {run_id} is not usable, so it is not activated without confirmation. {why} "
                "Confirm that you want it anyway (on the command line: models activate RUN_ID --force)."
            )
        atomic.write_json(self.workspace / ACTIVE_FILE, {"run_id": run_id, "activated": time.time()})

    def activate_if_none(self, run_id: str) -> bool:
        """Activate a run that just finished when no model is active yet (the first model goes live)."""
        if self.active_id() is not None:
            return False
        self.activate(run_id)
        return True

    # -- changing -----------------------------------------------------------------------------
    def delete(self, run_id: str, force: bool = False) -> None:
        """Remove a run and its files. Refuses a running run, and the active one unless ``force``."""
        status = runs.run_status(self.workspace, run_id)
        if status.get("state") in job.ACTIVE_STATES:
            raise RegistryError(f"Run {run_id} is still {status['state']}; cancel it first.")
        if run_id == self.active_id():
            if not force:
                raise RegistryError(f"Run {run_id} is the active model; activate another one first (or force).")
            os.unlink(self.workspace / ACTIVE_FILE)
        folder = runs.run_dir(self.workspace, run_id)
        doomed = folder.with_name(f"{atomic.TMP_PREFIX}deleted-{run_id}")
        os.rename(folder, doomed)  # the run vanishes from listings in one step
        shutil.rmtree(doomed)

    def publish(self, run_id: str, version: int = 1) -> Path:
        """Make a staged model the run's model folder of ``version`` (one atomic rename) and return it.

        The caller records the version in the run's status afterwards: until then the model is not
        listed, so a crash at any point leaves either no model or a complete one.
        """
        staged, target = self._staging_path(run_id), self.version_dir(run_id, version)
        if not ModelFiles(staged).servable():
            raise RegistryError(f"Cannot publish run {run_id}: its model file or {LABELS_FILE} is missing.")
        os.rename(staged, target)
        _fsync_dir(target.parent)
        return target

    def _staging_path(self, run_id: str) -> Path:
        return runs.run_dir(self.workspace, run_id) / STAGING_DIR

    def staging_dir(self, run_id: str) -> Path:
        """A fresh, empty folder where the worker writes a model before :meth:`publish`."""
        folder = self._staging_path(run_id)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder


def _tolerant(path: Path, default: Any) -> Any:
    """A state file read for a listing: damaged or of the wrong kind reads as ``default``, so one bad run (or
    a damaged active.json) never breaks the Models, Home or Detect page; acting on it says what is wrong."""
    try:
        value = atomic.read_json(path, default)
    except CorruptFile:
        return default
    return value if isinstance(value, type(default)) else default


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a power cut must not undo a publish)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
