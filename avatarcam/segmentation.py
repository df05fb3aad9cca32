"""Person/background layers of a still photo, made once when an avatar is prepared.

MediaPipe's selfie segmentation (shipped in the mediapipe wheel) gives the person's
soft mask; the background behind the person is then filled in, so an engine that moves
the head can show background where the head used to be instead of smeared pixels.
"""
from __future__ import annotations

import os

import cv2
import numpy as np


def person_mask(image: np.ndarray, face_points: np.ndarray | None = None) -> np.ndarray:
    """Soft person mask of an RGB photo, float32 in [0, 1], same height and width.

    Paintings and grey photos are segmented less surely than webcam frames, so when the
    face's landmarks are given the face itself is always counted as person (MediaPipe
    sometimes misses a pale forehead against a pale wall).
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    from mediapipe.python.solutions import selfie_segmentation

    rgb = np.ascontiguousarray(image[..., :3])
    # The general model (256x256) handles head-and-shoulders portraits of any framing;
    # the landscape one is for 16:9 webcam frames.
    with selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        mask = seg.process(rgb).segmentation_mask
    mask = np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
    if face_points is not None:
        hull = cv2.convexHull(np.round(face_points[:, :2]).astype(np.int32))
        face = np.zeros(mask.shape, np.uint8)
        cv2.fillConvexPoly(face, hull, 1)
        mask = np.maximum(mask, face.astype(np.float32))
    # A little softening removes the model's 256-px staircase on large photos.
    k = max(3, round(min(mask.shape) / 256) * 2 + 1)
    return cv2.GaussianBlur(mask, (k, k), 0)


def fill_background(image: np.ndarray, mask: np.ndarray, work_size: int = 256) -> np.ndarray:
    """The photo with the person removed: the area under (a grown) ``mask`` is filled in
    from the surrounding background, RGB uint8. Pixels well outside the person keep their
    exact values, so a still background stays exactly as in the photo.

    The fill runs on a downscaled copy (inpainting cost grows with the area filled) and
    is blurred, since behind a head any sharp detail would be invented anyway; only near
    the person's outline, which a moving head uncovers, the background's own colours and
    grain are continued into it, mirrored.
    """
    h, w = mask.shape
    hard = (mask > 0.05).astype(np.uint8)
    grow = max(3, int(0.01 * max(h, w)))
    hole = cv2.dilate(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    if not hole.any():
        return image.copy()
    if hole.all():  # no background visible at all: a flat fill of the photo's mean colour
        return np.broadcast_to(image.reshape(-1, 3).mean(axis=0).astype(np.uint8), image.shape).copy()
    scale = min(1.0, work_size / max(h, w))
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA).astype(np.float32)
    small_hole = cv2.resize(hole, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_NEAREST)
    small_hole = cv2.dilate(small_hole, np.ones((3, 3), np.uint8))
    filled = push_pull_fill(small, 1.0 - small_hole.astype(np.float32))
    filled = cv2.resize(filled, (w, h), interpolation=cv2.INTER_CUBIC)
    # Near the person, where a moving head uncovers it, the background continues as a
    # mirror image of itself across the person's outline: a smooth fill there showed as a
    # flat band of an averaged colour round the head (a glow on dark backgrounds).
    filled = _mirror_into(image, hole, filled, reach=0.12 * max(h, w), smooth=0.02 * max(h, w))
    # Feather the fill into the real background over a few pixels.
    blend = cv2.GaussianBlur(hole.astype(np.float32), (0, 0), grow / 3)[..., None]
    blend = np.maximum(blend, hole[..., None].astype(np.float32))
    out = image.astype(np.float32) * (1.0 - blend) + filled.astype(np.float32) * blend
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _mirror_into(image: np.ndarray, hole: np.ndarray, fill: np.ndarray, reach: float, smooth: float,
                 work_size: int = 1024) -> np.ndarray:
    """``fill`` (float32, same size as ``image``) with the background mirrored into
    ``hole`` across its nearest edge: in full at the edge, fading out ``reach`` pixels into
    the hole. The mirror follows the edge smoothed over ``smooth`` pixels (mirrored across
    each pixel's own nearest edge point, a ragged outline fanned the background into
    spikes); where it would show another part of the hole or fall outside the photo,
    ``fill`` shows. The mirror's geometry is worked out at most ``work_size`` pixels wide,
    the photo sampled at its own size."""
    h, w = hole.shape
    scale = min(1.0, work_size / max(h, w))
    small = cv2.resize(hole, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale < 1.0 else hole
    sh, sw = small.shape
    dist, labels = cv2.distanceTransformWithLabels(small, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(small == 0)
    nearest = np.zeros((int(labels.max()) + 1, 2), np.float32)
    nearest[labels[ys, xs]] = np.column_stack([xs, ys])
    edge = cv2.GaussianBlur(nearest[labels], (0, 0), max(smooth * scale, 0.5))
    gy, gx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    mx, my = 2.0 * edge[..., 0] - gx, 2.0 * edge[..., 1] - gy
    inside = (mx >= 0) & (mx <= sw - 1) & (my >= 0) & (my <= sh - 1)
    seen = small[np.clip(np.rint(my), 0, sh - 1).astype(int), np.clip(np.rint(mx), 0, sw - 1).astype(int)] == 0
    weight = (inside & seen).astype(np.float32) * np.clip(1.0 - dist / (reach * scale), 0.0, 1.0)
    weight = cv2.GaussianBlur(weight, (0, 0), max(smooth * scale / 2, 0.5))
    if scale < 1.0:
        # Pixel centres: small pixel i covers photo pixels around (i + 0.5) / scale - 0.5.
        mx, my, weight = (cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR) for a in (mx, my, weight))
        mx, my = (mx + 0.5) / scale - 0.5, (my + 0.5) / scale - 0.5
    mirrored = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    weight = weight[..., None]
    return fill * (1.0 - weight) + mirrored * weight


def push_pull_fill(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill the pixels where ``valid`` is 0 smoothly from those where it is 1 (push-pull:
    a mask-weighted image pyramid averaged down, then filled back up). float32 in and out.

    Unlike diffusion inpainting it leaves no radial streaks across a large hole."""
    levels = []
    img = image.astype(np.float32) * valid[..., None]
    weight = valid.astype(np.float32)
    while min(weight.shape) > 2:
        levels.append((img, weight))
        img = cv2.pyrDown(img)
        weight = cv2.pyrDown(weight)
    filled = img.sum(axis=(0, 1)) / max(float(weight.sum()), 1e-6) * np.ones_like(img)
    for img, weight in reversed(levels):
        up = cv2.resize(filled, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        known = np.clip(weight, 0.0, 1.0)[..., None]
        mean = img / np.maximum(weight, 1e-6)[..., None]
        filled = known * mean + (1.0 - known) * up
    return filled


_NEIGHBOURS = np.array([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]], np.float32)


def membrane_fill(image: np.ndarray, unknown: np.ndarray, sweeps: int = 40) -> np.ndarray:
    """Fill the pixels where ``unknown`` is true with the smoothest surface that meets the
    known pixels around them (each filled pixel the mean of its four neighbours), so the
    fill joins its surroundings without an edge, unlike :func:`push_pull_fill`'s. float32
    in and out; only the box around the unknown pixels is worked on.

    Solved coarse to fine: each level is relaxed by ``sweeps`` Jacobi sweeps from the one
    below it, upsampled, so a hole of any size costs a few times its area."""
    out = image.astype(np.float32)
    ys, xs = np.nonzero(unknown)
    if len(ys) in (0, unknown.size):
        return out
    h, w = unknown.shape
    # A margin a quarter of the hole's size keeps known pixels around it on coarse levels.
    m = 2 + max(ys.max() - ys.min(), xs.max() - xs.min()) // 4
    y0, y1 = max(ys.min() - m, 0), min(ys.max() + m + 1, h)
    x0, x1 = max(xs.min() - m, 0), min(xs.max() + m + 1, w)
    box = np.s_[y0:y1, x0:x1]
    out[box] = _relax(out[box], np.ascontiguousarray(unknown[box]), sweeps)
    return out


def _relax(image: np.ndarray, unknown: np.ndarray, sweeps: int) -> np.ndarray:
    known = (~unknown).astype(np.float32)
    shape = unknown.shape + (1,) * (image.ndim - 2)
    start = None
    if min(unknown.shape) > 8:
        # A coarse pixel is known where at least half the fine pixels it averages are, as
        # their mean (known only where all are, a level often had none; where any is, the
        # means lean away from the hole).
        weight = cv2.pyrDown(known)
        if (weight > 0.5).any():
            coarse = cv2.pyrDown(image * known.reshape(shape)) / np.maximum(weight, 1e-3).reshape(weight.shape + shape[2:])
            coarse = _relax(coarse, weight <= 0.5, sweeps)
            start = cv2.pyrUp(coarse, dstsize=(image.shape[1], image.shape[0])).reshape(image.shape)
    if start is None:
        start = np.broadcast_to(image[~unknown].mean(axis=0), image.shape)
    out = image.copy()
    out[unknown] = start[unknown]
    for _ in range(sweeps):
        around = cv2.filter2D(out, -1, _NEIGHBOURS, borderType=cv2.BORDER_REPLICATE)
        out[unknown] = around[unknown]
    return out
