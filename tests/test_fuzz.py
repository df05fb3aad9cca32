"""Fuzzing the inputs a user (or a damaged disk) hands avatarcam: image files of any bytes,
damaged real images, odd but valid portraits, and damaged cache entries. Whatever comes
in, the result is a proper image / avatar or an AvatarcamError with one line, nothing
else. Example counts are kept small enough for CI; the seeds are fixed (derandomize)."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from avatarcam.avatar import Avatar, AvatarCache
from avatarcam.errors import AvatarcamError
from avatarcam.images import MIN_SIDE, load_image

pytestmark = pytest.mark.faults

FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
EXTENSIONS = [".jpg", ".jpeg", ".png", ".webp", ".bmp"]


def _astronaut(side: int = 96) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(_astronaut())
    if fmt == "PNG16":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
        fmt = "PNG"
    elif fmt == "CMYK":
        image, fmt = image.convert("CMYK"), "JPEG"
    image.save(buf, fmt)
    return buf.getvalue()


SEEDS = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP", "PNG16", "CMYK")}


def check_load(path: Path) -> None:
    """load_image either gives a proper RGB image or a one-line AvatarcamError."""
    try:
        image = load_image(path)
    except AvatarcamError as e:
        message = str(e)
        assert message and "\n" not in message and len(message) < 400, message
        event("refused")
        return
    event("loaded")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert min(image.shape[:2]) >= MIN_SIDE and image.flags["C_CONTIGUOUS"]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(FUZZ, max_examples=200)
@given(data=st.binary(max_size=3000), ext=st.sampled_from(EXTENSIONS))
def test_any_bytes_with_an_image_name(scratch, data, ext):
    path = scratch / f"any{ext}"
    path.write_bytes(data)
    check_load(path)


@settings(FUZZ, max_examples=300)
@given(
    fmt=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.floats(0, 1)),
    ext=st.sampled_from(EXTENSIONS),
)
def test_damaged_real_images(scratch, fmt, edits, cut, ext):
    raw = bytearray(SEEDS[fmt])
    for where, value in edits:  # overwrite bytes anywhere: headers, sizes, compressed data
        raw[int(where * len(raw))] = value
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    path = scratch / f"damaged{ext}"  # the name need not match the contents
    path.write_bytes(bytes(raw))
    check_load(path)


@settings(FUZZ, max_examples=12)
@given(
    scale=st.floats(0.15, 1.5),
    angle=st.floats(-60, 60),
    shift=st.tuples(st.floats(-0.4, 0.4), st.floats(-0.4, 0.4)),
    noise=st.floats(0, 40),
)
def test_avatar_preparation_from_altered_portraits(scratch, scale, angle, shift, noise):
    """A portrait shrunk, turned, moved partly out of frame and noisy: either a valid avatar
    (landmarks finite, inside the photo, sizes positive) or the one-line "no face" error."""
    from avatarcam.avatar import prepare_avatar
    from avatarcam.engines import WarpEngine

    rgb = _astronaut(512)
    m = cv2.getRotationMatrix2D((256, 256), angle, scale)
    m[:, 2] += (shift[0] * 512, shift[1] * 512)
    out = cv2.warpAffine(rgb, m, (512, 512), borderMode=cv2.BORDER_CONSTANT)
    rng = np.random.default_rng(int(scale * 1e6) % 2**32)
    out = np.clip(out + rng.normal(0, noise, out.shape), 0, 255).astype(np.uint8)
    path = scratch / "altered.png"
    Image.fromarray(out).save(path)
    cache = AvatarCache(scratch / "cache")
    try:
        avatar = prepare_avatar([str(path)], engine_version=WarpEngine.version,
                                prepare_engine_data=WarpEngine.prepare, cache=cache)
    except AvatarcamError as e:
        assert "\n" not in str(e) and "no face" in str(e), str(e)
        event("no face")
        return
    event("avatar")
    assert avatar.landmarks.shape == (478, 3) and np.isfinite(avatar.landmarks).all()
    xy = avatar.landmarks[:, :2]
    assert (xy > -0.25 * 512).all() and (xy < 1.25 * 512).all()
    assert all(v > 0 for v in avatar.proportions.values())
    assert avatar.engine_data, "the engine's data was not prepared"
    # And what was cached loads back as the same avatar.
    again = cache.load(avatar.key, WarpEngine.version)
    assert again is not None and np.array_equal(again.landmarks, avatar.landmarks)


@pytest.fixture(scope="module")
def cached_entry(tmp_path_factory, grace_avatar) -> tuple[Path, Avatar]:
    """A real avatar's cache entry, to be damaged."""
    from avatarcam.engines import WarpEngine

    folder = tmp_path_factory.mktemp("entry")
    cache = AvatarCache(folder)
    cache.save(grace_avatar, WarpEngine.version)
    return cache.path(grace_avatar.key), grace_avatar


@settings(FUZZ, max_examples=100)
@given(
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_damaged_cache_entry_is_never_trusted_and_never_crashes(scratch, cached_entry, edits, cut):
    from avatarcam.engines import WarpEngine

    source, avatar = cached_entry
    raw = bytearray(source.read_bytes())
    for where, value in edits:
        raw[int(where * len(raw))] = value
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    cache = AvatarCache(scratch / "damaged-cache")
    cache.directory.mkdir(exist_ok=True)
    cache.path(avatar.key).write_bytes(bytes(raw))
    loaded = cache.load(avatar.key, WarpEngine.version)
    event("trusted" if loaded is not None else "rebuilt")
    if loaded is not None:  # only when the damage missed everything that matters
        assert np.array_equal(loaded.landmarks, avatar.landmarks)
        assert np.array_equal(loaded.image, avatar.image)
        assert loaded.proportions == avatar.proportions
