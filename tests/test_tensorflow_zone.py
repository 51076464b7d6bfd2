"""The TensorFlow zone, checked statically: only ``expr_core/worker/`` may import TensorFlow or Keras.

TensorFlow loaded before streamlit-webrtc's pylibsrtp segfaults the Streamlit server (OpenSSL symbol clash)
and would add 600+ MB to it. ``tests/test_no_tensorflow_in_server.py`` proves it at run time for what
rendering the pages imports; this test reads every import statement, also those inside functions that a
page only reaches on some button press, and walks the import graph from the server's entry points.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "tf_keras")
ZONE = "expr_core.worker"
# The CLI is each worker process's entry point: it alone may reach into the zone (lazily, per command).
# Worker entry points that import the zone only when they get there: the CLI, and a training run, which reaches
# TensorFlow only after its first model is out (phase 2) or for a base never prepared before.
DISPATCHERS = {"expr_core.cli", "expr_core.__main__", "expr_core.training"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module an import statement in the file names, at any depth (functions, branches, try)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import; the project uses absolute imports"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def project_modules() -> dict[str, Path]:
    files = [
        ROOT / "server.py",
        ROOT / "streamlit_app.py",
        *(ROOT / "expr_core").rglob("*.py"),
        *(ROOT / "pages").glob("*.py"),
    ]
    return {module_name(path): path for path in files}


def in_zone(name: str) -> bool:
    return name == ZONE or name.startswith(ZONE + ".")


def is_heavy(name: str) -> bool:
    return name.split(".")[0] in HEAVY


def test_nothing_outside_the_zone_imports_tensorflow_or_keras():
    offenders = {
        name: sorted(filter(is_heavy, imports_of(path)))
        for name, path in project_modules().items()
        if not in_zone(name)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_nothing_outside_the_zone_but_the_cli_imports_the_zone():
    offenders = {
        name: sorted(filter(in_zone, imports_of(path)))
        for name, path in project_modules().items()
        if not in_zone(name) and name not in DISPATCHERS
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_server_never_reaches_the_zone_or_the_cli():
    modules = project_modules()
    roots = ["server", "streamlit_app", *(name for name in modules if name.startswith("pages."))]
    reached, todo, via = set(), list(roots), {}
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for imported in imports_of(modules[name]):
            if imported in modules and imported not in reached:
                via.setdefault(imported, name)
                todo.append(imported)
    forbidden = sorted(n for n in reached if in_zone(n) or n in DISPATCHERS or n == "expr_core.jobs.ray_backend")
    assert forbidden == [], {n: via.get(n) for n in forbidden}
    ray_users = sorted(n for n in reached if any(i.split(".")[0] == "ray" for i in imports_of(modules[n])))
    assert ray_users == [], "the server must not import Ray: only job supervisors (the CLI) do"
    assert "expr_core.jobs.runs" in reached and "expr_core.serving" in reached  # the walk does follow imports


def test_the_check_would_catch_a_lazy_import(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def later():\n    import keras.ops\n    from expr_core.worker import model\n")
    found = imports_of(sneaky)
    assert any(is_heavy(n) for n in found) and any(in_zone(n) for n in found)
