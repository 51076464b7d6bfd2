"""Drawing on frames: face boxes, captions and a status banner, in place on BGR arrays."""

from __future__ import annotations

import cv2
import numpy as np

from expr_core.vision.faces import Face

GREEN = (80, 200, 60)
RED = (40, 40, 230)
WHITE = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_face(frame: np.ndarray, face: Face, color: tuple[int, int, int] = GREEN, caption: str | None = None) -> None:
    """A box around the face, and a filled caption bar above it (below it at the top edge)."""
    x, y, w, h = face.box
    thickness = max(2, frame.shape[1] // 320)
    cv2.rectangle(frame, (x, y), (x + w, y + h), color, thickness)
    if caption:
        scale = max(0.5, frame.shape[1] / 1280)
        (tw, th), base = cv2.getTextSize(caption, FONT, scale, 1)
        top = y - th - base - 6 if y - th - base - 6 >= 0 else y + h
        cv2.rectangle(frame, (x, top), (x + tw + 8, top + th + base + 6), color, -1)
        cv2.putText(frame, caption, (x + 4, top + th + 3), FONT, scale, WHITE, 1, cv2.LINE_AA)


def draw_banner(frame: np.ndarray, text: str, color: tuple[int, int, int] = RED) -> None:
    """A status line across the top of the frame (recording state, frame rate)."""
    scale = max(0.6, frame.shape[1] / 900)
    (_, th), base = cv2.getTextSize(text, FONT, scale, 2)
    cv2.rectangle(frame, (0, 0), (frame.shape[1], th + base + 12), color, -1)
    cv2.putText(frame, text, (8, th + 6), FONT, scale, WHITE, 2, cv2.LINE_AA)


def draw_countdown(frame: np.ndarray, seconds_left: float) -> None:
    """A large countdown number in the middle of the frame before a burst starts."""
    text = str(int(seconds_left) + 1)
    scale = frame.shape[0] / 120
    (tw, th), _ = cv2.getTextSize(text, FONT, scale, 8)
    org = ((frame.shape[1] - tw) // 2, (frame.shape[0] + th) // 2)
    cv2.putText(frame, text, org, FONT, scale, WHITE, 8, cv2.LINE_AA)
