"""The labelled face dataset of a workspace: labels, sample images and their manifest.

Layout under ``<workspace>/dataset``::

    labels.json       ordered list of label names
    manifest.jsonl    one JSON object per sample (see :class:`Sample`)
    images/<id>.jpg   the crops, named by sample id (labels live in the manifest, so renaming a
                      label never moves files)
    .lock             advisory lock serialising writers across threads and processes

Crash safety: an image is written atomically before its manifest line is appended, so a crash can
leave at most an orphan image (never listed) or a torn last manifest line (skipped on read). Several
browser sessions and CLI imports can write at once: every write holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from expr_core import atomic
from expr_core.data import features
from expr_core.errors import DatasetError, DiskFull, InvalidLabel, disk_full, is_disk_full

DEFAULT_LABELS = ("happy", "sad")
SOURCES = ("webcam", "upload", "import", "review")
MAX_LABEL_LEN = 40
RESERVED_LABELS = (
    {"con", "prn", "aux", "nul", "images", "manifest", "labels"}
    | {f"com{i}" for i in range(10)}
    | {f"lpt{i}" for i in range(10)}
)
JPEG_QUALITY = 95
# ``captured_by`` values that name nobody: the app's default before a user types a name, and the CLI's.
PLACEHOLDER_NAMES = ("anonymous", "cli", "")
MAX_PERSON_LEN = 80


@dataclass(frozen=True)
class SampleInfo:
    """What is known about a face crop besides its pixels: its label and where it came from."""

    label: str
    source: str
    session: str
    score: float | None = None
    captured_by: str = "anonymous"
    subject: str | None = None
    origin: str | None = None  # file name it was imported from, if any
    person: str | None = None  # who is in the crop, when the user said so (see :attr:`who`)

    @property
    def who(self) -> str | None:
        """The person in the crop as far as it is known, or None.

        The user's own setting first (someone may record a friend under their own name), then the subject of
        an import, then whoever captured it unless that is a placeholder ("anonymous", "cli"). Splits use it
        to keep one person's faces from teaching the model who they are instead of what they show.
        """
        if self.person:
            return self.person
        if self.subject:
            return self.subject
        name = self.captured_by.strip()
        return None if name.casefold() in PLACEHOLDER_NAMES else name

    @property
    def group(self) -> str:
        """The unit a validation split must not cut through.

        The subject when known; for imported photos without one, the photo itself (several faces of
        one photo stay together); otherwise the capture session, so frames of one burst stay together.
        """
        if self.subject:
            return f"subject:{self.subject}"
        if self.source == "import" and self.origin:
            return f"origin:{self.origin}"
        return f"session:{self.session}"

    def info(self) -> dict[str, Any]:
        """The :class:`SampleInfo` fields alone (a :class:`Sample` or :class:`NewSample` has more)."""
        return {f.name: getattr(self, f.name) for f in fields(SampleInfo)}


@dataclass(frozen=True)
class Sample(SampleInfo):
    """One labelled face crop in the dataset (a manifest line)."""

    id: str = field(kw_only=True)
    created: float = field(kw_only=True)


@dataclass(frozen=True)
class NewSample(SampleInfo):
    """A crop about to be added; the store assigns id and time."""

    image: np.ndarray = field(kw_only=True)


def new_id() -> str:
    """Unique, time-ordered sample or session id."""
    return f"{time.time_ns() // 1_000_000:x}{secrets.token_hex(4)}"


# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt): invisible when shown, so a label
# with one appended looks exactly like another label.
_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
SAMPLE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what new_id makes (and what is safe as a file name)


def _invisible(ch: str) -> bool:
    return any(low <= ord(ch) <= high for low, high in _IGNORABLE)


def looks_like(label: str) -> str:
    """What a label looks like to a reader: compatibility forms (full-width letters, ligatures) and case folded."""
    return unicodedata.normalize("NFKC", label).casefold()


def validate_label(name: str, existing: Iterable[str] = ()) -> str:
    """The normalised label, or :class:`InvalidLabel` saying exactly what is wrong with it."""
    if not isinstance(name, str):
        raise InvalidLabel("A label must be text.")
    label = unicodedata.normalize("NFC", name).strip()
    if not label:
        raise InvalidLabel("A label cannot be empty.")
    if any(_invisible(ch) for ch in label):
        raise InvalidLabel(
            f"{label!r} contains invisible characters (it would look like another label); type it again."
        )
    if len(label) > MAX_LABEL_LEN:
        raise InvalidLabel(f"A label can have at most {MAX_LABEL_LEN} characters; {label[:20]!r}... has {len(label)}.")
    # Combining marks (category M*) are part of letters in Devanagari, Thai, Arabic, ... but cannot start a label.
    allowed = all(ch.isalnum() or ch in " _-" or unicodedata.category(ch).startswith("M") for ch in label)
    if not allowed or not label[0].isalnum():
        raise InvalidLabel(
            f"{label!r} is not allowed: use letters (any alphabet), digits, spaces, '-' and '_', starting with a "
            "letter or digit (no '/', '..' or other path characters)."
        )
    if label.lower() in RESERVED_LABELS:
        raise InvalidLabel(f"{label!r} is a reserved name; choose another.")
    same = [other for other in existing if looks_like(other) == looks_like(label)]
    if same:
        also = "" if same[0] == label else f" ({same[0]!r} looks the same)"
        raise InvalidLabel(f"There is already a label called {label!r}{also}.")
    return label


class DatasetStore:
    """Thread- and process-safe access to one workspace's dataset."""

    def __init__(self, workspace: Path, featurizer: features.Featurizer | None = None) -> None:
        """``featurizer`` computes each new sample's base features right after it is stored (see
        :class:`expr_core.data.features.Featurizer`): the app's and the CLI's stores have one, so the next
        run trains in seconds."""
        self.featurizer = featurizer
        self.root = Path(workspace) / "dataset"
        self.images_dir = self.root / "images"
        self._manifest = self.root / "manifest.jsonl"
        self._labels_file = self.root / "labels.json"
        self._thread_lock = threading.Lock()

    # -- locking -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.images_dir.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- labels --------------------------------------------------------------------------------
    def labels(self) -> list[str]:
        return list(atomic.read_json(self._labels_file, list(DEFAULT_LABELS)))

    def add_label(self, name: str) -> str:
        validate_label(name, self.labels())  # refuse before _locked() creates any folder; re-checked below
        with self._locked():
            labels = self.labels()
            label = validate_label(name, labels)
            atomic.write_json(self._labels_file, [*labels, label])
        return label

    def rename_label(self, old: str, new: str) -> str:
        self._require_label(old, self.labels())  # refuse before _locked() creates any folder; re-checked below
        validate_label(new, [x for x in self.labels() if x != old])
        with self._locked():
            labels = self.labels()
            self._require_label(old, labels)
            label = validate_label(new, [x for x in labels if x != old])
            samples = [s if s.label != old else replace(s, label=label) for s in self._read()]
            self._rewrite(samples)
            atomic.write_json(self._labels_file, [label if x == old else x for x in labels])
        return label

    def delete_label(self, name: str, delete_samples: bool = False) -> int:
        """Remove a label; its samples too only when asked, so no click loses data by surprise."""
        self._require_label(name, self.labels())  # refuse before _locked() creates any folder; re-checked below
        with self._locked():
            labels = self.labels()
            self._require_label(name, labels)
            doomed = [s for s in self._read() if s.label == name]
            if doomed and not delete_samples:
                raise DatasetError(
                    f"Label {name!r} still has {len(doomed)} samples; delete them too or move them first."
                )
            self._remove(doomed)
            atomic.write_json(self._labels_file, [x for x in labels if x != name])
        return len(doomed)

    def _require_label(self, name: str, labels: list[str]) -> None:
        if name not in labels:
            raise DatasetError(f"There is no label {name!r}; the labels are {', '.join(labels) or 'none'}.")

    # -- samples -------------------------------------------------------------------------------
    def _read(self) -> list[Sample]:
        try:
            lines = self._manifest.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        samples = []
        for line in lines:
            try:  # each line decoded alone: one torn inside a multi-byte character must not hide the others
                sample = Sample(**json.loads(line.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
                continue  # a line torn by a crash mid-append
            # An id names the sample's files: one that is not ours (a hand-edited or crafted manifest) could
            # point outside the dataset, so such a line is skipped like a torn one.
            if isinstance(sample.id, str) and SAMPLE_ID.fullmatch(sample.id):
                samples.append(sample)
        return samples

    def samples(self, label: str | None = None) -> list[Sample]:
        """Samples whose image exists, oldest first, optionally of one label."""
        present = {p.stem for p in self.images_dir.glob("*.jpg")} if self.images_dir.is_dir() else set()
        return [s for s in self._read() if s.id in present and (label is None or s.label == label)]

    def image_path(self, sample: Sample | str) -> Path:
        return self.images_dir / f"{sample if isinstance(sample, str) else sample.id}.jpg"

    def load_image(self, sample: Sample) -> np.ndarray:
        """The crop as BGR; :class:`DatasetError` naming the sample if its file is missing, truncated or garbage."""
        path = self.image_path(sample)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(
                f"Sample {sample.id} ({sample.label}) has an unreadable image file ({path}: {exc.strerror or exc})."
            ) from exc
        # Every stored crop is a whole JPEG (written atomically), which ends with the EOI marker; OpenCV would
        # decode a truncated one without complaint, as a partly grey picture.
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data.endswith(b"\xff\xd9") else None
        if image is None:
            raise DatasetError(
                f"Sample {sample.id} ({sample.label}) has an unreadable image file ({path}: "
                f"{'truncated or ' if data else 'empty, '}not a complete JPEG)."
            )
        return image

    def add_samples(self, items: list[NewSample]) -> list[Sample]:
        """Store crops: every image atomically first, then all their manifest lines in one append."""
        if not items:
            return []
        with self._locked():
            labels = self.labels()
            for item in items:
                self._require_label(item.label, labels)
                if item.source not in SOURCES:
                    raise DatasetError(f"Unknown sample source {item.source!r}.")
            if not self._labels_file.exists():
                atomic.write_json(self._labels_file, labels)
            added: list[Sample] = []
            size = None
            try:
                for item in items:
                    added.append(self._write_image(item))
                text = "".join(json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in added)
                with open(self._manifest, "a+b") as handle:
                    size = handle.seek(0, os.SEEK_END)
                    if size > 0:
                        handle.seek(-1, os.SEEK_END)
                        if handle.read(1) != b"\n":
                            # A crash mid-append left a torn last line: start a fresh line, or the first new
                            # sample would be glued onto the torn one and skipped with it on read.
                            text = "\n" + text
                    handle.write(text.encode("utf-8"))
                    handle.flush()
                    os.fsync(handle.fileno())
            except BaseException as exc:
                self._undo_add(added, size)
                if is_disk_full(exc) and not isinstance(exc, DiskFull):
                    raise disk_full(self.root) from exc
                raise
        if self.featurizer is not None:
            self.featurizer.add(self.root, [(s.id, item.image) for s, item in zip(added, items, strict=True)])
        return added

    def _undo_add(self, added: list[Sample], manifest_size: int | None) -> None:
        """After a failed add (a full disk, say): cut any partly appended lines, then remove the batch's images."""
        if manifest_size is not None:
            with contextlib.suppress(OSError), open(self._manifest, "r+b") as handle:
                handle.truncate(manifest_size)  # shrinking a file never needs free space
        for sample in added:
            with contextlib.suppress(OSError):
                self.image_path(sample).unlink()

    def _write_image(self, item: NewSample) -> Sample:
        ok, encoded = cv2.imencode(".jpg", item.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise DatasetError("Could not encode a face crop as JPEG.")
        score = None if item.score is None else round(float(item.score), 4)
        sample = Sample(**{**item.info(), "score": score}, id=new_id(), created=time.time())
        atomic.write_bytes(self.image_path(sample), encoded.tobytes())
        return sample

    def set_person(self, ids: Iterable[str], person: str | None) -> int:
        """Say who is in these samples (``None`` or blank: back to what capture or import recorded).

        Returns how many samples changed. One atomic manifest rewrite under the lock, like renaming a label.
        """
        name = unicodedata.normalize("NFC", person).strip() if person else ""
        if len(name) > MAX_PERSON_LEN:
            raise DatasetError(f"A person's name can have at most {MAX_PERSON_LEN} characters, not {len(name)}.")
        wanted, value = set(ids), name or None
        with self._locked():
            samples = self._read()
            changed = [s.id for s in samples if s.id in wanted and s.person != value]
            if changed:
                self._rewrite([replace(s, person=value) if s.id in wanted else s for s in samples])
        return len(changed)

    def delete_samples(self, ids: Iterable[str]) -> int:
        wanted = set(ids)
        with self._locked():
            doomed = [s for s in self._read() if s.id in wanted]
            self._remove(doomed)
        return len(doomed)

    def _remove(self, doomed: list[Sample]) -> None:
        """Drop samples from the manifest first (atomic rewrite), then their files."""
        if not doomed:
            return
        gone = {s.id for s in doomed}
        self._rewrite([s for s in self._read() if s.id not in gone])
        for sample in doomed:
            with contextlib.suppress(FileNotFoundError):
                self.image_path(sample).unlink()
        features.forget(self.root, gone)

    def _rewrite(self, samples: list[Sample]) -> None:
        with atomic.atomic_writer(self._manifest, "w") as handle:
            handle.write("".join(json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in samples))

    def delete_all(self) -> None:
        """Remove every sample and reset the labels to the defaults."""
        with self._locked():
            self._remove(self._read())
            atomic.write_json(self._labels_file, list(DEFAULT_LABELS))

    # -- summaries -----------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Sample count per label, in label order, zero for empty labels."""
        counts = Counter(s.label for s in self.samples())
        return {label: counts.get(label, 0) for label in self.labels()}
