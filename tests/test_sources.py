"""Frame sources: video files, stills, a (fake) threaded camera and open_source dispatch."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from skimage import data

from avatarcam import sources
from avatarcam.errors import AvatarcamError
from avatarcam.sinks import VideoFileSink
from avatarcam.sources import CameraSource, ImageSource, VideoFileSource, open_source, paced

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHORT_CLIP = SHARED / "driving" / "rnth_voxceleb2_test_video.mp4"


class FakeCapture:
    """Stands in for cv2.VideoCapture: numbered BGR frames at about ``fps``.

    Frame n has B = n % 256, G = n // 256 and R = 7, so a test can read the
    capture number back from any frame and check the BGR->RGB conversion.
    """

    def __init__(self, fps: float = 100.0, size: tuple[int, int] = (64, 48), fail_after: int | None = None) -> None:
        self.fps = fps
        self.size = size
        self.fail_after = fail_after
        self.produced = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.running = threading.Event()  # cleared: read() blocks, like a paused camera
        self.running.set()
        self.props: dict[int, float] = {}
        self._start = time.perf_counter()

    def isOpened(self) -> bool:
        return not self.released.is_set()

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FPS: self.fps}.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        while not self.running.wait(0.05):
            if self.released.is_set():
                return False, None
        with self.lock:
            n = self.produced
        if self.fail_after is not None and n >= self.fail_after:
            time.sleep(0.005)
            return False, None
        due = self._start + n / self.fps
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        w, h = self.size
        bgr = np.empty((h, w, 3), np.uint8)
        bgr[..., 0] = n % 256
        bgr[..., 1] = n // 256
        bgr[..., 2] = 7
        bgr[:, 0] = 255  # a white left column, to check mirroring
        with self.lock:
            self.produced = n + 1
        return True, bgr

    def release(self) -> None:
        self.released.set()


def decode(image: np.ndarray) -> int:
    """Capture number stored in a FakeCapture frame (after BGR->RGB)."""
    assert image[0, 1, 0] == 7  # R came from the fake's channel 2
    return int(image[0, 1, 2]) + 256 * int(image[0, 1, 1])


# ---------------------------------------------------------------- camera


def test_camera_slow_consumer_gets_newest_frames() -> None:
    fake = FakeCapture(fps=100.0)
    source = CameraSource(0, size=(64, 48), fps=100, capture_factory=lambda device: fake)
    assert source.live and source.size == (64, 48) and source.fps == 100.0
    assert fake.props[cv2.CAP_PROP_FRAME_WIDTH] == 64 and fake.props[cv2.CAP_PROP_FPS] == 100
    indices = []
    try:
        for _ in range(8):
            time.sleep(0.04)  # a consumer much slower than the camera
            # Freeze the camera so "newest" is well defined, then read.
            fake.running.clear()
            deadline = time.perf_counter() + 2.0
            while source.captured < fake.produced and time.perf_counter() < deadline:
                time.sleep(0.001)
            frame = source.read(timeout=1.0)
            assert frame is not None
            assert frame.index == fake.produced - 1
            fake.running.set()
            assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
            assert frame.image.flags["C_CONTIGUOUS"]
            assert decode(frame.image) == frame.index
            indices.append(frame.index)
    finally:
        source.close()
    assert all(b > a for a, b in zip(indices, indices[1:]))
    assert max(b - a for a, b in zip(indices, indices[1:])) > 1  # frames were skipped
    handed = len(indices)
    # Every capture was handed out, dropped, or is the one left unread at close().
    assert source.captured - handed - source.dropped in (0, 1)
    assert source.dropped >= indices[-1] + 1 - handed
    assert source._thread is not None and not source._thread.is_alive()
    assert fake.released.is_set()
    assert source.read() is None  # closed: end of stream
    source.close()  # idempotent


def test_camera_timestamps_and_mirror() -> None:
    fake = FakeCapture(fps=100.0)
    with CameraSource(0, mirror=True, capture_factory=lambda device: fake) as source:
        a = source.read(timeout=1.0)
        b = source.read(timeout=1.0)
    assert a is not None and b is not None
    assert b.timestamp > a.timestamp and abs(b.timestamp - time.perf_counter()) < 5
    assert (a.image[:, -1] == 255).all() and not (a.image[:, 0] == 255).all()


def test_camera_iteration_stops_after_close() -> None:
    fake = FakeCapture(fps=200.0)
    source = CameraSource(0, capture_factory=lambda device: fake)
    seen = []
    for frame in source:
        seen.append(frame.index)
        if len(seen) == 3:
            source.close()
    assert len(seen) == 3


def test_camera_without_first_frame() -> None:
    fake = FakeCapture(fail_after=0)
    with pytest.raises(AvatarcamError) as exc:
        CameraSource(1, capture_factory=lambda device: fake, first_frame_timeout=0.3)
    assert "camera 1" in str(exc.value) and "\n" not in str(exc.value)
    assert fake.released.wait(2.0)


def test_camera_that_stops_raises() -> None:
    fake = FakeCapture(fps=100.0, fail_after=3)
    source = CameraSource(0, capture_factory=lambda device: fake)
    source.failure_grace = 0.1
    try:
        with pytest.raises(AvatarcamError) as exc:
            for _ in range(10):
                source.read(timeout=2.0)
        assert "stopped delivering frames" in str(exc.value)
    finally:
        source.close()


def test_camera_stall_times_out() -> None:
    class Hanging(FakeCapture):
        def read(self):  # type: ignore[override]
            if self.produced:
                time.sleep(0.5)  # a driver that blocks without reporting failure
                return False, None
            return super().read()

    source = CameraSource(0, capture_factory=lambda device: Hanging())
    try:
        assert source.read(timeout=0.5) is not None
        with pytest.raises(AvatarcamError, match="stopped delivering frames"):
            source.read(timeout=0.2)
    finally:
        source.close()


def test_real_camera_missing() -> None:
    with pytest.raises(AvatarcamError) as exc:
        CameraSource(99)
    message = str(exc.value)
    assert message.startswith("camera 99 could not be opened") and "\n" not in message


# ---------------------------------------------------------------- files


def write_astronaut_clip(path: Path, frames: int = 12, size: tuple[int, int] = (96, 80), fps: float = 25.0) -> list[np.ndarray]:
    """A short clip of distinct astronaut crops (so frame order is checkable)."""
    astronaut = data.astronaut()
    w, h = size
    crops = [np.ascontiguousarray(astronaut[150 + 8 * i : 150 + 8 * i + h, 180 : 180 + w]) for i in range(frames)]
    with VideoFileSink(path, size, fps) as sink:
        for crop in crops:
            sink.write(crop)
    return crops


def test_video_file_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    crops = write_astronaut_clip(path)
    with VideoFileSource(path) as source:
        assert not source.live and source.dropped == 0
        assert source.size == (96, 80) and source.fps == pytest.approx(25.0)
        frames = list(source)
        assert source.read() is None
    assert [f.index for f in frames] == list(range(len(crops)))
    assert [f.timestamp for f in frames] == pytest.approx([i / 25.0 for i in range(len(crops))])
    for i, frame in enumerate(frames):
        assert frame.image.shape == (80, 96, 3) and frame.image.dtype == np.uint8
        errors = [np.abs(frame.image.astype(int) - crop).mean() for crop in crops]
        assert int(np.argmin(errors)) == i and errors[i] < 6


def test_video_file_mirror(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    crops = write_astronaut_clip(path, frames=2)
    with VideoFileSource(path, mirror=True) as source:
        frame = source.read()
    assert frame is not None
    assert np.abs(frame.image.astype(int) - crops[0][:, ::-1]).mean() < 6


@pytest.mark.shared
def test_shared_clip_every_frame_in_order() -> None:
    if not SHORT_CLIP.exists():
        pytest.skip(f"shared clip not available: {SHORT_CLIP}")
    expected, _ = imageio_ffmpeg.count_frames_and_secs(str(SHORT_CLIP))
    reader = imageio_ffmpeg.read_frames(str(SHORT_CLIP))
    meta = next(reader)
    with VideoFileSource(SHORT_CLIP) as source:
        assert source.size == tuple(meta["size"])
        count = 0
        for frame, raw in zip(source, reader):
            reference = np.frombuffer(raw, np.uint8).reshape(frame.image.shape)
            assert frame.index == count
            # Two decoders, slightly different YUV->RGB maths: close, not identical.
            assert np.abs(frame.image.astype(int) - reference).mean() < 3
            count += 1
        assert source.read() is None
    reader.close()
    assert count == expected


def test_video_file_errors(tmp_path: Path) -> None:
    with pytest.raises(AvatarcamError, match="video file not found"):
        VideoFileSource(tmp_path / "missing.mp4")
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    with pytest.raises(AvatarcamError) as exc:
        VideoFileSource(fake)
    assert "not a readable video" in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------- stills


def test_image_source_repeats(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    Image.fromarray(data.astronaut()).save(path)
    with ImageSource(path, fps=10.0, frames=3) as source:
        frames = list(source)
    assert [f.index for f in frames] == [0, 1, 2]
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2])
    assert all((f.image == data.astronaut()).all() for f in frames)
    frames[0].image[:] = 0  # consumers may draw on frames without affecting the next
    assert frames[1].image.any()

    forever = ImageSource(path, frames=None)
    assert all(forever.read() is not None for _ in range(50))
    forever.close()
    assert forever.read() is None


def test_paced_plays_in_real_time(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    Image.fromarray(data.astronaut()).save(path)
    start = time.perf_counter()
    frames = list(paced(ImageSource(path, fps=50.0, frames=6)))
    assert len(frames) == 6
    assert time.perf_counter() - start >= 5 / 50.0 - 0.005


# ---------------------------------------------------------------- open_source


def test_open_source_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image_path = tmp_path / "face.jpg"
    Image.fromarray(data.astronaut()).save(image_path)
    video_path = tmp_path / "clip.mp4"
    write_astronaut_clip(video_path, frames=3)

    with open_source(str(image_path), fps=12.0) as still:
        assert isinstance(still, ImageSource) and still.fps == 12.0
    with open_source(video_path) as video:
        assert isinstance(video, VideoFileSource)

    opened: list[object] = []

    def factory(device: int | str) -> FakeCapture:
        opened.append(device)
        return FakeCapture()

    monkeypatch.setattr(sources, "_default_capture", factory)
    for spec, device in [(0, 0), ("2", 2), ("/dev/video5", "/dev/video5")]:
        with open_source(spec, mirror=True) as camera:
            assert isinstance(camera, CameraSource) and camera.mirror
        assert opened[-1] == device

    with pytest.raises(AvatarcamError, match="driving source not found"):
        open_source(tmp_path / "nothing.mp4")
    with pytest.raises(AvatarcamError, match="directory"):
        open_source(tmp_path)


def test_open_source_missing_camera() -> None:
    with pytest.raises(AvatarcamError, match="camera 99"):
        open_source("99")
