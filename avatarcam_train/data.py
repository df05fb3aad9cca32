"""Training data: talking-head videos -> face crops + MediaPipe landmarks, extracted once and
cached; episodes of K frames plus a target frame from one video (the paper's meta-learning).

A *video* is one of:
- a video file (.mp4 .mov .mkv .avi .webm .m4v) anywhere under the data folder;
- in VoxCeleb's layout (``root/id00012/<youtube id>/00001.mp4``), one YouTube id: its clips
  are pooled, as the paper draws an episode's frames from one video;
- a folder of images (frames or photos of one person).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatarcam.landmark_image import FaceCrop, draw_landmark_image, to_network

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
CACHE_FORMAT = 1


@dataclass
class VideoFrames:
    """Face crops of one video and their landmarks in crop pixels."""

    name: str
    frames: np.ndarray  # (N, S, S, 3) RGB uint8
    landmarks: np.ndarray  # (N, 478, 3) float32


def find_videos(root: str | os.PathLike) -> list[tuple[str, list[Path]]]:
    """(name, files) per video under ``root`` (a folder, or one video file)."""
    root = Path(root)
    if root.is_file():
        return [(root.stem, [root])]
    if not root.is_dir():
        raise FileNotFoundError(f"training data not found: {root}")
    groups: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        rel = path.relative_to(root)
        if suffix in VIDEO_SUFFIXES:
            # VoxCeleb: identity/youtube-id/clip.mp4 -> one video per youtube id.
            key = str(rel.parent) if len(rel.parts) == 3 else str(rel.with_suffix(""))
        elif suffix in IMAGE_SUFFIXES:
            key = str(rel.parent) if len(rel.parts) > 1 else rel.stem
        else:
            continue
        groups.setdefault(key, []).append(path)
    return sorted(groups.items())


def _read_frames(files: Sequence[Path], every: int, max_frames: int) -> Iterable[np.ndarray]:
    """RGB frames: every ``every``-th frame of the videos, all images, at most ``max_frames``."""
    count = 0
    for path in files:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                count += 1
                yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        else:
            capture = cv2.VideoCapture(str(path))
            index = 0
            try:
                while count < max_frames:
                    ok, image = capture.read()
                    if not ok:
                        break
                    if index % every == 0:
                        count += 1
                        yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                    index += 1
            finally:
                capture.release()
        if count >= max_frames:
            return


def extract_video(name: str, files: Sequence[Path], size: int, every: int = 5, max_frames: int = 200,
                  progress: bool = False) -> VideoFrames:
    """Track the face through the frames and keep ``size``-pixel crops around it."""
    from avatarcam.tracking import FaceTracker, detect_faces

    frames, points = [], []
    still = all(f.suffix.lower() in IMAGE_SUFFIXES for f in files)
    tracker = None if still else FaceTracker(smoothing=False)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_frames, desc=f"  {name}", unit="frame", leave=False)
    try:
        for i, image in enumerate(_read_frames(files, every, max_frames)):
            if tracker is not None:
                face = tracker.process(image, i / 30.0)
                found = None if face is None else face.raw
            else:
                faces = detect_faces(image, max_faces=1)
                found = faces[0] if faces else None
            if bar is not None:
                bar.update(1)
            if found is None:
                continue
            crop = FaceCrop.around(found, size)
            frames.append(crop.cut(image))
            points.append(crop.to_crop(found).astype(np.float32))
    finally:
        if tracker is not None:
            tracker.close()
        if bar is not None:
            bar.close()
    if not frames:
        return VideoFrames(name, np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 478, 3), np.float32))
    return VideoFrames(name, np.stack(frames), np.stack(points))


def default_cache_dir() -> Path:
    env = os.environ.get("AVATARCAM_TRAIN_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("avatarcam")) / "train-frames"


def _cache_key(files: Sequence[Path], size: int, every: int, max_frames: int) -> str:
    h = hashlib.sha256(f"frames{CACHE_FORMAT}|{size}|{every}|{max_frames}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def load_videos(root: str | os.PathLike, size: int, *, every: int = 5, max_frames: int = 200,
                cache_dir: str | os.PathLike | None = None, min_frames: int = 2,
                progress: bool = True) -> list[VideoFrames]:
    """All videos under ``root`` as face crops; each is extracted once and cached."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    found = find_videos(root)
    videos = []
    items = found
    if progress:
        from tqdm import tqdm

        items = tqdm(found, desc="extracting faces", unit="video")
    for name, files in items:
        path = cache / f"{_cache_key(files, size, every, max_frames)}.npz"
        video = None
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    video = VideoFrames(str(z["name"]), z["frames"], z["landmarks"])
            except (OSError, ValueError, KeyError, EOFError):
                video = None
        if video is None:
            video = extract_video(name, files, size, every, max_frames, progress=progress)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # torchrun ranks extract side by side
            np.savez(tmp, name=np.array(name), frames=video.frames, landmarks=video.landmarks)
            os.replace(tmp, path)
        if len(video.frames) >= min_frames:
            videos.append(video)
        else:
            log.warning("skipping %s: a face was found in only %d frames", name, len(video.frames))
    return videos


def landmark_tensor(points: np.ndarray, size: int) -> np.ndarray:
    return to_network(draw_landmark_image(points, size))


def warp_guide(source: np.ndarray, source_points: np.ndarray, target_points: np.ndarray) -> np.ndarray:
    """The warp engine's rendering of ``source`` (a crop) moved to ``target_points`` (crop
    pixels): what a warp-guided generator gets as extra input."""
    from avatarcam import landmarks as lm
    from avatarcam.avatar import Avatar, measure_proportions
    from avatarcam.engines.warp import WarpEngine
    from avatarcam.retarget import AvatarPose

    src = source_points.astype(np.float64)
    dst = target_points.astype(np.float64)
    avatar = Avatar("source", source, src, measure_proportions(src), [])
    avatar.engine_data = WarpEngine.prepare(avatar)
    stable = list(lm.STABLE)
    head, _ = cv2.estimateAffinePartial2D(src[stable, :2].astype(np.float32), dst[stable, :2].astype(np.float32))
    if head is None:
        head = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    return WarpEngine(avatar).render(AvatarPose(dst, head))


class EpisodeSampler:
    """Random episodes: K frames of a video (for the embedder) and one more as the target."""

    def __init__(self, videos: Sequence[VideoFrames], k: int, warp_guided: bool = False, seed: int = 0) -> None:
        if not videos:
            raise ValueError("no usable videos (no faces found)")
        self.videos = list(videos)
        self.k = k
        self.warp_guided = warp_guided
        self.rng = np.random.default_rng(seed)
        self.size = videos[0].frames.shape[1]

    def episode(self, index: int | None = None) -> dict[str, np.ndarray]:
        if index is None:
            index = int(self.rng.integers(len(self.videos)))
        video = self.videos[index]
        n = len(video.frames)
        picks = self.rng.choice(n, size=self.k + 1, replace=n < self.k + 1)
        src, tgt = picks[:-1], picks[-1]
        size = self.size
        out = {
            "frames": np.stack([to_network(video.frames[i]) for i in src]),
            "landmarks": np.stack([landmark_tensor(video.landmarks[i], size) for i in src]),
            "target": to_network(video.frames[tgt]),
            "target_landmarks": landmark_tensor(video.landmarks[tgt], size),
            "index": np.int64(index),
        }
        if self.warp_guided:
            guide = warp_guide(video.frames[src[0]], video.landmarks[src[0]], video.landmarks[tgt])
            out["target_landmarks"] = np.concatenate([out["target_landmarks"], to_network(guide)])
        return out

    def batch(self, batch_size: int) -> dict[str, np.ndarray]:
        episodes = [self.episode() for _ in range(batch_size)]
        return {key: np.stack([e[key] for e in episodes]) for key in episodes[0]}
