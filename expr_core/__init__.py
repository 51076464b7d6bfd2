"""Facial Expression Studio core library: everything except the user interface.

Nothing in this package imports Streamlit. Nothing imported by the Streamlit server process imports
TensorFlow either (see docs/architecture.md): TensorFlow is loaded only by the modules that build and
train models, which run in their own processes.
"""
