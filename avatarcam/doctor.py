"""``avatarcam doctor``: what avatarcam can use on this machine, and how to fix what is missing.

Every check is quick and never fails: a check that cannot run reports itself as missing
with the reason. Nothing is opened for longer than a probe (no camera is read, no virtual
camera is started).
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

# The models avatarcam loads from inside the mediapipe wheel: Face Mesh for the tracker,
# selfie segmentation for the warp engine's person/background layers.
FACE_MESH_MODELS = (
    "modules/face_detection/face_detection_short_range.tflite",
    "modules/face_landmark/face_landmark_with_attention.tflite",
    "modules/selfie_segmentation/selfie_segmentation.tflite",
)
V4L2LOOPBACK_LINE = "sudo modprobe v4l2loopback devices=1 video_nr=10 card_label=avatarcam exclusive_caps=1"


@dataclass
class Check:
    """One line of the doctor's table."""

    name: str
    ok: bool
    detail: str
    fix: str = ""  # what to do when not ok (or a tip when ok)
    needed: bool = True  # False: avatarcam works without it (e.g. a GPU)

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("MISSING" if self.needed else "optional")


# -- cameras ---------------------------------------------------------------------------------
def _v4l2_name(device: Path) -> str:
    try:
        return (Path("/sys/class/video4linux") / device.name / "name").read_text().strip()
    except OSError:
        return ""


def _is_loopback(device: Path) -> bool:
    """A v4l2loopback device has no physical parent device in sysfs."""
    node = Path("/sys/class/video4linux") / device.name
    return node.exists() and not (node / "device").exists()


def _opens(device: str | int) -> bool:
    from avatarcam.sources import _quiet_capture

    cap = _quiet_capture(device)
    try:
        return bool(cap.isOpened())
    finally:
        cap.release()


def check_cameras(devices: Sequence[Path] | None = None, opens: Callable[[str], bool] = _opens) -> Check:
    if platform.system() != "Linux":
        found = [i for i in range(3) if opens(i)]  # type: ignore[arg-type]
        if found:
            return Check("webcam", True, "opens: " + ", ".join(f"--camera {i}" for i in found))
        return Check("webcam", False, "no camera opened at index 0-2",
                     "connect a webcam, allow this terminal to use the camera in the privacy settings, "
                     "or drive from a file with --input VIDEO")
    devices = sorted(Path("/dev").glob("video*")) if devices is None else list(devices)
    real = [d for d in devices if not _is_loopback(d)]
    working = []
    for device in real:
        if opens(str(device)):
            name = _v4l2_name(device)
            working.append(f"{device}" + (f" ({name})" if name else ""))
    if working:
        return Check("webcam", True, ", ".join(working), "pick one with --camera /dev/videoN")
    if real:
        return Check("webcam", False, f"{', '.join(map(str, real))} present but none opens",
                     "another program (a call, OBS, a browser tab) may be using the camera; close it, "
                     "or check you are in the 'video' group")
    return Check("webcam", False, "no /dev/video* camera",
                 "connect a webcam (`v4l2-ctl --list-devices` lists them), or drive from a file with --input VIDEO")


# -- virtual cameras -----------------------------------------------------------------------
def check_virtual_cameras(devices: Sequence[Path] | None = None) -> list[Check]:
    from avatarcam.sinks import virtual_camera_hint

    try:
        import pyvirtualcam

        backends = sorted(pyvirtualcam.camera.BACKENDS)
    except Exception as exc:  # noqa: BLE001 - the native part failed to load
        return [Check("virtual camera", False, f"pyvirtualcam does not load ({type(exc).__name__}: {exc})",
                      "reinstall it: pip install --force-reinstall pyvirtualcam")]
    checks = [Check("pyvirtualcam backends", bool(backends), ", ".join(backends) or "none on this platform",
                    "" if backends else virtual_camera_hint())]
    system = platform.system()
    if system == "Linux":
        devices = sorted(Path("/dev").glob("video*")) if devices is None else list(devices)
        loops = [d for d in devices if _is_loopback(d)]
        module = Path("/sys/module/v4l2loopback").exists()
        if loops:
            names = ", ".join(f"{d} ({_v4l2_name(d) or 'unnamed'})" for d in loops)
            checks.append(Check("v4l2loopback", True, names, "choose one with --vcam-device /dev/videoN"))
        elif module:
            checks.append(Check("v4l2loopback", False, "module loaded but no loopback device",
                                f"reload it: sudo modprobe -r v4l2loopback && {V4L2LOOPBACK_LINE}"))
        else:
            checks.append(Check("v4l2loopback", False, "module not loaded, no loopback device",
                                f"sudo apt install v4l2loopback-dkms && {V4L2LOOPBACK_LINE}"))
    else:
        present = "obs" in backends or "unitycapture" in backends
        checks.append(Check("OBS virtual camera", present, "backend available" if present else "not installed",
                            "" if present else virtual_camera_hint(system)))
    return checks


# -- models, runtimes, GPU -------------------------------------------------------------------
def check_face_mesh() -> Check:
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return Check("MediaPipe models", False, "mediapipe is not installed", 'pip install "mediapipe==0.10.21"')
    root = Path(next(iter(spec.submodule_search_locations)))
    missing = [m for m in FACE_MESH_MODELS if not (root / m).is_file()]
    version = _dist_version("mediapipe")
    if missing:
        return Check("MediaPipe models", False, f"mediapipe {version} lacks {', '.join(Path(m).name for m in missing)}",
                     'newer mediapipe wheels ship no models: pip install "mediapipe==0.10.21"')
    return Check("MediaPipe models", True, f"mediapipe {version}: " + ", ".join(Path(m).name for m in FACE_MESH_MODELS))


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _onnx_providers() -> list[str] | None:
    try:
        import onnxruntime
    except Exception:  # noqa: BLE001
        return None
    return list(onnxruntime.get_available_providers())


def check_onnxruntime(providers: list[str] | None = None) -> Check:
    providers = _onnx_providers() if providers is None else providers
    if providers is None:
        return Check("onnxruntime", False, "not installed", "pip install onnxruntime (or onnxruntime-gpu on NVIDIA)")
    return Check("onnxruntime", True, f"{_dist_version('onnxruntime')}: {', '.join(providers)}")


def _nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().replace("\n", "; ") if done.returncode == 0 and done.stdout.strip() else None


def check_gpu(gpu: str | None = None, providers: list[str] | None = None) -> Check:
    gpu = _nvidia_smi() if gpu is None else gpu
    providers = (_onnx_providers() or []) if providers is None else providers
    cuda = "CUDAExecutionProvider" in providers
    if gpu and cuda:
        return Check("GPU", True, f"{gpu}; onnxruntime CUDA provider available")
    if gpu:
        return Check("GPU", False, f"{gpu}; onnxruntime has no CUDA provider",
                     'pip uninstall onnxruntime && pip install "avatarcam[gpu]" (only --engine neural uses it)',
                     needed=False)
    return Check("GPU", False, "no NVIDIA GPU found (nvidia-smi)",
                 "not needed: the default warp engine runs on the CPU", needed=False)


def check_ffmpeg() -> Check:
    try:
        import imageio_ffmpeg

        return Check("ffmpeg (--output)", True, imageio_ffmpeg.get_ffmpeg_exe())
    except Exception as exc:  # noqa: BLE001
        return Check("ffmpeg (--output)", False, f"{type(exc).__name__}: {exc}", "pip install --force-reinstall imageio-ffmpeg")


def run_checks() -> list[Check]:
    checks = [Check("python", True, f"{platform.python_version()} ({sys.executable})")]
    for check in (check_cameras, check_virtual_cameras, check_face_mesh, check_onnxruntime, check_gpu, check_ffmpeg):
        try:
            result = check()
        except Exception as exc:  # noqa: BLE001 - a doctor must report, never crash
            result = Check(check.__name__.removeprefix("check_"), False, f"check failed: {type(exc).__name__}: {exc}")
        checks.extend(result if isinstance(result, list) else [result])
    from avatarcam.avatar import default_cache_dir

    checks.append(Check("avatar cache", True, str(default_cache_dir())))
    try:
        from avatarcam.config import default_config_path

        path = default_config_path()
        checks.append(Check("config file", True, f"{path}" + ("" if path.exists() else " (not created; optional)")))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("config file", False, f"{type(exc).__name__}: {exc}"))
    return checks


def format_table(checks: Sequence[Check]) -> str:
    """A plain-text table: check, status, what was found, how to fix it."""
    rows = [("check", "status", "found (-> fix)", "")]
    rows += [(c.name, c.status, c.detail, c.fix) for c in checks]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = []
    for name, status, detail, fix in rows:
        line = f"{name:<{w0}}  {status:<{w1}}  {detail}"
        if fix:
            line += f"\n{'':<{w0}}  {'':<{w1}}  -> {fix}"
        lines.append(line)
    return "\n".join(lines)


def main(stream: TextIO | None = None) -> int:
    """Print the table; always 0, since missing parts are reported, not errors."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    stream = stream or sys.stdout
    checks = run_checks()
    print(format_table(checks), file=stream)
    missing = sum(not c.ok and c.needed for c in checks)
    optional = sum(not c.ok and not c.needed for c in checks)
    print(f"\n{len(checks) - missing - optional} ok, {missing} missing, {optional} optional not found", file=stream)
    return 0
