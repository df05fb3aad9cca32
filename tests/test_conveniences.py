"""The camera-utility conveniences: doctor, prepare, the config file, --log-level, the
virtual camera's name and format, letterbox/crop, and lazily prepared avatars."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import detect

from avatarcam import cli, doctor
from avatarcam.app import LiveLoop
from avatarcam.config import parse_with_config
from avatarcam.engines import WarpEngine
from avatarcam.errors import AvatarcamError
from avatarcam.framing import Framing
from avatarcam.pipeline import AvatarPipeline, PendingAvatar
from avatarcam.retarget import AvatarPose
from avatarcam.sources import ImageSource
from avatarcam.tracking import FaceTracker


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avatarcam", *args], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, **(env or {})})


def y4m_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:200].split(b"\n")[0].split()
    fields = {f[:1]: f[1:] for f in header[1:]}
    return int(fields[b"W"]), int(fields[b"H"])


def face_aspect(points: np.ndarray) -> float:
    xy = points[:, :2]
    w, h = xy.max(axis=0) - xy.min(axis=0)
    return float(w / h)


# -- doctor -------------------------------------------------------------------------------------
def test_doctor_reports_this_machine_and_exits_0():
    done = run_cli("doctor")
    assert done.returncode == 0, done.stderr
    table = done.stdout
    for row in ("webcam", "pyvirtualcam backends", "MediaPipe models", "onnxruntime", "GPU"):
        assert row in table
    assert "MediaPipe models       ok" in table and "face_landmark_with_attention.tflite" in table
    import onnxruntime

    for provider in onnxruntime.get_available_providers():
        assert provider in table
    if sys.platform.startswith("linux") and not Path("/sys/module/v4l2loopback").exists():
        assert "v4l2loopback" in table and "sudo modprobe v4l2loopback" in table
    assert "Traceback" not in done.stderr


def test_doctor_camera_check_says_what_opens(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the /dev/video probe is Linux-only")
    devices = [tmp_path / "video0", tmp_path / "video2"]
    busy = doctor.check_cameras(devices, opens=lambda d: False)
    assert not busy.ok and "none opens" in busy.detail and "another program" in busy.fix
    one = doctor.check_cameras(devices, opens=lambda d: d.endswith("video2"))
    assert one.ok and str(devices[1]) in one.detail and str(devices[0]) not in one.detail
    none = doctor.check_cameras([], opens=lambda d: True)
    assert not none.ok and "--input" in none.fix


def test_doctor_gpu_check():
    assert doctor.check_gpu("NVIDIA T4, 16 GiB", ["CUDAExecutionProvider", "CPUExecutionProvider"]).ok
    no_cuda = doctor.check_gpu("NVIDIA T4, 16 GiB", ["CPUExecutionProvider"])
    assert not no_cuda.ok and "avatarcam[gpu]" in no_cuda.fix
    none = doctor.check_gpu("", ["CPUExecutionProvider"])
    assert not none.ok and not none.needed and none.status == "optional"


# -- prepare ------------------------------------------------------------------------------------
def test_prepare_caches_avatars_and_reports_bad_images_in_one_line(tmp_path, astronaut_path, grace_path):
    folder = tmp_path / "avatars"
    folder.mkdir()
    (folder / "astronaut.png").write_bytes(astronaut_path.read_bytes())
    (folder / "grace.jpg").write_bytes(grace_path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a picture at all")
    cache = tmp_path / "cache"
    env = {"AVATARCAM_CACHE_DIR": str(cache)}

    done = run_cli("prepare", "--avatars", str(folder), env=env)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "broken.jpg" in errors[0] and "Traceback" not in done.stderr
    assert "2 of 3 avatars ready" in done.stderr
    assert len(list(cache.glob("*.npz"))) == 2

    # Again: nothing to compute; and the live command finds them in the cache.
    (folder / "broken.jpg").unlink()
    again = run_cli("prepare", "--avatars", str(folder), env=env)
    assert again.returncode == 0 and "2 of 2 avatars ready (2 already cached)" in again.stderr
    out = tmp_path / "out.y4m"
    used = run_cli("--face", str(folder / "grace.jpg"), "--input", str(astronaut_path), "--output", str(out),
                   "--log-level", "info", env=env)
    assert used.returncode == 0, used.stderr
    assert "loaded from cache" in used.stderr
    assert len(list(cache.glob("*.npz"))) == 2


def test_prepare_without_faces_is_one_line():
    assert cli.main(["prepare"]) == 1


# -- config file and log level --------------------------------------------------------------
def test_config_defaults_are_overridden_by_flags(tmp_path, astronaut_path):
    config = tmp_path / "config.toml"
    config.write_text(f'face = "{astronaut_path.name}"\nsize = "320x240"\nfps = 24\nmirror = true\n'
                      'virtual-cam = false\nlog_level = "error"\n')
    # Relative paths in the file are relative to the file.
    (tmp_path / astronaut_path.name).write_bytes(astronaut_path.read_bytes())
    parser = cli.build_parser()
    args = parse_with_config(parser, ["--config", str(config)])
    assert args.face == [str(tmp_path / astronaut_path.name)]
    assert (args.size, args.fps, args.mirror, args.virtual_cam, args.log_level) == ((320, 240), 24.0, True, False, "error")

    args = parse_with_config(cli.build_parser(), ["--config", str(config), "--size", "640x480", "--face", "b.jpg",
                                                  "--virtual-cam", "--log-level", "debug"])
    assert args.size == (640, 480) and args.face == ["b.jpg"] and args.virtual_cam is True
    assert args.log_level == "debug" and args.fps == 24.0

    # The user config file (AVATARCAM_CONFIG stands for the platform's config dir) is read by default.
    os.environ["AVATARCAM_CONFIG"], previous = str(config), os.environ["AVATARCAM_CONFIG"]
    try:
        assert parse_with_config(cli.build_parser(), []).size == (320, 240)
    finally:
        os.environ["AVATARCAM_CONFIG"] = previous
    assert parse_with_config(cli.build_parser(), []).size is None


def test_config_file_drives_a_real_run(tmp_path, astronaut_path, grace_path):
    config = tmp_path / "config.toml"
    config.write_text(f'face = "{astronaut_path}"\nsize = "320x240"\n')
    out = tmp_path / "a.y4m"
    assert cli.main(["--config", str(config), "--input", str(grace_path), "--output", str(out)]) == 0
    assert y4m_size(out) == (320, 240)
    assert cli.main(["--config", str(config), "--input", str(grace_path), "--output", str(out), "--size", "160x128"]) == 0
    assert y4m_size(out) == (160, 128)


@pytest.mark.parametrize("content, message", [
    ('sise = "320x240"', "unknown key 'sise'"),
    ('size = "big"', "size: expected WIDTHxHEIGHT"),
    ("mirror = 3", "mirror: expected true or false"),
    ("fps = [1, 2]", "fps: expected a value"),
    ('log-level = "loud"', "is not one of"),
    ("size = ", "not valid TOML"),
])
def test_bad_config_is_one_line(tmp_path, capsys, content, message):
    config = tmp_path / "config.toml"
    config.write_text(content + "\n")
    assert cli.main(["--config", str(config), "--face", "x.jpg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and str(config) in err


def test_missing_explicit_config_is_an_error(tmp_path, capsys):
    assert cli.main(["--config", str(tmp_path / "nope.toml"), "--face", "x.jpg"]) == 2
    assert "not found" in capsys.readouterr().err


def test_log_level(tmp_path, astronaut_path, grace_path, caplog):
    out = tmp_path / "a.y4m"
    base = ["--face", str(astronaut_path), "--input", str(grace_path), "--output", str(out)]
    logger = logging.getLogger("avatarcam")
    assert cli.main(base) == 0
    assert logger.getEffectiveLevel() == logging.WARNING and "frames in" not in caplog.text
    assert cli.main([*base, "--log-level", "INFO"]) == 0
    assert "frames in" in caplog.text
    assert cli.main([*base, "-v", "--log-level", "debug"]) == 0
    assert logger.getEffectiveLevel() == logging.DEBUG
    assert cli.main([*base, "-v"]) == 0
    assert logger.getEffectiveLevel() == logging.INFO
    logger.setLevel(logging.NOTSET)


# -- the virtual camera's format, name and framing ------------------------------------------------
@pytest.mark.parametrize("fit", ["crop", "letterbox"])
def test_virtual_camera_format_and_fit(fake_vcam, astronaut_path, grace_path, tmp_path, fit):
    # A tall driver photo, a square portrait, a wide camera format.
    code = cli.main(["--face", str(astronaut_path), "--input", str(grace_path), "--vcam-backend", "avatarcam-test",
                     "--vcam-device", "/dev/video42", "--size", "640x360", "--fps", "24", "--fit", fit,
                     "--max-frames", "3"])
    assert code == 0
    cam = fake_vcam.instances[-1]
    assert (cam.width, cam.height, cam.fps, cam._device) == (640, 360, 24, "/dev/video42")
    assert len(cam.frames) == 3 and cam.frames[-1].size == 360 * 640 * 3
    frame = cam.frames[-1].reshape(360, 640, 3)
    face = detect(frame)
    assert face is not None
    bars = np.concatenate([frame[:, :100], frame[:, -100:]])
    if fit == "letterbox":
        # The whole 512x512 portrait as 360x360 in the middle, black left and right.
        assert bars.max() == 0 and frame[:, 140:500].mean() > 40
    else:
        assert bars.mean() > 20  # filled edge to edge


def test_fits_do_not_distort_the_face(astronaut_avatar):
    """The avatar at rest, framed by crop or letterbox, is the photo uniformly scaled and
    moved, nothing else: it matches that reference and not a slightly stretched one."""
    photo = astronaut_avatar.image
    neutral = AvatarPose(astronaut_avatar.landmarks.copy(), np.array([[1.0, 0, 0], [0, 1, 0]]))
    xy = astronaut_avatar.landmarks[:, :2]
    box = (*xy.min(axis=0), *xy.max(axis=0))

    def reference(framing, stretch=1.0):
        s, (ox, oy) = framing.scale, framing.offset
        m = np.array([[s * stretch, 0, ox], [0, s, oy]])  # output pixel -> photo pixel
        image = cv2.warpAffine(photo, m, framing.output_size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
        return framing.add_bars(image)

    for size in ((640, 360), (360, 640), (320, 320)):
        for framing in (Framing.contain(astronaut_avatar.size, size), Framing.cover(astronaut_avatar.size, size, box)):
            image = framing.add_bars(WarpEngine(astronaut_avatar, framing).render(neutral))
            assert image.shape == (size[1], size[0], 3)
            assert detect(image) is not None, (size, framing)
            face = framing.to_output(xy).astype(int)
            x0, y0 = np.clip(face.min(axis=0), 0, None)
            x1, y1 = face.max(axis=0)
            region = (slice(y0, y1), slice(x0, x1))
            same = np.abs(image[region].astype(int) - reference(framing)[region]).mean()
            stretched = np.abs(image[region].astype(int) - reference(framing, 1.06)[region]).mean()
            assert same < 6 and stretched > 2 * same, (size, framing, same, stretched)


def test_letterbox_framing_geometry():
    f = Framing.contain((602, 602), (640, 480))
    assert f.picture_box == (80, 0, 560, 480)
    # The photo's corners land on the box's corners.
    corners = f.to_output(np.array([[-0.5, -0.5], [601.5, 601.5]]))
    assert np.allclose(corners, [[79.5, -0.5], [559.5, 479.5]], atol=1e-6)
    tall = Framing.contain((400, 800), (640, 480))
    assert tall.picture_box == (200, 0, 440, 480)


def test_vcam_name_selects_the_loopback_device(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("device names come from sysfs on Linux")
    for n, name in ((3, "Integrated Camera"), (10, "avatarcam")):
        (tmp_path / f"video{n}").mkdir()
        (tmp_path / f"video{n}" / "name").write_text(name + "\n")
    assert cli._vcam_device_named("avatarcam", tmp_path) == "/dev/video10"
    with pytest.raises(AvatarcamError, match="card_label=OBS"):
        cli._vcam_device_named("OBS", tmp_path)


def test_vcam_name_missing_is_one_line(astronaut_path, capsys):
    if not sys.platform.startswith("linux"):
        pytest.skip("device names come from sysfs on Linux")
    assert cli.main(["--face", str(astronaut_path), "--vcam-name", "no-such-camera-here", "--max-frames", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no virtual camera named 'no-such-camera-here'" in err


# -- lazy avatars ---------------------------------------------------------------------------------
class SlowPrepare:
    """An avatar whose preparation waits until the test lets it finish."""

    def __init__(self, avatar, error: Exception | None = None) -> None:
        self.avatar, self.error = avatar, error
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self):
        self.started.set()
        assert self.release.wait(30)
        if self.error is not None:
            raise self.error
        return self.avatar


class KeyAt:
    """A stand-in preview window that presses ``key`` at frame ``at`` and records sizes."""

    def __init__(self, at: int, key: str, on_frame=None) -> None:
        self.at, self.key, self.on_frame = at, key, on_frame
        self.shown: list[tuple[int, int]] = []
        self.closed_by_user = False

    def show(self, image: np.ndarray) -> int:
        self.shown.append(image.shape[1::-1])
        if self.on_frame:
            self.on_frame(len(self.shown))
        return ord(self.key) if len(self.shown) == self.at else -1


def test_switching_to_an_unprepared_avatar_never_stalls_the_loop(astronaut_avatar, grace_avatar, grace_path):
    slow = SlowPrepare(grace_avatar)
    tracker = FaceTracker()
    pipeline = AvatarPipeline([astronaut_avatar, PendingAvatar("grace", slow)], WarpEngine, tracker,
                              lambda a: Framing.native(a.size))
    # The next avatar is prefetched at once, before anyone asks for it.
    assert slow.started.wait(10)
    # "]" at frame 3; the preparation finishes only after frame 12 was shown.
    preview = KeyAt(3, "]", on_frame=lambda n: n == 12 and slow.release.set())
    source = ImageSource(grace_path, frames=40)
    loop = LiveLoop(source, pipeline, [], preview=preview)
    try:
        stats = loop.run()
    finally:
        source.close()
        pipeline.close()
        tracker.close()
    assert stats.frames == 40  # every frame was produced, switch or not
    sizes = preview.shown
    # Frames 4..12 still show the current avatar, the new one follows once it is ready.
    assert all(s == astronaut_avatar.size for s in sizes[:12])
    assert sizes[-1] == grace_avatar.size
    first_new = sizes.index(grace_avatar.size)
    assert all(s == grace_avatar.size for s in sizes[first_new:])
    assert pipeline.avatar is grace_avatar and pipeline.pending is None


def test_an_avatar_that_cannot_be_prepared_is_skipped(astronaut_avatar, grace_avatar, grace_path, caplog):
    bad = SlowPrepare(None, AvatarcamError("no face found in cat.jpg"))
    good = SlowPrepare(grace_avatar)
    good.release.set()
    tracker = FaceTracker()
    pipeline = AvatarPipeline([astronaut_avatar, PendingAvatar("cat", bad), PendingAvatar("grace", good)],
                              WarpEngine, tracker, lambda a: Framing.native(a.size))
    frame = next(iter(ImageSource(grace_path, frames=1)))
    try:
        assert pipeline.switch(1) is None and pipeline.slot_name(pipeline.pending) == "cat"
        assert pipeline.process(frame).image.shape[1::-1] == astronaut_avatar.size
        bad.release.set()
        for _ in range(200):
            pipeline.process(frame)
            if pipeline.pending is None:
                break
            time.sleep(0.01)
        assert pipeline.avatar is astronaut_avatar and 1 in pipeline.failed
        assert "avatar cat skipped: no face found in cat.jpg" in caplog.text
        # The next switch steps over it.
        switched = pipeline.switch(1)
        for _ in range(200):
            if pipeline.pending is None:
                break
            pipeline.process(frame)
            time.sleep(0.01)
        assert pipeline.avatar is grace_avatar and (switched is None or switched is grace_avatar)
    finally:
        pipeline.close()
        tracker.close()


def test_live_folder_of_avatars_prepares_lazily(fake_vcam, tmp_path, astronaut_path, grace_path, monkeypatch):
    folder = tmp_path / "avatars"
    folder.mkdir()
    (folder / "b_grace.jpg").write_bytes(grace_path.read_bytes())
    (folder / "c_broken.jpg").write_bytes(b"garbage")
    prepared: list[str] = []
    import avatarcam.avatar as avatar_module

    real = avatar_module.prepare_avatar

    def counting(paths, **kw):
        prepared.append(Path(paths[0]).name)
        return real(paths, **kw)

    monkeypatch.setattr(avatar_module, "prepare_avatar", counting)
    code = cli.main(["--face", str(astronaut_path), "--avatars", str(folder), "--input", str(grace_path),
                     "--vcam-backend", "avatarcam-test", "--size", "320x240", "--max-frames", "2"])
    # The broken image in the folder does not stop the run: it is only prepared when needed.
    assert code == 0
    assert prepared[0] == astronaut_path.name and "c_broken.jpg" not in prepared
