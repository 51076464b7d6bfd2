"""Train/validation split that is stratified by label, never cuts through a group, and keeps people apart.

A group (:attr:`expr_core.data.store.Sample.group`) is a capture session, a subject or a source photo:
frames of one burst are near-duplicates, so putting some in training and others in validation would
make validation accuracy a memory test. Whole groups go to one side; the greedy assignment keeps
each label's validation share close to the requested fraction.

People matter too. If Ann's only 'sad' burst is in validation while her 'happy' one is in training, a
model that recognises Ann rather than her expression still scores. So the split works in one of two modes:

- ``people``: with at least :data:`MIN_PEOPLE` named people who each have every label, validation is a
  set of whole people and training everyone else: it measures how the model reads someone it never saw.
- ``sessions``: otherwise every person's labels are put on both sides where they have two or more
  sessions of that label, and each (person, label) with a single session while that person has other
  sessions is reported (:attr:`Split.identity_risks`) with a warning that says what to record next.

:func:`split_samples` is plain Python and cheap: the Train page calls it before a run to show the warnings.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from expr_core.data.store import Sample
from expr_core.errors import DatasetError

MIN_SAMPLES_PER_LABEL = 4
MIN_GROUPS_PER_LABEL = 2
MIN_PEOPLE = 3  # complete people for "people" mode: at least one for validation while training keeps two
PEOPLE, SESSIONS = "people", "sessions"
UNKNOWN_PERSON = "unknown"  # everyone whose name is not known counts as one person


class SplitError(DatasetError):
    """The dataset is too small or too one-sided to train and validate honestly."""


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    labels: list[str]
    mode: str = SESSIONS
    warnings: list[str] = field(default_factory=list)
    identity_risks: list[tuple[str, str]] = field(default_factory=list)  # (person, label) with one session

    def counts(self) -> dict[str, dict[str, int]]:
        """``{label: {"train": n, "val": n}}`` for reports."""
        train, val = Counter(s.label for s in self.train), Counter(s.label for s in self.val)
        return {label: {"train": train[label], "val": val[label]} for label in self.labels}

    def imbalance(self) -> float:
        """How many times more training samples the largest label has than the smallest."""
        train = [c["train"] for c in self.counts().values()]  # every label has training samples
        return round(max(train) / min(train), 2)

    def persons(self, side: str) -> list[str]:
        """The people on one side (``"train"`` or ``"val"``), sorted."""
        return sorted({person_of(s) for s in (self.train if side == "train" else self.val)})


def person_of(sample: Sample) -> str:
    """The sample's person for splits and reports; :data:`UNKNOWN_PERSON` when nobody is named."""
    return sample.who or UNKNOWN_PERSON


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


@dataclass
class _Groups:
    """The groups of a dataset: their samples, label counts and person, in a seeded largest-first order."""

    samples: dict[str, list[Sample]]
    counts: dict[str, Counter]
    person: dict[str, str]  # a group whose samples name several people counts as its most common one
    order: list[str]
    by_person: dict[str, list[str]]  # each person's groups, in order

    @classmethod
    def of(cls, samples: list[Sample], seed: int) -> _Groups:
        groups: dict[str, list[Sample]] = defaultdict(list)
        for sample in samples:
            groups[sample.group].append(sample)
        order = sorted(groups)
        random.Random(seed).shuffle(order)
        order.sort(key=lambda g: -len(groups[g]))
        person = {g: _most_common(person_of(s) for s in items) for g, items in groups.items()}
        by_person: dict[str, list[str]] = defaultdict(list)
        for name in order:
            by_person[person[name]].append(name)
        return cls(
            samples=dict(groups),
            counts={g: Counter(s.label for s in items) for g, items in groups.items()},
            person=person,
            order=order,
            by_person=dict(by_person),
        )

    def of_person(self, person: str, label: str | None = None) -> list[str]:
        """The person's groups (those holding ``label``, if given), in split order."""
        return [g for g in self.by_person[person] if label is None or self.counts[g][label]]

    def people(self) -> list[str]:
        return sorted(self.by_person)


def _most_common(names: Iterable[str]) -> str:
    counts = Counter(names)
    return min(counts, key=lambda name: (-counts[name], name))


def split_samples(samples: list[Sample], labels: list[str], val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split ``samples`` (of ``labels``) into train and validation, grouped, stratified and person-aware.

    Deterministic for a seed. Raises :class:`SplitError` when the data cannot be validated at all.
    """
    samples = [s for s in samples if s.label in labels]
    check_trainable(samples, labels)
    groups = _Groups.of(samples, seed)
    totals = Counter(s.label for s in samples)
    target = {label: val_fraction * totals[label] for label in labels}
    complete = [p for p in groups.people() if p != UNKNOWN_PERSON and _has_every_label(groups, p, labels)]
    if len(complete) >= MIN_PEOPLE:
        mode, risks = PEOPLE, []
        val_groups = _leave_people_out(groups, complete, target, seed)
    else:
        mode, risks = SESSIONS, _identity_risks(groups, labels)
        val_groups = _spread_sessions(groups, labels, target)
    train = [s for s in samples if s.group not in val_groups]
    val = [s for s in samples if s.group in val_groups]
    return Split(train, val, list(labels), mode, _identity_warnings(risks), risks)


def _has_every_label(groups: _Groups, person: str, labels: list[str]) -> bool:
    return all(groups.of_person(person, label) for label in labels)


def _error(counts: Counter, target: dict[str, float]) -> float:
    return sum(abs(counts[label] - want) for label, want in target.items())


def _leave_people_out(groups: _Groups, complete: list[str], target: dict[str, float], seed: int) -> set[str]:
    """Whole people for validation: largest first (ties seeded), each when it brings the counts closer to
    the target; at least one, and never so many that training keeps fewer than two complete people."""
    counts = {p: sum((groups.counts[g] for g in groups.of_person(p)), Counter()) for p in complete}
    order = sorted(complete)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda p: -sum(counts[p].values()))
    chosen: list[str] = []
    val_count: Counter = Counter()
    for person in order:
        if len(chosen) == len(complete) - (MIN_PEOPLE - 1):
            break
        if _error(val_count + counts[person], target) < _error(val_count, target):
            chosen.append(person)
            val_count += counts[person]
    if not chosen:
        chosen.append(min(order, key=lambda p: _error(counts[p], target)))
    return {g for person in chosen for g in groups.of_person(person)}


def _spread_sessions(groups: _Groups, labels: list[str], target: dict[str, float]) -> set[str]:
    """Sessions mode: every person's label with two or more sessions gets one on each side, then the
    remaining groups fill validation towards the target (largest first), then every label is made to
    have at least one group on each side."""
    val_groups: set[str] = set()
    kept: set[str] = set()  # groups that must stay in training
    for person in groups.people():
        for label in labels:
            having = groups.of_person(person, label)
            if len(having) < 2:
                continue
            if not any(g in val_groups for g in having):
                free = [g for g in having if g not in kept]
                if free:
                    val_groups.add(min(free, key=lambda g: len(groups.samples[g])))  # small: keeps the share low
            staying = [g for g in having if g not in val_groups]
            if staying and not any(g in kept for g in staying):
                kept.add(staying[0])
    val_count = sum((groups.counts[g] for g in val_groups), Counter())
    for name in groups.order:
        if name in val_groups or name in kept:
            continue
        if _error(val_count + groups.counts[name], target) < _error(val_count, target):
            val_groups.add(name)
            val_count += groups.counts[name]
    _ensure_both_sides(groups, labels, val_groups)
    return val_groups


def _ensure_both_sides(groups: _Groups, labels: list[str], val_groups: set[str]) -> None:
    """Move the smallest suitable group across for any label left without validation or training samples."""
    for label in labels:
        having = sorted((g for g in groups.order if groups.counts[g][label]), key=lambda g: (len(groups.samples[g]), g))
        if not any(g in val_groups for g in having):
            val_groups.add(having[0])
        if all(g in val_groups for g in having):
            val_groups.discard(next(g for g in having if g in val_groups))


def _identity_risks(groups: _Groups, labels: list[str]) -> list[tuple[str, str]]:
    """(person, label) pairs with one session of that label while the person has other sessions: wherever
    that session goes, the person's labels are split by side, and a model can score by knowing who it is."""
    return [
        (person, label)
        for person in groups.people()
        if len(groups.of_person(person)) > 1
        for label in labels
        if len(groups.of_person(person, label)) == 1
    ]


def _identity_warnings(risks: list[tuple[str, str]]) -> list[str]:
    """One plain-English warning per person at risk, saying what to record next."""
    by_person: dict[str, list[str]] = defaultdict(list)
    for person, label in risks:
        by_person[person].append(label)
    warnings = []
    for person, labels in by_person.items():
        what = " and ".join(repr(label) for label in labels)
        each = " each" if len(labels) > 1 else ""
        unnamed = person == UNKNOWN_PERSON
        who = "The unnamed person (faces recorded without a name)" if unnamed else person
        whom = "them (type your name in the sidebar first)" if unnamed else person
        warnings.append(
            f"{who} has only one burst{each} of {what}, so validation cannot tell a model that reads the "
            f"expression from one that recognises who it is: record another burst{each} of {what} for {whom}, "
            "or add another person."
        )
    return warnings
