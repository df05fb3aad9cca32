"""Shared fixtures: real faces from installed packages, the shared clips, a prepared avatar."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
import pyvirtualcam

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _write_rgb(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faces")


@pytest.fixture(scope="session")
def astronaut_path(faces_dir) -> Path:
    from skimage import data

    return _write_rgb(faces_dir / "astronaut.png", data.astronaut())


@pytest.fixture(scope="session")
def grace_path(faces_dir) -> Path:
    from matplotlib import cbook

    src = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    path = faces_dir / "grace_hopper.jpg"
    path.write_bytes(Path(src).read_bytes())
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "driving").is_dir():
        pytest.skip(f"shared evaluation data not found at {SHARED}")
    return SHARED


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's real avatar cache."""
    os.environ["AVATARCAM_CACHE_DIR"] = str(tmp_path_factory.mktemp("avatar-cache"))
    # ... nor the user's config file (tests that need one pass --config or set this).
    os.environ["AVATARCAM_CONFIG"] = str(tmp_path_factory.mktemp("config") / "absent.toml")


def prepare(paths, cache_dir=None):
    from avatarcam.avatar import AvatarCache, prepare_avatar
    from avatarcam.engines import WarpEngine

    cache = AvatarCache(cache_dir) if cache_dir is not None else AvatarCache()
    avatar = prepare_avatar([str(p) for p in paths], engine_version=WarpEngine.version,
                            prepare_engine_data=WarpEngine.prepare, cache=cache)
    return avatar, cache


@pytest.fixture(scope="session")
def astronaut_avatar(astronaut_path):
    return prepare([astronaut_path])[0]


@pytest.fixture(scope="session")
def grace_avatar(grace_path):
    return prepare([grace_path])[0]


def detect(image: np.ndarray):
    """Landmarks MediaPipe finds in an image (largest face), or None."""
    from avatarcam.tracking import detect_faces

    found = detect_faces(image, max_faces=1)
    return found[0] if found else None


class FakeBackend:
    """A pyvirtualcam backend (registered as "avatarcam-test") that keeps what it is sent.
    Subclasses keep their own ``instances``."""

    instances: ClassVar[list[FakeBackend]] = []
    default_device = "/dev/avatarcam-test"

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device, **kw) -> None:
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._device = device or self.default_device
        self.frames: list = []
        self.closes = 0
        type(self).instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        assert self.closes == 0, "send() after close()"
        self.frames.append(frame.copy())

    def close(self) -> None:
        self.closes += 1

    def device(self) -> str:
        return self._device

    def native_fourcc(self):
        return self.fourcc


@contextmanager
def registered_backend(name: str, backend: type[FakeBackend]) -> Iterator[type[FakeBackend]]:
    """``backend`` registered with pyvirtualcam as ``name`` (no instances yet) while inside."""
    backend.instances = []
    pyvirtualcam.register_backend(name, backend)
    try:
        yield backend
    finally:
        pyvirtualcam.camera.BACKENDS.pop(name, None)


@pytest.fixture
def fake_vcam():
    with registered_backend("avatarcam-test", FakeBackend) as backend:
        yield backend


def signal_live_run(script: Path, ready: str, sig: int, settle_s: float, *, group: bool = False,
                    timeout: float = 30.0) -> tuple[int, str, str]:
    """Run ``script`` with Python, wait for it to print ``ready``, let it run ``settle_s``
    seconds more, then send it ``sig`` (to its whole process group with ``group``, as a
    terminal's Ctrl-C does). Returns its exit code, stdout and stderr."""
    proc = subprocess.Popen([sys.executable, str(script)], cwd=script.parent, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=group)  # its own process group, like a terminal's job
    try:
        line = proc.stdout.readline()
        assert line.strip() == ready, line + (proc.stderr.read() if proc.poll() is not None else "")
        time.sleep(settle_s)
        assert proc.poll() is None, "the live run ended by itself"
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, line + stdout, stderr


def warp_rig(avatar, driver: np.ndarray):
    """``avatar`` with a retargeter whose neutral is ``driver`` (copied), and its warp
    engine: ``(driver, retarget, engine)``."""
    from avatarcam.engines import WarpEngine
    from avatarcam.retarget import Retargeter

    driver = driver.copy()
    retarget = Retargeter(avatar.landmarks, avatar.proportions)
    retarget.set_neutral(driver)
    return driver, retarget, WarpEngine(avatar)


def shut_lips(points: np.ndarray) -> np.ndarray:
    """``points`` with the lower lip and chin raised until the inner lips meet (the
    astronaut smiles with parted lips)."""
    from avatarcam import landmarks as lm

    p = points.copy()
    gap = p[lm.LOWER_LIP_MID, 1] - p[lm.UPPER_LIP_MID, 1]
    p[list(lm.INNER_LIP_LOWER + lm.OUTER_LIP_LOWER + (17, lm.CHIN)), 1] -= gap
    return p


@pytest.fixture(scope="module")
def grace_rig(grace_avatar, astronaut_avatar):
    """Grace Hopper's portrait driven from the astronaut's face: tests move the astronaut's
    landmarks and measure the rendered Grace."""
    return warp_rig(grace_avatar, astronaut_avatar.landmarks)
