"""Home: what the app does, the three steps, and where this workspace stands."""

import streamlit as st

from expr_core.erase import erase_workspace
from expr_core.registry import Registry
from pages import common

common.page("pages/home.py")
st.title("Facial Expression Studio")
st.write(
    "Teach a deep network to read your team's facial expressions. Record labelled face crops from your "
    "webcam, fine-tune DenseNet201 on them, then watch the network read expressions live. Everything runs "
    "on this server: no images leave it."
)

store = common.store()
counts = store.stats()
total = sum(counts.values())

step1, step2, step3 = st.columns(3)
with step1, st.container(border=True):
    st.subheader("1. Capture")
    st.write("Pick a label (happy, sad, or your own), press **Record**, and make that face for a few seconds.")
    st.metric("Samples", total, help="face crops in the dataset")
    st.caption(" · ".join(f"{label}: {n}" for label, n in counts.items()) or "no labels yet")
    st.page_link("pages/capture.py", label="Open Capture", icon=":material/photo_camera:")
with step2, st.container(border=True):
    st.subheader("2. Train")
    st.write("Fine-tune DenseNet201 in two phases (head first, then the whole network) and read the report.")
    ready = sum(1 for n in counts.values() if n >= 10) >= 2
    st.caption("Ready to train." if ready else "Record at least 10 crops for two labels first (30+ each is better).")
    st.page_link("pages/train.py", label="Open Train", icon=":material/model_training:")
with step3, st.container(border=True):
    st.subheader("3. Detect")
    st.write("Point the camera at faces: every face gets its expression and confidence, live.")
    registry = Registry(common.settings().workspace)
    active = registry.active_id()  # only the name here: the model itself is loaded by the Detect page
    st.caption(f"Active model: {active} ({', '.join(registry.labels(active))})" if active else "No trained model yet.")
    st.page_link("pages/detect.py", label="Open Detect", icon=":material/mood:")

with st.expander("Privacy and your data"):
    st.write(
        f"Camera video is processed in memory on this server and never stored. Stored are: the face crops you "
        f"record or upload (with label, time and the name in the sidebar), faces you explicitly keep for "
        f"review, and trained models, all under `{common.settings().workspace}` on this server. Nothing is "
        "sent anywhere else."
    )
    with st.form("delete_everything"):
        confirm = st.text_input("Type DELETE to remove every sample, label, review item and model of this workspace")
        if st.form_submit_button("Delete all data", type="primary"):
            if confirm.strip() == "DELETE":
                with common.user_errors():
                    erased = erase_workspace(common.store(), common.settings().workspace)
                    st.success(
                        f"Deleted {erased.samples} samples, the labels, {erased.review_items} review items, "
                        f"{erased.runs} runs with their models and {erased.videos} video jobs."
                    )
            else:
                st.error("Nothing deleted: type DELETE to confirm.")
