"""Loading still images (the avatar portrait, still drivers) as RGB uint8 arrays."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from avatarcam.errors import AvatarcamError, one_line

# A portrait never needs more than this; anything larger is far more likely a mistake (or a
# hostile "decompression bomb") than a face, and decoding it would eat gigabytes of memory.
MAX_PIXELS = 50_000_000
# Nor a side longer than this: Face Mesh aborts the whole process (no Python exception) on
# an image 32767 pixels or more across, and OpenCV's remap refuses one.
MAX_SIDE = 16384
# Below this no face detector finds anything, so fail early with a clear reason.
MIN_SIDE = 32


def load_image(path: str | os.PathLike, *, what: str = "face image") -> np.ndarray:
    """Read an image file as an RGB uint8 array of shape (H, W, 3), C-contiguous.

    EXIF orientation is applied, transparency is composited over white and high bit
    depths are scaled down to 8 bits. ``what`` names the image in error messages.
    """
    p = Path(path)
    if not p.exists():
        raise AvatarcamError(f"{what} not found: {p}")
    if p.is_dir():
        raise AvatarcamError(f"{p} is a directory, not an image file; give the path of a JPEG, PNG or WebP {what}")
    try:
        if p.stat().st_size == 0:
            raise AvatarcamError(f"{p} is an empty file, not an image; give the path of a JPEG, PNG or WebP {what}")
    except OSError as exc:
        raise AvatarcamError(f"{p} cannot be read ({exc.strerror or _one_line(exc)})") from None
    try:
        # Turn Pillow's soft bomb warning into an error so that nothing between
        # MAX_IMAGE_PIXELS and twice that slips through with only a printed warning.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                _check_pixels(p, img.size)
                # Decode everything now so that truncated or corrupt files fail here,
                # not later inside the engine.
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb8(img)
    except AvatarcamError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise AvatarcamError(
            f"{p} is too large to be a portrait (more than {MAX_PIXELS // 1_000_000} megapixels); "
            "use a smaller image"
        ) from None
    except UnidentifiedImageError:
        raise AvatarcamError(f"{p} is not a readable image (not a format Pillow recognises); use a JPEG, PNG or WebP file") from None
    except PermissionError:
        raise AvatarcamError(f"{p} cannot be read (permission denied)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports truncation and corrupt data as OSError/ValueError/SyntaxError.
        raise AvatarcamError(f"{p} is not a readable image ({_one_line(exc)}); re-save or re-export it") from None

    h, w = rgb.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise AvatarcamError(
            f"{p} is {w}x{h} pixels, too small to hold a face; use an image of at least {MIN_SIDE}x{MIN_SIDE} (ideally 512 or more)"
        )
    return rgb


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    """Refuse images whose header declares more than MAX_PIXELS, or a side longer than
    MAX_SIDE, before decoding them."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise AvatarcamError(
            f"{path} is {w}x{h} pixels, too large to be a portrait (limit {MAX_PIXELS // 1_000_000} megapixels); "
            "use a smaller image"
        )
    if max(w, h) > MAX_SIDE:
        raise AvatarcamError(
            f"{path} is {w}x{h} pixels, too large to be a portrait (limit {MAX_SIDE} pixels on a side); "
            "crop or scale it down"
        )


def _one_line(exc: BaseException) -> str:
    """``exc``'s message as one line, or its type's name where it has none."""
    return one_line(exc) or type(exc).__name__


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an RGB uint8 array, compositing alpha over white."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _grey_to_rgb(_scale_high_depth(np.asarray(img)))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        # Float images in [0, 1] are the common case; otherwise treat them as 8-bit values.
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        grey = np.clip(np.nan_to_num(arr) * scale + 0.5, 0, 255).astype(np.uint8)
        return _grey_to_rgb(grey)

    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in img.info
    )
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"))
        return _over_white(rgba)
    if mode != "RGB":
        # Covers L, 1, P, CMYK, YCbCr, LAB, HSV: Pillow's converters do the right thing.
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img), dtype=np.uint8)


def _scale_high_depth(arr: np.ndarray) -> np.ndarray:
    """Map 16-bit (or 32-bit int) grey values to 8 bits by dividing by 256, not clipping."""
    wide = arr.astype(np.int64)
    if wide.max(initial=0) <= 255 and arr.dtype != np.uint16:
        # Mode "I" images that only hold 8-bit values (e.g. converted from L) stay as-is.
        return np.clip(wide, 0, 255).astype(np.uint8)
    return (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite straight-alpha RGBA over a white background (rounded integer maths)."""
    rgb = rgba[:, :, :3].astype(np.uint16)
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return np.ascontiguousarray(out.astype(np.uint8))
