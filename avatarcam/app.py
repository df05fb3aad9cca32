"""The live loop: frames from a source, through the pipeline, out to the sinks, with the
preview window's hotkeys. Every stage it calls is testable on its own; this file only
wires them together and keeps time."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import cv2
import numpy as np

from avatarcam.pipeline import AvatarPipeline, FrameResult
from avatarcam.sinks import Sink
from avatarcam.sources import FrameSource, paced

log = logging.getLogger(__name__)

# key, action, what it does (shown in the preview window and in --help)
HOTKEYS: tuple[tuple[str, str, str], ...] = (
    ("n", "neutral", "re-take the neutral face (look at the camera, relax)"),
    ("]", "next", "next avatar"),
    ("[", "previous", "previous avatar"),
    ("p", "passthrough", "pass-through: send the real camera image"),
    ("m", "mirror", "mirror the camera image"),
    ("l", "landmarks", "show tracked landmarks"),
    ("f", "fps", "show frame rate and latency"),
    ("h", "help", "show/hide this help"),
    ("q", "quit", "quit (also Esc)"),
)
_KEY_ACTIONS = {ord(k): action for k, action, _ in HOTKEYS} | {27: "quit"}


@dataclass
class RunStats:
    frames: int = 0
    frames_with_face: int = 0
    dropped: int = 0
    latency_ms: list[float] = field(default_factory=list)  # frame captured/read → handed to the sinks
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def percentile(self, q: float, values: Sequence[float] | None = None) -> float:
        data = self.latency_ms if values is None else values
        return float(np.percentile(data, q)) if len(data) else float("nan")

    def summary(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        stages = ", ".join(f"{k} {np.median(v):.1f}" for k, v in self.stage_ms.items())
        return (f"{self.frames} frames in {self.seconds:.1f} s ({fps:.1f} fps), face in {self.frames_with_face}, "
                f"dropped {self.dropped}, latency p50 {self.percentile(50):.1f} ms p99 {self.percentile(99):.1f} ms "
                f"(median ms per stage: {stages})")


class LiveLoop:
    """Runs ``pipeline`` over ``source`` into ``sinks`` until the source ends, ``max_frames``
    is reached, or the user quits. ``preview`` is an optional window with hotkeys."""

    def __init__(self, source: FrameSource, pipeline: AvatarPipeline, sinks: Iterable[Sink], *,
                 preview=None, pace: bool = False, max_frames: int | None = None) -> None:
        self.source = source
        self.pipeline = pipeline
        self.sinks = list(sinks)
        self.preview = preview
        self.pace = pace
        self.max_frames = max_frames
        self.show_landmarks = False
        self.show_fps = True
        self.show_help = True
        self.message = ""
        self._message_until = 0.0
        self.stats = RunStats()
        self._stop = threading.Event()
        self._done_times: deque[float] = deque(maxlen=30)

    # -- hotkeys ----------------------------------------------------------------------------
    def handle_key(self, key: int) -> bool:
        """Carry out a hotkey; False means quit."""
        action = _KEY_ACTIONS.get(key)
        if action is None:
            return True
        p = self.pipeline
        if action == "quit":
            return False
        if action == "neutral":
            p.request_neutral()
            self._say("neutral face re-taken")
        elif action in ("next", "previous"):
            if len(p.avatars) < 2:
                self._say("only one avatar loaded (use --avatars DIR for more)")
            else:
                self._say(f"avatar: {p.switch(1 if action == 'next' else -1).name}")
        elif action == "passthrough":
            p.passthrough = not p.passthrough
            self._say("pass-through " + ("on" if p.passthrough else "off"))
        elif action == "mirror":
            p.mirror = not p.mirror
            p.request_neutral()  # the old neutral was measured on the unmirrored face
            self._say("mirror " + ("on" if p.mirror else "off"))
        elif action == "landmarks":
            self.show_landmarks = not self.show_landmarks
        elif action == "fps":
            self.show_fps = not self.show_fps
        elif action == "help":
            self.show_help = not self.show_help
        return True

    def _say(self, text: str) -> None:
        log.info(text)
        self.message, self._message_until = text, time.perf_counter() + 2.0

    def stop(self) -> None:
        """Ask the loop to finish after the current frame (e.g. from a signal handler);
        a stop asked before ``run()`` starts is kept."""
        self._stop.set()

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> RunStats:
        stats = self.stats
        frames = paced(self.source) if self.pace else iter(self.source)
        start = time.perf_counter()
        try:
            while not self._stop.is_set():
                t_read = time.perf_counter()
                frame = next(frames, None)
                if frame is None:
                    break
                got = time.perf_counter()
                result = self.pipeline.process(frame)
                t_sink = time.perf_counter()
                for sink in self.sinks:
                    sink.write(result.image)
                done = time.perf_counter()
                self._done_times.append(done)
                # For a camera, latency counts from the moment of capture.
                origin = frame.timestamp if self.source.live else got
                stats.latency_ms.append(1000.0 * (done - origin))
                timings = dict(result.timings, read=got - t_read, sink=done - t_sink)
                for k, v in timings.items():
                    stats.stage_ms.setdefault(k, []).append(1000.0 * v)
                stats.frames += 1
                stats.frames_with_face += result.face is not None
                if self.preview is not None:
                    key = self.preview.show(self.decorate(result))
                    if key >= 0 and not self.handle_key(key):
                        break
                    if self.preview.closed_by_user:
                        break
                if self.max_frames is not None and stats.frames >= self.max_frames:
                    break
        finally:
            stats.seconds = time.perf_counter() - start
            stats.dropped = self.source.dropped
        return stats

    # -- preview ------------------------------------------------------------------------------
    def decorate(self, result: FrameResult) -> np.ndarray:
        """The preview image: the output, the camera in a corner, and the overlays asked for."""
        out = result.image.copy()
        h, w = out.shape[:2]
        cam = result.frame.image
        pip_w = max(w // 4, 80)
        pip_h = max(1, round(cam.shape[0] * pip_w / cam.shape[1]))
        pip = cv2.resize(cam, (pip_w, pip_h), interpolation=cv2.INTER_AREA)
        if self.show_landmarks and result.face is not None:
            s = pip_w / cam.shape[1]
            for x, y in (result.face.landmarks[:, :2] * s).astype(int):
                cv2.circle(pip, (int(x), int(y)), 0, (0, 255, 0), -1)
            for x, y in result.pose.xy.astype(int) if not self.pipeline.passthrough else ():
                self._dot(out, x, y)
        if pip_h < h and pip_w < w:
            out[h - pip_h:, w - pip_w:] = pip
        lines = []
        if result.face is None:
            lines.append("no face - look at the camera")
        if self.show_fps and self.stats.latency_ms:
            times = self._done_times
            fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
            recent = self.stats.latency_ms[-30:]
            lines.append(f"{fps:.0f} fps  latency {np.median(recent):.1f} ms  dropped {self.source.dropped}")
        if self.message and time.perf_counter() < self._message_until:
            lines.append(self.message)
        if self.show_help:
            lines += [f"{k}  {text}" for k, _, text in HOTKEYS]
        scale = max(0.4, min(w, h) / 900)
        for i, text in enumerate(lines):
            y = int(20 * scale / 0.4 * (i + 1))
            cv2.putText(out, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        return out

    @staticmethod
    def _dot(image: np.ndarray, x: int, y: int) -> None:
        if 0 <= y < image.shape[0] and 0 <= x < image.shape[1]:
            image[y, x] = (0, 255, 0)
