"""All configuration in one frozen object, built from environment variables and (in the app) secrets.

Every other module receives a :class:`Settings` instead of reading the environment itself, so tests
and the CLI can build one explicitly and nothing depends on where the process happened to start.

Environment variables (all optional):

- ``EXPR_HOME``: workspace folder holding the dataset, runs and models (default ``./workspace``).
- ``EXPR_MODELS_DIR``: folder searched first for model files such as the YuNet ONNX file
  (default ``./models``). Files found there are used before any download.
- ``EXPR_CACHE_DIR``: where downloaded model files are cached (default ``~/.cache/expr-studio``).
- ``EXPR_DOWNLOADS``: ``0`` forbids downloads (files must be in the models folder or the cache).
- ``EXPR_DETECTOR``: ``yunet`` (default), ``ssd`` or ``haar``.
- ``EXPR_QUANTIZED``: ``0`` serves the float32 model instead of the dynamic-range quantised one.
- ``EXPR_ICE_SERVERS``: a JSON list of ICE server objects for WebRTC, e.g.
  ``[{"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"}]``.
- ``EXPR_ICE_TRANSPORT_POLICY``: ``all`` (default) or ``relay``: the browser then uses only TURN relays,
  which proves (and forces) the relay path of a hosted deployment. Also ``ice_transport_policy`` in secrets.
- ``EXPR_JOB_BACKEND``: where training, video and explanation jobs run: ``local`` (worker processes on this
  machine, the default) or ``ray`` (a Ray cluster, :mod:`expr_core.jobs.ray_backend`). Also ``job_backend``
  in secrets.
- ``EXPR_RAY_ADDRESS``: the Ray cluster (``ray://head:10001`` or ``head:6379``; ``auto`` finds a local one);
  setting it chooses the ``ray`` backend unless ``EXPR_JOB_BACKEND`` says otherwise. Also ``ray_address``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from expr_core.errors import UserError

DETECTORS = ("yunet", "ssd", "haar")
ICE_TRANSPORT_POLICIES = ("all", "relay")
JOB_BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Settings:
    """Where things live and which detector to use; see the module docstring for the variables."""

    workspace: Path = Path("workspace")
    models_dir: Path = Path("models")
    cache_dir: Path = Path.home() / ".cache" / "expr-studio"
    allow_downloads: bool = True
    detector: str = "yunet"
    crop_margin: float = 0.2
    crop_size: int = 224
    quantized_serving: bool = True
    ice_servers: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    ice_transport_policy: str = "all"
    job_backend: str = "local"
    ray_address: str | None = None

    def backend_args(self) -> list[str]:
        """The job backend as command-line options, for the worker commands the app starts."""
        return ["--backend", self.job_backend] + (["--ray-address", self.ray_address] if self.ray_address else [])

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (settings are immutable so they can be shared by threads)."""
        return replace(self, **changes)


def parse_ice_servers(raw: Any) -> tuple[dict[str, Any], ...]:
    """Validate ICE servers given as a JSON string or a list of mappings.

    An empty value gives an empty tuple: we never fall back to a hard-coded public server.
    """
    if raw in (None, "", [], ()):
        return ()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UserError(f"ICE servers are not valid JSON ({exc}); expected a list of objects with 'urls'.") from exc
    if not isinstance(raw, (list, tuple)):
        raise UserError("ICE servers must be a list of objects, each with a 'urls' entry.")
    servers = []
    for entry in raw:
        if not isinstance(entry, Mapping) or not entry.get("urls"):
            raise UserError(f"ICE server entry {entry!r} has no 'urls'.")
        servers.append(dict(entry))
    return tuple(servers)


def load_settings(env: Mapping[str, str] | None = None, secrets: Mapping[str, Any] | None = None) -> Settings:
    """Build settings from the environment, with Streamlit secrets (when given) taking precedence for ICE."""
    env = os.environ if env is None else env
    secrets = secrets or {}
    detector = env.get("EXPR_DETECTOR", "yunet").strip().lower()
    if detector not in DETECTORS:
        raise UserError(f"EXPR_DETECTOR={detector!r} is unknown; choose one of {', '.join(DETECTORS)}.")
    ice_raw = secrets.get("ice_servers") if "ice_servers" in secrets else env.get("EXPR_ICE_SERVERS")
    policy = str(secrets.get("ice_transport_policy") or env.get("EXPR_ICE_TRANSPORT_POLICY") or "all").strip().lower()
    if policy not in ICE_TRANSPORT_POLICIES:
        raise UserError(f"ICE transport policy {policy!r} is unknown; choose 'all' or 'relay' (TURN only).")
    ray_address = str(secrets.get("ray_address") or env.get("EXPR_RAY_ADDRESS") or "").strip() or None
    backend = str(secrets.get("job_backend") or env.get("EXPR_JOB_BACKEND") or ("ray" if ray_address else "local"))
    backend = backend.strip().lower()
    if backend not in JOB_BACKENDS:
        raise UserError(f"Job backend {backend!r} is unknown; choose 'local' or 'ray'.")
    return Settings(
        workspace=Path(env.get("EXPR_HOME", "workspace")),
        models_dir=Path(env.get("EXPR_MODELS_DIR", "models")),
        cache_dir=Path(env.get("EXPR_CACHE_DIR", str(Path.home() / ".cache" / "expr-studio"))),
        allow_downloads=env.get("EXPR_DOWNLOADS", "1") != "0",
        detector=detector,
        quantized_serving=env.get("EXPR_QUANTIZED", "1") != "0",
        ice_servers=parse_ice_servers(ice_raw),
        ice_transport_policy=policy,
        job_backend=backend,
        ray_address=ray_address,
    )
