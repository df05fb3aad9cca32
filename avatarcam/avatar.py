"""The avatar: face photos turned, once, into everything an engine needs, cached on disk."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from avatarcam import landmarks as lm
from avatarcam.errors import AvatarcamError

log = logging.getLogger(__name__)

# Bump when what prepare_avatar computes changes; old cache entries are then ignored.
AVATAR_FORMAT = 1


@dataclass
class Avatar:
    """A prepared avatar.

    ``image`` is the photo the engine renders from (the best of the photos given) and
    ``landmarks`` its face; ``proportions`` are sizes measured over *all* the photos
    (so one photo with half-closed eyes does not make the avatar squint), used to scale
    the driver's expressions to this face.
    """

    name: str
    image: np.ndarray  # RGB uint8 (H, W, 3)
    landmarks: np.ndarray  # (478, 3) pixels in ``image``
    proportions: dict[str, float]
    sources: list[str]
    key: str = ""
    engine_data: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def measure_proportions(points: np.ndarray) -> dict[str, float]:
    """Sizes of the face's parts, in pixels of the photo they were measured on."""
    return {
        "face_width": lm.face_width(points),
        "face_height": lm.face_height(points),
        "mouth_width": lm.mouth_width(points),
        "right_eye_width": lm.eye_width(points, "right"),
        "left_eye_width": lm.eye_width(points, "left"),
        "right_eye_height": lm.eye_height(points, "right"),
        "left_eye_height": lm.eye_height(points, "left"),
    }


def _photo_score(points: np.ndarray) -> float:
    """Lower is a better texture: frontal, eyes open, mouth closed."""
    yaw, pitch, _ = lm.head_angles(points)
    return abs(yaw) + 0.5 * abs(pitch) - 40.0 * lm.eye_opening(points) + 40.0 * lm.mouth_opening(points)


def build_avatar(images: Sequence[np.ndarray], names: Sequence[str],
                 detect: Callable[[np.ndarray], list[np.ndarray]]) -> Avatar:
    """Combine photos of one person into an avatar (few-shot): the best photo is the
    texture; proportions are the median over all photos, scaled to that texture."""
    faces = []
    for image, name in zip(images, names):
        found = detect(image)
        if not found:
            raise AvatarcamError(f"no face found in {name}; use a photo where the face is clearly visible and at least ~80 px "
                                 "wide, and in a large picture crop around the face")
        if len(found) > 1:
            log.warning("%s shows %d faces; using the largest", name, len(found))
        faces.append(found[0])
    best = int(np.argmin([_photo_score(f) for f in faces]))
    texture = faces[best]
    width = lm.face_width(texture)
    measured = [measure_proportions(f) for f in faces]
    proportions = {
        k: float(np.median([m[k] / m["face_width"] for m in measured])) * width for k in measured[0]
    }
    proportions["face_width"] = width
    return Avatar(name=Path(names[best]).stem, image=images[best], landmarks=texture,
                  proportions=proportions, sources=list(names))


def avatar_key(paths: Sequence[str | os.PathLike], engine_version: str) -> str:
    """Cache key: the photos' bytes, their order, and the versions of everything derived."""
    h = hashlib.sha256(f"avatar{AVATAR_FORMAT}|{engine_version}".encode())
    for p in paths:
        try:
            h.update(Path(p).read_bytes())
        except FileNotFoundError:
            raise AvatarcamError(f"face image not found: {p}") from None
        except IsADirectoryError:
            raise AvatarcamError(f"face image {p} is a directory; pass an image file") from None
        except OSError as e:
            raise AvatarcamError(f"cannot read face image {p}: {e.strerror}") from None
        h.update(b"|")
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    env = os.environ.get("AVATARCAM_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("avatarcam")) / "avatars"


class AvatarCache:
    """Prepared avatars on disk, one ``.npz`` per key, written atomically.

    Each entry records the format, key and engine version it was made for; an entry that
    is unreadable, truncated, or made for anything else is ignored (and later replaced),
    never trusted.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def load(self, key: str, engine_version: str | None = None) -> Avatar | None:
        """The cached avatar for ``key``, or None if there is no usable entry."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                stale = _stale_reason(z, key, engine_version)
                if stale is None:
                    meta_keys = [str(k) for k in z["proportion_keys"]]
                    avatar = Avatar(
                        name=str(z["name"]), image=z["image"], landmarks=z["landmarks"],
                        proportions=dict(zip(meta_keys, map(float, z["proportion_values"]))),
                        sources=[str(s) for s in z["sources"]], key=key,
                        engine_data={k[7:]: z[k] for k in z.files if k.startswith("engine_")})
                    stale = _invalid_reason(avatar)
        # Anything a damaged file makes numpy or zipfile raise (BadZipFile, CRC errors,
        # bad headers, short reads) means the same thing here: prepare the avatar again.
        except Exception as exc:  # noqa: BLE001
            log.warning("cached avatar %s is unreadable (%s); preparing it again", path, type(exc).__name__)
            return None
        if stale is not None:
            log.warning("cached avatar %s is %s; preparing it again", path, stale)
            return None
        return avatar

    def save(self, avatar: Avatar, engine_version: str = "") -> None:
        tmp: str | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            arrays: Mapping[str, np.ndarray] = {
                # "meta_", not "engine_": engine data is every member named engine_*.
                "meta_format": np.array(AVATAR_FORMAT), "meta_key": np.array(avatar.key),
                "meta_engine_version": np.array(engine_version),
                "name": np.array(avatar.name), "image": avatar.image, "landmarks": avatar.landmarks,
                "proportion_keys": np.array(list(avatar.proportions)),
                "proportion_values": np.array(list(avatar.proportions.values())),
                "sources": np.array(avatar.sources),
                **{f"engine_{k}": v for k, v in avatar.engine_data.items()},
            }
            # Write beside the target and rename: a reader never sees half a file, and two
            # processes preparing the same avatar both end with a whole one (the last rename wins).
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{avatar.key}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())  # the rename must not land before the data (power loss)
            os.replace(tmp, self.path(avatar.key))
            tmp = None
        except OSError as e:  # a read-only or full cache costs start-up time, never the run
            log.warning("could not cache the avatar in %s (%s)", self.directory, e.strerror or e)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def _stale_reason(z: Mapping[str, np.ndarray], key: str, engine_version: str | None) -> str | None:
    """Why a cache entry was made for something else, or None if it is for this."""
    if "meta_format" not in z or int(z["meta_format"]) != AVATAR_FORMAT:
        return "from another avatarcam version"
    if str(z["meta_key"]) != key:
        return "for other photos (its key does not match its file name)"
    cached_version = str(z["meta_engine_version"])
    if engine_version is not None and cached_version != engine_version:
        return f"for engine version {cached_version!r}, not {engine_version!r}"
    return None


def _invalid_reason(avatar: Avatar) -> str | None:
    """Why a cached avatar cannot be right (a damaged but readable file), or None."""
    image, points = avatar.image, avatar.landmarks
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 2:
        return "damaged (bad image)"
    if points.shape != (lm.NUM_LANDMARKS, 3) or not np.isfinite(points).all():
        return "damaged (bad landmarks)"
    values = np.array(list(avatar.proportions.values()), dtype=np.float64)
    if not avatar.proportions or not np.isfinite(values).all() or (values <= 0).any():
        return "damaged (bad proportions)"
    return None


def prepare_avatar(paths: Sequence[str | os.PathLike], *, engine_version: str,
                   prepare_engine_data: Callable[[Avatar], dict[str, np.ndarray]],
                   cache: AvatarCache | None = None) -> Avatar:
    """Load the avatar for these photos from the cache, or build and cache it."""
    if not paths:
        raise AvatarcamError("no face image given; pass one with --face PATH")
    cache = cache if cache is not None else AvatarCache()
    key = avatar_key(paths, engine_version)
    avatar = cache.load(key, engine_version)
    if avatar is not None:
        cache.hits += 1
        log.info("avatar %s loaded from cache %s", avatar.name, cache.path(key))
        return avatar
    cache.misses += 1
    from avatarcam.images import load_image
    from avatarcam.tracking import detect_faces

    images = [load_image(p) for p in paths]
    avatar = build_avatar(images, [str(p) for p in paths], detect_faces)
    avatar.key = key
    avatar.engine_data = prepare_engine_data(avatar)
    cache.save(avatar, engine_version)
    return avatar
