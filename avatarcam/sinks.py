"""Frame sinks: the virtual camera, a preview window and video files."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from avatarcam.errors import AvatarcamError, one_line

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".y4m")


def _check_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Validate an RGB uint8 frame of ``size`` (w, h); a mismatch is a programming error."""
    w, h = size
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (h, w, 3):
        shape = getattr(frame, "shape", None)
        dtype = getattr(frame, "dtype", type(frame).__name__)
        raise ValueError(f"expected an RGB uint8 frame of shape {(h, w, 3)}, got {shape} {dtype}")
    return np.ascontiguousarray(frame)


def _h264_encoder() -> str:
    """The best H.264 encoder in imageio-ffmpeg's ffmpeg (libx264 in its own builds)."""
    try:
        from imageio_ffmpeg._io import get_first_available_h264_encoder
    except ImportError:  # private helper moved: libx264 is in every imageio-ffmpeg binary
        return "libx264"
    return get_first_available_h264_encoder()


class Sink:
    """Base of all sinks: ``write`` frames of ``size`` (w, h), then ``close``."""

    size: tuple[int, int]

    def write(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def virtual_camera_hint(system: str | None = None) -> str:
    """What to install so that a virtual camera exists on this platform."""
    system = system or platform.system()
    if system == "Linux":
        return (
            "install and load v4l2loopback: `sudo apt install v4l2loopback-dkms && sudo modprobe v4l2loopback "
            "devices=1 video_nr=10 card_label=avatarcam exclusive_caps=1`, or run with --no-virtual-cam"
        )
    if system == "Windows":
        return (
            "install OBS Studio 28 or newer and click Start Virtual Camera once (or install Unity Capture), "
            "or run with --no-virtual-cam"
        )
    if system == "Darwin":
        return (
            "install OBS Studio 30 or newer and click Start Virtual Camera once (approve the system extension), "
            "or run with --no-virtual-cam"
        )
    return "this platform has no supported virtual camera; run with --no-virtual-cam"


class VirtualCameraSink(Sink):
    """Sends RGB frames to a virtual camera through pyvirtualcam.

    It does not pace itself (no ``sleep_until_next_frame``): the pipeline decides when
    frames are ready, and sleeping here would only add latency.
    """

    def __init__(
        self, size: tuple[int, int], fps: float, backend: Optional[str] = None, device: Optional[str] = None
    ) -> None:
        try:
            import pyvirtualcam
        except ImportError as exc:  # the native backend failed to load on this system
            raise AvatarcamError(
                f"the virtual camera library could not be loaded ({one_line(exc)}); reinstall pyvirtualcam, or run with --no-virtual-cam"
            ) from None
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.frames_written = 0
        self._cam: Any = None
        if backend is not None and backend not in pyvirtualcam.camera.BACKENDS:
            names = ", ".join(sorted(pyvirtualcam.camera.BACKENDS)) or "none on this platform"
            raise AvatarcamError(f"unknown virtual camera backend {backend!r} (available: {names})")
        try:
            self._cam = pyvirtualcam.Camera(
                self.size[0], self.size[1], self.fps, fmt=pyvirtualcam.PixelFormat.RGB, backend=backend, device=device
            )
        except Exception as exc:
            # pyvirtualcam joins one line per backend it tried; keep them on one line.
            detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
            what = f"virtual camera {device!r}" if device else "no virtual camera"
            verb = "could not be opened" if device else "is available"
            raise AvatarcamError(f"{what} {verb} ({detail}); {virtual_camera_hint()}") from None
        self.backend: str = self._cam.backend
        self.device: str = self._cam.device

    def write(self, frame: np.ndarray) -> None:
        if self._cam is None:
            raise RuntimeError("write() on a closed VirtualCameraSink")
        frame = _check_frame(frame, self.size)
        try:
            self._cam.send(frame)
        except (OSError, RuntimeError) as exc:
            # The device went away mid-run (v4l2loopback unloaded, the OBS camera stopped):
            # not a bug to report, and nothing more can be sent.
            raise AvatarcamError(f"the virtual camera {self.device} stopped taking frames ({one_line(exc)}); "
                                 "was it removed or its driver unloaded?") from None
        self.frames_written += 1

    def close(self) -> None:
        if self._cam is not None:
            cam, self._cam = self._cam, None
            cam.close()


class VideoFileSink(Sink):
    """Writes frames to ``.mp4``/``.mkv`` (H.264, yuv420p) or ``.y4m`` (raw I420).

    Frames go to a hidden temporary file next to the target, which replaces the target
    only in ``close()``; a run that fails or is aborted never destroys an existing file.
    """

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: float, *, crf: int = 18) -> None:
        import imageio_ffmpeg

        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.frames_written = 0
        self._gen: Any = None
        ext = self.path.suffix.lower()
        if ext not in VIDEO_EXTENSIONS:
            raise AvatarcamError(
                f"cannot write {self.path}: unsupported extension {ext or '(none)'!r}; use one of {', '.join(VIDEO_EXTENSIONS)}"
            )
        parent = self.path.parent
        if not parent.is_dir():
            raise AvatarcamError(f"cannot write {self.path}: folder {parent} does not exist; create it first")
        if self.path.is_dir():
            raise AvatarcamError(f"cannot write {self.path}: it is a directory; give a file name such as out{ext}")
        w, h = self.size
        if w <= 0 or h <= 0 or self.fps <= 0:
            raise ValueError(f"bad video size {self.size} or fps {fps}")

        if ext == ".y4m":
            # Raw I420 in YUV4MPEG2 (header "C420jpeg"), the format Chromium's
            # --use-file-for-fake-video-capture reads; odd sizes are legal here.
            self._pad = (0, 0)
            codec, fmt, params = "rawvideo", "yuv4mpegpipe", []
        else:
            # H.264 with 4:2:0 chroma needs even dimensions: pad one replicated pixel
            # rather than rescaling, so the picture itself is untouched.
            self._pad = (w % 2, h % 2)
            codec = _h264_encoder()
            fmt = "mp4" if ext == ".mp4" else "matroska"
            params = ["-crf", str(crf), "-preset", "fast"] if codec == "libx264" else []
            if ext == ".mp4":
                params += ["-movflags", "+faststart"]
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".partial{ext}", dir=parent)
            os.close(fd)
            # mkstemp's file is private (0600); let ffmpeg create it afresh so the final
            # video gets the user's normal permissions.
            os.unlink(tmp)
        except OSError as exc:
            raise AvatarcamError(f"cannot write to folder {parent} ({one_line(exc.strerror or exc)})") from None
        self._tmp: Optional[Path] = Path(tmp)
        out_size = (w + self._pad[0], h + self._pad[1])
        try:
            self._gen = imageio_ffmpeg.write_frames(
                str(self._tmp),
                out_size,
                pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p",
                fps=self.fps,
                quality=None,
                codec=codec,
                macro_block_size=1,
                ffmpeg_log_level="error",
                output_params=params + ["-f", fmt],
            )
            self._gen.send(None)  # starts ffmpeg now, so a broken setup fails here
        except Exception as exc:
            self.abort()
            raise AvatarcamError(f"cannot start ffmpeg to write {self.path} ({one_line(exc)})") from None

    def write(self, frame: np.ndarray) -> None:
        if self._gen is None:
            raise RuntimeError("write() on a closed VideoFileSink")
        frame = _check_frame(frame, self.size)
        if self._pad != (0, 0):
            frame = cv2.copyMakeBorder(frame, 0, self._pad[1], 0, self._pad[0], cv2.BORDER_REPLICATE)
        try:
            self._gen.send(frame)
        except Exception as exc:
            self.abort()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AvatarcamError(f"writing {self.path} failed ({first}); is the disk full?") from None
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file and move it onto the target path."""
        if self._gen is None:
            return
        gen, self._gen = self._gen, None
        gen.close()  # closes ffmpeg's stdin and waits for it to finish the file
        tmp, self._tmp = self._tmp, None
        assert tmp is not None
        if self.frames_written == 0:
            tmp.unlink(missing_ok=True)
            raise AvatarcamError(f"no frames were produced, so {self.path} was not written")
        if not tmp.exists() or tmp.stat().st_size == 0:
            tmp.unlink(missing_ok=True)
            raise AvatarcamError(f"ffmpeg failed to write {self.path}; see its messages above")
        os.replace(tmp, self.path)

    def abort(self) -> None:
        """Stop writing and delete the temporary file; the target is left as it was."""
        gen, self._gen = self._gen, None
        if gen is not None:
            try:
                gen.close()
            except Exception:
                pass
        tmp, self._tmp = getattr(self, "_tmp", None), None
        if tmp is not None:
            tmp.unlink(missing_ok=True)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        # Keep a half-written file only when the run ended normally.
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # A sink dropped without close() must not leave a hidden temp file behind.
        try:
            self.abort()
        except Exception:
            pass


class PreviewWindow:
    """A local OpenCV window showing the output (frames are RGB, converted for imshow)."""

    def __init__(self, title: str = "avatarcam") -> None:
        if platform.system() == "Linux" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise AvatarcamError(
                "--preview needs a display, but neither DISPLAY nor WAYLAND_DISPLAY is set; run from a desktop session or drop --preview"
            )
        self.title = title
        self._open = False

    def show(self, frame_rgb: np.ndarray) -> int:
        """Show a frame and return the key pressed (0-255), or -1 if none."""
        try:
            if not self._open:
                cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
                self._open = True
            cv2.imshow(self.title, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
            key = cv2.waitKey(1)
        except cv2.error as exc:
            raise AvatarcamError(
                f"cannot open a preview window ({one_line(exc)[:120]}); this OpenCV build may lack GUI support, run without --preview"
            ) from None
        return -1 if key < 0 else key & 0xFF

    @property
    def closed_by_user(self) -> bool:
        """True once the user has closed the window with its close button."""
        if not self._open:
            return False
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)  # lets the GUI thread actually remove the window
            except cv2.error:
                pass

    def __enter__(self) -> "PreviewWindow":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
