"""Soak test: the live program for minutes on end, reporting whether it stays smooth and flat.

A looping talking-head clip (../shared/data, else Grace Hopper's portrait nodding) plays the
webcam through avatarcam's own CameraSource (capture thread, newest frame only), at the
camera's frame rate; the real tracker, retargeter and warp engine drive the packaged
astronaut portrait; frames go to a virtual camera (a pyvirtualcam backend registered here
that drops them) at the CLI's default 1280x720. Every minute it reports frames sent,
dropped, capture-to-send latency p50/p99 and resident memory.

    python benchmarks/soak.py                    # 10 minutes, a table
    python benchmarks/soak.py --minutes 3 --json # one JSON object
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pyvirtualcam

from avatarcam.app import LiveLoop
from avatarcam.avatar import AvatarCache, prepare_avatar
from avatarcam.engines import WarpEngine
from avatarcam.framing import Framing
from avatarcam.pipeline import AvatarPipeline
from avatarcam.sinks import VirtualCameraSink
from avatarcam.sources import CameraSource
from avatarcam.tracking import FaceTracker

SHARED_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "driving" / "lp_d9_man_glasses_talking.mp4"
OUTPUT_SIZE = (1280, 720)


class ClipCamera:
    """A cv2.VideoCapture stand-in for a webcam: a clip (or still) played in a loop, each
    frame delivered when a camera running at ``fps`` would deliver it."""

    def __init__(self, clip: Path | None, fps: float) -> None:
        self.fps = fps
        self._clip = clip
        self._cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG) if clip else None
        self._still = None if clip else self._nodding_grace()
        self._n = 0
        self._next = time.perf_counter()
        self._open = True

    @staticmethod
    def _nodding_grace() -> list[np.ndarray]:
        from matplotlib import cbook

        bgr = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
        h, w = bgr.shape[:2]
        frames = []
        for i in range(60):
            m = cv2.getRotationMatrix2D((w / 2, h / 2), 6 * np.sin(2 * np.pi * i / 60), 1.0)
            frames.append(cv2.warpAffine(bgr, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
        return frames

    def isOpened(self) -> bool:
        return self._open

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        self._next += 1.0 / self.fps
        delay = self._next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            self._next = time.perf_counter()  # a late camera does not catch up in bursts
        self._n += 1
        if self._still is not None:
            return True, self._still[self._n % len(self._still)].copy()
        ok, bgr = self._cap.read()
        if not ok:  # loop the clip
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        return ok, bgr

    def release(self) -> None:
        self._open = False
        if self._cap is not None:
            self._cap.release()


class NullCamera:
    """A pyvirtualcam backend that takes frames and keeps none (no v4l2loopback here)."""

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device, **kw) -> None:
        self.fourcc = fourcc
        self.sent = 0

    def send(self, frame: np.ndarray) -> None:
        self.sent += 1

    def close(self) -> None:
        pass

    def device(self) -> str:
        return "soak-null"

    def native_fourcc(self):
        return self.fourcc


def rss_mib(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def soak(minutes: float, fps: float, clip: Path | None, progress: bool) -> dict:
    process = psutil.Process()
    from skimage import data

    with tempfile.TemporaryDirectory(prefix="avatarcam-soak-") as tmp:
        face = Path(tmp) / "astronaut.png"
        cv2.imwrite(str(face), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
        avatar = prepare_avatar([face], engine_version=WarpEngine.version,
                                prepare_engine_data=WarpEngine.prepare, cache=AvatarCache(Path(tmp) / "cache"))

    def framing_for(a) -> Framing:  # as the CLI frames a portrait for a 1280x720 camera
        xy = a.landmarks[:, :2]
        return Framing.cover(a.size, OUTPUT_SIZE, (*xy.min(axis=0), *xy.max(axis=0)))

    pyvirtualcam.register_backend("soak-null", NullCamera)
    rss_before = rss_mib(process)
    source = CameraSource(0, capture_factory=lambda device: ClipCamera(clip, fps))
    tracker = FaceTracker()
    pipeline = AvatarPipeline([avatar], WarpEngine, tracker, framing_for)
    vcam = VirtualCameraSink(pipeline.output_size, fps, backend="soak-null")
    loop = LiveLoop(source, pipeline, [vcam], fps=fps)
    runner = threading.Thread(target=loop.run, name="soak-loop")
    start = time.perf_counter()
    runner.start()

    rows = []
    rss_start = None
    seen_frames = seen_latency = seen_sent = seen_dropped = 0
    try:
        for minute in range(1, int(np.ceil(minutes)) + 1):
            end = start + min(minute, minutes) * 60.0
            while time.perf_counter() < end and runner.is_alive():
                time.sleep(0.2)
                if rss_start is None and time.perf_counter() - start > 5.0:
                    rss_start = rss_mib(process)  # after MediaPipe and the first frames settled
            stats = loop.stats
            latency = stats.latency_ms[seen_latency:]
            sent, dropped = vcam.frames_written, source.dropped
            span = (min(minute, minutes) - (minute - 1)) * 60.0
            rows.append({
                "minute": minute,
                "frames_sent": sent - seen_sent,
                "fps": round((sent - seen_sent) / span, 2),
                "dropped": dropped - seen_dropped,
                "frames_with_face": stats.frames_with_face - seen_frames,
                "latency_p50_ms": round(float(np.percentile(latency, 50)), 2) if latency else None,
                "latency_p99_ms": round(float(np.percentile(latency, 99)), 2) if latency else None,
                "rss_mib": round(rss_mib(process), 1),
            })
            seen_latency, seen_sent, seen_dropped = len(stats.latency_ms), sent, dropped
            seen_frames = stats.frames_with_face
            if progress:
                print(_row_text(rows[-1]), file=sys.stderr, flush=True)
            if not runner.is_alive():
                break
    finally:
        rss_end = rss_mib(process)  # at the end of the run, before anything is torn down
        loop.stop()
        runner.join(10)
        seconds = time.perf_counter() - start
        source.close()
        vcam.close()
        tracker.close()
        pipeline_close = getattr(pipeline, "close", None)
        if pipeline_close is not None:
            pipeline_close()
    stats = loop.stats
    return {
        "minutes": minutes,
        "fps_target": fps,
        "driver": str(clip) if clip else "grace_hopper (nodding still)",
        "output_size": list(OUTPUT_SIZE),
        "seconds": round(seconds, 1),
        "frames_sent": vcam.frames_written,
        "frames_processed": stats.frames,
        "frames_with_face": stats.frames_with_face,
        "filler_frames": stats.filler_frames,
        "dropped": source.dropped,
        "captured": source.captured,
        "sent_fps": round(vcam.frames_written / seconds, 2) if seconds else 0.0,
        "latency_p50_ms": round(stats.percentile(50), 2),
        "latency_p99_ms": round(stats.percentile(99), 2),
        "rss_before_run_mib": round(rss_before, 1),
        "rss_start_mib": round(rss_start if rss_start is not None else rss_before, 1),
        "rss_end_mib": round(rss_end, 1),
        "per_minute": rows,
        "cpu_count": os.cpu_count(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def _row_text(row: dict) -> str:
    return (f"minute {row['minute']:>3}: sent {row['frames_sent']:>5} ({row['fps']:5.1f} fps)  dropped {row['dropped']:>4}  "
            f"face {row['frames_with_face']:>5}  latency p50 {row['latency_p50_ms']} ms p99 {row['latency_p99_ms']} ms  "
            f"rss {row['rss_mib']} MiB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--fps", type=float, default=30.0, help="camera and virtual camera frame rate (default 30)")
    p.add_argument("--clip", type=Path, help=f"driving clip, looped (default {SHARED_CLIP.name} from ../shared/data)")
    p.add_argument("--still", action="store_true", help="drive with Grace Hopper's portrait, nodding, instead of a clip")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.fps <= 0:
        p.error("--minutes and --fps must be positive")
    clip = None if args.still else (args.clip or (SHARED_CLIP if SHARED_CLIP.is_file() else None))
    if clip is not None and not clip.is_file():
        p.error(f"clip not found: {clip}")
    if argv is None:  # as a program: MediaPipe's native start-up notes stay off the terminal
        from avatarcam.cli import hide_native_stderr

        hide_native_stderr()
    result = soak(args.minutes, args.fps, clip, progress=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['frames_sent']} frames sent in {result['seconds']} s ({result['sent_fps']} fps), "
              f"dropped {result['dropped']}, filler {result['filler_frames']}, face in {result['frames_with_face']}; "
              f"latency p50 {result['latency_p50_ms']} ms p99 {result['latency_p99_ms']} ms; "
              f"RSS {result['rss_start_mib']} -> {result['rss_end_mib']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
