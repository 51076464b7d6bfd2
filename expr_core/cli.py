"""The command line: the same functions the app uses, for scripts, servers and benchmarks.

Exit status: 0 success, 1 some inputs failed (the rest were processed), 2 bad usage or bad input
(nothing written). Messages go to stderr; machine-readable results to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expr_core import starter
from expr_core.backbones import BACKBONES, limit_onednn_to_avx2, prepare_tensorflow
from expr_core.errors import UserError, os_problem
from expr_core.jobs.folder import JobState, reporting_to
from expr_core.live.pipeline import (
    FACES_PER_FRAME,
    MAX_READS_PER_S,
    STREAM_DETECT_SIDE,
    ClassifySchedule,
    ExpressionPipeline,
)
from expr_core.serving import Classifier, Predictor, open_model
from expr_core.settings import JOB_BACKENDS, Settings, load_settings
from expr_core.starter import StarterClassifier

if TYPE_CHECKING:
    from expr_core.registry import Registry
    from expr_core.train_config import TrainConfig
    from expr_core.vision.faces import FaceDetector

EXIT_PARTIAL = 1
EXIT_BAD_INPUT = 2


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite number replaced by ``None``: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(value: Any, indent: int | None = None) -> str:
    """What every command prints with --json: valid JSON always (a broken model's NaN becomes null)."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    changes = {}
    if getattr(args, "workspace", None):
        changes["workspace"] = Path(args.workspace)
    if getattr(args, "models_dir", None):
        changes["models_dir"] = Path(args.models_dir)
    if getattr(args, "detector", None):
        changes["detector"] = args.detector
    if getattr(args, "cache_dir", None):
        changes["cache_dir"] = Path(args.cache_dir)
    if getattr(args, "backend", None):
        changes["job_backend"] = args.backend
    if getattr(args, "ray_address", None):
        changes["ray_address"] = args.ray_address
    return settings.with_(**changes)


def _detector(settings: Settings) -> FaceDetector:
    from expr_core.vision.faces import open_detector

    detector, warning = open_detector(settings)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return detector


def cmd_detect(args: argparse.Namespace) -> int:
    from expr_core.vision.faces import Face
    from expr_core.vision.images import decode_image, read_file

    settings = _settings(args)
    detector = _detector(settings)
    classifier = _open_classifier(args.model, args.labels, settings) if args.model else None
    results, failed = [], 0
    for name in args.images:
        entry: dict = {"image": name, "faces": [], "error": None}
        try:
            image = decode_image(read_file(Path(name)), name)
            start = time.perf_counter()
            faces: list[Face] = detector.detect(image)
            entry["detect_ms"] = round((time.perf_counter() - start) * 1000, 2)
            entry["faces"] = [{"box": list(f.box), "score": round(f.score, 4)} for f in faces]
            if classifier is not None:
                _classify_faces(classifier, image, faces, entry["faces"], settings)
        except UserError as exc:
            entry["error"] = str(exc)
            failed += 1
        results.append(entry)
        if not args.json:
            print(f"{name}: {entry['error'] or str(len(entry['faces'])) + ' face(s)'}")
    if args.json:
        print(_json(results, indent=2))
    timed = [r["detect_ms"] for r in results if "detect_ms" in r]
    if timed:
        print(f"{detector.name}: {len(timed)} image(s), {sum(timed) / len(timed):.1f} ms per image", file=sys.stderr)
    return EXIT_PARTIAL if failed else 0


def _classify_faces(classifier, image, faces, entries: list[dict], settings: Settings) -> None:
    """Add ``label`` and ``probs`` to each face entry: all crops of the image in one batch."""
    from expr_core.vision.faces import crop_face

    crops = [crop_face(image, f, settings.crop_margin, classifier.input_size) for f in faces]
    for entry, probs in zip(entries, classifier.predict(crops), strict=True):
        entry["label"] = classifier.labels[int(probs.argmax())]
        entry["probs"] = {label: round(float(p), 4) for label, p in zip(classifier.labels, probs, strict=True)}


def cmd_video(args: argparse.Namespace) -> int:
    """Annotate a video; with ``--job-dir`` (the app's worker) progress and the outcome go to that job folder."""
    from expr_core.worker.video import annotate_video

    settings = _settings(args)
    folder = Path(args.job_dir) if args.job_dir else None
    if settings.job_backend == "ray":
        from expr_core.jobs import ray_backend

        options = ["--smoothing", str(args.smoothing), "--faces-per-frame", str(args.faces_per_frame)]
        options += ["--reads-per-second", str(args.reads_per_second), "--detect-side", str(args.detect_side)]
        options += ["--labels", args.labels] if args.labels else []
        print(ray_backend.video(settings, Path(args.input), Path(args.output), args.model, options, folder))
        return 0
    with reporting_to(folder) as writer:
        pipeline = ExpressionPipeline(
            _detector(settings),
            _open_classifier(args.model, args.labels, settings),
            settings.crop_margin,
            smoothing_s=args.smoothing,
            detect_side=args.detect_side or None,
            schedule=ClassifySchedule(args.faces_per_frame, args.reads_per_second),
        )
        summary = annotate_video(Path(args.input), Path(args.output), pipeline, writer)
    print(_json(summary))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Grad-CAM heat maps for every face of an image, written as PNGs; a JSON summary on stdout."""
    from expr_core.vision.images import decode_image, read_file

    settings = _settings(args)
    image = decode_image(read_file(Path(args.image)), args.image)  # refused here, before anything is shipped
    if settings.job_backend == "ray":
        from expr_core.jobs import ray_backend

        print(ray_backend.explain(settings, Path(args.image), args.model, Path(args.out)))
        return 0
    limit_onednn_to_avx2()  # a gradient through any backbone: the one kernel set that is safe for all of them
    from expr_core.worker.explain import explain_image

    faces = explain_image(Path(args.model), image, _detector(settings), settings, Path(args.out))
    print(_json({"image": args.image, "faces": faces}))
    return 0


def cmd_dataset_import(args: argparse.Namespace) -> int:
    from expr_core.data.features import Featurizer
    from expr_core.data.store import DatasetStore
    from expr_core.data.transfer import ImportOptions, import_paths, precheck

    if bool(args.label) == bool(args.from_folder):
        raise UserError("Give either --label L with paths, or --from-folder DIR (one subfolder per label).")
    if args.label and not args.paths:
        raise UserError("Name at least one image, folder or zip file to import.")
    settings = _settings(args)
    store = DatasetStore(settings.workspace, Featurizer(settings))  # features now: the next run trains in seconds
    options = ImportOptions(
        label=args.label, cropped=args.cropped, largest_only=not args.all_faces, captured_by=args.captured_by
    )
    paths = [Path(args.from_folder)] if args.from_folder else [Path(p) for p in args.paths]
    precheck(store, paths, options)  # a typo'd path or label must not first load (or download) a detector
    detector = None if args.cropped else _detector(settings)
    report = import_paths(store, paths, detector, settings, options)
    for name, reason in report.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    summary = {"added": report.added, "skipped": len(report.skipped), "session": report.session}
    print(_json(summary) if args.json else f"added {report.total_added} sample(s): {report.added}")
    return EXIT_PARTIAL if report.skipped or not report.total_added else 0


def cmd_dataset_export(args: argparse.Namespace) -> int:
    from expr_core.data.store import DatasetStore
    from expr_core.data.transfer import export_zip

    out = Path(args.out)
    if out.suffix.lower() != ".zip":
        raise UserError(f"{out}: the export file name must end in .zip.")
    count = export_zip(DatasetStore(_settings(args).workspace), out)
    print(f"exported {count} sample(s) to {out}", file=sys.stderr)
    return 0


def cmd_dataset_stats(args: argparse.Namespace) -> int:
    from expr_core.data.store import DatasetStore

    stats = DatasetStore(_settings(args).workspace).stats()
    result = {"labels": stats, "total": sum(stats.values())}
    print(_json(result) if args.json else "\n".join(f"{k}: {v}" for k, v in stats.items()))
    return 0


def cmd_dataset_labels(args: argparse.Namespace) -> int:
    from expr_core.data.store import DatasetStore

    store = DatasetStore(_settings(args).workspace)
    if args.add is not None:  # `--add ""` is a mistake to report, not a no-op
        store.add_label(args.add)
    if args.rename:
        store.rename_label(*args.rename)
    if args.delete is not None:
        store.delete_label(args.delete, delete_samples=args.with_samples)
    print("\n".join(store.labels()))
    return 0


def _print_progress(event: dict) -> None:
    """One stderr line per training phase, epoch, warning and outcome (batches would flood a terminal)."""
    kind, stamp = event["type"], f"[{event['elapsed']:7.1f}s]"
    if kind == "phase":
        print(f"{stamp} {event['title']}", file=sys.stderr)
    elif kind == "epoch":
        metrics = " ".join(f"{k} {v:.4f}" for k, v in event.items() if "loss" in k or "accuracy" in k)
        print(f"{stamp} {event['phase']} epoch {event['epoch']}/{event['epochs']}: {metrics}", file=sys.stderr)
    elif kind in ("warning", "info"):
        print(f"{stamp} {kind}: {event['message']}", file=sys.stderr)
    elif kind == "end":
        print(f"{stamp} {event['state']}" + (f": {event['error']}" if event.get("error") else ""), file=sys.stderr)


def _train_config(args: argparse.Namespace, settings: Settings) -> TrainConfig:
    """The run's settings: the chosen backbone's defaults (the offline-capable one if none was chosen), then
    whatever the command line gave."""
    from expr_core.backbones import default_backbone
    from expr_core.train_config import TrainConfig

    backbone = args.backbone
    if backbone is None:
        backbone, why = default_backbone(settings)
        if why:
            print(f"info: {why}", file=sys.stderr)
    return TrainConfig.for_backbone(
        backbone,
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        epochs_1=args.epochs_1,
        epochs_2=args.epochs_2,
        lr_1=args.lr_1,
        lr_2=args.lr_2,
        seed=args.seed,
        quantize=not args.no_quantize,
    ).validated()


def cmd_train(args: argparse.Namespace) -> int:
    """Train in the foreground (or, with --run-id, as the worker of a run started by the app)."""
    from expr_core.jobs import runs

    settings = _settings(args)
    if args.run_id:
        lock_fd, run_id = args.lock_fd, args.run_id
    else:
        config = _train_config(args, settings)
        lock_fd = runs.acquire_lock(settings.workspace)
        run_id, _ = runs.create_run(settings.workspace, config.to_dict())
    if settings.job_backend == "ray":
        from expr_core.jobs import ray_backend

        result = ray_backend.train(settings, run_id, lock_fd, echo=_print_progress)
    else:
        prepare_tensorflow(runs.run_config(settings.workspace, run_id).get("backbone"))  # for phase 2, if it comes
        from expr_core.training import run_worker  # no TensorFlow until the first model is out

        result = run_worker(settings, run_id, lock_fd, echo=_print_progress)
    if args.json:
        print(_json(result, indent=2))
    elif result["state"] == JobState.DONE:
        verdict = "" if result["usable"] else " (not usable, so not activated: see the warnings above)"
        print(f"{run_id}: val accuracy {result['val_accuracy']}, model {result['model_path']}{verdict}")
    return {JobState.DONE: 0, JobState.CANCELLED: EXIT_PARTIAL}.get(result["state"], EXIT_BAD_INPUT)


def _open_classifier(path: str, labels: str | None, settings: Settings) -> Predictor:
    """A served model for a run folder, a .tflite or .keras file (converted on the fly if needed), or the
    starter model (``starter``: prepared on first use; labels from --labels, else the workspace's)."""
    import atexit
    import shutil
    import tempfile

    from expr_core.registry import ModelFiles

    names = [x.strip() for x in labels.split(",")] if labels else None
    if path == starter.NAME:
        return _starter(settings, names)
    model = Path(path)
    files = ModelFiles.locate(model)
    if model.suffix == ".keras" and not (files.tflite.is_file() and not names):
        from expr_core.worker.convert import export_tflite, load_checked

        names = names or files.labels()
        folder = Path(tempfile.mkdtemp(prefix="expr-model-"))
        atexit.register(shutil.rmtree, folder, True)
        print(f"converting {model.name} for serving...", file=sys.stderr)
        export_tflite(load_checked(model, len(names)), folder, quantize=False)
        return Classifier(ModelFiles(folder).tflite, names)
    if model.suffix == ".keras":
        model = files.tflite
    return Classifier(model, names) if names and model.suffix == ".tflite" else open_model(model)


def _starter(settings: Settings, labels: list[str] | None) -> StarterClassifier:
    from expr_core.data.store import DatasetStore

    if not starter.is_prepared(settings):
        from expr_core.worker.starter import prepare

        print("preparing the starter model (once, a few seconds)...", file=sys.stderr)
        prepare(settings)
    model = StarterClassifier(settings, labels or DatasetStore(settings.workspace).labels())
    if model.match.unreadable:
        print(f"warning: the starter model cannot read {', '.join(model.match.unreadable)}", file=sys.stderr)
    return model


def _prepared(args: argparse.Namespace, prepare: Callable[[], Path]) -> int:
    """Prepare something once; with --job-dir (the app's background job) the outcome goes to that job folder."""
    with reporting_to(Path(args.job_dir) if args.job_dir else None) as writer:
        folder = prepare()
        if writer:
            writer.status(state=JobState.DONE, finished=time.time(), folder=str(folder))
    print(_json({"folder": str(folder)}) if args.json else folder)
    return 0


def cmd_starter(args: argparse.Namespace) -> int:
    """Prepare the starter model (the app runs this as a background job with --job-dir)."""
    from expr_core.worker.starter import prepare

    settings = _settings(args)
    return _prepared(args, lambda: prepare(settings))


def cmd_base(args: argparse.Namespace) -> int:
    """Prepare a backbone's frozen base as LiteRT, once per backbone, size and weights."""
    from expr_core.bases import BaseKey
    from expr_core.train_config import TrainConfig

    settings = _settings(args)
    config = TrainConfig.for_backbone(args.backbone, weights=args.weights, image_size=args.image_size).validated()
    prepare_tensorflow(config.backbone)
    from expr_core.worker.base import prepare_base

    return _prepared(args, lambda: prepare_base(settings, BaseKey.of(config)))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from expr_core.evaluate import evaluate_folder

    settings = _settings(args)
    classifier = _open_classifier(args.model, args.labels, settings)
    detector = None if args.cropped else _detector(settings)
    report = evaluate_folder(classifier, Path(args.data), settings, detector)
    for item in report["skipped"]:
        print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    if args.json:
        print(_json(report, indent=2))
    else:
        print(f"accuracy {report['accuracy']}, balanced accuracy {report['balanced_accuracy']} on {report['n']} images")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from expr_core.registry import Registry

    settings = _settings(args)
    registry = Registry(settings.workspace)
    action = getattr(args, "action", None)
    if action == "activate":
        registry.activate(args.run_id, confirm_unusable=args.force)
    elif action == "delete":
        registry.delete(args.run_id, force=args.force)
    elif action == "cancel":
        from expr_core.jobs.runs import cancel

        if not cancel(registry.workspace, args.run_id):
            raise UserError(f"Run {args.run_id} is not running.")
    elif action == "assemble":
        files = _assembled(settings, registry, args.run_id)
        print(_json({k: str(v) for k, v in files.items()}) if args.json else "\n".join(map(str, files.values())))
        return 0
    elif action == "import":
        labels = _label_list(args.labels)  # before TensorFlow loads: a typo is reported at once
        from expr_core.worker.convert import import_model

        run_id = import_model(registry.workspace, Path(args.path), labels, quantize=args.quantize)
        print(_json({"run_id": run_id}) if args.json else run_id)
        return 0
    runs = [r.to_dict() for r in registry.runs()]
    if args.json:
        print(_json(runs, indent=2))
    else:
        for r in runs:
            verdict = "  not usable" if r["usable"] is False else ""
            mark = "*" if r["active"] else " "
            print(f"{mark} {r['run_id']}  {r['state']:<9}  val_accuracy {r['val_accuracy']}{verdict}")
    return 0


def _assembled(settings: Settings, registry: Registry, run_id: str) -> dict[str, Path]:
    """A first model's downloads, with the whole network assembled in this (worker) process if needed."""
    from expr_core.jobs.runs import run_config
    from expr_core.registry import ModelFiles

    registry.files(run_id)  # refuses a run without a model, saying why
    config = run_config(registry.workspace, run_id)
    files = ModelFiles(registry.model_dir(run_id))
    prepare_tensorflow(config.get("backbone"))
    from expr_core.worker.base import assemble

    return assemble(settings, files, quantize=bool(config.get("quantize", True)))


def _label_list(text: str) -> list[str]:
    """Labels given as a JSON list (what the app passes) or comma-separated (what people type)."""
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--labels {text!r}: not a JSON list ({exc}); or give them as a,b,c.") from exc
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise UserError(f'--labels {text!r}: a JSON list of label names, like ["happy", "sad"].')
        return labels
    return [x.strip() for x in text.split(",") if x.strip()]


def _models_parser(sub) -> None:
    models = sub.add_parser("models", help="list, activate, delete, import trained models")
    models.add_argument("--workspace", help="workspace folder (default: EXPR_HOME or ./workspace)")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)
    actions = models.add_subparsers(dest="action")
    for name, help_text in (
        ("activate", "make a run's model the active one"),
        ("delete", "delete a run"),
        ("cancel", "ask a running training to stop"),
        ("assemble", "make a first model's whole-network .keras and TFLite files (for downloads)"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("run_id")
        if name == "delete":
            action.add_argument("--force", action="store_true", help="delete even the active model")
        if name == "activate":
            action.add_argument("--force", action="store_true", help="activate even a model judged not usable")
        _leaf_options(action)
    imp = actions.add_parser("import", help="import a .keras model (checked and converted to TFLite)")
    imp.add_argument("path")
    imp.add_argument("--labels", required=True, help="output labels in order: a,b,c or a JSON list")
    imp.add_argument("--quantize", action="store_true", help="also write a dynamic-range quantised TFLite file")
    _leaf_options(imp)


def _leaf_options(parser: argparse.ArgumentParser) -> None:
    """--workspace/--json on a nested action without overwriting values given before the action name."""
    parser.add_argument("--workspace", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _train_parser(sub) -> None:
    from expr_core.train_config import TrainConfig

    defaults = TrainConfig()
    train = sub.add_parser("train", help="train a model on the workspace's dataset")
    train.add_argument(
        "--backbone",
        choices=list(BACKBONES),
        help="default: densenet201 when its ImageNet weights can be had, else mini-xception",
    )
    train.add_argument(
        "--weights",
        help="imagenet (densenet201, mobilenetv3small), fer2013 (mini-xception), none, or a weights file path; "
        "default: the backbone's pretrained weights",
    )
    train.add_argument("--image-size", type=int, help="default: the backbone's own (96, or 64 for mini-xception)")
    train.add_argument("--epochs-1", type=int, default=defaults.epochs_1, help="phase 1 (head) epochs; 0 skips it")
    train.add_argument("--epochs-2", type=int, default=defaults.epochs_2, help="phase 2 (fine-tune) epochs; 0 skips it")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--lr-1", type=float, default=defaults.lr_1)
    train.add_argument("--lr-2", type=float, help="phase 2 learning rate; default: the backbone's")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--no-quantize", action="store_true", help="skip the dynamic-range quantised TFLite file")
    train.add_argument("--json", action="store_true")
    train.add_argument("--run-id", help=argparse.SUPPRESS)  # set when the app launches the worker
    train.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)
    _common(train)
    _backend_options(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="measure a model on a folder with one subfolder per label")
    evaluate.add_argument("--model", required=True, help="run folder, .tflite or .keras file")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--cropped", action="store_true", help="images are face crops already: do not detect")
    evaluate.add_argument("--labels", help="labels a,b,c for a model without labels.json beside it")
    evaluate.add_argument("--json", action="store_true")
    _common(evaluate, workspace=False)
    evaluate.set_defaults(func=cmd_evaluate)


def _prepare_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--job-dir", help=argparse.SUPPRESS)  # set when the app runs this as a background job
    _common(parser, workspace=False)


def _backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=list(JOB_BACKENDS), help="where the job runs (EXPR_JOB_BACKEND)")
    parser.add_argument("--ray-address", help="the Ray cluster for --backend ray (EXPR_RAY_ADDRESS)")


def _common(parser: argparse.ArgumentParser, workspace: bool = True) -> None:
    if workspace:
        parser.add_argument("--workspace", help="workspace folder (default: EXPR_HOME or ./workspace)")
    parser.add_argument("--models-dir", help="folder searched first for model files (EXPR_MODELS_DIR)")
    parser.add_argument("--cache-dir", help="where downloaded and prepared model files are kept (EXPR_CACHE_DIR)")
    parser.add_argument("--detector", choices=["yunet", "ssd", "haar"], help="face detector (EXPR_DETECTOR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m expr_core", description="Facial Expression Studio command line")
    sub = parser.add_subparsers(dest="command", required=True)

    detect = sub.add_parser("detect", help="find faces in images")
    detect.add_argument("images", nargs="+")
    detect.add_argument("--json", action="store_true")
    detect.add_argument("--model", help="classify each face: run folder, .tflite or .keras file, or 'starter'")
    detect.add_argument("--labels", help="labels a,b,c for a model without labels.json beside it")
    _common(detect, workspace=True)
    detect.set_defaults(func=cmd_detect)

    video = sub.add_parser("video", help="annotate a video file; writes OUT (MP4) and OUT.csv")
    video.add_argument("input")
    video.add_argument("output")
    video.add_argument("--model", required=True, help="run folder, .tflite or .keras file, or 'starter'")
    video.add_argument("--labels", help="labels a,b,c for a model without labels.json beside it")
    video.add_argument("--smoothing", type=float, default=0.15, help="seconds of per-face smoothing (0: none)")
    video.add_argument(
        "--faces-per-frame",
        type=int,
        default=FACES_PER_FRAME,
        help="classify at most this many faces per frame, taking turns (0: no limit)",
    )
    video.add_argument(
        "--reads-per-second",
        type=float,
        default=MAX_READS_PER_S,
        help="classify each face at most this often (0: every frame)",
    )
    video.add_argument(
        "--detect-side",
        type=int,
        default=STREAM_DETECT_SIDE,
        help="detect faces on frames shrunk to this long side (0: full size, for small faces)",
    )
    video.add_argument("--job-dir", help=argparse.SUPPRESS)  # set when the app runs this as a background job
    _common(video, workspace=True)
    _backend_options(video)
    video.set_defaults(func=cmd_video)

    prepare = sub.add_parser("starter", help="the starter model (pretrained, not trained on your team)")
    prepare.add_argument("action", choices=["prepare"], help="convert it for serving (once)")
    _prepare_options(prepare)
    prepare.set_defaults(func=cmd_starter)

    base = sub.add_parser("base", help="a backbone's frozen base for quick training (LiteRT, prepared once)")
    base.add_argument("action", choices=["prepare"], help="convert it (once per backbone, size and weights)")
    base.add_argument("--backbone", required=True, choices=list(BACKBONES))
    base.add_argument("--weights", help="default: the backbone's pretrained weights")
    base.add_argument("--image-size", type=int, help="default: the backbone's own")
    _prepare_options(base)
    base.set_defaults(func=cmd_base)

    explain = sub.add_parser("explain", help="Grad-CAM heat maps of what drove each face's prediction")
    explain.add_argument("image")
    explain.add_argument("--model", required=True, help="run folder or .keras file")
    explain.add_argument("--out", required=True, help="folder for the crops and heat maps (PNG)")
    _common(explain, workspace=False)
    _backend_options(explain)
    explain.set_defaults(func=cmd_explain)

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

    _train_parser(sub)
    _models_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # no permission, a file where a folder should be, a folder where a file should be
        print(f"error: {os_problem(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
