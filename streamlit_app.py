"""Facial Expression Studio: entry point. Declares the pages and shared sidebar; pages do the rest.

Run with ``streamlit run streamlit_app.py``. This process never imports TensorFlow (see
docs/architecture.md); training and model conversion run in worker processes.
"""

from pathlib import Path

import streamlit as st

from pages import common

# A local file: a ":material/...:" page icon makes every browser fetch it from fonts.gstatic.com.
ICON = Path(__file__).parent / "assets" / "favicon.png"
st.set_page_config(page_title="Facial Expression Studio", page_icon=str(ICON), layout="wide")
allowed = common.has_access()

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/capture.py", title="Capture", icon=":material/photo_camera:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("pages/detect.py", title="Detect", icon=":material/mood:"),
]

if not allowed:
    # The login is a page of its own, so navigation runs even before it: until st.navigation has run once,
    # Streamlit lists every file of pages/ (helper modules included) in a fresh server's sidebar.
    login = st.navigation([st.Page(common.login, title="Log in", url_path="login")], position="hidden")
    common.mark_navigation_ready()
    login.run()  # the login form; it stops the script
page = st.navigation(PAGES)
common.mark_navigation_ready()
common.follow_deep_link()
with st.sidebar:
    if common.logged_in():
        st.caption(f"Signed in as **{common.user_name()}**; saved with the samples you record.")
        st.button("Log out", on_click=st.logout)
    else:
        st.text_input("Your name", key="user_name", help="Saved with the samples you record.")
# Remember which page the previous full run showed: the camera pages use it to tell a rerun of the
# same page from a return after navigating away (see pages/camera.py).
st.session_state["previous_page"] = st.session_state.get("current_page")
st.session_state["current_page"] = page.url_path
page.run()
