"""The ``ray`` job backend against a real Ray cluster started here (``ray start --head``, in the test network
namespace): training publishes a model that Detect serves, cancel works from the CLI, a killed Ray worker
fails the run and changes nothing, and video and explanation jobs come back with their files."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

from expr_core.errors import UserError
from expr_core.jobs import folder as job
from expr_core.jobs import ray_backend, runs
from expr_core.jobs import video as video_jobs
from expr_core.registry import ACTIVE_FILE, FINETUNED_DIR, ModelFiles, Registry
from expr_core.serving import open_model
from expr_core.settings import Settings, load_settings
from tests.conftest import REPO, snapshot
from tests.ray_cluster import free_port, local_ray_cluster
from tests.test_jobs import _fake_published_run
from tests.test_train_split import TINY, add_face_samples
from tests.waiting import wait_for

WAIT_S = 300


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A real one-node Ray cluster for this module (see :mod:`tests.ray_cluster`)."""
    with local_ray_cluster() as address:
        yield address


@pytest.fixture
def ray_settings(settings: Settings, ray_address: str, astronaut_bgr) -> Settings:
    add_face_samples(settings.workspace, astronaut_bgr)
    return settings.with_(job_backend="ray", ray_address=ray_address)


def _events(workspace: Path, run_id: str) -> list[dict]:
    return job.read_events(runs.run_dir(workspace, run_id))[0]


def test_a_run_on_ray_publishes_a_model_that_detect_serves(ray_settings: Settings, astronaut_bgr):
    workspace = ray_settings.workspace
    dataset_before = snapshot(workspace / "dataset")
    run_id = runs.start_training(ray_settings, TINY)
    with pytest.raises(runs.JobRunning, match=run_id):  # one training job per workspace, whatever the backend
        runs.start_training(ray_settings, TINY)
    status = job.wait(runs.run_dir(workspace, run_id), timeout_s=WAIT_S)
    assert status["state"] == "done", (status, (runs.run_dir(workspace, run_id) / job.LOG_FILE).read_text()[-3000:])
    assert status["version"] == 1
    events = _events(workspace, run_id)
    assert any("Running on the Ray cluster" in e.get("message", "") for e in events)
    assert {"phase", "dataset", "epoch", "published", "end"} <= {e["type"] for e in events}  # the remote's progress
    published = next(e for e in events if e["type"] == "published")
    files = ModelFiles(Registry(workspace).model_dir(run_id))
    assert files.servable() and files.is_head_model  # fetched from the Ray worker and published here
    assert published["activated"] == (Registry(workspace).active_id() == run_id)
    model = open_model(files.folder, ray_settings.quantized_serving)
    probs = model.predict([cv2.resize(astronaut_bgr, (96, 96))])
    assert probs.shape == (1, 2) and abs(float(probs.sum()) - 1) < 1e-4  # Detect serves it
    assert snapshot(workspace / "dataset") == dataset_before  # shipped, not changed
    wait_for(lambda: not job.worker_alive(runs.run_dir(workspace, run_id)), 60, "the supervisor to exit")


def test_cancel_from_the_cli_stops_the_fine_tuning_on_ray_and_keeps_the_first_model(ray_settings: Settings):
    workspace = ray_settings.workspace
    run_id = runs.start_training(ray_settings, dataclasses.replace(TINY, epochs_2=200))
    wait_for(lambda: runs.run_status(workspace, run_id).get("version") == 1, WAIT_S, "the first model")
    wait_for(
        lambda: any(e.get("phase") == "finetune" and e["type"] == "batch" for e in _events(workspace, run_id)),
        WAIT_S,
        "fine-tuning batches (TensorFlow on the Ray worker)",
    )
    cancel = [sys.executable, "-m", "expr_core", "models", "cancel", run_id, "--workspace", str(workspace)]
    subprocess.run(cancel, cwd=REPO, check=True, timeout=120, capture_output=True)
    status = job.wait(runs.run_dir(workspace, run_id), timeout_s=WAIT_S)
    assert (status["state"], status["version"]) == ("done", 1), status
    assert any("the first model stays" in e.get("message", "") for e in _events(workspace, run_id))
    assert not (runs.run_dir(workspace, run_id) / FINETUNED_DIR).exists()


def _remote_job_process(run_id: str, timeout: float) -> psutil.Process:
    """The Ray worker process running ``run_id`` (the parent of the run's own ``python -m expr_core`` process
    in a temporary folder of the node)."""
    found: list[psutil.Process] = []

    def look() -> bool:
        for process in _job_processes():
            if run_id in process.info["cmdline"]:
                found.append(process.parent())
                return True
        return False

    wait_for(look, timeout, "the job's process on the Ray worker", 0.05)
    return found[0]


def test_a_killed_ray_worker_fails_the_run_and_changes_nothing(ray_settings: Settings, astronaut_bgr):
    workspace = ray_settings.workspace
    add_face_samples(workspace, astronaut_bgr, per_session=15)
    previous = _fake_published_run(workspace)
    dataset_before, active_before = snapshot(workspace / "dataset"), (workspace / ACTIVE_FILE).read_bytes()
    run_id = runs.start_training(ray_settings, dataclasses.replace(TINY, epochs_1=0, epochs_2=200))
    actor = _remote_job_process(run_id, WAIT_S)
    wait_for(lambda: any(e["type"] == "phase" for e in _events(workspace, run_id)), WAIT_S, "the remote run's start")
    actor.send_signal(signal.SIGKILL)
    status = job.wait(runs.run_dir(workspace, run_id), timeout_s=WAIT_S)
    assert status["state"] == "failed", status
    assert "Ray worker running this job was lost" in status["error"]
    assert snapshot(workspace / "dataset") == dataset_before
    assert (workspace / ACTIVE_FILE).read_bytes() == active_before
    assert not Registry(workspace).get(run_id).has_model
    wait_for(lambda: not _job_processes(), 30, "the job's own process to die with its Ray worker")

    next_id = runs.start_training(ray_settings, TINY)  # the lock went with the supervisor
    assert job.wait(runs.run_dir(workspace, next_id), timeout_s=WAIT_S)["state"] == "done"
    assert Registry(workspace).active_id() == previous


def _job_processes() -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if "expr_core" in (p.info["cmdline"] or []) and any("expr-job-" in x for x in p.info["cmdline"] or [])
    ]


def test_a_video_job_runs_on_ray_and_its_files_come_back(tiny_model: Path, ray_address: str, tmp_path: Path):
    settings = load_settings().with_(workspace=tiny_model, job_backend="ray", ray_address=ray_address)
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for i in range(20):
        writer.write(cv2.rectangle(np.zeros((120, 160, 3), np.uint8), (i, 20), (i + 40, 80), (200, 180, 160), -1))
    writer.release()
    registry = Registry(tiny_model)
    run_id = registry.active_id()
    job_id = video_jobs.start_video_job(
        settings, "clip.mp4", clip.read_bytes(), str(registry.model_dir(run_id)), registry.labels(run_id)
    )
    folder = video_jobs.job_dir(tiny_model, job_id)
    status = job.wait(folder, timeout_s=WAIT_S)
    assert status["state"] == "done", (status, (folder / job.LOG_FILE).read_text()[-3000:])
    video, table = video_jobs.output_paths(folder)
    assert video.stat().st_size > 0 and table.read_text().startswith(("frame", "time", "t"))
    frames = cv2.VideoCapture(str(video))
    assert frames.isOpened() and int(frames.get(cv2.CAP_PROP_FRAME_COUNT)) == 20


def test_an_explanation_runs_on_ray_and_its_heat_maps_come_back(
    tiny_model: Path, ray_address: str, tmp_path: Path, face_jpg: Path, run_cli
):
    model = Registry(tiny_model).model_dir(Registry(tiny_model).active_id())
    out = tmp_path / "out"
    done = run_cli(
        "explain", str(face_jpg), "--model", str(model), "--out", str(out), "--detector", "haar",
        "--backend", "ray", "--ray-address", ray_address,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    faces = json.loads(done.stdout)["faces"]
    assert faces, done.stdout
    for face in faces:
        assert Path(face["heatmap"]).parent == out and Path(face["heatmap"]).read_bytes().startswith(b"\x89PNG")
        assert Path(face["crop"]).is_file()


def test_an_unreachable_cluster_fails_the_run_with_a_clear_message(settings: Settings, astronaut_bgr):
    add_face_samples(settings.workspace, astronaut_bgr)
    nowhere = settings.with_(job_backend="ray", ray_address=f"127.0.0.1:{free_port()}")
    run_id = runs.start_training(nowhere, TINY)
    status = job.wait(runs.run_dir(settings.workspace, run_id), timeout_s=WAIT_S)
    assert status["state"] == "failed" and "Could not reach the Ray cluster" in status["error"], status
    assert Registry(settings.workspace).active_id() is None


def test_shipped_files_never_land_outside_the_job_folder(tmp_path: Path):
    with pytest.raises(ValueError, match="outside"):
        ray_backend.unpack({"../escape.txt": b"x"}, tmp_path / "job")
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    (source / "a" / "one.bin").write_bytes(b"1")
    (source / ".tmp-partial").write_bytes(b"half")  # an atomic write in progress is not shipped
    assert ray_backend.pack({"x": source}) == {"x/a/one.bin": b"1"}
    ray_backend.unpack(ray_backend.pack({"x": source}), tmp_path / "job")
    assert (tmp_path / "job" / "x" / "a" / "one.bin").read_bytes() == b"1"


def test_the_backend_is_a_setting_and_an_address_chooses_ray():
    assert load_settings(env={}).job_backend == "local"
    assert load_settings(env={"EXPR_RAY_ADDRESS": "head:6379"}).job_backend == "ray"
    assert load_settings(env={"EXPR_RAY_ADDRESS": "head:6379", "EXPR_JOB_BACKEND": "local"}).job_backend == "local"
    chosen = load_settings(env={}, secrets={"ray_address": "ray://head:10001"})
    assert (chosen.job_backend, chosen.ray_address) == ("ray", "ray://head:10001")
    assert chosen.backend_args() == ["--backend", "ray", "--ray-address", "ray://head:10001"]
    with pytest.raises(UserError, match="unknown"):
        load_settings(env={"EXPR_JOB_BACKEND": "slurm"})
