"""Video files in, annotated video and a per-face expression table out.

The output is H.264 in MP4 (yuv420p, ``faststart``) because every browser plays it; the table is a
CSV beside the video: one row per face per frame. Both are written to temporary names and renamed
when complete, so a cancelled or crashed run never leaves a half file under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from expr_core.atomic import TMP_PREFIX
from expr_core.errors import BadInput, DiskFull, disk_full, is_disk_full
from expr_core.live.pipeline import ExpressionPipeline

MAX_SIDE = 1280  # larger videos are scaled down: the faces are what matters, and it keeps real time


@dataclass
class VideoResult:
    frames: int
    frames_with_faces: int
    duration_s: float
    video_path: Path
    csv_path: Path
    cancelled: bool = False
    warning: str | None = None


def _open_input(src: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    try:
        container = av.open(str(src))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{src.name}: not a video file this app can read ({exc}).") from exc
    if not container.streams.video:
        container.close()
        raise BadInput(f"{src.name}: the file has no video track.")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _even(value: int) -> int:
    return max(2, value - value % 2)


def csv_path_for(video_out: Path) -> Path:
    return video_out.with_suffix(".csv")


def _check_output(src: Path, dst: Path) -> None:
    """Refuse outputs that would replace the input (the user's own video) or collide with the CSV table."""
    if dst.suffix.lower() == ".csv":
        raise BadInput(f"{dst.name}: the annotated video cannot be a .csv file; its table is written beside it.")
    outputs = (dst, csv_path_for(dst))
    if any(out.exists() and src.exists() and out.samefile(src) for out in outputs):
        raise BadInput(f"{dst}: that would overwrite the input video {src.name}; choose another output name.")
    if not dst.parent.is_dir():
        raise BadInput(f"{dst.parent}: no such folder for the annotated video.")


def process_video(
    src: Path,
    dst: Path,
    pipeline: ExpressionPipeline,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> VideoResult:
    """Annotate every frame of ``src`` into ``dst`` (MP4) and write ``dst`` with ``.csv`` beside it."""
    src, dst = Path(src), Path(dst)
    _check_output(src, dst)
    container, stream = _open_input(src)
    total = stream.frames or 0
    fps = float(stream.average_rate or 30)
    tmp_video = dst.with_name(f"{TMP_PREFIX}{dst.name}")
    tmp_csv = dst.with_name(f"{TMP_PREFIX}{csv_path_for(dst).name}")
    labels = list(pipeline.classifier.labels) if pipeline.classifier else []
    frames = with_faces = 0
    warning = None
    cancelled = False
    try:
        with (
            av.open(str(tmp_video), "w", format="mp4", options={"movflags": "+faststart"}) as out,
            open(tmp_csv, "w", newline="", encoding="utf-8") as table,
        ):
            writer = csv.writer(table)
            writer.writerow(
                ["time_s", "frame", "face", "x", "y", "w", "h", "label", "confidence", *[f"p_{x}" for x in labels]]
            )
            encoder = None
            try:
                for frame in container.decode(stream):
                    if should_stop():
                        cancelled = True
                        break
                    image = _scaled(frame.to_ndarray(format="bgr24"))
                    if encoder is None:
                        encoder = _encoder(out, image, fps)
                    t = float(frame.time) if frame.time is not None else frames / fps
                    readings = pipeline.process(image, now=t)
                    with_faces += bool(readings)
                    for r in readings:
                        writer.writerow(
                            [
                                f"{t:.3f}",
                                frames,
                                r.track_id,
                                *r.box,
                                r.label,
                                f"{r.confidence:.4f}",
                                *[f"{r.probs[x]:.4f}" for x in labels],
                            ]
                        )
                    out_frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
                    for packet in encoder.encode(out_frame):
                        out.mux(packet)
                    frames += 1
                    if on_progress and frames % 10 == 0:
                        on_progress(frames, total)
            except (av.error.FFmpegError, ValueError) as exc:
                if is_disk_full(exc):  # writing the output failed, not reading the input: nothing is published
                    raise disk_full(dst.parent) from exc
                if frames == 0:
                    raise BadInput(f"{src.name}: the video cannot be decoded ({exc}).") from exc
                warning = (
                    f"The video is truncated or damaged after frame {frames}; the frames before it were processed."
                )
            if frames == 0 or encoder is None:
                raise BadInput(f"{src.name}: the video has no frames.")
            for packet in encoder.encode(None):
                out.mux(packet)
        if on_progress:
            on_progress(frames, total or frames)
        if not cancelled:
            os.replace(tmp_video, dst)
            os.replace(tmp_csv, csv_path_for(dst))
    except OSError as exc:  # the table's writes, or the muxer closing on a full disk
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise disk_full(dst.parent) from exc
        raise
    finally:
        container.close()
        for tmp in (tmp_video, tmp_csv):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return VideoResult(frames, with_faces, frames / fps, dst, csv_path_for(dst), cancelled, warning)


def _scaled(image: np.ndarray) -> np.ndarray:
    """Scale to at most MAX_SIDE and even dimensions (H.264 in yuv420p needs even width and height)."""
    h, w = image.shape[:2]
    scale = min(1.0, MAX_SIDE / max(h, w))
    size = (_even(int(w * scale)), _even(int(h * scale)))
    return image if size == (w, h) else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _encoder(out: av.container.OutputContainer, image: np.ndarray, fps: float) -> av.video.stream.VideoStream:
    stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height = image.shape[1], image.shape[0]
    stream.pix_fmt = "yuv420p"
    stream.options = {"preset": "veryfast", "crf": "23"}
    return stream
