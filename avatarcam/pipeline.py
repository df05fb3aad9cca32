"""One frame through the stages: tracking → retarget → engine. No I/O, no windows."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from avatarcam.avatar import Avatar
from avatarcam.framing import Framing
from avatarcam.retarget import AvatarPose, Retargeter
from avatarcam.sources import Frame
from avatarcam.tracking import FaceTracker, TrackedFace


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


class _Rig:
    """One avatar with its own retargeter and engine."""

    def __init__(self, avatar: Avatar, engine, retargeter: Retargeter) -> None:
        self.avatar, self.engine, self.retargeter = avatar, engine, retargeter


class AvatarPipeline:
    """Drives one of several avatars from driver frames.

    ``framing_for(avatar)`` decides the output frame (the photo's own framing, or a crop
    of a fixed output size); all avatars share the tracker and the driver's neutral.
    """

    def __init__(self, avatars: list[Avatar], engine_class, tracker: FaceTracker,
                 framing_for: Callable[[Avatar], Framing], *, mirror: bool = False) -> None:
        if not avatars:
            raise ValueError("at least one avatar is needed")
        self.avatars = avatars
        self.engine_class = engine_class
        self.tracker = tracker
        self.framing_for = framing_for
        self.mirror = mirror
        self.passthrough = False
        self.index = 0
        self._rigs: dict[int, _Rig] = {}
        self.rig  # build the first one now, not on the first frame

    @property
    def rig(self) -> _Rig:
        if self.index not in self._rigs:
            avatar = self.avatars[self.index]
            engine = self.engine_class(avatar, self.framing_for(avatar))
            retargeter = Retargeter(avatar.landmarks, avatar.proportions)
            previous = next(iter(self._rigs.values()), None)
            if previous is not None and previous.retargeter.neutral is not None:
                retargeter.set_neutral(previous.retargeter.neutral)
            self._rigs[self.index] = _Rig(avatar, engine, retargeter)
        return self._rigs[self.index]

    @property
    def avatar(self) -> Avatar:
        return self.avatars[self.index]

    @property
    def output_size(self) -> tuple[int, int]:
        return self.rig.engine.framing.output_size

    def request_neutral(self) -> None:
        for rig in self._rigs.values():
            rig.retargeter.request_neutral()

    def switch(self, step: int) -> Avatar:
        """Next (+1) or previous (-1) avatar."""
        self.index = (self.index + step) % len(self.avatars)
        return self.rig.avatar

    def process(self, frame: Frame) -> FrameResult:
        t0 = time.perf_counter()
        if self.mirror:
            frame = Frame(np.ascontiguousarray(frame.image[:, ::-1]), frame.index, frame.timestamp)
        face = self.tracker.process(frame.image, frame.timestamp)
        t1 = time.perf_counter()
        rig = self.rig
        pose = rig.retargeter.update(face, frame.timestamp)
        t2 = time.perf_counter()
        if self.passthrough:
            image = fit_to(frame.image, rig.engine.framing.output_size)
        else:
            image = rig.engine.render(pose)
        t3 = time.perf_counter()
        return FrameResult(frame, image, face, pose, {"track": t1 - t0, "retarget": t2 - t1, "render": t3 - t2})
