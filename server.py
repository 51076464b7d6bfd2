"""Facial Expression Studio's web server: ``streamlit run server.py``.

The app itself is ``streamlit_app.py``; this file wraps it in ``st.App`` only to put one middleware in front
of Streamlit's routes (``pages.upload_gate``: no uploads before the login).
"""

import streamlit as st
from starlette.middleware import Middleware

from pages.upload_gate import UploadGate

app = st.App("streamlit_app.py", middleware=[Middleware(UploadGate)])
