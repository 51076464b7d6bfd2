"""The command line: the same functions the app uses, for scripts, servers and benchmarks.

Exit status: 0 success, 1 some inputs failed (the rest were processed), 2 bad usage or bad input
(nothing written). Messages go to stderr; machine-readable results to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import UserError
from .settings import Settings, load_settings

EXIT_PARTIAL = 1
EXIT_BAD_INPUT = 2


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    changes = {}
    if getattr(args, "workspace", None):
        changes["workspace"] = Path(args.workspace)
    if getattr(args, "models_dir", None):
        changes["models_dir"] = Path(args.models_dir)
    if getattr(args, "detector", None):
        changes["detector"] = args.detector
    return settings.with_(**changes)


def _detector(settings: Settings):
    from .faces import open_detector

    detector, warning = open_detector(settings)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return detector


def cmd_detect(args: argparse.Namespace) -> int:
    from .faces import Face
    from .images import decode_image, read_file

    settings = _settings(args)
    detector = _detector(settings)
    results, failed = [], 0
    for name in args.images:
        entry: dict = {"image": name, "faces": [], "error": None}
        try:
            image = decode_image(read_file(Path(name)), name)
            start = time.perf_counter()
            faces: list[Face] = detector.detect(image)
            entry["detect_ms"] = round((time.perf_counter() - start) * 1000, 2)
            entry["faces"] = [{"box": list(f.box), "score": round(f.score, 4)} for f in faces]
        except UserError as exc:
            entry["error"] = str(exc)
            failed += 1
        results.append(entry)
        if not args.json:
            print(f"{name}: {entry['error'] or str(len(entry['faces'])) + ' face(s)'}")
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    timed = [r["detect_ms"] for r in results if "detect_ms" in r]
    if timed:
        print(f"{detector.name}: {len(timed)} image(s), {sum(timed) / len(timed):.1f} ms per image", file=sys.stderr)
    return EXIT_PARTIAL if failed else 0


def cmd_dataset_import(args: argparse.Namespace) -> int:
    from .dataset import DatasetStore
    from .dataset_io import ImportOptions, import_paths, precheck

    if bool(args.label) == bool(args.from_folder):
        raise UserError("Give either --label L with paths, or --from-folder DIR (one subfolder per label).")
    if args.label and not args.paths:
        raise UserError("Name at least one image, folder or zip file to import.")
    settings = _settings(args)
    store = DatasetStore(settings.workspace)
    options = ImportOptions(label=args.label, cropped=args.cropped, largest_only=not args.all_faces,
                            captured_by=args.captured_by)
    paths = [Path(args.from_folder)] if args.from_folder else [Path(p) for p in args.paths]
    precheck(store, paths, options)  # a typo'd path or label must not first load (or download) a detector
    detector = None if args.cropped else _detector(settings)
    report = import_paths(store, paths, detector, settings, options)
    for name, reason in report.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    summary = {"added": report.added, "skipped": len(report.skipped), "session": report.session}
    print(json.dumps(summary) if args.json else f"added {report.total_added} sample(s): {report.added}")
    return EXIT_PARTIAL if report.skipped or not report.total_added else 0


def cmd_dataset_export(args: argparse.Namespace) -> int:
    from .dataset import DatasetStore
    from .dataset_io import export_zip

    out = Path(args.out)
    if out.suffix.lower() != ".zip":
        raise UserError(f"{out}: the export file name must end in .zip.")
    count = export_zip(DatasetStore(_settings(args).workspace), out)
    print(f"exported {count} sample(s) to {out}", file=sys.stderr)
    return 0


def cmd_dataset_stats(args: argparse.Namespace) -> int:
    from .dataset import DatasetStore

    stats = DatasetStore(_settings(args).workspace).stats()
    result = {"labels": stats, "total": sum(stats.values())}
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in stats.items()))
    return 0


def cmd_dataset_labels(args: argparse.Namespace) -> int:
    from .dataset import DatasetStore

    store = DatasetStore(_settings(args).workspace)
    if args.add is not None:  # `--add ""` is a mistake to report, not a no-op
        store.add_label(args.add)
    if args.rename:
        store.rename_label(*args.rename)
    if args.delete is not None:
        store.delete_label(args.delete, delete_samples=args.with_samples)
    print("\n".join(store.labels()))
    return 0


def _common(parser: argparse.ArgumentParser, workspace: bool = True) -> None:
    if workspace:
        parser.add_argument("--workspace", help="workspace folder (default: EXPR_HOME or ./workspace)")
    parser.add_argument("--models-dir", help="folder searched first for model files (EXPR_MODELS_DIR)")
    parser.add_argument("--detector", choices=["yunet", "ssd", "haar"], help="face detector (EXPR_DETECTOR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m expr_core", description="Facial Expression Studio command line")
    sub = parser.add_subparsers(dest="command", required=True)

    detect = sub.add_parser("detect", help="find faces in images")
    detect.add_argument("images", nargs="+")
    detect.add_argument("--json", action="store_true")
    _common(detect, workspace=False)
    detect.set_defaults(func=cmd_detect)

    dataset = sub.add_parser("dataset", help="manage the labelled dataset").add_subparsers(dest="action", required=True)
    imp = dataset.add_parser("import", help="add images, folders or zips")
    imp.add_argument("paths", nargs="*")
    imp.add_argument("--label", help="label for all images")
    imp.add_argument("--from-folder", help="folder with one subfolder per label (e.g. FER2013's layout)")
    imp.add_argument("--cropped", action="store_true", help="images are already face crops: do not detect")
    imp.add_argument("--all-faces", action="store_true", help="keep every face of a photo, not just the largest")
    imp.add_argument("--captured-by", default="cli")
    imp.add_argument("--json", action="store_true")
    _common(imp)
    imp.set_defaults(func=cmd_dataset_import)

    exp = dataset.add_parser("export", help="write the dataset as a zip")
    exp.add_argument("out")
    _common(exp)
    exp.set_defaults(func=cmd_dataset_export)

    stats = dataset.add_parser("stats", help="samples per label")
    stats.add_argument("--json", action="store_true")
    _common(stats)
    stats.set_defaults(func=cmd_dataset_stats)

    labels = dataset.add_parser("labels", help="list, add, rename or delete labels")
    labels.add_argument("--add")
    labels.add_argument("--rename", nargs=2, metavar=("OLD", "NEW"))
    labels.add_argument("--delete")
    labels.add_argument("--with-samples", action="store_true", help="with --delete: delete the label's samples too")
    _common(labels)
    labels.set_defaults(func=cmd_dataset_labels)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
