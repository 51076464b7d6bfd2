"""Showing a training run: live progress, learning curves, and the evaluation report.

Shared by the Train page (the run in progress and the last one) and the Models page (any run).
Not a page itself.
"""

from __future__ import annotations

import time
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from expr_core.data.store import DatasetStore
from expr_core.jobs import folder as job
from expr_core.jobs import runs
from expr_core.registry import Registry, RunInfo

PHASE_NAMES = {"head": "phase 1 (base frozen)", "finetune": "phase 2 (fine-tuning)"}


def run_events(workspace, run_id: str) -> list[dict[str, Any]]:
    """All events of a run, read incrementally: each refresh reads only the lines appended since the last."""
    cache = st.session_state.setdefault("run_events", {})
    offset, events = cache.get(run_id, (0, []))
    new, offset = job.read_events(runs.run_dir(workspace, run_id), offset)
    events = events + new
    cache[run_id] = (offset, events)
    return events


def epoch_table(events: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished epoch across both phases, numbered continuously."""
    rows = [e for e in events if e.get("type") == "epoch"]
    table = pd.DataFrame(rows, columns=["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"])
    table["step"] = range(1, len(table) + 1)
    return table


def learning_curves(events: list[dict[str, Any]]) -> None:
    """Loss and accuracy, train and validation, with a rule where phase 2 starts."""
    table = epoch_table(events)
    if table.empty:
        st.caption("The curves appear after the first epoch.")
        return
    boundary = table.loc[table["phase"] == "finetune", "step"].min()
    long = table.melt(
        id_vars=["step", "phase"],
        value_vars=["loss", "val_loss", "accuracy", "val_accuracy"],
        var_name="series",
        value_name="value",
    ).dropna()
    long["metric"] = long["series"].str.replace("val_", "", regex=False)
    long["split"] = long["series"].map(lambda s: "validation" if s.startswith("val_") else "train")
    for col, metric in zip(st.columns(2), ("loss", "accuracy"), strict=True):
        data = long[long["metric"] == metric]
        lines = (
            alt.Chart(data)
            .mark_line(point=True)
            .encode(
                x=alt.X("step:Q", title="epoch (both phases)", axis=alt.Axis(tickMinStep=1)),
                y=alt.Y("value:Q", title=metric),
                color=alt.Color("split:N", title=None),
                tooltip=["phase", "step", "split", alt.Tooltip("value:Q", format=".3f")],
            )
        )
        layers = [lines]
        if pd.notna(boundary):
            rule = pd.DataFrame({"step": [boundary - 0.5], "label": ["phase 2 starts"]})
            layers.append(alt.Chart(rule).mark_rule(strokeDash=[4, 4], color="gray").encode(x="step:Q"))
            layers.append(
                alt.Chart(rule).mark_text(align="left", dx=4, dy=-60, color="gray").encode(x="step:Q", text="label")
            )
        col.altair_chart(alt.layer(*layers).properties(title=metric.capitalize(), height=260), width="stretch")


def progress(status: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """Phase, epoch and batch bars, elapsed and estimated time left."""
    phase_event = next((e for e in reversed(events) if e.get("type") == "phase"), None)
    batch = next((e for e in reversed(events) if e.get("type") == "batch"), None)
    st.write(f"**{phase_event['title'] if phase_event else 'Starting the training process'}...**")
    if batch and phase_event and batch.get("phase") == phase_event.get("phase"):
        name = PHASE_NAMES.get(batch["phase"], batch["phase"])
        st.progress(
            min(1.0, (batch["epoch"] - 1 + batch["batch"] / batch["batches"]) / batch["epochs"]),
            text=f"{name}: epoch {batch['epoch']}/{batch['epochs']}",
        )
        st.progress(batch["batch"] / batch["batches"], text=f"batch {batch['batch']}/{batch['batches']}")
    elif phase_event and phase_event.get("phase") == "finetune" and status.get("first_batch_expected_s"):
        # The first batch builds the graph (a minute or two for DenseNet201): move by last time's duration.
        expected = float(status["first_batch_expected_s"])
        since = time.time() - float(phase_event.get("t", time.time()))
        st.progress(
            min(0.97, since / expected),
            text=f"building the graph and running the first batch: {since:.0f} s of about {expected:.0f} s (last time)",
        )
    # Counted from the start, not from the last status write: it keeps moving through a long first batch.
    started = status.get("started")
    elapsed = time.time() - started if started else status.get("elapsed") or 0
    eta = status.get("eta_s")
    st.caption(
        f"Elapsed {elapsed:.0f} s"
        + (f" · about {eta:.0f} s left in this phase (early stopping may end it sooner)" if eta else "")
    )
    for warning in (e["message"] for e in events if e.get("type") == "warning"):
        st.warning(warning)


def model_ready(status: dict[str, Any]) -> None:
    """A run whose first model is out while fine-tuning goes on: say so, and how long the rest may take."""
    accuracy = status.get("val_accuracy")
    quality = "" if accuracy is None else f" (validation accuracy {accuracy:.0%})"
    eta = status.get("eta_s") if status.get("phase") == "finetune" else None
    left = f"about {max(1, round(eta / 60))} min left" if eta else "its first batch builds the graph, a minute or two"
    if status.get("usable") is False:
        st.warning(
            f"A first model is out{quality} but it is not usable, so it was not made active. "
            f"Fine-tuning continues ({left})."
        )
    else:
        st.success(
            f"**Model ready**{quality}: Detect can use it now. Fine-tuning continues ({left}); the "
            "fine-tuned version replaces it only if it reads the validation faces better.",
            icon=":material/check_circle:",
        )
        st.page_link("pages/detect.py", label="Try it on Detect", icon=":material/face:")


CELL_PX, MIN_SIDE_PX = 70, 300


def confusion_heatmap(report: dict[str, Any]) -> alt.Chart:
    labels = report["labels"]
    cells = [
        {"true": labels[i], "predicted": labels[j], "count": n}
        for i, row in enumerate(report["confusion_matrix"])
        for j, n in enumerate(row)
    ]
    # Square cells of CELL_PX, labels written level: two labels once gave two 18 px rows with rotated names.
    axis = alt.Axis(labelAngle=0, labelLimit=160)
    base = alt.Chart(pd.DataFrame(cells)).encode(
        x=alt.X("predicted:N", sort=labels, axis=axis), y=alt.Y("true:N", sort=labels, axis=axis)
    )
    heat = base.mark_rect().encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="blues")))
    text = base.mark_text(fontSize=16).encode(text="count:Q")
    side = max(CELL_PX * len(labels), MIN_SIDE_PX)  # the title must fit too
    return (heat + text).properties(title="Confusion matrix (validation)", width=side, height=side)


def verdict(run: RunInfo) -> None:
    """A finished run's quality check: why it is not usable (and so not active, unless forced), or what to keep
    in mind."""
    if run.usable is False:
        why = "it was made active by hand anyway" if run.active else "so it was not made active"
        st.error(f"**This model is not usable, {why}.**\n\n" + "\n".join(f"- {w}" for w in run.warnings))
    else:
        for warning in run.warnings:
            st.warning(warning)


def split_caption(split: dict[str, Any], imbalance: float | None) -> str:
    """How validation was chosen, in a sentence: new people, or other sessions of the same people."""
    val = ", ".join(split["val_persons"])
    text = (
        f"Validation holds people the model never saw in training ({val}): it measures how it reads new people."
        if split["mode"] == "people"
        else f"Validation holds other capture sessions of people also in training ({val})."
    )
    if imbalance and imbalance > 1:
        text += (
            f" Training has {imbalance:g}x more faces of its largest label than of its smallest (labels weigh equally)."
        )
    return text


def evaluation(registry: Registry, run_id: str, store: DatasetStore) -> None:
    """Accuracy, confusion matrix, per-label precision/recall/F1, and the misclassified validation faces."""
    report = registry.metrics(run_id)
    if not report:
        st.info("This run has no evaluation report.")
        return
    cols = st.columns(3)
    cols[0].metric("Validation accuracy", f"{report['accuracy']:.1%}" if report.get("accuracy") is not None else "n/a")
    cols[1].metric(
        "Balanced accuracy",
        f"{report['balanced_accuracy']:.1%}" if report.get("balanced_accuracy") is not None else "n/a",
    )
    cols[2].metric("Validation faces", report.get("n", 0))
    if report.get("quantized"):
        q = report["quantized"]
        st.caption(
            f"Quantised (served) model: accuracy {q['accuracy']:.1%}, "
            f"agrees with float32 on {q['agreement']:.1%} of faces."
        )
    if report.get("split"):
        st.caption(split_caption(report["split"], report.get("imbalance")))
    left, right = st.columns(2)
    left.altair_chart(confusion_heatmap(report), width="content")
    per_class = pd.DataFrame(report["per_class"]).T.reset_index(names="label")
    right.dataframe(per_class, hide_index=True)
    if report.get("per_person"):
        right.write("**Per person** (validation faces)")
        right.dataframe(pd.DataFrame(report["per_person"]).T.reset_index(names="person"), hide_index=True)
    wrong = report.get("misclassified", [])
    st.write(f"**Misclassified validation faces** ({len(wrong)})")
    present = {s.id for s in store.samples()}
    grid = st.columns(8)
    for i, item in enumerate([w for w in wrong if w["id"] in present][:32]):
        grid[i % 8].image(
            str(store.image_path(item["id"])),
            caption=f"{item['label']} → {item['predicted']} ({item['confidence']:.0%})",
        )
