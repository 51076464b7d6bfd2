"""The ``ray`` job backend: training, video and explanation jobs on a Ray cluster, without a shared filesystem.

The local backend runs a job as ``python -m expr_core train|video|explain ...`` on this machine. With the
``ray`` backend the same command runs here as a *supervisor* that holds the job's place in the workspace
(its process identity, the training lock) and does the job through a Ray actor:

1. it packs what the job needs (:func:`training_inputs`: the dataset with its features for the run's base, the
   run's config, the prepared base and the model files; for video and explanation the input and the model)
   and sends it with the command to a :class:`RemoteJob` actor, which unpacks it into a temporary folder on
   its node and runs the very same CLI command there with the local backend;
2. it polls the actor for new event lines and status and writes them into the job folder here, so the pages
   show progress as they do for local jobs (reload-safe, visible from every session and app replica);
3. when the remote run publishes a model version, it fetches that folder and publishes it here with one
   rename (:meth:`expr_core.registry.Registry.publish`), then activates it if no model is active; video
   and explanation outputs are fetched at the end and written atomically;
4. a cancel (the job's ``cancel`` file, from the page or ``models cancel``; or SIGTERM) is passed to the
   remote job, which stops as a local one does;
5. a lost actor (its worker process or node died) fails the job with a clear message; nothing else changes.

Only worker-side processes import Ray (the supervisor is one); the Streamlit server never does.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

from expr_core import atomic, bases, starter
from expr_core.bases import BaseKey
from expr_core.errors import UserError
from expr_core.jobs import folder as job
from expr_core.jobs import runs
from expr_core.registry import Registry
from expr_core.settings import Settings
from expr_core.train_config import TrainConfig

ROOT = "{root}"  # in a remote command line: the job's temporary folder on the Ray node
POLL_S = 0.5
CONNECT_TIMEOUT_S = 10.0
POLL_TIMEOUT_S = 60.0  # one poll may wait this long (a busy node) before the job counts as lost
CANCEL_WAIT_S = 120.0  # after a cancel, how long the remote job has to end on its own before it is killed
MAX_SHIPPED_FILE = 1 << 30
PROJECT = Path(__file__).resolve().parents[2]
# What Ray uploads as the job's code (runtime_env working_dir): the project without data, caches and tools.
CODE_EXCLUDES = [".git", ".venv", "workspace", "test-artifacts", "docs", "tests", "bench", "**/__pycache__"]


class ClusterError(UserError):
    """The Ray cluster cannot be reached or lost the job."""


# -- what a job ships ----------------------------------------------------------------------------
def pack(sources: Mapping[str, Path]) -> dict[str, bytes]:
    """``{remote relative path: content}`` of every regular file under each source (a file or a folder)."""
    files: dict[str, bytes] = {}
    for target, source in sources.items():
        source = Path(source)
        paths = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        for path in paths:
            if path.stat().st_size > MAX_SHIPPED_FILE or path.name.startswith(atomic.TMP_PREFIX):
                continue
            relative = path.relative_to(source).as_posix() if path != source else ""
            name = "/".join(part for part in (target, relative) if part)
            files[name] = path.read_bytes()
    return files


def unpack(files: Mapping[str, bytes], root: Path) -> None:
    """Write shipped files under ``root``, refusing any path that would leave it."""
    for name, content in files.items():
        target = (root / name).resolve()
        if not target.is_relative_to(root.resolve()):
            raise ValueError(f"refusing to unpack {name!r} outside the job folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def _dataset_without_other_features(dataset: Path, slug: str) -> dict[str, Path]:
    """The dataset folder's entries, with only the features of the run's base (others are of no use there)."""
    entries: dict[str, Path] = {}
    for path in sorted(dataset.iterdir()) if dataset.is_dir() else []:
        if path.name == "features":
            if (path / slug).is_dir():
                entries[f"ws/dataset/features/{slug}"] = path / slug
        elif not path.name.startswith("."):
            entries[f"ws/dataset/{path.name}"] = path
    return entries


def training_inputs(settings: Settings, run_id: str) -> dict[str, Path]:
    """What a remote training run needs: dataset (+ this base's features), the run's config, the prepared base
    if there is one (else the remote run prepares it), and the models folder (weights, detector)."""
    folder = runs.run_dir(settings.workspace, run_id)
    config = TrainConfig.from_dict(atomic.read_json(folder / job.CONFIG_FILE, {})).validated()
    key = BaseKey.of(config)
    sources = _dataset_without_other_features(Path(settings.workspace) / "dataset", key.slug())
    sources[f"ws/runs/{run_id}/{job.CONFIG_FILE}"] = folder / job.CONFIG_FILE
    if bases.is_prepared(settings, key):
        sources[f"cache/bases/{key.slug()}"] = bases.folder(settings, key)
    if Path(settings.models_dir).is_dir():
        sources["models"] = Path(settings.models_dir)
    return sources


# -- the remote side -----------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the job's child process: SIGKILL when the actor's process dies, so a lost worker leaves no orphan."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class RemoteJob:
    """Runs one ``python -m expr_core`` command in a temporary folder of a Ray node and answers polls about it.

    ``job_dir`` (relative to that folder) is where the command keeps its job files (events, status, cancel).
    """

    def __init__(self, files: dict[str, bytes], argv: list[str], job_dir: str | None, env: dict[str, str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="expr-job-"))
        unpack(files, self.root)
        (self.root / "out").mkdir(exist_ok=True)  # where commands write what comes back
        self.job_dir = self.root / job_dir if job_dir else None
        if self.job_dir:
            self.job_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "expr_core", *(a.replace(ROOT, str(self.root)) for a in argv)]
        with open(self.root / "stdout.txt", "wb") as out, open(self.root / "stderr.txt", "wb") as err:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **env},
                preexec_fn=_die_with_parent,
            )

    def pid(self) -> int:
        """This actor's process id (the tests kill it to play a lost worker)."""
        return os.getpid()

    def poll(self, offset: int) -> dict[str, Any]:
        """Event lines appended since byte ``offset``, the job's status, and the command's exit code if it ended."""
        returncode = self.process.poll()  # first: events read after it include everything the job wrote
        chunk = b""
        if self.job_dir:
            with contextlib.suppress(FileNotFoundError), open(self.job_dir / job.EVENTS_FILE, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        chunk = chunk[: chunk.rfind(b"\n") + 1]
        status = job.read_status(self.job_dir) if self.job_dir else {}
        return {"events": chunk, "offset": offset + len(chunk), "status": status, "returncode": returncode}

    def cancel(self) -> None:
        """Ask the job to stop as a local one is asked (its cancel file); a command without one is terminated."""
        if self.job_dir:
            atomic.write_json(self.job_dir / job.CANCEL_FILE, {"requested": time.time()})
        elif self.process.poll() is None:
            self.process.terminate()

    def fetch(self, relative: str) -> dict[str, bytes]:
        """The files under ``relative`` (a folder or one file), as :func:`pack` gives them."""
        source = self.root / relative
        return pack({"": source}) if source.exists() else {}

    def output(self) -> dict[str, str]:
        """The command's stdout, the tail of its stderr, and the temporary folder (paths in stdout start there)."""
        read = lambda name: (self.root / name).read_text(errors="replace")  # noqa: E731
        return {"stdout": read("stdout.txt"), "stderr": read("stderr.txt")[-4000:], "root": str(self.root)}

    def close(self) -> None:
        """Stop the command if it still runs and remove the temporary folder."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


# -- the supervisor (on the app's machine) -------------------------------------------------------
def _reachable(address: str) -> None:
    """A quick TCP look at ``host:port`` (``ray.init`` retries an address that answers nothing for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" or a form Ray knows better: let it judge
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"Could not reach the Ray cluster at {address}: {exc}.") from exc


def connect(settings: Settings) -> None:
    """Join the configured cluster (``ray_address``), shipping this project's code to its workers."""
    if ray.is_initialized():
        return
    _reachable(settings.ray_address or "auto")
    runtime_env = {"working_dir": str(PROJECT), "excludes": CODE_EXCLUDES}
    try:
        ray.init(
            address=settings.ray_address or "auto",
            runtime_env=runtime_env,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, RayError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"Could not reach the Ray cluster at {settings.ray_address or 'auto'}: {exc}") from exc


def gpus_for_a_job() -> int:
    """One GPU when the cluster has any (a job on a GPU worker trains and explains there), else none."""
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0


@dataclass
class Remote:
    """A job running on the cluster, as the supervisor follows it."""

    actor: Any
    offset: int = 0
    cancel_sent: bool = False
    cancel_at: float | None = None
    status: dict[str, Any] = field(default_factory=dict)
    returncode: int | None = None

    @classmethod
    def start(cls, files: dict[str, bytes], argv: list[str], job_dir: str | None, gpus: int) -> Remote:
        env = {"EXPR_DOWNLOADS": os.environ.get("EXPR_DOWNLOADS", "1"), "EXPR_JOB_BACKEND": "local"}
        actor_class = ray.remote(max_restarts=0, max_task_retries=0)(RemoteJob)
        actor = actor_class.options(num_cpus=1, num_gpus=gpus).remote(files, argv, job_dir, env)
        return cls(actor)

    def call(self, method: str, *args: Any, timeout: float = POLL_TIMEOUT_S) -> Any:
        """One actor call; a dead or unresponsive actor becomes :class:`ClusterError`."""
        try:
            return ray.get(getattr(self.actor, method).remote(*args), timeout=timeout)
        except RayError as exc:  # the actor died (ActorDiedError), its node went away, or a poll timed out
            raise ClusterError(
                "The Ray worker running this job was lost (its process or node stopped, or stopped answering): "
                f"{type(exc).__name__}. Nothing in the workspace was changed by it."
            ) from exc

    def poll(self) -> list[dict[str, Any]]:
        """New events (parsed), updating ``status`` and ``returncode``."""
        answer = self.call("poll", self.offset)
        self.offset, self.status, self.returncode = answer["offset"], answer["status"], answer["returncode"]
        events = []
        for line in answer["events"].splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
        return events

    def cancel(self) -> None:
        if not self.cancel_sent:
            self.call("cancel")
            self.cancel_sent, self.cancel_at = True, time.monotonic()

    def overdue(self) -> bool:
        """Cancelled long ago and still running: the supervisor stops waiting for it."""
        return self.cancel_at is not None and time.monotonic() - self.cancel_at > CANCEL_WAIT_S

    def close(self) -> None:
        with contextlib.suppress(RayError, ClusterError):
            self.call("close", timeout=30)
        with contextlib.suppress(RayError):
            ray.kill(self.actor)


@contextlib.contextmanager
def sigterm_as_cancel() -> Iterator[list[bool]]:
    """SIGTERM to the supervisor (a stopped server's cleanup, ``kill``) cancels the remote job instead of
    orphaning it: the flag in the yielded list turns true."""
    flag = [False]
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.__setitem__(0, True))
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


Handler = Callable[[dict[str, Any]], None]


def follow(remote: Remote, local_dir: Path | None, on_event: Handler, on_status: Handler) -> None:
    """Pass the remote job's events and status on until its command ends; cancels of ``local_dir`` pass through."""
    with sigterm_as_cancel() as terminated:
        while True:
            if terminated[0] or (local_dir is not None and job.cancel_requested(local_dir)):
                remote.cancel()
            for event in remote.poll():
                on_event(event)
            if remote.status:
                on_status(remote.status)
            if remote.returncode is not None:
                return
            if remote.overdue():
                raise ClusterError("The job on the Ray cluster did not stop within two minutes of the cancel.")
            time.sleep(POLL_S)


def _remote_failure(remote: Remote, what: str) -> str:
    """Why a remote command ended without a final state: its last error line, else its exit code."""
    output = remote.call("output")
    errors = [line[len("error: ") :] for line in output["stderr"].splitlines() if line.startswith("error: ")]
    tail = "\n".join(output["stderr"].splitlines()[-job.LOG_TAIL_LINES :])
    stopped = f"The {what} process on the Ray cluster stopped (exit {remote.returncode}).\n{tail}"
    return errors[-1] if errors else stopped


def train(settings: Settings, run_id: str, lock_fd: int | None, echo: Callable[[dict], None] | None) -> dict:
    """Do the run ``run_id`` on the cluster while holding this workspace's training lock; like
    :func:`expr_core.training.run_worker`, never raises for a failed or cancelled run."""
    folder = runs.run_dir(settings.workspace, run_id)
    registry = Registry(settings.workspace)
    with runs.training_lock(settings.workspace, lock_fd):
        writer = job.JobWriter(folder, echo=echo)
        remote: Remote | None = None
        try:
            connect(settings)
            files = pack(training_inputs(settings, run_id))
            argv = ["train", "--workspace", f"{ROOT}/ws", "--run-id", run_id]
            argv += ["--models-dir", f"{ROOT}/models", "--cache-dir", f"{ROOT}/cache"]
            remote = Remote.start(files, argv, f"ws/runs/{run_id}", gpus_for_a_job())
            writer.event(job.EventType.INFO, message=f"Running on the Ray cluster ({len(files)} files shipped).")
            published = _Publisher(registry, run_id, remote, writer)
            follow(remote, folder, published.on_event, published.on_status)
            return _final(published)
        except UserError as exc:  # the cluster is unreachable or lost the job, or the run cannot be shipped
            return _end(writer, job.JobState.FAILED, str(exc))
        except Exception as exc:  # a bug: keep the traceback in the log, tell the user what happened
            traceback.print_exc(file=sys.stderr)
            crashed = f"Training on the Ray cluster crashed: {type(exc).__name__}: {exc}"
            return _end(writer, job.JobState.FAILED, crashed)
        finally:
            if remote is not None:
                remote.close()
            writer.close()


@dataclass
class _Publisher:
    """Each version the remote run publishes, fetched and published here before its event is passed on."""

    registry: Registry
    run_id: str
    remote: Remote
    writer: job.JobWriter
    version: int = 0

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == job.EventType.PUBLISHED:
            version = int(event["version"])
            name = self.registry.version_dir(self.run_id, version).name
            files = self.remote.call("fetch", f"ws/runs/{self.run_id}/{name}", timeout=600)
            staged = self.registry.staging_dir(self.run_id)
            unpack(files, staged)
            self.registry.publish(self.run_id, version)
            self.version = version
            activated = bool(event.get("usable")) and self.registry.activate_if_none(self.run_id)
            event = {**event, "activated": activated}
        self.writer.append(event)

    def on_status(self, status: dict[str, Any]) -> None:
        """The remote status, with only the versions already published here (Detect may open what it says)."""
        self.writer.mirror({**status, "version": self.version or None})


def _final(published: _Publisher) -> dict[str, Any]:
    """The local run's end, from the remote one's last status."""
    status, writer = published.remote.status, published.writer
    state = status.get("state")
    if state not in (job.JobState.DONE, job.JobState.CANCELLED, job.JobState.FAILED):
        return _end(writer, job.JobState.FAILED, _remote_failure(published.remote, "training"))
    published.on_status(status)
    result = {"run_id": writer.job_id, "state": state, "error": status.get("error"), "version": published.version}
    if published.version:
        registry = published.registry
        result |= {key: status.get(key) for key in ("val_accuracy", "labels", "usable", "warnings")}
        result |= {"model_path": str(registry.model_dir(writer.job_id))}
        result |= {"activated": registry.active_id() == writer.job_id, "seconds": round(writer.elapsed(), 1)}
    return result


def _end(writer: job.JobWriter, state: job.JobState, error: str | None) -> dict[str, Any]:
    writer.status(state=state, error=error, finished=time.time(), eta_s=None)
    writer.event(job.EventType.END, state=state, error=error, val_accuracy=None)
    return {"run_id": writer.job_id, "state": state, "error": error}


# -- one command with files in and out (video, explanation) ------------------------------------
def run_command(
    settings: Settings,
    argv: list[str],
    inputs: Mapping[str, Path],
    outputs: Mapping[str, Path],
    job_dir: Path | None = None,
    gpus: bool = False,
) -> str:
    """Run ``argv`` (paths under :data:`ROOT`) on the cluster with ``inputs`` shipped; each remote ``outputs``
    path (file or folder) is written to its local path atomically at the end. With ``job_dir`` the remote
    job's progress is mirrored into that local job folder (remote ``job``). Returns the command's stdout."""
    writer = job.JobWriter(job_dir) if job_dir else None
    remote: Remote | None = None
    try:
        connect(settings)
        remote = Remote.start(pack(inputs), argv, "job" if job_dir else None, gpus_for_a_job() if gpus else 0)
        ignore: Handler = lambda _: None  # noqa: E731
        follow(remote, job_dir, writer.append if writer else ignore, writer.mirror if writer else ignore)
        if remote.returncode != 0:
            raise ClusterError(_remote_failure(remote, argv[0]))
        output = remote.call("output")
        stdout = str(output["stdout"])
        for relative, local in outputs.items():
            for name, content in remote.call("fetch", relative, timeout=600).items():
                atomic.write_bytes(Path(local) / name if name else Path(local), content)
            stdout = stdout.replace(f"{output['root']}/{relative}", str(local))  # remote paths become local ones
        return stdout
    except UserError as exc:
        if writer and writer.state in job.ACTIVE_STATES:
            _end(writer, job.JobState.FAILED, str(exc))
        raise
    finally:
        if remote is not None:
            remote.close()
        if writer:
            writer.close()


def _model_inputs(settings: Settings, model: str) -> tuple[dict[str, Path], str]:
    """What a command's ``--model`` needs shipped, and the value to give it there: a run or model folder, a
    model file, or ``starter`` (its prepared files from the cache, when they are there)."""
    sources: dict[str, Path] = {}
    if Path(settings.models_dir).is_dir():
        sources["models"] = Path(settings.models_dir)
    if model == starter.NAME:
        if starter.folder(settings).is_dir():
            sources[f"cache/{starter.folder(settings).name}"] = starter.folder(settings)
        return sources, model
    path = Path(model)
    sources[f"model/{path.name}"] = path
    return sources, f"{ROOT}/model/{path.name}"


def _places(settings: Settings) -> list[str]:
    return ["--models-dir", f"{ROOT}/models", "--cache-dir", f"{ROOT}/cache", "--detector", settings.detector]


def video(settings: Settings, source: Path, output: Path, model: str, options: list[str], job_dir: Path | None) -> str:
    """``video SOURCE OUTPUT`` on the cluster: the annotated MP4 and its CSV come back beside ``output``."""
    sources, remote_model = _model_inputs(settings, model)
    sources[f"in/{source.name}"] = source
    argv = ["video", f"{ROOT}/in/{source.name}", f"{ROOT}/out/{output.name}", "--model", remote_model, *options]
    argv += [*_places(settings), *(["--job-dir", f"{ROOT}/job"] if job_dir else [])]
    return run_command(settings, argv, sources, {"out": output.parent}, job_dir)


def explain(settings: Settings, image: Path, model: str, out: Path) -> str:
    """``explain IMAGE --out OUT`` on the cluster (on a GPU worker when there is one); the PNGs come back."""
    sources, remote_model = _model_inputs(settings, model)
    sources[f"in/{image.name}"] = image
    argv = ["explain", f"{ROOT}/in/{image.name}", "--model", remote_model, "--out", f"{ROOT}/out", *_places(settings)]
    return run_command(settings, argv, sources, {"out": out}, gpus=True)
