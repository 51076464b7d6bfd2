"""Drawing on frames: face boxes, captions and a status banner, in place on BGR arrays."""

from __future__ import annotations

import cv2
import numpy as np

from expr_core.vision.faces import Face

GREEN = (80, 200, 60)
RED = (40, 40, 230)
WHITE = (255, 255, 255)
UNCLASSIFIED = (255, 255, 0)  # a face not read yet: cyan, unlike every label's colour and rare in a face photo
FONT = cv2.FONT_HERSHEY_SIMPLEX
BAR_CHARS = 5  # the confidence bar is as wide as this many caption characters


def draw_face(
    frame: np.ndarray,
    face: Face,
    color: tuple[int, int, int] = GREEN,
    caption: str | None = None,
    confidence: float | None = None,
    keep_clear: int = 0,
) -> None:
    """A box around the face, and a filled caption (with a confidence bar when given) above it.

    The caption stays whole inside the frame: shifted left at the right edge, and put below the box's top
    edge when there is no room above it (``keep_clear`` rows at the top are the banner's).
    """
    x, y, w, h = face.box
    thickness = max(2, frame.shape[1] // 320)
    cv2.rectangle(frame, (x, y), (x + w, y + h), color, thickness)
    if not caption:
        return
    scale = max(0.5, frame.shape[1] / 1280)
    (tw, th), base = cv2.getTextSize(caption, FONT, scale, 1)
    bar = 0 if confidence is None else cv2.getTextSize("#" * BAR_CHARS, FONT, scale, 1)[0][0]
    width, height = tw + 8 + (bar + 6 if bar else 0), th + base + 6
    left = max(0, min(x, frame.shape[1] - width))
    top = y - height if y - height >= keep_clear else min(max(y, keep_clear), frame.shape[0] - height)
    cv2.rectangle(frame, (left, top), (left + width, top + height), color, -1)
    cv2.putText(frame, caption, (left + 4, top + th + 3), FONT, scale, WHITE, 1, cv2.LINE_AA)
    if bar and confidence is not None:
        x0, y0, y1 = left + tw + 10, top + 4, top + height - 4
        cv2.rectangle(frame, (x0, y0), (x0 + bar, y1), WHITE, 1)
        filled = int(round(bar * min(max(confidence, 0.0), 1.0)))
        if filled:
            cv2.rectangle(frame, (x0, y0), (x0 + filled, y1), WHITE, -1)


def banner_height(frame: np.ndarray, text: str) -> int:
    """How many rows at the top :func:`draw_banner` covers."""
    (_, th), base = cv2.getTextSize(text, FONT, max(0.6, frame.shape[1] / 900), 2)
    return th + base + 12


def draw_banner(frame: np.ndarray, text: str, color: tuple[int, int, int] = RED) -> None:
    """A status line across the top of the frame (recording state, frame rate)."""
    scale = max(0.6, frame.shape[1] / 900)
    (_, th), _ = cv2.getTextSize(text, FONT, scale, 2)
    cv2.rectangle(frame, (0, 0), (frame.shape[1], banner_height(frame, text)), color, -1)
    cv2.putText(frame, text, (8, th + 6), FONT, scale, WHITE, 2, cv2.LINE_AA)


def draw_countdown(frame: np.ndarray, seconds_left: float) -> None:
    """A large countdown number in the middle of the frame before a burst starts."""
    text = str(int(seconds_left) + 1)
    scale = frame.shape[0] / 120
    (tw, th), _ = cv2.getTextSize(text, FONT, scale, 8)
    org = ((frame.shape[1] - tw) // 2, (frame.shape[0] + th) // 2)
    cv2.putText(frame, text, org, FONT, scale, WHITE, 8, cv2.LINE_AA)
