"""Frame sources: webcams, video files and still images, all yielding RGB uint8 frames."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from avatarcam.errors import AvatarcamError
from avatarcam.images import load_image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class Frame:
    """One frame handed out by a source."""

    image: np.ndarray  # RGB uint8 (H, W, 3), C-contiguous
    index: int  # 0-based, in the source's own numbering (captured frames for a camera)
    timestamp: float  # seconds: perf_counter() at capture for cameras, index / fps for files


class FrameSource(ABC):
    """Common interface of all sources; also a context manager and an iterator of frames."""

    fps: float  # nominal frame rate
    size: tuple[int, int]  # (width, height) of frames
    live: bool  # True for cameras, whose frames can be dropped
    dropped: int = 0  # frames captured but never handed out (always 0 for files)

    @abstractmethod
    def read(self, timeout: float | None = None) -> Frame | None:
        """Return the next frame, or None at the end of the stream."""

    @abstractmethod
    def close(self) -> None:
        """Release the underlying device or file; safe to call more than once."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame


def _bgr_to_rgb(bgr: np.ndarray, mirror: bool) -> np.ndarray:
    """Convert whatever OpenCV decoded (BGR, BGRA or grey) into contiguous RGB."""
    if bgr.ndim == 2:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    elif bgr.shape[2] == 4:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
    else:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if rgb.dtype != np.uint8:
        # 16-bit camera/video formats: keep the high byte rather than clipping.
        rgb = (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else np.clip(rgb, 0, 255).astype(np.uint8)
    if mirror:
        rgb = cv2.flip(rgb, 1)
    return np.ascontiguousarray(rgb)


def _camera_name(device: int | str) -> str:
    return f"camera {device}" if isinstance(device, int) else f"camera {device!r}"


def _camera_hint() -> str:
    """Where to look for cameras on this platform, for error messages."""
    system = platform.system()
    if system == "Linux":
        return "see which /dev/video* devices exist with `v4l2-ctl --list-devices`"
    if system == "Darwin":
        return "check System Settings > Privacy & Security > Camera allows this terminal, and try index 0 or 1"
    if system == "Windows":
        return "check Settings > Privacy > Camera allows desktop apps, close other apps using it, and try index 0 or 1"
    return "try another camera index"


def _quiet_capture(*args: Any) -> Any:
    """cv2.VideoCapture(*args) without OpenCV's own warnings on failure.

    Our error message says what went wrong; OpenCV's per-backend chatter ("can't open
    camera by index", obsensor errors) would only add noise.
    """
    get_level = getattr(cv2, "getLogLevel", None)
    set_level = getattr(cv2, "setLogLevel", None)
    previous = get_level() if get_level and set_level else None
    if previous is not None:
        set_level(0)  # silent
    try:
        return cv2.VideoCapture(*args)
    finally:
        if previous is not None:
            set_level(previous)


def _release_quietly(cap: Any) -> None:
    """Release a capture that may already be half gone (unplugged devices fail to close)."""
    if cap is not None:
        with contextlib.suppress(Exception):
            cap.release()


def _default_capture(device: int | str) -> Any:
    """Open a camera with OpenCV's default backend for this platform."""
    return _quiet_capture(device)


class CameraLost(AvatarcamError):
    """A camera that was delivering frames has none to give now (unplugged, taken by
    another program, or a stalled driver); :class:`CameraSource` keeps trying to reopen it."""


class CameraSource(FrameSource):
    """A webcam read on a background thread that always hands out the newest frame.

    Reading on a thread decouples capture from processing: when the pipeline is slower
    than the camera, stale frames are skipped (and counted in ``dropped``) instead of
    piling up in the driver's queue and adding latency.

    A camera that fails after it has delivered frames is reopened by the thread, with
    a growing pause between tries (``retry_backoff``), until it is back or the source is
    closed; meanwhile ``reconnecting`` is True and ``read()`` raises :class:`CameraLost`
    at once, so the caller can keep its own output going. A camera that never delivers a
    first frame is an error in the constructor, as before.
    """

    live = True
    # How long read() failures may last before the camera counts as gone; drivers
    # often fail a frame or two while renegotiating a mode.
    failure_grace = 2.0
    # First and longest pause (s) between attempts to reopen a lost camera.
    retry_backoff = (0.5, 5.0)

    def __init__(
        self,
        device: int | str,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        mirror: bool = False,
        capture_factory: Callable[[int | str], Any] | None = None,
        *,
        first_frame_timeout: float = 3.0,
        stall_timeout: float = 5.0,
        reconnect: bool = True,
    ) -> None:
        self.device = device
        self.mirror = mirror
        self.stall_timeout = stall_timeout
        self.reconnect = reconnect
        self.dropped = 0
        self.captured = 0  # frames read from the device so far
        self.reconnecting = False  # lost mid-run, being reopened
        self.losses = 0  # times the camera was lost mid-run
        self.reopen_attempts = 0  # tries to open it again
        self._lost_reason = ""
        self._lost_at = 0.0
        self._backoff = self.retry_backoff[0]
        self._requested = (size, fps)
        self._name = _camera_name(device)
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._latest_taken = True
        self._last_index = -1
        self._error: str | None = None
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

        factory = capture_factory or _default_capture
        self._factory = factory
        try:
            cap = factory(device)
        except Exception as exc:  # OpenCV raises for malformed device strings
            raise AvatarcamError(f"{self._name} could not be opened ({' '.join(str(exc).split())}); {_camera_hint()}") from None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            raise AvatarcamError(
                f"{self._name} could not be opened (no such device, or another program is using it); {_camera_hint()}"
            )
        self._cap = cap
        self._configure(cap)

        self._thread = threading.Thread(target=self._run, name=f"avatarcam-{self._name}", daemon=True)
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self._error is not None, first_frame_timeout)
            first, error = self._latest, self._error
        if first is None:
            self.close()
            reason = error or f"no frame within {first_frame_timeout:g} s"
            raise AvatarcamError(
                f"{self._name} opened but delivered no picture ({reason}); close other programs using it, or {_camera_hint()}"
            )
        height, width = first.image.shape[:2]
        self.size = (width, height)
        reported = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = reported if 1.0 <= reported <= 240.0 else float(fps or 30.0)

    def _configure(self, cap: Any) -> None:
        size, fps = self._requested
        # Requests only: drivers pick the nearest mode they support, so the real
        # size is taken from the first frame.
        if size is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(size[0]))
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(size[1]))
        if fps is not None:
            cap.set(cv2.CAP_PROP_FPS, float(fps))
        # A one-frame driver queue keeps latency low where the backend supports it.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1.0)

    def _run(self) -> None:
        """Capture loop: keep only the newest frame, count the ones nobody took, and
        reopen the camera if it goes away after having worked."""
        failing_since: float | None = None
        try:
            while not self._stop.is_set():
                error = None
                try:
                    ok, bgr = self._cap.read()
                except Exception as exc:  # noqa: BLE001 - a backend may raise once the device is gone
                    ok, bgr, error = False, None, f"camera error: {' '.join(str(exc).split())}"
                now = time.perf_counter()
                if ok and bgr is not None and bgr.size > 0:
                    failing_since = None
                    self._deliver(bgr, now)
                    continue
                failing_since = failing_since or now
                if error is None and now - failing_since <= self.failure_grace:
                    time.sleep(0.01)
                    continue
                error = error or "the camera stopped delivering frames (unplugged, or taken by another program?)"
                if not (self.reconnect and self.captured):
                    self._fail(error)
                    return
                if not self._reopen(error):
                    return
                failing_since = None
        except Exception as exc:  # a backend exception must not vanish with the thread
            self._fail(f"camera error: {' '.join(str(exc).split())}")
        finally:
            # The thread owns the device while it runs: releasing it from another thread
            # in the middle of read() crashes some backends.
            self._release()

    def _deliver(self, bgr: np.ndarray, now: float) -> None:
        frame = Frame(_bgr_to_rgb(bgr, self.mirror), self.captured, now)
        with self._cond:
            if not self._latest_taken:
                self.dropped += 1
            self._latest = frame
            self._latest_taken = False
            self.captured += 1
            back = self.reconnecting
            self.reconnecting = False
            self._cond.notify_all()
        if back:
            self._backoff = self.retry_backoff[0]
            log.warning("%s is back after %.1f s", self._name, now - self._lost_at)

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        _release_quietly(cap)

    def _reopen(self, reason: str) -> bool:
        """Open the camera again, pausing longer after each failed try; False if the
        source was closed first. Logs one line per loss, not one per try."""
        with self._cond:
            first = not self.reconnecting
            if first:
                self.reconnecting = True
                self.losses += 1
                self._lost_reason = reason
                self._lost_at = time.perf_counter()
                self._backoff = self.retry_backoff[0]
            self._cond.notify_all()
        if first:
            log.warning("%s lost: %s; reconnecting", self._name, reason)
        while not self._stop.is_set():
            self._release()
            cap = None
            self.reopen_attempts += 1
            with contextlib.suppress(Exception):  # not there yet: the device may be half-created
                cap = self._factory(self.device)
                if cap is not None and cap.isOpened():
                    self._configure(cap)
                    self._cap = cap
                    return True
            _release_quietly(cap)
            self._stop.wait(self._backoff)
            self._backoff = min(2.0 * self._backoff, self.retry_backoff[1])
        return False

    def _fail(self, message: str) -> None:
        with self._cond:
            self._error = message
            self._cond.notify_all()

    def read(self, timeout: float | None = None) -> Frame | None:
        """Wait for a frame newer than the last one returned and return it.

        Returns None only after close(). Raises :class:`CameraLost` at once while a lost
        camera is being reopened, or when it gave nothing new within ``timeout`` (default:
        ``stall_timeout``) seconds; AvatarcamError if it failed for good.
        """
        limit = self.stall_timeout if timeout is None else timeout
        with self._cond:

            def fresh() -> bool:
                return self._latest is not None and self._latest.index > self._last_index

            self._cond.wait_for(
                lambda: self._closed or self._error is not None or self.reconnecting or fresh(), limit
            )
            if self._closed:
                return None
            if not fresh():
                if self._error is not None:
                    raise AvatarcamError(f"{self._name}: {self._error}")
                if self.reconnecting:
                    raise CameraLost(f"{self._name}: {self._lost_reason}; reconnecting")
                raise CameraLost(
                    f"{self._name} stopped delivering frames (nothing new for {limit:g} s); check that it is still connected and not in use by another program"
                )
            assert self._latest is not None
            frame = self._latest
            self._latest_taken = True
            self._last_index = frame.index
            return frame

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        if self._thread is not None:
            # read() returns within one frame interval, so this is quick; a hung driver
            # is left to the daemon thread rather than blocking shutdown.
            self._thread.join(timeout=2.0)
        elif getattr(self, "_cap", None) is not None:
            self._release()


class VideoFileSource(FrameSource):
    """Every frame of a video file, in order; nothing is ever dropped."""

    live = False

    def __init__(self, path: str | os.PathLike, mirror: bool = False) -> None:
        self.path = Path(path)
        self.mirror = mirror
        self.dropped = 0
        if not self.path.exists():
            raise AvatarcamError(f"video file not found: {self.path}")
        if self.path.is_dir():
            raise AvatarcamError(f"{self.path} is a directory, not a video file")
        # Decoded on the reading thread: FFmpeg's own decoder threads would work ahead on
        # later frames while this one is tracked and rendered, taking a core from them
        # (+0.3 ms a frame end to end on two cores) for no gain in a sequential loop.
        threads = [cv2.CAP_PROP_N_THREADS, 1] if hasattr(cv2, "CAP_PROP_N_THREADS") else []
        cap = _quiet_capture(str(self.path), cv2.CAP_FFMPEG, threads)
        if not cap.isOpened():
            cap.release()
            raise AvatarcamError(f"{self.path} is not a readable video (FFmpeg could not open it); use an MP4, MOV, MKV or WebM file")
        self._cap: Any = cap
        reported = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        # Some containers (and raw streams) report 0 or nonsense; 30 is the safe default.
        self.fps = reported if 1.0 <= reported <= 1000.0 else 30.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count: int | None = count if count > 0 else None  # container's estimate
        ok, bgr = cap.read()
        if not ok or bgr is None:
            self.close()
            raise AvatarcamError(f"{self.path} has no decodable video frames; check the file plays in a video player")
        # Size comes from a decoded frame because OpenCV may apply rotation metadata.
        self._pending: np.ndarray | None = bgr
        self.size = (int(bgr.shape[1]), int(bgr.shape[0]))
        self._next_index = 0

    def read(self, timeout: float | None = None) -> Frame | None:
        """Return the next frame, or None at the end of the file (``timeout`` is ignored)."""
        if self._cap is None:
            return None
        if self._pending is not None:
            bgr, self._pending = self._pending, None
        else:
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                return None
        index = self._next_index
        self._next_index += 1
        return Frame(_bgr_to_rgb(bgr, self.mirror), index, index / self.fps)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
            self._pending = None


class ImageSource(FrameSource):
    """A still image repeated ``frames`` times (None: forever, e.g. a still live driver)."""

    live = False

    def __init__(
        self, path: str | os.PathLike, fps: float = 30.0, frames: int | None = 1, mirror: bool = False
    ) -> None:
        if fps <= 0:
            raise ValueError("fps must be positive")
        image = load_image(path, what="image")
        self._image = np.ascontiguousarray(image[:, ::-1]) if mirror else image
        self.path = Path(path)
        self.fps = float(fps)
        self.frames = frames
        self.dropped = 0
        self.size = (int(image.shape[1]), int(image.shape[0]))
        self._next_index = 0
        self._closed = False

    def read(self, timeout: float | None = None) -> Frame | None:
        if self._closed or (self.frames is not None and self._next_index >= self.frames):
            return None
        index = self._next_index
        self._next_index += 1
        # A copy, so a consumer drawing on its frame cannot change the next one.
        return Frame(self._image.copy(), index, index / self.fps)

    def close(self) -> None:
        self._closed = True


def open_source(
    spec: str | int | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    mirror: bool = False,
    image_frames: int | None = 1,
) -> FrameSource:
    """Open a driving source from a CLI-style spec.

    An int or digit string is a camera index, ``/dev/...`` a camera device, an image
    path a still (repeated ``image_frames`` times), any other existing path a video
    file. ``size`` applies to cameras only; ``fps`` to cameras and stills.
    """
    if isinstance(spec, int):
        return CameraSource(spec, size=size, fps=fps, mirror=mirror)
    text = os.fspath(spec).strip()
    if text.isdigit():
        return CameraSource(int(text), size=size, fps=fps, mirror=mirror)
    if text.startswith("/dev/"):
        return CameraSource(text, size=size, fps=fps, mirror=mirror)
    path = Path(text).expanduser()
    if not path.exists():
        raise AvatarcamError(
            f"driving source not found: {text} (give a camera index such as 0, a video file or an image)"
        )
    if path.is_dir():
        raise AvatarcamError(f"{path} is a directory; give a camera index such as 0, a video file or an image")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource(path, fps=fps or 30.0, frames=image_frames, mirror=mirror)
    return VideoFileSource(path, mirror=mirror)


def paced(source: FrameSource, fps: float | None = None) -> Iterator[Frame]:
    """Yield a file source's frames in real time (at ``fps``, default the source's rate).

    Live sources pass through unchanged: a camera already paces itself. When the
    consumer falls behind by more than a few frames the schedule restarts from now, so
    a stall is followed by normal playback instead of a burst of catch-up frames.
    """
    if source.live:
        yield from source
        return
    interval = 1.0 / float(fps or source.fps)
    start: float | None = None
    shown = 0
    for frame in source:
        now = time.perf_counter()
        if start is None or now - (start + shown * interval) > 3 * interval:
            start, shown = now, 0
        due = start + shown * interval
        if due > now:
            time.sleep(due - now)
        shown += 1
        yield frame
