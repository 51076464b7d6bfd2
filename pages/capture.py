"""Capture: record labelled face crops from the webcam, review them, upload images, manage labels."""

from __future__ import annotations

import av
import streamlit as st

from expr_core.data.review import ReviewQueue
from expr_core.data.store import MAX_LABEL_LEN, MAX_PERSON_LEN
from expr_core.data.transfer import ImportOptions, export_bytes, import_uploads
from expr_core.jobs import runs
from expr_core.live.capture import INTERVAL_RANGE_S, MAX_BURST, BurstRequest, Recorder, annotate_capture_frame
from expr_core.registry import Registry
from expr_core.train_config import TrainConfig
from pages import common
from pages.camera import camera

GALLERY_PAGE = 48

common.page("pages/capture.py")
st.title("Capture")
cfg, store = common.settings(), common.store()
detector, detector_warning = common.detector()
if detector_warning:
    st.warning(detector_warning)

common.prepare_base_in_background()  # a team that records will train: have the base ready by then
if "recorder" not in st.session_state:
    st.session_state.recorder = Recorder(common.sample_writer(), cfg.crop_margin, cfg.crop_size)
recorder: Recorder = st.session_state.recorder


def on_frame(frame: av.VideoFrame) -> av.VideoFrame:
    """Worker thread: detect, record if a burst is due, draw. No st.* calls here."""
    image = frame.to_ndarray(format="bgr24")
    annotate_capture_frame(image, detector.detect(image), recorder)
    return av.VideoFrame.from_ndarray(image, format="bgr24")


st.caption(
    f"Video is processed on this server and never stored. Only the face crops you record are saved, in "
    f"`{store.root}`, with your name, the time and the label. Delete them any time below."
)
left, right = st.columns([3, 2], gap="large")
with left:
    camera("capture-camera", on_frame)

with right:
    labels = store.labels()
    label = st.segmented_control("Label", labels, default=labels[0] if labels else None, key="capture_label")
    largest = st.toggle("Largest face only", value=True, help="Off: every face in view is saved.")
    with st.expander("Burst settings"):
        count = st.number_input("Crops per burst", 1, MAX_BURST, BurstRequest.count)
        interval = st.number_input("Seconds between crops", *INTERVAL_RANGE_S, BurstRequest.interval_s, step=0.05)
        countdown = st.number_input("Countdown (s)", 0.0, 10.0, 3.0, step=1.0)
    record_col, snap_col, stop_col = st.columns(3)
    with common.user_errors():
        if record_col.button("Record", type="primary", icon=":material/fiber_manual_record:", width="stretch"):
            request = BurstRequest(
                label or "", int(count), float(interval), float(countdown), largest, common.user_name()
            )
            request.validate(labels)
            recorder.start(request)
        if snap_col.button("Snapshot", icon=":material/photo_camera:", width="stretch"):
            request = BurstRequest(label or "", 1, BurstRequest.interval_s, 0.0, largest, common.user_name())
            request.validate(labels)
            recorder.start(request)
    if stop_col.button("Cancel", icon=":material/stop:", width="stretch", help="Stop the burst (the camera stays on)"):
        recorder.stop()
    st.caption("The number on a face's box is how sure the detector is that it is a face.")

    shown_saved = sum(recorder.status().saved.values())  # what the gallery below shows

    @st.fragment(run_every=0.5)
    def live_status() -> None:
        """Refreshes twice a second without rerunning the page (the video keeps playing); after a burst it
        reruns the page once so the gallery shows the new crops."""
        status = recorder.status()
        if status.phase == "idle" and sum(status.saved.values()) != shown_saved:
            st.rerun()
        if status.phase == "countdown":
            st.info(f"Recording **{status.label}** in {status.countdown_left:.0f} s... look at the camera.")
        elif status.phase == "recording":
            st.progress(
                status.taken / max(1, status.target), text=f"Recording {status.label}: {status.taken}/{status.target}"
            )
            if status.no_face_frames:
                st.caption(f"{status.no_face_frames} frames had no face and were skipped.")
        if status.error:
            st.error(status.error)
        counts = store.stats()
        cols = st.columns(max(1, len(counts)))
        for col, (name, n) in zip(cols, counts.items(), strict=False):
            col.metric(
                name, n, delta=status.saved.get(name) or None, help="samples in the dataset (delta: saved by you now)"
            )

    live_status()

review = ReviewQueue(cfg.workspace)
pending = review.items()
gallery_tab, review_tab, upload_tab, labels_tab = st.tabs(
    ["Gallery", f"Review ({len(pending)})", "Upload images", "Labels"]
)

with gallery_tab:
    labels = store.labels()
    shown = st.segmented_control("Show", labels, default=labels[0] if labels else None, key="gallery_label")
    samples = list(reversed(store.samples(shown))) if shown else []
    limit = st.session_state.get("gallery_limit", GALLERY_PAGE)
    st.caption(f"{len(samples)} samples; newest first. Tick bad ones and delete them.")
    selected = []
    grid = st.columns(8)
    for i, sample in enumerate(samples[:limit]):
        with grid[i % 8]:
            st.image(str(store.image_path(sample)), width="stretch", caption=sample.who or "(no person)")
            if st.checkbox("select", key=f"sel-{sample.id}", label_visibility="collapsed"):
                selected.append(sample.id)
    if len(samples) > limit and st.button("Show more"):
        st.session_state.gallery_limit = limit + GALLERY_PAGE
        st.rerun()
    delete_col, person_col, set_col = st.columns([2, 2, 1], vertical_alignment="bottom")
    if delete_col.button(f"Delete {len(selected)} selected", disabled=not selected, icon=":material/delete:"):
        removed = store.delete_samples(selected)
        st.toast(f"Deleted {removed} samples.")
        st.rerun()
    # Validation keeps people apart (a model must read a face it never saw): say whose face a sample is when
    # it was recorded without a name, or under someone else's.
    person = person_col.text_input(
        "Person in the selected samples", max_chars=MAX_PERSON_LEN, help="Blank: use the name they were recorded by."
    )
    if set_col.button("Set person", disabled=not selected, icon=":material/person:"):
        with common.user_errors():
            changed = store.set_person(selected, person)
            st.toast(f"Set the person of {changed} samples.")
            st.rerun()

with review_tab:
    st.caption(
        "Faces the model was unsure about on the Detect page (only kept when 'keep uncertain faces' is on). "
        "Tick some, then give them a label or discard them."
    )
    picked = []
    grid = st.columns(8)
    for i, item in enumerate(pending[:GALLERY_PAGE]):
        with grid[i % 8]:
            st.image(
                str(review.image_path(item.id)), caption=f"{item.predicted}? {item.confidence:.0%}", width="stretch"
            )
            if st.checkbox("pick", key=f"rev-{item.id}", label_visibility="collapsed"):
                picked.append(item.id)
    if pending:
        label_col, add_col, discard_col = st.columns([2, 1, 1])
        target = label_col.selectbox("Label for the picked faces", store.labels(), key="review_label")
        if add_col.button(f"Add {len(picked)} to dataset", disabled=not picked, type="primary"):
            with common.user_errors():
                added = review.accept(picked, target, store, common.user_name())
                st.toast(f"Added {added} faces to {target!r}.")
                st.rerun()
        if discard_col.button(f"Discard {len(picked)}", disabled=not picked):
            review.discard(picked)
            st.rerun()
    else:
        st.info("Nothing to review.")
    last = Registry(cfg.workspace).last_training_config()
    if last and st.button(
        "Retrain",
        icon=":material/model_training:",
        help="Train again with the last run's settings: the first model is ready in seconds; compare it on Models.",
    ):
        with common.user_errors():
            runs.start_training(cfg, TrainConfig.from_dict(last))
            st.switch_page("pages/train.py")

with upload_tab:
    with st.form("upload", clear_on_submit=True):
        files = st.file_uploader(
            "Images or zip files", type=["jpg", "jpeg", "png", "bmp", "webp", "zip"], accept_multiple_files=True
        )
        up_label = st.selectbox("Label", store.labels())
        cropped = st.checkbox("Images are already face crops (do not detect faces)")
        all_faces = st.checkbox("Keep every face in a photo (not only the largest)")
        submitted = st.form_submit_button("Import", type="primary")
    if submitted and files:
        with common.user_errors(), st.spinner("Finding faces..."):
            options = ImportOptions(
                label=up_label,
                cropped=cropped,
                largest_only=not all_faces,
                source="upload",
                captured_by=common.user_name(),
            )
            report = import_uploads(store, [(f.name, f.getvalue()) for f in files], detector, cfg, options)
            st.success(f"Added {report.total_added} samples: {report.added or 'none'}.")
            for name, reason in report.skipped:
                st.warning(f"Skipped {name}: {reason}")

with labels_tab:
    st.download_button(
        "Export the dataset (zip)",
        data=lambda: export_bytes(store),
        file_name="expressions-dataset.zip",
        mime="application/zip",
        icon=":material/download:",
        on_click="ignore",
    )
    add_col, rename_col, delete_col = st.columns(3)
    with add_col, st.form("add_label", clear_on_submit=True):
        new = st.text_input("New label", max_chars=MAX_LABEL_LEN)
        if st.form_submit_button("Add label"):
            with common.user_errors():
                st.toast(f"Added label {store.add_label(new)!r}.")
    with rename_col, st.form("rename_label"):
        old = st.selectbox("Label", store.labels(), key="rename_from")
        to = st.text_input("New name", max_chars=MAX_LABEL_LEN)
        if st.form_submit_button("Rename"):
            with common.user_errors():
                st.toast(f"Renamed to {store.rename_label(old, to)!r}.")
    with delete_col, st.form("delete_label"):
        doomed = st.selectbox("Label", store.labels(), key="delete_label_name")
        with_samples = st.checkbox("Also delete its samples (cannot be undone)")
        if st.form_submit_button("Delete label"):
            with common.user_errors():
                removed = store.delete_label(doomed, delete_samples=with_samples)
                st.toast(f"Deleted label {doomed!r} and {removed} samples.")
