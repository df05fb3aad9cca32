"""The mesh-warp engine: renders the avatar photo warped onto the target landmarks.

The photo is covered by one fixed triangle mesh: MediaPipe's face tessellation, the eye
and mouth openings it leaves (eyes include the iris points, so gaze moves the iris), and
an outer mesh from the face outline through two rings of points (hair and ears, then
neck and background) to points pinned on the photo's border, which therefore never
moves. Each frame the target mesh is rasterised into a triangle-index image on a coarse
grid (far triangles first, turned-away ones dropped), every grid point gets its source
position from its triangle's affine map, and the dense map is upsampled and applied with
one ``cv2.remap``. The map is smooth inside triangles, so a grid of 4 px loses nothing
visible and costs a sixteenth of a per-pixel rasteriser.
"""
from __future__ import annotations

import cv2
import numpy as np

from avatarcam import landmarks as lm
from avatarcam.avatar import Avatar
from avatarcam.framing import Framing
from avatarcam.retarget import AvatarPose

VERSION = "warp-1"

_RIGHT_EYE_RING = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
_LEFT_EYE_RING = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
_INNER_LIPS_RING = lm.INNER_LIP_UPPER + tuple(reversed(lm.INNER_LIP_LOWER))
# How much of the head's motion each outer ring follows (hair/ears, then further out).
_RING_FACTORS = (1.35, 1.9)
_RING_WEIGHTS = (0.9, 0.45)


def _delaunay(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles of 2D points, as indices into ``points``."""
    lo = points.min(axis=0) - 10
    hi = points.max(axis=0) + 10
    subdiv = cv2.Subdiv2D((int(lo[0]), int(lo[1]), int(hi[0] - lo[0]) + 1, int(hi[1] - lo[1]) + 1))
    lookup = {}
    for i, p in enumerate(points):
        lookup[(round(float(p[0]), 3), round(float(p[1]), 3))] = i
        subdiv.insert((float(p[0]), float(p[1])))
    tris = []
    for t in subdiv.getTriangleList():
        idx = [lookup.get((round(float(t[2 * k]), 3), round(float(t[2 * k + 1]), 3))) for k in range(3)]
        if None not in idx:  # triangles touching Subdiv2D's virtual outer vertices
            tris.append(idx)
    return np.array(tris, dtype=np.int32).reshape(-1, 3)


def _inside(polygon: np.ndarray, point: np.ndarray) -> bool:
    return cv2.pointPolygonTest(polygon.astype(np.float32), (float(point[0]), float(point[1])), False) > 0


def _triangles_inside(points: np.ndarray, ids: np.ndarray, ring: tuple[int, ...], keep_inside: bool) -> np.ndarray:
    """Delaunay triangles over ``points[ids]`` whose centre is inside (or outside) ``ring``."""
    tris = ids[_delaunay(points[ids])]
    polygon = points[list(ring)]
    keep = [t for t in tris if _inside(polygon, points[t].mean(axis=0)) == keep_inside]
    return np.array(keep, dtype=np.int32).reshape(-1, 3)


def prepare(avatar: Avatar) -> dict[str, np.ndarray]:
    """The engine's per-avatar data: outer control points, their weights, the extra triangles."""
    w, h = avatar.size
    face = avatar.landmarks[:, :2]
    oval = face[list(lm.FACE_OVAL)]
    center = oval.mean(axis=0)
    chin_y = face[lm.CHIN, 1]
    min_gap = 0.06 * avatar.proportions["face_width"]
    # Rings keep clear of the border, so the triangles along it stretch only gently.
    edge_gap = max(min_gap, 8.0)

    border = []
    steps = 6
    for k in range(steps):
        t = k / steps
        border += [(t * (w - 1), 0), ((w - 1), t * (h - 1)), ((1 - t) * (w - 1), h - 1), (0, (1 - t) * (h - 1))]
    border = np.array(border, dtype=np.float64)

    outer: list[np.ndarray] = []
    weights: list[float] = []
    taken = [oval, border]
    for factor, weight, stride in zip(_RING_FACTORS, _RING_WEIGHTS, (1, 2)):
        for o in oval[::stride]:
            p = center + factor * (o - center)
            # Keep rings inside the photo, so the border's own points are the only ones on it.
            p = np.clip(p, edge_gap, [w - 1 - edge_gap, h - 1 - edge_gap])
            if min(np.linalg.norm(t - p, axis=1).min() for t in taken + ([np.array(outer)] if outer else [])) < min_gap:
                continue
            outer.append(p)
            # Below the chin lie neck and shoulders, which follow the head far less.
            below = np.clip((p[1] - chin_y) / max(avatar.proportions["face_height"], 1.0), 0.0, 1.0)
            weights.append(weight * (1.0 - 0.7 * below))
    outer_pts = np.array(outer, dtype=np.float64).reshape(-1, 2)
    extra = np.vstack([outer_pts, border])
    extra_w = np.concatenate([np.array(weights), np.zeros(len(border))])

    all_pts = np.vstack([face, extra])
    n = lm.NUM_LANDMARKS
    outer_ids = np.concatenate([np.array(lm.FACE_OVAL), np.arange(n, n + len(extra))])
    outside = _triangles_inside(all_pts, outer_ids, lm.FACE_OVAL, keep_inside=False)
    holes = [
        _triangles_inside(all_pts, np.array(_RIGHT_EYE_RING + lm.RIGHT_IRIS), _RIGHT_EYE_RING, True),
        _triangles_inside(all_pts, np.array(_LEFT_EYE_RING + lm.LEFT_IRIS), _LEFT_EYE_RING, True),
        _triangles_inside(all_pts, np.array(_INNER_LIPS_RING), _INNER_LIPS_RING, True),
    ]
    return {"points": extra.astype(np.float32), "weights": extra_w.astype(np.float32),
            "outer_triangles": outside, "hole_triangles": np.vstack(holes)}


def _affine_maps(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """For each triangle, the (3, 2) matrix taking ``[u, v, 1]`` in ``dst`` to ``src``.

    Closed-form inverse of the (3, 3) vertex matrices; ``np.linalg.solve`` on a thousand
    tiny systems costs ten times more. Degenerate triangles get a zero map: they cover
    no grid sample anyway."""
    (x0, y0), (x1, y1), (x2, y2) = dst[:, 0].T, dst[:, 1].T, dst[:, 2].T
    det = x0 * (y1 - y2) + x1 * (y2 - y0) + x2 * (y0 - y1)
    safe = np.where(np.abs(det) < 1e-9, np.inf, det)
    # Rows of the inverse of [[x0, y0, 1], [x1, y1, 1], [x2, y2, 1]], one per triangle.
    inv = np.stack([
        np.stack([y1 - y2, y2 - y0, y0 - y1], axis=-1),
        np.stack([x2 - x1, x0 - x2, x1 - x0], axis=-1),
        np.stack([x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0], axis=-1),
    ], axis=1) / safe[:, None, None]
    return inv @ src


class WarpEngine:
    """Renders an avatar for a target pose by warping its photo (CPU, no model)."""

    name = "warp"
    version = VERSION
    prepare = staticmethod(prepare)

    def __init__(self, avatar: Avatar, framing: Framing | None = None, grid_step: int = 4) -> None:
        self.avatar = avatar
        self.framing = framing or Framing.native(avatar.size)
        self.grid_step = grid_step
        data = avatar.engine_data
        self._extra_src = data["points"].astype(np.float64)
        self._extra_w = data["weights"].astype(np.float64)[:, None]
        self._src = np.vstack([avatar.landmarks[:, :2], self._extra_src])
        self._back = np.vstack([data["outer_triangles"], data["hole_triangles"]])
        self._face = lm.face_triangles()
        self._face_src_sign = np.sign(self._signed_area(self._src, self._face))
        # Shrink a photo much larger than the output once, so remap does not alias.
        self._tex_scale = 1.0
        texture = avatar.image
        if self.framing.scale > 1.5:
            self._tex_scale = 1.0 / self.framing.scale
            texture = cv2.resize(texture, None, fx=self._tex_scale, fy=self._tex_scale, interpolation=cv2.INTER_AREA)
        self._texture = np.ascontiguousarray(texture)
        # Grid samples run from the first to the last output pixel inclusive, so the
        # outermost pixels get exact values (a pinned border stays exactly pinned).
        ow, oh = self.framing.output_size
        self._grid_w = -(-(ow - 1) // grid_step) + 1
        self._grid_h = -(-(oh - 1) // grid_step) + 1
        self._spacing = np.array([(ow - 1) / max(self._grid_w - 1, 1), (oh - 1) / max(self._grid_h - 1, 1)])
        self._upsample = np.array([[1 / self._spacing[0], 0, 0], [0, 1 / self._spacing[1], 0]])
        gy, gx = np.mgrid[0:self._grid_h, 0:self._grid_w].astype(np.float64)
        self._grid_uv1 = np.stack([gx, gy, np.ones_like(gx)], axis=-1)
        out_xy = np.stack([gx, gy], axis=-1) * self._spacing
        self._identity = self.framing.to_avatar(out_xy)  # for pixels no triangle covers
        # Samples on the photo's own border show exactly that border pixel, whatever
        # triangle the rasteriser's rounding assigned them to.
        aw, ah = avatar.size
        ix, iy = self._identity[..., 0], self._identity[..., 1]
        self._pinned = (np.isclose(ix, 0) | np.isclose(ix, aw - 1) | np.isclose(iy, 0) | np.isclose(iy, ah - 1))
        lips = avatar.landmarks[list(lm.MOUTH), :2].round().astype(int)
        lips = lips.clip(0, [aw - 1, ah - 1])
        # A mouth opened wider than the photo shows is filled with a dark cavity tinted
        # like this avatar's lips, not with stretched lip texture.
        self._cavity_color = avatar.image[lips[:, 1], lips[:, 0]].reshape(-1, 3).mean(axis=0) * 0.25
        self._src_gap = float(np.linalg.norm(avatar.landmarks[lm.UPPER_LIP_MID, :2] - avatar.landmarks[lm.LOWER_LIP_MID, :2]))
        self._mouth_width = lm.mouth_width(avatar.landmarks)

    @staticmethod
    def _signed_area(points: np.ndarray, tris: np.ndarray) -> np.ndarray:
        a, b, c = points[tris[:, 0]], points[tris[:, 1]], points[tris[:, 2]]
        return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])

    def control_points(self, pose: AvatarPose) -> np.ndarray:
        """Target positions of all mesh points: landmarks, then the outer points."""
        moved = self._extra_src @ pose.head[:, :2].T + pose.head[:, 2]
        extra = self._extra_src + self._extra_w * (moved - self._extra_src)
        return np.vstack([pose.xy, extra])

    def source_map(self, pose: AvatarPose) -> np.ndarray:
        """For each output pixel, the avatar-photo position it shows: (H, W, 2) float32."""
        dst = self.control_points(pose)
        face = self._face
        area = self._signed_area(dst, face)
        # A triangle whose winding flipped has turned away from the camera: hide it.
        visible = (np.sign(area) == self._face_src_sign) & (np.abs(area) > 1e-3)
        face = face[visible]
        depth = pose.landmarks[face, 2].mean(axis=1)
        face = face[np.argsort(-depth, kind="stable")]  # far first, near drawn over it
        tris = np.vstack([self._back, face])

        grid = self.framing.to_output(dst) / self._spacing
        ids = np.full((self._grid_h, self._grid_w), -1, dtype=np.int32)
        corners = grid[tris]  # (T, 3, 2)
        polygons = np.round(corners * 16).astype(np.int32)
        for k, polygon in enumerate(polygons):
            cv2.fillConvexPoly(ids, polygon, k, lineType=cv2.LINE_8, shift=4)
        affine = _affine_maps(corners, self._src[tris])
        covered = ids >= 0
        src = self._identity.copy()
        src[covered] = np.einsum("nk,nkj->nj", self._grid_uv1[covered], affine[ids[covered]])
        src[self._pinned] = self._identity[self._pinned]
        src *= self._tex_scale
        return cv2.warpAffine(src.astype(np.float32), self._upsample, self.framing.output_size,
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)

    def render(self, pose: AvatarPose) -> np.ndarray:
        """The avatar in this pose, RGB uint8 of the framing's output size."""
        m = self.source_map(pose)
        image = cv2.remap(self._texture, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        self._fill_mouth(image, pose)
        return image

    def _fill_mouth(self, image: np.ndarray, pose: AvatarPose) -> None:
        gap = float(np.linalg.norm(pose.xy[lm.UPPER_LIP_MID] - pose.xy[lm.LOWER_LIP_MID]))
        strength = float(np.clip((gap - self._src_gap - 1.0) / (0.08 * self._mouth_width), 0.0, 1.0))
        if strength <= 0.0:
            return
        ring = self.framing.to_output(pose.xy[list(_INNER_LIPS_RING)])
        h, w = image.shape[:2]
        x0, y0 = np.floor(ring.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(ring.max(axis=0)).astype(int) + 3
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.fillPoly(mask, [np.round((ring - (x0, y0)) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
        alpha = (cv2.GaussianBlur(mask, (3, 3), 0) * (0.9 * strength))[..., None]
        roi = image[y0:y1, x0:x1]
        roi[:] = (roi * (1.0 - alpha) + self._cavity_color * alpha).astype(np.uint8)
