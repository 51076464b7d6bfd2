"""Import (single images, class folders, zips, uploads) and export of the dataset, through the library API."""

from __future__ import annotations

import csv
import io
import unicodedata
import zipfile

import cv2
import numpy as np
import pytest

from expr_core.data.store import DatasetStore, NewSample
from expr_core.data.transfer import ImportOptions, export_zip, import_paths, import_uploads
from expr_core.errors import BadInput, DatasetError
from expr_core.spreadsheet import safe_cell


def _new(label: str) -> NewSample:
    return NewSample(image=np.full((30, 30, 3), 100, np.uint8), label=label, source="webcam", session="s1")


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


@pytest.fixture
def blank_jpeg() -> bytes:
    return jpeg(np.full((200, 200, 3), 90, np.uint8))


@pytest.fixture
def fer_folder(tmp_path, astronaut_bgr):
    """FER2013's layout: one folder per class, 48x48 grayscale face crops."""
    face = cv2.cvtColor(cv2.resize(astronaut_bgr[50:190, 155:295], (48, 48)), cv2.COLOR_BGR2GRAY)
    root = tmp_path / "fer" / "train"
    for label, count in {"happy": 3, "sad": 2, "neutral": 4}.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(root / label / f"{i:05d}.jpg"), np.roll(face, i, axis=1))
    return root


def test_import_single_image_detects_and_crops(store, settings, haar, face_jpg):
    report = import_paths(store, [face_jpg], haar, settings, ImportOptions(label="happy", captured_by="cli"))
    assert report.added == {"happy": 1} and report.skipped == []
    [sample] = store.samples()
    assert sample.source == "import" and sample.origin == str(face_jpg) and sample.captured_by == "cli"
    assert sample.session == report.session and sample.score == 1.0
    crop = store.load_image(sample)
    assert crop.shape == (settings.crop_size, settings.crop_size, 3)
    assert len(haar.detect(crop)) == 1  # the crop is of the face


def test_import_yunet_records_its_score(store, yunet_settings, face_jpg):
    from expr_core.vision.faces import make_detector

    report = import_paths(
        store, [face_jpg], make_detector("yunet", yunet_settings), yunet_settings, ImportOptions(label="sad")
    )
    assert report.added == {"sad": 1}
    assert 0.6 < store.samples()[0].score < 1.0


def test_import_cropped_keeps_the_image(store, settings, astronaut_bgr, tmp_path):
    path = tmp_path / "crop.png"
    cv2.imwrite(str(path), astronaut_bgr[:100, :80])
    report = import_paths(store, [path], None, settings, ImportOptions(label="sad", cropped=True))
    assert report.added == {"sad": 1}
    [sample] = store.samples()
    assert sample.score is None
    assert np.abs(store.load_image(sample).astype(int) - astronaut_bgr[:100, :80]).mean() < 4


def test_import_fer_layout_creates_labels(store, settings, fer_folder):
    report = import_paths(store, [fer_folder], None, settings, ImportOptions(cropped=True))
    assert report.added == {"happy": 3, "sad": 2, "neutral": 4} and report.skipped == []
    assert store.labels() == ["happy", "sad", "neutral"]
    assert store.stats() == {"happy": 3, "sad": 2, "neutral": 4}
    assert store.load_image(store.samples("neutral")[0]).shape == (48, 48, 3)


def test_import_folder_with_faces_skips_and_reports_images_without_one(
    store, settings, haar, tmp_path, astronaut_jpeg, blank_jpeg
):
    root = tmp_path / "photos"
    for rel, data in {
        "happy/a.jpg": astronaut_jpeg,
        "happy/wall.jpg": blank_jpeg,
        "sad/b.jpg": astronaut_jpeg,
        "loose.jpg": astronaut_jpeg,
        "happy/broken.jpg": b"nope",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    report = import_paths(store, [root], haar, settings, ImportOptions())
    assert report.added == {"happy": 1, "sad": 1}
    skipped = {name.removeprefix(str(root) + "/"): reason for name, reason in report.skipped}
    assert skipped == {
        "happy/broken.jpg": "not an image file this app can read (JPEG, PNG, BMP, WebP, TIFF, GIF).",
        "happy/wall.jpg": "no face found.",
        "loose.jpg": "not inside a label folder",
    }


def test_import_all_faces(store, settings, haar, tmp_path, astronaut_bgr):
    path = tmp_path / "two.jpg"
    cv2.imwrite(str(path), np.hstack([astronaut_bgr, astronaut_bgr]))
    assert import_paths(store, [path], haar, settings, ImportOptions(label="happy")).added == {"happy": 1}
    report = import_paths(store, [path], haar, settings, ImportOptions(label="happy", largest_only=False))
    assert report.added == {"happy": 2}
    assert {s.origin for s in store.samples()} == {str(path)}


def test_import_zip_with_nested_folders(store, settings, haar, tmp_path, astronaut_jpeg, zip_bytes):
    archive = tmp_path / "faces.zip"
    archive.write_bytes(
        zip_bytes(
            {
                "export/happy/a.jpg": astronaut_jpeg,
                "export/sad/x/b.jpg": astronaut_jpeg,
                "export/README.txt": b"hi",
                "__MACOSX/._a.jpg": b"junk",
            }
        )
    )
    report = import_paths(store, [archive], haar, settings, ImportOptions())
    assert report.added == {"happy": 1, "x": 1}  # the label is the image's parent folder
    assert store.samples("happy")[0].origin == f"{archive}/export/happy/a.jpg"


def test_import_zip_with_a_label(store, settings, haar, tmp_path, astronaut_jpeg, zip_bytes):
    archive = tmp_path / "faces.zip"
    archive.write_bytes(zip_bytes({"a.jpg": astronaut_jpeg, "deep/b.jpg": astronaut_jpeg}))
    assert import_paths(store, [archive], haar, settings, ImportOptions(label="sad")).added == {"sad": 2}


def test_folder_names_match_labels_in_any_case_and_normalisation(store, settings, tmp_path, astronaut_jpeg):
    store.add_label("fröhlich")
    root = tmp_path / "set"
    for folder in ["Happy", unicodedata.normalize("NFD", "Fröhlich"), "SAD "]:
        (root / folder).mkdir(parents=True)
        (root / folder / "a.jpg").write_bytes(astronaut_jpeg)
    report = import_paths(store, [root], None, settings, ImportOptions(cropped=True))
    assert report.skipped == []
    assert store.labels() == ["happy", "sad", "fröhlich"]
    assert store.stats() == {"happy": 1, "sad": 1, "fröhlich": 1}


def test_new_nfd_folder_label_is_created_in_nfc(store, settings, tmp_path, astronaut_jpeg):
    folder = tmp_path / "set" / unicodedata.normalize("NFD", "überrascht")
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(astronaut_jpeg)
    assert import_paths(store, [folder.parent], None, settings, ImportOptions(cropped=True)).added == {"überrascht": 1}
    assert store.labels()[-1] == unicodedata.normalize("NFC", "überrascht")


def test_unusable_folder_names_are_skipped_and_reported(store, settings, tmp_path, astronaut_jpeg):
    root = tmp_path / "set"
    for folder in ["happy", "images", "con", "-x"]:
        (root / folder).mkdir(parents=True)
        (root / folder / "a.jpg").write_bytes(astronaut_jpeg)
    report = import_paths(store, [root], None, settings, ImportOptions(cropped=True))
    assert report.added == {"happy": 1}
    assert sorted(reason for _, reason in report.skipped) == [
        "folder '-x' is not a usable label",
        "folder 'con' is not a usable label",
        "folder 'images' is not a usable label",
    ]
    assert store.labels() == ["happy", "sad"]


def test_folder_whose_images_all_fail_creates_no_label(store, settings, haar, tmp_path, blank_jpeg, tree_snapshot):
    store.add_samples([])  # a workspace that exists already
    store.add_label("neutral")
    before = tree_snapshot(store.root)
    root = tmp_path / "set"
    (root / "angry").mkdir(parents=True)
    (root / "angry" / "wall.jpg").write_bytes(blank_jpeg)
    (root / "angry" / "text.jpg").write_text("not an image")
    report = import_paths(store, [root], haar, settings, ImportOptions())
    assert report.added == {} and len(report.skipped) == 2
    assert tree_snapshot(store.root) == before


def test_subjects_from_labels_csv(store, settings, tmp_path, astronaut_jpeg):
    root = tmp_path / "lfw"
    (root / "happy").mkdir(parents=True)
    for name in ["a.jpg", "b.jpg"]:
        (root / "happy" / name).write_bytes(astronaut_jpeg)
    (root / "labels.csv").write_text("path,label,subject\nhappy/a.jpg,happy,Eileen_Collins\n")
    import_paths(store, [root], None, settings, ImportOptions(cropped=True))
    subjects = {s.origin.rsplit("/", 1)[1]: s.subject for s in store.samples()}
    assert subjects == {"a.jpg": "Eileen_Collins", "b.jpg": None}


def test_import_unknown_label_or_missing_path_writes_nothing(store, settings, haar, face_jpg, tmp_path):
    with pytest.raises(DatasetError, match="There is no label 'angry'; create it first"):
        import_paths(store, [face_jpg], haar, settings, ImportOptions(label="angry"))
    with pytest.raises(BadInput, match="missing.jpg: no such file or folder"):
        import_paths(store, [face_jpg, tmp_path / "missing.jpg"], haar, settings, ImportOptions(label="happy"))
    with pytest.raises(BadInput, match="Nothing to import"):
        import_paths(store, [], haar, settings, ImportOptions(label="happy"))
    assert not settings.workspace.exists()


def test_import_uploads(store, settings, haar, astronaut_jpeg, zip_bytes):
    files = [("me.jpg", astronaut_jpeg), ("more.ZIP", zip_bytes({"sad/x.jpg": astronaut_jpeg})), ("empty.png", b"")]
    report = import_uploads(store, files, haar, settings, ImportOptions(label="happy", source="upload"))
    assert report.added == {"happy": 2}
    assert report.skipped == [("empty.png", "the file is empty (0 bytes).")]
    assert {s.source for s in store.samples()} == {"upload"}


def test_export_zip_layout_and_manifest(store, settings, tmp_path):
    store.add_label("neutral")
    added = store.add_samples([_new("happy"), _new("happy"), _new("sad")])
    out = tmp_path / "out" / "export.zip"
    assert export_zip(store, out) == 3
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        assert names == {f"{s.label}/{s.id}.jpg" for s in added} | {"manifest.csv"}
        for s in added:
            assert zf.read(f"{s.label}/{s.id}.jpg") == store.image_path(s).read_bytes()
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    assert [r["label"] for r in rows] == ["happy", "happy", "sad"]
    assert rows[0]["source"] == "webcam" and rows[0]["session"] == "s1"
    assert [p.name for p in out.parent.iterdir()] == ["export.zip"]  # no temp file left


def test_names_that_look_like_formulas_are_exported_as_text(store, tmp_path):
    """A name such as ``=HYPERLINK(...)`` must not become a live formula when manifest.csv is opened (issue 12 B8)."""
    image = np.full((30, 30, 3), 100, np.uint8)
    store.add_samples(
        [
            NewSample("happy", "upload", "s1", captured_by='=HYPERLINK("http://x","y")', origin="+1.jpg", image=image),
            NewSample("sad", "webcam", "s2", captured_by="ann", subject="@bob", image=image),
        ]
    )
    export_zip(store, tmp_path / "export.zip")
    with zipfile.ZipFile(tmp_path / "export.zip") as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    assert [(r["captured_by"], r["origin"], r["subject"]) for r in rows] == [
        ('\'=HYPERLINK("http://x","y")', "'+1.jpg", ""),
        ("ann", "", "'@bob"),
    ]
    assert [r["label"] for r in rows] == ["happy", "sad"]  # everything else as it was


def test_spreadsheet_cells_only_change_formula_text():
    assert [safe_cell(v) for v in ("=1+1", "-2", "\tx", "happy", "a=b", 3.5, -1, None)] == [
        "'=1+1",
        "'-2",
        "'\tx",
        "happy",
        "a=b",
        3.5,
        -1,
        None,
    ]


def test_export_then_import_round_trips(store, settings, tmp_path, fer_folder):
    import_paths(store, [fer_folder], None, settings, ImportOptions(cropped=True))
    out = tmp_path / "export.zip"
    assert export_zip(store, out) == 9
    extracted = tmp_path / "extracted"
    with zipfile.ZipFile(out) as zf:
        zf.extractall(extracted)
    fresh = DatasetStore(tmp_path / "ws2")
    report = import_paths(fresh, [extracted], None, settings, ImportOptions(cropped=True))
    assert report.skipped == []
    assert fresh.stats() == store.stats() == {"happy": 3, "sad": 2, "neutral": 4}
    # and the zip itself imports the same way
    third = DatasetStore(tmp_path / "ws3")
    import_paths(third, [out], None, settings, ImportOptions(cropped=True))
    assert third.stats() == store.stats()
