"""The live loop: frames from a source, through the pipeline, out to the sinks, with the
preview window's hotkeys. Every stage it calls is testable on its own; this file only
wires them together and keeps time."""
from __future__ import annotations

import gc
import logging
import threading
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import cv2
import numpy as np

from avatarcam.errors import one_line
from avatarcam.pipeline import AvatarPipeline, FrameResult
from avatarcam.sinks import Sink
from avatarcam.sources import CameraLost, Frame, FrameSource, paced

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
_FILLER_DUE = object()  # LiveLoop._read_live: no camera frame, send a filler frame


def _samples() -> array:
    return array("f")  # 4 bytes a sample, not a 32-byte Python float: a day-long call stays small


@dataclass
class RunStats:
    frames: int = 0
    frames_with_face: int = 0
    dropped: int = 0
    latency_ms: array = field(default_factory=_samples)  # frame captured/read → handed to the sinks
    stage_ms: dict[str, array] = field(default_factory=dict)
    seconds: float = 0.0
    filler_frames: int = 0  # sent while the camera gave nothing new (repeats, "reconnecting" frames)
    camera_losses: int = 0
    failed_frames: int = 0  # live frames the pipeline failed on (the last output was repeated)
    history: int = 108_000  # samples kept once there are twice as many (an hour at 30 fps)

    def add(self, latency_ms: float, stage_s: dict[str, float]) -> None:
        """Record one frame's latency and per-stage times (given in seconds)."""
        self.latency_ms.append(latency_ms)
        for k, v in stage_s.items():
            self.stage_ms.setdefault(k, _samples()).append(1000.0 * v)
        if len(self.latency_ms) > 2 * self.history:  # bounded memory however long the run
            for samples in (self.latency_ms, *self.stage_ms.values()):
                del samples[: len(samples) - self.history]

    def percentile(self, q: float, values: Sequence[float] | None = None) -> float:
        data = self.latency_ms if values is None else values
        return float(np.percentile(data, q)) if len(data) else float("nan")

    def summary(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        stages = ", ".join(f"{k} {np.median(v):.1f}" for k, v in self.stage_ms.items())
        failed = f", failed {self.failed_frames}" if self.failed_frames else ""
        return (f"{self.frames} frames in {self.seconds:.1f} s ({fps:.1f} fps), face in {self.frames_with_face}, "
                f"dropped {self.dropped}{failed}, latency p50 {self.percentile(50):.1f} ms p99 {self.percentile(99):.1f} ms "
                f"(median ms per stage: {stages})")


class LiveLoop:
    """Runs ``pipeline`` over ``source`` into ``sinks`` until the source ends, ``max_frames``
    frames were sent, or the user quits. ``preview`` is an optional window with hotkeys.

    With a live source the sinks get a frame at least every ``1 / fps`` seconds whatever
    the camera does: a late camera frame is bridged by repeating the last output, and a
    lost camera (or one silent for ``stall_s``) by the avatar easing to neutral, dimmed,
    with a small "reconnecting" note, until the camera is back.
    """

    def __init__(self, source: FrameSource, pipeline: AvatarPipeline, sinks: Iterable[Sink], *,
                 preview=None, pace: bool = False, max_frames: int | None = None,
                 fps: float | None = None, stall_s: float = 2.0) -> None:
        self.source = source
        self.fps = float(fps or source.fps or 30.0)
        self.stall_s = stall_s
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
        self._last_image: np.ndarray | None = None
        self._last_frame_at: float | None = None  # when the camera last gave a frame
        self._lost_since: float | None = None  # camera counted as lost since
        self._failure_said_at = 0.0  # when a failed frame was last reported

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
                avatar = p.switch(1 if action == 'next' else -1)
                if avatar is not None:
                    self._say(f"avatar: {avatar.name}")
                else:  # prepared in the background; the current avatar plays until then
                    self._say(f"preparing avatar {p.slot_name(p.pending)} ...")
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
        # Everything built so far (models, avatars, numpy/cv2 modules) lives for the whole run:
        # freezing it keeps the collector's full passes short (a full pass over it took ~28 ms,
        # the one frame per run that came late at 30 fps).
        gc.collect()
        gc.freeze()
        start = time.perf_counter()
        try:
            while not self._stop.is_set():
                t_read = time.perf_counter()
                if self.source.live:
                    frame = self._read_live(t_read)
                    if frame is _FILLER_DUE:
                        if not self._send_filler() or self._enough():
                            break
                        continue
                else:
                    frame = next(frames, None)
                if not isinstance(frame, Frame):  # the source ended or was closed
                    break
                got = time.perf_counter()
                try:
                    result = self.pipeline.process(frame)
                except Exception as exc:  # noqa: BLE001 - see _failed_frame
                    if not self.source.live or self._last_image is None:
                        raise
                    if not self._failed_frame(exc) or self._enough():
                        break
                    continue
                t_sink = time.perf_counter()
                for sink in self.sinks:
                    sink.write(result.image)
                done = time.perf_counter()
                self._done_times.append(done)
                self._last_image = result.image
                # For a camera, latency counts from the moment of capture.
                origin = frame.timestamp if self.source.live else got
                stats.add(1000.0 * (done - origin), dict(result.timings, read=got - t_read, sink=done - t_sink))
                stats.frames += 1
                stats.frames_with_face += result.face is not None
                if self.preview is not None:
                    key = self.preview.show(self.decorate(result))
                    if key >= 0 and not self.handle_key(key):
                        break
                    if self.preview.closed_by_user:
                        break
                if self._enough():
                    break
        finally:
            gc.unfreeze()
            stats.seconds = time.perf_counter() - start
            stats.dropped = self.source.dropped
        return stats

    def _failed_frame(self, exc: Exception) -> bool:
        """A live frame the pipeline failed on (a bug met by some rare pose): the sinks get
        the last output again and the run goes on, rather than the camera vanishing from the
        call. Said once as a warning, then every 30 s while it lasts. False if the user
        asked to quit from the preview."""
        stats = self.stats
        stats.failed_frames += 1
        now = time.perf_counter()
        if stats.failed_frames == 1 or now - self._failure_said_at > 30.0:
            self._failure_said_at = now
            log.warning("a frame could not be rendered (%s: %s); repeating the last one (%d so far)",
                        type(exc).__name__, one_line(exc)[:200], stats.failed_frames, exc_info=log.isEnabledFor(logging.DEBUG))
        return self._send_filler_image(self._last_image)

    def _enough(self) -> bool:
        sent = self.stats.frames + self.stats.filler_frames
        return self.max_frames is not None and sent >= self.max_frames

    # -- a camera that is late or gone ----------------------------------------------------------
    def _read_live(self, now: float) -> Frame | None | object:
        """The camera's next frame, ``_FILLER_DUE`` when a filler frame is due instead, or
        None once the source is closed. Waits about until the next output frame is due."""
        interval = 1.0 / self.fps
        last_sent = self._done_times[-1] if self._done_times else now
        wait = max(last_sent + interval - now, 0.0)
        if self._last_image is not None:
            wait += 1.5 * interval  # give a slightly late camera frame a chance first
        else:
            wait = self.stall_s  # nothing to repeat yet: wait for the camera
        try:
            frame = self.source.read(timeout=wait)
        except CameraLost:
            now = time.perf_counter()
            reconnecting = bool(getattr(self.source, "reconnecting", False))
            silent = now - (self._last_frame_at or now) > self.stall_s
            if self._lost_since is None and (reconnecting or silent or self._last_image is None):
                self._lost_since = now
                self.stats.camera_losses += 1
                if not reconnecting:  # the source logs its own losses
                    log.warning("the camera gives no frames; waiting for it")
            return _FILLER_DUE
        if frame is not None:
            self._last_frame_at = time.perf_counter()
            self._lost_since = None
        return frame

    def _send_filler(self) -> bool:
        """Send one frame while the camera has none, on the output's schedule; False if
        the user asked to quit from the preview."""
        interval = 1.0 / self.fps
        if self._done_times:
            due = self._done_times[-1] + interval
            delay = due - time.perf_counter()
            if delay > 0 and self._stop.wait(delay):
                return True
        now = time.perf_counter()
        if self._lost_since is None and self._last_image is not None:
            image = self._last_image  # a late frame: repeat, nothing else changes
        else:
            image = self.reconnecting_frame(now)
        return self._send_filler_image(image)

    def _send_filler_image(self, image: np.ndarray) -> bool:
        """Send ``image``, not made from a camera frame, to the sinks and the preview, and
        carry out a key pressed there; False if the user asked to quit."""
        for sink in self.sinks:
            sink.write(image)
        self._done_times.append(time.perf_counter())
        self.stats.filler_frames += 1
        if self.preview is not None:
            key = self.preview.show(image)
            if (key >= 0 and not self.handle_key(key)) or self.preview.closed_by_user:
                return False
        return True

    def reconnecting_frame(self, now: float) -> np.ndarray:
        """The avatar while the camera is gone: its pose eases to neutral (as when the
        face is lost, so the return is blended in, not popped), dimmed, with a note."""
        image = self.pipeline.render_without_frame(now)
        gone = now - (self._lost_since if self._lost_since is not None else now)
        dim = 1.0 - 0.45 * min(1.0, gone / 0.5)  # fade over half a second, not a jump
        out = (image.astype(np.float32) * dim).astype(np.uint8)
        h, w = out.shape[:2]
        scale = max(0.35, min(w, h) / 1100)
        text = "camera lost - reconnecting..."
        y = h - int(14 * scale / 0.35)
        cv2.putText(out, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1, cv2.LINE_AA)
        return out

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
