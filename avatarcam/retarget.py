"""Retargeting: the driver's motion, relative to its neutral face, moved onto the avatar.

The driver's landmarks are split into a rigid head motion (similarity fitted on points
that expressions barely move) and a residual expression. The expression is measured in
the driver's own neutral frame, rotated into the avatar's frame and rescaled part by part
to the avatar's proportions (eyes by eye size, the mouth's width by mouth width and its
opening by face height, the rest by face size), so a wide-faced driver moves a
narrow-faced portrait without widening it. Lids and lips may close but never cross, and
no upright mesh edge around the mouth folds over. The head motion is then applied to the
avatar's own 3D landmarks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avatarcam import landmarks as lm
from avatarcam.geometry import (
    Similarity,
    clamp_rotation,
    fit_similarity,
    fit_similarity_2d,
)
from avatarcam.tracking import TrackedFace

# Index arrays, not lists or tuples: numpy converts a list on every indexing.
_STABLE = np.array(lm.STABLE)
_RIGHT_EYE = np.array(lm.RIGHT_EYE + lm.RIGHT_IRIS)
_LEFT_EYE = np.array(lm.LEFT_EYE + lm.LEFT_IRIS)
_MOUTH = np.array(lm.MOUTH)
_RIGHT_IRIS, _LEFT_IRIS = np.array(lm.RIGHT_IRIS), np.array(lm.LEFT_IRIS)
_LOWER_LIP = np.array(lm.INNER_LIP_LOWER + lm.OUTER_LIP_LOWER)
_RIGHT_LIDS, _LEFT_LIDS = np.array(lm.RIGHT_EYE), np.array(lm.LEFT_EYE)
_EYES = np.concatenate([_RIGHT_EYE, _LEFT_EYE])
# Each eye's paired upper and lower lid points, as positions in _EYES.
_EYE_LID_ROWS = tuple(tuple(np.array([_EYES.tolist().index(i) for i in ids]) for ids in lids)
                      for lids in lm.LID_IDS.values())
_LID_POINTS = {side: np.concatenate(ids) for side, ids in lm.LID_IDS.items()}  # both lids, no corners
# Face Mesh's lid gap on a shut eye, as a share of the eye's width (0.02-0.06 at the
# deepest frame of the shared clips' blinks).
_SHUT_GAP = 0.04
# (upper lid, lower lid, iris) per eye; inner lips paired, corners left out.
_LID_PAIRS = ((*lm.LID_IDS["right"], _RIGHT_IRIS), (*lm.LID_IDS["left"], _LEFT_IRIS))
# How much of an iris's width may tuck under an eye's corner (a real one looking hard aside
# hides about a fifth there).
_IRIS_TUCK = 0.2
# A driver's neutral lip gap below this share of its mouth width counts as closed.
_PARTED = 0.03
# A neutral is not taken while the driver's eyes are this shut (lm.eye_opening: about
# 0.25-0.35 open, under 0.1 shut; the deep part of a blink), for up to _NEUTRAL_WAIT_S.
# (At 0.12 it also caught a clip whose first frames look down, 0.1 for half a second:
# the neutral then came from another pose, and its self-reenactment error rose by half.)
_SHUT_EYES, _NEUTRAL_WAIT_S = 0.07, 0.5
# A neutral with eyes narrower than this, driving a portrait whose eyes are not, takes its
# eyes from the most open face of the next _NARROW_WAIT_S (a driver who starts looking down
# at the keyboard looks up a second or two later); until one opens as wide as an eye
# usually does (_OPEN_EYES; Face Mesh reads 0.2-0.35 in the shared clips), they are
# measured from that, so the portrait looks down while the driver does.
_NARROW_EYES, _OPEN_EYES, _NARROW_WAIT_S = 0.15, 0.22, 3.0
_INNER_UPPER, _INNER_LOWER = np.array(lm.INNER_LIP_UPPER[1:-1]), np.array(lm.INNER_LIP_LOWER)
# Time constant (s) of the smoothing of how much teeth the driver shows.
_TEETH_S = 0.06
# No upright mesh edge around the mouth may shrink below this share of its height in the
# photo (lips and the skin around them move by differently scaled amounts and would fold).
_MIN_STRETCH = 0.25


@dataclass
class AvatarPose:
    """Where the avatar's landmarks should be in this frame (avatar image pixels)."""

    landmarks: np.ndarray  # (478, 3)
    head: np.ndarray  # 2x3 affine: the head's in-image motion, for hair, neck and background
    # How much upper/lower teeth the driver shows (0..1 each), from its frame's pixels.
    teeth: tuple[float, float] = (0.0, 0.0)

    @property
    def xy(self) -> np.ndarray:
        return self.landmarks[:, :2]


def _ratio(avatar_size: float, driver_size: float, lo: float = 0.5, hi: float = 2.0) -> float:
    return float(np.clip(avatar_size / max(driver_size, 1e-6), lo, hi))


class Retargeter:
    """Turns tracked driver faces into :class:`AvatarPose` for one avatar.

    The first face seen becomes the driver's neutral reference; ``request_neutral()``
    re-takes it from the next face. While the face is lost the avatar holds its last
    pose for ``hold_s`` seconds, then eases back to its own neutral; a face that comes
    back is blended in over about ``recover_s`` rather than popping in.
    """

    def __init__(self, avatar_landmarks: np.ndarray, proportions: dict[str, float], *,
                 max_rotation_deg: float = 40.0, max_translation: float = 0.6, scale_range: tuple[float, float] = (0.75, 1.33),
                 hold_s: float = 0.5, ease_s: float = 0.6, recover_s: float = 0.12) -> None:
        self.avatar = np.asarray(avatar_landmarks, dtype=np.float64)
        self.proportions = proportions
        self.max_rotation = math.radians(max_rotation_deg)
        self.max_translation = max_translation * proportions["face_width"]
        self.scale_range = scale_range
        self.hold_s, self.ease_s, self.recover_s = hold_s, ease_s, recover_s
        self._center = self.avatar[_STABLE].mean(axis=0)
        self._stable_2d = self.avatar[_STABLE, :2].copy()
        self._axes = lm.head_axes(self.avatar)  # columns: the avatar face's right/down/forward
        # The portrait's own lip gap (a photo may show parted lips or teeth).
        self._photo_gap = max(0.0, float((self.avatar[lm.LOWER_LIP_MID] - self.avatar[lm.UPPER_LIP_MID]) @ self._axes[:, 1]))
        self._upright_edges, self._edge_floor, self._drop_lower = self._lower_face_edges()
        self.neutral: np.ndarray | None = None
        self._align: Similarity | None = None
        self._local_scale: np.ndarray | None = None
        self._want_neutral = True
        self._neutral_wait_since: float | None = None
        self._neutral_since = 0.0
        self._parted_neutral = self._narrow_neutral = False
        # While a narrow neutral waits for open eyes: the most open eyes seen (in the
        # neutral's frame) and their opening.
        self._widest_eyes: np.ndarray | None = None
        self._widest = 0.0
        self._current = self.avatar.copy()
        self._last_t: float | None = None
        self._recovering = False
        self._lost_since: float | None = None
        self._teeth = (0.0, 0.0)
        # The driver's neutral down axis and inner-lip gap, and the most closed gap seen since.
        self._driver_down = np.array([0.0, 1.0, 0.0])
        self._neutral_gap = self._closed_gap = 0.0

    # -- neutral reference -------------------------------------------------------------
    def request_neutral(self) -> None:
        """Take the next tracked face as the driver's neutral."""
        self._want_neutral = True
        self._neutral_wait_since = None

    def set_neutral(self, driver: np.ndarray) -> None:
        driver = np.asarray(driver, dtype=np.float64)
        self.neutral = driver.copy()
        self._want_neutral = False
        self._neutral_wait_since = None
        # Driver neutral -> avatar: the frame change for expression offsets.
        self._align = fit_similarity(driver[_STABLE], self.avatar[_STABLE])
        s = self._align.scale
        p = self.proportions
        face = (_ratio(p["face_width"], s * lm.face_width(driver)), _ratio(p["face_height"], s * lm.face_height(driver)))
        scale = np.empty((lm.NUM_LANDMARKS, 3))
        scale[:] = (face[0], face[1], face[0])
        # The mouth's width and shape scale with its width, its opening with the face's
        # height: lips part as the jaw drops, and a jaw is as long as the face. Scaled by
        # mouth width, a small-mouthed child opening wide gave a wide-mouthed portrait a
        # gap a third taller (in face heights) than the child's, down to the collar.
        m = _ratio(p["mouth_width"], s * lm.mouth_width(driver))
        scale[_MOUTH] = (m, face[1], m)
        self._local_scale = scale
        self._scale_eyes()
        self._driver_down = lm.head_axes(driver)[:, 1]
        self._neutral_gap = self._lip_gap(driver)
        # Until the driver is seen closing its mouth, a closed mouth is taken to be a gap of
        # _PARTED: measured from parted lips, the avatar's mouth would stay shut while the
        # driver's is open as wide as in its neutral.
        closed = _PARTED * lm.mouth_width(driver)
        self._closed_gap = min(self._neutral_gap, closed)
        self._parted_neutral = self._neutral_gap > closed
        # A portrait with narrow eyes of its own matches a narrow-eyed neutral as it is.
        self._narrow_neutral = lm.eye_opening(driver) < _NARROW_EYES <= lm.eye_opening(self.avatar)
        if self._narrow_neutral:
            self._widest_eyes, self._widest = self.neutral[_EYES].copy(), lm.eye_opening(driver)
            self._set_neutral_eyes(self._widest_eyes, _OPEN_EYES)

    def _scale_eyes(self) -> None:
        """Eye motion scales to the avatar's eye size (from the neutral's eyes)."""
        assert self.neutral is not None and self._align is not None and self._local_scale is not None
        s, p = self._align.scale, self.proportions
        for side, idx, iris in (("right", _RIGHT_EYE, _RIGHT_IRIS), ("left", _LEFT_EYE, _LEFT_IRIS)):
            wx = _ratio(p[f"{side}_eye_width"], s * lm.eye_width(self.neutral, side))
            hy = _ratio(p[f"{side}_eye_height"], s * lm.eye_height(self.neutral, side), 0.4, 2.5)
            self._local_scale[idx] = (wx, hy, wx)
            # Gaze turns the eyeball, whose size goes with the eye's width, up and down as
            # much as sideways: scaled by the lids' height ratio, a portrait with narrower
            # eyes than the driver's (Obama, 0.5) looked up and down half as far as the
            # driver, one with wider eyes (Vermeer, 1.3-1.8) further.
            self._local_scale[iris] = wx
        self._neutral_eye = {side: lm.eye_height(self.neutral, side) for side in ("right", "left")}
        self._shut_eye = {side: _SHUT_GAP * lm.eye_width(self.neutral, side) for side in ("right", "left")}

    def _open_neutral_eyes(self, driver: np.ndarray) -> None:
        """A neutral whose eyes were half shut (a blink starting or ending, a look down)
        takes its eyes from the most open face seen soon after, and until one opens as wide
        as eyes usually do, from those eyes opened that wide: measured from half-shut eyes,
        every open eye would look wide open on the avatar."""
        assert self.neutral is not None
        opening = lm.eye_opening(driver)
        if opening <= self._widest:
            return
        undone = fit_similarity(self.neutral[_STABLE], driver[_STABLE]).inverse_apply(driver)
        self._widest_eyes, self._widest = undone[_EYES], opening
        self._set_neutral_eyes(self._widest_eyes, _OPEN_EYES)

    def _set_neutral_eyes(self, eyes: np.ndarray, at_least: float = 0.0) -> None:
        """The neutral's eyes become ``eyes`` (the points _EYES), each eye's lids moved apart
        about their midpoints until its lid gap is ``at_least`` of its width."""
        assert self.neutral is not None
        self.neutral[_EYES] = eyes
        for side, (upper, lower) in zip(lm.LID_IDS, _EYE_LID_ROWS):
            k = at_least * lm.eye_width(self.neutral, side) / max(lm.eye_height(self.neutral, side), 1e-6)
            if k > 1.0:
                mid = 0.5 * (eyes[upper] + eyes[lower])
                self.neutral[_EYES[upper]] = mid + k * (eyes[upper] - mid)
                self.neutral[_EYES[lower]] = mid + k * (eyes[lower] - mid)
        self._scale_eyes()

    def _lip_gap(self, points: np.ndarray) -> float:
        """Inner-lip gap along the driver's neutral down axis (negative: lips pressed past)."""
        return float((points[lm.LOWER_LIP_MID] - points[lm.UPPER_LIP_MID]) @ self._driver_down)

    # -- per frame -----------------------------------------------------------------------
    def target(self, driver: np.ndarray) -> np.ndarray:
        """Avatar landmarks for a driver face (no smoothing in time)."""
        assert self.neutral is not None and self._align is not None and self._local_scale is not None
        driver = np.asarray(driver, dtype=np.float64)
        motion = fit_similarity(self.neutral[_STABLE], driver[_STABLE])
        # Expression: what is left once the head motion is undone, in the neutral's frame.
        undone = motion.inverse_apply(driver)
        expression = undone - self.neutral
        # A neutral taken mid-sentence has parted lips; measured from it, closing the mouth
        # would push the avatar's lips through each other. The mouth is measured from the
        # most closed it has been seen instead (from nearly shut lips until then).
        self._closed_gap = min(self._closed_gap, self._lip_gap(undone))
        expression[_LOWER_LIP] += (self._neutral_gap - self._closed_gap) * self._driver_down
        self._close_from_floor(expression, undone)
        expression = self._align.scale * expression @ self._align.rotation.T
        local = expression @ self._axes * self._local_scale  # in the avatar face's own axes
        local = self._steady_gaze(local, driver, motion.scale)
        shaped = self.avatar + local @ self._axes.T
        # Measured from the closed mouth, a portrait with parted lips would open by its own
        # gap plus the driver's (twice as wide as the driver when the photo is of the driver)
        # and never close. As far as the driver has been seen closing from a parted neutral,
        # the portrait's own gap closes with it: closed driver, closed avatar.
        if self._parted_neutral:
            closing = float(np.clip(1.0 - self._closed_gap / self._neutral_gap, 0.0, 1.0))
            shaped[_LOWER_LIP] -= closing * self._photo_gap * self._axes[:, 1]
        shaped = self._keep_lids_apart(shaped)
        shaped = self._keep_lips_apart(shaped)
        shaped = self._unfold_lower_face(shaped)

        # The head turns about the avatar's own axes, not the camera's: the driver's motion
        # is carried into the avatar's head frame like its expression is. Applied in camera
        # axes, a driver's turn mixes into the roll of a three-quarter portrait.
        align = self._align.rotation
        rotation = clamp_rotation(align @ motion.rotation @ align.T, self.max_rotation)
        scale = float(np.clip(motion.scale, *self.scale_range))
        shift = self._align.scale * (motion.dst_center - motion.src_center) @ self._align.rotation.T
        shift[2] = 0.0
        norm = np.linalg.norm(shift[:2])
        if norm > self.max_translation:
            shift[:2] *= self.max_translation / norm
        return scale * (shaped - self._center) @ rotation.T + self._center + shift

    def _close_from_floor(self, expression: np.ndarray, undone: np.ndarray) -> None:
        """Face Mesh never sees a shut eye's lids meet: they keep a gap of a few percent
        of the eye's width, a third of a narrow eye's opening. Closing lids move by as much
        more as takes that gap to shut lids on the avatar."""
        for side, lids in _LID_POINTS.items():
            neutral, floor = self._neutral_eye[side], self._shut_eye[side]
            if neutral <= 2.0 * floor:
                continue  # eyes this narrow in the neutral: no room to tell shut from open
            closing = float(np.clip((neutral - lm.eye_height(undone, side)) / (neutral - floor), 0.0, 1.0))
            expression[lids] *= 1.0 + closing * floor / (neutral - floor)

    def _steady_gaze(self, local: np.ndarray, driver: np.ndarray, scale: float) -> np.ndarray:
        """Irises move with their eye, and look around on their own only as far as the
        driver's eye is open: the iris points of a squinting or closing eye are guesses."""
        for side, lids, iris in (("right", _RIGHT_LIDS, _RIGHT_IRIS), ("left", _LEFT_LIDS, _LEFT_IRIS)):
            neutral = max(self._neutral_eye[side], 1e-6)
            open_share = lm.eye_height(driver, side) / (scale * neutral)
            k = float(np.clip((open_share - 0.35) / 0.35, 0.0, 1.0))
            if k < 1.0:
                eye = local[lids].mean(axis=0)
                local[iris] = eye + k * (local[iris] - eye)
        return local

    def _keep_lids_apart(self, points: np.ndarray) -> np.ndarray:
        """A blink may close the lids, never cross them; irises stay between the lids, and
        between the eye's corners all but a share _IRIS_TUCK of their width."""
        down = self._axes[:, 1]
        for (upper, lower, iris), corners in zip(_LID_PAIRS, lm.EYE_CORNER_IDS.values()):
            # A driver looking hard aside, carried to an eye shaped otherwise (or whose iris
            # sits off-centre in the photo), pushed the iris past the corner onto the skin.
            # Measured in the image plane, where the iris is drawn.
            a, b = points[corners, :2]
            width = float(np.linalg.norm(b - a))
            along = (b - a) / max(width, 1e-6)
            center, radius = lm.iris_circle(points, iris)
            at = float((center - a) @ along)
            reach = (1.0 - _IRIS_TUCK) * radius
            if width > 2.0 * reach:
                points[iris, :2] += (np.clip(at, reach, width - reach) - at) * along
            gap = (points[lower] - points[upper]) @ down
            crossed = gap < 0
            if crossed.any():
                u, lo = upper[crossed], lower[crossed]
                mid = 0.5 * (points[u] + points[lo])
                points[u] = mid
                points[lo] = mid
            # The iris moves as one disc, its centre kept between the lids: clipping each
            # rim point squashed it, and a photo's iris runs under its lids, so the avatar's
            # iris came out smaller than the photo's when nothing had moved.
            top = float((points[upper] @ down).min())
            bottom = float((points[lower] @ down).max())
            depth = float(points[iris[0]] @ down)
            clipped = float(np.clip(depth, min(top, bottom), max(top, bottom)))
            points[iris] += (clipped - depth) * down
        return points

    def _keep_lips_apart(self, points: np.ndarray) -> np.ndarray:
        """The mouth may close, its inner lips never cross."""
        upper, lower = _INNER_UPPER, _INNER_LOWER
        gap = (points[lower] - points[upper]) @ self._axes[:, 1]
        crossed = gap < 0
        if crossed.any():
            u, lo = upper[crossed], lower[crossed]
            mid = 0.5 * (points[u] + points[lo])
            points[u], points[lo] = mid, mid
        return points

    def _lower_face_edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The mesh edges from the nose tip down that run mostly up and down in the photo,
        each as (upper, lower) point; the least each may measure along the face's down
        axis; and which end gives way: the lower below the mouth, the upper above it.
        Edges across the mouth opening are left out: lips may close."""
        down = self.avatar @ self._axes[:, 1]
        right = self.avatar @ self._axes[:, 0]
        edges = lm.face_edges()
        upper = np.where(down[edges[:, 0]] <= down[edges[:, 1]], edges[:, 0], edges[:, 1])
        lower = edges.sum(axis=1) - upper
        length = down[lower] - down[upper]
        across = np.isin(upper, lm.INNER_LIPS_IDS) & np.isin(lower, lm.INNER_LIPS_IDS)
        upright = np.abs(right[lower] - right[upper]) < 0.6 * length
        keep = (down[upper] >= down[lm.NOSE_TIP]) & ~across & (length > 0) & upright
        upper, lower, length = upper[keep], lower[keep], length[keep]
        mouth = 0.5 * (down[lm.UPPER_LIP_MID] + down[lm.LOWER_LIP_MID])
        return np.stack([upper, lower], axis=1), _MIN_STRETCH * length, down[lower] > mouth

    def _unfold_lower_face(self, points: np.ndarray, rounds: int = 12) -> np.ndarray:
        """Lips and the skin around them scale differently (and a driver's own landmarks fold
        at extreme mouth shapes), so a wide-open lip may pass the skin below it and fold the
        mesh. Every upright lower-face edge squeezed below its floor is stretched back to it
        along the face's down axis by moving the end away from the mouth: below it the chin
        drops a little further, above it the upper lip rises; the lips keep their shape."""
        down_axis = self._axes[:, 1]
        upper, lower = self._upright_edges[:, 0], self._upright_edges[:, 1]
        for _ in range(rounds):
            down = points @ down_axis
            short = self._edge_floor - (down[lower] - down[upper])
            bad = short > 1e-6
            if not bad.any():
                break
            push = np.zeros(len(points))
            drop = bad & self._drop_lower
            np.maximum.at(push, lower[drop], short[drop])
            lift = bad & ~self._drop_lower
            np.minimum.at(push, upper[lift], -short[lift])
            points += np.outer(push, down_axis)
        return points

    def update(self, face: TrackedFace | None, now: float, image: np.ndarray | None = None) -> AvatarPose:
        """The avatar pose for this frame; ``face`` is None when no face was found.

        ``image`` is the driver frame the face was found in; given, the pose says how
        much teeth the driver shows (held, like the rest of the pose, while it is lost)."""
        dt = 0.0 if self._last_t is None else max(0.0, now - self._last_t)
        self._last_t = now
        if face is not None:
            if self._want_neutral:
                if self._blinking_at_neutral(face.landmarks, now):
                    return self.pose(self._current, self._teeth)
                self.set_neutral(face.landmarks)
                self._neutral_since = now
            elif self._narrow_neutral:
                if now - self._neutral_since <= _NARROW_WAIT_S:
                    self._open_neutral_eyes(face.landmarks)
                else:
                    # Eyes that never opened wide are this driver's own open eyes.
                    assert self._widest_eyes is not None
                    self._set_neutral_eyes(self._widest_eyes)
                    self._narrow_neutral = False
            goal = self.target(face.landmarks)
            if self._recovering:
                k = 1.0 - math.exp(-dt / self.recover_s) if dt > 0 else 0.3
                self._current = self._current + k * (goal - self._current)
                if np.abs(goal - self._current).max() < 0.5:
                    self._recovering = False
            else:
                self._current = goal
            self._lost_since = None
            if image is not None:
                # Scored from one frame's pixels, the teeth jump by a tenth or more from frame
                # to frame (and in and out around a threshold): smoothed a little, they do not
                # flicker, and follow a syllable within two or three frames.
                seen = lm.teeth_showing(image, face.landmarks)
                k = 1.0 - math.exp(-dt / _TEETH_S) if dt > 0 else 1.0
                self._teeth = (self._teeth[0] + k * (seen[0] - self._teeth[0]), self._teeth[1] + k * (seen[1] - self._teeth[1]))
        else:
            if self._lost_since is None:
                self._lost_since = now
            self._recovering = True
            if now - self._lost_since > self.hold_s and dt > 0:
                k = 1.0 - math.exp(-dt / self.ease_s)
                self._current = self._current + k * (self.avatar - self._current)
        return self.pose(self._current, self._teeth)

    def _blinking_at_neutral(self, driver: np.ndarray, now: float) -> bool:
        """Whether to wait for another face before taking the neutral: one caught mid-blink
        would make every open eye after it look wide open on the avatar, and its blinks
        not shut. Eyes that stay narrow get their neutral after _NEUTRAL_WAIT_S anyway."""
        if lm.eye_opening(driver) >= _SHUT_EYES:
            return False
        if self._neutral_wait_since is None:
            self._neutral_wait_since = now
        return now - self._neutral_wait_since < _NEUTRAL_WAIT_S

    def pose(self, points: np.ndarray, teeth: tuple[float, float] = (0.0, 0.0)) -> AvatarPose:
        return AvatarPose(points.copy(), fit_similarity_2d(self._stable_2d, points[_STABLE, :2]), teeth)

    def neutral_pose(self) -> AvatarPose:
        return self.pose(self.avatar)
