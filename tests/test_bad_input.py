"""Bad input (issue 2 item 7, issue 5 item 5): each case shows its message and that nothing was written.

"Nothing written" is checked byte-for-byte on the whole test folder (the workspace and the inputs, so
an archive is never extracted beside itself), and on the default workspace, cache and HOME outside it.
"""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from expr_core.cli import EXIT_BAD_INPUT, EXIT_PARTIAL, main
from expr_core.data.store import DatasetStore, NewSample
from expr_core.data.transfer import ImportOptions, import_uploads
from expr_core.errors import BadInput
from tests.conftest import CLI_IMPORT


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture
def ws(tmp_path) -> Path:
    """A workspace that already holds samples and an extra label."""
    store = DatasetStore(tmp_path / "ws")
    store.add_label("neutral")
    crop = np.full((64, 64, 3), 100, np.uint8)
    store.add_samples([NewSample(label, "webcam", "s0", image=crop) for label in ("happy", "happy", "sad")])
    return tmp_path / "ws"


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


@pytest.fixture
def unchanged(tmp_path, tree_snapshot):
    """Call after the operation: asserts nothing under the test folder or in the default places changed.

    The snapshot is taken when the fixture is set up, so list it after every fixture that creates files.
    """
    before = tree_snapshot(tmp_path)

    def check() -> None:
        assert tree_snapshot(tmp_path) == before
        for var in ("EXPR_HOME", "EXPR_CACHE_DIR", "EXPR_MODELS_DIR"):
            assert not Path(os.environ[var]).exists(), var

    return check


def symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("happy/face.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "../../../etc/passwd")
    return buf.getvalue()


# case -> (file name, function making its bytes, exit status of `dataset import`, message)
def _cases(astronaut_jpeg, png_with_size, zip_bytes):
    return {
        "text renamed .jpg": (
            "notes.jpg",
            lambda: b"shopping list: eggs, milk\n" * 20,
            EXIT_PARTIAL,
            "not an image file",
        ),
        "truncated jpeg": ("cut.jpg", lambda: astronaut_jpeg[:5000], EXIT_PARTIAL, "the image is truncated or corrupt"),
        "0-byte file": ("empty.jpg", lambda: b"", EXIT_PARTIAL, "the file is empty (0 bytes)"),
        "huge image": (
            "huge.png",
            lambda: png_with_size(20_000, 20_000),
            EXIT_PARTIAL,
            "larger than the 40 megapixel limit",
        ),
        "no face": (
            "wall.jpg",
            lambda: cv2.imencode(".jpg", np.full((300, 300, 3), 128, np.uint8))[1].tobytes(),
            EXIT_PARTIAL,
            "no face found",
        ),
        "zip bomb": (
            "bomb.zip",
            lambda: zip_bytes({"happy/a.jpg": b"\0" * 10_000_000}, zipfile.ZIP_DEFLATED),
            EXIT_BAD_INPUT,
            "looks like a zip bomb",
        ),
        "zip with ../": (
            "escape.zip",
            lambda: zip_bytes({"happy/ok.jpg": astronaut_jpeg, "../../evil.jpg": astronaut_jpeg}),
            EXIT_BAD_INPUT,
            "'../../evil.jpg' points outside the archive",
        ),
        "zip absolute member": (
            "abs.zip",
            lambda: zip_bytes({"/tmp/evil.jpg": astronaut_jpeg}),
            EXIT_BAD_INPUT,
            "'/tmp/evil.jpg' points outside the archive",
        ),
        "zip symlink member": ("link.zip", lambda: symlink_zip(), EXIT_BAD_INPUT, "'happy/face.jpg' is a link"),
        "not a zip": ("broken.zip", lambda: b"PK\x03\x04" + b"\0" * 40, EXIT_BAD_INPUT, "not a readable zip archive"),
    }


CASES = [
    "text renamed .jpg",
    "truncated jpeg",
    "0-byte file",
    "huge image",
    "no face",
    "zip bomb",
    "zip with ../",
    "zip absolute member",
    "zip symlink member",
    "not a zip",
]


@pytest.fixture
def case(request, inputs, astronaut_jpeg, png_with_size, zip_bytes):
    name, make, code, message = _cases(astronaut_jpeg, png_with_size, zip_bytes)[request.param]
    (inputs / name).write_bytes(make())
    return inputs / name, code, message


# -- import through the CLI -------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, indirect=True)
def test_bad_file_import_shows_the_message_and_writes_nothing(capsys, ws, case, unchanged):
    path, code, message = case
    assert (
        main(["dataset", "import", "--workspace", str(ws), "--label", "happy", str(path), "--detector", "haar"]) == code
    )
    err = capsys.readouterr().err
    assert str(path) in err and message in err
    assert ("error: " if code == EXIT_BAD_INPUT else "skipped ") in err
    unchanged()


@pytest.mark.parametrize("case", ["zip bomb", "zip with ../", "zip symlink member", "not a zip"], indirect=True)
def test_a_bad_archive_beside_good_images_refuses_the_whole_import(capsys, ws, case, face_jpg, unchanged):
    path, _, message = case
    code = main(
        [
            *CLI_IMPORT,
            str(ws),
            "--label",
            "happy",
            str(face_jpg),
            str(path),
            "--detector",
            "haar",
        ]
    )
    assert code == EXIT_BAD_INPUT and message in capsys.readouterr().err
    unchanged()


def test_bad_images_beside_a_good_one_are_skipped_and_the_good_one_kept(capsys, ws, inputs, face_jpg, astronaut_jpeg):
    (inputs / "notes.jpg").write_text("hello")
    (inputs / "cut.jpg").write_bytes(astronaut_jpeg[:3000])
    code = main(
        [
            *CLI_IMPORT,
            str(ws),
            "--label",
            "sad",
            str(inputs / "notes.jpg"),
            str(face_jpg),
            str(inputs / "cut.jpg"),
            "--detector",
            "haar",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == EXIT_PARTIAL and '"added": {"sad": 1}' in captured.out and '"skipped": 2' in captured.out
    assert captured.err.count("skipped ") == 2
    assert DatasetStore(ws).stats() == {"happy": 2, "sad": 2, "neutral": 0}


def test_missing_path_refuses_everything(capsys, ws, face_jpg, inputs, unchanged):
    code = main(
        ["dataset", "import", "--workspace", str(ws), "--label", "happy", str(face_jpg), str(inputs / "typo.jpg")]
    )
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and f"error: {inputs / 'typo.jpg'}: no such file or folder." in err
    assert "warning" not in err  # refused before any detector was loaded
    unchanged()


def test_unknown_label_refuses_everything(capsys, ws, face_jpg, unchanged):
    code = main(["dataset", "import", "--workspace", str(ws), "--label", "angry", str(face_jpg)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "error: There is no label 'angry'; create it first (labels: happy, sad, neutral)." in err
    unchanged()


@pytest.fixture
def angry_folder(inputs) -> Path:
    (inputs / "angry").mkdir()
    (inputs / "angry" / "notes.jpg").write_text("not an image")
    (inputs / "angry" / "empty.png").write_bytes(b"")
    return inputs


def test_from_folder_whose_images_all_fail_creates_no_label(capsys, ws, inputs, angry_folder, unchanged):
    code = main(["dataset", "import", "--workspace", str(ws), "--from-folder", str(inputs), "--cropped"])
    err = capsys.readouterr().err
    assert code == EXIT_PARTIAL and "not an image file" in err and "the file is empty" in err
    unchanged()


def test_bad_inputs_in_a_subprocess_write_nothing_anywhere(
    run_cli, tmp_path, ws, inputs, tree_snapshot, astronaut_jpeg, png_with_size, zip_bytes
):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    cases = _cases(astronaut_jpeg, png_with_size, zip_bytes)
    for key in ["text renamed .jpg", "truncated jpeg", "0-byte file", "huge image", "zip with ../"]:
        name, make, _, _ = cases[key]
        (inputs / name).write_bytes(make())
    before = tree_snapshot(tmp_path)
    images = [inputs / n for n in ("notes.jpg", "cut.jpg", "empty.jpg", "huge.png")]
    result = run_cli("dataset", "import", "--workspace", ws, "--label", "happy", *images, cwd=cwd, HOME=str(home))
    assert result.returncode == EXIT_PARTIAL and result.stderr.count("skipped ") == 4
    assert "Traceback" not in result.stderr
    result = run_cli(
        "dataset", "import", "--workspace", ws, "--label", "happy", inputs / "escape.zip", cwd=cwd, HOME=str(home)
    )
    assert result.returncode == EXIT_BAD_INPUT and "points outside the archive" in result.stderr
    assert tree_snapshot(tmp_path) == before  # the workspace, the inputs, HOME and the working folder
    assert not Path(os.environ["EXPR_CACHE_DIR"]).exists() and not Path(os.environ["EXPR_HOME"]).exists()


# -- odd but valid input ----------------------------------------------------------------------------
ODD_NAMES = [
    "my face (1).jpg",
    "ünïcödé 笑顔.jpg",
    'it\'s "quoted".jpg',
    "  spaces  .jpg",
    "semi;colon&amp.JPG",
    "-starts-with-dash.jpg",
]


def test_odd_file_names_import_fine(capsys, ws, inputs, astronaut_jpeg):
    for name in ODD_NAMES:
        (inputs / name).write_bytes(astronaut_jpeg)
    code = main(
        [
            *CLI_IMPORT,
            str(ws),
            "--label",
            "neutral",
            "--detector",
            "haar",
            "--",
            *(str(inputs / n) for n in ODD_NAMES),
        ]
    )
    assert code == 0, capsys.readouterr().err
    origins = sorted(Path(s.origin).name for s in DatasetStore(ws).samples("neutral"))
    assert origins == sorted(ODD_NAMES)


def test_odd_file_names_in_a_subprocess_and_in_a_zip(run_cli, ws, inputs, astronaut_jpeg, zip_bytes):
    (inputs / "a b 'c' \"d\" ü.jpg").write_bytes(astronaut_jpeg)
    (inputs / "odd names.zip").write_bytes(zip_bytes({"x/é \"q\" 'z'.jpg": astronaut_jpeg}))
    result = run_cli(
        *CLI_IMPORT,
        ws,
        "--label",
        "sad",
        "--detector",
        "haar",
        inputs / "a b 'c' \"d\" ü.jpg",
        inputs / "odd names.zip",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert '"added": {"sad": 2}' in result.stdout


def test_nested_folders_in_a_zip_take_the_label_from_the_parent_folder(
    ws, inputs, settings, haar, astronaut_jpeg, zip_bytes
):
    data = zip_bytes(
        {
            "dataset/2024/happy/a.jpg": astronaut_jpeg,
            "dataset/2024/neutral/deep/b.jpg": astronaut_jpeg,
            "dataset/2024/neutral/c.jpg": astronaut_jpeg,
        }
    )
    store = DatasetStore(ws)
    report = import_uploads(store, [("set.zip", data)], haar, settings, ImportOptions(source="upload"))
    assert report.added == {"happy": 1, "neutral": 1, "deep": 1}
    assert store.stats() == {"happy": 3, "sad": 1, "neutral": 1, "deep": 1}


# -- the app's upload path --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case", ["zip bomb", "zip with ../", "zip absolute member", "zip symlink member", "not a zip"], indirect=True
)
def test_bad_uploaded_archives_are_refused(ws, case, settings, haar, astronaut_jpeg, unchanged):
    path, _, message = case
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_uploads(
            DatasetStore(ws),
            [("ok.jpg", astronaut_jpeg), (path.name, path.read_bytes())],
            haar,
            settings,
            ImportOptions(label="happy", source="upload"),
        )
    unchanged()


@pytest.mark.parametrize("case", ["text renamed .jpg", "truncated jpeg", "0-byte file", "huge image"], indirect=True)
def test_bad_uploaded_images_are_reported(ws, case, settings, haar, unchanged):
    path, _, message = case
    report = import_uploads(
        DatasetStore(ws),
        [(path.name, path.read_bytes())],
        haar,
        settings,
        ImportOptions(label="happy", source="upload"),
    )
    assert report.added == {} and len(report.skipped) == 1
    assert report.skipped[0][0] == path.name and message in report.skipped[0][1]
    unchanged()


# -- labels -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,message",
    [
        ("", "A label cannot be empty."),
        ("x" * 41, "at most 40 characters"),
        ("../x", "'../x' is not allowed"),
        ("/abs", "'/abs' is not allowed"),
        ("con", "'con' is a reserved name"),
        ("Happy", "There is already a label called 'Happy' ('happy' looks the same)."),
        ("bell\x07", "is not allowed"),
    ],
)
def test_bad_label_on_the_command_line(capsys, ws, name, message, unchanged):
    assert main(["dataset", "labels", "--workspace", str(ws), "--add", name]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    unchanged()


def test_unicode_label_on_the_command_line(capsys, ws):
    assert main(["dataset", "labels", "--workspace", str(ws), "--add", "笑顔"]) == 0
    assert capsys.readouterr().out.splitlines() == ["happy", "sad", "neutral", "笑顔"]


# -- detect -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["text renamed .jpg", "truncated jpeg", "0-byte file", "huge image"], indirect=True)
def test_detect_reports_bad_images_and_goes_on(capsys, case, face_jpg, unchanged):
    path, _, message = case
    code = main(["detect", str(path), str(face_jpg), "--json", "--detector", "haar"])
    bad, good = json.loads(capsys.readouterr().out)
    assert code == EXIT_PARTIAL
    assert bad["faces"] == [] and message in bad["error"] and str(path) in bad["error"]
    assert good["error"] is None and len(good["faces"]) == 1
    unchanged()


def test_export_to_a_bad_name_writes_nothing(capsys, ws, tmp_path, unchanged):
    assert main(["dataset", "export", "--workspace", str(ws), str(tmp_path / "out.tar.gz")]) == EXIT_BAD_INPUT
    assert "must end in .zip" in capsys.readouterr().err
    unchanged()
