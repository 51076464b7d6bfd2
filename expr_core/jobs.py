"""Running training in its own process, and following it from anywhere through files.

Every run has a folder ``<workspace>/runs/<run_id>/``:

``config.json``   the :class:`~expr_core.train_config.TrainConfig` it was started with
``status.json``   the latest state (see :data:`STATES`) and progress, replaced atomically
``events.jsonl``  one JSON object per line, appended by the worker: the progress stream (see below)
``worker.json``   identity (pid and start time) of the launched worker, so a dead one is told from a slow one
``worker.log``    the worker's stdout/stderr (tracebacks of crashes end up here)
``cancel``        exists once a cancel was requested
``model/``        the published model (see :mod:`expr_core.registry`), present only when ``done``

Readers never talk to the worker: a page after a reload, another browser session and the CLI all
reattach by reading ``status.json`` and ``events.jsonl`` (incrementally, see :func:`read_events`).
If the status says a run is active but its process is gone (crash, SIGKILL, reboot), the first reader
to notice marks it ``failed``. Nothing else changes: the worker only reads the dataset, and it
publishes a model with one rename only at the very end.

One training run per workspace: the worker holds an exclusive ``fcntl`` lock on ``runs/.train.lock``
for its whole life (the kernel drops it when the process dies, however it dies). :func:`start_training`
takes the lock itself and hands it to the child, so two quick clicks cannot start two jobs.

Event dicts all carry ``type``, ``t`` (Unix time) and ``elapsed`` (seconds since the worker started):

- ``start``: ``run_id``, ``pid``, ``config``
- ``phase``: ``phase`` (one of :data:`PHASES`), ``title``
- ``dataset``: ``labels``, ``counts`` (``{label: {"train": n, "val": n}}``), ``samples``
- ``batch``: ``phase``, ``epoch``, ``epochs``, ``batch``, ``batches`` (1-based), ``loss``, ``accuracy``,
  ``eta_s`` (seconds left in this phase if it runs all its epochs; early stopping may end it sooner)
- ``epoch``: ``phase``, ``epoch``, ``epochs``, ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``,
  ``lr``, ``seconds``
- ``warning`` / ``info``: ``message``
- ``end``: ``state`` (``done`` / ``failed`` / ``cancelled``), ``error``, ``val_accuracy``

This module never imports TensorFlow: the Streamlit server uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import atomic
from .errors import UserError
from .settings import Settings
from .train_config import TrainConfig

STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
PHASES = ("prepare", "features", "head", "finetune", "convert", "evaluate", "publish")
RUN_ID_PATTERN = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$")
STATUS_FILE, EVENTS_FILE, CONFIG_FILE = "status.json", "events.jsonl", "config.json"
WORKER_FILE, LOG_FILE, CANCEL_FILE = "worker.json", "worker.log", "cancel"
LOCK_NAME = ".train.lock"
LOG_TAIL_LINES = 15
LAUNCH_GRACE_S = 30.0
LOCK_SETTLE_S = 5.0  # how long a start waits for a lock that no active run explains (see acquire_lock)

# Worker processes launched by this process, kept so they are reaped (no zombies) when they finish.
_children: dict[str, subprocess.Popen] = {}


class JobError(UserError):
    """A job request that cannot be honoured (unknown run, already running, ...)."""


class JobRunning(JobError):
    """Another training run holds the workspace's training lock."""


# -- paths ---------------------------------------------------------------------------------------
def runs_dir(workspace: Path) -> Path:
    return Path(workspace) / "runs"


def run_dir(workspace: Path, run_id: str) -> Path:
    """The folder of ``run_id``; refuses ids that are not ours (they could be paths like ``../x``)."""
    if not RUN_ID_PATTERN.match(run_id or ""):
        raise JobError(f"{run_id!r} is not a run id (they look like 20250101-120000-ab12).")
    return runs_dir(workspace) / run_id


def new_run_id() -> str:
    """Sortable, readable and unique: ``YYYYmmdd-HHMMSS-xxxx``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def run_ids(workspace: Path) -> list[str]:
    """All run ids in the workspace, newest first."""
    folder = runs_dir(workspace)
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if p.is_dir() and RUN_ID_PATTERN.match(p.name)), reverse=True)


# -- the lock ------------------------------------------------------------------------------------
def acquire_lock(workspace: Path) -> int:
    """An fd holding the exclusive training lock, or :class:`JobRunning` naming the run that holds it."""
    folder = runs_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_SETTLE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            running = active_run(workspace)
            # No active run but the lock is busy: a worker that just ended (or was killed: its main thread is
            # already a zombie while its other threads still tear down its memory) or one being launched.
            # Either settles within moments, so wait a little before refusing.
            if running is None and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            os.close(fd)
            raise JobRunning(
                f"A training run is already going on in this workspace ({running or 'starting'}); "
                "wait for it to finish or cancel it first."
            ) from None


@contextlib.contextmanager
def training_lock(workspace: Path, inherited_fd: int | None = None) -> Iterator[None]:
    """Hold the workspace's training lock for the block (reusing a lock handed over by :func:`start_training`)."""
    fd = inherited_fd if inherited_fd is not None else acquire_lock(workspace)
    try:
        yield
    finally:
        os.close(fd)


# -- status and events ---------------------------------------------------------------------------
def read_status(folder: Path) -> dict[str, Any]:
    """The raw ``status.json`` of a run folder (``{}`` if there is none yet)."""
    return atomic.read_json(Path(folder) / STATUS_FILE, {}) or {}


class JobWriter:
    """The worker's side: appends events and keeps ``status.json`` current. Only the worker uses one.

    ``echo`` also receives every event (the CLI prints progress with it).
    """

    def __init__(self, folder: Path, run_id: str, echo: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.folder = Path(folder)
        self._echo = echo
        self.run_id = run_id
        self.started = time.time()
        self._status = read_status(self.folder) or {"run_id": run_id, "kind": "train", "created": self.started}
        self._events = open(self.folder / EVENTS_FILE, "a", encoding="utf-8")
        self._last_status_write = 0.0

    def elapsed(self) -> float:
        return time.time() - self.started

    def event(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Append one event line (flushed at once so readers see it) and return it."""
        record = {"type": type_, "t": round(time.time(), 3), "elapsed": round(self.elapsed(), 2), **fields}
        self._events.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._events.flush()
        if self._echo:
            self._echo(record)
        return record

    def status(self, throttle_s: float = 0.0, **changes: Any) -> None:
        """Merge ``changes`` into the status; with ``throttle_s``, skip writes closer together than that."""
        self._status.update(changes, elapsed=round(self.elapsed(), 2), updated=time.time())
        now = time.monotonic()
        if throttle_s and now - self._last_status_write < throttle_s:
            return
        atomic.write_json(self.folder / STATUS_FILE, self._status)
        self._last_status_write = now

    def close(self) -> None:
        self._events.close()


def read_events(folder: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events appended since byte ``offset`` and the offset to pass next time.

    Only complete lines are returned, so a line being written is picked up whole on the next call.
    """
    try:
        with open(Path(folder) / EVENTS_FILE, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n") + 1
    events = []
    for line in chunk[:end].splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events, offset + end


# -- liveness ------------------------------------------------------------------------------------
def _reap_children() -> None:
    for run_id, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[run_id]


def process_identity(pid: int | None) -> str | None:
    """``"pid:start-time"`` of a live, non-zombie process, else ``None``.

    Storing this instead of a bare pid means a recycled pid is never mistaken for our worker.
    """
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    state, start_time = fields[0], fields[19]
    return None if state in ("Z", "X") else f"{pid}:{start_time}"


def worker_identity(folder: Path) -> str | None:
    """Identity of the process working on the run: as the worker wrote it, else as it was launched."""
    status = read_status(folder)
    return status.get("worker") or (atomic.read_json(Path(folder) / WORKER_FILE, {}) or {}).get("worker")


def worker_alive(folder: Path) -> bool:
    identity = worker_identity(folder)
    return identity is not None and process_identity(int(identity.split(":")[0])) == identity


def _log_tail(folder: Path) -> str:
    try:
        lines = (Path(folder) / LOG_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def job_status(workspace: Path, run_id: str) -> dict[str, Any]:
    """The run's status dict (``state`` is one of :data:`STATES`), marking a dead worker's run ``failed``.

    Besides ``state`` the dict may carry ``phase``, ``epoch``, ``epochs``, ``batch``, ``batches``,
    ``eta_s``, ``elapsed``, ``val_accuracy``, ``error``, ``cancel_requested``, ``created``, ``finished``.
    """
    folder = run_dir(workspace, run_id)
    if not folder.is_dir():
        raise JobError(f"There is no run {run_id}.")
    return folder_status(folder)


def folder_status(folder: Path) -> dict[str, Any]:
    """The status of any job folder (training run or video job), marking a vanished worker's job ``failed``."""
    _reap_children()
    status = read_status(folder) or {"run_id": folder.name, "state": "queued", "created": time.time()}
    if status.get("state") in ACTIVE_STATES and not worker_alive(folder) and not _launching(folder, status):
        status = _mark_dead(folder)
    status["cancel_requested"] = (folder / CANCEL_FILE).exists()
    return status


def _launching(folder: Path, status: dict[str, Any]) -> bool:
    """A queued run whose launcher has not yet recorded the worker (a window of milliseconds, normally)."""
    return (status.get("state") == "queued" and worker_identity(folder) is None
            and time.time() - status.get("created", 0) < LAUNCH_GRACE_S)


def _mark_dead(folder: Path) -> dict[str, Any]:
    """Record that the worker vanished, unless it finished between our two looks at the status."""
    status = read_status(folder) or {"run_id": folder.name}
    if status.get("state") not in (*ACTIVE_STATES, None):
        return status
    tail = _log_tail(folder)
    what = "training" if status.get("kind", "train") == "train" else status["kind"]
    status.update(
        state="failed", finished=time.time(),
        error=f"The {what} process stopped unexpectedly (killed, out of memory or crashed)."
        + (f" Last output:\n{tail}" if tail else ""),
    )
    atomic.write_json(folder / STATUS_FILE, status)
    return status


def active_run(workspace: Path) -> str | None:
    """The id of the run currently queued or running in the workspace, if any."""
    for run_id in run_ids(workspace):
        if job_status(workspace, run_id).get("state") in ACTIVE_STATES:
            return run_id
    return None


# -- starting and cancelling ---------------------------------------------------------------------
def create_run(workspace: Path, config: dict[str, Any], kind: str = "train") -> tuple[str, Path]:
    """A fresh run folder with its config (a training config, or an import's origin) and a ``queued`` status."""
    run_id = new_run_id()
    folder = run_dir(workspace, run_id)
    folder.mkdir(parents=True)
    atomic.write_json(folder / CONFIG_FILE, config)
    atomic.write_json(folder / STATUS_FILE, {"run_id": run_id, "kind": kind, "state": "queued", "created": time.time()})
    return run_id, folder


def worker_command(settings: Settings, run_id: str, lock_fd: int) -> list[str]:
    """The command line of a training worker: the CLI's ``train`` on an existing run."""
    return [sys.executable, "-m", "expr_core", "train", "--workspace", str(settings.workspace),
            "--run-id", run_id, "--lock-fd", str(lock_fd)]


def start_training(settings: Settings, config: TrainConfig) -> str:
    """Start training in a new process and return its run id at once (:class:`JobRunning` if one is going on).

    The child inherits the training lock, so a second start sees the workspace busy immediately, even
    before the child has printed a line.
    """
    config = config.validated()
    _reap_children()
    fd = acquire_lock(settings.workspace)
    try:
        run_id, folder = create_run(settings.workspace, config.to_dict())
        launch(folder, worker_command(settings, run_id, fd), pass_fds=(fd,))
    finally:
        os.close(fd)  # the child holds its own copy of the locked file description
    return run_id


def launch(folder: Path, command: list[str], pass_fds: tuple[int, ...] = ()) -> None:
    """Start a worker for the job in ``folder``, in its own session (a page reload or a closed tab does not
    stop it), logging to ``worker.log`` and recording its identity so readers can tell if it dies."""
    with open(folder / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            command, pass_fds=pass_fds, start_new_session=True, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    atomic.write_json(folder / WORKER_FILE, {"worker": process_identity(proc.pid), "launched": time.time()})
    _children[folder.name] = proc


def run_cli(args: list[str], timeout_s: float) -> dict[str, Any]:
    """Run ``python -m expr_core ARGS`` in a worker process and wait: short TensorFlow work for the server.

    Returns the JSON object the command prints last; a failure raises :class:`JobError` with the command's
    own ``error:`` message (written for users) or, failing that, the end of its output.
    """
    command = [sys.executable, "-m", "expr_core", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    except subprocess.TimeoutExpired as exc:
        raise JobError(f"{args[0]} did not finish within {timeout_s:.0f} s.") from exc
    if done.returncode != 0:
        errors = [line[len("error: "):] for line in done.stderr.splitlines() if line.startswith("error: ")]
        raise JobError(errors[-1] if errors else f"{args[0]} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cancel(workspace: Path, run_id: str) -> bool:
    """Ask a run to stop; ``False`` if it was not running. The worker notices within a batch or a few seconds.

    The request is a file (it works across process namespaces and is seen by any reader); the worker
    checks it after every batch and, when it is busy elsewhere (building, converting), interrupts itself.
    """
    return request_cancel(run_dir(workspace, run_id))


def request_cancel(folder: Path) -> bool:
    """Write the cancel request of any job folder; ``False`` if the job is not active."""
    if folder_status(folder).get("state") not in ACTIVE_STATES:
        return False
    atomic.write_json(folder / CANCEL_FILE, {"requested": time.time()})
    return True


def kill(workspace: Path, run_id: str) -> bool:
    """SIGTERM the worker (the fallback when a cancel request goes unanswered); it then stops as cancelled."""
    folder = run_dir(workspace, run_id)
    if not worker_alive(folder):
        return False
    os.kill(int(worker_identity(folder).split(":")[0]), signal.SIGTERM)
    return True


def wait(workspace: Path, run_id: str, timeout_s: float | None = None, poll_s: float = 0.5) -> dict[str, Any]:
    """Block until the run is no longer active (or ``timeout_s`` passes); returns the last status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = job_status(workspace, run_id)
        if status.get("state") not in ACTIVE_STATES or (deadline and time.monotonic() > deadline):
            return status
        time.sleep(poll_s)
