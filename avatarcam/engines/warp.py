"""The mesh-warp engine: renders the avatar photo warped onto the target landmarks.

The photo is covered by one fixed triangle mesh: MediaPipe's face tessellation, the eye
and mouth openings it leaves, and an outer mesh from the face outline through two rings
of points (hair and ears, then further out) to points pinned on the photo's border,
which therefore never moves. The rings sit at the depth of the head's turning centre
(level with the ears) and turn with the head in 3D, so its outline stays nearly in
place while the face turns; below the chin (neck, shoulders) they follow it less and
less. Each frame the target mesh is rasterised into a triangle-index image on a coarse
grid (far triangles first, turned-away ones dropped), every grid point gets its source
position from its triangle's affine map, and the dense map is upsampled and applied with
one ``cv2.remap``. The map is smooth inside triangles, so a grid of 4 px loses nothing
visible and costs a sixteenth of a per-pixel rasteriser.

Layers, all made once at prepare time: the person (MediaPipe selfie segmentation) is
warped with its soft alpha over a background plate filled in behind them, so a moving
head reveals background, not smeared pixels (where nothing moved, the photo itself
shows). The irises are their own layer over an eye texture showing sclera only, so gaze
moves them without smearing the eye; at rest they show the photo's own pixels. A
narrowing eye is shaded under its upper lid. Closing eyes blend in a lid texture (painted
for shut eyes, then squeezed into the lid band the warp stretches over them) instead of
stretching the lashes, their lids are pulled the last way shut onto a smooth arc, and a
lash line is drawn along it; an open mouth gets a dark cavity and shaded teeth where the
driver shows teeth. Where the face turns away from the camera, the outlines where the map
jumps (a cheek over what lies behind it, the side of the nose over the cheek) are drawn per
pixel and anti-aliased: on the grid they came out stepped and smeared. Where a face the
photo shows from the side turns towards the camera, the cheek the photo holds in a sliver
(or folded out of sight) shows its mirror image from the other side, shaded and tinted like
its own. Where the map spreads the photo a few times in one direction only (the side of the
head before the ear, turned towards the camera), the photo shows blurred instead of drawn
out into streaks.
"""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from avatarcam import landmarks as lm
from avatarcam.avatar import Avatar
from avatarcam.framing import Framing
from avatarcam.geometry import fit_similarity
from avatarcam.retarget import AvatarPose
from avatarcam.segmentation import fill_background, membrane_fill, person_mask, push_pull_fill

VERSION = "warp-17"

_RIGHT_EYE_RING = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
_LEFT_EYE_RING = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
_EYE_RINGS = {"right": _RIGHT_EYE_RING, "left": _LEFT_EYE_RING}
# The same as index arrays for the per-frame code (numpy converts a tuple on every use).
_EYE_RING_IDS = {side: np.array(ring) for side, ring in _EYE_RINGS.items()}
_IRIS_IDS = (np.array(lm.RIGHT_IRIS), np.array(lm.LEFT_IRIS))
_FACE_OVAL_IDS = np.array(lm.FACE_OVAL)
# Rings closer than this many face heights to the photo's border follow the head less.
_EDGE_TAPER = 0.3
# Face outline points level with the ears (the head's sides).
_EAR_LEVEL = (234, 454)
# How much of the head's motion each outer ring follows (hair/ears, then further out).
# Background under the rings comes from the plate, so they can follow the head closely.
_RING_FACTORS = (1.35, 1.9)
_RING_WEIGHTS = (1.0, 0.85)
# A ring this share of the face's width outside the hair above the eyes follows the head
# in full, tapered only as it nears the border it moves towards: a head sinking from the
# top of the photo then takes its hair along, and the stretch lies in the backdrop beyond
# that ring, which the plate covers. The rings alone were tapered by the nearest border,
# and left the hair behind, stretched up into a cone.
_SILHOUETTE_GAP = 0.05
# However far the head turns, an outer point stays at least this share of its photo
# distance out from the face's edge.
_OUTLINE_KEEP = 0.4
# The most rows (points to sample) one cv2.remap call takes, under OpenCV's limit of 32767.
_REMAP_ROWS = 32000
# A face triangle the photo shows at most half the size of its mirror image across the
# face (a cheek turned away, seen nearly edge-on) starts to show that mirror image instead
# once the pose spreads it past _MIRROR_FROM times its size in the photo, and shows it in
# full at _MIRROR_FULL times (and for triangles a quarter of their mirror's size or less).
_MIRROR_FROM, _MIRROR_FULL = 1.4, 2.4
# Only triangles this many face widths or more to either side of the face's midline do.
_MIRROR_SIDES = 0.22
# The mirror image is shaded like the face's own picture around it, blurred this many face
# widths (its brightness, not its detail).
_MIRROR_SHADE = 0.05
# The lid texture fully replaces the eye once the lid gap falls to this share of the
# photo's, and starts to show below _LID_START.
_LID_START, _LID_FULL = 0.45, 0.2
# A shut eye's lash line: width (share of the eye's width) and opacity mid-lid, and the
# opacity of the soft shadow the lashes cast below it.
_LASH_WIDTH, _LASH_INK, _LASH_SHADOW = 0.045, 0.9, 0.3
# A shut lid's grain leaves out detail more than this many robust deviations (1.4826 times
# the median absolute detail of the skin around the eyes) from smooth: edges, not grain.
_GRAIN_OUTLIER = 4.0
# How far each teeth row reaches from its lip at the mouth's middle when the driver shows it
# clearly, in mouth widths, against the lip gap in mouth widths. From the shared clips' frames
# that show teeth (upper teeth 0.05 of the width at a tenth's gap, 0.15 wide open; lower ones
# mostly hidden until the jaw drops), raised for the lip's shadow and blur that the same
# measure loses on renders until the teeth fill the middle of a smile's opening as fully as
# in those frames, and capped at a front tooth's length (a fifth of the mouth's width). A row
# the driver shows only faintly (under half its teeth score) reaches less far.
_TEETH_GAPS = (0.0, 0.1, 0.22, 0.4, 0.65)
_TEETH_UPPER = (0.0, 0.1, 0.13, 0.16, 0.19)
_TEETH_LOWER = (0.0, 0.03, 0.1, 0.16, 0.16)
# A biting edge lies at most this many mouth widths further from its lip than the teeth
# are long (a lip drawn back shows more of a tooth; a lip shaped unlike an arch, as a mouth
# opened wide seen three-quarters is, would show all of one). The slack shrinks with the
# row towards its end: a mouth opened wide is rounder than an arch, and at full slack its
# lower lip showed a white rim of teeth right into the corners.
_BITE_SLACK = 0.05
# Apparent width of the upper and lower front teeth (central incisors, about 8.5 and 5.3 mm of
# a 50 mm mouth), in half mouth widths, and how much narrower each tooth further back looks:
# upper ones by the golden proportion (central : lateral : canine = 1.618 : 1 : 0.618), lower
# ones more slowly (their lateral incisors are wider than the central ones). Evenly sized
# teeth along the whole row read as dentures.
_INCISOR_WIDTHS = (0.34, 0.21)
_TOOTH_STEPS = (0.618, 0.8)
# The rows shorten towards the mouth's corners and end this far along to them (lips parted
# a little, opened wide), leaving dark corridors there: in the shared clips' smiles teeth
# fill about half of the opening's middle fifth, a quarter at 0.4-0.6 of the way to a
# corner and almost none beyond 0.8; a mouth opened wide shows them further out.
_TEETH_END_GAPS, _TEETH_END = (0.25, 0.5), (0.7, 0.9)
# Lower teeth lie a little further back, in the upper row's shade (shared clips: lightness
# 0.96 of the upper teeth's).
_LOWER_TEETH_SHADE = 0.93
# The iris layer reaches a little past MediaPipe's iris radius, to take the dark limbus.
_IRIS_REACH = 1.15
# Dark pixels of the eye opening within this many iris radii are the iris's rim, not sclera.
_IRIS_BEYOND = 1.5
# The iris's alpha is whole this far (px) past the sclera painted under it, then fades: a
# soft edge over that sclera showed as a pale ring round an iris that had not moved.
_IRIS_OVERLAP = 1.5
# An iris is taken to be at least this many grey levels darker than its sclera.
_IRIS_CONTRAST = 10.0
# An iris this many radii from its place in the photo (relative to its eye) leaves behind
# all the sclera in its layer's rim; nearer, a share of it (none at rest, where the photo's
# own pixels show).
_IRIS_MATTE_SHIFT = 0.3
# How bright an eye white is for where it lies in the eye, relative to its brightest: at
# distances from the eye's centre along the corners' line (0 centre, 1 corner) and at
# heights between the upper (0) and lower (1) lid. Measured on the shared real talking-head
# clips, on the eye white an iris looking aside uncovers (outside 1.3 iris radii, first 150
# frames): the front of the eyeball, which the iris covers in a photo, is the brightest;
# the corners and the rims under the lids are in shade.
_SCLERA_ALONG = ((0.1, 0.3, 0.5, 0.7, 0.9), (0.94, 0.91, 0.85, 0.74, 0.65))
_SCLERA_ACROSS = ((0.1, 0.3, 0.5, 0.7, 0.9), (0.91, 0.98, 1.0, 0.98, 0.92))
# Lid gaps within this share of the photo's show the iris's rim from the photo.
_REST_BAND = 0.15
# A narrowing eye is shaded under its upper lid, at the lid's edge at most by this share,
# fading over at most this share of the photo's lid gap (the distance that leaves 37%).
_LID_SHADOW, _LID_SHADOW_WIDTH = 0.65, 0.7
# Where the pose spreads the photo in one direction only (the side of a cheek or an ear the
# photo shows nearly edge-on, turned towards the camera; a brow raised far), its detail is
# drawn out into streaks across the stretch. There the photo blurred by this many of its
# pixels shows instead, from the first of these stretches (the output pixels a photo pixel
# spans along it, against its span across) and in full from the second: drawn out along
# the stretch, the blur is lost there, and it evens out the detail across it.
_STREAK_BLUR, _STREAK_FROM, _STREAK_FULL = 3.0, 2.0, 3.0
# The weights of red, green and blue in a grey level (ITU-R BT.601, as cv2.COLOR_RGB2GRAY).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Triangles whose box holds more grid samples than this are filled one by one.
_FILL_SAMPLES = 64
# Where a grid sample's photo point lies this many samples' worth of photo off where its
# neighbour's triangle would put it, along a turned-away outline, the outline is drawn per
# pixel, anti-aliased with this many places a pixel each way.
_SILHOUETTE_JUMP, _SUPERSAMPLE = 1.0, 4


@dataclasses.dataclass
class _Mirrored:
    """Where the face shows its other side mirrored: over ``at``, the box of output pixels
    where any does, the map into the photo to that side and how much of it to blend in
    (0..1); over ``around``, that box grown by the reach of the shading measured round it,
    the same map on the grid and how much of each sample shows the face's own picture, and
    where ``at`` lies in it (pixels)."""

    at: tuple[slice, slice]
    map: np.ndarray
    blend: np.ndarray
    around: tuple[slice, slice]
    coarse_map: np.ndarray
    own: np.ndarray
    offset: tuple[int, int]


@dataclasses.dataclass
class _Mend:
    """Pixels along a turned-away outline, drawn per pixel: ``whole``, those one triangle
    covers, and ``split``, those several share, each as (rows, columns) in the output and
    the photo points (N, S, 2) whose colours are averaged (one per pixel for ``whole``)."""

    whole: tuple[tuple[np.ndarray, np.ndarray], np.ndarray]
    split: tuple[tuple[np.ndarray, np.ndarray], np.ndarray]


def _delaunay(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles of 2D points, as indices into ``points``."""
    lo = points.min(axis=0) - 10
    hi = points.max(axis=0) + 10
    subdiv = cv2.Subdiv2D((int(lo[0]), int(lo[1]), int(hi[0] - lo[0]) + 1, int(hi[1] - lo[1]) + 1))
    for p in points:
        subdiv.insert((float(p[0]), float(p[1])))
    corners = subdiv.getTriangleList().reshape(-1, 3, 2).astype(np.float64)
    # Subdiv2D keeps points as float32: each corner is matched to its nearest point (by
    # rounded coordinates, a float64 point half a thousandth off its float32 copy would
    # be missed and its triangles lost, leaving holes in the mesh). Corners far from
    # every point are Subdiv2D's virtual outer vertices.
    d = np.linalg.norm(corners[:, :, None] - points[None, None], axis=3)
    idx = d.argmin(axis=2)
    real = (np.take_along_axis(d, idx[..., None], axis=2)[..., 0] < 1e-2).all(axis=1)
    return idx[real].astype(np.int32).reshape(-1, 3)


def _inside(polygon: np.ndarray, point: np.ndarray) -> bool:
    return cv2.pointPolygonTest(polygon.astype(np.float32), (float(point[0]), float(point[1])), False) > 0


def _triangles_inside(points: np.ndarray, ids: np.ndarray, ring: tuple[int, ...], keep_inside: bool) -> np.ndarray:
    """Delaunay triangles over ``points[ids]`` whose centre is inside (or outside) ``ring``.

    Outside, a triangle with a corner off the ring is kept whatever its centre: where a
    ring point lies close to the outline, such a triangle's centre can fall inside it while
    most of it lies outside, and dropping it would leave a notch that no triangle covers
    (those pixels would then stay put while the head moves). Its part inside the outline
    lies under the face's own triangles, which are drawn over it."""
    tris = ids[_delaunay(points[ids])]
    polygon = points[list(ring)]
    on_ring = np.isin(tris, np.asarray(ring)).all(axis=1)
    keep = [t for t, own in zip(tris, on_ring)
            if (_inside(polygon, points[t].mean(axis=0)) == keep_inside) or (not keep_inside and not own)]
    return np.array(keep, dtype=np.int32).reshape(-1, 3)


def _taper_length(avatar: Avatar) -> float:
    """Over how many pixels from the photo's border a ring's following of the head tapers
    to nothing (see _EDGE_TAPER)."""
    return max(_EDGE_TAPER * avatar.proportions["face_height"], 1.0)


def prepare(avatar: Avatar) -> dict[str, np.ndarray]:
    """The engine's per-avatar data: outer control points (weights, depths), the extra
    triangles, and the layers: person alpha, background plate, closed-lid patch, the
    eyes without irises and the irises."""
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

    alpha = person_mask(avatar.image, avatar.landmarks)
    # MediaPipe's mask, upscaled from 256 px, fades over many pixels; a narrower edge
    # keeps the plate from showing through the person's rim when the head moves.
    alpha = np.clip((alpha - 0.5) * 2.5 + 0.5, 0.0, 1.0)

    outer: list[np.ndarray] = []
    weights: list[float] = []
    tapered_along: list[bool] = []
    taken = [oval, border]
    rings = [(factor, weight, oval[::stride]) for factor, weight, stride in zip(_RING_FACTORS, _RING_WEIGHTS, (1, 2))]
    # Between the two, a ring just outside the hair above the eyes (see _SILHOUETTE_GAP).
    above = oval[:, 1] < face[list(lm.RIGHT_EYE_CORNERS + lm.LEFT_EYE_CORNERS), 1].mean()
    rings.insert(1, (None, 1.0, _outside_silhouette(alpha, center, oval[above], _SILHOUETTE_GAP * avatar.proportions["face_width"])))
    taper_len = _taper_length(avatar)
    for factor, weight, points in rings:
        for o in points:
            p = center + factor * (o - center) if factor is not None else o
            # Keep rings inside the photo, so the border's own points are the only ones on it.
            p = np.clip(p, edge_gap, [w - 1 - edge_gap, h - 1 - edge_gap])
            if min(np.linalg.norm(t - p, axis=1).min() for t in taken + ([np.array(outer)] if outer else [])) < min_gap:
                continue
            outer.append(p)
            # Below the chin lie neck and shoulders, which follow the head less and less
            # (not at all from 0.3 face heights below the chin).
            below = np.clip((p[1] - chin_y + 0.1 * avatar.proportions["face_height"]) / max(0.4 * avatar.proportions["face_height"], 1.0), 0.0, 1.0)
            # Near the photo's border (whose points never move) a ring follows the head less,
            # tapering evenly: a ring point at full weight beside a fixed border point pulled
            # the hair between them into a spike when the head moved towards that border.
            # The ring outside the hair tapers per frame instead, by its distance to the
            # border the way it moves (WarpEngine.control_points).
            edge = float(min(p[0], p[1], w - 1 - p[0], h - 1 - p[1]))
            taper = float(np.clip(edge / taper_len, 0.0, 1.0))
            weights.append(weight * (1.0 - below) * (1.0 if factor is None else taper))
            tapered_along.append(factor is None)
    outer_pts = np.array(outer, dtype=np.float64).reshape(-1, 2)
    extra = np.vstack([outer_pts, border])
    extra_w = np.concatenate([np.array(weights), np.zeros(len(border))])
    extra_along = np.concatenate([np.array(tapered_along, bool), np.zeros(len(border), bool)])
    # The outer points lie at the depth of the head's turning centre, level with the ears:
    # a head's outline (hair, ears) stays nearly in place as it turns, only the face on its
    # front swings across. At the depth of the face outline instead, the hair's outline
    # swung with the face (self-reenactment error next to the head -10..-20%).
    extra_z = np.full(len(extra), float(avatar.landmarks[list(_EAR_LEVEL), 2].mean()))

    all_pts = np.vstack([face, extra])
    n = lm.NUM_LANDMARKS
    outer_ids = np.concatenate([np.array(lm.FACE_OVAL), np.arange(n, n + len(extra))])
    outside = _triangles_inside(all_pts, outer_ids, lm.FACE_OVAL, keep_inside=False)
    holes = [
        # The eye opening follows the lids only; the iris is drawn over it as its own layer.
        _triangles_inside(all_pts, np.array(_RIGHT_EYE_RING), _RIGHT_EYE_RING, True),
        _triangles_inside(all_pts, np.array(_LEFT_EYE_RING), _LEFT_EYE_RING, True),
        _triangles_inside(all_pts, lm.INNER_LIPS_IDS, lm.INNER_LIPS_RING, True),
    ]
    lids, lids_box, lash, lids_shut, lids_to_shut = _closed_lids(avatar.image, avatar.landmarks, np.vstack(holes[:2]))
    sclera, irises, iris_fills, iris_keeps, iris_geometry = _eye_layers(avatar.image, avatar.landmarks, lids_box)
    return {"points": extra.astype(np.float32), "weights": extra_w.astype(np.float32),
            "tapered_along": extra_along,
            "depths": extra_z.astype(np.float32),
            "outer_triangles": outside, "hole_triangles": np.vstack(holes),
            "person_alpha": np.round(alpha * 255).astype(np.uint8),
            "background": fill_background(avatar.image, alpha),
            "lids": lids, "lids_box": lids_box, "lash_color": lash, "lids_shut": lids_shut, "lids_to_shut": lids_to_shut,
            "sclera": sclera, "irises": irises, "iris_fills": iris_fills, "iris_keeps": iris_keeps,
            "iris_geometry": iris_geometry}


def _eye_whites(image: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    """The colour of a photo's eye whites: the median of the brightest sixth of the pixels
    inside both eye openings (lid edges left out), or None where the eyes show too little."""
    rings = [np.round(points[list(ring), :2]).astype(np.int32) for ring in _EYE_RINGS.values()]
    # Only the eyes' box, with a margin for the erosion (not a mask of the whole photo).
    h, w = image.shape[:2]
    x0, y0 = np.maximum(np.min([r.min(axis=0) for r in rings], axis=0) - 2, 0)
    x1, y1 = np.minimum(np.max([r.max(axis=0) for r in rings], axis=0) + 3, [w, h])
    mask = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)
    cv2.fillPoly(mask, [r - (x0, y0) for r in rings], 1)
    pixels = image[y0:y1, x0:x1][cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0].astype(np.float32)
    if len(pixels) < 30:
        return None
    luma = pixels.mean(axis=1)
    return np.median(pixels[luma >= np.percentile(luma, 84)], axis=0)


def _eye_layers(image: np.ndarray, points: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The eyes split in two layers, so gaze moves the iris without smearing the sclera:

    - the patch ``box`` of the photo with each iris painted over by the sclera around it;
    - each iris as an RGBA square (2, S, S, 4) centred on the photo pixel nearest its
      centre (a whole-pixel copy: resampled twice, at home too, it blurred), showing the
      photo between the lids and under them its hidden parts filled from its visible
      ones, alpha a soft disc;
    - the same squares with all but the iris's inside filled and alpha just the disc
      (2, S, S, 4), for lids that have moved;
    - per iris its centre and radius in the photo and the square's centre pixel,
      (2, 5): x, y, r, ax, ay.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    patch = image[y0:y1, x0:x1].astype(np.float32)
    origin = np.array([x0, y0], dtype=np.float64)
    circles = [lm.iris_circle(points, iris) for iris in (lm.RIGHT_IRIS, lm.LEFT_IRIS)]
    size = int(np.ceil(2.0 * (_IRIS_REACH * max(r for _, r in circles) + _IRIS_OVERLAP + 2.0))) | 1
    irises = np.zeros((2, size, size, 4), np.uint8)
    fills = np.zeros((2, size, size, 4), np.uint8)
    keeps = np.zeros((2, size, size), np.uint8)
    sclera = patch.copy()
    luma = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
    for k, ((center, radius), (side, ring)) in enumerate(zip(circles, _EYE_RINGS.items())):
        opening = np.zeros(patch.shape[:2], np.float32)
        cv2.fillPoly(opening, [np.round((points[list(ring), :2] - origin) * 16).astype(np.int32)], 1.0, cv2.LINE_8, shift=4)
        inside = opening.copy()
        # Lid edges are not sclera; nor is the opening's soft rim painted with it, where the
        # iris drawn clipped by the same rim would let it through.
        opening = cv2.erode(opening, np.ones((3, 3), np.uint8))
        disc = np.zeros_like(opening)
        c = center - origin
        _draw_disc(disc, c, radius * _IRIS_REACH)
        beyond = _draw_disc(np.zeros_like(opening), c, radius * _IRIS_BEYOND)
        # Under the iris, the smoothest surface that meets the eye white around it: a flat
        # fill showed as a grey or bright patch with a hard rim once the iris moved. The
        # iris's dark rim that Face Mesh's circle misses is filled too, not met; so are the
        # lids (their lines and lashes, met too, greyed the white an iris looking aside
        # uncovered, eyeliner most). The lid edges over the iris stay the photo's, which
        # the iris, clipped by the lids, lets through at rest.
        white = (opening > 0.5) & (disc < 0.5)
        hidden = (disc * opening) > 0.5
        keep = np.ones_like(opening)  # how much of each pixel is iris, for the iris layer
        if white.sum() >= 4:
            sclera_luma = float(np.median(luma[white]))
            hidden |= (beyond * opening > 0.5) & (luma < sclera_luma)
            # Outside Face Mesh's circle the layer takes each pixel as far as it is iris
            # rather than sclera, by its brightness between theirs: carried along whole,
            # the sclera there was a pale crescent round an iris looking aside.
            core = _draw_disc(np.zeros_like(opening), c, radius)
            layer = _draw_disc(np.zeros_like(opening), c, radius * _IRIS_REACH + _IRIS_OVERLAP + 1.0)
            in_core = (core * opening) > 0.5
            if in_core.any():  # else the photo shows no iris to tell from the sclera
                iris_luma = float(np.median(luma[in_core]))
                span = max(sclera_luma - iris_luma, _IRIS_CONTRAST)
                share = np.clip((iris_luma + span - luma) / span, 0.0, 1.0)
                keep = np.where((layer > 0.5) & (core < 0.5) & (opening > 0.5), share, 1.0).astype(np.float32)
        # Filled as the white's colour with its shading taken out, then put back: filled
        # from the whites beside the iris, in the corners' shade, the white a look aside
        # uncovers came out 43 grey levels darker than in real frames (self-reenactment).
        shade = _sclera_shading(patch.shape[:2], inside, points[:, :2] - origin, side)[..., None]
        filled = _soft_highlights(shade * membrane_fill(sclera / shade, hidden | (opening <= 0.5) if white.sum() >= 4 else hidden))
        # The fill fades into the lid's rim over a pixel or two: cut off at the opening's
        # pixels, it was a flat patch in a ring of steps once the lids opened wider.
        rim = cv2.GaussianBlur(cv2.erode(_soft_polygon(opening.shape, points[list(ring), :2] - origin), np.ones((3, 3), np.uint8)), (0, 0), 0.8)
        cover = (np.maximum(disc * opening, hidden) * rim)[..., None]
        sclera = sclera * (1.0 - cover) + filled * cover
        # Iris: its visible pixels, spread under the lids.
        valid = disc * opening
        iris_full = push_pull_fill(patch, valid) if valid.sum() > 1 else patch
        # Between lids where the photo has them, all that shows is the photo's own pixels,
        # the iris's rim against lids and sclera included: an eye at rest looks as in the
        # photo. Lids opened wider show that rim as a line across the iris, so there the
        # filled-in iris takes over.
        shown = cv2.dilate(inside, np.ones((3, 3), np.uint8)) > 0
        at_rest = np.where(shown[..., None], patch, iris_full)
        half = size // 2
        anchor = np.round(c).astype(int)
        at = c - anchor + half
        keeps[k] = _whole_pixel_square(255.0 * keep, anchor, size)
        for layers, rgb, reach in ((irises, at_rest, _IRIS_OVERLAP), (fills, iris_full, 0.0)):
            rgb = _whole_pixel_square(rgb, anchor, size)
            alpha = np.zeros((size, size), np.float32)
            _draw_disc(alpha, at, radius * _IRIS_REACH + reach)
            alpha = cv2.GaussianBlur(alpha, (3, 3), 0)
            layers[k] = np.dstack([rgb, (alpha * 255 + 0.5).astype(np.uint8)])
    geometry = np.array([[*c, r, *np.round(c)] for c, r in circles], dtype=np.float32)
    return np.clip(sclera + 0.5, 0, 255).astype(np.uint8), irises, fills, keeps, geometry


def _sclera_shading(shape: tuple[int, int], inside: np.ndarray, points: np.ndarray, side: str) -> np.ndarray:
    """How bright each pixel of an eye's white would be relative to its brightest, from
    where it lies in the eye (``inside``: the eye's opening, 0/1 of ``shape``; ``points``:
    landmarks in the same pixels): _SCLERA_ALONG times _SCLERA_ACROSS. float32 ``shape``."""
    a, b = points[lm.EYE_CORNER_IDS[side], :2]
    half = max(float(np.linalg.norm(b - a)) / 2.0, 1e-6)
    along = (b - a) / (2.0 * half)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    h = np.abs((xs - (a[0] + b[0]) / 2.0) * along[0] + (ys - (a[1] + b[1]) / 2.0) * along[1]) / half
    # Height between the lids in each column of the opening (0.5 outside it: unused there).
    cols = inside.any(axis=0)
    top = np.where(cols, inside.argmax(axis=0), 0).astype(np.float32)
    bottom = np.where(cols, shape[0] - inside[::-1].argmax(axis=0), 1).astype(np.float32)
    v = np.where(cols, (ys - top + 0.5) / np.maximum(bottom - top, 1.0), 0.5)
    return (np.interp(h, *_SCLERA_ALONG) * np.interp(v, *_SCLERA_ACROSS)).astype(np.float32)


def _soft_highlights(image: np.ndarray, knee: float = 204.0) -> np.ndarray:
    """Float ``image`` with values over ``knee`` rolled off smoothly below 255: clipped, the
    brightened eye white of a bright photo was a flat white patch."""
    over = np.maximum(image - knee, 0.0)
    return image - over + (255.0 - knee) * np.tanh(over / (255.0 - knee))


def _draw_disc(canvas: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    """A filled hard-edged disc of value 1 drawn into float ``canvas`` at sub-pixel
    ``center`` (x, y) and ``radius``, in pixels; returns ``canvas``. The eye layers count
    its pixels as iris or not (drawn with a soft rim, the eye white filled in under a
    moved iris came out greyer)."""
    cv2.circle(canvas, tuple(np.round(np.asarray(center) * 16).astype(int)), round(radius * 16), 1.0, -1, cv2.LINE_8, shift=4)
    return canvas


def _outside_silhouette(alpha: np.ndarray, center: np.ndarray, oval: np.ndarray, gap: float) -> np.ndarray:
    """Points just outside the person's silhouette (``gap`` pixels past where ``alpha``
    falls below one half), on the rays from ``center`` through each ``oval`` point; none
    where the person reaches the photo's border along that ray."""
    h, w = alpha.shape
    found = []
    for o in oval:
        way = o - center
        length = float(np.linalg.norm(way))
        if length < 1.0:
            continue
        way /= length
        r = np.arange(length, 4.0 * length, 1.0)
        xy = center + r[:, None] * way
        inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] <= h - 1)
        xy, r = xy[inside], r[inside]
        person = alpha[np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)] > 0.5
        out = np.flatnonzero(~person)
        if len(out) and out[0] + gap < len(r):
            found.append(center + (r[out[0]] + gap) * way)
    return np.array(found).reshape(-1, 2)


def _soft_polygon(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """``polygon`` (N, 2 sub-pixel x, y) filled anti-aliased, float32 0..1 of ``shape``.
    OpenCV anti-aliases only 8-bit images: drawn into a float one, LINE_AA gives the hard
    staircase of LINE_8, which showed along the mouth's opening."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) * np.float32(1.0 / 255.0)


def _iris_in_eye(points: np.ndarray, center: np.ndarray, side: str) -> np.ndarray:
    """An iris ``center`` relative to its eye in ``points``: along and across the line
    between the eye's corners, in eye widths from the first corner."""
    a, b = points[lm.EYE_CORNER_IDS[side], :2]
    width = max(float(np.linalg.norm(b - a)), 1e-6)
    along = (b - a) / width
    d = (center - a) / width
    return np.array([d @ along, d @ np.array([-along[1], along[0]])])


def _whole_pixel_square(image: np.ndarray, center: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` square of float ``image`` centred on pixel ``center``
    (edges repeated past the image's border), uint8."""
    half = size // 2
    shift = np.array([[1, 0, half - center[0]], [0, 1, half - center[1]]], dtype=np.float64)
    out = cv2.warpAffine(image, shift, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _shut_points(points: np.ndarray) -> np.ndarray:
    """2D landmarks with both eyes shut: each upper lid point on its lower partner."""
    shut = points[:, :2].astype(np.float64)
    for upper, lower in lm.LID_IDS.values():
        shut[upper] = shut[lower]
    return shut


def _mesh_values(tris: np.ndarray, at: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-point ``values`` (N, C) interpolated over triangles ``tris`` placed at ``at``
    (N, 2) in an image of ``shape``: (H, W, C) float32, and the mask of pixels covered.
    Later triangles draw over earlier ones."""
    ids = np.full(shape, -1, np.int32)
    for k, tri in enumerate(tris):
        cv2.fillConvexPoly(ids, np.round(at[tri] * 16).astype(np.int32), k, cv2.LINE_8, shift=4)
    ys, xs = np.nonzero(ids >= 0)
    k = ids[ys, xs]
    inv, _ = _barycentric_maps(at[tris])
    bary = np.einsum("ni,nij->nj", np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64), inv[k])
    out = np.zeros(shape + (values.shape[1],), np.float32)
    out[ys, xs] = np.einsum("nj,njc->nc", bary, values[tris[k]])
    return out, ids >= 0


def _closed_lids(image: np.ndarray, points: np.ndarray,
                 eye_triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A patch of the photo around both eyes to show when they shut, and its box
    ``(x0, y0, x1, y1)``.

    The warp shuts an eye by pulling the band of lid above the upper lash line down over
    the opening, three times its height: stretched, the lashes became a thick dark smear.
    So the shut eye is painted where it will be seen, in the photo warped to shut eyes:
    the top of the band stays as the warp shows it (the lid's fold), below it smooth lid
    skin, shaded towards where the lids meet. That picture is squeezed back into the band
    with the inverse of the same warp (the patch returned), and the engine samples the
    picture itself over the band: also returned are the shut picture, for each pixel of
    the patch where it lies in that picture and how much the picture shows there (H, W, 3:
    x, y, weight), and the lash line's colour, for the line drawn per frame."""
    h, w = image.shape[:2]
    xy = points[:, :2]
    eye_w = max(lm.eye_width(points, "right"), lm.eye_width(points, "left"), 4.0)
    rings = [xy[list(r)] for r in _EYE_RINGS.values()]
    lo = np.floor(np.min([r.min(axis=0) for r in rings], axis=0) - 0.6 * eye_w).astype(int)
    hi = np.ceil(np.max([r.max(axis=0) for r in rings], axis=0) + 0.6 * eye_w).astype(int)
    x0, y0 = np.maximum(lo, 0)
    x1, y1 = np.minimum(hi, [w, h])
    patch = image[y0:y1, x0:x1].astype(np.float32)
    shape = patch.shape[:2]
    origin = np.array([x0, y0], dtype=np.float64)
    src = xy.astype(np.float64) - origin
    shut = _shut_points(points) - origin
    upper_ids = np.concatenate([upper for upper, _ in lm.LID_IDS.values()])
    lower_ids = np.concatenate([lower for _, lower in lm.LID_IDS.values()])
    face = lm.face_triangles()
    band = face[np.isin(face, upper_ids).any(axis=1)]  # the lid above each opening
    moved = np.vstack([band, eye_triangles])

    down = _image_down(points)

    # The shut picture: for each of its pixels the photo position the warp shows there,
    # how far down the lid it lies (0 at the fold, 1 where the lids meet), and where the
    # lid's own skin is (each lash-line point's anchor lies on the lid above the lashes).
    area = WarpEngine._signed_area(shut, moved)
    flipped = np.sign(area) != np.sign(WarpEngine._signed_area(src, moved))
    order = np.argsort(~flipped, kind="stable")  # folded-over corner triangles first, drawn over
    drawn = moved[order][np.abs(area[order]) > 1e-3]
    depth = np.isin(np.arange(len(src)), upper_ids).astype(np.float64)
    # The lid's skin shows between lashes and fold, at a height that differs from face to
    # face: each eye's anchors lie at the lowest height where the band has brightened well
    # past its lashes (higher up lie the fold, the brow's shadow or its lit bone).
    luma = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
    soft = cv2.GaussianBlur(luma, (0, 0), max(1.0, 0.03 * eye_w))
    anchor = src.copy()
    heights = np.linspace(0.04, 0.25, 12) * eye_w
    for upper, _ in lm.LID_IDS.values():
        profile = _sample_above(soft, src[upper], heights, down).mean(axis=0)
        bright = profile >= profile.min() + 0.6 * (profile.max() - profile.min())
        anchor[upper] = src[upper] - heights[int(np.argmax(bright))] * down
    lookup, lid = _mesh_values(drawn, shut, np.column_stack([src, depth, anchor]), shape)
    warped = cv2.remap(patch, lookup[..., 0], lookup[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    shown = np.where(lid[..., None], warped, patch)
    t = lookup[..., 2]

    # Nothing much darker than the lightest skin right around it (within a fifth of the
    # eye's width: lashes, brows, a glasses frame) lends the lid its colour. A lid in
    # shadow is not such: measured against all the skin around both eyes, the lid of an
    # eye in shadow (a turned head, the side of the nose) counted as dark, and its shut lid
    # took the colour of distant lit skin, a pale patch.
    rim = cv2.dilate(lid.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    k = max(3, round(0.2 * eye_w)) | 1
    dark = luma < 0.65 * cv2.morphologyEx(luma, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    below = np.zeros(shape, np.uint8)  # the lower lids and the cheek under them
    for _, lower in lm.LID_IDS.values():
        poly = np.vstack([src[lower], src[lower][::-1] + 0.6 * eye_w * down])
        cv2.fillPoly(below, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    skin = push_pull_fill(patch, (~dark).astype(np.float32))
    # The shut lid is the skin above the lashes pulled down to where the lids meet,
    # blurred so that it does not streak, with the grain of the skin above it (the
    # photo's own texture: craquelure, pores, film grain).
    lid_skin = cv2.GaussianBlur(skin, (0, 0), max(1.0, 0.05 * eye_w))
    lid_skin = cv2.remap(lid_skin, lookup[..., 3], lookup[..., 4], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    detail = (patch - cv2.GaussianBlur(patch, (0, 0), max(1.0, 0.05 * eye_w))) * (~dark)[..., None]
    valid = ~rim & ~dark & (below == 0)
    enough = valid.sum() >= 20
    if enough:
        # Only fine texture is grain. Edges that stand well out of it (a glasses frame's
        # rim, brow hairs, deep wrinkles), lifted onto the lid, drew a pale arc or a pattern
        # of loops across it.
        size = np.abs(detail).mean(axis=2)
        edges = size > _GRAIN_OUTLIER * 1.4826 * float(np.median(size[valid]))
        detail[cv2.dilate(edges.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0] = 0.0
    spread = float(np.percentile(np.abs(detail[valid]), 90)) if enough else 0.0

    def grain_from(offset: np.ndarray) -> np.ndarray:
        """At each pixel, the grain ``offset`` (pixels) away from it."""
        move = np.array([[1.0, 0.0, offset[0]], [0.0, 1.0, offset[1]]])
        return np.clip(cv2.warpAffine(detail, move, shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                      borderMode=cv2.BORDER_REFLECT), -spread, spread)

    grain = grain_from(-0.5 * eye_w * down)
    # Only the fold itself keeps the warp's picture: below it the band's own texture (the
    # open lid, its crease and lashes), stretched, streaked down the shut lid.
    blend = (np.clip((t - 0.05) / 0.4, 0.0, 1.0) * lid)[..., None]
    closed = shown * (1.0 - blend) + (lid_skin + grain) * blend
    # A shut lid darkens towards its edge (the lashes' shadow); the lash line itself is
    # drawn per frame along the lid's edge, sharper than this texture could hold it.
    closed *= 1.0 - 0.2 * (np.clip((t - 0.7) / 0.3, 0.0, 1.0) * lid)[..., None]
    # The lid's picture goes on a little past its edge: the lid's band is sampled from it
    # between pixels, and where the lids meet it took in the photo's own lower rim beyond
    # that edge, a pale waterline that drew a bright dash along the lashes.
    past = (cv2.dilate(lid.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0) & ~lid
    closed = np.where(past[..., None], push_pull_fill(closed, lid.astype(np.float32)), closed)
    # The lash line's colour: the photo's own upper lash line, darkest just at and above
    # each upper lid point (iris, pupil, brows and a glasses frame are darker or bluer
    # than the lashes of a shut eye seen from above).
    lash_px = []
    for upper, _ in lm.LID_IDS.values():
        seen = _sample_above(patch, src[upper[2:-2]], np.linspace(-0.02, 0.06, 9) * eye_w, down)
        lash_px.append(seen[np.arange(len(seen)), np.argmin(seen.sum(axis=2), axis=1)])
    lash = np.median(np.vstack(lash_px), axis=0)

    # Squeezed back: each photo pixel of the lid band shows the shut picture where the
    # shut warp takes it. The opening, which the warp closes to a line, shows the lid's
    # edge fading into the lower lid's skin: the warp's coarse map smears it across a few
    # pixels there, and a dark opening smeared so wobbled under the lash line.
    squeeze, cover = _mesh_values(band, src, shut, shape)
    back = cv2.remap(closed, squeeze[..., 0], squeeze[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = np.where(cover[..., None], back, patch)
    fall = np.full(len(src), 0.5)
    fall[upper_ids], fall[lower_ids] = 0.0, 1.0
    slit, opening = _mesh_values(eye_triangles, src, np.column_stack([shut - 0.05 * eye_w * down, fall]), shape)
    # The upper lid closes over the lower one's rim (waterline, lower lashes): along the
    # lower lid's edge the texture shows the skin below instead.
    strip = np.zeros(shape, np.float32)
    for _, lower in lm.LID_IDS.values():
        poly = np.vstack([src[lower] - 0.02 * eye_w * down, src[lower][::-1] + 0.1 * eye_w * down])
        cv2.fillPoly(strip, [np.round(poly * 16).astype(np.int32)], 1.0, cv2.LINE_8, shift=4)
    under = (below > 0) & ~dark & (strip == 0) & ~opening
    lower_skin = push_pull_fill(patch, under.astype(np.float32)) if under.sum() >= 20 else skin
    strip = cv2.GaussianBlur(strip, (0, 0), max(0.7, 0.02 * eye_w))[..., None]
    # With the grain of the skin just below it, as the shut lid has the grain above it.
    out = out * (1.0 - strip) + (lower_skin + grain_from(0.14 * eye_w * down)) * strip
    lid_edge = cv2.remap(closed, slit[..., 0], slit[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    g = np.clip((slit[..., 2:] - 0.3) / 0.4, 0.0, 1.0)
    out = np.where(opening[..., None], lid_edge * (1.0 - g) + lower_skin * g, out)
    # Squeezed into the band, the shut lid keeps a third of its rows, and stretched back
    # over the eye its grain streaked. So the engine samples the shut picture itself there:
    # for each photo pixel of the band, where it lies in the shut picture, and how much that
    # picture shows (not under the lower lid's strip). Around the band, where the shut warp
    # moves nothing, the two pictures agree pixel for pixel, and the eye's own triangles
    # continue the band's map below it: the engine samples the map between pixels, and a
    # map that jumped at the band's edge left a dotted seam there.
    opened_to, in_eye = _mesh_values(eye_triangles, src, shut, shape)  # the band's map is squeeze
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    where = np.where(in_eye[..., None], opened_to, np.dstack([xs, ys]))
    where = np.where(cover[..., None], squeeze, where)
    to_shut = np.dstack([where, cover * (1.0 - strip[..., 0])]).astype(np.float32)
    out, closed = (np.clip(image + 0.5, 0, 255).astype(np.uint8) for image in (out, closed))
    return out, np.array([x0, y0, x1, y1], dtype=np.int32), lash.astype(np.float32), closed, to_shut


def _sample_above(image: np.ndarray, points: np.ndarray, heights: np.ndarray, down: np.ndarray) -> np.ndarray:
    """``image`` at each of ``points`` (N, 2) moved up by each of ``heights`` along the unit
    vector ``down``: (N, len(heights)) or (N, len(heights), C), bilinear."""
    probes = (points[:, None] - heights[None, :, None] * down).astype(np.float32)
    return cv2.remap(image, probes[..., 0], probes[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _image_down(points: np.ndarray) -> np.ndarray:
    """The face's down axis in the image, a unit 2D vector."""
    down = lm.head_axes(points)[:2, 1]
    return down / max(float(np.linalg.norm(down)), 1e-6)


def _lid_gap(points: np.ndarray, side: str, down: np.ndarray) -> float:
    """One eye's mean lid gap across the eye (along ``down``, the face's unit down axis in
    the image), in pixels. Closing lids slide along the eye as well: measured point to
    point, lids that had met still kept a third of a small eye's gap."""
    upper, lower = lm.LID_IDS[side]
    return float(np.maximum((points[lower, :2] - points[upper, :2]) @ down, 0.0).mean())


def _lid_arc(a: np.ndarray, b: np.ndarray, points: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
    """Points on the parabola from corner ``a`` to corner ``b`` that best fits ``points``
    (a lid's edge), at fractions ``at`` of the way (default: where ``points`` lie along
    it). A shut eye's lash line is a smooth arc; the landmarks along a lid wobble by a
    pixel or two."""
    length = float(np.linalg.norm(b - a))
    along = (b - a) / max(length, 1e-6)
    normal = np.array([-along[1], along[0]])
    u = (points - a) @ along / max(length, 1e-6)
    # v = k u (u - 1) passes through both corners; k by least squares over the lid points.
    basis = u * (u - 1.0)
    k = float(basis @ ((points - a) @ normal) / max(float(basis @ basis), 1e-9))
    t = u if at is None else at
    return a + np.outer(t * length, along) + np.outer(k * t * (t - 1.0), normal)


def _barycentric_maps(dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each triangle, the (3, 3) matrix taking ``[u, v, 1]`` to its barycentric
    coordinates in ``dst`` (T, 3, 2), and the triangles' doubled signed areas.

    Closed-form inverse of the (3, 3) vertex matrices; ``np.linalg.solve`` on a thousand
    tiny systems costs ten times more. Degenerate triangles get a zero matrix."""
    (x0, y0), (x1, y1), (x2, y2) = dst[:, 0].T, dst[:, 1].T, dst[:, 2].T
    det = x0 * (y1 - y2) + x1 * (y2 - y0) + x2 * (y0 - y1)
    safe = np.where(np.abs(det) < 1e-9, np.inf, det)
    # Rows of the inverse of [[x0, y0, 1], [x1, y1, 1], [x2, y2, 1]], one per triangle.
    inv = np.empty((len(dst), 3, 3), det.dtype)
    inv[:, 0, 0], inv[:, 0, 1], inv[:, 0, 2] = y1 - y2, y2 - y0, y0 - y1
    inv[:, 1, 0], inv[:, 1, 1], inv[:, 1, 2] = x2 - x1, x0 - x2, x1 - x0
    inv[:, 2, 0], inv[:, 2, 1], inv[:, 2, 2] = x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0
    inv /= safe[:, None, None]
    return inv, det


def _blend(front: np.ndarray, back: np.ndarray, alpha: np.ndarray, out: np.ndarray,
           scratch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
    """``front`` over ``back`` (RGB uint8) by ``alpha`` (uint8, 255: all ``front``), into
    ``out`` (either of them, or another), with OpenCV's saturating multiply and add: a third
    cheaper than cv2.blendLinear's float weights. ``scratch``: three RGB images of their
    size to reuse."""
    alpha3, lit, shaded = scratch or (None, None, None)
    alpha3 = cv2.cvtColor(alpha, cv2.COLOR_GRAY2RGB, dst=alpha3)
    lit = cv2.multiply(front, alpha3, dst=lit, scale=1.0 / 255.0)
    shaded = cv2.multiply(back, cv2.bitwise_not(alpha3, dst=alpha3), dst=shaded, scale=1.0 / 255.0)
    cv2.add(lit, shaded, dst=out)


def _corner_extremes(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per triangle (T, 3, 2) the lowest and highest x, y of its corners: elementwise,
    several times faster than numpy's reductions over an axis of three."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    return np.minimum(np.minimum(a, b), c), np.maximum(np.maximum(a, b), c)


class WarpEngine:
    """Renders an avatar for a target pose by warping its photo (CPU, no model)."""

    name = "warp"
    version = VERSION
    prepare = staticmethod(prepare)

    def __init__(self, avatar: Avatar, framing: Framing | None = None, grid_step: int = 4) -> None:
        self.avatar = avatar
        self.framing = framing or Framing.native(avatar.size)
        ow, oh = self.framing.output_size
        # Tiny outputs get a finer grid: at least two samples each way where they fit.
        self.grid_step = grid_step = max(1, min(grid_step, ow // 2, oh // 2))
        data = avatar.engine_data
        self._extra_src = data["points"].astype(np.float64)
        self._extra_w = data["weights"].astype(np.float64)[:, None]
        self._extra_3d = np.hstack([self._extra_src, data["depths"].astype(np.float64)[:, None]])
        # Each outer point's way out from the nearest point of the face's outline, in the photo.
        oval = avatar.landmarks[_FACE_OVAL_IDS, :2].astype(np.float64)
        near = np.linalg.norm(self._extra_src[:, None] - oval[None], axis=2).argmin(axis=1)
        self._outline_ids = _FACE_OVAL_IDS[near]
        self._outward = self._extra_src - oval[near]
        self._outward_sq = np.maximum((self._outward ** 2).sum(axis=1), 1e-6)
        self._moving = self._extra_w[:, 0] > 0.0
        self._along = np.flatnonzero(data["tapered_along"])
        self._taper_len = _taper_length(avatar)
        self._frame_max = np.array(avatar.size, np.float64) - 1.0
        self._stable_ids = np.array(lm.STABLE)
        self._stable_3d = avatar.landmarks[self._stable_ids].astype(np.float64)
        self._src = np.vstack([avatar.landmarks[:, :2], self._extra_src])
        self._back = np.vstack([data["outer_triangles"], data["hole_triangles"]])
        self._face = lm.face_triangles()
        # Each face triangle's three edges, as indices into a table of the mesh's edges.
        pairs = np.sort(self._face[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 3, 2), axis=2)
        self._edge_ends, edge_ids = np.unique(pairs.reshape(-1, 2), axis=0, return_inverse=True)
        self._face_edges = edge_ids.reshape(-1, 3)
        signed = self._signed_area(self._src, self._face)
        self._face_src_sign = np.sign(signed)
        # A head seen from the side shows its far cheek in a few pixels, which a head turning
        # back towards the camera spreads across the cheek in streaks: there the face blends
        # towards its other side, mirrored (see _MIRROR_FROM).
        self._mirror_src = np.vstack([avatar.landmarks[lm.mirror_ids(), :2], self._extra_src])
        mirrored = self._signed_area(self._mirror_src, self._face)
        own = np.maximum(np.abs(signed), 1e-6)
        gain = np.clip(np.log2(np.maximum(np.abs(mirrored) / own, 1e-6)) - 1.0, 0.0, 1.0)
        # Only the sides of the face: the nose and the mouth, mirrored, showed their lit side
        # on their shaded one, where their own picture stretched reads as their shadow.
        across = np.abs(lm.across_midline(avatar.landmarks.astype(np.float64)))
        left_out = (across[self._face] < _MIRROR_SIDES).any(axis=1)
        # Nor the eyes, which have layers of their own.
        left_out |= np.isin(self._face, np.concatenate([*_EYE_RING_IDS.values(), *_IRIS_IDS])).any(axis=1)
        # Nor the face's outline, whose mirror image lies along the other side's outline and
        # shows some of what lies beyond it (hair, a veil, the backdrop).
        left_out |= np.isin(self._face, _FACE_OVAL_IDS).any(axis=1)
        gain[left_out] = 0.0
        self._mirror_gain, self._face_area = gain, own
        # Which triangles may be softened where they streak (see _STREAK_BLUR), per face
        # triangle and then the rest of the mesh: the sides of the face and all round it, but
        # not the eyes and the mouth, whose layers are drawn over them, nor the nose, whose
        # side spreads into its shadow. A cheek that shows its mirror image is softened too:
        # its own picture shows through where the mirror image is blended in only in part.
        sides = (across[self._face] >= _MIRROR_SIDES).all(axis=1)
        sides &= ~np.isin(self._face, np.concatenate([*_EYE_RING_IDS.values(), *_IRIS_IDS, lm.MOUTH])).any(axis=1)
        # Round the face, the band from its outline to the first ring (ears, the side of the
        # head, the jaw's edge); further out the person's layer mostly gives way to the plate.
        beside = np.isin(data["outer_triangles"], _FACE_OVAL_IDS).any(axis=1)
        holes = len(self._back) - len(beside)
        self._streaky = (np.concatenate([beside, np.zeros(holes, bool)]).astype(np.float32),
                         sides.astype(np.float32))
        # The face's triangles all wind one way round; seen from the front, most of the
        # photo's do. Those it shows from behind (the far side of a head seen from the
        # side, folded under the rest) were hidden however the head turned: turned to the
        # front, they are drawn, and show their mirror images, where the photo shows those
        # from the front.
        self._front = float(np.sign(signed.sum()))
        self._turnable = (np.sign(signed) != self._front) & (np.sign(mirrored) == -self._front) & ~left_out
        self._shade_sigma = max(1.0, _MIRROR_SHADE * avatar.proportions["face_width"] * self.framing.scale)
        self._corner_count = np.maximum(np.bincount(self._face.ravel(), minlength=len(self._src)), 1)
        # Shrink a photo much larger than the output once, so remap does not alias.
        self._tex_scale = 1.0 / self.framing.scale if self.framing.scale > 1.5 else 1.0
        lids = avatar.image.copy()
        x0, y0, x1, y1 = (int(v) for v in data["lids_box"])
        lids[y0:y1, x0:x1] = data["lids"]
        self._lids = self._shrink(lids)
        self._lids_origin = np.array([x0, y0], np.float32)
        self._lids_shut = self._shrink(data["lids_shut"])
        self._lids_to_shut = data["lids_to_shut"].astype(np.float32) * np.float32([self._tex_scale, self._tex_scale, 1.0])
        # The texture's eyes show sclera only; the irises are drawn where the pose puts them.
        eyes = avatar.image.copy()
        eyes[y0:y1, x0:x1] = data["sclera"]
        self._texture = self._shrink(eyes)
        self._blurred = cv2.GaussianBlur(self._texture, (0, 0), _STREAK_BLUR)
        self._irises = data["irises"]
        self._iris_fills = data["iris_fills"]
        self._iris_keeps = data["iris_keeps"].astype(np.float32) / 255.0
        self._iris_home = [_iris_in_eye(avatar.landmarks, lm.iris_circle(avatar.landmarks, iris)[0], side)
                           for iris, side in zip(_IRIS_IDS, _EYE_RINGS)]
        geometry = data["iris_geometry"].astype(np.float64)
        self._iris_radius = geometry[:, 2]
        # Where each iris square's centre pixel lies from the iris's centre, in photo pixels.
        self._iris_anchor = geometry[:, 3:5] - geometry[:, :2]
        down = _image_down(avatar.landmarks)
        self._lid_gap = {s: _lid_gap(avatar.landmarks, s, down) for s in _EYE_RINGS}
        self._lash_color = np.round(data["lash_color"]).astype(np.uint8)
        self._alpha = self._shrink(data["person_alpha"])
        # Grid samples sit on the centres of grid_step x grid_step pixel blocks, which is
        # where cv2.resize puts a small image's pixels when it enlarges it grid_step
        # times: the dense map is one resize of the grid (a quarter of a warpAffine).
        step = grid_step
        self._grid_w, self._grid_h = -(-ow // step), -(-oh // step)
        gy, gx = np.mgrid[0:self._grid_h, 0:self._grid_w].astype(np.float32)
        self._grid_u, self._grid_v = gx, gy
        # Output pixel of grid sample g: (g + 0.5) * step - 0.5.
        self._grid_origin = 0.5 * step - 0.5
        out_xy = np.stack([gx, gy], axis=-1).astype(np.float64) * step + self._grid_origin
        in_photo = self.framing.to_avatar(out_xy)
        self._identity_tex = (in_photo * self._tex_scale).astype(np.float32)
        aw, ah = avatar.size
        self._inside_photo = ((in_photo >= 0) & (in_photo <= (aw - 1, ah - 1))).all(axis=-1)
        # The same as an affine map on grid coordinates (row 2 is the constant), in
        # texture pixels: the last entry of each frame's map table, so ids of -1 pick it.
        s = self.framing.scale * self._tex_scale
        o = (np.asarray(self.framing.offset) + self._grid_origin * self.framing.scale) * self._tex_scale
        self._identity_affine = np.array([[step * s, 0.0], [0.0, step * s], [o[0], o[1]]], dtype=np.float32)
        # The grid with one extrapolated sample all round, resized and cropped: every
        # output pixel lies between samples, none in resize's clamped outer half-cell.
        # Zeroed: the row extrapolation reads the corner columns before they are filled.
        self._padded = np.zeros((self._grid_h + 2, self._grid_w + 2, 2), np.float32)
        self._cell_pixels = np.mgrid[0:step, 0:step]  # a grid cell's pixels, rows and columns
        self._dense_size = ((self._grid_w + 2) * step, (self._grid_h + 2) * step)
        self._crop = np.s_[step:step + oh, step:step + ow]
        self._dense = np.empty(self._dense_size[::-1] + (2,), np.float32)
        self._scratch = [np.empty((oh, ow, 3), np.uint8) for _ in range(3)]
        # The background plate never moves: sample it into the output framing once.
        oy, ox = np.mgrid[0:oh, 0:ow].astype(np.float32)
        plate_map = self.framing.to_avatar(np.stack([ox, oy], axis=-1)).astype(np.float32) * self._tex_scale
        self._plate = cv2.remap(self._shrink(data["background"]), plate_map[..., 0], plate_map[..., 1],
                                cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # Output pixels on the photo's own border show exactly that border pixel, whatever
        # the triangles next to it do (the frame's border never moves).
        aw, ah = avatar.size
        full = self.framing.to_avatar(np.stack([ox, oy], axis=-1).astype(np.float64))
        fx, fy = full[..., 0], full[..., 1]
        pinned = np.isclose(fx, 0) | np.isclose(fx, aw - 1) | np.isclose(fy, 0) | np.isclose(fy, ah - 1)
        self._pinned = np.nonzero(pinned)
        self._pinned_src = (full[pinned] * self._tex_scale).astype(np.float32)
        lips = avatar.landmarks[list(lm.MOUTH), :2].round().astype(int)
        lips = lips.clip(0, [aw - 1, ah - 1])
        # A mouth opened wider than the photo shows is filled with a dark cavity tinted
        # like this avatar's lips, not with stretched lip texture.
        self._lip_color = avatar.image[lips[:, 1], lips[:, 0]].reshape(-1, 3).mean(axis=0)
        # Teeth are lit like this face: about as bright as its skin allows, and white the
        # way its eye whites are (both take the light's and the photo's colour; in the shared
        # clips the two hues agree within a few percent). Eyes too small or shaded to show
        # whites brighter than the skin leave ivory faintly tinted by the skin instead.
        oval = np.round(avatar.landmarks[list(lm.FACE_OVAL), :2]).astype(np.int32)
        face_mask = np.zeros(avatar.image.shape[:2], np.uint8)
        cv2.fillConvexPoly(face_mask, cv2.convexHull(oval), 1)
        skin = np.asarray(cv2.mean(avatar.image, face_mask)[:3])
        lum = float(np.clip(0.8 * skin.mean() + 80, 120, 235))
        whites = _eye_whites(avatar.image, avatar.landmarks)
        if whites is not None and whites.mean() > skin.mean():
            tint = (whites / max(float(whites.mean()), 1.0)) ** 0.8
        else:
            # Ivory in a colour photo, fading to plain grey in a black-and-white one.
            colour = min(1.0, float(np.ptp(skin)) / max(float(skin.max()), 1.0) / 0.15)
            tint = (1.0 - (1.0 - np.array([1.0, 0.97, 0.9])) * colour) * (skin / max(skin.mean(), 1.0)) ** 0.3
        self._teeth_color = np.clip(tint * lum, 0, 255)
        self._src_gap = float(np.linalg.norm(avatar.landmarks[lm.UPPER_LIP_MID, :2] - avatar.landmarks[lm.LOWER_LIP_MID, :2]))
        self._mouth_width = lm.mouth_width(avatar.landmarks)
        # How much wider than the photo's own gap the lips part before the painted cavity is
        # in full: 8% of the mouth's width where the photo shows an interior of its own to
        # stretch, 3% where its lips are closed (stretched lip between them reads as closed).
        self._cavity_ramp = (0.03 + 0.05 * min(self._src_gap / (0.05 * self._mouth_width), 1.0)) * self._mouth_width

    @staticmethod
    def _signed_area(points: np.ndarray, tris: np.ndarray) -> np.ndarray:
        a, b, c = points[tris[:, 0]], points[tris[:, 1]], points[tris[:, 2]]
        return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])

    def control_points(self, pose: AvatarPose) -> np.ndarray:
        """Target positions of all mesh points: landmarks, then the outer points."""
        # The head's 3D motion, fitted on the points expressions barely move.
        head = fit_similarity(self._stable_3d, pose.landmarks[self._stable_ids])
        moved = head.apply(self._extra_3d)[:, :2]
        motion = moved - self._extra_src
        weight = self._extra_w
        if len(self._along):  # the ring outside the hair: tapered by the border it moves towards
            weight = weight.copy()
            k = self._along
            step = motion[k] / (np.linalg.norm(motion[k], axis=1, keepdims=True) + 1e-9)
            with np.errstate(divide="ignore", invalid="ignore"):
                room = np.where(step > 0, (self._frame_max - self._extra_src[k]) / step,
                                np.where(step < 0, -self._extra_src[k] / step, np.inf))
            weight[k] *= np.clip(room.min(axis=1, keepdims=True) / self._taper_len, 0.0, 1.0)
        extra = self._extra_src + weight * motion
        # The outer points (at the ears' depth) and the face's edge (in front of them) close
        # in on each other as the head turns: tipped back 20 degrees, the hair above the
        # forehead slid down under the face, whose top edge then cut straight across it.
        # However far the head turns, each outer point keeps a share of its way out.
        out = ((extra - pose.xy[self._outline_ids]) * self._outward).sum(axis=1) / self._outward_sq
        short = np.where(self._moving, np.maximum(_OUTLINE_KEEP - out, 0.0), 0.0)
        extra += short[:, None] * self._outward
        return np.vstack([pose.xy, extra])

    def source_map(self, pose: AvatarPose) -> np.ndarray:
        """For each output pixel, the avatar-photo position it shows: (H, W, 2) float32, as
        the grid maps it (``render`` redraws a turned face's outlines finer)."""
        return self._dense_map(pose, alpha=False)[0]

    def _dense_map(self, pose: AvatarPose, alpha: bool) -> tuple[np.ndarray, np.ndarray | None, _Mend | None,
                                                                  _Mirrored | None,
                                                                  tuple[tuple[int, int], np.ndarray] | None]:
        """The source map and, with ``alpha=True``, the person layer's weight on the grid,
        float32 0..1 (the person's alpha where things moved by a pixel or more, 1 where
        nothing did), where a turned-away face's outline is to be drawn per pixel, where
        the face shows its other side mirrored and where the photo is drawn out in streaks."""
        dst = self.control_points(pose)
        face = self._face
        area = self._signed_area(dst, face)
        # A triangle whose winding flipped has turned away from the camera: hide it (unless
        # the photo showed it from behind and it has turned to the front: see _turnable).
        visible = (np.sign(area) == self._face_src_sign) & (np.abs(area) > 1e-3)
        turned = self._turnable & (np.sign(area) == self._front) & (np.abs(area) > 1e-3)
        visible |= turned
        shown = np.flatnonzero(visible)
        face = face[shown]
        z = pose.landmarks[:, 2]
        depth = z[face[:, 0]] + z[face[:, 1]] + z[face[:, 2]]  # three times the mean
        order = np.argsort(-depth, kind="stable")  # far first, near drawn over it
        tris = np.vstack([self._back, face[order]])
        # Each triangle's index among the face's, -1 for the rest of the mesh.
        face_ids = np.concatenate([np.full(len(self._back), -1), shown[order]])
        streaky = np.concatenate([self._streaky[0], self._streaky[1][face_ids[len(self._back):]]])

        grid = (self.framing.to_output(dst) + 0.5) / self.grid_step - 0.5
        corners = grid[tris]  # (T, 3, 2)
        # Triangles wholly outside the grid, or flat, cover no sample.
        lo, hi = _corner_extremes(corners)
        keep = np.flatnonzero((hi[:, 0] > -1) & (hi[:, 1] > -1) & (lo[:, 0] < self._grid_w) & (lo[:, 1] < self._grid_h))
        tris, corners, lo, hi, face_ids, streaky = tris[keep], corners[keep], lo[keep], hi[keep], face_ids[keep], streaky[keep]
        bary, det = _barycentric_maps(corners)
        if not (np.abs(det) > 1e-9).all():
            keep = np.abs(det) > 1e-9
            tris, corners, lo, hi, bary, face_ids, streaky = (tris[keep], corners[keep], lo[keep], hi[keep], bary[keep],
                                                               face_ids[keep], streaky[keep])
        ids = self._rasterize(corners, lo, hi, bary)
        padded = self._padded
        affine, box, c = self._grid_map(self._src[tris], bary, ids, padded[1:-1, 1:-1])
        src = padded[1:-1, 1:-1]  # texture pixels
        # Samples inside the photo that no shown triangle covers lie where the face folded
        # away from the camera. They take the smoothest positions that meet the samples
        # around them: the identity's, the photo as it was there, showed a hard-edged patch
        # of cheek across the ear of a head turned far.
        holes = (ids < 0) & self._inside_photo
        if holes.any():
            src[:] = membrane_fill(src, holes)
        self._fill_rim(padded)
        dense = cv2.resize(padded, self._dense_size, dst=self._dense, interpolation=cv2.INTER_LINEAR)[self._crop]
        dense[self._pinned] = self._pinned_src
        if not alpha:
            return dense.copy(), None, None, None, None  # the buffer is the next frame's
        # Where the face has turned away from the camera, its outline cuts across the mesh
        # behind it, and so does its edge where it moves over what lies around it (a chin
        # lowered over the collar): the coarse map would blur the two into a smeared,
        # stepped edge. Only cells where the map does jump are drawn per pixel.
        outline = self._face_edge(grid)
        if not visible.all():
            outline |= self._turned_edges(visible, grid)
        mend = self._silhouette(corners, lo, hi, affine, box, src, c, outline, dense)
        # The person's alpha at each grid sample's source point; where nothing moved the
        # photo itself shows (background and soft hair edge alike), so the filled-in
        # plate appears only where the person moved away. A soft mask needs no per-pixel
        # lookup: sampled on the grid and resized it costs a twentieth.
        person = cv2.remap(self._alpha, src, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        moved = src - self._identity_tex
        moved = cv2.magnitude(moved[..., 0], moved[..., 1]) * np.float32(2.0 / self._tex_scale)
        still = np.clip(2.0 - moved, 0.0, 1.0)
        weight = np.maximum(person.astype(np.float32) * np.float32(1.0 / 255.0), still)
        mirrored = self._mirrored(area, visible, turned, tris, corners, face_ids, bary, ids)
        return dense, weight, mend, mirrored, self._streaks(affine, corners, ids, streaky)

    def _streaks(self, affine: np.ndarray, corners: np.ndarray, ids: np.ndarray,
                 streaky: np.ndarray) -> tuple[tuple[int, int], np.ndarray] | None:
        """Where the map draws the photo out in streaks (see _STREAK_BLUR), on the grid: the
        grid sample at the corner of a box of samples and, over the box, how far each shows
        the blurred photo (0..1). From the triangles' affine maps (as _grid_map gives them),
        their corners on the grid, the triangle ``ids`` each sample shows and how far each
        triangle may be softened; None where none is."""
        # Each triangle's map is affine: its singular values, in photo (texture) pixels per
        # output pixel, are how far it squeezes the photo along the stretch (the smaller)
        # and across it.
        a, b, p, q = (affine[:-1, k].astype(np.float64) / self.grid_step for k in (0, 2, 1, 3))
        sq = a * a + b * b + p * p + q * q
        det = np.abs(a * q - b * p)
        across = np.sqrt(0.5 * (sq + np.sqrt(np.maximum(sq * sq - 4.0 * det * det, 0.0))))
        along = det / np.maximum(across, 1e-9)
        # Drawn out: an output pixel spans less than a photo pixel along the stretch, and less
        # than across it (a photo shown enlarged all round is soft, not streaked).
        stretch = np.minimum(across, 1.0) / np.maximum(along, 1e-6)
        share = np.clip((stretch - _STREAK_FROM) / (_STREAK_FULL - _STREAK_FROM), 0.0, 1.0) * streaky
        drawn = np.flatnonzero(share >= 0.1)
        if not len(drawn):
            return None
        # Only the samples round those triangles, three more all round for the feathering.
        gh, gw = ids.shape
        near, far = _corner_extremes(corners[drawn])
        g0, g1 = max(math.floor(near[:, 1].min()) - 3, 0), min(math.ceil(far[:, 1].max()) + 4, gh)
        h0, h1 = max(math.floor(near[:, 0].min()) - 3, 0), min(math.ceil(far[:, 0].max()) + 4, gw)
        if g1 <= g0 or h1 <= h0:
            return None
        table = np.append(share, 0.0).astype(np.float32)  # ids of -1: the photo as it is
        # Softened evenly over a sample or two round it, not in the triangles' steps.
        return (g0, h0), cv2.GaussianBlur(table.take(ids[g0:g1, h0:h1]), (0, 0), 1.0)

    def _grid_map(self, corners_src: np.ndarray, bary: np.ndarray, ids: np.ndarray, out: np.ndarray,
                  window: tuple[slice, slice] = np.s_[:, :]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Each grid sample's photo point (texture pixels) from the affine map of the
        triangle ``ids`` says it shows, written to ``out`` (grid_h, grid_w, 2); the identity
        where ``ids`` is -1 (``ids`` and ``out`` cover the grid's ``window``). ``corners_src``:
        the triangles' corners in the photo (T, 3, 2), ``bary`` their barycentric maps.
        Returns the maps (T + 1, 6), their source boxes and each sample's map (six grids)."""
        corners_src = corners_src * self._tex_scale
        affine = np.concatenate([(bary @ corners_src).astype(np.float32),
                                 self._identity_affine[None]]).reshape(-1, 6)
        # The fill also paints samples just outside a triangle's edges; in a sliver (a
        # triangle nearly edge-on) its map flings those far across the photo, so each
        # sample stays inside its triangle's source box.
        box = np.concatenate([v + d for v, d in zip(_corner_extremes(corners_src), (-0.5, 0.5))], axis=1)
        box = np.concatenate([box, [[-np.inf, -np.inf, np.inf, np.inf]]]).astype(np.float32)
        c = [affine[:, k].take(ids) for k in range(6)]
        u, v = self._grid_u[window], self._grid_v[window]
        # A nearly flat triangle has huge coefficients: overflow (or inf * 0 = NaN) is
        # clamped to its source box, fmax/fmin taking the bound where the value is NaN.
        with np.errstate(over="ignore", invalid="ignore"):
            for j in range(2):
                at = c[j] * u
                at += c[2 + j] * v
                at += c[4 + j]
                np.fmax(at, box[:, j].take(ids), out=at)
                out[..., j] = np.fmin(at, box[:, 2 + j].take(ids), out=at)
        return affine, box, c

    def _fill_rim(self, padded: np.ndarray) -> None:
        """Fill the grid's rim of one sample all round (``padded``, in place) by linear
        extrapolation (rows, then columns and corners); a grid one sample thin is only
        repeated."""
        thin_y, thin_x = self._grid_h < 2, self._grid_w < 2
        padded[0] = padded[1] if thin_y else 2 * padded[1] - padded[2]
        padded[-1] = padded[-2] if thin_y else 2 * padded[-2] - padded[-3]
        padded[:, 0] = padded[:, 1] if thin_x else 2 * padded[:, 1] - padded[:, 2]
        padded[:, -1] = padded[:, -2] if thin_x else 2 * padded[:, -2] - padded[:, -3]

    def _mirrored(self, area: np.ndarray, visible: np.ndarray, turned: np.ndarray, tris: np.ndarray,
                  corners: np.ndarray, face_ids: np.ndarray, bary: np.ndarray, ids: np.ndarray) -> _Mirrored | None:
        """Where the face shows its other side mirrored: None where it shows none. ``area``
        and ``visible``: per face triangle, its doubled signed area in the pose and whether
        it is shown, ``turned`` whether it is shown from behind (see _turnable); ``tris``,
        ``corners`` (grid units), ``face_ids``, ``bary`` and ``ids`` as the grid was drawn."""
        if not (self._mirror_gain.any() or turned.any()):
            return None
        spread = np.abs(area) / self._face_area
        share = self._mirror_gain * np.clip((spread - _MIRROR_FROM) / (_MIRROR_FULL - _MIRROR_FROM), 0.0, 1.0)
        share[~visible] = 0.0
        share[turned] = 1.0
        if share.max() <= 0.0:
            return None
        on_face = face_ids >= 0

        def field(values: np.ndarray, window: tuple[slice, slice]) -> np.ndarray:
            """Per triangle corner values (T, 3), linear inside each triangle, on the grid."""
            coef = np.concatenate([(bary @ values[..., None])[..., 0], np.zeros((1, 3))]).astype(np.float32)
            c = [coef[:, k].take(ids[window]) for k in range(3)]
            return np.clip(c[0] * self._grid_u[window] + c[1] * self._grid_v[window] + c[2], 0.0, 1.0)

        # Per mesh point, the mean over the face triangles around it: the blend fades over
        # the triangles next to those spread.
        point = np.bincount(self._face.ravel(), weights=np.repeat(share, 3), minlength=len(self._src)) / self._corner_count
        weights = np.where(on_face[:, None], point[tris], 0.0)
        # Only the grid round the triangles that have any is looked at.
        gh, gw, step = self._grid_h, self._grid_w, self.grid_step
        touched = np.flatnonzero(weights.any(axis=1))
        if not len(touched):  # all of them out of the frame
            return None
        lo, hi = _corner_extremes(corners[touched])
        (left, top), (right, bottom) = lo.min(axis=0).tolist(), hi.max(axis=0).tolist()
        b0, b1 = min(max(math.floor(top) - 1, 0), gh), min(max(math.ceil(bottom) + 2, 0), gh)
        a0, a1 = min(max(math.floor(left) - 1, 0), gw), min(max(math.ceil(right) + 2, 0), gw)
        if b1 - b0 < 3 or a1 - a0 < 3:
            return None
        blend = np.zeros((gh, gw), np.float32)
        # Off the face's own triangles (an eye or the mouth's hole, the hair, a gap where the
        # face folded away) the mirrored map jumps: no pixel between a sample there and one
        # on the face shows it.
        blend[b0:b1, a0:a1] = cv2.erode(field(weights, np.s_[b0:b1, a0:a1]), np.ones((3, 3), np.uint8))
        if blend.max() < 0.02:
            return None
        # The samples where any shows, and round them the face that sets its shading; the
        # map is made for those alone (and one more all round, for the resize).
        rows, cols = np.flatnonzero(blend.max(axis=1) > 0), np.flatnonzero(blend.max(axis=0) > 0)
        reach = int(np.ceil(3 * self._shade_sigma / step)) + 1
        r0, r1 = max(rows[0] - reach, 0), min(rows[-1] + 1 + reach, gh)
        c0, c1 = max(cols[0] - reach, 0), min(cols[-1] + 1 + reach, gw)
        window = np.s_[max(r0 - 1, 0):min(r1 + 1, gh), max(c0 - 1, 0):min(c1 + 1, gw)]
        padded = np.zeros((gh + 2, gw + 2, 4), np.float32)  # map x, y, blend, own
        inside = padded[1:-1, 1:-1][window]
        corners_src = np.where(on_face[:, None, None], self._mirror_src[tris], self._src[tris])
        self._grid_map(corners_src, bary, ids[window], inside, window)
        inside[..., 2] = blend[window]
        # The face's own picture (not what shows there from behind) sets the shading.
        own = on_face.copy()
        own[on_face] = ~turned[face_ids[on_face]]
        inside[..., 3] = field(np.repeat(own[:, None].astype(np.float64), 3, axis=1), window)
        self._fill_rim(padded)
        ow, oh = self.framing.output_size
        # Per pixel only where any shows; the shading round it is measured on the grid.
        g0, g1 = max(rows[0] - 1, 0), min(rows[-1] + 2, gh)
        h0, h1 = max(cols[0] - 1, 0), min(cols[-1] + 2, gw)
        size = ((h1 - h0 + 2) * step, (g1 - g0 + 2) * step)
        dense = cv2.resize(padded[g0:g1 + 2, h0:h1 + 2, :3], size, interpolation=cv2.INTER_LINEAR)
        y0, y1, x0, x1 = g0 * step, min(g1 * step, oh), h0 * step, min(h1 * step, ow)
        dense = dense[step:step + y1 - y0, step:step + x1 - x0]
        coarse = padded[r0 + 1:r1 + 1, c0 + 1:c1 + 1]
        return _Mirrored(np.s_[y0:y1, x0:x1], np.ascontiguousarray(dense[..., :2]), np.clip(dense[..., 2], 0.0, 1.0),
                         np.s_[r0 * step:min(r1 * step, oh), c0 * step:min(c1 * step, ow)],
                         np.ascontiguousarray(coarse[..., :2]), np.clip(coarse[..., 3], 0.0, 1.0),
                         (y0 - r0 * step, x0 - c0 * step))

    def _face_edge(self, grid: np.ndarray) -> np.ndarray:
        """Grid samples within a sample of the face's outer edge (its oval), as a boolean
        grid (``grid``: the mesh points in grid units)."""
        mask = np.zeros((self._grid_h, self._grid_w), np.uint8)
        cv2.polylines(mask, [np.round(grid[_FACE_OVAL_IDS] * 16).astype(np.int32)], True, 1, 3, cv2.LINE_8, shift=4)
        return mask > 0

    def _turned_edges(self, visible: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """Grid samples within a sample of an edge that a shown face triangle shares with
        a turned-away one (where the face's outline runs), as a boolean grid
        (``visible``: per face triangle; ``grid``: the mesh points in grid units)."""
        shown = np.zeros(len(self._edge_ends), bool)
        hidden = np.zeros(len(self._edge_ends), bool)
        shown[self._face_edges[visible]] = True
        hidden[self._face_edges[~visible]] = True
        ends = grid[self._edge_ends[shown & hidden]]
        mask = np.zeros((self._grid_h, self._grid_w), np.uint8)
        cv2.polylines(mask, list(np.round(ends * 16).astype(np.int32)), False, 1, 3, cv2.LINE_8, shift=4)
        return mask > 0

    def _silhouette(self, corners: np.ndarray, lo: np.ndarray, hi: np.ndarray, affine: np.ndarray, box: np.ndarray,
                    src: np.ndarray, coefficients: list[np.ndarray], outline: np.ndarray, dense: np.ndarray) -> _Mend | None:
        """Where the map jumps along the face's outline (a cheek or the side of the nose
        turned away, over what lies behind it; a chin moved over the collar), each pixel's
        photo points at _SUPERSAMPLE x _SUPERSAMPLE places in it, each from the nearest
        triangle there; None where there is no such jump.

        ``corners``: the triangles in drawing order, in grid units, ``lo`` and ``hi`` their
        boxes there, ``affine`` and ``box`` their maps and source boxes; ``src`` the grid's
        source points and ``coefficients`` each sample's triangle's map (six grids, as in
        ``affine``); ``outline`` the samples along the outline, ``dense`` the coarse map
        (kept where no triangle lies: a fold's gap, which it fills)."""
        if not outline.any():
            return None
        step = self.grid_step
        # Only the box of the outline's samples, one more all round, is looked at.
        rows, cols = np.flatnonzero(outline.any(axis=1)), np.flatnonzero(outline.any(axis=0))
        gh, gw = outline.shape
        r0, r1, c0, c1 = max(rows[0] - 1, 0), min(rows[-1] + 2, gh), max(cols[0] - 1, 0), min(cols[-1] + 2, gw)
        # The grid cells whose map jumps between two of their corners at the outline: only
        # their pixels change, the coarse map is close elsewhere. Cell (i, j) lies between
        # samples (i, j) and (i + 1, j + 1).
        far = np.float32(_SILHOUETTE_JUMP * step * self.framing.scale * self._tex_scale)
        part, near = src[r0:r1, c0:c1], outline[r0:r1, c0:c1]
        cells = np.zeros((r1 - r0 + 1, c1 - c0 + 1), bool)  # one more each way: cell -1
        slopes = [s[r0:r1, c0:c1] for s in coefficients]
        for axis, (du, dv) in ((1, slopes[0:2]), (0, slopes[2:4])):
            # Each neighbour's photo point as the other's triangle would put it: a surface
            # only bends there, an outline leaves both far off.
            ahead, behind = [slice(None)] * 2, [slice(None)] * 2
            ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
            ahead, behind = tuple(ahead), tuple(behind)
            step_u = part[..., 0][ahead] - part[..., 0][behind]
            step_v = part[..., 1][ahead] - part[..., 1][behind]
            with np.errstate(over="ignore", invalid="ignore"):  # a sliver's huge slopes
                off = np.minimum(np.maximum(np.abs(step_u - du[behind]), np.abs(step_v - dv[behind])),
                                 np.maximum(np.abs(step_u - du[ahead]), np.abs(step_v - dv[ahead])))
            steps = (off > far) & (near[ahead] | near[behind])
            if axis == 1:
                cells[1:, 1:-1] |= steps
                cells[:-1, 1:-1] |= steps
            else:
                cells[1:-1, 1:] |= steps
                cells[1:-1, :-1] |= steps
        if not cells.any():
            return None
        x0, y0 = c0 * step, r0 * step
        ow, oh = self.framing.output_size
        w, h = min(c1 * step, ow) - x0, min(r1 * step, oh) - y0
        # Each cell's pixels, relative to the patch: cell j spans the pixels from
        # (j + 0.5) * step - 0.5 to the next sample's (pixel x lies between samples
        # floor((x + 0.5) / step - 0.5) and the next).
        ci, cj = np.nonzero(cells)
        dy, dx = self._cell_pixels
        ys = ((ci - 1) * step + step // 2)[:, None, None] + dy
        xs = ((cj - 1) * step + step // 2)[:, None, None] + dx
        keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        ys, xs = ys[keep], xs[keep]
        if not len(ys):
            return None
        # Only triangles whose box meets one of those cells can cover their pixels (a summed
        # table of the cells answers that for all triangles at once; cell i spans grid
        # coordinates i to i + 1, kept at i + 1); drawn in order, far first,
        # _SUPERSAMPLE times finer than the pixels.
        table = cv2.integral(cells.astype(np.uint8))
        top = np.array(cells.shape[::-1])
        a0 = np.minimum(np.maximum(np.ceil(lo).astype(np.int32) - (c0, r0), 0), top)
        a1 = np.minimum(np.maximum(np.floor(hi).astype(np.int32) + 2 - (c0, r0), 0), top)
        hits = table[a1[:, 1], a1[:, 0]] - table[a0[:, 1], a1[:, 0]] - table[a1[:, 1], a0[:, 0]] + table[a0[:, 1], a0[:, 0]]
        k = _SUPERSAMPLE
        bx, by = int(xs.min()), int(ys.min())  # the box of those pixels, in the patch
        bw, bh = int(xs.max()) + 1 - bx, int(ys.max()) + 1 - by
        fine = np.full((bh * k, bw * k), -1, np.int16)  # fewer triangles than 2 ** 15
        hit = np.flatnonzero(hits > 0)
        fine_corners = np.round((((corners[hit] + 0.5) * step - 0.5 - (x0 + bx, y0 + by) + 0.5) * k - 0.5) * 16).astype(np.int32)
        for t, polygon in zip(hit.tolist(), fine_corners):
            cv2.fillConvexPoly(fine, polygon, t, lineType=cv2.LINE_8, shift=4)
        tri = fine.reshape(bh, k, bw, k)[ys - by, :, xs - bx, :].reshape(len(ys), k * k)
        # A pixel that one triangle covers whole takes one photo point, at its centre.
        mixed = (tri != tri[:, :1]).any(axis=1)
        offsets = (np.arange(k, dtype=np.float32) + 0.5) / k - 0.5
        places = [(~mixed, tri[~mixed, :1], np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)),
                  (mixed, tri[mixed], np.tile(offsets, k)[None], np.repeat(offsets, k)[None])]
        per_tri = np.concatenate([affine, box], axis=1)  # per triangle: its map, then its box
        drawn = []
        for which, t, ox, oy in places:
            t = t.astype(np.intp)
            px, py = xs[which, None] + x0, ys[which, None] + y0
            gu = (px.astype(np.float32) + ox + np.float32(0.5)) / np.float32(step) - np.float32(0.5)
            gv = (py.astype(np.float32) + oy + np.float32(0.5)) / np.float32(step) - np.float32(0.5)
            # Each place's photo point by its triangle's map, kept to the triangle's box in
            # the photo (a sliver's map flings a point just outside it far off).
            c = per_tri[t]  # -1 picks the identity's entry, replaced below
            sources = np.empty(t.shape + (2,), np.float32)
            for j in range(2):
                at = c[..., j] * gu + c[..., 2 + j] * gv + c[..., 4 + j]
                sources[..., j] = np.minimum(np.maximum(at, c[..., 6 + j]), c[..., 8 + j])
            bare = t < 0
            if bare.any():
                sources[bare] = np.broadcast_to(dense[py[:, 0], px[:, 0]][:, None], sources.shape)[bare]
            drawn.append(((py[:, 0], px[:, 0]), sources))
        return _Mend(*drawn)

    def _rasterize(self, corners: np.ndarray, lo: np.ndarray, hi: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """Index of the triangle each grid sample shows, -1 where none: later triangles
        over earlier ones. ``corners`` in grid units, with their boxes and barycentric maps.

        Triangles whose box holds a few dozen samples at most (nine in ten) are tested
        all at once against the samples in their box (the one drawn last wins); only
        the larger ones go through cv2.fillConvexPoly, one call each: a Python loop of
        a thousand calls cost more than the rest of the map."""
        gw, gh = self._grid_w, self._grid_h
        ids = np.full((gh, gw), -1, dtype=np.int32)
        start = np.maximum(np.ceil(lo), 0).astype(np.int32)
        stop = np.minimum(np.floor(hi).astype(np.int32), [gw - 1, gh - 1])
        size = np.maximum(stop - start + 1, 0)
        count = size[:, 0] * size[:, 1]
        large = np.flatnonzero(count > _FILL_SAMPLES)
        polygons = np.round(corners[large] * 16).astype(np.int32)
        for k, polygon in zip(large.tolist(), polygons):
            cv2.fillConvexPoly(ids, polygon, k, lineType=cv2.LINE_8, shift=4)
        count[large] = 0
        total = int(count.sum())
        if not total:
            return ids
        # Every sample in every small box: its triangle and its place in the box (float32
        # and np.repeat throughout: integer division and fancy indexing cost more).
        f32 = np.float32

        def per_sample(values: np.ndarray) -> np.ndarray:
            return np.repeat(values, count)

        owner = per_sample(np.arange(len(count), dtype=np.int32))
        width = per_sample(size[:, 0].astype(f32))
        local = np.arange(total, dtype=f32) - per_sample((np.cumsum(count) - count).astype(f32))
        row = np.floor((local + f32(0.5)) / width)
        x = per_sample(start[:, 0].astype(f32)) + (local - row * width)
        y = per_sample(start[:, 1].astype(f32)) + row
        coef = bary.astype(f32).reshape(-1, 9).T
        inside = np.ones(total, bool)
        for j in range(3):  # on an edge counts as inside
            inside &= x * per_sample(coef[j]) + y * per_sample(coef[3 + j]) + per_sample(coef[6 + j]) >= -1e-5
        flat = (y * gw + x).astype(np.int32)
        np.maximum.at(ids.reshape(-1), flat[inside], owner[inside])
        # Folds can leave a sample or two between triangles uncovered: they take a
        # neighbouring sample's triangle (as cv2.fillConvexPoly's edges would give them).
        gaps = ids < 0
        if gaps.any():
            nearest = cv2.dilate(ids.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
            ids[gaps] = nearest[gaps]
        return ids

    def _composite(self, person: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """The person layer over the plate, blended only inside the box of grid samples
        where the plate shows at all (often a small part of the frame)."""
        low = weight < 1.0
        if not low.any():
            return person
        step = self.grid_step
        (ow, oh), (gw, gh) = self.framing.output_size, (self._grid_w, self._grid_h)
        rows, cols = np.flatnonzero(low.any(axis=1)), np.flatnonzero(low.any(axis=0))
        # A pixel lies between the samples around it: one sample more all round.
        r0, r1, c0, c1 = max(rows[0] - 1, 0), min(rows[-1] + 2, gh), max(cols[0] - 1, 0), min(cols[-1] + 2, gw)
        x0, x1, y0, y1 = c0 * step, min(c1 * step, ow), r0 * step, min(r1 * step, oh)
        # Resize a block one sample larger still, aligned as the whole grid's resize is,
        # and keep its middle: the same weights.
        g0, g1, h0, h1 = max(c0 - 1, 0), min(c1 + 1, gw), max(r0 - 1, 0), min(r1 + 1, gh)
        block = cv2.convertScaleAbs(weight[h0:h1, g0:g1], alpha=255.0)
        block = cv2.resize(block, ((g1 - g0) * step, (h1 - h0) * step), interpolation=cv2.INTER_LINEAR)
        alpha = block[y0 - h0 * step:y1 - h0 * step, x0 - g0 * step:x1 - g0 * step]
        # Frame-sized scratch images, reused: fresh ones each frame cost page faults.
        box = np.s_[y0:y1, x0:x1]
        roi = person[box]
        _blend(roi, self._plate[box], alpha, roi, tuple(b[box] for b in self._scratch))
        return person

    def _shrink(self, image: np.ndarray) -> np.ndarray:
        if self._tex_scale != 1.0:
            image = cv2.resize(image, None, fx=self._tex_scale, fy=self._tex_scale, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image)

    def render(self, pose: AvatarPose) -> np.ndarray:
        """The avatar in this pose, RGB uint8 of the framing's output size."""
        down = _image_down(pose.landmarks)  # lids do not move the head's axes
        gaps = {side: _lid_gap(pose.landmarks, side, down) / max(self._lid_gap[side], 1e-6) for side in _EYE_RINGS}
        shut = self._lid_closure(gaps)
        if shut:
            pose = self._pull_lids(pose, shut)
        m, weight, mend, mirrored, streaks = self._dense_map(pose, alpha=True)
        person = cv2.remap(self._texture, m, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # Softened first: the outlines drawn per pixel and the mirrored cheek go over it.
        if streaks is not None:
            self._soften(person, m, streaks)
        if mend is not None:
            self._draw_outline(person, mend)
        if mirrored is not None:
            self._blend_mirrored(person, mirrored)
        self._draw_irises(person, pose, gaps)
        self._shade_lids(person, pose, gaps)
        self._close_lids(person, m, pose, shut, down)
        self._fill_mouth(person, pose)
        return self._composite(person, weight)

    def _soften(self, image: np.ndarray, m: np.ndarray, streaks: tuple[tuple[int, int], np.ndarray]) -> None:
        """Show the blurred photo in ``image`` (in place, through the source map ``m``) as far
        as ``streaks`` (see _streaks) says it is drawn out there."""
        step = self.grid_step
        ow, oh = self.framing.output_size
        (r0, c0), shares = streaks
        gh, gw = shares.shape
        # Box by box round each patch (often a few small ones on either side of the face).
        # Under a tenth blurred the streaks show as they are.
        count, _, boxes, _ = cv2.connectedComponentsWithStats((shares >= 0.1).astype(np.uint8), connectivity=8)
        for left, top, width, height, _ in boxes[1:count]:
            g0, g1 = max(top - 1, 0), min(top + height + 1, gh)
            h0, h1 = max(left - 1, 0), min(left + width + 1, gw)
            y0, x0 = (r0 + g0) * step, (c0 + h0) * step
            y1, x1 = min((r0 + g1) * step, oh), min((c0 + h1) * step, ow)
            # The grid resized as the whole grid's map is: its samples on the cells' centres.
            alpha = cv2.resize(shares[g0:g1, h0:h1], ((h1 - h0) * step, (g1 - g0) * step),
                               interpolation=cv2.INTER_LINEAR)[:y1 - y0, :x1 - x0]
            at = np.s_[y0:y1, x0:x1]
            # The blurred photo varies too slowly for a nearest pixel to differ from the
            # interpolated one (and costs a quarter).
            soft = cv2.remap(self._blurred, m[at], None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
            roi = image[at]
            _blend(soft, roi, cv2.convertScaleAbs(alpha, alpha=255.0), roi)

    def _blend_mirrored(self, image: np.ndarray, mirrored: _Mirrored) -> None:
        """Blend the face's mirrored other side in where a stretch of it shows."""
        # The other side is lit otherwise (a cheek in shade mirrored from a lit one): it lends
        # its detail, made as bright as this side's own picture is around it. Shading is
        # smooth: measured on the grid, not per pixel. Its hue is made this side's with one
        # gain per channel over the whole patch, from the two pictures' medians where this
        # side's own shows: matched place by place, the skin took the tint of the hair
        # stretched along its edge; not matched, La Velata's cheek in shade, greyish, lent its
        # grey to her warm lit one.
        own = mirrored.own
        gh, gw = own.shape
        k = self.grid_step
        sigma = self._shade_sigma / k
        near = cv2.resize(image[mirrored.around], (gw, gh), interpolation=cv2.INTER_AREA)
        far = cv2.remap(self._texture, mirrored.coarse_map, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        here, there = (cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY) for picture in (near, far))
        shown = own > 0.5
        tint = np.ones(3, np.float32)
        if shown.sum() >= 8:
            typical = np.median(far[shown], axis=0) + 1.0
            tint = (np.median(near[shown], axis=0) + 1.0) / typical
            # The shading sets the brightness: the tint keeps a typical pixel's grey level.
            tint = (tint * (_LUMA @ typical) / (_LUMA @ (tint * typical))).astype(np.float32)
        # Each sum over the own picture plus its weight (a grey level of one), so that their
        # ratio holds where that picture thins out, and is 1 far from it.
        seen = cv2.GaussianBlur(own, (0, 0), sigma) + 1e-3
        shade = (cv2.GaussianBlur(here.astype(np.float32) * own, (0, 0), sigma) + seen) \
            / (cv2.GaussianBlur(there.astype(np.float32) * own, (0, 0), sigma) + seen)
        shade = cv2.resize(shade, (gw * k, gh * k), interpolation=cv2.INTER_LINEAR)
        h, w = mirrored.blend.shape
        (dy, dx) = mirrored.offset
        shade = np.clip(shade[dy:dy + h, dx:dx + w], 0.2, 3.0)
        other = cv2.remap(self._texture, mirrored.map, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        other = cv2.multiply(other, cv2.merge([shade * t for t in tint]), dtype=cv2.CV_8U)
        roi = image[mirrored.at]
        roi[:] = cv2.blendLinear(roi, other, 1.0 - mirrored.blend, mirrored.blend)

    def _draw_outline(self, image: np.ndarray, mend: _Mend) -> None:
        """The pixels along the face's outline where the map jumps, each the mean of its
        photo points."""
        for at, sources in (mend.whole, mend.split):
            # cv2.remap takes fewer than 32767 rows: a mesh crumpled by a tracking glitch
            # (landmarks scattered over a twentieth of the face) left more pixels than that.
            rows, cols = at
            for start in range(0, len(sources), _REMAP_ROWS):
                part = np.s_[start:start + _REMAP_ROWS]
                colours = cv2.remap(self._texture, sources[part], None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                image[rows[part], cols[part]] = (colours.mean(axis=1) + 0.5).astype(np.uint8)

    def _draw_irises(self, image: np.ndarray, pose: AvatarPose, gaps: dict[str, float]) -> None:
        """Each iris, moved and scaled as the pose says, inside the eye opening the lids leave
        (``gaps``: each eye's lid gap over the photo's)."""
        h, w = image.shape[:2]
        half = self._irises.shape[1] // 2
        for k, (side, iris, ring) in enumerate(zip(_EYE_RINGS, _IRIS_IDS, _EYE_RING_IDS.values())):
            pts = self.framing.to_output(pose.xy[ring])
            x0, y0 = np.maximum(np.floor(pts.min(axis=0)).astype(int) - 1, 0)
            x1, y1 = np.minimum(np.ceil(pts.max(axis=0)).astype(int) + 2, [w, h])
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            center, radius = lm.iris_circle(pose.landmarks, iris)
            scale = radius / max(self._iris_radius[k], 1e-6) / self.framing.scale
            c = self.framing.to_output(center) - (x0, y0) + scale * (self._iris_anchor[k] - half)
            place = np.array([[scale, 0, c[0]], [0, scale, c[1]]])
            # The photo's own rim of the iris while the lids are about where the photo has
            # them, the filled-in iris as they move away.
            rest = float(np.clip(1.0 - abs(gaps[side] - 1.0) / _REST_BAND, 0.0, 1.0))
            square = self._irises[k]
            if rest < 1.0:
                square = cv2.addWeighted(square, rest, self._iris_fills[k], 1.0 - rest, 0.0)
            # Away from its place the iris leaves the sclera in its rim behind.
            shift = float(np.linalg.norm(_iris_in_eye(pose.landmarks, center, side) - self._iris_home[k]))
            away = min(shift * lm.eye_width(pose.landmarks, side) / max(radius, 1e-6) / _IRIS_MATTE_SHIFT, 1.0)
            if away > 0.0:
                square = square.copy()
                square[..., 3] = (square[..., 3] * (1.0 - away + away * self._iris_keeps[k]) + 0.5).astype(np.uint8)
            rgba = cv2.warpAffine(square, place, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            # Iris alpha times the opening, and the blend, in uint8 with OpenCV's
            # saturating arithmetic: numpy's float math costs more on patches this small.
            opening = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillPoly(opening, [np.round((pts - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
            alpha = cv2.multiply(rgba[..., 3], opening, scale=1.0 / 255.0)
            alpha = cv2.merge([alpha, alpha, alpha])
            roi = image[y0:y1, x0:x1]
            front = cv2.multiply(np.ascontiguousarray(rgba[..., :3]), alpha, scale=1.0 / 255.0)
            roi[:] = cv2.add(front, cv2.multiply(roi, cv2.bitwise_not(alpha), scale=1.0 / 255.0))

    def _upper_lid_edge(self, pose: AvatarPose, side: str) -> np.ndarray:
        """One eye's upper lid edge as a smooth arc from corner to corner, 16 points in
        output pixels."""
        a, b = self.framing.to_output(pose.xy[lm.EYE_CORNER_IDS[side]])
        upper = self.framing.to_output(pose.xy[lm.LID_IDS[side][0]])
        return _lid_arc(a, b, upper, np.linspace(0.0, 1.0, 16))

    def _shade_lids(self, image: np.ndarray, pose: AvatarPose, gaps: dict[str, float]) -> None:
        """Darken each narrowing eye's opening just under its upper lid, as the lid and its
        lashes shade a real one, the more the narrower it is. Without it a narrowed eye,
        its iris cut flat by an unshaded lid, still read as open: Face Mesh put the lids
        of an eye 40% shut nearly where the open eye's were."""
        h, w = image.shape[:2]
        for side, ring in _EYE_RING_IDS.items():
            narrow = float(np.clip((1.0 - gaps[side]) / (1.0 - _LID_START), 0.0, 1.0))
            if narrow <= 0.0:
                continue
            pts = self.framing.to_output(pose.xy[ring])
            x0, y0 = np.maximum(np.floor(pts.min(axis=0)).astype(int) - 2, 0)
            x1, y1 = np.minimum(np.ceil(pts.max(axis=0)).astype(int) + 3, [w, h])
            if x1 - x0 < 3 or y1 - y0 < 3:
                continue
            origin = np.array([x0, y0])
            edge = self._upper_lid_edge(pose, side) - origin
            reach = max(0.7, _LID_SHADOW_WIDTH * narrow * self._lid_gap[side] / self.framing.scale)
            # Darkest at the lid's edge, fading with the distance below it (a shadow of even
            # darkness over the opening's top read as a grey slab across the eye white).
            line = np.full((y1 - y0, x1 - x0), 255, np.uint8)
            cv2.polylines(line, [np.round(edge * 16).astype(np.int32)], False, 0, 1, cv2.LINE_8, shift=4)
            away = cv2.distanceTransform(line, cv2.DIST_L2, 3)
            opening = _soft_polygon(line.shape, pts - origin)
            shade = 1.0 - (_LID_SHADOW * narrow) * np.exp(-away / np.float32(reach)) * opening
            roi = image[y0:y1, x0:x1]
            roi[:] = (roi * shade[..., None] + 0.5).astype(np.uint8)

    @staticmethod
    def _lid_closure(gaps: dict[str, float]) -> dict[str, float]:
        """How far each eye is shut, 0..1, for the eyes whose lids are closing (``gaps``:
        each eye's lid gap over the photo's)."""
        shut = {}
        for side, ratio in gaps.items():
            closed = float(np.clip((_LID_START - ratio) / (_LID_START - _LID_FULL), 0.0, 1.0))
            if closed > 0.0:
                shut[side] = closed
        return shut

    @staticmethod
    def _pull_lids(pose: AvatarPose, shut: dict[str, float]) -> AvatarPose:
        """The pose with each closing eye's lids pulled together, as far as it is shut, onto
        a smooth arc along the lower lid: the lid texture is painted for lids that meet
        there, and a driver's lids seldom quite do (nor, scaled to the portrait, the
        avatar's)."""
        landmarks = pose.landmarks.copy()
        for side, pull in shut.items():
            upper, lower = lm.LID_IDS[side]
            pull = pull ** 2
            a, b = landmarks[lm.EYE_CORNER_IDS[side], :2]
            meet = _lid_arc(a, b, landmarks[lower, :2])
            landmarks[upper, :2] += pull * (meet - landmarks[upper, :2])
            landmarks[lower, :2] += pull * (meet - landmarks[lower, :2])
            landmarks[upper, 2] += pull * (landmarks[lower, 2] - landmarks[upper, 2])
        return dataclasses.replace(pose, landmarks=landmarks)

    def _close_lids(self, image: np.ndarray, m: np.ndarray, pose: AvatarPose, shut: dict[str, float],
                    down: np.ndarray) -> None:
        """Blend in the lid texture over each closing eye, and the lash line along its lid's
        edge (``down``: the face's unit down axis in the image)."""
        h, w = image.shape[:2]
        for side, closed in shut.items():
            pts = self.framing.to_output(pose.xy[_EYE_RING_IDS[side]])
            size = float(np.ptp(pts[:, 0]))
            x0, y0 = np.floor(pts.min(axis=0) - 0.5 * size).astype(int)
            x1, y1 = np.ceil(pts.max(axis=0) + 0.5 * size).astype(int)
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if x1 <= x0 or y1 <= y0:
                continue
            at = m[y0:y1, x0:x1]
            lid = cv2.remap(self._lids, at, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            # Over the lid's band, the shut picture at its own resolution.
            to_shut = cv2.remap(self._lids_to_shut, at / np.float32(self._tex_scale) - self._lids_origin, None,
                                cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            shows = to_shut[..., 2:]
            if shows.max() > 0.0:
                sharp = cv2.remap(self._lids_shut, to_shut[..., :2], None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                lid = (lid * (1.0 - shows) + sharp * shows + 0.5).astype(np.uint8)
            edge = self._upper_lid_edge(pose, side) - (x0, y0)
            ink = self._lash_ink(edge, (y1 - y0, x1 - x0), size, down)
            lash = np.empty_like(lid)
            lash[:] = self._lash_color
            lid = cv2.add(cv2.multiply(lash, ink, scale=1.0 / 255.0), cv2.multiply(lid, cv2.bitwise_not(ink), scale=1.0 / 255.0))
            if closed >= 1.0:
                image[y0:y1, x0:x1] = lid
            else:
                cv2.addWeighted(lid, closed, image[y0:y1, x0:x1], 1.0 - closed, 0.0, dst=image[y0:y1, x0:x1])

    @staticmethod
    def _lash_ink(edge: np.ndarray, shape: tuple[int, int], size: float, down: np.ndarray) -> np.ndarray:
        """How much lash colour covers each pixel of a shut eye's patch (uint8, 3 channels):
        a dark core along the lid's edge, thickest mid-lid, fading into a soft shadow on
        the lashes' side (``down``, a unit vector). Lashes point down and apart; drawn as a
        hard line of even ink they read as eyeliner."""
        thick = _LASH_WIDTH * size
        # Drawn in uint8: OpenCV anti-aliases lines only there.
        core = np.zeros(shape, np.uint8)
        arc = np.round(edge * 16).astype(np.int32)
        cv2.polylines(core, [arc], False, 255, max(1, round(0.5 * thick)), cv2.LINE_AA, shift=4)
        cv2.polylines(core, [arc[3:-3]], False, 255, max(1, round(thick)), cv2.LINE_AA, shift=4)
        hang = np.round((edge + 0.5 * thick * down) * 16).astype(np.int32)
        shadow = np.zeros(shape, np.uint8)
        cv2.polylines(shadow, [hang[2:-2]], False, 255, max(1, round(thick)), cv2.LINE_AA, shift=4)
        core = cv2.GaussianBlur(core.astype(np.float32), (0, 0), max(0.5, 0.3 * thick))
        shadow = cv2.GaussianBlur(shadow.astype(np.float32), (0, 0), max(1.0, thick))
        ink = np.minimum(_LASH_INK * core + _LASH_SHADOW * shadow, 255.0 * _LASH_INK).astype(np.uint8)
        return cv2.merge([ink, ink, ink])

    def _fill_mouth(self, image: np.ndarray, pose: AvatarPose) -> None:
        gap = float(np.linalg.norm(pose.xy[lm.UPPER_LIP_MID] - pose.xy[lm.LOWER_LIP_MID]))
        # A photo with parted lips shows its own mouth interior: opened a little wider, that
        # interior stretched looks more like the person than a painted-in cavity does.
        strength = float(np.clip((gap - max(self._src_gap + 1.0, 1.4 * self._src_gap)) / self._cavity_ramp, 0.0, 1.0))
        if strength <= 0.0:
            return
        ring = self.framing.to_output(pose.xy[lm.INNER_LIPS_IDS])
        h, w = image.shape[:2]
        x0, y0 = np.floor(ring.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(ring.max(axis=0)).astype(int) + 3
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            return
        origin = np.array([x0, y0], dtype=np.float64)
        mask = cv2.GaussianBlur(_soft_polygon((y1 - y0, x1 - x0), ring - origin), (3, 3), 0)
        fill = self._cavity(ring - origin, mask.shape, gap / max(self._mouth_width, 1e-6))
        upper, lower = pose.teeth
        if upper > 0.05 or lower > 0.05:
            corners = self.framing.to_output(pose.xy[list(lm.MOUTH_CORNERS)])
            mouth = max(float(np.linalg.norm(corners[1] - corners[0])), 1.0)
            self._draw_teeth(fill, ring - origin, upper, lower, mouth)
        # Wholly opaque: the lips, stretched from top to bottom across the opening, showed
        # through a 92% cavity as vertical streaks.
        alpha = (mask * strength)[..., None]
        roi = image[y0:y1, x0:x1]
        roi[:] = (roi * (1.0 - alpha) + fill * alpha).astype(np.uint8)

    def _cavity(self, ring: np.ndarray, shape: tuple[int, int], opening: float) -> np.ndarray:
        """The mouth's interior, float32 RGB of ``shape``, tinted like the avatar's lips:
        dark towards the throat and, once the mouth is open wide enough to show it, the
        tongue lit at the bottom (a flat near-black hole reads as a pasted shape)."""
        top, bottom = float(ring[:, 1].min()), float(ring[:, 1].max())
        left, right = float(ring[:, 0].min()), float(ring[:, 0].max())
        v = (np.arange(shape[0], dtype=np.float32)[:, None] - top) / max(bottom - top, 1.0)
        u = (np.arange(shape[1], dtype=np.float32)[None, :] - 0.5 * (left + right)) / max(0.5 * (right - left), 1.0)
        tongue = np.sqrt(np.clip((v - 0.2) / 0.8, 0.0, 1.0) * np.clip(1.0 - u * u, 0.0, 1.0))
        shade = 0.3 + 0.6 * float(np.clip((opening - 0.1) / 0.25, 0.0, 1.0)) * tongue
        return shade[..., None] * self._lip_color.astype(np.float32)

    def _draw_teeth(self, fill: np.ndarray, ring: np.ndarray, upper: float, lower: float, mouth: float) -> None:
        """Shaded upper/lower teeth rows under the lips, into the cavity colour ``fill``.

        ``upper``/``lower`` (0..1) say how clearly each row shows in the driver; how far it
        reaches from its lip follows the lip gap, as real teeth do (``mouth``: the mouth's
        width in pixels)."""
        n_up = len(lm.INNER_LIP_UPPER)
        top, bottom = ring[:n_up], ring[n_up:][::-1]  # both from one mouth corner to the other
        width = max(float(np.linalg.norm(top[-1] - top[0])), 1.0)
        # Pixels in the mouth's own frame: along the line between its corners, and across
        # it into the mouth; in image rows and columns, a mouth seen three-quarters or a
        # tilted head would have lip edges that are no function of x.
        along = ((top[-1] - top[0]) / width).astype(np.float32)
        across = np.array([-along[1], along[0]], np.float32)
        mid = 0.5 * (top[0] + top[-1])
        xs = np.arange(fill.shape[1], dtype=np.float32)[None, :] - np.float32(mid[0])
        ys = np.arange(fill.shape[0], dtype=np.float32)[:, None] - np.float32(mid[1])
        s_px, t_px = xs * along[0] + ys * along[1], xs * across[0] + ys * across[1]

        def lip_edge(edge: np.ndarray, s: np.ndarray) -> np.ndarray:
            es, et = (edge - mid) @ along, (edge - mid) @ across
            order = np.argsort(es, kind="stable")
            return np.interp(s, es[order], et[order]).astype(np.float32)

        def arch_of(edge: np.ndarray, s: np.ndarray) -> np.ndarray:
            """The smooth arch (a parabola) that a lip edge follows, corners included."""
            edge = np.vstack([top[:1], edge, top[-1:]])
            es, et = (edge - mid) @ along / width, (edge - mid) @ across
            a, b, c = np.linalg.lstsq(np.stack([es * es, es, np.ones_like(es)], axis=1), et, rcond=None)[0]
            x = s / np.float32(width)
            return ((a * x + b) * x + c).astype(np.float32)

        t_top, t_bottom = lip_edge(top, s_px), lip_edge(bottom, s_px)
        # Teeth are rigid: their biting edges follow the arch of the lips, not each kink of
        # a lip's edge (the lips of a mouth seen three-quarters zig-zagged the row).
        a_top, a_bottom = arch_of(top, s_px), arch_of(bottom, s_px)
        gap = np.maximum(a_bottom - a_top, 0.0)
        opening = max(float(lip_edge(bottom, np.zeros(1))[0] - lip_edge(top, np.zeros(1))[0]), 0.0) / mouth
        u = s_px / (0.5 * width)  # -1..1 from one mouth corner to the other
        side = np.abs(u)
        arch = np.clip(1.0 - (side / float(np.interp(opening, _TEETH_END_GAPS, _TEETH_END))) ** 2, 0.0, 1.0)
        teeth = np.zeros(fill.shape[:2], np.float32)
        tone = np.ones(fill.shape[:2], np.float32)
        tips = np.zeros(fill.shape[:2], np.float32)
        between = np.full(fill.shape[:2], np.inf, np.float32)  # pixels from a gap between teeth
        # Each row reaches from its lip into the mouth, but never across it: however wide the
        # teeth show, a dark gap stays between the rows (a solid pale bar reads as a third lip).
        for t_edge, t_arch, amount, shown, share, sign, incisor, step, shade_row in (
                (t_top, a_top, upper, _TEETH_UPPER, 0.55, 1.0, _INCISOR_WIDTHS[0], _TOOTH_STEPS[0], 1.0),
                (t_bottom, a_bottom, lower, _TEETH_LOWER, 0.35, -1.0, _INCISOR_WIDTHS[1], _TOOTH_STEPS[1],
                 _LOWER_TEETH_SHADE)):
            if amount <= 0.05:
                continue
            # Which tooth from the middle (the gap between the two front teeth), as a
            # fraction: tooth k spans incisor * (1 - step^k) / (1 - step) onwards.
            k = np.log(np.clip(1.0 - side * (1.0 - step) / incisor, 1e-6, 1.0)) / np.float32(np.log(step))
            across_tooth = k % 1.0 - 0.5  # -0.5..0.5 across each tooth
            tooth_px = incisor * step ** np.floor(k) * 0.5 * width
            # Each biting edge is square but for its rounded corners (0.94 at its sides): a
            # tooth rounded all across notched the row at every gap.
            rounded = 1.0 - 0.06 * np.clip((np.abs(across_tooth) - 0.35) / 0.15, 0.0, 1.0) ** 2
            reach = float(np.interp(opening, _TEETH_GAPS, shown)) * min(1.0, 2.0 * amount) * mouth
            length = np.minimum(reach * arch * rounded, share * gap)
            depth = sign * (t_px - t_edge)  # pixels into the mouth from this lip
            # Pixels short of the biting edge, which lies at most _BITE_SLACK mouth widths
            # (less towards the row's end) further from the lip than the teeth are long.
            bite = np.minimum(length - sign * (t_px - t_arch), length + _BITE_SLACK * mouth * arch - depth)
            row = np.clip(depth + 1.0, 0.0, 1.0) * np.clip(bite + 0.5, 0.0, 1.0)
            # A little in the lip's shadow just under it, and a little translucent, so
            # darker, along the biting edge.
            into = np.clip(1.0 - bite / np.maximum(length, 1e-3), 0.0, 1.0)
            shade = (0.88 + 0.12 * np.clip(into / 0.3, 0.0, 1.0)) * (1.0 - 0.12 * np.clip((into - 0.8) / 0.2, 0.0, 1.0))
            nearer = row > teeth
            tone = np.where(nearer, shade * shade_row, tone)
            tips = np.where(nearer, into, tips)
            between = np.where(nearer, (np.abs(across_tooth) - 0.5) * tooth_px, between)
            teeth = np.maximum(teeth, row)
        # Shading: darker towards the mouth corners, where the teeth curve away into the
        # cavity, with thin shaded gaps between the teeth, plainest at their tips; softened
        # a little.
        light = 0.7 + 0.3 * np.sqrt(np.clip(1.0 - u ** 2, 0.0, 1.0))
        light *= 1.0 - (0.03 + 0.09 * tips) * np.exp(-between * between)
        teeth = cv2.GaussianBlur(teeth, (3, 3), 0)[..., None]
        color = self._teeth_color[None, None, :] * (light * tone)[..., None]
        fill[:] = fill * (1.0 - teeth) + color * teeth
