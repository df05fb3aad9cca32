"""One frame through the stages: tracking → retarget → engine. No I/O, no windows."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Union

import cv2
import numpy as np

from avatarcam.avatar import Avatar
from avatarcam.framing import Framing
from avatarcam.retarget import AvatarPose, Retargeter
from avatarcam.sources import Frame
from avatarcam.tracking import FaceTracker, TrackedFace

log = logging.getLogger(__name__)


@dataclass
class FrameResult:
    frame: Frame  # the driver frame as tracked (already mirrored if mirroring is on)
    image: np.ndarray  # what goes to the sinks, RGB uint8 of the output size
    face: TrackedFace | None
    pose: AvatarPose
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


def fit_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` scaled and centre-cropped to ``size`` (w, h) without distortion."""
    h, w = image.shape[:2]
    ow, oh = size
    scale = max(ow / w, oh / h)
    resized = cv2.resize(image, (max(ow, round(w * scale)), max(oh, round(h * scale))), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y = (resized.shape[0] - oh) // 2
    x = (resized.shape[1] - ow) // 2
    return np.ascontiguousarray(resized[y:y + oh, x:x + ow])


# A face drawn wider than this many pixels is rendered this wide and enlarged: Einstein's
# portrait in a 1280x720 frame (his face 696 pixels wide) rendered in 30 ms instead of 44,
# 43 dB PSNR from the full-size render.
MAX_FACE_WIDTH = 448.0


def render_framing(framing: Framing, max_enlarge: float = 1.25, face_width: float | None = None,
                   max_face_width: float = MAX_FACE_WIDTH) -> Framing:
    """The framing an engine renders at: ``framing`` itself, or the same view at a lower
    resolution (the pipeline then enlarges the result with one resize). That is the photo's
    own resolution where ``framing`` enlarges the photo more than ``max_enlarge`` times,
    and at most the one that draws the face (``face_width`` photo pixels wide, where given)
    ``max_face_width`` pixels wide; less than a tenth lower is not worth the resize."""
    s = framing.scale  # photo pixels per output pixel
    k = s if s * max_enlarge < 1.0 else 1.0  # render pixels per output pixel
    if face_width is not None:
        k = min(k, max_face_width * s / max(face_width, 1e-6))
    if k >= 0.9:  # the resize would cost more than the pixels it saves, and soften
        return framing
    ow, oh = framing.output_size

    def sizes(w: int) -> tuple[int, int, float, float]:
        h = max(1, round(oh * w / ow))
        return w, h, ow / w, oh / h

    # Of the two nearest widths, the one whose height keeps the aspect ratio best.
    w, h, rx, ry = min((sizes(max(1, int(ow * k) + more)) for more in (0, 1)), key=lambda c: abs(c[2] - c[3]))
    # Pixel centres line up: internal pixel q is output pixel (q + 0.5) * r - 0.5.
    offset = (framing.offset[0] + (0.5 * rx - 0.5) * s, framing.offset[1] + (0.5 * ry - 0.5) * s)
    return replace(framing, output_size=(w, h), scale=s * rx, offset=offset, picture_box=None)


class EnlargedEngine:
    """An engine rendering at a lower resolution (see render_framing), its frames enlarged
    to ``framing``.

    Rendering more output pixels than the photo has only interpolates it more finely:
    one resize afterwards gives nearly the same picture (37-42 dB PSNR against the direct
    render) for a fraction of the cost (1280x720 from a 602 px portrait: render 20 -> 7 ms).
    Everything else is the wrapped engine's."""

    def __init__(self, engine, framing: Framing) -> None:
        self.engine = engine
        self.framing = framing

    def render(self, pose: AvatarPose) -> np.ndarray:
        return cv2.resize(self.engine.render(pose), self.framing.output_size, interpolation=cv2.INTER_LINEAR)

    def __getattr__(self, name: str):
        if name == "engine":  # not set yet (copy, unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self.engine, name)


def build_engine(engine_class, avatar: Avatar, framing: Framing):
    """``engine_class(avatar, framing)``, rendering at no more than the photo's resolution
    and with the face no more than MAX_FACE_WIDTH pixels wide."""
    inner = render_framing(framing, face_width=avatar.proportions["face_width"])
    engine = engine_class(avatar, inner)
    return engine if inner is framing else EnlargedEngine(engine, framing)


class _Rig:
    """One avatar with its own retargeter and engine."""

    def __init__(self, avatar: Avatar, engine, retargeter: Retargeter) -> None:
        self.avatar, self.engine, self.retargeter = avatar, engine, retargeter


@dataclass
class PendingAvatar:
    """An avatar prepared when first needed, on a background thread (``--avatars DIR``)."""

    name: str
    prepare: Callable[[], Avatar]


AvatarSlot = Union[Avatar, PendingAvatar]


class AvatarPipeline:
    """Drives one of several avatars from driver frames.

    ``framing_for(avatar)`` decides the output frame (the photo's own framing, or a crop
    of a fixed output size); all avatars share the tracker and the driver's neutral.
    A :class:`PendingAvatar` is prepared (with its engine) on a background thread when it
    is switched to, or ahead of time as the next one: until it is ready the current avatar
    keeps playing, so a switch never stalls the frames.
    """

    def __init__(self, avatars: list[AvatarSlot], engine_class, tracker: FaceTracker,
                 framing_for: Callable[[Avatar], Framing], *, mirror: bool = False) -> None:
        if not avatars:
            raise ValueError("at least one avatar is needed")
        if not isinstance(avatars[0], Avatar):
            raise TypeError("the first avatar must be prepared already")
        self.avatars: list[AvatarSlot] = list(avatars)
        self.engine_class = engine_class
        self.tracker = tracker
        self.framing_for = framing_for
        self.mirror = mirror
        self.passthrough = False
        self.index = 0
        self.pending: int | None = None  # the avatar switched to while it is being prepared
        self.failed: dict[int, str] = {}  # avatars that could not be prepared, and why
        self._rigs: dict[int, _Rig] = {}
        self._engines: dict[int, Future] = {}  # background preparations: (avatar, engine)
        self._lock = threading.Lock()
        self._worker: ThreadPoolExecutor | None = None
        self.rig  # build the first one now, not on the first frame
        self._prefetch(1)

    @property
    def rig(self) -> _Rig:
        if self.index not in self._rigs:
            avatar = self.avatars[self.index]
            assert isinstance(avatar, Avatar)
            engine = build_engine(self.engine_class, avatar, self.framing_for(avatar))
            self._add_rig(self.index, avatar, engine)
        return self._rigs[self.index]

    def _add_rig(self, index: int, avatar: Avatar, engine) -> None:
        retargeter = Retargeter(avatar.landmarks, avatar.proportions)
        previous = next(iter(self._rigs.values()), None)
        if previous is not None and previous.retargeter.neutral is not None:
            retargeter.set_neutral(previous.retargeter.neutral)
        self._rigs[index] = _Rig(avatar, engine, retargeter)

    @property
    def avatar(self) -> Avatar:
        avatar = self.avatars[self.index]
        assert isinstance(avatar, Avatar)
        return avatar

    @property
    def output_size(self) -> tuple[int, int]:
        return self.rig.engine.framing.output_size

    def request_neutral(self) -> None:
        """Take the next face as the driver's neutral (and as the tracker's flow reference)."""
        self.tracker.new_reference()
        for rig in self._rigs.values():
            rig.retargeter.request_neutral()

    def switch(self, step: int) -> Avatar | None:
        """Next (+1) or previous (-1) avatar: the new avatar, or None while it is being
        prepared in the background (the current one keeps playing; see ``pending``)."""
        n = len(self.avatars)
        target = self.index if self.pending is None else self.pending
        for _ in range(n):  # skip avatars that could not be prepared
            target = (target + step) % n
            if target not in self.failed:
                break
        if target == self.index:
            self.pending = None
            return self.avatar
        if isinstance(self.avatars[target], Avatar) and target not in self._engines:
            self.pending = None
            self.index = target
            self._prefetch(step)
            return self.rig.avatar
        self.pending = target
        self._prepare_in_background(target)
        self._adopt_ready()
        return None if self.pending is not None else self.avatar

    def slot_name(self, index: int) -> str:
        return self.avatars[index].name

    def _prepare_in_background(self, index: int) -> None:
        with self._lock:
            if index in self._engines or index in self._rigs or index in self.failed:
                return
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avatarcam-prepare")
            slot = self.avatars[index]

            def build():
                avatar = slot if isinstance(slot, Avatar) else slot.prepare()
                return avatar, build_engine(self.engine_class, avatar, self.framing_for(avatar))

            self._engines[index] = self._worker.submit(build)

    def _prefetch(self, step: int) -> None:
        """Start preparing the avatar after the current one (in the direction of travel)."""
        if len(self.avatars) > 1:
            following = (self.index + (1 if step >= 0 else -1)) % len(self.avatars)
            if not isinstance(self.avatars[following], Avatar):
                self._prepare_in_background(following)

    def _adopt_ready(self) -> None:
        """Switch to the pending avatar once its background preparation is done."""
        target = self.pending
        if target is None or target not in self._engines or not self._engines[target].done():
            return
        future = self._engines.pop(target)
        try:
            avatar, engine = future.result()
        except Exception as e:  # noqa: BLE001 - a bad image in the folder: say so, keep the current avatar
            self.failed[target] = str(e)
            self.pending = None
            log.warning("avatar %s skipped: %s", self.slot_name(target), e)
            return
        self.avatars[target] = avatar
        self._add_rig(target, avatar, engine)
        step = 1 if (target - self.index) % len(self.avatars) <= len(self.avatars) // 2 else -1
        self.index, self.pending = target, None
        log.info("avatar: %s", avatar.name)
        self._prefetch(step)

    def close(self) -> None:
        """Stop background preparation (waits for one that is running)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None

    def render_without_frame(self, now: float) -> np.ndarray:
        """The output while there is no driver frame at all (the camera is gone): the face
        counts as lost, so the avatar holds, then eases to neutral, and blends back in."""
        rig = self.rig
        return rig.engine.framing.add_bars(rig.engine.render(rig.retargeter.update(None, now)))

    def process(self, frame: Frame) -> FrameResult:
        t0 = time.perf_counter()
        if self.mirror:
            # cv2.flip is 10x faster than copying numpy's reversed view (0.08 vs 1 ms at 640x480).
            frame = Frame(cv2.flip(frame.image, 1), frame.index, frame.timestamp)
        face = self.tracker.process(frame.image, frame.timestamp)
        t1 = time.perf_counter()
        if self.pending is not None:
            self._adopt_ready()
        rig = self.rig
        pose = rig.retargeter.update(face, frame.timestamp, frame.image)
        t2 = time.perf_counter()
        if self.passthrough:
            image = fit_to(frame.image, rig.engine.framing.output_size)
        else:
            image = rig.engine.framing.add_bars(rig.engine.render(pose))
        t3 = time.perf_counter()
        return FrameResult(frame, image, face, pose, {"track": t1 - t0, "retarget": t2 - t1, "render": t3 - t2})
