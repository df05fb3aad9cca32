"""Quality benchmark: the real avatarcam engine on real talking-head clips and portraits.

    python benchmarks/quality.py                 # table on stdout, report + contact sheet in benchmarks/out/
    python benchmarks/quality.py --json          # one JSON object on stdout

Two protocols, on ``../shared/data`` (``--data DIR``):

* self-reenactment: each clip's first frame is the avatar, driven by the clip itself (its
  first ``--frames`` frames); every output frame is compared with the real frame. Three
  references run beside the engine: the static first frame (the floor), a plain
  Delaunay mesh warp of the first frame driven by the *true* landmarks of each frame
  (a ceiling for naive warping), and the first frame warped by optical flow computed
  from the real frame itself (an oracle: roughly the best any warp of the first frame
  can do).
* cross-reenactment: each portrait driven by a clip of another person: identity kept,
  motion transferred, face still found, landmark jitter.

The engine runs through the same path as ``avatarcam --face IMG --input CLIP --output OUT``:
prepare_avatar with the engine's prepare, AvatarPipeline with a FaceTracker, native framing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_metrics as qm

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "out"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
THUMB = 144  # contact-sheet tile height, pixels

# (summary key, protocol, comparison, threshold): the targets for the engine.
TARGETS = (
    ("face_l1", "self", "<=", 0.032),
    ("face_ssim", "self", ">=", 0.84),
    ("l1", "self", "<=", 0.038),
    ("ssim", "self", ">=", 0.81),
    ("akd", "self", "<=", 1.5),
    ("aed", "self", "<=", 0.15),
    ("motion_r", "cross", ">=", 0.85),
    ("identity_distance", "cross", "<=", 0.35),
    ("face_found", "cross", ">=", 0.99),
)


class BenchmarkError(Exception):
    """A problem with the benchmark's input, reported as one line."""


# -- inputs ---------------------------------------------------------------------------------

def _select(paths: list[Path], wanted: Sequence[str] | None, what: str) -> list[Path]:
    if not wanted:
        return paths
    chosen = []
    for name in wanted:
        hits = [p for p in paths if name.lower() in p.name.lower()]
        if not hits:
            raise BenchmarkError(f"no {what} matches {name!r}; have: {', '.join(p.stem for p in paths)}")
        chosen += [p for p in hits if p not in chosen]
    return chosen


def find_inputs(data: Path, clips: Sequence[str] | None, portraits: Sequence[str] | None) -> tuple[list[Path], list[Path]]:
    driving, still = data / "driving", data / "portraits"
    if not driving.is_dir():
        raise BenchmarkError(f"no driving clips at {driving}; pass --data DIR (the folder with driving/ and portraits/)")
    clip_paths = _select(sorted(driving.glob("*.mp4")), clips, "clip")
    portrait_paths = _select(sorted(p for p in still.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES), portraits, "portrait") \
        if still.is_dir() else []
    if not clip_paths:
        raise BenchmarkError(f"no .mp4 clips in {driving}")
    return clip_paths, portrait_paths


def pair_portraits(portraits: list[Path], clips: list[Path]) -> list[tuple[Path, Path]]:
    """Portrait i (sorted by name) is driven by clip i mod n (sorted by name): fixed pairs.
    None of the shared clips shows a person of the portraits, so every pair is cross-identity."""
    return [(p, clips[i % len(clips)]) for i, p in enumerate(portraits)]


def read_frames(path: Path, count: int) -> tuple[list[np.ndarray], float]:
    from avatarcam.sources import VideoFileSource

    source = VideoFileSource(path)
    frames = []
    try:
        while len(frames) < count:
            frame = source.read()
            if frame is None:
                break
            frames.append(frame.image)
    finally:
        source.close()
    return frames, source.fps


def engine_for(name: str, model: str | None):
    """The engine class, as the CLI picks it (``--model`` goes to engines that take a model)."""
    from avatarcam.engines import engine_class

    return engine_class(name) if model is None else engine_class(name, model_dir=model)


# -- running the engine ---------------------------------------------------------------------

class EngineRun:
    """One avatar driven through avatarcam's own pipeline, frame by frame, as the CLI does
    for ``--input CLIP --output FILE`` (native framing: output size = the avatar photo's)."""

    def __init__(self, engine_cls, avatar_path: Path, cache_dir: Path) -> None:
        from avatarcam.avatar import AvatarCache, prepare_avatar
        from avatarcam.framing import Framing
        from avatarcam.pipeline import AvatarPipeline
        from avatarcam.tracking import FaceTracker

        t = time.perf_counter()
        self.avatar = prepare_avatar([str(avatar_path)], engine_version=engine_cls.version,
                                     prepare_engine_data=engine_cls.prepare, cache=AvatarCache(cache_dir))
        self.prepare_s = time.perf_counter() - t
        self.tracker = FaceTracker()
        self.pipeline = AvatarPipeline([self.avatar], engine_cls, self.tracker, lambda a: Framing.native(a.size))
        self.render_ms: list[float] = []
        self.track_ms: list[float] = []
        self.heads: list[np.ndarray] = []  # each frame's 2x3 head motion, output pixels
        self.tracked: list[np.ndarray | None] = []  # the driver's landmarks as the engine got them
        self.posed: list[np.ndarray] = []  # the avatar's landmarks the retargeting made of them

    def __call__(self, image: np.ndarray, index: int, fps: float) -> np.ndarray:
        from avatarcam.sources import Frame

        result = self.pipeline.process(Frame(image, index, index / fps))
        self.render_ms.append(1e3 * result.timings.get("render", float("nan")))
        self.track_ms.append(1e3 * result.timings.get("track", float("nan")))
        self.heads.append(np.asarray(result.pose.head, dtype=np.float64))
        self.tracked.append(None if result.face is None else result.face.landmarks)
        self.posed.append(result.pose.landmarks)
        return result.image

    def close(self) -> None:
        if hasattr(self.pipeline, "close"):
            self.pipeline.close()
        self.tracker.close()


# -- metrics over a sequence ----------------------------------------------------------------

class SelfScores:
    """Accumulates one method's self-reenactment scores over a clip."""

    def __init__(self) -> None:
        self.frames: list[dict[str, float]] = []
        self.akd: list[float] = []
        self.aed: list[float] = []
        self.found = 0
        self.count = 0
        self.landmarks: list[np.ndarray | None] = []

    def add(self, output: np.ndarray, real: qm.FrameComparer, real_pts: np.ndarray | None,
            out_pts: np.ndarray | None) -> None:
        self.frames.append(real(output))
        self.count += 1
        self.landmarks.append(out_pts)
        if out_pts is not None:
            self.found += 1
            if real_pts is not None:
                self.akd.append(qm.akd(out_pts, real_pts, (real.real.shape[1], real.real.shape[0])))

    def result(self, driver: list[np.ndarray | None]) -> dict:
        def mean(key: str) -> float:
            values = [f[key] for f in self.frames if key in f]
            return float(np.mean(values)) if values else float("nan")

        def psnr(key: str) -> float:
            # PSNR of the whole clip (from its mean squared error), so an exact frame does
            # not add an infinite value to a mean.
            return qm.psnr(mean(key))

        r = qm.signal_correlations(driver, self.landmarks)
        return {
            "l1": mean("l1"), "psnr": psnr("mse"), "ssim": mean("ssim"),
            "face_l1": mean("face_l1"), "face_psnr": psnr("face_mse"), "face_ssim": mean("face_ssim"),
            "akd": float(np.mean(self.akd)) if self.akd else float("nan"),
            "aed": float(np.mean(self.aed)) if self.aed else float("nan"),
            "face_found": self.found / max(self.count, 1),
            "motion_r": _nanmean(r.values()), "motion_r_signals": r,
            "jitter": qm.jitter(self.landmarks),
        }


def _nanmean(values) -> float:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def _thumb(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * THUMB / h)), THUMB), interpolation=cv2.INTER_AREA)


def _rigid_path(image: np.ndarray, heads: list[np.ndarray]):
    """``image`` (the first output frame) moved as a whole along the head motions ``heads``
    (2x3 affines, the first one ``image``'s own), one frame per head: a sequence with the
    avatar's sub-pixel path and nothing rendered, for MediaPipe's own jitter."""
    h, w = image.shape[:2]
    start = np.vstack([heads[0], (0.0, 0.0, 1.0)])
    back = np.linalg.inv(start)
    for head in heads:
        move = (np.vstack([head, (0.0, 0.0, 1.0)]) @ back)[:2]
        yield cv2.warpAffine(image, move, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _moments(driver: list[np.ndarray | None], count: int = 5) -> list[int]:
    """Frames worth looking at: the widest mouth, the most closed eyes, the largest head
    turn, and evenly spaced ones to fill up."""
    n = len(driver)
    found = [i for i, p in enumerate(driver) if p is not None]
    picks: list[int] = []
    if found:
        signals = {i: qm.motion_signals(driver[i]) for i in found}
        first = signals[found[0]]
        picks += [max(found, key=lambda i: signals[i][0]), min(found, key=lambda i: signals[i][1]),
                  max(found, key=lambda i: abs(signals[i][2] - first[2]) + abs(signals[i][3] - first[3]))]
    for k in range(1, count + 1):
        if len(set(picks)) >= count:
            break
        picks.append(min(n - 1, round(k * n / (count + 1))))
    return sorted(set(picks))[:count]


# -- protocols ------------------------------------------------------------------------------

class Benchmark:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.engine_cls = engine_for(args.engine, args.model)
        self.detect = qm.FaceMeshDetector()
        self.describe = None
        if not args.no_aed:
            if not qm.dlib_available():
                raise BenchmarkError("dlib face descriptors need the bench extra: pip install '.[bench]' (or pass --no-aed)")
            self.describe = qm.FaceDescriptor()
        self.tmp = tempfile.TemporaryDirectory(prefix="avatarcam-quality-")  # outside the repository
        self.sheet_rows: list[tuple[list[str], list[tuple[int, np.ndarray]]]] = []
        self._real_desc: dict[int, np.ndarray] = {}
        self.seconds: dict[str, float] = {}

    def close(self) -> None:
        self.detect.close()
        self.tmp.cleanup()

    def _timed(self, key: str, start: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start

    def _bar(self, iterable, desc: str):
        return tqdm(iterable, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, disable=self.args.quiet)

    def real_descriptor(self, frames: list[np.ndarray], true_pts: list[np.ndarray | None], i: int) -> np.ndarray | None:
        """dlib descriptor of real frame ``i`` of the current clip (cached: the self and cross
        protocols both use them)."""
        if i not in self._real_desc and true_pts[i] is not None:
            self._real_desc[i] = self.describe(frames[i], true_pts[i])
        return self._real_desc.get(i)

    def self_reenactment(self, clip: Path, frames: list[np.ndarray], fps: float,
                         true_pts: list[np.ndarray | None]) -> dict:
        name = clip.stem
        h, w = frames[0].shape[:2]
        source_path = Path(self.tmp.name) / f"{name}_frame0.png"
        cv2.imwrite(str(source_path), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))

        def add_aed(scores: SelfScores, i: int, output: np.ndarray, out_pts: np.ndarray | None,
                    descriptor: np.ndarray | None = None) -> None:
            if self.describe is None or i % self.args.aed_every or out_pts is None:
                return
            real = self.real_descriptor(frames, true_pts, i)
            if real is not None:
                mine = descriptor if descriptor is not None else self.describe(output, out_pts)
                scores.aed.append(float(np.linalg.norm(mine - real)))

        def score(scores: SelfScores, i: int, output: np.ndarray, compare: qm.FrameComparer) -> None:
            """Re-detect ``output``, then compare it with real frame ``i`` (and its descriptor)."""
            start = time.perf_counter()
            out_pts = self.detect(output)
            self._timed("re-detect", start)
            start = time.perf_counter()
            scores.add(output, compare, true_pts[i], out_pts)
            self._timed("scores", start)
            start = time.perf_counter()
            add_aed(scores, i, output, out_pts)
            self._timed("dlib", start)

        # The engine is driven by the clip's tracked landmarks; the static floor shows the
        # first frame; the naive ceiling warps the first frame onto each frame's true
        # landmarks; the oracle warps it by the flow from the real frame itself.
        run = EngineRun(self.engine_cls, source_path, Path(self.tmp.name) / "cache")
        warp = qm.DelaunayWarp(frames[0], true_pts[0])
        flow = qm.FlowOracle(frames[0])
        engine, static, delaunay, oracle = SelfScores(), SelfScores(), SelfScores(), SelfScores()
        first_desc = self.real_descriptor(frames, true_pts, 0) if self.describe is not None else None
        thumbs: dict[int, np.ndarray] = {}
        moments = _moments(true_pts)
        last = true_pts[0]
        try:
            for i, real in enumerate(self._bar(frames, f"{name}: self")):
                start = time.perf_counter()
                mask = qm.face_mask(true_pts[i], real.shape) if true_pts[i] is not None else None
                compare = qm.FrameComparer(real, mask)
                self._timed("scores", start)

                start = time.perf_counter()
                output = run(real, i, fps)
                self._timed("engine render", start)
                score(engine, i, output, compare)
                if i in moments:
                    thumbs[i] = np.hstack([_thumb(real), _thumb(output)])

                start = time.perf_counter()
                static.add(frames[0], compare, true_pts[i], true_pts[0])
                self._timed("scores", start)
                add_aed(static, i, frames[0], true_pts[0], first_desc)

                start = time.perf_counter()
                last = true_pts[i] if true_pts[i] is not None else last
                output = warp.warp(last)
                self._timed("delaunay warp", start)
                score(delaunay, i, output, compare)

                start = time.perf_counter()
                output = flow.warp(real)
                self._timed("oracle flow", start)
                score(oracle, i, output, compare)
        finally:
            run.close()
        self.sheet_rows.append(([f"self: {name}"], [(i, thumbs[i]) for i in sorted(thumbs)]))
        results = {"engine": engine.result(true_pts), "static": static.result(true_pts),
                   "delaunay": delaunay.result(true_pts), "oracle": oracle.result(true_pts)}
        results["engine"]["render_ms_p50"] = float(np.nanmedian(run.render_ms))
        results["engine"]["prepare_s"] = run.prepare_s
        return {"clip": name, "size": [w, h], "fps": fps, "frames": len(frames),
                "real_face_found": sum(p is not None for p in true_pts) / len(frames),
                "real_jitter": qm.jitter(true_pts), **results}

    def cross_reenactment(self, portrait: Path, clip: Path, frames: list[np.ndarray], fps: float,
                          driver_pts: list[np.ndarray | None]) -> dict:
        start = time.perf_counter()
        every = self.args.aed_every
        run = EngineRun(self.engine_cls, portrait, Path(self.tmp.name) / "cache")
        avatar = run.avatar
        box = qm.search_box(avatar.landmarks, avatar.size)
        portrait_desc = self.describe(avatar.image, avatar.landmarks) if self.describe is not None else None
        out_pts: list[np.ndarray | None] = []
        identity, driver_identity = [], []
        moments = _moments(driver_pts)
        thumbs = {}
        first = None
        try:
            for i, real in enumerate(self._bar(frames, f"{portrait.stem[:24]} <- {clip.stem[:16]}")):
                output = run(real, i, fps)
                if first is None:
                    first = output.copy()
                pts = self.detect(output, box)
                out_pts.append(pts)
                if portrait_desc is not None and i % every == 0:
                    if pts is not None:
                        identity.append(float(np.linalg.norm(self.describe(output, pts) - portrait_desc)))
                    driver = self.real_descriptor(frames, driver_pts, i)
                    if driver is not None:
                        driver_identity.append(float(np.linalg.norm(driver - portrait_desc)))
                if i in moments:
                    thumbs[i] = np.hstack([_thumb(real), _thumb(output)])
        finally:
            run.close()
        self.sheet_rows.append(([f"cross: {portrait.stem}", f"<- {clip.stem}"], [(i, thumbs[i]) for i in sorted(thumbs)]))
        r = qm.signal_correlations(driver_pts, out_pts)
        tracker_r = qm.signal_correlations(driver_pts, run.tracked)
        pose_r = qm.signal_correlations(driver_pts, run.posed)
        out_jitter, driver_jitter = qm.jitter(out_pts), qm.jitter(driver_pts)
        detector_jitter = qm.jitter([self.detect(f, box) for f in _rigid_path(first, run.heads)]) if first is not None else float("nan")
        self._timed("cross", start)
        return {
            "portrait": portrait.stem, "clip": clip.stem, "size": list(avatar.size), "frames": len(frames),
            "identity_distance": float(np.mean(identity)) if identity else float("nan"),
            "driver_identity_distance": float(np.mean(driver_identity)) if driver_identity else float("nan"),
            "motion_r": _nanmean(r.values()), "motion_r_signals": r,
            "tracker_r": _nanmean(tracker_r.values()), "tracker_r_signals": tracker_r,
            "pose_r": _nanmean(pose_r.values()), "pose_r_signals": pose_r,
            "face_found": sum(p is not None for p in out_pts) / max(len(out_pts), 1),
            "jitter": out_jitter, "driver_jitter": driver_jitter, "jitter_excess": out_jitter - driver_jitter,
            "detector_jitter": detector_jitter,
            "render_ms_p50": float(np.nanmedian(run.render_ms)), "prepare_s": run.prepare_s,
        }

    def run(self, clips: list[Path], portraits: list[Path]) -> dict:
        t0 = time.perf_counter()
        pairs = pair_portraits(portraits, clips)
        self_results, cross_results = [], []
        for clip in tqdm(clips, desc="clips", file=sys.stderr, dynamic_ncols=True, disable=self.args.quiet):
            frames, fps = read_frames(clip, self.args.frames)
            if not frames:
                tqdm.write(f"quality: {clip.name} has no frames; skipped", file=sys.stderr)
                continue
            start = time.perf_counter()
            true_pts = [self.detect(f) for f in self._bar(frames, f"{clip.stem}: landmarks")]
            self._timed("re-detect", start)
            self._real_desc = {}
            if true_pts[0] is None:
                tqdm.write(f"quality: no face in the first frame of {clip.name}; skipped", file=sys.stderr)
                continue
            self_results.append(self.self_reenactment(clip, frames, fps, true_pts))
            for portrait, driver in pairs:
                if driver == clip:
                    cross_results.append(self.cross_reenactment(portrait, clip, frames, fps, true_pts))
        if not self_results:
            raise BenchmarkError("no clip could be measured (no face in their first frames)")
        self.seconds["total"] = time.perf_counter() - t0
        return {"self": self_results, "cross": cross_results}


# -- report ---------------------------------------------------------------------------------

METHODS = ("engine", "static", "delaunay", "oracle")  # the engine, then its references
SELF_KEYS = ("l1", "psnr", "ssim", "face_l1", "face_psnr", "face_ssim", "akd", "aed", "face_found", "motion_r", "jitter")
CROSS_KEYS = ("identity_distance", "driver_identity_distance", "motion_r", "tracker_r", "pose_r", "face_found", "jitter",
              "driver_jitter", "jitter_excess", "detector_jitter")


def summarize(results: dict) -> dict:
    """Means over clips (each clip counts once) and over portrait pairs, and the targets."""
    def over(rows: list[dict], keys: Sequence[str]) -> dict:
        out = {k: _nanmean(r[k] for r in rows) for k in keys}
        for key in ("motion_r_signals", "tracker_r_signals", "pose_r_signals"):
            if rows and key in rows[0]:
                out[key] = {s: _nanmean(r[key][s] for r in rows) for s in qm.SIGNALS}
        return out

    summary = {
        "engine": {"self": over([c["engine"] for c in results["self"]], SELF_KEYS)},
        "static": {"self": over([c["static"] for c in results["self"]], SELF_KEYS)},
        "delaunay": {"self": over([c["delaunay"] for c in results["self"]], SELF_KEYS)},
        "oracle": {"self": over([c["oracle"] for c in results["self"]], SELF_KEYS)},
    }
    if results["cross"]:
        summary["engine"]["cross"] = over(results["cross"], CROSS_KEYS)
    targets = {}
    for key, protocol, op, limit in TARGETS:
        value = summary["engine"].get(protocol, {}).get(key, float("nan"))
        ok = None if math.isnan(value) else bool(value <= limit if op == "<=" else value >= limit)
        targets[f"{protocol}.{key}"] = {"value": value, "target": f"{op} {limit}", "ok": ok}
    summary["targets"] = targets
    summary["all_ok"] = all(t["ok"] for t in targets.values())
    return summary


def contact_sheet(rows: list[tuple[list[str], list[tuple[int, np.ndarray]]]]) -> np.ndarray:
    """One row per clip or portrait pair: its label, then a few moments, each the driver
    frame and the avatar's output side by side, with the frame number."""
    label_w, gap = 260, 8
    width = label_w + max(sum(t.shape[1] + gap for _, t in tiles) for _, tiles in rows)
    sheet = np.full((len(rows) * (THUMB + gap) + gap, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for r, (label, tiles) in enumerate(rows):
        y = gap + r * (THUMB + gap)
        for k, line in enumerate(label):
            cv2.putText(sheet, line[:34], (6, y + 22 + 20 * k), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        x = label_w
        for index, tile in tiles:
            sheet[y:y + THUMB, x:x + tile.shape[1]] = tile
            cv2.putText(sheet, f"#{index}", (x + 4, y + 14), font, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
            x += tile.shape[1] + gap
    return sheet


def _round(value):
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def print_table(summary: dict, file=sys.stdout) -> None:
    cols = ("l1", "ssim", "psnr", "face_l1", "face_ssim", "face_psnr", "akd", "aed", "motion_r", "jitter")
    print("self-reenactment (mean over clips)", file=file)
    print(f"{'':10}" + "".join(f"{c:>10}" for c in cols), file=file)
    for method in METHODS:
        row = summary[method]["self"]
        print(f"{method:10}" + "".join(f"{_fmt(row.get(c)):>10}" for c in cols), file=file)
    cross = summary["engine"].get("cross")
    if cross:
        print("cross-reenactment (mean over portraits): " + ", ".join(f"{k} {_fmt(v)}" for k, v in cross.items()
                                                                     if not isinstance(v, dict)), file=file)
    print("targets: " + ", ".join(f"{k} {_fmt(t['value'])} {t['target']} {'ok' if t['ok'] else 'MISS'}"
                                  for k, t in summary["targets"].items()), file=file)


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"folder with driving/ and portraits/ (default {DEFAULT_DATA})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where report.json and contact_sheet.png go (default benchmarks/out)")
    p.add_argument("--frames", type=int, default=150, help="frames per clip (default 150)")
    p.add_argument("--clips", nargs="+", metavar="NAME", help="only clips whose file name contains one of these")
    p.add_argument("--portraits", nargs="*", metavar="NAME",
                   help="only portraits whose file name contains one of these (given with no names: no cross-reenactment)")
    p.add_argument("--engine", default="warp", help="engine name, as avatarcam --engine (default warp)")
    p.add_argument("--model", metavar="DIR", help="model folder for engines that take one (neural)")
    p.add_argument("--no-aed", action="store_true", help="skip dlib face descriptors (AED, identity distance)")
    p.add_argument("--aed-every", type=int, default=10, metavar="K",
                   help="dlib descriptors on every K-th frame (default 10: each costs ~0.1 s)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # as a program, not when called from Python (tests)
        from avatarcam.cli import hide_native_stderr

        hide_native_stderr()
    if args.frames < 3 or args.aed_every < 1:
        print("quality: error: --frames must be at least 3 and --aed-every at least 1", file=sys.stderr)
        return 2
    from avatarcam.errors import AvatarcamError

    bench = None
    try:
        clips, portraits = find_inputs(args.data, args.clips, args.portraits)
        if args.portraits is not None and len(args.portraits) == 0:
            portraits = []
        bench = Benchmark(args)
        results = bench.run(clips, portraits)
        summary = summarize(results)
        args.out.mkdir(parents=True, exist_ok=True)
        sheet_path = args.out / "contact_sheet.png"
        cv2.imwrite(str(sheet_path), cv2.cvtColor(contact_sheet(bench.sheet_rows), cv2.COLOR_RGB2BGR))
        report = _round({
            "summary": summary,
            "config": {
                "engine": args.engine, "model": args.model, "frames": args.frames, "data": str(args.data),
                "aed": not args.no_aed, "aed_every": args.aed_every,
                "pairs": [[c["portrait"], c["clip"]] for c in results["cross"]],
                "definitions": {
                    "l1": "mean |output - real| over RGB in 0..1",
                    "psnr": "dB, from the clip's mean squared error (RGB 0..1)",
                    "ssim": "skimage structural_similarity defaults on RGB: 7x7 uniform window, sample covariance, "
                            "mean per channel, 3-px border excluded",
                    "face": "face_* over the convex hull of the real frame's 478 landmarks grown 10% about its centroid",
                    "akd": "mean distance of 478 re-detected landmarks, output vs real frame, in pixels of a 256x256 frame",
                    "aed": "L2 between dlib 128-d descriptors (output vs real frame), every aed_every-th frame",
                    "identity_distance": "dlib descriptor L2, output frames vs the portrait (< 0.6 same person)",
                    "driver_identity_distance": "the same for the driver's own face: what a face swap would score",
                    "motion_r": "Pearson r driver vs output of re-detected mouth opening, eye opening, yaw, pitch, roll; "
                                "mean of the five (0 for a still output)",
                    "tracker_r": "the same r, driver vs the landmarks the live tracker gave the engine (video-mode "
                                 "Face Mesh, smoothed): motion lost before rendering; motion_r near it lost none after",
                    "pose_r": "the same r, driver vs the avatar landmarks the retargeting made of the tracked ones (what "
                              "the engine is asked to draw): below tracker_r, lost in retargeting; motion_r below "
                              "pose_r, lost in rendering and re-detection",
                    "jitter": "mean |p[t-1] - 2p[t] + p[t+1]| of re-detected landmarks, % of face width",
                    "jitter_excess": "output jitter minus the driver's (MediaPipe's own noise differs between a video "
                                     "and a portrait: see detector_jitter)",
                    "detector_jitter": "jitter of the first output frame moved rigidly along the avatar's head path "
                                       "(no render, no expression): MediaPipe's own instability on this portrait; output "
                                       "jitter near it is the detector's, not shimmer",
                    "face_found": "fraction of output frames where MediaPipe re-detects a face",
                    "references": "static: the first frame unchanged; delaunay: the first frame warped over the Delaunay "
                                  "triangulation of its landmarks onto each frame's true landmarks; oracle: the first "
                                  "frame warped by DIS optical flow from the real frame itself (it sees the answer)",
                    "means": "summary = mean over clips (self) and over portrait pairs (cross)",
                },
            },
            "seconds": bench.seconds,
            "clips": results["self"],
            "cross": results["cross"],
            "files": {"report": str(args.out / "report.json"), "contact_sheet": str(sheet_path)},
        })
        (args.out / "report.json").write_text(json.dumps(report, indent=1))
    except (BenchmarkError, AvatarcamError) as e:
        print(f"quality: error: {e}", file=sys.stderr)
        return 1
    finally:
        if bench is not None:
            bench.close()
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report["summary"])
        print(f"report: {args.out / 'report.json'}\ncontact sheet: {sheet_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
