"""The command line: `detect` and `dataset` commands, in a subprocess and in-process through main()."""

from __future__ import annotations

import json
import zipfile

import cv2
import numpy as np
import pytest

from expr_core.cli import EXIT_BAD_INPUT, EXIT_PARTIAL, main
from expr_core.data.store import DatasetStore
from tests.conftest import CLI_IMPORT


def overlaps_astronaut(box) -> bool:
    x, y, w, h = box
    return x < 178 + 90 and x + w > 178 and y < 63 + 113 and y + h > 63 and 60 < w < 160


@pytest.fixture
def blank_jpg(tmp_path):
    path = tmp_path / "photos" / "wall.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((120, 160, 3), 200, np.uint8))
    return path


@pytest.fixture
def notes_jpg(tmp_path):
    path = tmp_path / "photos" / "notes.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not an image\n")
    return path


# -- detect -----------------------------------------------------------------------------------------
def test_detect_json_in_a_subprocess(run_cli, face_jpg, blank_jpg, notes_jpg, tmp_path):
    missing = tmp_path / "missing.jpg"
    result = run_cli(
        "detect", face_jpg, missing, blank_jpg, notes_jpg, tmp_path / "photos", "--json", "--detector", "haar"
    )
    assert result.returncode == EXIT_PARTIAL, result.stderr
    out = json.loads(result.stdout)
    assert [entry["image"] for entry in out] == [
        str(face_jpg),
        str(missing),
        str(blank_jpg),
        str(notes_jpg),
        str(tmp_path / "photos"),
    ]
    face, gone, blank, notes, folder = out
    assert face["error"] is None and len(face["faces"]) == 1
    assert overlaps_astronaut(face["faces"][0]["box"]) and face["faces"][0]["score"] == 1.0
    assert gone["error"] == f"{missing}: no such file or folder." and gone["faces"] == []
    assert blank == {"image": str(blank_jpg), "faces": [], "error": None, "detect_ms": blank["detect_ms"]}
    assert "not an image file" in notes["error"] and notes["faces"] == []
    assert "a folder, not an image file" in folder["error"]
    assert "haar: 2 image(s)" in result.stderr and "ms per image" in result.stderr
    assert "Traceback" not in result.stderr


def test_detect_with_yunet(capsys, face_jpg, shared_models):
    assert main(["detect", str(face_jpg), "--json", "--models-dir", str(shared_models)]) == 0
    captured = capsys.readouterr()
    [entry] = json.loads(captured.out)
    [face] = entry["faces"]
    assert overlaps_astronaut(face["box"]) and 0.6 < face["score"] < 1
    assert set(face) == {"box", "score"} and all(isinstance(v, int) for v in face["box"])
    assert "warning" not in captured.err and "yunet: 1 image(s)" in captured.err


def test_detect_falls_back_to_haar_with_a_warning(capsys, face_jpg):
    assert main(["detect", str(face_jpg), "--json"]) == 0  # env: yunet, empty models folder, no downloads
    captured = capsys.readouterr()
    assert "warning: Using the Haar fallback detector" in captured.err and "face_detection_yunet" in captured.err
    assert len(json.loads(captured.out)[0]["faces"]) == 1


def test_detect_plain_text_output(capsys, face_jpg, notes_jpg):
    assert main(["detect", str(face_jpg), str(notes_jpg), "--detector", "haar"]) == EXIT_PARTIAL
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{face_jpg}: 1 face(s)"
    assert lines[1].startswith(f"{notes_jpg}: {notes_jpg}: not an image file")


def test_detect_needs_an_image():
    with pytest.raises(SystemExit) as info:
        main(["detect"])
    assert info.value.code == 2


# -- dataset ----------------------------------------------------------------------------------------
def test_dataset_import_stats_export_in_a_subprocess(run_cli, face_jpg, tmp_path):
    ws = tmp_path / "ws"
    result = run_cli(
        "dataset", "import", "--workspace", ws, "--label", "happy", face_jpg, "--json", "--detector", "haar"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["added"] == {"happy": 1} and summary["skipped"] == 0 and summary["session"]
    [sample] = DatasetStore(ws).samples()
    assert sample.captured_by == "cli" and sample.session == summary["session"] and sample.source == "import"

    result = run_cli("dataset", "stats", "--workspace", ws, "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == {"labels": {"happy": 1, "sad": 0}, "total": 1}

    out = tmp_path / "export.zip"
    result = run_cli("dataset", "export", "--workspace", ws, out)
    assert result.returncode == 0 and "exported 1 sample(s)" in result.stderr
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["happy/" + sample.id + ".jpg", "manifest.csv"]


def test_stats_plain_and_on_a_missing_workspace(capsys, tmp_path):
    assert main(["dataset", "stats", "--workspace", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out.splitlines() == ["happy: 0", "sad: 0"]
    assert main(["dataset", "stats", "--workspace", str(tmp_path / "none"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"labels": {"happy": 0, "sad": 0}, "total": 0}
    assert not (tmp_path / "none").exists()


def test_import_from_folder_cropped(capsys, tmp_path, astronaut_bgr):
    root = tmp_path / "fer"
    for label, n in {"happy": 2, "angry": 3}.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / label / f"{i}.png"), cv2.resize(astronaut_bgr, (48, 48)))
    ws = tmp_path / "ws"
    assert main(["dataset", "import", "--workspace", str(ws), "--from-folder", str(root), "--cropped", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == {"happy": 2, "angry": 3}
    assert main(["dataset", "stats", "--workspace", str(ws), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"labels": {"happy": 2, "sad": 0, "angry": 3}, "total": 5}


def test_import_reports_skipped_images_on_stderr(capsys, tmp_path, face_jpg, blank_jpg):
    ws = tmp_path / "ws"
    code = main(
        [
            *CLI_IMPORT,
            str(ws),
            "--label",
            "sad",
            str(face_jpg.parent),
            "--detector",
            "haar",
            "--json",
        ]
    )
    assert code == EXIT_PARTIAL  # some inputs were skipped; the rest were imported
    captured = capsys.readouterr()
    assert json.loads(captured.out)["added"] == {"sad": 1} and json.loads(captured.out)["skipped"] == 1
    assert f"skipped {blank_jpg}: no face found." in captured.err


def test_import_all_faces_flag(capsys, tmp_path, astronaut_bgr):
    path = tmp_path / "two.jpg"
    cv2.imwrite(str(path), np.hstack([astronaut_bgr, astronaut_bgr]))
    args = [
        *CLI_IMPORT,
        str(tmp_path / "ws"),
        "--label",
        "happy",
        str(path),
        "--detector",
        "haar",
    ]
    assert main([*args, "--all-faces"]) == 0
    assert "added 2 sample(s)" in capsys.readouterr().out


def test_export_then_import_into_a_new_workspace(capsys, tmp_path, face_jpg, astronaut_bgr):
    ws = tmp_path / "ws"
    main(["dataset", "labels", "--workspace", str(ws), "--add", "neutral"])
    main(
        [
            *CLI_IMPORT,
            str(ws),
            "--label",
            "happy",
            str(face_jpg),
            str(face_jpg),
            "--detector",
            "haar",
        ]
    )
    main(["dataset", "import", "--workspace", str(ws), "--label", "neutral", str(face_jpg), "--detector", "haar"])
    out = tmp_path / "all.zip"
    assert main(["dataset", "export", "--workspace", str(ws), str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "unzipped")
    ws2 = tmp_path / "ws2"
    assert (
        main(
            [
                *CLI_IMPORT,
                str(ws2),
                "--from-folder",
                str(tmp_path / "unzipped"),
                "--detector",
                "haar",
            ]
        )
        == 0
    )  # crops still contain a detectable face
    capsys.readouterr()
    main(["dataset", "stats", "--workspace", str(ws), "--json"])
    main(["dataset", "stats", "--workspace", str(ws2), "--json"])
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first == {"labels": {"happy": 2, "sad": 0, "neutral": 1}, "total": 3}
    assert second == {"labels": {"happy": 2, "sad": 0, "neutral": 1}, "total": 3}


def test_labels_command(capsys, tmp_path):
    ws = ["--workspace", str(tmp_path / "ws")]
    assert main(["dataset", "labels", *ws, "--add", "neutral"]) == 0
    assert main(["dataset", "labels", *ws, "--rename", "neutral", "calm"]) == 0
    assert main(["dataset", "labels", *ws, "--delete", "sad"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["happy", "calm"]


def test_labels_delete_with_samples_needs_the_flag(capsys, tmp_path, face_jpg):
    ws = ["--workspace", str(tmp_path / "ws")]
    main(["dataset", "import", *ws, "--label", "sad", str(face_jpg), "--detector", "haar"])
    assert main(["dataset", "labels", *ws, "--delete", "sad"]) == EXIT_BAD_INPUT
    assert "error: Label 'sad' still has 1 samples" in capsys.readouterr().err
    assert main(["dataset", "labels", *ws, "--delete", "sad", "--with-samples"]) == 0
    assert DatasetStore(tmp_path / "ws").stats() == {"happy": 0}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["dataset", "import", "x.jpg"], "Give either --label L with paths, or --from-folder DIR"),
        (["dataset", "import", "--label", "happy", "--from-folder", "d"], "Give either --label L"),
        (["dataset", "import", "--label", "happy"], "Name at least one image"),
        (["dataset", "export", "out.tar"], "the export file name must end in .zip"),
        (["dataset", "labels", "--add", "../x"], "'../x' is not allowed"),
        (["dataset", "labels", "--rename", "nope", "x"], "There is no label 'nope'"),
    ],
)
def test_usage_errors_exit_2_with_a_message_and_write_nothing(capsys, tmp_path, argv, message):
    ws = tmp_path / "ws"
    code = main([*argv[:2], "--workspace", str(ws), *argv[2:]])
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    assert captured.err.startswith("error: ") and message in captured.err
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_bad_input_in_a_subprocess_exits_2_without_traceback(run_cli, tmp_path):
    result = run_cli("dataset", "import", "--workspace", tmp_path / "ws", "--label", "happy", tmp_path / "nope.jpg")
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stderr == f"error: {tmp_path / 'nope.jpg'}: no such file or folder.\n"
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_unknown_subcommand_is_a_usage_error(run_cli):
    result = run_cli("dataset", "frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr
