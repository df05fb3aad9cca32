"""Image and landmark metrics for ``benchmarks/quality.py``.

Everything here works on plain arrays: RGB uint8 images and ``(478, 3)`` MediaPipe landmark
arrays in pixels. The face descriptor needs the optional ``bench`` extra (dlib-bin and
face_recognition_models); the rest needs only avatarcam's own dependencies.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np

from avatarcam import landmarks as lm

# SSIM as ``skimage.metrics.structural_similarity(a, b, channel_axis=2, data_range=255)``
# computes it by default: per RGB channel, 7x7 uniform window, sample covariance, constants
# of Wang et al. 2004, the mean skipping the 3-pixel border. OpenCV's box filter does the
# same sums ~10x faster than skimage.
SSIM_WINDOW = 7
_C1 = 0.01 ** 2
_C2 = 0.03 ** 2


def _box(img: np.ndarray, window: int) -> np.ndarray:
    return cv2.blur(img, (window, window), borderType=cv2.BORDER_REFLECT)


def ssim_map(a: np.ndarray, b: np.ndarray, window: int = SSIM_WINDOW) -> np.ndarray:
    """Per-pixel SSIM of two RGB uint8 images of one size, averaged over the channels.
    Its mean over :func:`ssim_valid` is skimage's number."""
    return FrameComparer(b, window=window).ssim_map(a)


def ssim_valid(shape: tuple[int, ...], window: int = SSIM_WINDOW) -> np.ndarray:
    """The pixels skimage averages SSIM over: all but a border of half a window."""
    pad = (window - 1) // 2
    valid = np.zeros(shape[:2], bool)
    valid[pad:shape[0] - pad, pad:shape[1] - pad] = True
    return valid


def face_mask(points: np.ndarray, shape: tuple[int, ...], grow: float = 1.1) -> np.ndarray:
    """Boolean mask of the convex hull of ``points`` grown by ``grow`` about its centroid."""
    xy = points[:, :2].astype(np.float32)
    hull = cv2.convexHull(xy).reshape(-1, 2)
    moments = cv2.moments(hull)
    centre = (np.array([moments["m10"], moments["m01"]]) / moments["m00"]) if moments["m00"] > 0 else hull.mean(axis=0)
    grown = (hull - centre) * grow + centre
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(grown * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


class FrameComparer:
    """Scores images against one real frame: L1 (mean absolute error over RGB, 0..1),
    MSE (RGB 0..1, for PSNR) and SSIM, over the whole frame and, when ``mask`` is given,
    over the masked pixels only (``face_*``). The real frame's SSIM statistics are computed
    once and shared by every method compared with it."""

    def __init__(self, real: np.ndarray, mask: np.ndarray | None = None, window: int = SSIM_WINDOW) -> None:
        self.real = real
        self.window = window
        x = real.astype(np.float32) * np.float32(1 / 255)
        self._x = x
        self._mx = _box(x, window)
        self._cov = np.float32(window * window / (window * window - 1.0))  # sample covariance
        self._vx = self._cov * (_box(x * x, window) - self._mx * self._mx)
        valid = ssim_valid(real.shape, window)
        self._valid = valid.astype(np.uint8)
        self._mask = mask.astype(np.uint8) if mask is not None and mask.any() else None
        self._mask_valid = (self._mask & self._valid) if self._mask is not None else None

    def ssim_map(self, output: np.ndarray) -> np.ndarray:
        y = output.astype(np.float32) * np.float32(1 / 255)
        w, mx, cov = self.window, self._mx, self._cov
        my = _box(y, w)
        vy = _box(y * y, w)
        vy -= my * my
        vy *= cov
        cxy = _box(self._x * y, w)
        cxy -= mx * my
        cxy *= 2 * cov
        cxy += _C2
        vy += self._vx
        vy += _C2
        mxy = mx * my
        mxy *= 2
        mxy += _C1
        num = mxy * cxy
        my *= my
        my += mx * mx
        my += _C1
        my *= vy
        num /= my
        return num.mean(axis=2)

    def __call__(self, output: np.ndarray) -> dict[str, float]:
        err = cv2.absdiff(output, self.real)
        sq = err.astype(np.float32)
        sq *= sq
        s = self.ssim_map(output)
        scale, scale2 = 1 / 255, 1 / 255 ** 2
        out = {"l1": float(err.mean()) * scale, "mse": float(sq.mean()) * scale2,
               "ssim": cv2.mean(s, self._valid)[0]}
        if self._mask is not None:
            out.update(face_l1=float(np.mean(cv2.mean(err, self._mask)[:3])) * scale,
                       face_mse=float(np.mean(cv2.mean(sq, self._mask)[:3])) * scale2,
                       face_ssim=cv2.mean(s, self._mask_valid)[0])
        return out


def image_scores(output: np.ndarray, real: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """:class:`FrameComparer` for a single pair."""
    return FrameComparer(real, mask)(output)


def psnr(mse: float) -> float:
    """PSNR in dB for data in 0..1."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


def akd(points: np.ndarray, reference: np.ndarray, size: tuple[int, int]) -> float:
    """Mean distance of corresponding landmarks, in pixels of the frame resized to 256x256."""
    w, h = size
    d = (points[:, :2] - reference[:, :2]) * np.array([256.0 / w, 256.0 / h])
    return float(np.linalg.norm(d, axis=1).mean())


def motion_signals(points: np.ndarray) -> np.ndarray:
    """The five motion signals of one face: mouth opening, eye opening, yaw, pitch, roll."""
    yaw, pitch, roll = lm.head_angles(points)
    return np.array([lm.mouth_opening(points), lm.eye_opening(points), yaw, pitch, roll])


SIGNALS = ("mouth", "eyes", "yaw", "pitch", "roll")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two series; 0 when either is constant (a still output carries no motion),
    NaN when fewer than three samples exist."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if den < 1e-12:
        return 0.0
    return float((a * b).sum() / den)


def signal_correlations(driver: list[np.ndarray | None], output: list[np.ndarray | None]) -> dict[str, float]:
    """Pearson r per motion signal over the frames where both faces were found."""
    pairs = [(motion_signals(d), motion_signals(o)) for d, o in zip(driver, output) if d is not None and o is not None]
    if not pairs:
        return {k: float("nan") for k in SIGNALS}
    ds = np.array([p[0] for p in pairs])
    os_ = np.array([p[1] for p in pairs])
    return {k: pearson(ds[:, i], os_[:, i]) for i, k in enumerate(SIGNALS)}


def jitter(track: list[np.ndarray | None]) -> float:
    """High-frequency landmark motion: the mean size of the second difference
    ``|p[t-1] - 2 p[t] + p[t+1]|`` of each landmark over consecutive frames with a face,
    in percent of the face width. Smooth motion scores near 0, shimmer scores high."""
    values = []
    for prev, cur, nxt in zip(track, track[1:], track[2:]):
        if prev is None or cur is None or nxt is None:
            continue
        second = prev[:, :2] - 2 * cur[:, :2] + nxt[:, :2]
        values.append(float(np.linalg.norm(second, axis=1).mean()) / max(lm.face_width(cur), 1e-6))
    return 100.0 * float(np.mean(values)) if values else float("nan")


class DelaunayWarp:
    """The naive reference: a piecewise-affine warp of one image over the Delaunay
    triangulation of its 478 landmarks plus the frame's corners and edge midpoints (which
    stay put), driven by target landmark positions."""

    def __init__(self, image: np.ndarray, points: np.ndarray) -> None:
        from scipy.spatial import Delaunay

        h, w = image.shape[:2]
        self.image = image
        frame = np.array([(0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1),
                          ((w - 1) / 2, 0), (w - 1, (h - 1) / 2), ((w - 1) / 2, h - 1), (0, (h - 1) / 2)], float)
        self._frame = frame
        self.src = np.vstack([points[:, :2], frame])
        self.triangles = Delaunay(self.src).simplices.astype(np.int32)
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        self._xy1 = np.stack([gx, gy, np.ones_like(gx)], axis=-1)

    def warp(self, points: np.ndarray) -> np.ndarray:
        h, w = self.image.shape[:2]
        dst = np.vstack([points[:, :2], self._frame])
        ids = np.full((h, w), -1, np.int32)
        for k, tri in enumerate(np.round(dst[self.triangles] * 16).astype(np.int32)):
            cv2.fillConvexPoly(ids, tri, k, cv2.LINE_8, shift=4)
        # Per triangle, the affine map (rows for x, y, 1) taking its target corners to its source corners.
        a = np.concatenate([dst[self.triangles], np.ones((len(self.triangles), 3, 1))], axis=2)
        flat = np.abs(np.linalg.det(a)) < 1e-9  # collapsed: show its first corner
        a[flat] = np.eye(3)
        maps = np.linalg.solve(a, self.src[self.triangles]).astype(np.float32)
        maps[flat] = 0.0
        maps[flat, 2] = self.src[self.triangles[flat, 0]]
        covered = ids >= 0
        src = self._xy1[..., :2].copy()
        src[covered] = np.einsum("nk,nkj->nj", self._xy1[covered], maps[ids[covered]])
        return cv2.remap(self.image, src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class FlowOracle:
    """A reference no live method can match: the first frame warped by dense optical flow
    (OpenCV's DIS) computed from each real frame back to the first, so the warp sees the
    answer. It shows roughly how close a warp of the first frame can come when its
    correspondences are as good as photometric flow finds; what it still misses (the
    inside of an opened mouth, lighting, a descriptor's view of the face) no warp of the
    first frame brings."""

    def __init__(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        self.image = image
        self._gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self._gx, self._gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))

    def warp(self, real: np.ndarray) -> np.ndarray:
        # For each pixel of the real frame, where it lies in the first frame.
        flow = self._flow.calc(cv2.cvtColor(real, cv2.COLOR_RGB2GRAY), self._gray, None)
        return cv2.remap(self.image, self._gx + flow[..., 0], self._gy + flow[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)


class FaceMeshDetector:
    """One MediaPipe Face Mesh in static-image mode (every frame detected afresh, no
    tracking between frames), used to re-detect landmarks in real and rendered frames."""

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        from avatarcam.tracking import _mediapipe_face_mesh

        self._mesh = _mediapipe_face_mesh().FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=min_detection_confidence)
        self.calls = 0

    def __call__(self, image: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray | None:
        """Landmarks (478, 3) in pixels of ``image``, or None; ``box`` (x0, y0, x1, y1)
        restricts the search to that part of the image (a small face in a big painting)."""
        self.calls += 1
        x0, y0 = 0, 0
        crop = image
        if box is not None:
            x0, y0, x1, y1 = box
            crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        result = self._mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        ch, cw = crop.shape[:2]
        pts = np.array([(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark], np.float64)
        return pts * np.array([cw, ch, cw]) + np.array([x0, y0, 0.0])

    def close(self) -> None:
        self._mesh.close()


def search_box(points: np.ndarray, size: tuple[int, int], factor: float = 2.5) -> tuple[int, int, int, int]:
    """A square around a face ``factor`` times its landmarks' extent, inside the image."""
    w, h = size
    lo, hi = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    c = (lo + hi) / 2
    half = factor * float((hi - lo).max()) / 2
    x0, y0 = int(max(0, c[0] - half)), int(max(0, c[1] - half))
    x1, y1 = int(min(w, c[0] + half)), int(min(h, c[1] + half))
    return x0, y0, x1, y1


def dlib_available() -> bool:
    return importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None


class FaceDescriptor:
    """dlib's 128-d face descriptor (ResNet from face_recognition_models). Two photos of
    one person are usually closer than 0.6 (dlib's same-person threshold).

    The face box comes from MediaPipe landmarks, not dlib's own detector: the same box
    rule on real and rendered frames, and a quarter of the cost. dlib's 5-point shape
    model then aligns the face chip as usual.
    """

    def __init__(self) -> None:
        import dlib

        # face_recognition_models' __init__ imports pkg_resources (missing on new setuptools);
        # only its data files are needed, so find them without importing the package.
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("face_recognition_models is not installed")
        models = Path(next(iter(spec.submodule_search_locations))) / "models"
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def __call__(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        """The descriptor of the face whose MediaPipe landmarks are ``points``."""
        xy = points[:, :2]
        # A square over brows to chin and cheek to cheek, like dlib's detector's boxes.
        x0, x1 = xy[:, 0].min(), xy[:, 0].max()
        y0, y1 = xy[lm.RIGHT_BROW + lm.LEFT_BROW, 1].min(), xy[lm.CHIN, 1]
        side = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        rect = self._dlib.rectangle(int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
        img = np.ascontiguousarray(image)
        shape = self._shape(img, rect)
        return np.array(self._net.compute_face_descriptor(img, shape))
