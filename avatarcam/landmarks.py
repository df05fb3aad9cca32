"""Named index sets of MediaPipe's 478-point face mesh, its triangle topology, and
plain measurements on landmark arrays (mouth/eye opening, head angles).

All landmark arrays here are ``(478, 3)`` float arrays in pixels: x right, y down, z
(MediaPipe's relative depth scaled like x) growing away from the camera.
"""
from __future__ import annotations

import itertools
from collections import Counter
from functools import lru_cache

import numpy as np

NUM_LANDMARKS = 478
NUM_MESH_POINTS = 468  # the tessellated surface; 468..477 are the two irises

# "Right"/"left" are the subject's: the right eye appears on the image's left.
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (263, 362)
# Upper/lower lid points, paired so that each upper point sits above its lower partner.
RIGHT_EYE_UPPER = (246, 161, 160, 159, 158, 157, 173)
RIGHT_EYE_LOWER = (7, 163, 144, 145, 153, 154, 155)
LEFT_EYE_UPPER = (466, 388, 387, 386, 385, 384, 398)
LEFT_EYE_LOWER = (249, 390, 373, 374, 380, 381, 382)
RIGHT_EYE = RIGHT_EYE_CORNERS + RIGHT_EYE_UPPER + RIGHT_EYE_LOWER
LEFT_EYE = LEFT_EYE_CORNERS + LEFT_EYE_UPPER + LEFT_EYE_LOWER
RIGHT_IRIS = (468, 469, 470, 471, 472)  # centre first
LEFT_IRIS = (473, 474, 475, 476, 477)
RIGHT_BROW = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107)
LEFT_BROW = (276, 283, 282, 295, 285, 300, 293, 334, 296, 336)

MOUTH_CORNERS = (61, 291)
INNER_LIP_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LIP_LOWER = (95, 88, 178, 87, 14, 317, 402, 318, 324)
OUTER_LIP_UPPER = (185, 40, 39, 37, 0, 267, 269, 270, 409)
OUTER_LIP_LOWER = (146, 91, 181, 84, 17, 314, 405, 321, 375)
MOUTH = MOUTH_CORNERS + INNER_LIP_UPPER + INNER_LIP_LOWER + OUTER_LIP_UPPER + OUTER_LIP_LOWER
INNER_LIPS_RING = INNER_LIP_UPPER + tuple(reversed(INNER_LIP_LOWER))  # the opening's outline, in order
UPPER_LIP_MID, LOWER_LIP_MID = 13, 14

FOREHEAD_TOP, CHIN, NOSE_TIP = 10, 152, 1
# The face outline, in order around the face (starting at the top of the forehead, going
# towards the subject's left, i.e. the image's right).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21,
             54, 103, 67, 109)
# Points that move with the skull but barely with expression: forehead, nose bridge, eye
# corners, temples and upper cheeks. Head pose is fitted on these alone, so opening the
# mouth or raising the brows is not mistaken for a head movement.
STABLE = (10, 338, 297, 332, 109, 67, 103, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 33, 133,
          362, 263, 234, 454, 127, 356, 93, 323, 98, 327, 50, 280, 116, 345)

# Each mesh point's mirror partner across the face's midline, as pairs (points on the
# midline are their own). Matched on the mean of 83 faces from real talking-head clips,
# each turned frontal and scaled to one face width, against its mirror image (the largest
# mismatch is 0.013 face widths); the pairing keeps 1316 of the tessellation's 1322 edges
# (its triangulation is not quite symmetric).
MIRROR_PAIRS = (
    3, 248, 7, 249, 20, 250, 21, 251, 22, 252, 23, 253, 24, 254, 25, 255, 26, 256, 27, 257, 28, 258, 29, 259, 30,
    260, 31, 261, 32, 262, 33, 263, 34, 264, 35, 265, 36, 266, 37, 267, 38, 268, 39, 269, 40, 270, 41, 271, 42, 272,
    43, 273, 44, 274, 45, 275, 46, 276, 47, 277, 48, 278, 49, 279, 50, 280, 51, 281, 52, 282, 53, 283, 54, 284, 55,
    285, 56, 286, 57, 287, 58, 288, 59, 289, 60, 290, 61, 291, 62, 292, 63, 293, 64, 294, 65, 295, 66, 296, 67, 297,
    68, 298, 69, 299, 70, 300, 71, 301, 72, 302, 73, 303, 74, 304, 75, 305, 76, 306, 77, 307, 78, 308, 79, 309, 80,
    310, 81, 311, 82, 312, 83, 313, 84, 314, 85, 315, 86, 316, 87, 317, 88, 318, 89, 319, 90, 320, 91, 321, 92, 322,
    93, 323, 95, 324, 96, 325, 97, 326, 98, 327, 99, 328, 100, 329, 101, 330, 102, 331, 103, 332, 104, 333, 105,
    334, 106, 335, 107, 336, 108, 337, 109, 338, 110, 339, 111, 340, 112, 341, 113, 342, 114, 343, 115, 344, 116,
    345, 117, 346, 118, 347, 119, 348, 120, 349, 121, 350, 122, 351, 123, 352, 124, 353, 125, 354, 126, 355, 127,
    356, 128, 357, 129, 358, 130, 359, 131, 360, 132, 361, 133, 362, 134, 363, 135, 364, 136, 365, 137, 366, 138,
    367, 139, 368, 140, 369, 141, 370, 142, 371, 143, 372, 144, 373, 145, 374, 146, 375, 147, 376, 148, 377, 149,
    378, 150, 379, 153, 380, 154, 381, 155, 382, 156, 383, 157, 384, 158, 385, 159, 386, 160, 387, 161, 388, 162,
    389, 163, 390, 165, 391, 166, 392, 167, 393, 169, 394, 170, 395, 171, 396, 172, 397, 173, 398, 174, 399, 176,
    400, 177, 401, 178, 402, 179, 403, 180, 404, 181, 405, 182, 406, 183, 407, 184, 408, 185, 409, 186, 410, 187,
    411, 188, 412, 189, 413, 190, 414, 191, 415, 192, 416, 193, 417, 194, 418, 196, 419, 198, 420, 201, 421, 202,
    422, 203, 423, 204, 424, 205, 425, 206, 426, 207, 427, 208, 428, 209, 429, 210, 430, 211, 431, 212, 432, 213,
    433, 214, 434, 215, 435, 216, 436, 217, 437, 218, 438, 219, 439, 220, 440, 221, 441, 222, 442, 223, 443, 224,
    444, 225, 445, 226, 446, 227, 447, 228, 448, 229, 449, 230, 450, 231, 451, 232, 452, 233, 453, 234, 454, 235,
    455, 236, 456, 237, 457, 238, 458, 239, 459, 240, 460, 241, 461, 242, 462, 243, 463, 244, 464, 245, 465, 246,
    466, 247, 467, 468, 473, 469, 476, 470, 475, 471, 474, 472, 477
)


@lru_cache(maxsize=1)
def mirror_ids() -> np.ndarray:
    """For each of the 478 landmarks, the index of its mirror partner (its own on the
    midline), as ``(478,)`` int."""
    ids = np.arange(NUM_LANDMARKS)
    pairs = np.array(MIRROR_PAIRS).reshape(-1, 2)
    ids[pairs[:, 0]], ids[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
    return ids


def across_midline(points: np.ndarray) -> np.ndarray:
    """How far each point lies to the side of the face's midline, along the face's own
    right axis, in face widths (negative on the image's left of a frontal face)."""
    middle = (0.5 * (points + points[mirror_ids()])).mean(axis=0)
    return (points - middle) @ head_axes(points)[:, 0] / face_width(points)


@lru_cache(maxsize=1)
def face_edges() -> np.ndarray:
    """The 1322 edges of MediaPipe's canonical face mesh (its tessellation), as
    ``(1322, 2)`` int32, each with its lower index first, in order."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    return np.array(sorted({tuple(sorted(e)) for e in FACEMESH_TESSELATION}), dtype=np.int32)


@lru_cache(maxsize=1)
def face_triangles() -> np.ndarray:
    """The 852 triangles of MediaPipe's canonical face mesh, as ``(852, 3)`` int32, all
    wound the same way round the surface (seen from the front, all one way round).

    MediaPipe exports only the mesh's edges; its faces are the 3-cycles of that graph,
    less the two 3-cycles that are not faces (recognisable because each of their edges
    would then border three triangles, impossible on a surface).
    """
    edges = [tuple(e) for e in face_edges().tolist()]
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    cycles = {tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]}
    uses = Counter(e for t in cycles for e in itertools.combinations(t, 2))
    faces = [t for t in cycles if not all(uses[e] == 3 for e in itertools.combinations(t, 2))]
    return _wound_alike(np.array(sorted(faces), dtype=np.int32))


def _wound_alike(triangles: np.ndarray) -> np.ndarray:
    """``triangles`` with their corners reordered so that all wind the same way round
    the surface (each shared edge run in opposite directions by its two triangles)."""
    tris = triangles.copy()
    by_edge: dict[tuple[int, int], list[int]] = {}
    for k, t in enumerate(tris.tolist()):
        for e in itertools.combinations(sorted(t), 2):
            by_edge.setdefault(e, []).append(k)
    done = np.zeros(len(tris), bool)
    for start in range(len(tris)):
        if done[start]:
            continue
        done[start] = True
        queue = [start]
        while queue:
            k = queue.pop()
            a, b, c = tris[k]
            for u, v in ((a, b), (b, c), (c, a)):
                for n in by_edge[(min(u, v), max(u, v))]:
                    if done[n]:
                        continue
                    x, y, z = tris[n]
                    if (u, v) in ((x, y), (y, z), (z, x)):  # runs the edge the same way: turn it over
                        tris[n] = (x, z, y)
                    done[n] = True
                    queue.append(n)
    return tris


def _dist(points: np.ndarray, a: int, b: int) -> float:
    return float(np.linalg.norm(points[a, :2] - points[b, :2]))


def eye_width(points: np.ndarray, side: str) -> float:
    corners = RIGHT_EYE_CORNERS if side == "right" else LEFT_EYE_CORNERS
    return _dist(points, *corners)


# Index arrays for per-frame code (numpy converts a tuple on every indexing): per eye its
# (upper lid, lower lid) points, paired, and its corners; the inner lips' outline.
LID_IDS = {"right": (np.array(RIGHT_EYE_UPPER), np.array(RIGHT_EYE_LOWER)),
           "left": (np.array(LEFT_EYE_UPPER), np.array(LEFT_EYE_LOWER))}
EYE_CORNER_IDS = {"right": np.array(RIGHT_EYE_CORNERS), "left": np.array(LEFT_EYE_CORNERS)}
INNER_LIPS_IDS = np.array(INNER_LIPS_RING)
_OUTER_LIPS = np.array(OUTER_LIP_UPPER + OUTER_LIP_LOWER)
# The pale pixels of one half of an open mouth are a tongue where their median redness
# (Lab a*) is above the lips' plus _TONGUE_REDNESS, teeth from _TONGUE_RAMP below that.
_TONGUE_REDNESS, _TONGUE_RAMP = -0.5, 1.5


def eye_height(points: np.ndarray, side: str) -> float:
    """Mean lid gap of one eye, in pixels."""
    upper, lower = LID_IDS[side]
    d = points[upper, :2] - points[lower, :2]
    return float(np.sqrt((d * d).sum(axis=1)).mean())


def iris_circle(points: np.ndarray, iris) -> tuple[np.ndarray, float]:
    """Centre and mean radius of an iris in the image (its centre point first, then four on
    the rim), in pixels."""
    center = points[iris[0], :2]
    d = points[np.asarray(iris[1:]), :2] - center
    return center, float(np.sqrt((d * d).sum(axis=1)).mean())


def eye_opening(points: np.ndarray) -> float:
    """Lid gap over eye width, averaged over both eyes (about 0.25-0.35 open, < 0.1 closed)."""
    return 0.5 * sum(eye_height(points, s) / max(eye_width(points, s), 1e-6) for s in ("right", "left"))


def mouth_width(points: np.ndarray) -> float:
    return _dist(points, *MOUTH_CORNERS)


def mouth_opening(points: np.ndarray) -> float:
    """Inner-lip gap over mouth width (0 closed, about 0.5 and more wide open)."""
    return _dist(points, UPPER_LIP_MID, LOWER_LIP_MID) / max(mouth_width(points), 1e-6)


def face_width(points: np.ndarray) -> float:
    return _dist(points, 234, 454)


def face_height(points: np.ndarray) -> float:
    return _dist(points, FOREHEAD_TOP, CHIN)


def head_axes(points: np.ndarray) -> np.ndarray:
    """The head's orientation as a 3x3 rotation whose columns are the face's right, down
    and forward (into the screen) axes in camera space, from landmarks alone."""
    x = points[LEFT_EYE_CORNERS[0]] - points[RIGHT_EYE_CORNERS[0]]  # towards the image's right when frontal
    x += points[454] - points[234]
    y = points[CHIN] - points[FOREHEAD_TOP]
    x = x / np.linalg.norm(x)
    z = _cross(x, y)
    z /= np.linalg.norm(z)
    y = _cross(z, x)
    return np.stack([x, y, z], axis=1)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cross product of two 3-vectors (np.cross costs ten times more on one pair)."""
    (a0, a1, a2), (b0, b1, b2) = a.tolist(), b.tolist()
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


def head_angles(points: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees. Yaw > 0: the face turns towards the image's right;
    pitch > 0: chin up; roll > 0: the head tilts clockwise in the image."""
    r = head_axes(points)
    forward = r[:, 2]
    yaw = float(np.degrees(np.arctan2(-forward[0], forward[2])))
    pitch = float(np.degrees(np.arctan2(forward[1], np.hypot(forward[0], forward[2]))))
    right = r[:, 0]
    roll = float(np.degrees(np.arctan2(right[1], right[0])))
    return yaw, pitch, roll


def _mouth_pixels(image: np.ndarray, points: np.ndarray) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray, float] | None:
    """The inner lips' box ``(x0, y0)``, the opening's pixels in it, those of them that look
    like teeth, the box in Lab and the lips' median a* (None for a box under 3 pixels)."""
    import cv2

    ring = points[INNER_LIPS_IDS, :2]
    h, w = image.shape[:2]
    x0, y0 = np.maximum(np.floor(ring.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(ring.max(axis=0)).astype(int) + 1, [w, h])
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [np.round(ring - (x0, y0)).astype(np.int32)], 1)
    box = np.ascontiguousarray(image[y0:y1, x0:x1])
    hsv = cv2.cvtColor(box, cv2.COLOR_RGB2HSV)
    lab = cv2.cvtColor(box, cv2.COLOR_RGB2LAB)
    # Brightness and redness relative to the lips around the opening, so lighting matters less.
    lips = points[_OUTER_LIPS, :2].round().astype(int).clip(0, [w - 1, h - 1])
    lip_rgb = np.ascontiguousarray(image[lips[:, 1], lips[:, 0]])
    lip_v = float(np.median(lip_rgb.max(axis=1)))  # HSV's V is the largest channel
    lip_l, lip_a = np.median(cv2.cvtColor(lip_rgb[None], cv2.COLOR_RGB2LAB)[0, :, :2].astype(np.float32), axis=0)
    grey = (hsv[..., 2] > max(1.1 * lip_v, 60)) & (hsv[..., 1] < 110)
    paler = (lab[..., 0] > max(1.08 * lip_l, 50)) & (lab[..., 1] < lip_a - 4)
    return (int(x0), int(y0)), mask > 0, (grey | paler) & (mask > 0), lab, float(lip_a)


def teeth_pixels(image: np.ndarray, points: np.ndarray) -> tuple[tuple[int, int], np.ndarray, np.ndarray] | None:
    """The pixels between the inner lips that look like teeth (or a pale tongue: see
    :func:`teeth_showing`): the box's corner ``(x0, y0)`` in the image, the opening's pixels
    in the box and the teeth-like ones among them (bool masks); None where the box is under
    3 pixels."""
    found = _mouth_pixels(image, points)
    return None if found is None else found[:3]


def teeth_showing(image: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    """How much upper and lower teeth show in a frame, each 0..1, from its pixels.

    Teeth are the pixels between the inner lips that are brighter than the lips and either
    nearly grey or clearly less red than the lips (lips, tongue and the dark cavity are
    darker or redder). The second test, relative to the lips, finds teeth in warm or dim
    light, where they are as saturated as the skin. Each half of the opening is scored by
    the share of such pixels in it, and not at all where they are as red as the lips: a pale
    tongue, not teeth. Costs a few hundredths of a millisecond: only the mouth's box is
    looked at."""
    gap = _dist(points, UPPER_LIP_MID, LOWER_LIP_MID)
    if gap < 0.04 * mouth_width(points):
        return 0.0, 0.0
    found = _mouth_pixels(image, points)
    if found is None:
        return 0.0, 0.0
    (_, y0), mask, teeth, lab, lip_a = found
    # Each half of the opening: its pixels, and the teeth among them.
    mid = 0.5 * (points[UPPER_LIP_MID, 1] + points[LOWER_LIP_MID, 1]) - y0
    split = int(np.clip(np.ceil(mid), 0, mask.shape[0]))
    scores = []
    for rows in (slice(0, split), slice(split, None)):
        inside = int(mask[rows].sum())
        found_rows = teeth[rows]
        if not inside or not found_rows.any():
            scores.append(0.0)
            continue
        # A pale tongue passes the tests above too, but it is as red as the lips; teeth,
        # in any light, a few levels less (shared clips: teeth 1.5-17 below the lips' a*,
        # tongues 1 below to 3 above).
        redder = float(np.median(lab[rows][..., 1][found_rows])) - lip_a
        not_tongue = float(np.clip((_TONGUE_REDNESS - redder) / _TONGUE_RAMP, 0.0, 1.0))
        scores.append(float(np.clip(2.5 * found_rows.sum() / inside, 0.0, 1.0)) * not_tongue)
    return scores[0], scores[1]
