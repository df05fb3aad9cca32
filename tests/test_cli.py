"""The command line as a user meets it: the real program, run as a subprocess.

Every mistake a user can make ends in exactly one line on stderr and a non-zero exit;
rendering a file gives one output frame per input frame at the promised size; the
second run with the same face is served from the cache.
"""
from __future__ import annotations

import glob
import os
import platform
import subprocess
import sys
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from avatarcam.app import HOTKEYS
from avatarcam.sinks import VideoFileSink
from avatarcam.tracking import detect_faces

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_CLIP = SHARED / "driving" / "rnth_voxceleb2_test_video.mp4"
FLAGS = ("--face", "--camera", "--input", "--output", "--size", "--fps", "--no-virtual-cam", "--preview", "--mirror")


def run_cli(*args, cache_dir: Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, AVATARCAM_CACHE_DIR=str(cache_dir))
    env.pop("AVATARCAM_DEBUG", None)  # that would let native libraries' chatter through
    return subprocess.run([sys.executable, "-m", "avatarcam", *map(str, args)], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single error line of a failed run (asserting that there is exactly one)."""
    assert proc.returncode != 0, f"expected a failure, got exit 0\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    assert lines[0].startswith("avatarcam: error: ") and len(lines[0]) > len("avatarcam: error: ") + 5, lines[0]
    return lines[0]


def count_frames(path: Path) -> int:
    """Frames in a video, counted by decoding every one of them with OpenCV."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert cap.isOpened(), path
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def y4m_frames(path: Path) -> tuple[tuple[int, int], int]:
    """(width, height) and frame count of a YUV4MPEG2 file, parsed from its bytes."""
    data = path.read_bytes()
    header, _, body = data.partition(b"\n")
    fields = header.split(b" ")
    assert fields[0] == b"YUV4MPEG2", header
    w = int(next(f[1:] for f in fields if f.startswith(b"W")))
    h = int(next(f[1:] for f in fields if f.startswith(b"H")))
    frame_bytes = len(b"FRAME\n") + w * h * 3 // 2  # I420 (4:2:0), even sizes here
    assert len(body) % frame_bytes == 0, "truncated or padded y4m"
    n = len(body) // frame_bytes
    assert all(body[i * frame_bytes:i * frame_bytes + 5] == b"FRAME" for i in range(n))
    return (w, h), n


def video_size_and_count(path: Path) -> tuple[tuple[int, int], int]:
    if path.suffix == ".y4m":
        return y4m_frames(path)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    n = sum(1 for _ in reader)
    return tuple(meta["size"]), n


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_cache(tmp_path_factory) -> Path:
    """One cache for this module's runs, so each face is prepared only once."""
    return tmp_path_factory.mktemp("cli-cache")


@pytest.fixture(scope="module")
def driving_clip(tmp_path_factory, grace_path) -> Path:
    """A short real talking-head clip from ../shared/data, else a clip synthesised from
    Grace Hopper's portrait, moved and turned a little from frame to frame."""
    if SHARED_CLIP.is_file():
        return SHARED_CLIP
    path = tmp_path_factory.mktemp("clip") / "grace_moving.mp4"
    rgb = cv2.cvtColor(cv2.imread(str(grace_path)), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    with VideoFileSink(path, (w, h), 25) as sink:
        for i in range(24):
            m = cv2.getRotationMatrix2D((w / 2, h / 2), 4 * np.sin(i / 4), 1.0)
            m[0, 2] += 8 * np.sin(i / 3)
            sink.write(cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
    return path


@pytest.fixture(scope="module")
def coffee_png(tmp_path_factory) -> Path:
    """A photo with no face in it (checked, so the failure tested below is the right one)."""
    from skimage import data

    rgb = data.coffee()
    assert detect_faces(rgb) == [], "MediaPipe finds a face in skimage's coffee; pick another faceless image"
    path = tmp_path_factory.mktemp("coffee") / "coffee.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def coffee_mp4(coffee_png) -> Path:
    """A short video with no face in it."""
    rgb = cv2.cvtColor(cv2.imread(str(coffee_png)), cv2.COLOR_BGR2RGB)
    path = coffee_png.with_suffix(".mp4")
    h, w = rgb.shape[:2]
    with VideoFileSink(path, (w, h), 10) as sink:
        for i in range(6):
            sink.write(np.ascontiguousarray(np.roll(rgb, 3 * i, axis=1)))
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


# -- help ---------------------------------------------------------------------------------------


def test_help_lists_every_flag_and_hotkey(tmp_path, cli_cache):
    proc = run_cli("--help", cache_dir=cli_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for flag in FLAGS:
        assert flag in proc.stdout, f"--help does not mention {flag}"
    for key, _, text in HOTKEYS:
        assert f"{key}  {text}" in proc.stdout, f"--help does not list hotkey {key!r}"
    assert "Esc" in proc.stdout


# -- bad input: one line, non-zero exit, nothing left behind --------------------------------------


def test_missing_face_file(tmp_path, cli_cache, driving_clip):
    proc = run_cli("--face", "no-such-face.jpg", "--input", driving_clip, "--output", "out.mp4",
                   cache_dir=cli_cache, cwd=tmp_path)
    line = error_line(proc)
    assert "no-such-face.jpg" in line and "not found" in line
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


def test_face_file_that_is_not_an_image(tmp_path, cli_cache, driving_clip):
    (tmp_path / "face.jpg").write_text("this is a text file, not a photo\n")
    proc = run_cli("--face", "face.jpg", "--input", driving_clip, "--output", "out.mp4",
                   cache_dir=cli_cache, cwd=tmp_path)
    line = error_line(proc)
    assert "face.jpg" in line and "image" in line
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


def test_face_image_without_a_face(tmp_path, cli_cache, coffee_png, driving_clip):
    proc = run_cli("--face", coffee_png, "--input", driving_clip, "--output", "out.mp4",
                   cache_dir=cli_cache, cwd=tmp_path)
    line = error_line(proc)
    assert "no face" in line and "coffee.png" in line
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


def test_driving_video_without_a_face_writes_nothing(tmp_path, cli_cache, astronaut_path, coffee_mp4):
    proc = run_cli("--face", astronaut_path, "--input", coffee_mp4, "--output", "out.mp4",
                   cache_dir=cli_cache, cwd=tmp_path)
    line = error_line(proc)
    assert "no face" in line and "coffee.mp4" in line
    assert not (tmp_path / "out.mp4").exists(), "a failed run left an output file"
    assert leftovers(tmp_path) == []


def test_driving_video_without_a_face_keeps_existing_output(tmp_path, cli_cache, astronaut_path, coffee_mp4):
    old = tmp_path / "out.mp4"
    old.write_bytes(b"the user's previous video\x00\x01\x02")
    before = old.read_bytes()
    proc = run_cli("--face", astronaut_path, "--input", coffee_mp4, "--output", "out.mp4",
                   cache_dir=cli_cache, cwd=tmp_path)
    error_line(proc)
    assert old.read_bytes() == before, "a failed run changed the existing output file"
    assert leftovers(tmp_path) == []


def test_camera_that_does_not_exist(tmp_path, cli_cache, astronaut_path):
    if os.path.exists("/dev/video7"):
        pytest.skip("this machine has a /dev/video7")
    proc = run_cli("--face", astronaut_path, "--camera", "7", "--output", "out.mp4",
                   cache_dir=cli_cache, cwd=tmp_path, timeout=60)
    line = error_line(proc)
    assert "camera 7" in line
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


@pytest.mark.skipif(platform.system() != "Linux", reason="v4l2loopback is Linux's virtual camera")
def test_no_virtual_camera_says_how_to_get_one(tmp_path, cli_cache, astronaut_path, driving_clip):
    if glob.glob("/dev/video*"):
        pytest.skip("this machine has video devices; a virtual camera may exist")
    proc = run_cli("--face", astronaut_path, "--input", driving_clip, cache_dir=cli_cache, cwd=tmp_path)
    line = error_line(proc)
    assert "v4l2loopback" in line and "modprobe" in line
    assert "--no-virtual-cam" in line


def test_unknown_output_extension(tmp_path, cli_cache, astronaut_path, driving_clip):
    proc = run_cli("--face", astronaut_path, "--input", driving_clip, "--output", "out.avi",
                   cache_dir=cli_cache, cwd=tmp_path)
    line = error_line(proc)
    assert "out.avi" in line and ".mp4" in line
    assert list(tmp_path.iterdir()) == []


def test_output_folder_that_does_not_exist(tmp_path, cli_cache, astronaut_path, driving_clip):
    proc = run_cli("--face", astronaut_path, "--input", driving_clip, "--output", "nowhere/out.mp4",
                   cache_dir=cli_cache, cwd=tmp_path)
    line = error_line(proc)
    assert "nowhere" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", ["12x", "640by480", "0x480", "640x-1", "99999x99999"])
def test_bad_size(tmp_path, cli_cache, astronaut_path, driving_clip, size):
    proc = run_cli("--face", astronaut_path, "--input", driving_clip, "--output", "out.mp4", "--size", size,
                   cache_dir=cli_cache, cwd=tmp_path, timeout=60)
    line = error_line(proc)
    assert "--size" in line and size in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, needle", [
    (["--fps", "0"], "--fps"),
    (["--max-frames", "many"], "--max-frames"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--camera", "0"], "--camera"),  # together with --input: one source only
])
def test_bad_arguments(tmp_path, cli_cache, astronaut_path, driving_clip, args, needle):
    proc = run_cli("--face", astronaut_path, "--input", driving_clip, "--output", "out.mp4", *args,
                   cache_dir=cli_cache, cwd=tmp_path, timeout=60)
    line = error_line(proc)
    assert needle in line
    assert list(tmp_path.iterdir()) == []


# -- rendering a file -------------------------------------------------------------------------------


@pytest.mark.parametrize("output, size", [("out.y4m", None), ("out.mp4", None), ("out.mp4", "320x240")])
def test_one_output_frame_per_input_frame(tmp_path, cli_cache, astronaut_path, driving_clip, output, size):
    frames_in = count_frames(driving_clip)
    assert frames_in >= 10
    args = ["--face", astronaut_path, "--input", driving_clip, "--output", output]
    if size:
        args += ["--size", size]
    proc = run_cli(*args, cache_dir=cli_cache, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    (w, h), frames_out = video_size_and_count(tmp_path / output)
    assert frames_out == frames_in
    # astronaut is 512x512: with no --size the output keeps the face image's own size
    assert (w, h) == ((320, 240) if size else (512, 512))
    assert leftovers(tmp_path) == []


def test_second_run_is_a_cache_hit(tmp_path, astronaut_path):
    cache = tmp_path / "cache"
    work = tmp_path / "work"
    work.mkdir()
    args = ("--face", astronaut_path, "--input", astronaut_path, "--output", "still.mp4", "-v")

    first = run_cli(*args, cache_dir=cache, cwd=work)
    assert first.returncode == 0, first.stderr
    assert "loaded from cache" not in first.stderr
    entries = list(cache.glob("*.npz"))
    assert len(entries) == 1, sorted(p.name for p in cache.iterdir())
    stamp = entries[0].stat().st_mtime_ns

    second = run_cli(*args, cache_dir=cache, cwd=work)
    assert second.returncode == 0, second.stderr
    assert "loaded from cache" in second.stderr
    assert list(cache.glob("*.npz")) == entries
    assert entries[0].stat().st_mtime_ns == stamp, "the cached avatar was prepared and written again"
    assert [p for p in cache.iterdir() if p.suffix != ".npz"] == [], "temporary files left in the cache"
