"""The expression pipeline, video files and explanations with a real (tiny) trained model."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from expr_core.data.review import ReviewQueue, UncertainFaceKeeper
from expr_core.data.store import DatasetStore
from expr_core.errors import BadInput
from expr_core.jobs import folder as job
from expr_core.jobs.video import delete_video_job, job_dir, output_paths, start_video_job, video_jobs
from expr_core.live.pipeline import EVERY_FACE, ClassifySchedule, ExpressionPipeline
from expr_core.live.video_file import process_video
from expr_core.registry import Registry
from expr_core.serving import Classifier, open_model


@pytest.fixture(scope="module")
def model_dir(tiny_model: Path) -> Path:
    registry = Registry(tiny_model)
    return registry.model_dir(registry.active_id())


@pytest.fixture(scope="module")
def classifier(model_dir: Path) -> Classifier:
    return open_model(model_dir)


def scene(photo: np.ndarray, faces: int, shift: int = 0) -> np.ndarray:
    """A 640x480 frame with ``faces`` head-and-shoulders copies of a real photo side by side."""
    portrait = photo[20:260, 110:350]  # the astronaut's head and shoulders
    frame = np.full((480, 640, 3), 90, np.uint8)
    side = 300 if faces == 1 else 200
    for k in range(faces):
        x = 10 + shift + k * (side + 10)
        frame[90 : 90 + side, x : x + side] = cv2.resize(portrait, (side, side))
    return frame


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 15) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode(None))
    return path


def _counting(classifier, monkeypatch) -> list[int]:
    calls = []
    original = classifier.predict
    monkeypatch.setattr(classifier, "predict", lambda batch: calls.append(len(batch)) or original(batch))
    return calls


def test_every_face_of_a_frame_gets_a_label_in_one_batched_call(classifier, haar, astronaut_bgr, monkeypatch):
    calls = _counting(classifier, monkeypatch)
    pipeline = ExpressionPipeline(haar, classifier, schedule=EVERY_FACE)
    frame = scene(astronaut_bgr, 3)
    clean = frame.copy()
    readings = pipeline.process(frame)
    assert len(readings) == 3 and calls == [3]
    assert {r.label for r in readings} <= set(classifier.labels)
    assert all(abs(sum(r.probs.values()) - 1) < 1e-3 for r in readings)
    assert len({r.track_id for r in readings}) == 3
    assert not np.array_equal(frame, clean)  # boxes and captions were drawn
    # the same faces in the next frame keep their track ids
    again = pipeline.process(scene(astronaut_bgr, 3, shift=4))
    assert sorted(r.track_id for r in again) == sorted(r.track_id for r in readings)


def test_with_one_face_per_frame_the_faces_take_turns(classifier, haar, astronaut_bgr, monkeypatch):
    calls = _counting(classifier, monkeypatch)
    pipeline = ExpressionPipeline(haar, classifier, schedule=ClassifySchedule(1, max_hz=0))
    labelled = [len(pipeline.process(scene(astronaut_bgr, 3, shift=k))) for k in range(4)]
    assert calls == [1, 1, 1, 1] and labelled == [1, 2, 3, 3]
    first = ExpressionPipeline(haar, classifier, schedule=EVERY_FACE).process(scene(astronaut_bgr, 3, shift=3))
    last = pipeline.process(scene(astronaut_bgr, 3, shift=4))
    assert sorted(r.label for r in last) == sorted(r.label for r in first)


def test_uncertain_faces_are_kept_for_review_and_can_join_the_dataset(classifier, haar, astronaut_bgr, tmp_path):
    queue = ReviewQueue(tmp_path)
    pipeline = ExpressionPipeline(haar, classifier)
    keeper = UncertainFaceKeeper(queue, threshold=1.01, margin=0.2, crop_size=64, captured_by="bo")
    pipeline.on_readings = keeper
    writes = []
    real_add = queue.add
    queue.add = lambda *args: writes.append(threading.current_thread()) or real_add(*args)  # type: ignore[method-assign]
    pipeline.process(scene(astronaut_bgr, 1))
    pipeline.process(scene(astronaut_bgr, 1))  # same face within a second: not kept twice
    keeper.flush()
    # Review A3: the frame thread never waits for the disk (encoding, fsync, counting the queue)
    assert writes and threading.current_thread() not in writes
    items = queue.items()
    assert keeper.kept == 1
    assert len(items) == 1 and items[0].predicted in classifier.labels and items[0].captured_by == "bo"
    store = DatasetStore(tmp_path)
    assert queue.accept([items[0].id], "sad", store, "bo") == 1
    (sample,) = store.samples()
    assert sample.source == "review" and sample.label == "sad" and queue.items() == []


def test_a_video_is_annotated_with_a_table_of_expressions(classifier, haar, astronaut_bgr, tmp_path):
    frames = [scene(astronaut_bgr, 1, shift=i) for i in range(20)] + [np.full((480, 640, 3), 90, np.uint8)] * 5
    src = write_clip(tmp_path / "in.mp4", frames)
    progress = []
    result = process_video(
        src,
        tmp_path / "out.mp4",
        ExpressionPipeline(haar, classifier),
        on_progress=lambda done, total: progress.append(done),
    )
    assert result.frames == 25 and result.frames_with_faces == 20 and not result.cancelled
    with av.open(str(result.video_path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        decoded = sum(1 for _ in container.decode(stream))
    assert decoded == 25
    with open(result.csv_path, encoding="utf-8") as table:
        rows = list(csv.DictReader(table))
    assert len(rows) == 20 and {r["label"] for r in rows} <= set(classifier.labels)
    assert progress[-1] == 25
    assert not list(tmp_path.glob(".tmp-*"))


def test_the_cli_video_worker_ends_its_progress_line_and_times_itself(
    classifier, haar, astronaut_bgr, tmp_path, capsys
):
    """In a terminal the progress overwrites itself ("\rN/M frames"); it must end with a newline (issue 12 C11)."""
    from expr_core.worker.video import annotate_video

    src = write_clip(tmp_path / "in.mp4", [scene(astronaut_bgr, 1)] * 6)
    summary = annotate_video(src, tmp_path / "out.mp4", ExpressionPipeline(haar, classifier), None)
    err = capsys.readouterr().err
    assert err.endswith("6/6 frames\n") and err.count("\n") == 1
    assert isinstance(summary["seconds"], float) and summary["frames"] == 6
    json.dumps(summary, allow_nan=False)


def test_cancelling_a_video_leaves_no_output(classifier, haar, astronaut_bgr, tmp_path):
    src = write_clip(tmp_path / "in.mp4", [scene(astronaut_bgr, 1)] * 30)
    seen = []
    result = process_video(
        src,
        tmp_path / "out.mp4",
        ExpressionPipeline(haar, classifier),
        should_stop=lambda: len(seen.append(1) or seen) > 5,
    )
    assert result.cancelled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("in.mp4", "would overwrite the input video in.mp4"),  # the user's own video, replaced (issue 12 B6)
        ("in.csv", "cannot be a .csv file"),  # its table would be written onto the video itself
        ("clip.mp4", "would overwrite the input video clip.csv"),  # the table beside it is the input
        ("missing/out.mp4", "no such folder"),
    ],
)
def test_an_output_that_would_overwrite_the_input_is_refused(
    classifier, haar, astronaut_bgr, tmp_path, output, message
):
    src = write_clip(tmp_path / "in.mp4", [scene(astronaut_bgr, 1)] * 5)
    if output == "clip.mp4":  # an input whose name is what the table of clip.mp4 would be called
        src = src.rename(tmp_path / "clip.csv")
    before = src.read_bytes()
    with pytest.raises(BadInput, match=message):
        process_video(src, tmp_path / output, ExpressionPipeline(haar, classifier))
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a video", "not a video file"),
        (b"", "not a video file"),
    ],
)
def test_bad_video_files_are_refused_and_leave_nothing(classifier, haar, tmp_path, content, message):
    src = tmp_path / "bad.mp4"
    src.write_bytes(content)
    with pytest.raises(BadInput, match=message):
        process_video(src, tmp_path / "out.mp4", ExpressionPipeline(haar, classifier))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]


def test_a_truncated_video_keeps_the_frames_before_the_damage(classifier, haar, astronaut_bgr, tmp_path):
    whole = write_clip(tmp_path / "whole.mp4", [scene(astronaut_bgr, 1, shift=i) for i in range(40)])
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    try:
        result = process_video(cut, tmp_path / "out.mp4", ExpressionPipeline(haar, classifier))
    except BadInput as exc:  # the MP4 index sits at the end for this muxer: then nothing is decodable
        assert "cut.mp4" in str(exc)
        assert not (tmp_path / "out.mp4").exists()
        return
    assert 0 < result.frames < 40 and (tmp_path / "out.mp4").exists()


def test_video_job_runs_in_a_worker_and_survives_readers_coming_and_going(
    tiny_model, model_dir, settings, astronaut_bgr, tmp_path
):
    cfg = settings.with_(workspace=tmp_path / "ws", detector="haar")
    clip = write_clip(tmp_path / "clip.mp4", [scene(astronaut_bgr, 1, shift=i) for i in range(30)])
    job_id = start_video_job(cfg, "my clip.mp4", clip.read_bytes(), str(model_dir), ["happy", "sad"])
    status = job.wait(job_dir(cfg.workspace, job_id), 120)
    assert status["state"] == "done", status
    video, table = output_paths(cfg.workspace / "videos" / job_id)
    assert video.stat().st_size > 0 and table.read_text().count("\n") == 31
    assert status["frames"] == 30 and status["name"] == "my clip.mp4"
    delete_video_job(cfg.workspace, job_id)
    assert video_jobs(cfg.workspace) == []


def test_a_video_job_on_a_non_video_fails_with_the_reason(model_dir, settings, tmp_path):
    cfg = settings.with_(workspace=tmp_path / "ws", detector="haar")
    job_id = start_video_job(cfg, "notes.mp4", b"hello, not a video", str(model_dir), ["happy", "sad"])
    status = job.wait(job_dir(cfg.workspace, job_id), 120)
    assert status["state"] == "failed" and "not a video file" in status["error"]
    assert not output_paths(cfg.workspace / "videos" / job_id)[0].exists()


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("notes.txt", b"x", "not a video file"),
        ("empty.mp4", b"", "empty"),
    ],
)
def test_video_uploads_are_checked_before_any_job_starts(model_dir, settings, tmp_path, name, data, message):
    cfg = settings.with_(workspace=tmp_path / "ws")
    with pytest.raises(BadInput, match=message):
        start_video_job(cfg, name, data, str(model_dir), ["happy", "sad"])
    assert video_jobs(cfg.workspace) == []


def test_explain_writes_a_heat_map_per_face(model_dir, face_jpg, run_cli, tmp_path):
    done = run_cli(
        "explain", face_jpg, "--model", model_dir, "--out", tmp_path / "why", "--detector", "haar", timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (face,) = json.loads(done.stdout.strip().splitlines()[-1])["faces"]
    crop, heat = cv2.imread(face["crop"]), cv2.imread(face["heatmap"])
    assert crop.shape == heat.shape == (192, 192, 3) and not np.array_equal(crop, heat)
