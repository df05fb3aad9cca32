"""The live loop: a (fake) webcam through the whole program into a (fake) virtual camera,
the preview's hotkeys, and stopping cleanly with stop() or SIGTERM."""
from __future__ import annotations

import signal
import textwrap
import threading
import time
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import pyvirtualcam
from conftest import signal_live_run
from pyvirtualcam.util import encode_fourcc

from avatarcam import cli, sources
from avatarcam.app import HOTKEYS, LiveLoop
from avatarcam.engines import WarpEngine
from avatarcam.framing import Framing
from avatarcam.pipeline import AvatarPipeline
from avatarcam.sinks import VideoFileSink
from avatarcam.sources import Frame, ImageSource
from avatarcam.tracking import FaceTracker

TESTS = Path(__file__).resolve().parent


def grace_bgr() -> np.ndarray:
    from matplotlib import cbook

    return cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


class FakeCapture:
    """Stands in for cv2.VideoCapture on a webcam: Grace Hopper (BGR, as OpenCV delivers)
    nodding and turning her head a little, at about ``fps`` frames a second, for ever."""

    def __init__(self, fps: float = 30.0, period: int = 24) -> None:
        bgr = grace_bgr()
        h, w = bgr.shape[:2]
        self.frames = []
        for i in range(period):
            phase = 2 * np.pi * i / period
            m = cv2.getRotationMatrix2D((w / 2, h / 2), 6 * np.sin(phase), 1.0)
            m[:, 2] += (14 * np.sin(phase), 8 * np.cos(phase))
            self.frames.append(cv2.warpAffine(bgr, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
        self.fps = fps
        self.reads = 0
        self.released = False
        self.requested: dict[int, float] = {}
        self._next = time.perf_counter()

    def isOpened(self) -> bool:
        return not self.released

    def set(self, prop: int, value: float) -> bool:
        self.requested[prop] = value
        return True

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        if self.released:
            return False, None
        self._next += 1.0 / self.fps
        delay = self._next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            self._next = time.perf_counter()
        frame = self.frames[self.reads % len(self.frames)].copy()
        self.reads += 1
        return True, frame

    def release(self) -> None:
        self.released = True


@pytest.fixture
def fake_camera(monkeypatch):
    opened: list[tuple[object, FakeCapture]] = []

    def factory(device):
        cap = FakeCapture()
        opened.append((device, cap))
        return cap

    monkeypatch.setattr(sources, "_default_capture", factory)
    return opened


@pytest.fixture
def keep_sigterm_handler():
    """cli.run installs a SIGTERM handler; put the test process's own back afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


# -- webcam -> program -> virtual camera ------------------------------------------------------------


def test_webcam_to_virtual_camera(astronaut_path, fake_vcam, fake_camera, keep_sigterm_handler):
    n = 24
    code = cli.main(["--face", str(astronaut_path), "--vcam-backend", "avatarcam-test",
                     "--size", "640x360", "--fps", "30", "--max-frames", str(n)])
    assert code == 0

    assert len(fake_camera) == 1
    device, cap = fake_camera[0]
    assert device == 0  # the default camera, as an index
    assert cap.released, "the camera was not released"
    assert cap.requested.get(cv2.CAP_PROP_FPS) == 30

    assert len(fake_vcam.instances) == 1
    cam = fake_vcam.instances[0]
    assert (cam.width, cam.height, cam.fps) == (640, 360, 30)
    assert cam.fourcc == encode_fourcc(pyvirtualcam.PixelFormat.RGB.value)
    assert cam.closes == 1, "the virtual camera was not closed (exactly once)"
    assert len(cam.frames) == n
    frames = [f.reshape(360, 640, 3) for f in cam.frames]
    assert all(f.dtype == np.uint8 and f.size == 640 * 360 * 3 for f in cam.frames)

    # The driver moves her head, so the avatar moves: the frames are not all the same.
    changes = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, frames[1:])]
    assert max(np.abs(f.astype(int) - frames[0].astype(int)).mean() for f in frames) > 1.0, changes

    # The output is the astronaut portrait in RGB order: its colours, not channel-swapped ones.
    astro = cv2.cvtColor(cv2.imread(str(astronaut_path)), cv2.COLOR_BGR2RGB)
    out_means = np.mean([f.reshape(-1, 3).mean(axis=0) for f in frames], axis=0)
    rgb_err = np.abs(out_means - astro.reshape(-1, 3).mean(axis=0)).sum()
    bgr_err = np.abs(out_means - astro[..., ::-1].reshape(-1, 3).mean(axis=0)).sum()
    assert rgb_err < bgr_err


# -- hotkeys --------------------------------------------------------------------------------------


@pytest.fixture
def loop(astronaut_avatar, grace_avatar, grace_path):
    tracker = FaceTracker()
    pipeline = AvatarPipeline([astronaut_avatar, grace_avatar], WarpEngine, tracker,
                              lambda avatar: Framing.native(avatar.size))
    source = ImageSource(grace_path, frames=None)
    yield LiveLoop(source, pipeline, [])
    source.close()
    tracker.close()


def camera_frame(i: int, dx: float = 0.0) -> Frame:
    rgb = cv2.cvtColor(grace_bgr(), cv2.COLOR_BGR2RGB)
    if dx:
        h, w = rgb.shape[:2]
        rgb = cv2.warpAffine(rgb, np.float32([[1, 0, dx], [0, 1, 0]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
    return Frame(np.ascontiguousarray(rgb), i, i / 30)


def test_hotkeys_are_the_documented_ones():
    # Each of these has a test below; a new hotkey needs one too.
    assert [k for k, _, _ in HOTKEYS] == ["n", "]", "[", "p", "m", "l", "f", "h", "q"]


def test_quit_keys(loop):
    assert loop.handle_key(ord("q")) is False
    assert loop.handle_key(27) is False  # Esc
    assert loop.handle_key(ord("z")) is True  # not a hotkey: ignored
    assert loop.handle_key(ord("Q")) is True


def test_switch_avatars_wraps_both_ways(loop, astronaut_avatar, grace_avatar):
    p = loop.pipeline
    assert p.avatar is astronaut_avatar
    assert loop.handle_key(ord("]")) is True
    assert p.avatar is grace_avatar and grace_avatar.name in loop.message
    # The output follows the avatar: grace's photo has its own size.
    result = p.process(camera_frame(0))
    assert result.image.shape[1::-1] == grace_avatar.size != astronaut_avatar.size
    loop.handle_key(ord("]"))
    assert p.avatar is astronaut_avatar  # wrapped forward
    loop.handle_key(ord("["))
    assert p.avatar is grace_avatar  # wrapped backward
    loop.handle_key(ord("["))
    assert p.avatar is astronaut_avatar
    assert p.process(camera_frame(1)).image.shape[1::-1] == astronaut_avatar.size


def test_passthrough_and_mirror(loop, astronaut_avatar):
    p = loop.pipeline
    frame = camera_frame(0)
    cam = frame.image  # 512x600 (w x h)
    w, h = astronaut_avatar.size  # 512x512: same width, so fitting is a centred vertical crop
    assert cam.shape[1] == w and cam.shape[0] > h
    top = (cam.shape[0] - h) // 2
    fitted = cam[top:top + h]

    avatar_out = p.process(frame).image
    assert not np.array_equal(avatar_out, fitted)

    loop.handle_key(ord("p"))
    assert p.passthrough is True
    assert np.array_equal(p.process(camera_frame(1)).image, fitted)

    loop.handle_key(ord("m"))
    assert p.mirror is True
    assert np.array_equal(p.process(camera_frame(2)).image, fitted[:, ::-1])
    loop.handle_key(ord("m"))
    assert p.mirror is False
    assert np.array_equal(p.process(camera_frame(3)).image, fitted)

    loop.handle_key(ord("p"))
    assert p.passthrough is False
    back = p.process(camera_frame(4)).image
    assert not np.array_equal(back, fitted)
    # The avatar again: close to the astronaut, far from the camera picture.
    assert np.abs(back.astype(int) - astronaut_avatar.image).mean() < np.abs(back.astype(int) - fitted).mean()


def test_n_retakes_the_neutral_face(loop):
    p = loop.pipeline
    first = p.process(camera_frame(0))
    neutral = p.rig.retargeter.neutral.copy()
    assert np.allclose(neutral, first.face.landmarks)
    # The driver moves: the neutral stays, the avatar moves.
    for i in range(1, 4):
        moved = p.process(camera_frame(i, dx=25))
    assert np.array_equal(p.rig.retargeter.neutral, neutral)
    assert loop.handle_key(ord("n")) is True
    again = p.process(camera_frame(4, dx=25))
    retaken = p.rig.retargeter.neutral
    assert np.allclose(retaken, again.face.landmarks)
    assert np.abs(retaken[:, 0] - neutral[:, 0]).mean() > 10  # taken from the moved face
    assert moved.face is not None


def test_overlay_toggles_and_decorate(loop):
    loop.max_frames = 3  # a short run, so that there are frame-rate figures to show
    loop.run()
    assert loop.stats.frames == 3 and loop.stats.latency_ms
    result = loop.pipeline.process(camera_frame(10))
    raw = result.image.copy()

    shown = loop.decorate(result)
    assert shown.shape == raw.shape and shown.dtype == np.uint8
    assert not np.array_equal(shown, raw), "decorate drew nothing"
    assert np.array_equal(result.image, raw), "decorate drew on the frame that goes to the sinks"

    for key, attr in (("l", "show_landmarks"), ("f", "show_fps"), ("h", "show_help")):
        before_flag, before_img = getattr(loop, attr), loop.decorate(result)
        assert loop.handle_key(ord(key)) is True
        assert getattr(loop, attr) is (not before_flag), key
        after_img = loop.decorate(result)
        assert not np.array_equal(before_img, after_img), f"{key!r} did not change the preview"
        loop.handle_key(ord(key))
        assert getattr(loop, attr) is before_flag
        assert np.array_equal(loop.decorate(result), before_img)


# -- stopping -----------------------------------------------------------------------------------


def test_stop_from_another_thread_finalises_the_video(tmp_path, astronaut_avatar, grace_path):
    out = tmp_path / "stopped.mp4"
    tracker = FaceTracker()
    pipeline = AvatarPipeline([astronaut_avatar], WarpEngine, tracker, lambda a: Framing.native(a.size))
    source = ImageSource(grace_path, fps=30, frames=None)  # endless, played in real time
    sink = VideoFileSink(out, pipeline.output_size, 30)
    loop = LiveLoop(source, pipeline, [sink], pace=True, max_frames=900)

    def stopper():
        deadline = time.perf_counter() + 20
        while loop.stats.frames < 5 and time.perf_counter() < deadline:
            time.sleep(0.01)
        loop.stop()

    thread = threading.Thread(target=stopper)
    thread.start()
    t0 = time.perf_counter()
    stats = loop.run()
    thread.join()
    sink.close()
    source.close()
    tracker.close()
    assert time.perf_counter() - t0 < 15
    assert 5 <= stats.frames < 900
    assert stats.frames_with_face == stats.frames

    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert tuple(meta["size"]) == astronaut_avatar.size
    assert sum(1 for _ in reader) == stats.frames
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


SIGTERM_SCRIPT = """
import signal, sys
sys.path.insert(0, {tests!r})
from test_live_loop import FakeCapture
from avatarcam import cli, sources

sources._default_capture = lambda device: FakeCapture()
install = signal.signal
def announce(sig, handler):
    previous = install(sig, handler)
    if sig == signal.SIGTERM:
        print("sigterm-handler-installed", flush=True)
    return previous
signal.signal = announce
sys.exit(cli.main({argv!r}))
"""


def test_sigterm_ends_a_live_run_and_keeps_the_video(tmp_path, astronaut_path):
    out = tmp_path / "live.mp4"
    argv = ["--face", str(astronaut_path), "--no-virtual-cam", "--output", str(out), "--size", "320x240"]
    script = tmp_path / "run_live.py"
    script.write_text(textwrap.dedent(SIGTERM_SCRIPT.format(tests=str(TESTS), argv=argv)))
    # One second after the handler is in place: some frames are rendered.
    returncode, _, err = signal_live_run(script, "sigterm-handler-installed", signal.SIGTERM, 1.0, timeout=20)
    assert returncode == 0, err
    assert "Traceback" not in err
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert tuple(meta["size"]) == (320, 240)
    assert sum(1 for _ in reader) >= 5
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
