"""Latency benchmark: frame in to frame out through avatarcam's real live path.

A clip from ../shared/data drives a portrait through the real stages (FaceTracker,
AvatarPipeline with its Retargeter and engine, LiveLoop, a real sink), either

* paced like a webcam (``--paced 30`` or ``60``): avatarcam's own CameraSource reads a
  capture object that serves the clip at the camera rate, so frames are timestamped at
  capture and frames the pipeline could not take are dropped and counted by the real
  code; end to end = capture timestamp -> frame handed to the sink; or
* as fast as possible (default): the real VideoFileSource, every frame in order; end to
  end = frame decoded -> frame handed to the sink.

In the same run, the FOMM-256 architecture avatarify uses (and the paper's generator,
when ``avatarcam_train`` is present) are timed with onnxruntime on the same CPU.

    python benchmarks/latency.py                    # report + plot under benchmarks/out/
    python benchmarks/latency.py --json             # the report as one JSON object on stdout
    python benchmarks/latency.py --paced 30 --seconds 120 --sizes 512x512
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
DEFAULT_CLIP = SHARED / "driving" / "lp_d6_woman_funny_faces_long.mp4"
DEFAULT_FACE = SHARED / "portraits" / "mona_lisa__avatarify_mona.jpg"
DEFAULT_OUT = HERE / "out"
DEFAULT_SIZES = ("512x512", "1280x720")
BACKEND = "avatarcam-bench"
STAGES = ("capture_decode", "queue", "track", "retarget", "render", "sink")

if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from avatarcam.cli import parse_size, positive  # the CLI's own argument types

# -- statistics -----------------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean of milliseconds (NaN-free; empty gives zeros and n=0)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0, "n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(a.max()),
            "mean": float(a.mean()), "n": int(a.size)}


def rss_bytes() -> int:
    """Resident memory of this process and its children (e.g. ffmpeg)."""
    import psutil

    proc = psutil.Process()
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with suppress(psutil.Error):  # a child that just exited
            total += child.memory_info().rss
    return total


@contextmanager
def peak_memory(interval: float = 0.05) -> Iterator[dict[str, int]]:
    """Samples resident memory while the block runs; ``["peak"]`` holds the largest seen."""
    result = {"peak": rss_bytes()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            result["peak"] = max(result["peak"], rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak"] = max(result["peak"], rss_bytes())


def lifetime_peak_rss_mb(runs: dict[str, Any]) -> float:
    """This process's peak resident memory so far (reference models included)."""
    try:
        import resource
    except ImportError:  # Windows: the peaks sampled during the runs
        return max((r["rss_peak_mb"] for r in runs.values()), default=0.0)
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS


def cpu_seconds() -> float:
    """User + system CPU time of this process and its children so far."""
    import psutil

    proc = psutil.Process()
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        with suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


# -- the webcam stand-in and the virtual-camera stand-in --------------------------------------------


class ClipCapture:
    """A cv2.VideoCapture look-alike for CameraSource: the clip, decoded on the capture
    thread, delivered at ``fps`` like a webcam (looping at the end). Records how long
    each frame took to decode (and resize to ``size``, when given)."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int] | None = None) -> None:
        self._cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        self.path, self.fps, self.size = str(path), float(fps), size
        self.decode_ms: list[float] = []
        self._next: float | None = None

    def isOpened(self) -> bool:
        return self._cap is not None and self._cap.isOpened()

    def set(self, prop: int, value: float) -> bool:
        return True  # a file has no modes to negotiate

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self) -> tuple[bool, np.ndarray | None]:
        interval = 1.0 / self.fps
        now = time.perf_counter()
        self._next = now if self._next is None or now - self._next > interval else self._next
        if self._next > now:
            time.sleep(self._next - now)
        self._next += interval
        start = time.perf_counter()
        ok, bgr = self._cap.read()
        if not ok:  # loop the clip
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if ok and self.size is not None and (bgr.shape[1], bgr.shape[0]) != self.size:
            from avatarcam.pipeline import fit_to

            bgr = fit_to(bgr, self.size)
        self.decode_ms.append(1000.0 * (time.perf_counter() - start))
        return ok, bgr

    def release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


@contextmanager
def bench_backend() -> Iterator[str]:
    """A pyvirtualcam backend, registered while the block runs, that copies each frame into
    its own buffer as the real backends copy it into the device (the RGB -> YUV conversion
    they also do is left out). Unregistered afterwards, so pyvirtualcam's search for a real
    camera in the same process never finds it."""
    import pyvirtualcam

    class BenchBackend:
        def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: Any, **kw: Any) -> None:
            self._buffer = np.empty(width * height * 3, np.uint8)
            self._device = device or "/dev/avatarcam-bench"
            self._fourcc = fourcc
            self.sent = 0

        def send(self, frame: np.ndarray) -> None:
            np.copyto(self._buffer, frame)
            self.sent += 1

        def close(self) -> None:
            pass

        def device(self) -> str:
            return self._device

        def native_fourcc(self) -> int:
            return self._fourcc

    previous = pyvirtualcam.camera.BACKENDS.get(BACKEND)
    pyvirtualcam.register_backend(BACKEND, BenchBackend)
    try:
        yield BACKEND
    finally:
        if previous is None:
            pyvirtualcam.camera.BACKENDS.pop(BACKEND, None)
        else:
            pyvirtualcam.register_backend(BACKEND, previous)


# -- one run of the live path -----------------------------------------------------------------------




def make_engine_class(name: str, model: str | None) -> Any:
    """The engine class, as the CLI gets it (``--model`` goes to engines that load one)."""
    from avatarcam.engines import engine_class

    return engine_class(name, model_dir=model)


def run_live(avatar: Any, engine_cls: Any, size: tuple[int, int], *, clip: Path, paced_fps: float | None,
             frames: int | None, seconds: float | None, warmup: int, sink: str, out_dir: Path,
             camera_size: tuple[int, int] | None) -> dict[str, Any]:
    """Run the real live loop for one output size, for ``frames`` frames or ``seconds``
    seconds, and measure it."""
    from avatarcam.app import LiveLoop
    from avatarcam.framing import Framing
    from avatarcam.pipeline import AvatarPipeline
    from avatarcam.sinks import VideoFileSink, VirtualCameraSink
    from avatarcam.sources import CameraSource, VideoFileSource
    from avatarcam.tracking import FaceTracker

    def framing_for(a: Any) -> Framing:
        xy = a.landmarks[:, :2]
        return Framing.cover(a.size, size, (*xy.min(axis=0), *xy.max(axis=0)))

    capture: ClipCapture | None = None
    if paced_fps:
        def factory(device: Any) -> ClipCapture:
            nonlocal capture
            capture = ClipCapture(clip, paced_fps, camera_size)
            return capture

        source = CameraSource("clip", fps=paced_fps, capture_factory=factory)
    else:
        source = VideoFileSource(clip)
    fps = paced_fps or source.fps
    video = out_dir / f"latency-{size[0]}x{size[1]}.mp4"
    tracker = FaceTracker()
    sinks: list[Any] = []
    pipeline = None
    try:
        if sink == "file":
            sinks.append(VideoFileSink(video, size, fps))
        else:
            sinks.append(VirtualCameraSink(size, fps, backend=BACKEND))
        pipeline = AvatarPipeline([avatar], engine_cls, tracker, framing_for)
        # Warm-up through the same objects (MediaPipe's first frames build its graph);
        # tracker and retargeter state carry on into the measured run.
        first_ms = []
        for _ in range(warmup):
            frame = source.read()
            if frame is None:
                break
            t = time.perf_counter()
            result = pipeline.process(frame)
            for s in sinks:
                s.write(result.image)
            first_ms.append(1000.0 * (time.perf_counter() - t))
        dropped_before = source.dropped
        decoded_before = len(capture.decode_ms) if capture else 0
        loop = LiveLoop(source, pipeline, sinks, pace=False, max_frames=frames)
        timer = threading.Timer(seconds, loop.stop) if seconds else None
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        with peak_memory() as memory:
            if timer is not None:
                timer.start()
            try:
                stats = loop.run()
            finally:
                if timer is not None:
                    timer.cancel()
        cpu = cpu_seconds() - cpu0
        wall = time.perf_counter() - wall0
        dropped = source.dropped - dropped_before
    finally:
        source.close()
        for s in sinks:
            s.close()
        if pipeline is not None and hasattr(pipeline, "close"):
            pipeline.close()
        tracker.close()
        video.unlink(missing_ok=True)

    st = {k: np.asarray(v) for k, v in stats.stage_ms.items()}
    e2e = np.asarray(stats.latency_ms)
    processing = st["track"] + st["retarget"] + st["render"] + st["sink"]
    stages: dict[str, dict[str, float]] = {}
    if capture is not None:
        stages["capture_decode"] = summarize(capture.decode_ms[decoded_before:])
        # Capture timestamp -> pipeline start: colour conversion on the capture thread,
        # hand-over and waiting while the previous frame is still being processed.
        stages["queue"] = summarize(np.maximum(e2e - processing, 0.0))
    else:
        stages["capture_decode"] = summarize(st["read"])
    for k in ("track", "retarget", "render", "sink"):
        stages[k] = summarize(st[k])
    interval_ms = 1000.0 / fps
    result: dict[str, Any] = {
        "output_size": f"{size[0]}x{size[1]}",
        "mode": f"paced {paced_fps:g} fps" if paced_fps else "as fast as possible",
        "frames": stats.frames,
        "frames_with_face": stats.frames_with_face,
        "frames_dropped": dropped,
        # Frames the loop sent on the output's schedule while the camera was late (repeats).
        "filler_frames": int(getattr(stats, "filler_frames", 0)),
        "seconds": stats.seconds,
        "achieved_fps": stats.frames / stats.seconds if stats.seconds > 0 else 0.0,
        "capacity_fps": 1000.0 / float(np.median(processing)) if processing.size else 0.0,
        "e2e_ms": summarize(e2e),
        "stages_ms": stages,
        "frame_interval_ms": interval_ms,
        "frames_over_interval": int((e2e > interval_ms).sum()),
        "cpu_percent": 100.0 * cpu / wall if wall > 0 else 0.0,  # 100 = one core busy
        "rss_peak_mb": memory["peak"] / 2**20,
        "warmup_frames": len(first_ms),
        "warmup_first_frame_ms": first_ms[0] if first_ms else None,
        "timeline": {
            "e2e_ms": [round(float(v), 3) for v in e2e],
            **{k: [round(float(v), 3) for v in st[k]] for k in ("track", "retarget", "render", "sink")},
        },
    }
    if capture is not None:
        result["camera_size"] = "x".join(map(str, source.size))
    return result


# -- reference models ---------------------------------------------------------------------------


def reference_cache_dir(out_dir: Path | None) -> Path:
    """Where exported reference ONNX files live; the name changes with their definitions."""
    digest = hashlib.sha256((HERE / "reference_models.py").read_bytes()).hexdigest()[:12]
    if out_dir is not None:
        return out_dir / f"onnx-{digest}"
    import platformdirs

    return Path(platformdirs.user_cache_dir("avatarcam")) / "benchmarks" / f"onnx-{digest}"


def measure_floor(clip: Path, sizes: Sequence[tuple[int, int]], camera_size: tuple[int, int] | None,
                  frames: int = 60, warmup: int = 10) -> dict[str, Any]:
    """The machine's floor for one frame: MediaPipe Face Mesh alone on the camera frames
    (one face, irises on) plus one ``cv2.remap`` of an RGB image at each output size."""
    from avatarcam.pipeline import fit_to
    from avatarcam.tracking import _mediapipe_face_mesh

    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    images = []
    while len(images) < warmup + frames:
        ok, bgr = cap.read()
        if not ok:
            break
        if camera_size is not None:
            bgr = fit_to(bgr, camera_size)
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    mesh_ms = []
    with _mediapipe_face_mesh().FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True) as mesh:
        for i, image in enumerate(images):
            t = time.perf_counter()
            mesh.process(image)
            if i >= warmup:
                mesh_ms.append(1000.0 * (time.perf_counter() - t))
    floor: dict[str, Any] = {"face_mesh_ms": summarize(mesh_ms), "remap_ms": {}, "total_ms": {}}
    rng = np.random.default_rng(0)
    for w, h in sizes:
        texture = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        # A gentle warp, so remap interpolates everywhere as the engine's map does.
        warp = np.dstack([xs + 3 * np.sin(ys / 40), ys + 3 * np.cos(xs / 40)]).astype(np.float32)
        ms = []
        for i in range(warmup + frames):
            t = time.perf_counter()
            cv2.remap(texture, warp, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            if i >= warmup:
                ms.append(1000.0 * (time.perf_counter() - t))
        name = f"{w}x{h}"
        floor["remap_ms"][name] = summarize(ms)
        floor["total_ms"][name] = floor["face_mesh_ms"]["p50"] + floor["remap_ms"][name]["p50"]
    return floor


def run_references(frames: int, cache: Path, paper: bool = True) -> dict[str, Any]:
    try:
        import reference_models
    except ImportError:
        sys.path.insert(0, str(HERE))
        import reference_models
    if reference_models.torch is None:
        skipped = {"skipped": "torch is not installed (pip install 'avatarcam[train]'); reference models not timed"}
        return {"fomm_256": skipped, "paper_generator_256": skipped}
    refs = {"fomm_256": reference_models.time_fomm(cache, frames=frames)}
    refs["fomm_256"]["gmacs_per_frame"] = round(reference_models.fomm_gmacs(), 2)
    refs["paper_generator_256"] = (reference_models.time_paper_generator(cache, frames=frames) if paper
                                   else {"skipped": "not asked for"})
    return refs


# -- the plot ------------------------------------------------------------------------------------


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, (bars, timeline) = plt.subplots(2, 1, figsize=(10, 7.5), gridspec_kw={"height_ratios": [1, 1.4]})
    colours = dict(zip(STAGES, ("#8c8c8c", "#c7c7c7", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")))
    labels = list(runs)
    for row, name in enumerate(labels):
        left = 0.0
        for stage in STAGES:
            s = runs[name]["stages_ms"].get(stage)
            if not s:
                continue
            bars.barh(row, s["p50"], left=left, color=colours[stage], edgecolor="white",
                      label=stage if row == 0 else None)
            left += s["p50"]
        e2e = runs[name]["e2e_ms"]
        bars.plot([e2e["p99"]], [row], marker="|", markersize=18, color="black", label="e2e p99" if row == 0 else None)
        bars.text(left, row, f"  e2e p50 {e2e['p50']:.1f} ms, p99 {e2e['p99']:.1f} ms", va="center", fontsize=9)
    bars.set_yticks(range(len(labels)), labels)
    bars.set_xlabel("median ms per frame, by stage (capture/decode happens before the capture timestamp)")
    bars.legend(fontsize=8, ncol=4, loc="lower right")
    bars.set_xlim(0, 1.8 * max(r["e2e_ms"]["p99"] + r["stages_ms"]["capture_decode"]["p50"] for r in runs.values()))
    for name in labels:
        e2e = runs[name]["timeline"]["e2e_ms"]
        timeline.plot(np.arange(len(e2e)), e2e, lw=0.8, label=f"{name} end to end")
    interval = next(iter(runs.values()))["frame_interval_ms"]
    if report["config"]["paced_fps"]:
        timeline.axhline(interval, color="red", ls="--", lw=1, label=f"frame interval {interval:.1f} ms")
    timeline.set_xlabel("frame")
    timeline.set_ylabel("ms")
    timeline.set_ylim(bottom=0)
    timeline.legend(fontsize=8)
    ratio = report.get("vs_fomm_fps_ratio")
    title = f"avatarcam latency, {report['config']['mode']}, engine {report['config']['engine']}"
    if ratio:
        title += f"\n{ratio:.0f}x the frame rate of FOMM-256 (avatarify) on this CPU"
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Everything but --json output goes to stderr.")
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="driving clip (default: %(default)s)")
    p.add_argument("--face", type=Path, default=DEFAULT_FACE, help="portrait to animate (default: %(default)s)")
    p.add_argument("--paced", type=positive(float), metavar="FPS", help="serve the clip like a webcam at FPS (30 or 60); "
                   "default: as fast as possible from the file")
    p.add_argument("--seconds", type=positive(float), help="paced: how long to run each size (default 10)")
    p.add_argument("--frames", type=positive(int), help="frames measured per size (default 300; when paced, instead of --seconds)")
    p.add_argument("--warmup", type=int, default=15, help="frames run before measuring (default %(default)s)")
    p.add_argument("--camera-size", type=parse_size, metavar="WxH",
                   help="paced: frame size the webcam delivers (the clip is scaled and cropped to it; default: the clip's)")
    p.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help="output sizes, comma-separated (default %(default)s)")
    p.add_argument("--engine", default="warp", help="engine to time (warp, or neural once installed)")
    p.add_argument("--model", help="model folder for engines that load one (--engine neural)")
    p.add_argument("--sink", choices=("vcam", "file"), default="vcam",
                   help="vcam: pyvirtualcam with an in-memory backend (default); file: H.264 through ffmpeg")
    p.add_argument("--no-reference-models", dest="references", action="store_false",
                   help="skip timing FOMM-256 and the paper generator")
    p.add_argument("--reference-frames", type=positive(int), default=8, help="frames timed per reference model (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    p.add_argument("--output", type=Path, help="write the JSON report here (default: benchmarks/out/latency.json)")
    p.add_argument("--plot", type=Path, help="write the PNG plot here (default: next to the report)")
    p.add_argument("--no-plot", dest="make_plot", action="store_false", help="no PNG plot")
    p.add_argument("--timelines", action="store_true", help="keep per-frame timelines in the JSON (always in the plot)")
    return p


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    from avatarcam import __version__
    from avatarcam.avatar import AvatarCache, prepare_avatar

    for what, path in (("clip", args.clip), ("portrait", args.face)):
        if not Path(path).is_file():
            raise SystemExit(f"latency: error: {what} not found: {path} (the shared data lives in ../shared/data; "
                             f"pass --{'clip' if what == 'clip' else 'face'} FILE)")
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except argparse.ArgumentTypeError as e:
        raise SystemExit(f"latency: error: --sizes: {e}") from None
    paced = args.paced
    # Paced runs last a wall-clock time (a slow pipeline then shows as drops, as live);
    # unpaced ones a number of frames.
    frames = args.frames or (None if paced else 300)
    seconds = None if args.frames else (args.seconds or 10.0) if paced else None
    amount = f"{frames} frames" if frames else f"{seconds:g} s"
    out_dir = (args.output.parent if args.output else DEFAULT_OUT)
    out_dir.mkdir(parents=True, exist_ok=True)

    engine_cls = make_engine_class(args.engine, args.model)
    avatar = prepare_avatar([args.face], engine_version=engine_cls.version, prepare_engine_data=engine_cls.prepare,
                            cache=AvatarCache())
    runs = {}
    for size in sizes:
        name = f"{size[0]}x{size[1]}"
        log(f"{name}: {amount}, {f'paced {paced:g} fps' if paced else 'as fast as possible'} ...")
        with bench_backend():
            r = run_live(avatar, engine_cls, size, clip=args.clip, paced_fps=paced, frames=frames, seconds=seconds,
                         warmup=args.warmup, sink=args.sink, out_dir=out_dir, camera_size=args.camera_size)
        runs[name] = r
        s = r["stages_ms"]
        log(f"{name}: e2e p50 {r['e2e_ms']['p50']:.2f} p95 {r['e2e_ms']['p95']:.2f} p99 {r['e2e_ms']['p99']:.2f} "
            f"max {r['e2e_ms']['max']:.2f} ms | " + ", ".join(f"{k} {v['p50']:.2f}" for k, v in s.items())
            + f" | {r['achieved_fps']:.1f} fps, dropped {r['frames_dropped']}, over interval {r['frames_over_interval']}, "
            f"cpu {r['cpu_percent']:.0f}%")

    floor = measure_floor(args.clip, sizes, args.camera_size if paced else None)
    log("floor: Face Mesh alone {:.2f} ms + one remap ({}) -> {}".format(
        floor["face_mesh_ms"]["p50"], ", ".join(f"{k} {v['p50']:.2f}" for k, v in floor["remap_ms"].items()),
        ", ".join(f"{k} {v:.2f} ms" for k, v in floor["total_ms"].items())))

    refs: dict[str, Any] = {}
    if args.references:
        log("timing the reference models (FOMM-256, paper generator) with onnxruntime ...")
        refs = run_references(args.reference_frames, reference_cache_dir(None))
        for k, v in refs.items():
            log(f"{k}: " + (v["skipped"] if "skipped" in v else f"{v['frame_ms']['p50']:.0f} ms/frame ({v['fps']:.2f} fps)"))

    import psutil

    report: dict[str, Any] = {
        "benchmark": "avatarcam latency",
        "avatarcam_version": __version__,
        "config": {
            "clip": str(args.clip), "face": str(args.face), "engine": args.engine, "model": args.model,
            "mode": f"paced {paced:g} fps (CameraSource)" if paced else "as fast as possible (VideoFileSource)",
            "paced_fps": paced, "frames_per_size": frames, "seconds_per_size": seconds, "warmup_frames": args.warmup, "sink": args.sink,
            "e2e_definition": ("capture timestamp -> frame handed to the sink" if paced
                               else "frame decoded -> frame handed to the sink"),
        },
        "machine": {
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "opencv": cv2.__version__,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "e2e_ms": {k: {q: r["e2e_ms"][q] for q in ("p50", "p95", "p99", "max", "mean", "n")} for k, r in runs.items()},
        "runs": runs,
        "floor_ms": floor,
        # End-to-end p50 over the floor: how close the live path is to Face Mesh + one remap.
        "e2e_over_floor": {k: r["e2e_ms"]["p50"] / floor["total_ms"][k] for k, r in runs.items()},
        "reference": refs,
        "peak_rss_mb": lifetime_peak_rss_mb(runs),
    }
    fomm = refs.get("fomm_256", {})
    first = runs.get("512x512") or next(iter(runs.values()))
    if "fps" in fomm and first["e2e_ms"]["p50"] > 0:
        ours = 1000.0 / first["e2e_ms"]["p50"]
        report["vs_fomm_fps_ratio"] = ours / fomm["fps"]
        report["vs_fomm_basis"] = (f"(1000 / avatarcam {first['output_size']} e2e p50) / (1000 / FOMM-256 per-frame p50): "
                                   f"{ours:.1f} fps vs {fomm['fps']:.3f} fps, same process, same CPU")
        log(f"avatarcam {first['output_size']}: {ours:.0f} fps vs FOMM-256 {fomm['fps']:.2f} fps -> "
            f"{report['vs_fomm_fps_ratio']:.0f}x")
    else:
        report["vs_fomm_fps_ratio"] = None
        report["vs_fomm_basis"] = fomm.get("skipped", "reference models not timed (--no-reference-models)")
    paper = refs.get("paper_generator_256", {})
    report["vs_paper_generator_fps_ratio"] = (
        (1000.0 / first["e2e_ms"]["p50"]) / paper["fps"] if "fps" in paper and first["e2e_ms"]["p50"] > 0 else None)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    if argv is None:  # as a script: MediaPipe's native start-up chatter off the terminal
        from avatarcam.cli import hide_native_stderr

        hide_native_stderr()

    def log(text: str) -> None:
        print(f"latency: {text}", file=sys.stderr, flush=True)

    from avatarcam.errors import AvatarcamError

    try:
        report = run(args, log)
    except AvatarcamError as exc:
        print(f"latency: error: {exc}", file=sys.stderr)
        return 1
    out = args.output or DEFAULT_OUT / "latency.json"
    plot_path = args.plot or out.with_suffix(".png")
    if args.make_plot:
        plot(report, plot_path)
        report["plot"] = str(plot_path)
        log(f"plot: {plot_path}")
    if not args.timelines:
        for r in report["runs"].values():
            r.pop("timeline", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"report: {out}")
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
