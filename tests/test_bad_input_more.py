"""Bad input (issue 5 item 5), the cases tests/test_bad_input.py does not cover: training preconditions through
the real training worker, model imports through the registry, and a video without faces.

Each shows its clear message and that nothing was lost or written outside the workspace: the whole test
folder (workspace, inputs, HOME, working folder) is compared byte for byte before and after; a failed run
may add only its own status files, and Keras, imported by every worker, only its settings file in KERAS_HOME.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from expr_core import atomic
from expr_core.data.store import DatasetStore, NewSample
from expr_core.data.transfer import ImportOptions, import_paths
from expr_core.erase import erase_workspace
from expr_core.errors import InvalidLabel, UserError
from expr_core.head import HeadWeights
from expr_core.jobs import folder as job
from expr_core.jobs import runs
from expr_core.jobs.folder import JobError
from expr_core.jobs.run_cli import import_keras
from expr_core.jobs.video import job_dir, output_paths, start_video_job
from expr_core.registry import ModelFiles, Registry
from expr_core.settings import Settings
from tests.conftest import REPO, snapshot
from tests.test_jobs import _fake_published_run
from tests.test_train_split import TINY_ARGS, add_face_samples


@pytest.fixture
def outside(tmp_path) -> dict[str, str]:
    """Environment for a worker: a HOME, working folder and Keras home of its own inside the test folder."""
    folders = {name: tmp_path / name for name in ("home", "cwd", "keras")}
    for folder in folders.values():
        folder.mkdir()
    return {"HOME": str(folders["home"]), "KERAS_HOME": str(folders["keras"]), "cwd": folders["cwd"]}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k, 0) != after.get(k, 0)}


def assert_only_run_files_changed(before: dict, after: dict, run_id: str) -> None:
    allowed = {"keras/keras.json"}  # written by any `import keras`
    for path in changed(before, after) - allowed:
        assert path.startswith(f"ws/runs/{run_id}") or path in ("ws/runs", "ws/runs/.train.lock"), path
    assert not Path(os.environ["EXPR_HOME"]).exists() and not Path(os.environ["EXPR_CACHE_DIR"]).exists()


# -- training preconditions -------------------------------------------------------------------------
def _crops(photo: np.ndarray, n: int) -> list[np.ndarray]:
    return [cv2.resize(photo[40 + i : 240 + i, 150:350], (64, 64)) for i in range(n)]


def one_label(ws: Path, photo: np.ndarray) -> list[str]:
    DatasetStore(ws).add_samples(
        [NewSample("happy", "webcam", f"s{i % 3}", image=c) for i, c in enumerate(_crops(photo, 9))]
    )
    return ["at least two labels"]


def too_few_samples(ws: Path, photo: np.ndarray) -> list[str]:
    one_label(ws, photo)
    DatasetStore(ws).add_samples([NewSample("sad", "webcam", f"t{i}", image=c) for i, c in enumerate(_crops(photo, 2))])
    return ["Cannot validate honestly", "'sad' has 2 sample"]


def one_session(ws: Path, photo: np.ndarray) -> list[str]:
    one_label(ws, photo)
    DatasetStore(ws).add_samples([NewSample("sad", "webcam", "only", image=c) for c in _crops(photo, 9)])
    return ["Cannot validate honestly", "'sad' has all its samples from one"]


def corrupt_files(ws: Path, photo: np.ndarray) -> list[str]:
    samples = add_face_samples(ws, photo)
    store = DatasetStore(ws)
    cut, junk, empty = store.image_path(samples[1]), store.image_path(samples[10]), store.image_path(samples[-1])
    cut.write_bytes(cut.read_bytes()[:700])  # truncated: OpenCV alone would decode it as a half-grey picture
    junk.write_bytes(b"not a jpeg at all" * 20)
    empty.write_bytes(b"")
    return [
        "3 sample(s) cannot be read, so nothing was trained",
        f"Sample {samples[1].id} (happy) has an unreadable image file ({cut}: truncated or not a complete JPEG)",
        f"Sample {samples[10].id} (sad) has an unreadable image file",
        f"Sample {samples[-1].id} (sad) has an unreadable image file ({empty}: empty, not a complete JPEG)",
        "Delete these samples",
    ]


@pytest.mark.parametrize("make", [one_label, too_few_samples, one_session, corrupt_files])
def test_training_that_cannot_start_says_why_and_changes_nothing(make, tmp_path, outside, run_cli, astronaut_bgr):
    ws = tmp_path / "ws"
    messages = make(ws, astronaut_bgr)
    previous = _fake_published_run(ws)
    before = snapshot(tmp_path)

    done = run_cli("train", "--workspace", ws, *TINY_ARGS, "--json", timeout=600, **outside)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads(done.stdout)
    status = runs.run_status(ws, result["run_id"])
    assert result["state"] == status["state"] == "failed"
    for message in messages:
        assert message in status["error"] and message in done.stderr
    assert_only_run_files_changed(before, snapshot(tmp_path), result["run_id"])  # dataset byte for byte too
    assert sorted(p.name for p in runs.run_dir(ws, result["run_id"]).iterdir()) == [
        "config.json",
        "events.jsonl",
        "heartbeat",
        "status.json",
    ]  # no model, no scratch folder
    assert Registry(ws).active_id() == previous


# -- model import -----------------------------------------------------------------------------------
MAKE_MODELS = """
import sys, keras
for name, shape, outputs in [("gray.keras", (48, 48, 1), 2), ("three.keras", (48, 48, 3), 3)]:
    inputs = keras.Input(shape)
    keras.Model(inputs, keras.layers.Dense(outputs, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
                ).save(sys.argv[1] + "/" + name)
"""


def test_importing_a_model_that_does_not_fit_says_why_and_writes_nothing(tmp_path, outside, astronaut_bgr, monkeypatch):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": outside["HOME"], "KERAS_HOME": outside["KERAS_HOME"]}
    subprocess.run(
        [sys.executable, "-c", MAKE_MODELS, str(inputs)], env=env, check=True, capture_output=True, timeout=300
    )
    (inputs / "notes.keras").write_text("not a model")
    ws = tmp_path / "ws"
    add_face_samples(ws, astronaut_bgr, sessions=1, per_session=1)
    previous = _fake_published_run(ws)
    for name in ("HOME", "KERAS_HOME"):  # the import worker inherits them
        monkeypatch.setenv(name, outside[name])
    before = snapshot(tmp_path)

    registry = Registry(ws)
    cases = [
        ("gray.keras", r"input shape is \(None, 48, 48, 1\); expected square RGB"),
        ("three.keras", "it has 3 outputs but 2 labels were given"),
        ("notes.keras", "not a Keras model file"),
    ]
    for name, message in cases:
        with pytest.raises(JobError, match=message):
            import_keras(registry.workspace, inputs / name, ["happy", "sad"])
    assert changed(before, snapshot(tmp_path)) <= {"keras/keras.json"}  # not even a failed run is left
    assert [r.run_id for r in registry.runs()] == [previous] and registry.active_id() == previous


# -- a video without faces --------------------------------------------------------------------------
def test_a_video_without_faces_is_processed_and_says_it_found_none(tiny_model, settings, tmp_path):
    import av

    registry = Registry(tiny_model)
    clip = tmp_path / "wall.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(20):
            wall = np.full((240, 320, 3), 90 + i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(wall, format="bgr24")))
        out.mux(stream.encode(None))
    cfg = settings.with_(workspace=tmp_path / "ws", detector="haar")
    model = registry.model_dir(str(registry.active_id()))
    job_id = start_video_job(cfg, "wall.mp4", clip.read_bytes(), str(model), registry.labels(str(registry.active_id())))
    status = job.wait(job_dir(cfg.workspace, job_id), 240)
    # Not an error: the video is annotated and its table says, with the count the Detect page shows, that no
    # frame had a face.
    assert status["state"] == "done" and not status.get("error"), status
    assert (status["frames"], status["frames_with_faces"]) == (20, 0)
    video, table = output_paths(cfg.workspace / "videos" / job_id)
    assert video.stat().st_size > 0 and table.read_text().count("\n") == 1  # the header only
    assert not list(cfg.workspace.rglob(".tmp-*"))


# -- labels that look alike, crafted sample ids, file modes (security review B12, B13, B16) -------------------
@pytest.mark.parametrize(
    "lookalike",
    ["happy\ufe0f", "happy\u200b", "happy\u3164", "happy\u034f", "hap\u00adpy", "ｈａｐｐｙ", "HAPPY"],
    ids=[
        "variation-selector",
        "zero-width-space",
        "hangul-filler",
        "grapheme-joiner",
        "soft-hyphen",
        "fullwidth",
        "case",
    ],
)
def test_a_label_that_looks_like_an_existing_one_is_refused(tmp_path, lookalike):
    store = DatasetStore(tmp_path / "ws")
    with pytest.raises(InvalidLabel, match="invisible characters|already a label called"):
        store.add_label(lookalike)
    assert store.labels() == ["happy", "sad"]


def test_a_folder_named_like_a_label_imports_into_it(tmp_path, astronaut_bgr):
    folder = tmp_path / "photos" / "ｈａｐｐｙ"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "a.jpg"), cv2.resize(astronaut_bgr[40:240, 150:350], (64, 64)))
    store = DatasetStore(tmp_path / "ws")
    report = import_paths(
        store, [folder.parent], None, Settings(workspace=tmp_path / "ws"), ImportOptions(cropped=True)
    )
    assert report.added == {"happy": 1} and store.labels() == ["happy", "sad"]


def test_a_crafted_sample_id_in_the_manifest_never_reaches_outside_the_dataset(tmp_path, astronaut_bgr):
    store = DatasetStore(tmp_path / "ws")
    (real,) = store.add_samples([NewSample("happy", "webcam", "s", image=astronaut_bgr[40:240, 150:350])])
    outside = tmp_path / "precious.jpg"
    outside.write_bytes(b"someone else's file")
    crafted = os.path.relpath(outside.with_suffix(""), store.images_dir)  # ../../precious
    line = json.loads(store.root.joinpath("manifest.jsonl").read_text().splitlines()[0]) | {"id": crafted}
    with open(store.root / "manifest.jsonl", "a") as handle:
        handle.write(json.dumps(line) + "\n")
    assert [s.id for s in store.samples()] == [real.id]
    assert store.delete_label("happy", delete_samples=True) == 1
    assert outside.read_bytes() == b"someone else's file"


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask_so_a_group_can_share_a_workspace(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        atomic.write_json(tmp_path / "state.json", {"ok": True})
        DatasetStore(tmp_path / "ws").add_label("calm")
    finally:
        os.umask(before)
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "ws" / "dataset" / "labels.json").stat().st_mode & 0o777 == mode


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_model_that_answers_nan_still_gets_valid_json_from_detect(tiny_model, tmp_path, face_jpg, run_cli):
    """Security review B7: `detect --json` printed NaN (not JSON) for a broken model's probabilities."""
    folder = tmp_path / "broken-model"
    shutil.copytree(Registry(tiny_model).model_dir(Registry(tiny_model).active_id()), folder)
    files = ModelFiles(folder)
    head = HeadWeights.load(files.head)
    head.b2[:] = np.nan
    head.save(files.head)
    done = run_cli("detect", face_jpg, "--model", folder, "--detector", "haar", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    (entry,) = _strict_json(done.stdout)
    (face,) = entry["faces"]
    assert set(face["probs"].values()) == {None}


def test_the_browser_is_never_shown_a_traceback_or_a_file_path():
    """Security review B10: an uncaught error showed its traceback, with server paths, in the browser."""
    import tomllib

    from streamlit import config
    from streamlit.elements.exception import marshall
    from streamlit.proto.Exception_pb2 import Exception as ExceptionProto

    option = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["client"]["showErrorDetails"]
    before = config.get_option("client.showErrorDetails")
    config.set_option("client.showErrorDetails", option)
    try:
        try:
            open("/srv/secret/workspace/file.json")  # noqa: SIM115 - the error is the point
        except OSError as exc:
            proto = ExceptionProto()
            marshall(proto, exc, apply_show_error_details=True)
    finally:
        config.set_option("client.showErrorDetails", before)
    shown = f"{proto.message} {proto.message_is_markdown} {list(proto.stack_trace)}"
    assert "/srv/secret" not in shown and not proto.stack_trace and proto.type == "FileNotFoundError"


def test_delete_all_data_refuses_while_a_training_runs_and_deletes_nothing(tmp_path, astronaut_bgr):
    """Review A2: "Delete all data" removes models too now, so it must not pull them from under a worker."""
    workspace = tmp_path / "ws"
    store = DatasetStore(workspace)
    store.add_samples([NewSample("happy", "webcam", "s", image=astronaut_bgr[40:240, 150:350])])
    run_id, folder = runs.create_run(workspace, {})
    writer = job.JobWriter(folder)  # this process plays the running worker
    try:
        with pytest.raises(UserError, match="Nothing deleted: training run .* is still going on"):
            erase_workspace(store, workspace)
    finally:
        writer.close()
    assert len(store.samples()) == 1 and runs.run_ids(workspace) == [run_id]


# -- OS errors and damaged state files (review B9) -------------------------------------------------------------
def _damaged(ws: Path, name: str) -> None:
    path = ws / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"cut": ')


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda tmp: (tmp / "afile").write_text("x"), ["dataset", "stats", "--workspace", "afile"], "Not a directory"),
        (
            lambda tmp: (tmp / "out.zip").mkdir(),
            ["dataset", "export", "--workspace", "ws", "out.zip"],
            "out.zip: is a folder",
        ),
        (
            lambda tmp: _damaged(tmp / "ws", "dataset/labels.json"),
            ["dataset", "stats", "--workspace", "ws"],
            "labels.json: not valid JSON",
        ),
        (
            lambda tmp: None,
            ["models", "import", "x.keras", "--labels", "[oops"],
            "--labels '[oops': not a JSON list",
        ),
    ],
    ids=["workspace-is-a-file", "export-onto-a-folder", "corrupt-labels", "malformed-labels-json"],
)
def test_os_errors_and_damaged_files_are_one_line_with_exit_2(tmp_path, run_cli, setup, args, message):
    setup(tmp_path)
    done = run_cli(*args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and message in done.stderr, done.stderr


def test_one_damaged_run_or_active_file_never_breaks_the_model_list(tmp_path, run_cli):
    ws = tmp_path / "ws"
    good = _fake_published_run(ws)
    bad, _ = runs.create_run(ws, {"backbone": "x"})
    _damaged(runs.run_dir(ws, bad), "status.json")
    listed = {r["run_id"]: r for r in json.loads(run_cli("models", "--workspace", ws, "--json").stdout)}
    assert listed[good]["state"] == "done" and listed[good]["active"]
    assert listed[bad]["state"] == "failed" and "status.json: not valid JSON" in listed[bad]["error"]
    _damaged(ws, "active.json")
    listed = json.loads(run_cli("models", "--workspace", ws, "--json").stdout)
    assert {r["run_id"] for r in listed} == {good, bad} and not any(r["active"] for r in listed)


def test_a_damaged_review_item_is_left_out_and_the_others_listed(tmp_path, astronaut_bgr):
    from expr_core.data.review import ReviewQueue
    from expr_core.live.pipeline import FaceReading

    queue = ReviewQueue(tmp_path / "ws")
    reading = FaceReading(1, (150, 40, 200, 200), "happy", 0.5, {"happy": 0.5, "sad": 0.5})
    kept = [queue.add(astronaut_bgr, reading, "ana") for _ in range(2)]
    (queue.root / f"{kept[0]}.json").write_text("{")
    assert [item.id for item in queue.items()] == [kept[1]]


def test_a_keras_file_whose_config_expands_too_far_is_refused_before_loading(tmp_path, run_cli):
    """Review B14: a small .keras whose config expands to 150 MB cost 300 MB before it was refused."""
    bomb = tmp_path / "small.keras"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", '{"keras_version": "3.15.0"}')
        archive.writestr("config.json", '{"class_name": "Functional", "pad": "' + " " * (40 * 2**20) + '"}')
    assert bomb.stat().st_size < 200_000
    done = run_cli("models", "import", bomb, "--labels", "happy,sad", "--workspace", tmp_path / "ws", timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "member config.json expands to 41,943,0" in done.stderr and "limit" in done.stderr
    assert not (tmp_path / "ws" / "runs").exists() or runs.run_ids(tmp_path / "ws") == []
