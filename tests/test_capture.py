"""The recorder between the capture page and the frame thread, on frames made from a real photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from expr_core.errors import UserError
from expr_core.live.capture import BurstRequest, Recorder, SampleWriter, annotate_capture_frame
from expr_core.vision.faces import crop_face


class Clock:
    """A hand-moved clock so the burst timing is exact, whatever the machine's speed."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def frame(astronaut_bgr) -> np.ndarray:
    canvas = np.full((480, 640, 3), 180, np.uint8)
    canvas[:, 80:560] = cv2.resize(astronaut_bgr, (480, 480))
    return canvas


@pytest.fixture
def two_faces(astronaut_bgr) -> np.ndarray:
    canvas = np.full((480, 640, 3), 180, np.uint8)
    canvas[80:400, 0:320] = cv2.resize(astronaut_bgr, (320, 320))
    canvas[160:400, 380:620] = cv2.resize(astronaut_bgr, (240, 240))
    return canvas


@pytest.fixture
def rig(store):
    writer = SampleWriter(store)
    clock = Clock()
    return writer, clock, Recorder(writer, margin=0.2, crop_size=64, clock=clock)


def test_burst_waits_for_countdown_then_takes_count_crops_at_interval(rig, store, frame, haar):
    writer, clock, recorder = rig
    faces = haar.detect(frame)
    assert faces
    recorder.start(BurstRequest("happy", count=3, interval_s=0.5, countdown_s=2, captured_by="ana"))
    recorder.on_frame(frame, faces)
    assert recorder.status().phase == "countdown" and recorder.status().taken == 0
    clock.t += 2.0
    recorder.on_frame(frame, faces)  # due: first crop
    recorder.on_frame(frame, faces)  # same instant: not due again
    clock.t += 0.5
    recorder.on_frame(frame, faces)
    clock.t += 0.5
    recorder.on_frame(frame, faces)
    clock.t += 0.5
    recorder.on_frame(frame, faces)  # burst finished: ignored
    writer.flush()
    samples = store.samples("happy")
    assert len(samples) == 3
    assert {s.source for s in samples} == {"webcam"} and {s.captured_by for s in samples} == {"ana"}
    assert len({s.session for s in samples}) == 1
    status = recorder.status()
    assert status.phase == "idle" and status.taken == 3 and status.saved == {"happy": 3}
    assert cv2.imread(str(store.image_path(samples[0]))).shape == (64, 64, 3)


def test_frames_without_faces_are_skipped_not_counted(rig, store, frame):
    writer, _clock, recorder = rig
    recorder.start(BurstRequest("sad", count=1, countdown_s=0))
    recorder.on_frame(frame, [])
    writer.flush()
    assert recorder.status().no_face_frames == 1 and recorder.status().taken == 0
    assert store.samples() == []


def test_all_faces_mode_saves_every_face_largest_mode_one(rig, store, two_faces, haar):
    writer, _clock, recorder = rig
    faces = haar.detect(two_faces)
    assert len(faces) == 2
    recorder.start(BurstRequest("happy", count=1, countdown_s=0, largest_only=False))
    recorder.on_frame(two_faces, faces)
    recorder.start(BurstRequest("sad", count=1, countdown_s=0, largest_only=True))
    recorder.on_frame(two_faces, faces)
    writer.flush()
    assert store.stats() == {"happy": 2, "sad": 1}


def test_crops_never_contain_the_overlay(rig, store, frame, haar):
    writer, _clock, recorder = rig
    recorder.start(BurstRequest("happy", count=1, countdown_s=0))
    clean = frame.copy()
    annotated = annotate_capture_frame(frame, haar.detect(frame), recorder)
    writer.flush()
    assert not np.array_equal(annotated, clean)  # boxes and banner were drawn on the frame...
    # ...but the crop was cut from the clean frame: it matches a crop of the clean frame up to JPEG noise.
    saved = cv2.imread(str(store.image_path(store.samples()[0])))
    reference = crop_face(clean, haar.detect(clean)[0], 0.2, 64)
    assert np.abs(saved.astype(int) - reference.astype(int)).mean() < 4


def test_a_failed_write_stops_the_burst_with_a_message(rig, store, frame, haar):
    writer, _clock, recorder = rig
    recorder.start(BurstRequest("happy", count=5, countdown_s=0))
    store.delete_label("happy")  # e.g. deleted by a teammate meanwhile
    recorder.on_frame(frame, haar.detect(frame))
    writer.flush()
    status = recorder.status()
    assert status.phase == "idle" and "no label 'happy'" in status.error
    assert store.samples() == []


@pytest.mark.parametrize(
    "request_, message",
    [
        (BurstRequest("", count=3), "Pick a label"),
        (BurstRequest("angry", count=3), "Pick a label"),
        (BurstRequest("happy", count=0), "1 to 500"),
        (BurstRequest("happy", count=3, interval_s=0), "interval"),
    ],
)
def test_bad_requests_are_refused(request_, message):
    with pytest.raises(UserError, match=message):
        request_.validate(["happy", "sad"])


def test_a_burst_keeps_its_rhythm_whatever_the_frame_rate(rig, store, frame, haar):
    """Review C10: 30 crops at 0.2 s took 7.4-9.4 s, not 5.8 s: each crop counted from the late frame it came in."""
    writer, clock, recorder = rig
    faces = haar.detect(frame)
    recorder.start(BurstRequest("happy", count=30, interval_s=0.2, countdown_s=0))
    taken_at = []
    for _ in range(200):  # frames at 15 fps
        before = recorder.status().taken
        recorder.on_frame(frame, faces)
        if recorder.status().taken > before:
            taken_at.append(clock.t)
        clock.t += 1 / 15
    writer.flush()
    assert len(taken_at) == 30 and len(store.samples("happy")) == 30
    assert taken_at[-1] - taken_at[0] == pytest.approx(29 * 0.2, abs=1 / 15)
    assert min(np.diff(taken_at)) >= 0.1  # a late frame is not followed by a rush of crops
