"""Bringing images into the dataset (files, class folders, zips) and taking it out as a zip.

Import is two-step so that bad input writes nothing: every named path is opened and checked first
(missing files, unreadable or unsafe archives abort the whole import); then each image is decoded,
its faces cropped, and the crops are committed. Individual bad images inside a folder or archive are
skipped and reported, not fatal, so one broken file does not spoil a 10,000-image import.
"""

from __future__ import annotations

import csv
import io
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expr_core import atomic
from expr_core.data.store import DatasetStore, NewSample, looks_like, new_id, validate_label
from expr_core.errors import BadInput, DatasetError, InvalidLabel
from expr_core.settings import Settings
from expr_core.spreadsheet import safe_row
from expr_core.vision.faces import Face, FaceDetector, detect_and_crop
from expr_core.vision.images import RawImage, decode_image, iter_path_images, iter_zip_images

COMMIT_EVERY = 256
COMMIT_BYTES = 32 * 2**20  # decoded crops waiting to be stored: large --cropped photos are committed sooner


@dataclass
class ImportReport:
    added: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    session: str = ""

    @property
    def total_added(self) -> int:
        return sum(self.added.values())


@dataclass(frozen=True)
class ImportOptions:
    """How to turn images into samples: fixed label or one per class folder, crop or keep as-is."""

    label: str | None = None
    cropped: bool = False
    largest_only: bool = True
    source: str = "import"
    captured_by: str = "anonymous"


def precheck(store: DatasetStore, paths: list[Path], options: ImportOptions) -> None:
    """The cheap checks, for callers to run before loading (perhaps downloading) a face detector."""
    _check_paths(paths)
    _check_label(store, options)


def _check_paths(paths: list[Path]) -> None:
    if not paths:
        raise BadInput("Nothing to import: name at least one image, folder or zip file.")
    for path in paths:
        if not path.exists():
            raise BadInput(f"{path}: no such file or folder.")


def _check_label(store: DatasetStore, options: ImportOptions) -> None:
    existing = store.labels()
    if options.label is not None and options.label not in existing:
        raise DatasetError(f"There is no label {options.label!r}; create it first (labels: {', '.join(existing)}).")


def _check_all(paths: list[Path]) -> None:
    """Refuse the whole import if any named path is missing or an archive is unsafe, before any write."""
    _check_paths(paths)
    for path in paths:
        if path.is_file() and path.suffix.lower() == ".zip":
            list(iter_zip_images(path.read_bytes(), str(path)))  # full check; members are re-read later


def _subjects(folder: Path) -> dict[str, str]:
    """``path -> subject`` from an optional ``labels.csv`` (e.g. LFW's), so splits can group by person."""
    table = folder / "labels.csv"
    if not table.is_file():
        return {}
    with open(table, newline="", encoding="utf-8") as handle:
        return {row["path"]: row["subject"] for row in csv.DictReader(handle) if row.get("path") and row.get("subject")}


def _labels_needed(raws: list[RawImage], store: DatasetStore, options: ImportOptions) -> list[str]:
    existing = store.labels()
    if options.label is not None:
        _check_label(store, options)
        return []
    folders = sorted({r.folder for r in raws if r.folder})
    new: list[str] = []
    for name in folders:
        if _folder_label(name, [*existing, *new]) is not None:
            continue
        try:
            new.append(validate_label(name, [*existing, *new]))
        except InvalidLabel:
            continue  # reported per image below
    return new


def _folder_label(folder: str, labels: list[str]) -> str | None:
    """The label a class folder stands for: one that looks the same (macOS zips use NFD; any case or width)."""
    key = looks_like(folder.strip())
    return next((label for label in labels if looks_like(label) == key), None)


def _to_samples(
    raw: RawImage,
    label: str,
    detector: FaceDetector | None,
    settings: Settings,
    options: ImportOptions,
    session: str,
    subject: str | None,
) -> list[NewSample]:
    image = decode_image(raw.read(), raw.name)
    crops: Sequence[tuple[Face | None, np.ndarray]]
    if options.cropped or detector is None:
        crops = [(None, image)]
    else:
        crops = detect_and_crop(detector, image, settings.crop_margin, settings.crop_size, options.largest_only)
        if not crops:
            raise BadInput(f"{raw.name}: no face found.")
    return [
        NewSample(
            image=crop,
            label=label,
            source=options.source,
            session=session,
            score=None if face is None else face.score,
            captured_by=options.captured_by,
            subject=subject,
            origin=raw.name,
        )
        for face, crop in crops
    ]


def import_raw(
    store: DatasetStore,
    raws: Iterable[RawImage],
    detector: FaceDetector | None,
    settings: Settings,
    options: ImportOptions,
    subjects: dict[str, str] | None = None,
) -> ImportReport:
    """Crop and add already-read images; labels come from ``options.label`` or each image's folder."""
    raws = list(raws)
    report = ImportReport(session=new_id())
    # New class-folder labels are created only when their first samples are committed (see _commit), so
    # a folder whose images all fail leaves the dataset untouched.
    labels = [*store.labels(), *_labels_needed(raws, store, options)]
    pending: list[NewSample] = []
    for raw in raws:
        label = options.label or (_folder_label(raw.folder, labels) if raw.folder else None)
        if label is None:
            report.skipped.append(
                (
                    raw.name,
                    f"folder {raw.folder!r} is not a usable label" if raw.folder else "not inside a label folder",
                )
            )
            continue
        try:
            subject = (subjects or {}).get(_relative_key(raw.name))
            pending += _to_samples(raw, label, detector, settings, options, report.session, subject)
        except BadInput as exc:
            report.skipped.append((raw.name, str(exc).split(": ", 1)[-1]))
        if len(pending) >= COMMIT_EVERY or sum(item.image.nbytes for item in pending) >= COMMIT_BYTES:
            _commit(store, pending, report)
    _commit(store, pending, report)
    return report


def _relative_key(name: str) -> str:
    parts = Path(name).parts
    return "/".join(parts[-2:])


def _commit(store: DatasetStore, pending: list[NewSample], report: ImportReport) -> None:
    for label in sorted({item.label for item in pending} - set(store.labels())):
        store.add_label(label)
    for sample in store.add_samples(pending):
        report.added[sample.label] = report.added.get(sample.label, 0) + 1
    pending.clear()


def import_paths(
    store: DatasetStore, paths: list[Path], detector: FaceDetector | None, settings: Settings, options: ImportOptions
) -> ImportReport:
    """Import images, folders and zips named on the command line or uploaded by the app."""
    paths = [Path(p) for p in paths]
    _check_all(paths)
    subjects: dict[str, str] = {}
    for path in paths:
        if path.is_dir():
            subjects.update(_subjects(path))
    raws = _iter_all(paths)
    return import_raw(store, raws, detector, settings, options, subjects)


def _iter_all(paths: list[Path]) -> Iterator[RawImage]:
    for path in paths:
        yield from iter_path_images(path)


def import_uploads(
    store: DatasetStore,
    files: list[tuple[str, bytes]],
    detector: FaceDetector | None,
    settings: Settings,
    options: ImportOptions,
) -> ImportReport:
    """Import browser uploads given as ``(file name, bytes)``; zips are expanded after their check."""
    raws: list[RawImage] = []
    for name, data in files:
        if name.lower().endswith(".zip"):
            raws += list(iter_zip_images(data, name))
        else:
            raws.append(RawImage.of(name, data))
    return import_raw(store, raws, detector, settings, options)


def export_zip(store: DatasetStore, out: Path) -> int:
    """Write ``<label>/<id>.jpg`` for every sample plus ``manifest.csv``; atomic, so never a half zip."""
    samples = store.samples()
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["path", "label", "source", "session", "created", "score", "captured_by", "subject", "origin"])
    written = 0
    with atomic.atomic_writer(Path(out)) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as zf:
        for s in samples:
            arc = f"{s.label}/{s.id}.jpg"
            try:
                zf.write(store.image_path(s), arc)
            except FileNotFoundError:
                continue  # deleted by someone else while we were exporting
            written += 1
            writer.writerow(
                safe_row([arc, s.label, s.source, s.session, s.created, s.score, s.captured_by, s.subject, s.origin])
            )
        zf.writestr("manifest.csv", table.getvalue())
    return written


def export_bytes(store: DatasetStore) -> bytes:
    """The export zip as bytes, for a browser download (built in a temporary file, then read)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dataset.zip"
        export_zip(store, out)
        return out.read_bytes()
