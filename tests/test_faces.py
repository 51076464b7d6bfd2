"""Detectors on a real photo, detector selection and fallback, and square crops clamped to the frame."""

from __future__ import annotations

import itertools
import shutil
import threading

import numpy as np
import pytest

from expr_core import assets
from expr_core.errors import ModelFileError
from expr_core.vision.faces import (
    Face,
    HaarDetector,
    YuNetDetector,
    crop_face,
    detect_and_crop,
    detect_downscaled,
    make_detector,
    open_detector,
    pick_faces,
    square_box,
)

# The astronaut's face in skimage.data.astronaut() (512x512), as YuNet reports it.
ASTRONAUT_FACE = (178, 63, 90, 113)


def iou(a, b) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    ix = max(0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


# -- detectors on a real photo ----------------------------------------------------------------------
def test_yunet_finds_the_astronaut_with_landmarks(yunet_settings, astronaut_bgr):
    detector = make_detector("yunet", yunet_settings)
    assert isinstance(detector, YuNetDetector)
    faces = detector.detect(astronaut_bgr)
    assert len(faces) == 1
    face = faces[0]
    assert iou(face.box, ASTRONAUT_FACE) > 0.8, face.box
    assert 0.6 <= face.score <= 1.0
    assert face.landmarks is not None and len(face.landmarks) == 5
    x, y, w, h = face.box
    for lx, ly in face.landmarks:  # eyes, nose, mouth corners all lie inside the face box
        assert x <= lx <= x + w and y <= ly <= y + h
    (rx, ry), (lx, ly) = face.landmarks[:2]
    assert rx < lx and abs(ry - ly) < h / 5  # two eyes side by side, upright face


def test_yunet_scales_boxes_back_on_large_frames(yunet_settings, astronaut_bgr):
    """Frames over YUNET_MAX_SIDE are shrunk for detection; the box must come back in frame pixels."""
    big = np.kron(astronaut_bgr, np.ones((2, 2, 1), dtype=np.uint8))  # 1024x1024, every pixel doubled
    faces = make_detector("yunet", yunet_settings).detect(big)
    assert len(faces) == 1
    assert iou(faces[0].box, tuple(2 * v for v in ASTRONAUT_FACE)) > 0.8, faces[0].box


def test_detection_on_a_smaller_copy_returns_faces_in_frame_pixels(yunet_settings, astronaut_bgr):
    detector = make_detector("yunet", yunet_settings)
    full = detector.detect(astronaut_bgr)[0]
    small = detect_downscaled(detector, astronaut_bgr, 256)  # half size
    assert len(small) == 1 and iou(small[0].box, full.box) > 0.85, (small, full)
    for (x, y), (fx, fy) in zip(small[0].landmarks, full.landmarks, strict=True):
        assert abs(x - fx) < 6 and abs(y - fy) < 6
    assert detect_downscaled(detector, astronaut_bgr, None) == detector.detect(astronaut_bgr)


def test_a_scaled_face_is_clipped_to_the_frame_or_dropped():
    face = Face((10, 10, 20, 20), 0.9, ((15.0, 15.0),) * 5)
    big = face.scaled(2, 50, 50)
    assert big.box == (20, 20, 30, 30) and big.landmarks[0] == (30.0, 30.0) and big.score == 0.9
    assert Face((60, 60, 10, 10), 0.9).scaled(1, 50, 50) is None


def test_yunet_is_safe_to_share_between_threads(yunet_settings, astronaut_bgr):
    detector = make_detector("yunet", yunet_settings)
    expected = detector.detect(astronaut_bgr)[0].box
    boxes, errors = [], []

    def work():
        try:
            for _ in range(3):
                boxes.append(detector.detect(astronaut_bgr)[0].box)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert boxes == [expected] * 12


def test_haar_fallback_finds_the_astronaut(haar, astronaut_bgr):
    faces = haar.detect(astronaut_bgr)
    assert len(faces) == 1
    assert iou(faces[0].box, ASTRONAUT_FACE) > 0.5, faces[0].box
    assert faces[0].score == 1.0 and faces[0].landmarks is None


TINY_OR_BLANK = [(1, 1, 3), (10, 7, 3), (40, 40, 3), (240, 320, 3)]


@pytest.mark.parametrize("shape", TINY_OR_BLANK)
def test_haar_returns_nothing_on_tiny_or_blank_frames(haar, shape):
    assert haar.detect(np.full(shape, 127, dtype=np.uint8)) == []


@pytest.mark.parametrize("shape", TINY_OR_BLANK)
def test_yunet_returns_nothing_on_tiny_or_blank_frames(yunet_settings, shape):
    assert make_detector("yunet", yunet_settings).detect(np.full(shape, 127, dtype=np.uint8)) == []


# -- SSD, selection and fallback --------------------------------------------------------------------
def test_ssd_without_files_names_the_file_and_what_to_do(settings):
    with pytest.raises(ModelFileError) as info:
        make_detector("ssd", settings)
    message = str(info.value)
    assert assets.SSD_PROTOTXT.filename in message
    assert str(settings.models_dir) in message and "EXPR_MODELS_DIR" in message and "EXPR_DOWNLOADS" in message


def test_ssd_with_prototxt_but_no_weights_names_the_weights(settings):
    (settings.models_dir / assets.SSD_PROTOTXT.filename).write_text("name: 'x'\n")
    with pytest.raises(ModelFileError, match=assets.SSD_CAFFEMODEL.filename):
        make_detector("ssd", settings)


def test_ssd_with_wrong_weights_reports_the_sha1(settings):
    (settings.models_dir / assets.SSD_PROTOTXT.filename).write_text("name: 'x'\n")
    (settings.models_dir / assets.SSD_CAFFEMODEL.filename).write_bytes(b"not caffe weights")
    with pytest.raises(ModelFileError) as info:
        make_detector("ssd", settings)
    assert "SHA1" in str(info.value) and "15aa726b4d46" in str(info.value)


def test_open_detector_falls_back_to_haar_with_a_warning(settings, astronaut_bgr):
    detector, warning = open_detector(settings)  # yunet configured, models folder empty, downloads off
    assert detector.name == "haar"
    assert "Haar fallback" in warning and assets.YUNET.filename in warning and "EXPR_MODELS_DIR" in warning
    assert detector.detect(astronaut_bgr)


def test_open_detector_ssd_falls_back_too(settings):
    detector, warning = open_detector(settings, "ssd")
    assert detector.name == "haar" and assets.SSD_PROTOTXT.filename in warning


def test_open_detector_uses_yunet_when_available(yunet_settings):
    detector, warning = open_detector(yunet_settings)
    assert detector.name == "yunet" and warning is None


def test_open_detector_haar_needs_no_warning(settings):
    detector, warning = open_detector(settings, "haar")
    assert isinstance(detector, HaarDetector) and warning is None


def test_unknown_detector_is_refused(settings):
    with pytest.raises(ModelFileError, match="Unknown detector 'mtcnn'"):
        make_detector("mtcnn", settings)


def test_corrupt_yunet_file_is_refused_with_its_hash(settings):
    bad = settings.models_dir / assets.YUNET.filename
    bad.write_bytes(b"\x08\x07 this is not the YuNet model")
    with pytest.raises(ModelFileError) as info:
        make_detector("yunet", settings)
    message = str(info.value)
    assert "SHA256" in message and "ebafce4e3c11" in message and str(bad) in message
    assert "delete it" in message
    # open_detector keeps the app usable and says why
    detector, warning = open_detector(settings)
    assert detector.name == "haar" and "SHA256" in warning


def test_yunet_from_cache_when_models_folder_lacks_it(settings, shared_models, astronaut_bgr):
    settings.cache_dir.mkdir()
    shutil.copy(shared_models / assets.YUNET.filename, settings.cache_dir)
    assert make_detector("yunet", settings).detect(astronaut_bgr)


# -- square boxes and crops -------------------------------------------------------------------------
def _check_square(box, face, margin, width, height):
    x, y, w, h = box
    assert w == h >= 1, box
    assert x >= 0 and y >= 0 and x + w <= width and y + h <= height, (box, width, height)
    fx, fy, fw, fh = face
    wanted = int(round(max(fw, fh) * (1 + 2 * margin)))
    assert w == min(max(1, wanted), width, height)
    # centred on the face unless the frame edge forces a shift (then it touches that edge)
    cx, cy = fx + fw / 2, fy + fh / 2
    if abs((x + w / 2) - cx) > 1:
        assert x == 0 or x + w == width, (box, face)
    if abs((y + h / 2) - cy) > 1:
        assert y == 0 or y + h == height, (box, face)


@pytest.mark.parametrize("width,height", [(640, 480), (480, 640), (100, 100)])
@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
def test_square_box_near_every_border_and_corner(width, height, margin):
    size = 60
    xs = [0, 5, width // 2 - size // 2, width - size - 5, width - size]
    ys = [0, 5, height // 2 - size // 2, height - size - 5, height - size]
    for fx, fy in itertools.product(xs, ys):
        face = (fx, fy, size, size)
        _check_square(square_box(face, margin, width, height), face, margin, width, height)


def test_square_box_is_centred_in_the_middle():
    assert square_box((100, 100, 40, 40), 0.25, 640, 480) == (90, 90, 60, 60)


def test_square_box_non_square_face_uses_the_long_side():
    box = square_box((200, 100, 40, 80), 0.0, 640, 480)
    assert box == (180, 100, 80, 80)


@pytest.mark.parametrize(
    "face,width,height",
    [
        ((0, 0, 640, 480), 640, 480),  # face fills the frame
        ((-50, -50, 900, 900), 640, 480),  # bigger than the frame
        ((0, 10, 200, 300), 150, 400),  # taller than the frame is wide
        ((0, 0, 3, 3), 4, 4),  # tiny frame
        ((0, 0, 1, 1), 1, 1),  # one pixel
        ((2, 2, 0, 0), 5, 5),  # degenerate box
    ],
)
def test_square_box_for_big_faces_and_tiny_frames(face, width, height):
    x, y, w, h = square_box(face, 0.2, width, height)
    assert w == h and 1 <= w <= min(width, height)
    assert x >= 0 and y >= 0 and x + w <= width and y + h <= height


@pytest.mark.parametrize("corner", ["tl", "tr", "bl", "br"])
def test_crop_face_at_the_corners_is_a_real_crop_of_the_face(corner):
    """A face in a corner gives a full square crop containing the face (the old code gave garbage)."""
    frame = np.zeros((300, 400, 3), np.uint8)
    fx = 0 if corner[1] == "l" else 400 - 50
    fy = 0 if corner[0] == "t" else 300 - 50
    frame[fy : fy + 50, fx : fx + 50] = 255  # the "face"
    crop = crop_face(frame, Face((fx, fy, 50, 50), 0.9), margin=0.5, size=100)
    assert crop.shape == (100, 100, 3) and crop.dtype == np.uint8
    # the face takes half of the 100-pixel crop on each axis and sits at the frame corner's side of it
    white = crop[..., 0] > 127
    assert 0.2 < white.mean() < 0.3
    rows, cols = np.nonzero(white)
    assert (rows.min() == 0) == (corner[0] == "t") and (rows.max() == 99) == (corner[0] == "b")
    assert (cols.min() == 0) == (corner[1] == "l") and (cols.max() == 99) == (corner[1] == "r")


@pytest.mark.parametrize("size", [1, 48, 96, 224, 700])
def test_crop_face_has_the_exact_size(astronaut_bgr, size):
    crop = crop_face(astronaut_bgr, Face(ASTRONAUT_FACE, 0.9), margin=0.2, size=size)
    assert crop.shape == (size, size, 3)


def test_crop_face_on_grayscale_and_tiny_frames():
    assert crop_face(np.zeros((5, 9), np.uint8), Face((0, 0, 9, 5), 1.0), 0.2, 32).shape == (32, 32)
    assert crop_face(np.zeros((1, 1, 3), np.uint8), Face((0, 0, 1, 1), 1.0), 0.2, 8).shape == (8, 8, 3)


def test_crop_face_is_centred_on_the_face(astronaut_bgr):
    x, y, w, h = square_box(ASTRONAUT_FACE, 0.2, 512, 512)
    expected = astronaut_bgr[y : y + h, x : x + w]
    crop = crop_face(astronaut_bgr, Face(ASTRONAUT_FACE, 0.9), margin=0.2, size=w)
    assert np.array_equal(crop, expected)
    assert abs((x + w / 2) - (178 + 45)) <= 1 and abs((y + h / 2) - (63 + 56.5)) <= 1


def test_detect_and_crop_on_the_photo(haar, astronaut_bgr):
    pairs = detect_and_crop(haar, astronaut_bgr, margin=0.2, size=96, largest_only=True)
    assert len(pairs) == 1
    face, crop = pairs[0]
    assert crop.shape == (96, 96, 3) and iou(face.box, ASTRONAUT_FACE) > 0.5


def test_pick_faces_largest_or_all():
    small, big = Face((0, 0, 10, 10), 0.99), Face((50, 50, 40, 40), 0.7)
    assert pick_faces([small, big], largest_only=True) == [big]
    assert pick_faces([small, big], largest_only=False) == [small, big]
    assert pick_faces([], largest_only=True) == []
