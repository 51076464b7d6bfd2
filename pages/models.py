"""Models: every training run, compared; activate, download, delete, import a .keras model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from expr_core.jobs.run_cli import assemble_downloads, import_keras
from expr_core.registry import Registry
from pages import common, report


def downloads(registry: Registry, run_id: str, keras_col: Any, tflite_col: Any) -> None:
    """The run's .keras and TFLite downloads; a first model (base + head) has them put together on request."""
    files = registry.files(run_id)
    if "keras" not in files:
        if keras_col.button(
            "Prepare downloads", icon=":material/build:", help="the whole network as .keras and TFLite"
        ):
            with common.user_errors(), st.spinner("Putting the whole network together and converting it..."):
                assemble_downloads(registry.workspace, run_id)
                st.rerun()
        return
    keras_col.download_button(
        "Download .keras",
        data=files["keras"].read_bytes,
        file_name=f"{run_id}.keras",
        on_click="ignore",
        icon=":material/download:",
    )
    tflite = files.get("tflite_dynamic") or files["tflite"]
    tflite_col.download_button(
        "Download TFLite",
        data=tflite.read_bytes,
        file_name=f"{run_id}.tflite",
        on_click="ignore",
        icon=":material/download:",
    )


common.page("pages/models.py")
st.title("Models")
cfg, store = common.settings(), common.store()
registry = Registry(cfg.workspace)
runs = registry.runs()

if not runs:
    st.info("No models yet: train one on the Train page, or import a .keras model below.")
else:
    table = pd.DataFrame(
        [
            {
                "active": "●" if r.active else "",
                "run": r.run_id,
                "state": r.state,
                "kind": r.kind,
                "backbone": r.backbone,
                "input px": r.image_size,
                "labels": ", ".join(r.labels),
                "val accuracy": r.val_accuracy,
                "usable": {True: "yes", False: "no", None: ""}[r.usable],
                "error": (r.error or "")[:80],
            }
            for r in runs
        ]
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "val accuracy": st.column_config.ProgressColumn("val accuracy", min_value=0, max_value=1, format="percent")
        },
    )

    chosen_id = st.selectbox(
        "Run",
        [r.run_id for r in runs],
        format_func=lambda rid: f"{rid} ({next(r.state for r in runs if r.run_id == rid)})",
    )
    chosen = registry.get(chosen_id)
    if chosen.error:
        st.error(chosen.error)
    if chosen.has_model:
        report.verdict(chosen)
        act, keras_col, tflite_col, delete_col = st.columns(4)
        confirmed = chosen.usable is not False or chosen.active or act.checkbox("I understand this model is not usable")
        with common.user_errors():
            if act.button(
                "Activate", type="primary", disabled=chosen.active or not confirmed, icon=":material/check_circle:"
            ):
                registry.activate(chosen.run_id, confirm_unusable=confirmed)
                st.rerun()
        downloads(registry, chosen.run_id, keras_col, tflite_col)
    else:
        delete_col = st.columns(4)[3]
    with delete_col.popover("Delete", icon=":material/delete:"):
        st.write(f"Delete run {chosen.run_id} and its files?" + (" It is the active model." if chosen.active else ""))
        if st.button("Yes, delete", type="primary"):
            with common.user_errors():
                registry.delete(chosen.run_id, force=chosen.active)
                st.rerun()
    report.learning_curves(report.run_events(cfg.workspace, chosen.run_id))
    if chosen.has_model:
        report.evaluation(registry, chosen.run_id, store)

st.divider()
with st.form("import_model", clear_on_submit=True):
    st.subheader("Import a .keras model")
    upload = st.file_uploader("Model file", type=["keras"])
    labels_text = st.text_input("Its labels, in output order, separated by commas", value=", ".join(store.labels()))
    submitted = st.form_submit_button("Import", icon=":material/upload:")
if submitted and upload is not None:
    labels = [x.strip() for x in labels_text.split(",") if x.strip()]
    with (
        common.user_errors(),
        st.spinner("Checking and converting the model (about a minute for DenseNet201)..."),
        tempfile.TemporaryDirectory() as tmp,
    ):
        path = Path(tmp) / Path(upload.name).name
        path.write_bytes(upload.getvalue())
        run_id = import_keras(registry.workspace, path, labels)
        st.success(f"Imported as run {run_id}.")
