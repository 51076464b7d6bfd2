"""Is a trained model worth serving? A verdict on its validation report, in words for users.

A model that calls every face "happy" scores 70.7 % accuracy on CK+ (207 happy, 84 sad) and would be
published and made active without a word. The worker asks :func:`assess` after measuring the served
file; a run that is not usable is still published, so the user can inspect it, but never activated by
itself (:meth:`expr_core.registry.Registry.activate` asks for confirmation).

Plain Python on the report's numbers: no TensorFlow, so the server may import it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

MIN_MARGIN = 0.1  # balanced accuracy must beat chance by at least this much...
Z_95 = 1.645  # ...and the one-sided 95 % upper bound of guessing on this many faces
MAX_SHARE = 0.9  # one label predicted for this share of faces (when fewer really are) = not telling them apart
MORE_DATA = "Record more varied bursts of every expression (more people, other light and angles) and train again."


@dataclass(frozen=True)
class Quality:
    """``usable`` is False when the model should not go live; ``warnings`` says why, and what else to know."""

    usable: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def assess(report: dict[str, Any], history: dict[str, Any]) -> Quality:
    """The verdict on a validation report (:func:`expr_core.worker.train.validation_report`) and its training
    history (``{phase: {metric: [per epoch]}}``). The split's warnings are passed on but alone do not make a
    run unusable: they say the measurement may flatter the model, not that it failed."""
    problems = _broken(report, history) or [*_chance(report), *_one_label(report)]
    split_warnings = list((report.get("split") or {}).get("warnings", []))
    return Quality(usable=not problems, warnings=problems + split_warnings)


def _broken(report: dict[str, Any], history: dict[str, Any]) -> list[str]:
    """Non-finite losses or outputs: the numbers behind every other check mean nothing then."""
    problems = []
    bad_loss = next(
        (
            value
            for metrics in history.values()
            for name, values in metrics.items()
            if "loss" in name
            for value in values
            if not math.isfinite(value)
        ),
        None,
    )
    if bad_loss is not None:
        problems.append(
            f"Training broke down: the loss became {bad_loss} (not a finite number), so the model learned "
            "nothing reliable. Try a lower learning rate and train again."
        )
    if report.get("non_finite_faces"):
        problems.append(
            f"It gives no valid answer (not a finite number) for {report['non_finite_faces']} of the "
            f"{report['n']} validation faces. Try a lower learning rate and train again."
        )
    return problems


def chance_bound(n_labels: int, n: int) -> float:
    """The balanced accuracy a model must exceed to be told apart from guessing on ``n`` validation faces."""
    chance = 1 / n_labels
    return max(chance + MIN_MARGIN, chance + Z_95 * math.sqrt(chance * (1 - chance) / n))


def _chance(report: dict[str, Any]) -> list[str]:
    labels, n, balanced = report["labels"], report["n"], report.get("balanced_accuracy")
    if not n or balanced is None:
        return ["There were no validation faces, so nothing shows that the model works. " + MORE_DATA]
    chance, need = 1 / len(labels), chance_bound(len(labels), n)
    if balanced >= chance + MIN_MARGIN and balanced > need:
        return []
    return [
        f"Its balanced accuracy on the {n} validation faces is {balanced:.0%}, not clearly better than guessing "
        f"({chance:.0%} with {len(labels)} labels; on {n} faces it needs more than {need:.0%} to show it has "
        f"learned something). {MORE_DATA}"
    ]


def _one_label(report: dict[str, Any]) -> list[str]:
    """The label predicted for nearly every face, when far fewer faces really have it."""
    matrix, labels, n = report["confusion_matrix"], report["labels"], report["n"]
    if not n:
        return []
    predicted = [sum(row[j] for row in matrix) / n for j in range(len(labels))]
    truth = [sum(row) / n for row in matrix]
    top = max(range(len(labels)), key=lambda j: predicted[j])
    if predicted[top] < MAX_SHARE or truth[top] >= MAX_SHARE:
        return []
    return [
        f"It calls {predicted[top]:.0%} of faces {labels[top]!r} (only {truth[top]:.0%} are): it has not learned "
        f"to tell the expressions apart. {MORE_DATA}"
    ]
