"""Short TensorFlow work for the server: run ``python -m expr_core ARGS`` in a worker process and wait.

The Streamlit server never imports TensorFlow, so even a quick conversion (importing a ``.keras`` file)
happens in a child process; the command's own ``error:`` line (written for users) becomes the message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from expr_core.jobs.folder import JobError


def run_cli(args: list[str], timeout_s: float) -> dict[str, Any]:
    """The JSON object the command prints last; a failure raises :class:`JobError` with its message."""
    command = [sys.executable, "-m", "expr_core", *args]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        )
    except subprocess.TimeoutExpired as exc:
        raise JobError(f"{args[0]} did not finish within {timeout_s:.0f} s.") from exc
    if done.returncode != 0:
        errors = [line[len("error: ") :] for line in done.stderr.splitlines() if line.startswith("error: ")]
        raise JobError(errors[-1] if errors else f"{args[0]} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


IMPORT_TIMEOUT_S = 600


def import_keras(workspace: Path, path: Path, labels: list[str]) -> str:
    """Import a ``.keras`` model as a new finished run (checked, converted to LiteRT); returns its run id.

    Takes as long as a LiteRT conversion: seconds for small models, about a minute for DenseNet201.
    """
    result = run_cli(
        ["models", "import", str(path), "--labels", json.dumps(labels), "--workspace", str(workspace), "--json"],
        IMPORT_TIMEOUT_S,
    )
    return str(result["run_id"])


ASSEMBLE_TIMEOUT_S = 900


def assemble_downloads(workspace: Path, run_id: str) -> None:
    """Make a first model's whole-network ``.keras`` and LiteRT files (a conversion: up to a minute or two)."""
    run_cli(["models", "assemble", run_id, "--workspace", str(workspace), "--json"], ASSEMBLE_TIMEOUT_S)
