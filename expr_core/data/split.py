"""Train/validation split that is stratified by label and never cuts through a group.

A group (:attr:`expr_core.data.store.Sample.group`) is a capture session, a subject or a source photo:
frames of one burst are near-duplicates, so putting some in training and others in validation would
make validation accuracy a memory test. Whole groups go to one side; the greedy assignment keeps
each label's validation share close to the requested fraction.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from expr_core.data.store import Sample
from expr_core.errors import DatasetError

MIN_SAMPLES_PER_LABEL = 4
MIN_GROUPS_PER_LABEL = 2


class SplitError(DatasetError):
    """The dataset is too small or too one-sided to train and validate honestly."""


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    labels: list[str]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{label: {"train": n, "val": n}}`` for reports."""
        train, val = Counter(s.label for s in self.train), Counter(s.label for s in self.val)
        return {label: {"train": train[label], "val": val[label]} for label in self.labels}


def check_trainable(samples: list[Sample], labels: list[str]) -> None:
    """Raise :class:`SplitError` saying exactly which label lacks samples or groups, and what to do."""
    if len(labels) < 2:
        raise SplitError(
            f"Training needs at least two labels with samples; there is only {labels[0]!r}."
            if labels
            else "The dataset has no samples yet: capture or import faces for at least two labels."
        )
    by_label: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_label[sample.label].append(sample)
    problems = []
    for label in labels:
        items = by_label[label]
        groups = {s.group for s in items}
        if len(items) < MIN_SAMPLES_PER_LABEL:
            problems.append(f"{label!r} has {len(items)} sample(s), at least {MIN_SAMPLES_PER_LABEL} are needed")
        elif len(groups) < MIN_GROUPS_PER_LABEL:
            problems.append(
                f"{label!r} has all its samples from one capture session, photo or subject; validation needs "
                f"at least {MIN_GROUPS_PER_LABEL} (record another session or import more photos)"
            )
    if problems:
        raise SplitError("Cannot validate honestly: " + "; ".join(problems) + ".")


def split_samples(samples: list[Sample], labels: list[str], val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split ``samples`` (of ``labels``) into train and validation, grouped and stratified.

    Groups are taken largest first (ties in a seeded random order) and each goes to validation when
    that moves the per-label validation counts closer to ``val_fraction`` of each label's total.
    Afterwards every label is guaranteed at least one group on each side.
    """
    samples = [s for s in samples if s.label in labels]
    check_trainable(samples, labels)
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group].append(sample)
    totals = Counter(s.label for s in samples)
    target = {label: val_fraction * totals[label] for label in labels}
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -len(groups[g]))
    val_count: Counter = Counter()
    val_groups: set[str] = set()
    for name in order:
        counts = Counter(s.label for s in groups[name])
        if _error(val_count + counts, target) < _error(val_count, target):
            val_groups.add(name)
            val_count += counts
    _ensure_both_sides(groups, labels, val_groups)
    train = [s for s in samples if s.group not in val_groups]
    val = [s for s in samples if s.group in val_groups]
    return Split(train=train, val=val, labels=list(labels))


def _error(counts: Counter, target: dict[str, float]) -> float:
    return sum(abs(counts[label] - want) for label, want in target.items())


def _ensure_both_sides(groups: dict[str, list[Sample]], labels: list[str], val_groups: set[str]) -> None:
    """Move the smallest suitable group across for any label left without validation or training samples."""
    for label in labels:
        having = sorted(
            (g for g, items in groups.items() if any(s.label == label for s in items)),
            key=lambda g: (len(groups[g]), g),
        )
        if not any(g in val_groups for g in having):
            val_groups.add(having[0])
        if all(g in val_groups for g in having):
            val_groups.discard(next(g for g in having if g in val_groups))
