"""Measuring a classifier: the validation report after training, and evaluation on a labelled folder.

Plain NumPy on probabilities, so the same report comes from the worker's validation and from
``python -m expr_core evaluate`` on any served model, without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expr_core.errors import BadInput, UserError
from expr_core.serving import Predictor
from expr_core.settings import Settings
from expr_core.vision.faces import FaceDetector, detect_and_crop
from expr_core.vision.images import decode_image, iter_path_images


def classification_report(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-label precision/recall/F1/support and the confusion matrix.

    ``confusion_matrix[i][j]`` counts samples of ``labels[i]`` predicted as ``labels[j]``. Balanced
    accuracy is the mean recall over labels that have samples, so a majority class cannot hide a
    useless model.
    """
    truth = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(probs).argmax(axis=1) if len(truth) else np.zeros(0, int)
    n = len(labels)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (truth, y_pred), 1)
    per_class, recalls = {}, []
    for i, label in enumerate(labels):
        support, predicted, hits = int(matrix[i].sum()), int(matrix[:, i].sum()), int(matrix[i, i])
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": support,
        }
        if support:
            recalls.append(recall)
    total = int(matrix.sum())
    return {
        "labels": list(labels),
        "n": total,
        "accuracy": round(float(np.trace(matrix)) / total, 4) if total else None,
        "balanced_accuracy": round(float(np.mean(recalls)), 4) if recalls else None,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


@dataclass
class FolderData:
    """Face crops read from a folder with one subfolder per label."""

    crops: list[np.ndarray] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_labelled_folder(
    folder: Path, labels: Sequence[str], settings: Settings, detector: FaceDetector | None, crop_size: int
) -> FolderData:
    """Crops of every image under ``folder/<label>/``; the largest face is cropped unless ``detector`` is None.

    Subfolders that are not model labels and images without a face are skipped and reported.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"{folder}: not a folder (expected one subfolder per label).")
    index = {label: i for i, label in enumerate(labels)}
    data = FolderData()
    for raw in iter_path_images(folder):
        if raw.folder not in index:
            data.skipped.append((raw.name, f"folder {raw.folder!r} is not one of the model's labels"))
            continue
        try:
            image = decode_image(raw.read(), raw.name)
            crops = (
                [image]
                if detector is None
                else [
                    c for _, c in detect_and_crop(detector, image, settings.crop_margin, crop_size, largest_only=True)
                ]
            )
        except BadInput as exc:
            data.skipped.append((raw.name, str(exc)))
            continue
        if not crops:
            data.skipped.append((raw.name, "no face found"))
            continue
        data.crops.append(crops[0])
        data.y.append(index[raw.folder])
    if not data.crops:
        raise UserError(f"{folder}: no usable images in subfolders named after the labels ({', '.join(labels)}).")
    return data


def evaluate_folder(
    classifier: Predictor, folder: Path, settings: Settings, detector: FaceDetector | None
) -> dict[str, Any]:
    """The classification report of ``classifier`` on a labelled folder, plus the skipped files."""
    data = load_labelled_folder(folder, classifier.labels, settings, detector, classifier.input_size)
    report = classification_report(data.y, classifier.predict_many(data.crops), classifier.labels)
    report["skipped"] = [{"file": name, "reason": reason} for name, reason in data.skipped]
    return report
