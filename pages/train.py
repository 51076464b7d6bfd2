"""Train: fine-tune DenseNet201 on the dataset in a background process, with live progress and a report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import streamlit as st

from expr_core import bases
from expr_core.backbones import BACKBONES, FER2013, IMAGENET, default_backbone, imagenet_weights_available
from expr_core.bases import BaseKey
from expr_core.data.split import SplitError, check_trainable, split_samples
from expr_core.jobs import folder as job
from expr_core.jobs import prepare, runs
from expr_core.registry import Registry
from expr_core.train_config import TrainConfig
from pages import common, report

common.page("pages/train.py")
st.title("Train")
cfg, store = common.settings(), common.store()
registry = Registry(cfg.workspace)
counts = store.stats()
st.caption("Samples per label: " + " · ".join(f"{label}: {n}" for label, n in counts.items()))
if cfg.job_backend == "ray":
    st.caption(f"Training runs on the Ray cluster at {cfg.ray_address or 'auto'}; progress shows here as usual.")

running = runs.active_run(cfg.workspace)
SIZES = [48, 64, 96, 128, 160, 224]


@st.fragment(run_every=1.0)
def live(run_id: str) -> None:
    """Refreshes every second; when the run ends, reruns the page to show the report."""
    status = runs.run_status(cfg.workspace, run_id)
    events = report.run_events(cfg.workspace, run_id)
    if status["state"] not in job.ACTIVE_STATES:
        st.rerun()
    st.subheader(f"Run {run_id}: {status['state']}")
    if status.get("version"):
        report.model_ready(status)
    report.progress(status, events)
    report.learning_curves(events)
    if status.get("cancel_requested"):
        st.info("Cancelling... the run stops after the current batch.")
    elif st.button("Cancel training", icon=":material/cancel:"):
        runs.cancel(cfg.workspace, run_id)


if running:
    st.info("Training runs in the background: you can leave this page, close the tab or open it elsewhere.")
    live(running)
    st.stop()


@st.fragment(run_every=2.0)
def watch_for_a_run() -> None:
    """A run started in another tab or on another replica of the app: show it instead of this form."""
    if runs.active_run(cfg.workspace):
        st.rerun()


watch_for_a_run()
listed = registry.runs()
if listed and listed[0].state == job.JobState.FAILED:  # at the top, where the eye is after pressing Start
    st.error(f"**The last run ({listed[0].run_id}) failed:** {listed[0].error}", icon=":material/error:")

trainable = [label for label, n in counts.items() if n]
with contextlib.suppress(SplitError):  # data that cannot be split at all is refused, with the reasons, at Start
    for warning in split_samples(store.samples(), trainable).warnings:  # they depend on the data alone
        st.warning(warning, icon=":material/group:")

remembered = registry.last_training_config()
default_name, why_default = default_backbone(cfg)


def choice(options: Sequence[Any], value: Any, fallback: Any) -> Any:
    """``value`` if the widget offers it (a CLI run may have used another size), else ``fallback``."""
    return value if value in options else fallback


def clamp(value: float, low: float, high: float) -> float:
    """A remembered setting brought into the widget's range (CLI runs are not limited by the form)."""
    return float(min(max(value, low), high))


@st.fragment(run_every=2.0)
def base_status(key: BaseKey) -> None:
    """The chosen backbone's frozen base, prepared once in the background so that training takes seconds."""
    title = key.title()
    if bases.is_prepared(cfg, key):
        st.caption(f"{title} at {key.image_size} px is prepared: the first model appears seconds after Start.")
        return
    running = prepare.active_job(cfg.workspace, key.slug())
    if running is None:
        failed = prepare.latest_job(cfg.workspace, key.slug())
        status = job.folder_status(failed) if failed else {}
        if status.get("state") == job.JobState.FAILED:
            st.warning(f"{title} could not be prepared: {status.get('error')}", icon=":material/error:")
            return
        running = prepare.start_preparing_base(cfg, key)
    elapsed = time.time() - (job.folder_status(running).get("created") or time.time())
    st.info(
        f"Preparing {title} at {key.image_size} px in the background, once (about a minute; {elapsed:.0f} s so far). "
        "You can start training now: the run waits for it.",
        icon=":material/hourglass_top:",
    )


# The backbone and its weights shape the rest of the form (input size, learning rate, what can go wrong), so
# they sit outside it: choosing one reruns the page with its defaults and its warnings, before Start.
st.subheader("New training run")
if remembered:
    st.caption("Starts from the settings of the last run.")
names = list(BACKBONES)
top_left, top_right = st.columns(2)
backbone = top_left.selectbox(
    "Backbone",
    names,
    index=names.index(choice(names, remembered.get("backbone"), default_name)),
    format_func=lambda name: BACKBONES[name].title,
    help="mini-Xception is pretrained on facial expressions (FER2013) and learns your team's from a few bursts; "
    "DenseNet201 is the original network (ImageNet weights, about 80 MB); MobileNetV3Small is the cheapest.",
)
last = (
    TrainConfig.from_dict(remembered) if remembered.get("backbone") == backbone else TrainConfig.for_backbone(backbone)
)
native = BACKBONES[backbone].weights
weights_options = [native, "file"] if native == FER2013 else [native, "none", "file"]
weights_choice = top_right.radio(
    "Starting weights",
    weights_options,
    horizontal=True,
    index=weights_options.index(choice(weights_options, last.weights, "file")),
    help="ImageNet weights (about 80 MB) are downloaded once into the Keras cache; the FER2013 file (0.9 MB) once "
    "into the app's cache. 'file': a weights file you supply.",
)
if why_default and backbone == default_name:
    st.info(why_default, icon=":material/info:")
elif weights_choice == IMAGENET and not imagenet_weights_available(backbone, cfg):
    st.warning(
        f"The ImageNet weights for {BACKBONES[backbone].title} cannot be downloaded here, so this run would stop "
        "at once. Choose mini-Xception (pretrained on expressions, works offline) or supply a weights file.",
        icon=":material/wifi_off:",
    )
chosen_base = BaseKey(backbone, choice(SIZES, last.image_size, BACKBONES[backbone].image_size), weights_choice)
if weights_choice != "file" and bases.obtainable(cfg, chosen_base):
    bases.remember(cfg, chosen_base)  # samples saved from now on get this base's features
    base_status(chosen_base)

with st.form("train_settings"):
    left, right = st.columns(2)
    weights_path = left.text_input(
        "Weights file (for 'file')",
        placeholder="/path/densenet201_notop.h5",
        value="" if last.weights in weights_options else last.weights,
    )
    batches = [8, 16, 32, 64]
    image_size = right.select_slider(
        "Input size (pixels)",
        SIZES,
        value=choice(SIZES, last.image_size, BACKBONES[backbone].image_size),
        help="Larger is slower and needs more memory (training at 224 px: about 5.4 GB).",
    )
    batch_size = right.select_slider("Batch size", batches, value=choice(batches, last.batch_size, 32))
    epochs_1 = right.number_input("Phase 1 epochs (base frozen; 0 = skip)", 0, 200, min(last.epochs_1, 200))
    epochs_2 = right.number_input("Phase 2 epochs (fine-tune all; 0 = skip)", 0, 100, min(last.epochs_2, 100))
    with st.expander("Advanced"):
        a, b, c = st.columns(3)
        lr_1 = a.number_input("Phase 1 learning rate", 1e-5, 1e-1, clamp(last.lr_1, 1e-5, 1e-1), format="%.5f")
        lr_2 = b.number_input("Phase 2 learning rate", 1e-7, 1e-3, clamp(last.lr_2, 1e-7, 1e-3), format="%.6f")
        val_fraction = c.slider("Validation share", 0.1, 0.4, clamp(last.val_fraction, 0.1, 0.4), 0.05)
        quantize = b.checkbox("Also make a quantised (faster) serving file", value=last.quantize)
    start = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")

weights = weights_path.strip() if weights_choice == "file" else weights_choice
if weights == "none":
    st.warning(
        "Without pretrained weights the network starts from random values: accuracy will be much lower. "
        "Phase 2 then trains every layer (BatchNorm included) from scratch: give it a higher learning rate "
        "(about 0.001, under Advanced) and more epochs."
    )
if start:
    with common.user_errors():
        check_trainable(store.samples(), trainable)
        config = TrainConfig(
            backbone=backbone,
            weights=weights,
            image_size=image_size,
            batch_size=batch_size,
            epochs_1=int(epochs_1),
            epochs_2=int(epochs_2),
            lr_1=lr_1,
            lr_2=lr_2,
            val_fraction=val_fraction,
            quantize=quantize,
        )
        runs.start_training(cfg, config)
        st.rerun()

if listed:
    newest = listed[0]
    st.divider()
    st.subheader(f"Last run {newest.run_id}: {newest.state}")
    report.learning_curves(report.run_events(cfg.workspace, newest.run_id))
    if newest.state == "done":
        report.verdict(newest)
        report.evaluation(registry, newest.run_id, store)
        st.page_link("pages/models.py", label="Compare and activate models", icon=":material/inventory_2:")
