"""Faults and bad input: a camera that goes away and comes back, faces that leave, several
and small faces, broken images and cache entries, signals, and no network. Real faces
throughout (skimage's astronaut, matplotlib's Grace Hopper); `pytest -m faults` runs them."""
from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
from conftest import FakeBackend, registered_backend, signal_live_run
from PIL import Image

from avatarcam import cli, sources
from avatarcam.app import LiveLoop
from avatarcam.avatar import AvatarCache, avatar_key
from avatarcam.engines import WarpEngine
from avatarcam.errors import AvatarcamError
from avatarcam.framing import Framing
from avatarcam.pipeline import AvatarPipeline
from avatarcam.sinks import VirtualCameraSink
from avatarcam.sources import CameraSource, Frame, FrameSource
from avatarcam.tracking import FaceTracker, box_iou, detect_faces, face_box

pytestmark = pytest.mark.faults

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
W, H = 1280, 720


# -- real faces, pasted into scenes ---------------------------------------------------------------


@functools.cache
def portrait(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, landmark box) of a real portrait."""
    if name == "astronaut":
        from skimage import data

        rgb = data.astronaut()
    else:
        from matplotlib import cbook

        rgb = cv2.cvtColor(cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), cv2.COLOR_BGR2RGB)
    return rgb, face_box(detect_faces(rgb)[0])


@functools.cache
def background(width: int = W, height: int = H) -> np.ndarray:
    """A photo without a face (skimage's coffee cup; test_cli checks MediaPipe finds none)."""
    from skimage import data

    return cv2.resize(data.coffee(), (width, height), interpolation=cv2.INTER_AREA)


def paste_face(frame: np.ndarray, name: str, face_width: float, center: tuple[float, float]) -> np.ndarray:
    """Paste ``name``'s head so that its landmark box is ``face_width`` px wide and centred
    at ``center``; returns where that box lands (x0, y0, x1, y1)."""
    rgb, box = portrait(name)
    s = face_width / (box[2] - box[0])
    bw, bh = box[2] - box[0], box[3] - box[1]
    x0, x1 = int(max(0, box[0] - 0.6 * bw)), int(min(rgb.shape[1], box[2] + 0.6 * bw))
    y0, y1 = int(max(0, box[1] - 0.7 * bh)), int(min(rgb.shape[0], box[3] + 0.5 * bh))
    head = cv2.resize(rgb[y0:y1, x0:x1], None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    ox = round(center[0] - ((box[0] + box[2]) / 2 - x0) * s)
    oy = round(center[1] - ((box[1] + box[3]) / 2 - y0) * s)
    fh, fw = frame.shape[:2]
    hh, hw = head.shape[:2]
    a0, b0, a1, b1 = max(ox, 0), max(oy, 0), min(ox + hw, fw), min(oy + hh, fh)
    frame[b0:b1, a0:a1] = head[b0 - oy:b1 - oy, a0 - ox:a1 - ox]
    return np.array([(box[0] - x0) * s + ox, (box[1] - y0) * s + oy, (box[2] - x0) * s + ox, (box[3] - y0) * s + oy])


def grace_moving(i: int, dx: float = 0.0, angle: float = 0.0) -> np.ndarray:
    """Grace Hopper's portrait nodding a little (frame i), shifted and turned by dx / angle."""
    rgb, _ = portrait("grace")
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle + 4 * np.sin(i / 4), 1.0)
    m[:, 2] += (dx + 6 * np.sin(i / 5), 4 * np.cos(i / 4))
    return cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


# -- fault-injecting sources and sinks -----------------------------------------------------------


class Webcam:
    """A webcam that can be unplugged and plugged back in, for CameraSource's
    ``capture_factory``: while unplugged, open captures fail to read and new ones fail to
    open, like a USB camera pulled out (or one taken by another program)."""

    def __init__(self, fps: float = 30.0) -> None:
        self.fps = fps
        self.plugged = threading.Event()
        self.plugged.set()
        self.opens = 0  # factory calls
        self.reads = 0  # frames delivered
        self.captures: list[Webcam.Capture] = []

    def __call__(self, device) -> Webcam.Capture:
        self.opens += 1
        cap = Webcam.Capture(self)
        self.captures.append(cap)
        return cap

    class Capture:
        def __init__(self, cam: Webcam) -> None:
            self.cam = cam
            self.opened = cam.plugged.is_set()
            self.released = False
            self._next = time.perf_counter()

        def isOpened(self) -> bool:
            return self.opened and not self.released

        def set(self, prop: int, value: float) -> bool:
            return True

        def get(self, prop: int) -> float:
            return self.cam.fps if prop == cv2.CAP_PROP_FPS else 0.0

        def read(self):
            if self.released or not self.opened or not self.cam.plugged.is_set():
                time.sleep(0.005)
                self.opened = False  # a pulled device stays dead for this handle
                return False, None
            self._next += 1.0 / self.cam.fps
            delay = self._next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                self._next = time.perf_counter()
            self.cam.reads += 1
            return True, cv2.cvtColor(grace_moving(self.cam.reads), cv2.COLOR_RGB2BGR)

        def release(self) -> None:
            self.released = True


class ListSource(FrameSource):
    """A file-like source over prepared RGB frames, timestamped at ``fps``."""

    live = False

    def __init__(self, images: list[np.ndarray], fps: float = 30.0) -> None:
        self.images, self.fps = images, fps
        self.size = (images[0].shape[1], images[0].shape[0])
        self.dropped = 0
        self._i = 0

    def read(self, timeout: float | None = None) -> Frame | None:
        if self._i >= len(self.images):
            return None
        i, self._i = self._i, self._i + 1
        return Frame(np.ascontiguousarray(self.images[i]), i, i / self.fps)

    def close(self) -> None:
        self._i = len(self.images)


class RecordingBackend(FakeBackend):
    """A pyvirtualcam backend that keeps when each frame was sent and how bright it was,
    and the last frame."""

    instances: ClassVar[list[RecordingBackend]] = []
    default_device = "/dev/avatarcam-faults"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.frames: list[tuple[float, float]] = []  # (time sent, mean brightness)
        self.last: np.ndarray | None = None

    def send(self, frame: np.ndarray) -> None:
        assert self.closes == 0, "send() after close()"
        self.frames.append((time.perf_counter(), float(frame.mean())))
        self.last = frame.reshape(self.height, self.width, 3).copy()


@pytest.fixture
def recording_vcam():
    with registered_backend("avatarcam-faults", RecordingBackend) as backend:
        yield backend


@pytest.fixture
def keep_signal_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


@contextmanager
def running(loop: LiveLoop, *parts) -> Iterator[threading.Thread]:
    """``loop`` running on a thread of its own for the ``with`` block (the thread is given);
    then stopped, and ``parts`` (source, sinks, tracker) closed in that order."""
    runner = threading.Thread(target=loop.run)
    runner.start()
    try:
        yield runner
    finally:
        loop.stop()
        runner.join(10)
        for part in parts:
            part.close()


def native(avatar) -> Framing:
    return Framing.native(avatar.size)


# -- camera lost mid-run ----------------------------------------------------------------------------


def test_camera_lost_mid_run_keeps_sending_retries_and_resumes(astronaut_avatar, recording_vcam, caplog):
    webcam = Webcam()
    source = CameraSource(0, capture_factory=webcam)
    source.failure_grace = 0.2
    source.retry_backoff = (0.05, 0.4)
    tracker = FaceTracker()
    pipeline = AvatarPipeline([astronaut_avatar], WarpEngine, tracker, native)
    vcam = VirtualCameraSink(pipeline.output_size, 30, backend="avatarcam-faults")
    loop = LiveLoop(source, pipeline, [vcam], fps=30)
    caplog.set_level(logging.WARNING)

    def wait_for(condition, limit: float = 20.0) -> None:
        deadline = time.perf_counter() + limit
        while not condition() and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert condition(), "timed out"

    with running(loop, source, vcam, tracker) as runner:
        wait_for(lambda: loop.stats.frames_with_face >= 10)
        before = loop.stats.frames_with_face
        unplugged_at = time.perf_counter()
        webcam.plugged.clear()
        wait_for(lambda: source.reconnecting)
        wait_for(lambda: loop.stats.filler_frames >= 20)
        opens_while_gone = webcam.opens
        time.sleep(0.3)
        replugged_at = time.perf_counter()
        webcam.plugged.set()
        wait_for(lambda: loop.stats.frames_with_face >= before + 15)
    assert not runner.is_alive()

    cam = recording_vcam.instances[0]
    assert cam.closes == 1
    # It kept trying to reopen the camera while it was gone, and reopened it once back.
    assert opens_while_gone >= 3 and source.losses == 1 and loop.stats.camera_losses == 1
    assert webcam.captures[-1].isOpened() is False  # released on close
    # The virtual camera never went quiet: frames kept coming while the camera was gone...
    sent = np.array([t for t, _ in cam.frames])
    brightness = np.array([b for _, b in cam.frames])
    during = (sent > unplugged_at + 0.7) & (sent < replugged_at)
    assert during.sum() >= 10
    # ...as the dimmed "reconnecting" avatar, and the live avatar again afterwards.
    normal = brightness[sent < unplugged_at][-10:].mean()
    assert brightness[during].mean() < 0.75 * normal
    assert abs(brightness[-5:].mean() - normal) < 0.1 * normal
    assert source.reconnecting is False
    # One line when it was lost, one when it came back; no line per retry.
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("avatarcam")]
    assert len([m for m in lines if "lost" in m]) == 1, lines
    assert len([m for m in lines if "is back" in m]) == 1, lines


def test_camera_whose_driver_hangs_mid_run_is_bridged_until_it_delivers_again(astronaut_avatar, caplog):
    """A driver that blocks inside read() (no error, no frame): the output keeps going,
    repeating the last frame and then showing the dimmed avatar, and picks up the camera
    when it delivers again."""
    webcam = Webcam()
    hang = threading.Event()

    class Hanging(Webcam.Capture):
        def read(self):
            while hang.is_set() and not self.released:
                time.sleep(0.01)
            return super().read()

    source = CameraSource(0, capture_factory=lambda device: Hanging(webcam))
    tracker = FaceTracker()
    pipeline = AvatarPipeline([astronaut_avatar], WarpEngine, tracker, native)
    sent: list[float] = []

    class Brightness:
        def write(self, frame: np.ndarray) -> None:
            sent.append(float(frame.mean()))

        def close(self) -> None:
            pass

    loop = LiveLoop(source, pipeline, [Brightness()], fps=30, stall_s=0.5)
    caplog.set_level(logging.WARNING)
    with running(loop, source, tracker):
        deadline = time.perf_counter() + 20
        while loop.stats.frames_with_face < 10 and time.perf_counter() < deadline:
            time.sleep(0.01)
        hang.set()
        while loop.stats.filler_frames < 40 and time.perf_counter() < deadline:
            time.sleep(0.01)
        hung_frames = loop.stats.frames
        hang.clear()
        while loop.stats.frames < hung_frames + 10 and time.perf_counter() < deadline:
            time.sleep(0.01)
    assert loop.stats.filler_frames >= 40 and loop.stats.frames >= hung_frames + 10
    assert loop.stats.camera_losses == 1
    normal = np.mean(sent[:10])
    assert min(sent) < 0.75 * normal  # the "camera lost" frames were shown
    assert abs(np.mean(sent[-5:]) - normal) < 0.1 * normal  # and then the live avatar again
    assert [r.getMessage() for r in caplog.records if "no frames" in r.getMessage()] != []


def failing_live_run(avatar, fails) -> tuple[CameraSource, FaceTracker, AvatarPipeline, list]:
    """A fake webcam, a tracker and a pipeline for ``avatar`` whose engine raises on the
    render calls (counted from 1) that ``fails(n)`` picks; also the list of calls so far."""
    source = CameraSource(0, capture_factory=Webcam())
    tracker = FaceTracker()
    pipeline = AvatarPipeline([avatar], WarpEngine, tracker, native)
    engine = pipeline.rig.engine
    render, calls = engine.render, []

    def flaky(pose):
        calls.append(pose)
        if fails(len(calls)):
            raise RuntimeError("cv2.error: remap: dst.rows < SHRT_MAX")
        return render(pose)

    engine.render = flaky
    return source, tracker, pipeline, calls


def test_a_frame_the_engine_fails_on_repeats_the_last_one_and_the_call_goes_on(astronaut_avatar, caplog):
    """A live run whose engine raises on a few frames (a bug met by some rare pose): the
    virtual camera keeps getting frames, the last good one repeated, with one warning, and
    the avatar is rendered again once the engine recovers."""
    source, tracker, pipeline, calls = failing_live_run(astronaut_avatar, lambda n: 10 <= n <= 14)
    sent: list[tuple[int, np.ndarray]] = []  # (render calls so far, frame)

    class Recorder:
        def write(self, frame: np.ndarray) -> None:
            sent.append((len(calls), frame))

        def close(self) -> None:
            pass

    loop = LiveLoop(source, pipeline, [Recorder()], fps=30)
    caplog.set_level(logging.WARNING)
    with running(loop, source, tracker) as runner:
        deadline = time.perf_counter() + 20
        while loop.stats.frames < 25 and time.perf_counter() < deadline:
            time.sleep(0.01)
    assert not runner.is_alive() and loop.stats.frames >= 25
    assert loop.stats.failed_frames == 5
    # After each failed render the last good frame went out again; then new renders.
    last_good = [frame for n, frame in sent if n == 9][-1]
    assert all(frame is last_good for n, frame in sent if 10 <= n <= 14)
    assert len([n for n, _ in sent if 10 <= n <= 14]) >= 5
    assert all(frame is not last_good for n, frame in sent if n == 15)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("avatarcam") and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "could not be rendered" in warnings[0] and "RuntimeError" in warnings[0], warnings


def test_the_preview_still_quits_while_every_frame_fails(astronaut_avatar):
    """An engine that fails on every frame from the tenth on: the preview keeps showing the
    last good frame and 'q' pressed there still ends the run."""
    source, tracker, pipeline, _ = failing_live_run(astronaut_avatar, lambda n: n >= 10)

    class QuitAt20:
        closed_by_user = False

        def __init__(self) -> None:
            self.shown = 0

        def show(self, image: np.ndarray) -> int:
            self.shown += 1
            return ord("q") if self.shown == 20 else -1

    preview = QuitAt20()
    loop = LiveLoop(source, pipeline, [], preview=preview, fps=30)
    with running(loop, source, tracker) as runner:
        runner.join(20)
        ended = not runner.is_alive()
    assert ended, "the run went on after 'q' was pressed in the preview"
    assert preview.shown == 20 and loop.stats.failed_frames >= 10


def test_camera_failing_on_first_open_is_one_clear_error_without_retries():
    webcam = Webcam()
    webcam.plugged.clear()
    with pytest.raises(AvatarcamError) as exc:
        CameraSource(1, capture_factory=webcam, first_frame_timeout=0.5)
    assert "camera 1" in str(exc.value) and "\n" not in str(exc.value)
    assert webcam.opens == 1


def test_camera_that_opens_but_never_delivers_is_one_clear_error_without_retries():
    webcam = Webcam()
    source_error = None
    webcam.plugged.set()

    class Silent(Webcam.Capture):
        def read(self):
            time.sleep(0.01)
            return False, None

    factory_calls = []

    def factory(device):
        factory_calls.append(device)
        return Silent(webcam)

    start = time.perf_counter()
    try:
        CameraSource(0, capture_factory=factory, first_frame_timeout=0.6)
    except AvatarcamError as e:
        source_error = str(e)
    assert source_error is not None and "delivered no picture" in source_error
    assert factory_calls == [0]
    assert time.perf_counter() - start < 10  # it gave up instead of retrying for ever


def test_run_statistics_stay_bounded_however_long_the_run():
    from avatarcam.app import RunStats

    stats = RunStats(history=100)
    for i in range(1000):  # a long run, in miniature
        stats.add(float(i), {"track": 0.001 * i, "render": 0.002})
    assert 100 <= len(stats.latency_ms) <= 200
    assert all(100 <= len(v) <= 200 for v in stats.stage_ms.values())
    assert stats.latency_ms[-1] == 999.0 and stats.stage_ms["track"][-1] == pytest.approx(999.0)
    assert stats.percentile(50) > 800  # the summary describes the recent past


# -- face lost for seconds ----------------------------------------------------------------------------


def test_face_lost_for_seconds_holds_eases_to_neutral_and_returns_without_a_pop(astronaut_avatar):
    fps = 30
    tracked = [grace_moving(i) for i in range(30)]
    gone = [background(*portrait("grace")[0].shape[1::-1])] * 75  # 2.5 s nobody in view
    back = [grace_moving(i, dx=30, angle=8) for i in range(30)]  # returns moved and turned
    source = ListSource(tracked + gone + back, fps)
    tracker = FaceTracker()
    pipeline = AvatarPipeline([astronaut_avatar], WarpEngine, tracker, native)
    poses: list[np.ndarray] = []
    faces: list[bool] = []
    process = pipeline.process

    def recording(frame):
        result = process(frame)
        poses.append(result.pose.landmarks[:, :2].copy())
        faces.append(result.face is not None)
        return result

    pipeline.process = recording
    stats = LiveLoop(source, pipeline, []).run()
    tracker.close()
    assert stats.frames == len(source.images)
    faces_arr = np.array(faces)
    assert faces_arr[:30].all() and not faces_arr[30:105].any() and faces_arr[110:].all()

    p = np.array(poses)
    neutral = astronaut_avatar.landmarks[:, :2]
    width = astronaut_avatar.proportions["face_width"]
    last_tracked = p[29]
    # Hold: for the first few frames without a face the avatar stays where it was.
    assert np.abs(p[30:40] - last_tracked).max() < 1e-6
    # Ease: by the end of the 2.5 s it is (nearly) back at its own neutral face...
    start_off = np.abs(last_tracked - neutral).max()
    assert np.abs(p[104] - neutral).max() < 0.1 * start_off
    # ...and it got there gradually.
    steps = np.linalg.norm(np.diff(p, axis=0), axis=2).max(axis=1)  # largest point step per frame
    # The driver came back turned and shifted: jumping straight there would be a big pop.
    jump = np.linalg.norm(p[-1] - p[104], axis=1).max()
    assert jump > 0.12 * width, "the returning face should be clearly away from neutral"
    assert steps.max() < 0.4 * jump, (steps.max(), jump)
    assert steps[104:112].max() < 0.4 * jump


# -- several faces, small faces ----------------------------------------------------------------------------


def two_faces(grace_width: float, astro_width: float, hide_grace: bool = False):
    frame = background().copy()
    grace_box = paste_face(frame, "grace", grace_width, (360, 380))
    if hide_grace:  # a hand over her face: background where her head was
        x0, y0, x1, y1 = (grace_box + [-40, -60, 40, 40]).astype(int)
        frame[y0:y1, x0:x1] = background()[y0:y1, x0:x1]
    astro_box = paste_face(frame, "astronaut", astro_width, (920, 380))
    return frame, grace_box, astro_box


def test_two_faces_swapping_sizes_do_not_switch_the_tracked_person():
    n = 24
    tracker = FaceTracker()
    followed = []
    try:
        for i in range(n):
            a = i / (n - 1)
            g, s = 280 - 120 * a, 160 + 120 * a  # Grace shrinks, the astronaut grows past her
            hide = i in (18, 19)  # and at the end Grace's face is covered for two frames
            frame, grace_box, astro_box = two_faces(g, s, hide_grace=hide)
            face = tracker.process(frame, i / 30)
            followed.append((i, hide, g < s, face, grace_box, astro_box))
    finally:
        tracker.close()
    assert any(bigger for _, _, bigger, face, *_ in followed if face is not None), "the sizes never swapped"
    for i, hide, _, face, grace_box, astro_box in followed:
        if hide:
            # Grace is hidden: nobody to follow, and not a reason to jump to the astronaut.
            assert face is None, f"frame {i}: switched to the other person"
            continue
        assert face is not None, f"frame {i}: lost Grace"
        box = face_box(face.raw)
        assert box_iou(box, grace_box) > 0.5, (i, box, grace_box)
        assert box_iou(box, astro_box) == 0.0


def test_small_face_in_720p_is_found_and_followed():
    # Someone sitting back: the face is 72 px tall, a tenth of the 1280x720 frame's height.
    _, box = portrait("astronaut")
    width = 72 * (box[2] - box[0]) / (box[3] - box[1])
    tracker = FaceTracker()
    found = []
    try:
        for i in range(24):
            frame = background().copy()
            truth = paste_face(frame, "astronaut", width, (700 + 4 * i, 300 + 2 * i))
            face = tracker.process(frame, i / 30)
            found.append(None if face is None else box_iou(face_box(face.raw), truth))
    finally:
        tracker.close()
    first = next(i for i, f in enumerate(found) if f is not None)
    assert first < 12, "a full scan of the frame should find the face"
    after = found[first:]
    assert all(f is not None for f in after), f"lost the small face: {found}"
    assert min(after) > 0.5, found  # and the landmarks sit on it


# -- bad images, through the real program ---------------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bad_image(kind: str, folder: Path) -> Path:
    """Write one kind of broken face image and return its path."""
    from skimage import data

    astro = Image.fromarray(data.astronaut())
    if kind in ("truncated.jpg", "truncated.png", "corrupt.png"):
        path = folder / kind
        astro.save(path, quality=90)
        raw = bytearray(path.read_bytes())
        if kind.startswith("truncated"):
            raw = raw[: len(raw) // 2]
        else:
            raw[len(raw) // 3: len(raw) // 3 + 400] = b"\xff" * 400
        path.write_bytes(bytes(raw))
        return path
    if kind == "1x1.png":
        path = folder / kind
        Image.new("RGB", (1, 1), (200, 120, 90)).save(path)
        return path
    if kind == "panorama.png":  # a real face in a strip 33000 pixels wide (Face Mesh aborts on it)
        path = folder / kind
        strip = Image.new("RGB", (33_000, 512), (128, 128, 128))
        strip.paste(astro, (16_000, 0))
        strip.save(path, compress_level=1)
        return path
    if kind == "bomb.png":  # a tiny file declaring 100000 x 100000 pixels
        path = folder / kind
        header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                         + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + _png_chunk(b"IEND", b""))
        return path
    if kind == "notes.png":
        path = folder / kind
        path.write_text("shopping list: milk, eggs\n")
        return path
    if kind == "empty.jpg":
        path = folder / kind
        path.write_bytes(b"")
        return path
    if kind == "16bit.png":
        path = folder / kind
        cv2.imwrite(str(path), cv2.cvtColor(data.astronaut().astype(np.uint16) * 257, cv2.COLOR_RGB2BGR))
        assert Image.open(path).mode in ("RGB;16", "I;16", "RGB") and cv2.imread(str(path), -1).dtype == np.uint16
        return path
    if kind == "cmyk.jpg":
        path = folder / kind
        astro.convert("CMYK").save(path, quality=92)
        assert Image.open(path).mode == "CMYK"
        return path
    raise ValueError(kind)


def run_cli(args, cache_dir: Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, AVATARCAM_CACHE_DIR=str(cache_dir))
    env.pop("AVATARCAM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "avatarcam", *map(str, args)], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("kind, needle", [
    ("truncated.jpg", "not a readable image"),
    ("truncated.png", "not a readable image"),
    ("corrupt.png", "not a readable image"),
    ("1x1.png", "too small"),
    ("bomb.png", "too large"),
    ("panorama.png", "too large"),
    ("notes.png", "not a readable image"),
    ("empty.jpg", "empty file"),
])
def test_broken_face_image_is_one_clear_line(tmp_path, grace_path, kind, needle):
    path = bad_image(kind, tmp_path)
    out = tmp_path / "out.mp4"
    proc = run_cli(["--face", path, "--input", grace_path, "--output", out], tmp_path / "cache", tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("avatarcam: error: ") and kind in lines[0] and needle in lines[0], lines[0]
    assert not out.exists()


def test_an_internal_error_is_one_line_and_its_trace_comes_on_request(tmp_path, grace_path, monkeypatch, capsys):
    """A bug met by the user's input (the engine raising mid-file) is one line on stderr,
    not a traceback, and leaves no half-written video; AVATARCAM_DEBUG=1 shows the trace."""

    def broken(self, pose):
        raise RuntimeError("OpenCV(4.11.0) remap:\n  (-215:Assertion failed) dst.rows < SHRT_MAX")

    monkeypatch.setattr(WarpEngine, "render", broken)
    monkeypatch.delenv("AVATARCAM_DEBUG", raising=False)
    out = tmp_path / "out.mp4"
    argv = ["--face", str(grace_path), "--input", str(grace_path), "--output", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("avatarcam: internal error: RuntimeError: OpenCV(4.11.0) remap: (-215:Assertion failed)")
    assert "AVATARCAM_DEBUG=1" in lines[0]
    assert not out.exists()
    monkeypatch.setenv("AVATARCAM_DEBUG", "1")
    with pytest.raises(RuntimeError, match="SHRT_MAX"):
        cli.main(argv)


@pytest.mark.parametrize("kind", ["16bit.png", "cmyk.jpg"])
def test_unusual_but_valid_face_images_work(tmp_path, grace_path, kind):
    path = bad_image(kind, tmp_path)
    out = tmp_path / "out.mp4"
    proc = run_cli(["--face", path, "--input", grace_path, "--output", out], tmp_path / "cache", tmp_path)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    cap = cv2.VideoCapture(str(out))
    ok, bgr = cap.read()
    cap.release()
    assert ok and bgr.shape[:2] == (512, 512)
    # It is the astronaut in her own colours: a 16-bit or CMYK file read wrongly is far off.
    from skimage import data

    assert np.abs(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int) - data.astronaut()).mean() < 25


# -- the avatar cache --------------------------------------------------------------------------------


def _prepare(paths, cache: AvatarCache):
    from avatarcam.avatar import prepare_avatar

    return prepare_avatar([str(p) for p in paths], engine_version=WarpEngine.version,
                          prepare_engine_data=WarpEngine.prepare, cache=cache)


def _rewrite_entry(path: Path, **changes) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update({k: np.array(v) for k, v in changes.items()})
    np.savez(path, **arrays)


@pytest.mark.parametrize("stale", ["format", "engine_version", "truncated", "nan_landmarks"])
def test_stale_or_damaged_cache_entry_is_rebuilt(tmp_path, grace_path, stale):
    cache = AvatarCache(tmp_path)
    good = _prepare([grace_path], cache)
    entry = cache.path(good.key)
    if stale == "format":
        _rewrite_entry(entry, meta_format=999)
    elif stale == "engine_version":
        _rewrite_entry(entry, meta_engine_version="warp-0-old")
    elif stale == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 3])
    else:
        with np.load(entry) as z:
            points = z["landmarks"].copy()
        points[5] = np.nan
        _rewrite_entry(entry, landmarks=points)
    again = AvatarCache(tmp_path)
    rebuilt = _prepare([grace_path], again)
    assert again.misses == 1 and again.hits == 0
    assert set(rebuilt.engine_data) == set(good.engine_data)
    np.testing.assert_allclose(rebuilt.landmarks, good.landmarks, atol=1e-6)
    # ...and the rebuilt entry replaced the bad one.
    hit = AvatarCache(tmp_path).load(good.key, WarpEngine.version)
    assert hit is not None and set(hit.engine_data) == set(good.engine_data)


def test_cache_entry_under_the_wrong_key_is_not_trusted(tmp_path, grace_path, astronaut_path):
    cache = AvatarCache(tmp_path)
    grace = _prepare([grace_path], cache)
    astro_key = avatar_key([str(astronaut_path)], WarpEngine.version)
    cache.path(astro_key).write_bytes(cache.path(grace.key).read_bytes())  # e.g. a copied file
    astro = _prepare([astronaut_path], cache)
    assert cache.misses == 2
    assert astro.image.shape == (512, 512, 3) and not np.array_equal(astro.landmarks, grace.landmarks)
    assert Path(astro.sources[0]).name == astronaut_path.name


def _prepare_in_process(args) -> tuple[str, np.ndarray]:
    face, cache_dir, barrier = args
    barrier.wait(60)  # both start preparing at the same moment
    avatar = _prepare([face], AvatarCache(cache_dir))
    return avatar.key, avatar.landmarks


def test_two_processes_preparing_the_same_avatar_leave_a_whole_entry(tmp_path, grace_path):
    cache_dir = tmp_path / "shared-cache"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            results = pool.map(_prepare_in_process, [(str(grace_path), str(cache_dir), barrier)] * 2)
    (key_a, points_a), (key_b, points_b) = results
    assert key_a == key_b
    np.testing.assert_array_equal(points_a, points_b)
    assert sorted(p.name for p in cache_dir.iterdir()) == [f"{key_a}.npz"], "temporary files left behind"
    cache = AvatarCache(cache_dir)
    loaded = cache.load(key_a, WarpEngine.version)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.landmarks, points_a)


# -- shutdown by signal, and no network ----------------------------------------------------------------


LIVE_SCRIPT = """
import socket, sys

def refuse(*args, **kwargs):
    print("network-used", flush=True)
    raise OSError("network access is blocked in this test")

class RefusedSocket(socket.socket):  # a class, so that modules may still subclass it (ssl)
    def __init__(self, *args, **kwargs):
        refuse()

socket.socket = RefusedSocket
socket.create_connection = refuse
socket.getaddrinfo = refuse

sys.path.insert(0, {tests!r})
import time
import cv2
import pyvirtualcam
from avatarcam import cli, sources
from test_faults import Webcam, RecordingBackend

class Cam(Webcam.Capture):
    def release(self):
        if not self.released:
            print("camera-released", flush=True)
        super().release()

class VCam(RecordingBackend):
    def send(self, frame):
        if not self.frames:
            print("first-frame-sent", flush=True)
        super().send(frame)
    def close(self):
        print("vcam-closed", flush=True)
        super().close()

webcam = Webcam()
sources._default_capture = lambda device: Cam(webcam)
pyvirtualcam.register_backend("avatarcam-faults", VCam)
code = cli.main({argv!r})
print("exit", code, flush=True)
sys.exit(code)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_releases_camera_closes_virtual_camera_and_finalises_the_video(tmp_path, astronaut_path, sig):
    out = tmp_path / "live.mp4"
    argv = ["--face", str(astronaut_path), "--virtual-cam", "--vcam-backend", "avatarcam-faults",
            "--output", str(out), "--size", "320x240"]
    script = tmp_path / "live.py"
    script.write_text(textwrap.dedent(LIVE_SCRIPT.format(tests=str(TESTS), argv=argv)))
    # Ctrl-C in a terminal signals the whole foreground group (ffmpeg too).
    returncode, stdout, stderr = signal_live_run(script, "first-frame-sent", sig, 0.7, group=True)
    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    said = stdout.split()
    assert "camera-released" in said and "vcam-closed" in said and "network-used" not in said
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames += 1
        assert bgr.shape == (240, 320, 3)
    cap.release()
    assert frames >= 5
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_a_virtual_camera_that_goes_away_mid_run_is_one_clear_line(tmp_path, astronaut_path, monkeypatch, capsys):
    """v4l2loopback unloaded (or the OBS camera stopped) in the middle of a live run: one
    line that says so, exit 1, the webcam released; no 'internal error', no traceback."""

    class Unplugged(FakeBackend):
        def send(self, frame: np.ndarray) -> None:
            if len(self.frames) == 5:
                raise OSError(19, "No such device")
            super().send(frame)

    webcam = Webcam()
    monkeypatch.setattr(sources, "_default_capture", webcam)
    with registered_backend("avatarcam-unplugged", Unplugged) as backend:
        code = cli.main(["--face", str(astronaut_path), "--virtual-cam", "--vcam-backend", "avatarcam-unplugged",
                         "--size", "320x240", "--max-frames", "50", "--cache-dir", str(tmp_path / "cache")])
    assert code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("avatarcam: error: the virtual camera /dev/avatarcam-test stopped taking frames")
    assert "No such device" in lines[0]
    assert len(backend.instances[0].frames) == 5 and backend.instances[0].closes == 1
    assert all(capture.released for capture in webcam.captures)


def test_whole_live_run_opens_no_socket(tmp_path, astronaut_path, recording_vcam, keep_signal_handlers, monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is blocked in this test")

    class RefusedSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            refuse(*args)

    monkeypatch.setattr(socket, "socket", RefusedSocket)
    for name in ("create_connection", "getaddrinfo", "socketpair"):
        monkeypatch.setattr(socket, name, refuse)
    webcam = Webcam()
    monkeypatch.setattr(sources, "_default_capture", webcam)
    out = tmp_path / "offline.mp4"
    code = cli.main(["--face", str(astronaut_path), "--virtual-cam", "--vcam-backend", "avatarcam-faults",
                     "--output", str(out), "--size", "320x240", "--max-frames", "20",
                     "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    assert attempts == []
    assert len(recording_vcam.instances[0].frames) == 20
    assert out.stat().st_size > 0 and webcam.reads >= 20

