"""Framing: which part of the avatar photo fills the output frame, and at what scale."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Framing:
    """Output pixel ``p`` shows avatar-photo point ``p * scale + offset``."""

    output_size: tuple[int, int]  # (width, height)
    scale: float
    offset: tuple[float, float]
    # Letterboxing: the output rectangle (x0, y0, x1, y1) the photo fills; black outside.
    picture_box: tuple[int, int, int, int] | None = None

    def to_avatar(self, points: np.ndarray) -> np.ndarray:
        return points * self.scale + np.asarray(self.offset)

    def to_output(self, points: np.ndarray) -> np.ndarray:
        return (points - np.asarray(self.offset)) / self.scale

    @classmethod
    def native(cls, avatar_size: tuple[int, int]) -> "Framing":
        """The photo's own size and framing."""
        return cls(avatar_size, 1.0, (0.0, 0.0))

    @classmethod
    def contain(cls, avatar_size: tuple[int, int], output_size: tuple[int, int]) -> "Framing":
        """The whole photo, as large as fits, centred, with black bars (letterbox or pillarbox)
        where the output's shape differs from the photo's; never stretched."""
        aw, ah = avatar_size
        ow, oh = output_size
        scale = max(aw / ow, ah / oh)  # photo pixels per output pixel
        shown_w, shown_h = aw / scale, ah / scale
        x0, y0 = (ow - shown_w) / 2, (oh - shown_h) / 2
        box = (round(x0), round(y0), round(x0 + shown_w), round(y0 + shown_h))
        return cls(output_size, scale, (0.5 * scale - 0.5 - x0 * scale, 0.5 * scale - 0.5 - y0 * scale), box)

    def add_bars(self, image: np.ndarray) -> np.ndarray:
        """``image`` (of the output size) with black outside ``picture_box``, in place."""
        if self.picture_box is not None:
            x0, y0, x1, y1 = self.picture_box
            image[:y0] = 0
            image[y1:] = 0
            image[:, :x0] = 0
            image[:, x1:] = 0
        return image

    @classmethod
    def cover(cls, avatar_size: tuple[int, int], output_size: tuple[int, int],
              face_box: tuple[float, float, float, float], face_fraction: float = 0.4) -> "Framing":
        """Fill ``output_size`` without distortion, centred on the face, as a webcam frames
        a person: the face is at most ``1/face_fraction`` times smaller than the frame
        height (zooming in on small faces in large paintings), never zoomed past the photo."""
        aw, ah = avatar_size
        ow, oh = output_size
        x0, y0, x1, y1 = face_box
        # Largest crop of the output's aspect inside the photo ...
        crop_h = min(ah, aw * oh / ow)
        # ... tightened so a small face is not lost in a big painting.
        crop_h = min(crop_h, (y1 - y0) / face_fraction)
        crop_w = crop_h * ow / oh
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.05 * crop_h  # a little headroom above the face
        left = float(np.clip(cx - crop_w / 2, 0, max(aw - crop_w, 0)))
        top = float(np.clip(cy - crop_h / 2, 0, max(ah - crop_h, 0)))
        scale = crop_h / oh
        # Output pixel centres map onto crop pixel centres.
        return cls(output_size, scale, (left + 0.5 * scale - 0.5, top + 0.5 * scale - 0.5))
