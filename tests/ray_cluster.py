"""A real one-node Ray cluster on this machine, for the Ray backend's tests and ``bench/jobs.py``.

``ray start --head`` (2 CPUs, no dashboard) with token authentication on, as on a real cluster: the token is in
a file of its own, and this process (and the supervisors it starts, which inherit its environment) is given it
the way the README tells a team (``RAY_AUTH_MODE=token`` and the token). Every process of the cluster, and only
those, is killed at the end: other Ray clusters may run on the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_of(temp_dir: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in part for part in p.info["cmdline"] or [])]


@contextlib.contextmanager
def local_ray_cluster(cpus: int = 2) -> Iterator[str]:
    """Start the cluster, yield its address (``127.0.0.1:PORT``) with the auth environment set, stop it."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    token = Path(temp_dir, "auth_token")
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = free_port()
    command = [str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port)]
    command += ["--num-cpus", str(cpus), "--include-dashboard", "false", "--disable-usage-stats"]
    command += ["--temp-dir", temp_dir]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env={**os.environ, **auth})
    if done.returncode != 0:
        raise RuntimeError(f"ray start failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for process in _processes_of(temp_dir):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
