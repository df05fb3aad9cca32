"""The neural engine's input: MediaPipe's 478 points drawn as the paper's landmark image
(one coloured polyline per facial part on black), and the square face crop it is drawn in.

Training (``avatarcam_train``) and the runtime (``avatarcam.engines.neural``) both use this
module, so the images the generator learnt from and the ones it sees live cannot drift apart.
numpy and OpenCV only.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatarcam import landmarks as lm

# Bump when the drawing changes: a model trained on other images must not be used.
SPEC_VERSION = 1


def _ring(start: int, upper: tuple[int, ...], end: int, lower: tuple[int, ...]) -> tuple[int, ...]:
    return (start,) + upper + (end,) + tuple(reversed(lower))


# (name, point indices, closed, RGB colour): one polyline each, as the paper colours the
# parts of its 68-point landmarks differently so the network can tell them apart.
PARTS: tuple[tuple[str, tuple[int, ...], bool, tuple[int, int, int]], ...] = (
    ("face_oval", lm.FACE_OVAL, True, (255, 255, 255)),
    ("right_brow_lower", lm.RIGHT_BROW[:5], False, (255, 160, 0)),
    ("right_brow_upper", lm.RIGHT_BROW[5:], False, (255, 160, 0)),
    ("left_brow_lower", lm.LEFT_BROW[:5], False, (255, 220, 60)),
    ("left_brow_upper", lm.LEFT_BROW[5:], False, (255, 220, 60)),
    ("nose_bridge", (168, 6, 197, 195, 5, 4, 1), False, (0, 200, 255)),
    ("nose_base", (98, 97, 2, 326, 327), False, (0, 110, 255)),
    ("right_eye", _ring(lm.RIGHT_EYE_CORNERS[0], lm.RIGHT_EYE_UPPER, lm.RIGHT_EYE_CORNERS[1], lm.RIGHT_EYE_LOWER),
     True, (0, 255, 120)),
    ("left_eye", _ring(lm.LEFT_EYE_CORNERS[0], lm.LEFT_EYE_UPPER, lm.LEFT_EYE_CORNERS[1], lm.LEFT_EYE_LOWER),
     True, (150, 255, 0)),
    ("outer_lips", _ring(lm.MOUTH_CORNERS[0], lm.OUTER_LIP_UPPER, lm.MOUTH_CORNERS[1], lm.OUTER_LIP_LOWER),
     True, (255, 0, 90)),
    ("inner_lips", lm.INNER_LIPS_RING, True, (200, 0, 255)),
)
IRIS_COLOR = (255, 60, 60)


def spec() -> dict:
    """What a model records about the images it was trained on."""
    return {"version": SPEC_VERSION, "parts": [p[0] for p in PARTS], "iris": True, "background": "black"}


def draw_landmark_image(points: np.ndarray, size: int) -> np.ndarray:
    """The landmark image (size, size, 3) RGB uint8 of 478 points given in its pixels."""
    image = np.zeros((size, size, 3), np.uint8)
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    thickness = max(1, round(size / 128))
    shift = 4  # sub-pixel coordinates: small motions still change the image
    for _, ids, closed, color in PARTS:
        poly = np.round(xy[list(ids)] * (1 << shift)).astype(np.int32)
        cv2.polylines(image, [poly], closed, color, thickness, cv2.LINE_AA, shift)
    for iris in (lm.RIGHT_IRIS, lm.LEFT_IRIS):
        centre = xy[iris[0]]
        radius = float(np.mean(np.linalg.norm(xy[list(iris[1:])] - centre, axis=1)))
        c = tuple(int(v) for v in np.round(centre * (1 << shift)))
        cv2.circle(image, c, max(round(radius * (1 << shift)), 1), IRIS_COLOR, thickness, cv2.LINE_AA, shift)
    return image


@dataclass(frozen=True)
class FaceCrop:
    """A square region of an image around a face: ``x0, y0`` top-left and ``side`` in image
    pixels, mapped onto a ``size`` x ``size`` crop."""

    x0: float
    y0: float
    side: float
    size: int

    @classmethod
    def around(cls, points: np.ndarray, size: int, margin: float = 1.7) -> FaceCrop:
        """The square centred on the face oval, ``margin`` times its larger extent (room for
        hair and chin)."""
        oval = np.asarray(points, dtype=np.float64)[list(lm.FACE_OVAL), :2]
        lo, hi = oval.min(axis=0), oval.max(axis=0)
        centre = (lo + hi) / 2
        side = max(float((hi - lo).max()) * margin, 8.0)
        return cls(float(centre[0] - side / 2), float(centre[1] - side / 2), side, int(size))

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return self.size / self.side

    def matrix(self) -> np.ndarray:
        """2x3 affine from image pixels to crop pixels."""
        s = self.scale
        return np.array([[s, 0.0, -self.x0 * s], [0.0, s, -self.y0 * s]])

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        out = np.array(points, dtype=np.float64, copy=True)
        out[:, :2] = (out[:, :2] - (self.x0, self.y0)) * self.scale
        if out.shape[1] > 2:
            out[:, 2:] *= self.scale
        return out

    def to_image(self, points: np.ndarray) -> np.ndarray:
        out = np.array(points, dtype=np.float64, copy=True)
        out[:, :2] = out[:, :2] / self.scale + (self.x0, self.y0)
        return out

    def cut(self, image: np.ndarray) -> np.ndarray:
        """The crop of ``image`` (edges replicated where the square leaves the image)."""
        interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        return cv2.warpAffine(image, self.matrix(), (self.size, self.size), flags=interp,
                              borderMode=cv2.BORDER_REPLICATE)

    def paste(self, crop: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
        """Blend ``crop`` (size x size) back into ``target`` (the image the crop was cut from)
        in place, through ``mask`` (size x size, float in [0, 1]). Only the square's pixels
        are touched."""
        h, w = target.shape[:2]
        x0, y0 = max(int(np.floor(self.x0)), 0), max(int(np.floor(self.y0)), 0)
        x1, y1 = min(int(np.ceil(self.x0 + self.side)) + 1, w), min(int(np.ceil(self.y0 + self.side)) + 1, h)
        if x1 <= x0 or y1 <= y0:
            return
        to_crop = self.matrix() @ np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])  # ROI -> crop
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        face = cv2.warpAffine(crop, to_crop, (x1 - x0, y1 - y0), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(mask.astype(np.float32), to_crop, (x1 - x0, y1 - y0), flags=flags,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        roi = target[y0:y1, x0:x1]
        roi[:] = cv2.blendLinear(face, np.ascontiguousarray(roi), alpha, 1.0 - alpha)


def face_mask(points_in_crop: np.ndarray, size: int, grow: float = 1.08, feather: float = 0.04) -> np.ndarray:
    """Soft mask (size, size) float32 of the face oval, grown a little about its centre and
    feathered, for pasting the generated face back."""
    oval = np.asarray(points_in_crop, dtype=np.float64)[list(lm.FACE_OVAL), :2]
    centre = oval.mean(axis=0)
    oval = centre + (oval - centre) * grow
    mask = np.zeros((size, size), np.float32)
    cv2.fillPoly(mask, [np.round(oval * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    k = max(3, round(feather * size) * 2 + 1)
    return cv2.GaussianBlur(mask, (k, k), 0)


def to_network(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return (np.transpose(image, (2, 0, 1)).astype(np.float32) / 127.5) - 1.0


def from_network(tensor: np.ndarray) -> np.ndarray:
    """float (3, H, W) in [-1, 1] -> RGB uint8 (H, W, 3)."""
    return np.clip((np.transpose(tensor, (1, 2, 0)) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
