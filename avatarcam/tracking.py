"""Face tracking: MediaPipe Face Mesh (478 points with iris), skin points pinned to the
skin by optical flow, and One-Euro smoothing."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np

from avatarcam import landmarks as lm
from avatarcam.geometry import fit_similarity_2d
from avatarcam.landmarks import face_width


def _mediapipe_face_mesh():
    # Imported lazily: MediaPipe takes a second to import and the CLI should answer
    # `--help` and bad-argument errors instantly.
    import os

    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mediapipe.python.solutions import face_mesh

    return face_mesh


def _mediapipe_face_detection():
    _mediapipe_face_mesh()  # the same quiet logging
    from mediapipe.python.solutions import face_detection

    return face_detection


# One NormalizedLandmark as protobuf puts it on the wire when only x, y, z are set (as
# Face Mesh does): field tag 0x0a and length 15, then three tagged little-endian float32s.
_LANDMARK_RECORD = np.dtype([("head", "u1", (3,)), ("x", "<f4"), ("tag_y", "u1"), ("y", "<f4"),
                             ("tag_z", "u1"), ("z", "<f4")])


def _face_mesh_landmarks(mesh, image: np.ndarray) -> list | None:
    """``mesh.process(image).multi_face_landmarks``, without the per-call overhead.

    SolutionBase.process builds a namedtuple class on every call and goes through its
    generic packet plumbing (0.12 ms a frame, 5% of tracking); this feeds the graph the
    same packet at the same simulated timestamps and reads the one output Face Mesh has.
    It relies on SolutionBase's attributes in the pinned MediaPipe line; should they
    differ, the public process() is used."""
    try:
        graph, outputs = mesh._graph, mesh._graph_outputs
        (stream, kind), = mesh._input_stream_type_info.items()
        make_packet = mesh._make_packet
    except (AttributeError, TypeError, ValueError):
        return mesh.process(image).multi_face_landmarks
    from mediapipe.python import packet_getter

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("Input image must contain three channel rgb data.")
    outputs.clear()
    mesh._simulated_timestamp += 33333  # as process() does: a 30 fps stream
    graph.add_packet_to_input_stream(stream=stream, packet=make_packet(kind, image).at(mesh._simulated_timestamp))
    graph.wait_until_idle()
    packet = outputs.get("multi_face_landmarks")
    return None if packet is None or packet.is_empty() else packet_getter.get_proto_list(packet)


def _landmark_array(face) -> np.ndarray:
    """(N, 3) float64 of a NormalizedLandmarkList.

    Read from the message's serialised bytes with one numpy view (0.08 ms a face) rather
    than 478 x 3 attribute reads in Python (0.21 ms). Any other layout (visibility set,
    say) takes the attribute path; both give the same floats."""
    data = face.SerializeToString()
    n = len(face.landmark)
    if n and len(data) == n * _LANDMARK_RECORD.itemsize:
        rec = np.frombuffer(data, _LANDMARK_RECORD)
        if ((rec["head"] == (0x0A, 0x0F, 0x0D)).all() and (rec["tag_y"] == 0x15).all()
                and (rec["tag_z"] == 0x1D).all()):
            return np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float64)
    return np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64).reshape(-1, 3)


def _to_pixels(face, width: int, height: int) -> np.ndarray:
    pts = _landmark_array(face)
    # MediaPipe's z is normalised by the image width, like x.
    return pts * np.array([width, height, width])


class LandmarkFilter:
    """One-Euro filter (Casiez et al., CHI 2012) over a whole landmark array at once.

    Each point gets its own cutoff from its own speed, so a talking mouth stays crisp
    while the still forehead does not shimmer. Speeds are measured in face widths per
    second, which makes the tuning independent of resolution and distance to camera.
    Speeds below ``jitter_speed`` are what MediaPipe's frame-to-frame noise alone produces
    at ``gate_fps`` frames a second and do not open the filter: a still face stays still
    while a steep ``beta`` lets a blink or a spoken syllable through without lag. The gate
    follows the frame rate, as the noise does: a frame's noise is a displacement, so over
    the longer step between frames of a slower camera it looks like a slower movement.
    (The ``OneEuroFilter`` package filters one scalar per object: 1434 Python calls,
    1.4 ms a frame here, as long as Face Mesh itself; this is the same filter vectorised.)
    """

    def __init__(self, min_cutoff: float = 0.5, beta: float = 80.0, d_cutoff: float = 2.0,
                 jitter_speed: float = 0.1, gate_fps: float = 30.0) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.jitter_speed = jitter_speed
        self._reference_noise = self._noise_speed(1.0 / gate_fps)
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def _noise_speed(self, dt: float) -> float:
        """The size of the smoothed velocity that unit noise on every frame alone gives,
        frames ``dt`` apart (its standard deviation: an exponential average of noise/dt)."""
        a = float(self._alpha(self.d_cutoff, dt))
        return math.sqrt(a / (2.0 - a)) / dt

    def __call__(self, points: np.ndarray, timestamp: float, scale: float,
                 jitter_speed: np.ndarray | None = None) -> np.ndarray:
        """Smoothed ``points``; ``jitter_speed`` (one per point) overrides the filter's own
        where some points are known to be steadier than Face Mesh's."""
        if self._x is None or self._dx is None or self._t is None or timestamp <= self._t:
            self._x, self._dx, self._t = points.copy(), np.zeros_like(points), timestamp
            return points.copy()
        dt = timestamp - self._t
        # The velocity is smoothed as a vector before its size is taken: jitter's random
        # steps cancel out there, a real movement's do not.
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * (points - self._x) / dt + (1.0 - a_d) * self._dx
        speed = np.linalg.norm(self._dx, axis=1) / max(scale, 1e-6)
        gate = self.jitter_speed if jitter_speed is None else jitter_speed
        # At 10 fps half as high as at 30: the talking mouth of a 10 fps clip, held back by
        # the 30 fps gate, lagged a frame (mouth opening r against the clip's own landmarks
        # .90, unfiltered .97, with this gate .94).
        gate = gate * (self._noise_speed(dt) / self._reference_noise)
        a = self._alpha(self.min_cutoff + self.beta * np.maximum(speed - gate, 0.0), dt)[:, None]
        self._x = a * points + (1.0 - a) * self._x
        self._t = timestamp
        return self._x.copy()


# A head tilted less than this (sine of the angle, about 2 degrees) from its reference gets
# an upright crop.
_UPRIGHT = 0.035


def _inside_convex(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Which ``points`` (N, 2) lie inside the convex hull of ``ring`` (M, 2)."""
    hull = cv2.convexHull(ring.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    edges = np.roll(hull, -1, axis=0) - hull
    rel = points[:, None, :] - hull[None]
    cross = edges[None, :, 0] * rel[..., 1] - edges[None, :, 1] * rel[..., 0]
    # Inside: on the same side of every edge, whichever way the hull runs.
    return (cross >= 0).all(axis=1) | (cross <= 0).all(axis=1)


class FlowRefiner:
    """Pins the skin's landmarks to the skin with dense optical flow.

    Face Mesh places each point afresh on every frame, partly from what it expects a face
    to look like: on skin without features (cheeks, forehead, nose) its points sit 1-2% of
    the face's width away from where the skin they marked on a reference frame has moved,
    and the avatar's warp carries that error. Here the first frame of a tracked face is the
    reference; each frame, OpenCV's DIS flow from the reference to the current frame, in a
    small crop aligned on the head's rigid motion, carries the reference's points along
    with the skin. Points whose look changes as they move keep Face Mesh's places: lips,
    eyes and brows (and a margin round them: hair over a brow fools the flow), and the
    face's outline against the background. So does any point where flow and Face Mesh
    disagree by more than ``trust`` face widths, fading over as much again: a hand, hair
    or a large turn away from the reference.

    ``width`` is the crop's width in pixels (the face is shrunk to it, never enlarged).
    """

    # Frame-to-frame noise of the points that follow the flow, as a share of Face Mesh's own
    # (a still photo with webcam-like noise, sigma 3 levels: p95 speed 0.011 against 0.038
    # face widths a second): a smoothing filter's noise gate for them scales with it.
    NOISE_SHARE = 0.3
    # Regions whose points keep Face Mesh's positions: the convex hull of each ring, grown
    # about its centre by this share.
    _KEEP_RINGS = (lm.OUTER_LIP_UPPER + lm.OUTER_LIP_LOWER + lm.MOUTH_CORNERS, lm.RIGHT_EYE, lm.LEFT_EYE,
                   lm.RIGHT_BROW, lm.LEFT_BROW)
    _KEEP_GROW = 0.3

    def __init__(self, width: int = 160, trust: float = 0.04) -> None:
        self.width = width
        self.trust = trust
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._stable = np.array(lm.STABLE)
        self.reset()

    def reset(self) -> None:
        """Take the next face as the new reference."""
        self._reference: np.ndarray | None = None

    @property
    def refined(self) -> np.ndarray:
        """Ids of the points that follow the flow (set by the reference frame)."""
        return self._ids

    def __call__(self, points: np.ndarray, image: np.ndarray) -> np.ndarray:
        """``points`` (Face Mesh's, pixels) with the skin points moved to follow the skin."""
        if self._reference is None:
            self._set_reference(points, image)
            return points
        # The reference crop's box carried by the head's motion, so that the flow is left
        # with what the face itself did.
        motion = fit_similarity_2d(self._points[self._stable, :2], points[self._stable, :2])
        current, to_frame = self._crop(image, motion[:, :2] @ self._centre + motion[:, 2], motion[:, :2] * self._step)
        flow = self._flow.calc(self._reference, current, None)
        moved = self._at + cv2.remap(flow, self._at[:, :1], self._at[:, 1:], cv2.INTER_LINEAR)[:, 0]
        follow = moved @ to_frame[:, :2].T + to_frame[:, 2]
        mesh = points[self._ids, :2]
        off = np.sqrt(((follow - mesh) ** 2).sum(axis=1)) / max(face_width(points), 1e-6)
        weight = np.clip(2.0 - off / self.trust, 0.0, 1.0)[:, None]
        out = points.copy()
        out[self._ids, :2] = mesh + weight * (follow - mesh)
        return out

    def _set_reference(self, points: np.ndarray, image: np.ndarray) -> None:
        xy = points[:, :2]
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        size = 1.2 * (hi - lo)
        self._step = max(1.0, size[0] / self.width)  # frame pixels per crop pixel
        self._size = (max(int(size[0] / self._step), 8), max(int(size[1] / self._step), 8))
        self._centre = (lo + hi) / 2
        self._reference, to_frame = self._crop(image, self._centre, self._step * np.eye(2))
        self._points = points.copy()
        mesh = xy[:lm.NUM_MESH_POINTS]
        keep = np.ones(lm.NUM_MESH_POINTS, bool)
        keep[list(lm.FACE_OVAL)] = False
        for ring in self._KEEP_RINGS:
            ring_xy = xy[list(ring)]
            centre = ring_xy.mean(axis=0)
            keep[list(ring)] = False
            keep &= ~_inside_convex(mesh, centre + (1.0 + self._KEEP_GROW) * (ring_xy - centre))
        self._ids = np.flatnonzero(keep)
        self._at = ((xy[self._ids] - to_frame[:, 2]) / np.diag(to_frame[:, :2])).astype(np.float32)

    def _crop(self, image: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The grey crop of ``image`` round ``centre`` whose pixel steps are the columns of
        ``axes`` (in frame pixels), and the 2x3 affine map from crop to frame."""
        cw, ch = self._size
        half = (np.array([cw, ch]) - 1) / 2
        to_frame = np.hstack([axes, (centre - axes @ half)[:, None]])
        step = math.hypot(axes[0, 0], axes[1, 0])
        upright = abs(axes[1, 0]) < _UPRIGHT * step
        if upright:
            # The box itself, resized: the flow takes a small tilt in its stride.
            x0, y0 = (round(c - n * step / 2) for c, n in zip(centre, (cw, ch)))
            x1, y1 = x0 + max(round(cw * step), 1), y0 + max(round(ch * step), 1)
        else:
            corners = to_frame[:, :2] @ np.array([[-0.5, -0.5], [cw - 0.5, -0.5], [-0.5, ch - 0.5], [cw - 0.5, ch - 0.5]]).T
            lo, hi = (corners + to_frame[:, 2:]).min(axis=1), (corners + to_frame[:, 2:]).max(axis=1)
            x0, y0 = (math.floor(v) - 1 for v in lo)
            x1, y1 = (math.ceil(v) + 2 for v in hi)
        h, w = image.shape[:2]
        inner = image[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
        if inner.shape[0] < 2 or inner.shape[1] < 2:
            return np.zeros((ch, cw), np.uint8), to_frame  # off the frame: no flow to find
        roi = cv2.cvtColor(inner, cv2.COLOR_RGB2GRAY)
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:  # at the frame's edge: its pixels fill the outside
            roi = cv2.copyMakeBorder(roi, max(-y0, 0), max(y1 - h, 0), max(-x0, 0), max(x1 - w, 0), cv2.BORDER_REPLICATE)
        # Halved (pixel p of a level sits on pixel 2p of the one below) until what is left
        # shrinks at most twice: the flow works at a quarter of the crop's size, so linear
        # sampling then aliases nothing it sees (INTER_AREA would cost six times more).
        levels = 1
        while step > 2 * levels and min(roi.shape) > 16:
            roi = cv2.pyrDown(roi)
            levels *= 2
        if upright:
            sx, sy = roi.shape[1] / cw, roi.shape[0] / ch
            # Crop pixel u sits on pixel (u + 0.5) * s - 0.5 of the last level.
            return cv2.resize(roi, (cw, ch), interpolation=cv2.INTER_LINEAR), np.array(
                [[levels * sx, 0.0, x0 + levels * (0.5 * sx - 0.5)], [0.0, levels * sy, y0 + levels * (0.5 * sy - 0.5)]])
        to_level = (to_frame - np.array([[0.0, 0.0, x0], [0.0, 0.0, y0]])) / levels
        crop = cv2.warpAffine(roi, to_level, (cw, ch), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
        return crop, to_frame


class TrackingState(Enum):
    SEARCHING = "searching"  # no face seen yet
    TRACKING = "tracking"
    LOST = "lost"  # a face was seen, but not in the latest frame


@dataclass
class TrackedFace:
    landmarks: np.ndarray  # (478, 3) pixels, smoothed
    raw: np.ndarray  # (478, 3) pixels, as MediaPipe gave them
    timestamp: float


def face_box(points: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) pixel box around a face's landmarks."""
    xy = points[:, :2]
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _largest(faces: list[np.ndarray]) -> np.ndarray:
    return max(faces, key=lambda p: float(np.ptp(p[:, 0]) * np.ptp(p[:, 1])))


class FaceTracker:
    """Follows one face through a stream of RGB frames.

    ``process(frame, timestamp)`` returns a :class:`TrackedFace` or ``None`` when no face
    is found; ``state`` and ``lost_for(now)`` tell why and since when.

    With several people in view it keeps following the same one: a face is accepted only
    if it overlaps the last tracked face's box (not because it is the largest), and only
    after the followed face has been gone for ``reacquire_s`` is someone else taken. When
    the full frame shows only someone else (MediaPipe re-detected the wrong person after a
    hand went over the face), the followed face is looked for in a crop around its last
    place. Faces too small for MediaPipe's full-frame detector (someone sitting back from a
    720p camera) are found by scanning square crops of the frame, then followed in a crop.
    ``max_faces`` is how many faces MediaPipe tracks in the full frame: 1 is cheapest, as
    with more its detector runs on every frame that shows fewer. With ``refine`` the skin's
    points follow the skin by optical flow (:class:`FlowRefiner`) before smoothing.
    """

    def __init__(self, smoothing: bool = True, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5, filter: LandmarkFilter | None = None, *,
                 max_faces: int = 1, small_faces: bool = True, reacquire_s: float = 1.0,
                 min_iou: float = 0.15, refine: bool = True) -> None:
        face_mesh = _mediapipe_face_mesh()
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=max_faces, refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence)
        # Crops move from frame to frame, so they are searched as stills (detection every time).
        self._crop_mesh = face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=3, refine_landmarks=True,
            min_detection_confidence=min_detection_confidence) if small_faces else None
        self.filter = (filter or LandmarkFilter()) if smoothing else None
        self.refiner = FlowRefiner() if refine else None
        self._gate_ids: np.ndarray | None = None  # the refined ids self._gate was made for
        self._gate: np.ndarray | None = None
        self.reacquire_s = reacquire_s
        self.min_iou = min_iou
        self.state = TrackingState.SEARCHING
        self.last: TrackedFace | None = None
        self.frames = 0
        self.frames_with_face = 0
        self.frames_from_crops = 0  # faces found only by the small-face search
        self._via_crop = False  # follow in a crop: the face is small, or the full frame shows someone else
        self._crowded = False  # the last full-frame pass found only someone else
        self._tile = 0  # next crop of the small-face search
        self._mesh_tracking = False  # Face Mesh found a face in the last full frame (so tracks it)

    def process(self, image: np.ndarray, timestamp: float | None = None) -> TrackedFace | None:
        t = time.perf_counter() if timestamp is None else timestamp
        self.frames += 1
        image = np.ascontiguousarray(image)
        raw = None
        if not self._via_crop:
            faces = self._find(self._mesh, image, 0, 0)
            if faces and not self._mesh_tracking:
                # A face just found by MediaPipe's detector sits a little differently in
                # its landmarks than on every later frame, which are found from the last
                # frame's landmarks. The same frame once more gives it the later frames'
                # fit, so a neutral taken from it matches them (self-reenactment error in
                # the face -10%; one extra Face Mesh call per acquisition).
                faces = self._find(self._mesh, image, 0, 0) or faces
            self._mesh_tracking = bool(faces)
            raw = self._pick(faces, t)
            self._crowded = bool(faces) and raw is None
        if raw is None and self._crop_mesh is not None:
            # One tile a frame, but every tile on the very first frame: a still image as
            # the driver of a file render has no second frame (a face at one end of a wide
            # picture was never found), and a camera's first frame may cost that once.
            for _ in range(len(_search_tiles(image.shape[1], image.shape[0])) if self.frames == 1 else 1):
                raw = self._search_crop(image, t)
                if raw is not None:
                    break
            self._via_crop = raw is not None and (self._crowded or self._is_small(raw, image))
            self.frames_from_crops += raw is not None
        if raw is None:
            self._via_crop = False
            if self.state is TrackingState.TRACKING:
                self.state = TrackingState.LOST
            if self.filter is not None:
                self.filter.reset()  # a re-found face must not be dragged from its old place
            if self.refiner is not None:
                self.refiner.reset()
            return None
        if self.refiner is not None:
            points = self.refiner(raw, image)
            if self.filter is not None and self._gate_ids is not self.refiner.refined:
                # Points that follow the flow are steadier: the filter's noise gate for them
                # is lower (a still face stays as still, and they lag less when they move).
                self._gate_ids = self.refiner.refined
                self._gate = np.full(len(raw), self.filter.jitter_speed)
                self._gate[self._gate_ids] *= FlowRefiner.NOISE_SHARE
        else:
            points = raw
        if self.filter is None:
            smooth = points
        else:
            smooth = self.filter(points, t, face_width(points), self._gate if self.refiner is not None else None)
        self.state = TrackingState.TRACKING
        self.frames_with_face += 1
        self.last = TrackedFace(smooth, raw, t)
        return self.last

    def new_reference(self) -> None:
        """The next frame becomes the flow refiner's reference (a new neutral, a mirrored view)."""
        if self.refiner is not None:
            self.refiner.reset()

    # -- choosing and finding faces ---------------------------------------------------------
    def _recent(self, t: float) -> bool:
        return self.last is not None and t - self.last.timestamp <= self.reacquire_s

    def _pick(self, faces: list[np.ndarray], t: float) -> np.ndarray | None:
        """The followed person's face among ``faces``, by overlap with where it last was."""
        if not faces:
            return None
        if not self._recent(t):
            return _largest(faces)
        assert self.last is not None
        previous = face_box(self.last.raw)
        overlaps = [box_iou(previous, face_box(f)) for f in faces]
        best = int(np.argmax(overlaps))
        # Nobody where the followed face was: it is hidden or gone, which is not a reason
        # to jump to someone else (yet).
        return faces[best] if overlaps[best] >= self.min_iou else None

    @staticmethod
    def _find(mesh, image: np.ndarray, x0: int, y0: int) -> list[np.ndarray]:
        faces = _face_mesh_landmarks(mesh, image)
        if not faces:
            return []
        h, w = image.shape[:2]
        return [_to_pixels(f, w, h) + np.array([x0, y0, 0.0]) for f in faces]

    def _search_crop(self, image: np.ndarray, t: float) -> np.ndarray | None:
        """Look in one crop: around the last face if it was seen lately, else the next
        tile of a scan over the frame (one tile a frame keeps the cost bounded)."""
        h, w = image.shape[:2]
        if self._recent(t):
            assert self.last is not None
            x0, y0, x1, y1 = face_box(self.last.raw)
            side = int(min(max(3.0 * max(x1 - x0, y1 - y0), 96), min(w, h)))
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            left = int(np.clip(cx - side / 2, 0, w - side))
            top = int(np.clip(cy - side / 2, 0, h - side))
        else:
            tiles = _search_tiles(w, h)
            left, top, side = tiles[self._tile % len(tiles)]
            self._tile += 1
        crop = np.ascontiguousarray(image[top:top + side, left:left + side])
        return self._pick(self._find(self._crop_mesh, crop, left, top), t)

    @staticmethod
    def _is_small(points: np.ndarray, image: np.ndarray) -> bool:
        # Below about an eighth of the frame width MediaPipe's detector (128 px input)
        # stops seeing a face; above a fifth its own tracking follows it fine.
        x0, _, x1, _ = face_box(points)
        return (x1 - x0) < 0.2 * image.shape[1]

    def lost_for(self, now: float) -> float:
        """Seconds since the face was last seen (0 while tracking, inf before any face)."""
        if self.state is TrackingState.TRACKING:
            return 0.0
        return math.inf if self.last is None else max(0.0, now - self.last.timestamp)

    def close(self) -> None:
        self._mesh.close()
        if self._crop_mesh is not None:
            self._crop_mesh.close()

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _search_tiles(width: int, height: int, side: int | None = None) -> list[tuple[int, int, int]]:
    """(left, top, side) of square crops, two thirds of the short side unless ``side`` is
    given, overlapping by half, that cover the frame: a face an eighth of the frame wide
    fills a fifth of one."""
    side = max(1, (2 * min(width, height)) // 3 if side is None else min(side, width, height))

    def starts(length: int) -> list[int]:
        n = max(1, math.ceil((length - side) / (side / 2)) + 1)
        return sorted({round(i * (length - side) / max(n - 1, 1)) for i in range(n)})

    return [(x, y, side) for y in starts(height) for x in starts(width)]


def _locate_faces(image: np.ndarray) -> list[np.ndarray]:
    """Boxes (x0, y0, x1, y1) of the faces MediaPipe's full-range detector finds in the
    whole image and, for one far from square, in squares of its short side overlapping by
    half (a face at one end of a wide photo, letterboxed whole, is too small to see)."""
    h, w = image.shape[:2]
    crops = [(0, 0, w, h)]
    if max(w, h) > 1.3 * min(w, h):
        crops += [(x, y, side, side) for x, y, side in _search_tiles(w, h, min(w, h))]
    boxes: list[np.ndarray] = []
    with _mediapipe_face_detection().FaceDetection(model_selection=1, min_detection_confidence=0.5) as detector:
        for x, y, cw, ch in crops:
            result = detector.process(np.ascontiguousarray(image[y:y + ch, x:x + cw]))
            for detection in result.detections or []:
                b = detection.location_data.relative_bounding_box
                box = np.array([x + b.xmin * cw, y + b.ymin * ch, x + (b.xmin + b.width) * cw, y + (b.ymin + b.height) * ch])
                if all(box_iou(box, other) < 0.3 for other in boxes):
                    boxes.append(box)
    return boxes


def detect_faces(image: np.ndarray, max_faces: int = 5) -> list[np.ndarray]:
    """All faces in a still image, largest first, as (478, 3) pixel landmark arrays."""
    face_mesh = _mediapipe_face_mesh()
    h, w = image.shape[:2]
    found: list[np.ndarray] = []
    # MediaPipe letterboxes to a square detector input, so a face in a tall painting can
    # be too small to detect; a square crop around the upper part is tried next.
    attempts = [(image, 0, 0)]
    if h > 1.3 * w:
        attempts.append((image[: w + w // 3], 0, 0))
    elif w > 1.3 * h:
        off = (w - h) // 2
        attempts.append((image[:, off: off + h], off, 0))
    with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces, refine_landmarks=True,
                            min_detection_confidence=0.3) as mesh:
        for crop, dx, dy in attempts:
            result = mesh.process(np.ascontiguousarray(crop))
            if result.multi_face_landmarks:
                ch, cw = crop.shape[:2]
                found = [_to_pixels(f, cw, ch) + np.array([dx, dy, 0.0]) for f in result.multi_face_landmarks]
                break
        if not found:
            # Face Mesh's own detector sees only faces that fill a good part of its square
            # input: a half-length portrait's face 6% of the photo wide, or a face at one
            # end of a wide photo, went unseen. The full-range detector finds them; Face
            # Mesh then looks again in a square around each.
            for box in _locate_faces(image):
                side = int(min(max(3.0 * max(box[2] - box[0], box[3] - box[1]), 96), min(w, h)))
                left = int(np.clip((box[0] + box[2] - side) / 2, 0, w - side))
                top = int(np.clip((box[1] + box[3] - side) / 2, 0, h - side))
                result = mesh.process(np.ascontiguousarray(image[top:top + side, left:left + side]))
                for f in result.multi_face_landmarks or []:
                    face = _to_pixels(f, side, side) + np.array([left, top, 0.0])
                    if all(box_iou(face_box(face), face_box(other)) < 0.3 for other in found):
                        found.append(face)

    def area(p: np.ndarray) -> float:
        return float(np.ptp(p[:, 0]) * np.ptp(p[:, 1]))

    found.sort(key=area, reverse=True)
    return found[:max_faces]
