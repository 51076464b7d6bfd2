"""Detect: every face's expression live from the webcam, and on uploaded images and videos."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import NoReturn

import av
import cv2
import pandas as pd
import streamlit as st

from expr_core import starter
from expr_core.data.review import ReviewQueue, UncertainFaceKeeper
from expr_core.errors import UserError
from expr_core.jobs import prepare
from expr_core.jobs.folder import ACTIVE_STATES, request_cancel
from expr_core.jobs.run_cli import run_cli
from expr_core.jobs.video import VIDEO_SUFFIXES, delete_video_job, job_dir, output_paths, start_video_job, video_jobs
from expr_core.live.pipeline import EVERY_FACE, FACES_PER_FRAME, ClassifySchedule, ExpressionPipeline
from expr_core.spreadsheet import safe_cell
from expr_core.vision.images import decode_image
from pages import common
from pages.camera import camera


@st.cache_data(show_spinner="Computing heat maps (about 10 seconds)...", max_entries=32)
def explain(data: bytes, name: str, model: str) -> list[dict]:
    """Grad-CAM for every face, computed by a worker process (it needs TensorFlow; this server must not)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(data)
        cfg = common.settings()
        result = run_cli(
            [
                "explain",
                str(path),
                "--model",
                model,
                "--out",
                str(Path(tmp) / "out"),
                "--models-dir",
                str(cfg.models_dir),
                "--cache-dir",
                str(cfg.cache_dir),
                "--detector",
                cfg.detector,
                *cfg.backend_args(),
            ],
            timeout_s=300,
        )
        return [
            {**face, "crop_png": Path(face["crop"]).read_bytes(), "heat_png": Path(face["heatmap"]).read_bytes()}
            for face in result["faces"]
        ]


common.page("pages/detect.py")
st.title("Detect")
cfg = common.settings()


@st.fragment(run_every=1.0)
def wait_for_starter() -> None:
    """Reruns the page once the background job has prepared the starter model."""
    if starter.is_prepared(cfg) or prepare.active_job(cfg.workspace) is None:
        st.rerun()
    st.info("Preparing the starter model (once on this server, a few seconds)...", icon=":material/hourglass_top:")


def train_first(reason: str) -> NoReturn:
    st.info(f"{reason} Record faces for at least two labels, train a model, then come back.")
    st.page_link("pages/capture.py", label="1. Capture faces", icon=":material/photo_camera:")
    st.page_link("pages/train.py", label="2. Train a model", icon=":material/model_training:")
    st.stop()


try:
    served = common.active_model()
except UserError as exc:  # a damaged model file: say so, and serve the starter meanwhile
    st.error(f"The active model cannot be served: {exc} Activate another one on the Models page.")
    st.page_link("pages/models.py", label="Models", icon=":material/inventory_2:")
    served = None
if served is None:
    served, why_not = common.starter_model()
    if served is None and why_not is None:
        wait_for_starter()
        st.stop()
    if served is None:
        if st.button("Try preparing the starter model again"):
            prepare.start_preparing(cfg)
            st.rerun()
        train_first(f"There is no trained model yet, and no starter model: {why_not}")
classifier = served.classifier
detector, detector_warning = common.detector()
if detector_warning:
    st.warning(detector_warning)
# One container whatever the model: when a trained model replaces the starter, the elements below keep their
# places, so the running camera component is not mounted again (which would stop the stream).
with st.container():
    if served.note:
        st.warning(served.note, icon=":material/school:")
        st.page_link("pages/train.py", label="Train a model on your team", icon=":material/model_training:")
st.caption(f"Model **{served.name}** · labels: {', '.join(classifier.labels)} · input {classifier.input_size}px")


@st.fragment(run_every=2.0)
def follow_active_model(shown: str) -> None:
    """Rerun the page when another model goes live (a first model just published, its fine-tuned version, an
    activation elsewhere): the running stream is reconfigured with it in one locked step."""
    try:
        newest = common.active_model()
    except UserError:  # still the damaged model the page already reported
        return
    if (newest.ref if newest else starter.NAME) != shown:
        st.rerun()


follow_active_model(served.ref)

live_tab, images_tab, video_tab = st.tabs(["Live", "Images", "Video file"])

with live_tab:
    if "detect_pipeline" not in st.session_state:
        st.session_state.detect_pipeline = ExpressionPipeline(detector, classifier, cfg.crop_margin)
    pipeline: ExpressionPipeline = st.session_state.detect_pipeline

    def on_frame(frame: av.VideoFrame) -> av.VideoFrame:
        """Worker thread: the whole pipeline on one frame. No st.* calls here."""
        image = frame.to_ndarray(format="bgr24")
        pipeline.process(image)
        return av.VideoFrame.from_ndarray(image, format="bgr24")

    video_col, side_col = st.columns([3, 2], gap="large")
    with video_col:
        st.caption("Frames are classified in memory and never stored, unless you tick 'keep uncertain faces'.")
        camera("detect-camera", on_frame)
    with side_col:
        smoothing = st.slider(
            "Smoothing (seconds)",
            0.0,
            1.0,
            0.15,
            0.05,
            help="Averages each face's probabilities over about this long; 0 shows every frame raw.",
        )
        per_frame = st.select_slider(
            "Faces classified per frame",
            ["1", "2", "3", "all"],
            str(FACES_PER_FRAME),
            help="With several faces, they take turns, and each face is re-read at most 15 times a second: the "
            "labels look the same and the frame rate stays up. 'all' classifies every face in every frame.",
        )
        keep = st.toggle(
            "Keep uncertain faces for review",
            help="Faces the model is unsure about are saved so you can label them on the Capture page.",
        )
        threshold = st.slider("Uncertain below", 0.5, 0.99, 0.7, 0.01, disabled=not keep)
        keeper = None
        if keep:
            keeper = st.session_state.get("keeper")
            if keeper is None or keeper.threshold != threshold:
                keeper = UncertainFaceKeeper(
                    ReviewQueue(cfg.workspace), threshold, cfg.crop_margin, cfg.crop_size, common.user_name()
                )
                st.session_state.keeper = keeper
        # One locked step: the frame thread sees the old settings or the new ones, never a mix. The classifier
        # follows the active model when another one is activated.
        pipeline.configure(
            classifier,
            smoothing,
            EVERY_FACE if per_frame == "all" else ClassifySchedule(int(per_frame)),
            keeper,
        )

        @st.fragment(run_every=1.0)
        def meter() -> None:
            fps_col, latency_col = st.columns(2)
            fps_col.metric("Frame rate", f"{pipeline.stats.fps:.1f} fps")
            latency_col.metric("Processing", f"{pipeline.stats.latency_ms:.0f} ms", help="median per frame")
            if keep and st.session_state.get("keeper"):
                st.caption(f"Kept {st.session_state.keeper.kept} uncertain faces for review.")

        meter()

with images_tab:
    uploads = st.file_uploader("Images", type=["jpg", "jpeg", "png", "bmp", "webp"], accept_multiple_files=True)
    rows, shown = [], []
    for upload in uploads or []:
        try:
            image = decode_image(upload.getvalue(), upload.name)
        except UserError as exc:
            st.error(str(exc))
            continue
        readings = ExpressionPipeline(  # a still photo: every face, full size, no live frame-rate banner
            detector, classifier, cfg.crop_margin, smoothing_s=0, detect_side=None, schedule=EVERY_FACE, meter=False
        ).process(image)
        shown.append((upload, image, readings))
        rows += [
            {
                "image": safe_cell(upload.name),
                "face": i + 1,
                "box": list(r.box),
                "label": r.label,
                "confidence": round(r.confidence, 4),
                **r.probs,
            }
            for i, r in enumerate(readings)
        ]
    if rows:
        table = pd.DataFrame(rows)
        st.dataframe(table, hide_index=True)
        st.download_button(
            "Download the table (CSV)",
            table.to_csv(index=False),
            "expressions.csv",
            "text/csv",
            icon=":material/download:",
        )
    grid = st.columns(3)
    for n, (upload, image, readings) in enumerate(shown):
        with grid[n % 3]:
            st.image(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), caption=f"{upload.name}: {len(readings)} face(s)")
            if (
                readings
                and not served.is_starter
                and st.toggle("Why? Show what drove each prediction", key=f"why-{upload.name}")
            ):
                with common.user_errors():
                    for face in explain(upload.getvalue(), upload.name, served.ref):
                        st.image(
                            [face["crop_png"], face["heat_png"]], caption=["face", "heat map (red: most important)"]
                        )
                        st.write(
                            f"**{face['label']}** · " + ", ".join(f"{k} {v:.0%}" for k, v in face["probs"].items())
                        )
    if uploads and not rows:
        st.info("No faces were found in these images.")

with video_tab:
    with st.form("video_upload", clear_on_submit=True):
        clip = st.file_uploader("A video file", type=sorted(x.strip(".") for x in VIDEO_SUFFIXES))
        if st.form_submit_button("Annotate", type="primary", icon=":material/movie:") and clip is not None:
            with common.user_errors():
                st.session_state.video_job = start_video_job(
                    cfg, clip.name, clip.getvalue(), served.ref, classifier.labels
                )
    st.caption("Videos are processed in the background: you may leave the page; the result waits here.")

    # Refresh every second only while a job runs: each refresh re-registers the download buttons' deferred
    # files and revokes the old ones, so a click racing a refresh downloaded nothing ("Deferred file not found").
    busy = any(status["state"] in ACTIVE_STATES for _, status in video_jobs(cfg.workspace)[:5])

    @st.fragment(run_every=1.0 if busy else None)
    def video_jobs_view() -> None:
        listed = video_jobs(cfg.workspace)[:5]
        if busy and not any(status["state"] in ACTIVE_STATES for _, status in listed):
            st.rerun()  # all finished: show them without the refresh
        for job_id, status in listed:
            with st.container(border=True):
                show_video_job(job_id, status)

    def show_video_job(job_id: str, status: dict) -> None:
        folder = job_dir(cfg.workspace, job_id)
        started = time.strftime("%d %b %H:%M:%S", time.localtime(status.get("created") or 0))
        st.write(f"**{status.get('name', job_id)}** · {status['state']} · started {started}")  # same names differ
        if status["state"] in ACTIVE_STATES:
            total = status.get("total_frames") or 0
            done = status.get("frames", 0)
            st.progress(min(1.0, done / total) if total else 0.0, text=f"{done}/{total or '?'} frames")
            if st.button("Cancel", key=f"cancel-{job_id}", disabled=status.get("cancel_requested", False)):
                request_cancel(folder)
            return
        if status.get("error"):
            st.error(status["error"])
        if status["state"] == "done":
            video, table_path = output_paths(folder)
            if status.get("warning"):
                st.warning(status["warning"])
            st.caption(
                f"{status['frames']} frames, {status['duration_s']} s of video, processed in {status['seconds']} s; "
                f"faces in {status['frames_with_faces']} frames."
            )
            st.video(str(video))
            table = pd.read_csv(table_path)
            if table.empty:
                st.info("No faces were found in this video.")
            else:
                st.line_chart(
                    table.assign(face=table["face"].map(lambda f: f"face {f}")),
                    x="time_s",
                    y="confidence",
                    color="face",
                    height=200,
                )
                st.dataframe(table.groupby(["face", "label"]).size().rename("frames").reset_index(), hide_index=True)
            left, right = st.columns(2)
            left.download_button(
                "Annotated video (MP4)",
                data=video.read_bytes,
                file_name=f"{job_id}.mp4",
                on_click="ignore",
                key=f"mp4-{job_id}",
                icon=":material/download:",
            )
            right.download_button(
                "Expressions over time (CSV)",
                data=table_path.read_bytes,
                file_name=f"{job_id}.csv",
                on_click="ignore",
                key=f"csv-{job_id}",
                icon=":material/download:",
            )
        if st.button("Delete", key=f"delete-{job_id}", icon=":material/delete:"):
            with common.user_errors():
                delete_video_job(cfg.workspace, job_id)
                st.rerun()

    video_jobs_view()
