"""A job folder: long work in another process, followed from anywhere through its files.

Training runs, model imports and video jobs all keep one folder each with:

``status.json``   the latest :class:`JobState` and progress, replaced atomically
``events.jsonl``  one JSON object per line, appended by the worker: the progress stream (see :class:`EventType`)
``worker.json``   identity (pid and start time) of the launched worker, so a dead one is told from a slow one
``worker.log``    the worker's stdout/stderr (tracebacks of crashes end up here)
``cancel``        exists once a cancel was requested
``heartbeat``     touched every few seconds while the worker lives: how an app replica on *another* host (one
                  workspace on a shared folder) tells a live worker from a dead one, since it cannot see its process

Readers never talk to the worker: a page after a reload, another browser session and the CLI all
reattach by reading ``status.json`` and ``events.jsonl`` (incrementally, see :func:`read_events`).
If the status says a job is active but its process is gone (crash, SIGKILL, reboot), the first reader
to notice marks it failed. Nothing else changes: workers publish their results with one rename at the end.

Event dicts all carry ``type``, ``t`` (Unix time) and ``elapsed`` (seconds since the worker started):

- ``start``: ``run_id``, ``pid``, ``config``
- ``phase``: ``phase`` (a training phase, see :mod:`expr_core.jobs.runs`), ``title``
- ``dataset``: ``labels``, ``counts`` (``{label: {"train": n, "val": n}}``), ``samples``
- ``batch``: ``phase``, ``epoch``, ``epochs``, ``batch``, ``batches`` (1-based), ``loss``, ``accuracy``,
  ``eta_s`` (seconds left in this phase if it runs all its epochs; early stopping may end it sooner)
- ``epoch``: ``phase``, ``epoch``, ``epochs``, ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``,
  ``lr``, ``seconds``
- ``progress``: ``frames``, ``total_frames`` (video jobs)
- ``warning`` / ``info``: ``message``
- ``end``: ``state`` (a final :class:`JobState`), ``error``, ``val_accuracy``

This module never imports TensorFlow: the Streamlit server uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import psutil

from expr_core import atomic
from expr_core.errors import CorruptFile, UserError

STATUS_FILE, EVENTS_FILE, CONFIG_FILE = "status.json", "events.jsonl", "config.json"
WORKER_FILE, LOG_FILE, CANCEL_FILE, HEARTBEAT_FILE = "worker.json", "worker.log", "cancel", "heartbeat"
HOST = socket.gethostname()
HEARTBEAT_S = 5.0
HEARTBEAT_STALE_S = 60.0  # a worker on another host is judged dead after this long without a heartbeat
JOB_ID_PATTERN = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$")
LOG_TAIL_LINES = 15
LAUNCH_GRACE_S = 30.0

# Worker processes launched by this process, kept so they are reaped (no zombies) when they finish.
_children: dict[str, subprocess.Popen[bytes]] = {}


class JobState(StrEnum):
    """Where a job is. Stored as its string value, so ``status["state"] == JobState.DONE`` just works."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (JobState.QUEUED, JobState.RUNNING)


ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)


class EventType(StrEnum):
    """The ``type`` of an event line (fields per type in the module docstring)."""

    START = "start"
    PHASE = "phase"
    DATASET = "dataset"
    BATCH = "batch"
    EPOCH = "epoch"
    PROGRESS = "progress"
    PUBLISHED = "published"
    WARNING = "warning"
    INFO = "info"
    END = "end"


class JobError(UserError):
    """A job request that cannot be honoured (unknown job, already running, ...)."""


def new_job_id() -> str:
    """Sortable, readable and unique: ``YYYYmmdd-HHMMSS-xxxx``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def checked_job_id(job_id: str, what: str = "job") -> str:
    """``job_id`` if it is one of ours; refuses anything else (it could be a path like ``../x``)."""
    if not JOB_ID_PATTERN.match(job_id or ""):
        raise JobError(f"{job_id!r} is not a {what} id (they look like 20250101-120000-ab12).")
    return job_id


def job_ids(parent: Path) -> list[str]:
    """The ids of the job folders in ``parent``, newest first."""
    if not parent.is_dir():
        return []
    return sorted((p.name for p in parent.iterdir() if p.is_dir() and JOB_ID_PATTERN.match(p.name)), reverse=True)


def create_job(parent: Path, kind: str, config: dict[str, Any] | None = None, **status: Any) -> Path:
    """A fresh job folder under ``parent`` with its config (if any) and a queued status; returns the folder."""
    job_id = new_job_id()
    folder = parent / job_id
    folder.mkdir(parents=True)
    if config is not None:
        atomic.write_json(folder / CONFIG_FILE, config)
    atomic.write_json(
        folder / STATUS_FILE,
        {"job_id": job_id, "kind": kind, "state": JobState.QUEUED, "created": time.time(), **status},
    )
    return folder


# -- status and events ---------------------------------------------------------------------------
def read_status(folder: Path) -> dict[str, Any]:
    """The raw ``status.json`` of a job folder (``{}`` if there is none yet)."""
    return atomic.read_json(Path(folder) / STATUS_FILE, {}) or {}


_OWN_STATUS = frozenset({"job_id", "kind", "created", "started", "worker", "elapsed", "updated", "cancel_requested"})


class JobWriter:
    """The worker's side: appends events and keeps ``status.json`` current. Only the worker uses one.

    ``echo`` also receives every event (the CLI prints progress with it). Creating one marks the job
    running in this process, so readers can tell from then on whether the worker is alive.
    """

    def __init__(self, folder: Path, echo: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.folder = Path(folder)
        self.job_id = self.folder.name
        self._echo = echo
        self.started = time.time()
        self._status = read_status(self.folder) or {"job_id": self.job_id, "created": self.started}
        self._events = open(self.folder / EVENTS_FILE, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._last_status_write = 0.0
        self.status(state=JobState.RUNNING, started=self.started, worker=process_identity(os.getpid()), host=HOST)
        self._stopped = threading.Event()
        threading.Thread(target=self._beat, name="job-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        """Touch the heartbeat file until the writer closes (readers on other hosts watch its age)."""
        while True:
            with contextlib.suppress(OSError):
                (self.folder / HEARTBEAT_FILE).touch()
            if self._stopped.wait(HEARTBEAT_S):
                return

    def elapsed(self) -> float:
        return time.time() - self.started

    def event(self, type_: EventType, **fields: Any) -> dict[str, Any]:
        """Append one event line (flushed at once so readers see it) and return it."""
        record = {"type": str(type_), "t": round(time.time(), 3), "elapsed": round(self.elapsed(), 2), **fields}
        self.append(record)
        return record

    def status(self, throttle_s: float = 0.0, **changes: Any) -> None:
        """Merge ``changes`` into the status; with ``throttle_s``, skip writes closer together than that."""
        self._status.update(changes, elapsed=round(self.elapsed(), 2), updated=time.time())
        now = time.monotonic()
        if throttle_s and now - self._last_status_write < throttle_s:
            return
        atomic.write_json(self.folder / STATUS_FILE, self._status)
        self._last_status_write = now

    @property
    def state(self) -> str | None:
        return self._status.get("state")

    def append(self, event: dict[str, Any]) -> None:
        """Append an event as it is (one made here, or elsewhere: a job on a Ray cluster)."""
        self._events.write(json.dumps(event, ensure_ascii=False) + "\n")
        self._events.flush()
        if self._echo:
            self._echo(event)

    def mirror(self, status: dict[str, Any]) -> None:
        """Take over another process's status of this job (a job on a Ray cluster), keeping this process as the
        job's worker: readers judge the job alive by this process."""
        self.status(**{k: v for k, v in status.items() if k not in _OWN_STATUS}, throttle_s=0.0)

    def cancel_requested(self) -> bool:
        return cancel_requested(self.folder)

    def close(self) -> None:
        self._stopped.set()
        self._events.close()


@contextlib.contextmanager
def reporting_to(folder: Path | None) -> Iterator[JobWriter | None]:
    """The worker side of an optional job folder (``None``: a foreground CLI run, nothing to report to).

    A :class:`UserError` ends the job as failed with its message (and is raised on for the CLI's exit
    status); the writer is closed however the block ends.
    """
    writer = JobWriter(folder) if folder else None
    try:
        yield writer
    except UserError as exc:
        if writer:
            writer.status(state=JobState.FAILED, error=str(exc), finished=time.time())
        raise
    finally:
        if writer:
            writer.close()


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
    for job_id, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[job_id]


def process_identity(pid: int | None) -> str | None:
    """``"pid:start-time"`` of a live, non-zombie process, else ``None``.

    Storing this instead of a bare pid means a recycled pid is never mistaken for our worker.
    """
    if not pid:
        return None
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return None
            return f"{pid}:{process.create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def worker_identity(folder: Path) -> str | None:
    """Identity of the process working on the job: as the worker wrote it, else as it was launched."""
    status = read_status(folder)
    return status.get("worker") or (atomic.read_json(Path(folder) / WORKER_FILE, {}) or {}).get("worker")


def worker_host(folder: Path) -> str:
    """The host the job's worker runs on (this one for jobs recorded before hosts were)."""
    status = read_status(folder)
    return status.get("host") or (atomic.read_json(Path(folder) / WORKER_FILE, {}) or {}).get("host") or HOST


def worker_alive(folder: Path) -> bool:
    """Whether the job's worker lives: its process, on this host; its heartbeat, on another (an app replica)."""
    if worker_host(folder) != HOST:
        try:
            return time.time() - (Path(folder) / HEARTBEAT_FILE).stat().st_mtime < HEARTBEAT_STALE_S
        except FileNotFoundError:
            return False
    identity = worker_identity(folder)
    return identity is not None and process_identity(int(identity.split(":")[0])) == identity


def _log_tail(folder: Path) -> str:
    try:
        lines = (Path(folder) / LOG_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def folder_status(folder: Path) -> dict[str, Any]:
    """The status of a job folder, marking a vanished worker's job failed.

    Besides ``state`` the dict may carry ``phase``, ``epoch``, ``epochs``, ``batch``, ``batches``,
    ``eta_s``, ``elapsed``, ``val_accuracy``, ``error``, ``cancel_requested``, ``created``, ``finished``.
    """
    _reap_children()
    try:
        status = read_status(folder) or {"job_id": folder.name, "state": JobState.QUEUED, "created": time.time()}
    except CorruptFile as exc:  # one damaged job must not break the lists it is in
        return {"job_id": folder.name, "state": JobState.FAILED, "error": str(exc), "cancel_requested": False}
    if status.get("state") in ACTIVE_STATES and not worker_alive(folder) and not _launching(folder, status):
        status = _mark_dead(folder)
    status["cancel_requested"] = cancel_requested(folder)
    return status


def _launching(folder: Path, status: dict[str, Any]) -> bool:
    """A queued job whose launcher has not yet recorded the worker (a window of milliseconds, normally)."""
    return (
        status.get("state") == JobState.QUEUED
        and worker_identity(folder) is None
        and time.time() - status.get("created", 0) < LAUNCH_GRACE_S
    )


def _mark_dead(folder: Path) -> dict[str, Any]:
    """Record that the worker vanished, unless it finished between our two looks at the status."""
    status = read_status(folder) or {"job_id": folder.name}
    if status.get("state") not in (*ACTIVE_STATES, None):
        return status
    tail = _log_tail(folder)
    what = "training" if status.get("kind", "train") == "train" else status["kind"]
    status.update(
        state=JobState.FAILED,
        finished=time.time(),
        error=f"The {what} process stopped unexpectedly (killed, out of memory or crashed)."
        + (f" Last output:\n{tail}" if tail else ""),
    )
    atomic.write_json(folder / STATUS_FILE, status)
    return status


def is_active(folder: Path) -> bool:
    return folder_status(folder).get("state") in ACTIVE_STATES


# -- starting, cancelling, waiting ---------------------------------------------------------------
# NumPy's BLAS with one thread in workers: the head's matrix products took 1.3 s with one thread and 2.9 s with
# two while the other core was busy (a streaming server), 1.35 against 1.1 s on an idle machine.
ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}


WORKER_NICENESS = 10


def _below_the_server(command: list[str]) -> list[str]:
    """The command run at a lower CPU priority (``nice`` execs it: same process): a worker's TensorFlow must not
    starve the server's live streams (a Detect stream dropped while phase 2 started on a loaded 2-core machine)."""
    nice = shutil.which("nice")
    return [nice, "-n", str(WORKER_NICENESS), *command] if nice else command


def launch(folder: Path, command: list[str], pass_fds: tuple[int, ...] = ()) -> None:
    """Start a worker for the job in ``folder``, in its own session (a page reload or a closed tab does not
    stop it), logging to ``worker.log`` and recording its identity so readers can tell if it dies."""
    _reap_children()
    with open(folder / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            _below_the_server(command),
            pass_fds=pass_fds,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **ONE_BLAS_THREAD},
        )
    atomic.write_json(
        folder / WORKER_FILE, {"worker": process_identity(proc.pid), "host": HOST, "launched": time.time()}
    )
    _children[folder.name] = proc


def cancel_requested(folder: Path) -> bool:
    return (Path(folder) / CANCEL_FILE).exists()


def request_cancel(folder: Path) -> bool:
    """Ask the job in ``folder`` to stop; ``False`` if it is not active.

    The request is a file (it works across process namespaces and is seen by any reader); workers check
    it between steps, and the training worker interrupts itself when it is busy elsewhere.
    """
    if not is_active(folder):
        return False
    atomic.write_json(folder / CANCEL_FILE, {"requested": time.time()})
    return True


def wait(folder: Path, timeout_s: float, poll_s: float = 0.5) -> dict[str, Any]:
    """Block until the job is no longer active or ``timeout_s`` passes; returns the last status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = folder_status(folder)
        if status.get("state") not in ACTIVE_STATES or time.monotonic() > deadline:
            return status
        time.sleep(poll_s)
