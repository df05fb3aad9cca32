"""Sinks: video files (mp4/y4m), the virtual camera (fake backend) and the preview window."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import pyvirtualcam
from skimage import data

from avatarcam import sinks
from avatarcam.errors import AvatarcamError
from avatarcam.sinks import PreviewWindow, VideoFileSink, VirtualCameraSink


def frames_of(size: tuple[int, int], count: int) -> list[np.ndarray]:
    """Distinct RGB frames of ``size`` (w, h) cut from the astronaut."""
    w, h = size
    astronaut = data.astronaut()
    return [np.ascontiguousarray(astronaut[10 * i : 10 * i + h, 5 * i : 5 * i + w]) for i in range(count)]


def read_back(path: Path) -> tuple[dict, list[np.ndarray]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(raw, np.uint8).reshape(h, w, 3) for raw in reader]
    return meta, frames


def no_temp_files(folder: Path) -> bool:
    return not any(".partial" in p.name for p in folder.iterdir())


@pytest.mark.parametrize("size", [(96, 64), (97, 63)])
def test_mp4_roundtrip(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "out.mp4"
    frames = frames_of(size, 9)
    with VideoFileSink(path, size, 24.0) as sink:
        for frame in frames:
            sink.write(frame)
        assert not path.exists()  # only appears once complete
    assert sink.frames_written == 9
    meta, back = read_back(path)
    assert len(back) == 9
    # H.264 4:2:0 needs even sizes: odd ones get one replicated pixel right/bottom.
    w, h = size
    assert tuple(meta["size"]) == (w + w % 2, h + h % 2)
    assert meta["fps"] == pytest.approx(24.0)
    for got, want in zip(back, frames):
        assert np.abs(got[:h, :w].astype(int) - want).mean() < 6
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("size", [(96, 64), (97, 63)])
def test_y4m_roundtrip(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "out.y4m"
    frames = frames_of(size, 7)
    with VideoFileSink(path, size, 30.0) as sink:
        for frame in frames:
            sink.write(frame)
    header = path.read_bytes().split(b"\n", 1)[0].decode()
    tags = header.split()
    assert tags[0] == "YUV4MPEG2"
    assert f"W{size[0]}" in tags and f"H{size[1]}" in tags and "F30:1" in tags
    # The chroma tags Chromium's fake capture device accepts for I420.
    colour = [t for t in tags if t.startswith("C")]
    assert colour in ([], ["C420"], ["C420jpeg"], ["C420mpeg2"], ["C420paldv"])
    meta, back = read_back(path)
    assert tuple(meta["size"]) == size and len(back) == 7
    for got, want in zip(back, frames):
        assert np.abs(got.astype(int) - want).mean() < 4
    # Exact size: header + 7 x (FRAME\n + I420 planes with rounded-up chroma).
    w, h = size
    frame_bytes = w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)
    assert path.stat().st_size == len(header) + 1 + 7 * (len(b"FRAME\n") + frame_bytes)


def test_existing_file_survives_abort(tmp_path: Path) -> None:
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"precious")
    sink = VideoFileSink(path, (64, 48), 25.0)
    for frame in frames_of((64, 48), 3):
        sink.write(frame)
    sink.abort()
    assert path.read_bytes() == b"precious"
    assert no_temp_files(tmp_path)


def test_existing_file_survives_exception(tmp_path: Path) -> None:
    path = tmp_path / "keep.y4m"
    path.write_bytes(b"precious")
    with pytest.raises(RuntimeError):
        with VideoFileSink(path, (64, 48), 25.0) as sink:
            sink.write(frames_of((64, 48), 1)[0])
            raise RuntimeError("pipeline failed")
    assert path.read_bytes() == b"precious"
    assert no_temp_files(tmp_path)


def test_close_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    path.write_bytes(b"old")
    with VideoFileSink(path, (64, 48), 25.0) as sink:
        for frame in frames_of((64, 48), 2):
            sink.write(frame)
    assert path.read_bytes() != b"old" and len(read_back(path)[1]) == 2


def test_no_frames_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    with pytest.raises(AvatarcamError, match="no frames"):
        with VideoFileSink(path, (64, 48), 25.0):
            pass
    assert not path.exists() and no_temp_files(tmp_path)


def test_bad_paths_and_frames(tmp_path: Path) -> None:
    with pytest.raises(AvatarcamError) as exc:
        VideoFileSink(tmp_path / "out.gif", (64, 48), 25.0)
    assert ".mp4" in str(exc.value) and ".y4m" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(AvatarcamError, match="does not exist"):
        VideoFileSink(tmp_path / "no" / "such" / "out.mp4", (64, 48), 25.0)
    with VideoFileSink(tmp_path / "ok.mp4", (64, 48), 25.0) as sink:
        with pytest.raises(ValueError):
            sink.write(np.zeros((48, 63, 3), np.uint8))
        with pytest.raises(ValueError):
            sink.write(np.zeros((48, 64, 3), np.float32))
        sink.write(np.zeros((48, 64, 3), np.uint8))


# ---------------------------------------------------------------- virtual camera


def test_virtual_camera_with_fake_backend(fake_vcam) -> None:
    frames = frames_of((80, 60), 3)
    with VirtualCameraSink((80, 60), 30.0, backend="avatarcam-test") as sink:
        assert sink.backend == "avatarcam-test" and sink.device == "/dev/avatarcam-test"
        for frame in frames:
            sink.write(frame)
        with pytest.raises(ValueError):
            sink.write(np.zeros((60, 81, 3), np.uint8))
    backend = fake_vcam.instances[-1]
    assert (backend.width, backend.height, backend.fps) == (80, 60, 30.0)
    assert pyvirtualcam.util.decode_fourcc(backend.fourcc) == pyvirtualcam.PixelFormat.RGB.value
    assert len(backend.frames) == 3 and backend.closes == 1
    assert (backend.frames[1].reshape(60, 80, 3) == frames[1]).all()


def test_virtual_camera_named_device(fake_vcam) -> None:
    with VirtualCameraSink((64, 48), 25.0, backend="avatarcam-test", device="/dev/video10") as sink:
        assert sink.device == "/dev/video10"


def test_unknown_backend() -> None:
    with pytest.raises(AvatarcamError, match="unknown virtual camera backend"):
        VirtualCameraSink((64, 48), 25.0, backend="no-such-backend")


@pytest.mark.skipif(
    set(pyvirtualcam.camera.BACKENDS) != {"v4l2loopback"}
    or Path("/sys/module/v4l2loopback").exists(),
    reason="needs a Linux machine without v4l2loopback loaded",
)
def test_no_virtual_camera_on_this_machine() -> None:
    with pytest.raises(AvatarcamError) as exc:
        VirtualCameraSink((64, 48), 25.0)  # pyvirtualcam's default: try every backend
    message = str(exc.value)
    assert "v4l2loopback" in message and "modprobe" in message and "--no-virtual-cam" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "system, words", [("Linux", "modprobe v4l2loopback"), ("Windows", "OBS Studio 28"), ("Darwin", "OBS Studio 30")]
)
def test_hint_per_platform(system: str, words: str) -> None:
    assert words in sinks.virtual_camera_hint(system)


# ---------------------------------------------------------------- preview


def test_preview_needs_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks.platform, "system", lambda: "Linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(AvatarcamError, match="--preview needs a display"):
        PreviewWindow()
