"""The Streamlit server process must never load TensorFlow.

TensorFlow imported before streamlit-webrtc's pylibsrtp segfaults the process (OpenSSL symbol clash,
see docs/architecture.md), and it would add 600+ MB to every server. This renders every page of the
app with AppTest in a fresh interpreter and checks that neither TensorFlow nor Keras got imported.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import ast, sys
    import streamlit_webrtc.component as component
    component.get_this_session_info = lambda: None  # AppTest has no session manager (see tests/app/conftest.py)
    from streamlit.testing.v1 import AppTest

    tree = ast.parse(open("streamlit_app.py").read())
    pages = [node.args[0].value for node in ast.walk(tree)
             if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Page"
             and isinstance(node.args[0], ast.Constant)]  # page files (the login page is a function)
    assert len(pages) >= 2, pages
    app = AppTest.from_file("streamlit_app.py", default_timeout=60)
    app.run()
    for page in pages:
        app.switch_page(page)
        app.run()
        assert not app.exception, (page, [e.value for e in app.exception])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
    print("PAGES", pages)
    print("LOADED", loaded[:5])
    sys.exit(1 if loaded else 0)
    """
)


def test_rendering_every_page_never_imports_tensorflow(tmp_path):
    env = {
        "EXPR_HOME": str(tmp_path / "ws"),
        "EXPR_DOWNLOADS": "0",
        "EXPR_MODELS_DIR": str(tmp_path / "m"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PAGES" in result.stdout and "LOADED []" in result.stdout
