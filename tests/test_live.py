"""Tracking and smoothing of per-face probabilities (pure functions on arrays)."""

from __future__ import annotations

import numpy as np

from expr_core.live.pipeline import (
    EVERY_FACE,
    ClassifySchedule,
    ExpressionPipeline,
    FaceTracker,
    FrameStats,
    Track,
    banner_text,
    caption,
    iou,
    label_color,
)
from expr_core.vision.faces import Face
from expr_core.vision.overlay import UNCLASSIFIED, draw_face

HAPPY, SAD = np.array([0.9, 0.1]), np.array([0.1, 0.9])


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 10, 10)) - 50 / 150) < 1e-9


def _update(tracker: FaceTracker, faces: list[Face], probs: np.ndarray, now: float) -> list[Track]:
    """One frame in which every face is classified."""
    tracks = tracker.match(faces, now)
    for track, p in zip(tracks, probs, strict=True):
        tracker.observe(track, p, now)
    return tracks


def _run(tracker: FaceTracker, probs_per_frame, fps: float = 30.0, box=(100, 100, 80, 80)):
    tracks = []
    for i, probs in enumerate(probs_per_frame):
        tracks = _update(tracker, [Face(box, 0.9)], np.array([probs]), i / fps)
    return tracks


def test_a_changed_expression_wins_within_half_a_second_at_default_smoothing():
    tracker = FaceTracker()  # default 0.15 s
    frames_to_switch = None
    for i in range(60):
        probs = HAPPY if i < 30 else SAD
        (track,) = _update(tracker, [Face((100, 100, 80, 80), 0.9)], np.array([probs]), i / 30)
        if i >= 30 and frames_to_switch is None and np.argmax(track.probs) == 1:
            frames_to_switch = i - 30
    assert frames_to_switch is not None and frames_to_switch / 30 <= 0.5


def test_a_single_frame_flicker_does_not_flip_the_label():
    tracks = _run(FaceTracker(0.15), [HAPPY] * 10 + [SAD] + [HAPPY] * 2)
    probs_after_flicker = _run(FaceTracker(0.15), [HAPPY] * 10 + [SAD])[0].probs
    assert np.argmax(probs_after_flicker) == 0 and np.argmax(tracks[0].probs) == 0
    unsmoothed = _run(FaceTracker(0.0), [HAPPY] * 10 + [SAD])[0].probs
    assert np.allclose(unsmoothed, SAD)


def test_two_faces_keep_their_own_tracks_and_ids():
    tracker = FaceTracker()
    left, right = Face((10, 10, 50, 50), 0.9), Face((300, 10, 50, 50), 0.9)
    first = _update(tracker, [left, right], np.array([HAPPY, SAD]), 0.0)
    # next frame: faces reported in the other order and moved a little
    left2, right2 = Face((14, 12, 50, 50), 0.9), Face((296, 10, 50, 50), 0.9)
    second = _update(tracker, [right2, left2], np.array([SAD, HAPPY]), 1 / 30)
    assert [t.id for t in second] == [first[1].id, first[0].id]
    assert np.argmax(second[0].probs) == 1 and np.argmax(second[1].probs) == 0


def test_a_face_that_leaves_is_forgotten_and_a_new_one_gets_a_new_id():
    tracker = FaceTracker(forget_after_s=0.5)
    (a,) = _update(tracker, [Face((10, 10, 50, 50), 0.9)], np.array([HAPPY]), 0.0)
    _update(tracker, [], np.zeros((0, 2)), 1.0)
    (b,) = _update(tracker, [Face((10, 10, 50, 50), 0.9)], np.array([SAD]), 1.1)
    assert b.id != a.id and np.allclose(b.probs, SAD)


def _schedule_run(schedule: ClassifySchedule, n_faces: int, frames: int, fps: float = 30) -> list[list[int]]:
    """The track ids the schedule picks in each frame of a stream with ``n_faces`` still faces."""
    tracker = FaceTracker()
    faces = [Face((10 + 200 * k, 10, 50, 50), 0.9) for k in range(n_faces)]
    picked = []
    for frame in range(frames):
        now = frame / fps
        due = schedule.due(tracker.match(faces, now), now)
        for track in due:
            tracker.observe(track, HAPPY, now)
        picked.append([t.id for t in due])
    return picked


def test_faces_take_turns_when_classification_is_limited():
    assert _schedule_run(ClassifySchedule(1, max_hz=0), 3, 6) == [[1], [2], [3], [1], [2], [3]]  # new, then oldest
    assert _schedule_run(ClassifySchedule(2, max_hz=0), 3, 4) == [[1, 2], [3, 1], [2, 3], [1, 2]]  # fair turns
    assert _schedule_run(EVERY_FACE, 3, 2) == [[1, 2, 3], [1, 2, 3]]


def test_each_face_is_read_at_most_max_hz_times_a_second():
    # 30 fps, one face, at most 15 reads a second: every other frame.
    assert _schedule_run(ClassifySchedule(1, max_hz=15), 1, 6) == [[1], [], [1], [], [1], []]
    # 60 fps video: every fourth frame.
    assert sum(map(len, _schedule_run(ClassifySchedule(1, max_hz=15), 1, 60, fps=60))) == 15
    # three faces at 30 fps, one per frame: the turn limit (10 reads a second each) is the tighter one.
    assert _schedule_run(ClassifySchedule(1, max_hz=15), 3, 6) == [[1], [2], [3], [1], [2], [3]]


def test_smoothing_weighs_a_reading_by_the_time_since_the_previous_one():
    """A face classified every third frame settles as fast, in seconds, as one classified every frame."""
    every, third = FaceTracker(0.15), FaceTracker(0.15)
    face = [Face((100, 100, 80, 80), 0.9)]
    for i in range(45):
        probs = HAPPY if i < 30 else SAD
        _update(every, face, np.array([probs]), i / 30)
        (track,) = third.match(face, i / 30)
        if i % 3 == 0:
            third.observe(track, probs, i / 30)
    a, b = every.match(face, 1.5)[0].probs, third.match(face, 1.5)[0].probs
    assert np.argmax(a) == np.argmax(b) == 1 and abs(a[1] - b[1]) < 0.05


def test_frame_stats_and_caption():
    stats = FrameStats()
    assert banner_text(stats) == "-- fps  -- ms"  # no rate from a single frame
    for i in range(31):
        stats.add(i / 30, 0.010)
    assert abs(stats.fps - 30) < 1e-6 and abs(stats.latency_ms - 10) < 1e-9
    assert banner_text(stats) == "30.0 fps    10 ms"
    assert caption("happy", 0.87) == "happy 87%"


def test_every_label_of_a_model_has_its_own_colour():
    labels = ["happy", "sad", "neutral", "surprised"]
    assert len({label_color(label, labels) for label in labels}) == 4


class _FixedModel:
    """A served model's stand-in for the pipeline: fixed probabilities for every face."""

    input_size = 32

    def __init__(self, labels: list[str], probs: list[float]) -> None:
        self.labels, self._probs = labels, np.array(probs)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.tile(self._probs, (len(batch), 1))


class _OneFace:
    name = "fixed"

    def detect(self, frame: np.ndarray) -> list[Face]:
        return [Face((40, 40, 80, 80), 0.9)]


def test_a_face_unseen_for_longer_than_the_forget_time_comes_back_as_a_new_track():
    tracker = FaceTracker(forget_after_s=0.5)
    (first,) = _update(tracker, [Face((100, 100, 80, 80), 0.9)], np.array([HAPPY]), 0.0)
    (later,) = tracker.match([Face((100, 100, 80, 80), 0.9)], 120.0)  # the same place, two minutes later
    assert later.id != first.id and later.probs is None


def test_activating_a_model_with_other_labels_while_streaming_resets_the_tracks():
    from expr_core.live.pipeline import ExpressionPipeline

    frame = np.full((200, 200, 3), 120, np.uint8)
    pipeline = ExpressionPipeline(
        _OneFace(), _FixedModel(["happy", "sad"], [0.8, 0.2]), detect_side=None, schedule=EVERY_FACE
    )
    assert [r.label for r in pipeline.process(frame, now=0.0)] == ["happy"]
    three = _FixedModel(["angry", "happy", "sad"], [0.1, 0.2, 0.7])
    pipeline.configure(three, 0.15, EVERY_FACE, None)
    (reading,) = pipeline.process(frame, now=0.05)  # two labels' probabilities cannot blend with three
    assert reading.label == "sad" and list(reading.probs) == ["angry", "happy", "sad"]
    pipeline.configure(three, 0.0, ClassifySchedule(1), None)  # same labels: the tracks are kept
    assert pipeline.tracker._tracks and pipeline.schedule == ClassifySchedule(1)
    pipeline.configure(None, 0.0, EVERY_FACE, None)
    assert pipeline.process(frame, now=0.1) == []


# -- what the overlay draws (review C4-C6) -------------------------------------------------------------------
def _colour_pixels(frame: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int(np.count_nonzero(np.all(frame == colour, axis=2)))


LABEL_BGR = (60, 180, 75)


def _drawn(box: tuple[int, int, int, int], keep_clear: int = 0, confidence: float | None = 0.9) -> np.ndarray:
    frame = np.zeros((480, 640, 3), np.uint8)
    text = caption("surprise", confidence) if confidence is not None else None
    draw_face(frame, Face(box, 0.9), LABEL_BGR, text, confidence, keep_clear)
    return frame


def _caption_pixels(box: tuple[int, int, int, int], keep_clear: int = 0) -> int:
    """Pixels of the caption's colour beyond the box's own."""
    return _colour_pixels(_drawn(box, keep_clear), LABEL_BGR) - _colour_pixels(_drawn(box, confidence=None), LABEL_BGR)


def test_a_caption_stays_whole_at_the_right_edge_and_under_the_banner():
    """Review C5: 'happy 50% ###-' was cut off at the right edge, and hidden under the fps banner at the top."""
    whole = _caption_pixels((300, 200, 100, 100))
    assert whole > 1000
    # the same caption at the right edge, and just below a 40-row banner (it would have been under it)
    for box, clear in (((560, 200, 60, 100), 0), ((300, 45, 100, 100), 40)):
        assert abs(_caption_pixels(box, clear) - whole) <= 0.05 * whole, box
    assert _colour_pixels(_drawn((300, 45, 100, 100), keep_clear=40)[:40], LABEL_BGR) == 0


def test_the_confidence_bar_is_drawn_and_grows_with_confidence():
    sure, unsure = _drawn((300, 200, 100, 100), confidence=1.0), _drawn((300, 200, 100, 100), confidence=0.2)
    assert _colour_pixels(sure, (255, 255, 255)) > _colour_pixels(unsure, (255, 255, 255)) + 50


def test_a_face_not_read_yet_looks_unlike_every_label():
    """Review C4: the 'not classified yet' green was within 20 of the happy colour."""
    labels = [f"l{i}" for i in range(6)]
    for label in labels:
        colour = np.array(label_color(label, labels))
        assert np.abs(colour - np.array(UNCLASSIFIED)).max() > 60, label


def test_still_photos_get_no_frame_rate_banner(haar, astronaut_bgr):
    """Review C6: uploaded photos carried the live '-- fps -- ms' banner."""
    photo, live = astronaut_bgr.copy(), astronaut_bgr.copy()
    ExpressionPipeline(haar, None, detect_side=None, schedule=EVERY_FACE, meter=False).process(photo)
    ExpressionPipeline(haar, None).process(live)
    grey = (60, 60, 60)
    assert _colour_pixels(photo[:20], grey) == 0 and _colour_pixels(live[:20], grey) > 20 * 400
