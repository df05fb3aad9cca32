"""load_image: formats, modes, orientation and one-line errors for bad inputs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from avatarcam.errors import AvatarcamError
from avatarcam.images import load_image


def grace_hopper_path() -> Path:
    """matplotlib's sample portrait; older versions return a path, newer a file object."""
    from matplotlib import cbook

    sample = cbook.get_sample_data("grace_hopper.jpg")
    name = getattr(sample, "name", sample)
    if hasattr(sample, "close"):
        sample.close()
    return Path(name)


def assert_rgb(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.dtype == np.uint8
    assert image.shape == (*shape, 3)
    assert image.flags["C_CONTIGUOUS"]


def assert_one_line_error(exc: pytest.ExceptionInfo[AvatarcamError]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_astronaut_formats(tmp_path: Path, ext: str) -> None:
    astronaut = data.astronaut()
    path = tmp_path / f"astronaut.{ext}"
    Image.fromarray(astronaut).save(path, quality=95)
    image = load_image(path)
    assert_rgb(image, astronaut.shape[:2])
    # Lossy formats are close, PNG is exact.
    diff = np.abs(image.astype(int) - astronaut).mean()
    assert diff == 0 if ext == "png" else diff < 4


def test_grace_hopper_jpeg() -> None:
    image = load_image(grace_hopper_path())
    assert_rgb(image, (600, 512))


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((64, 48, 4), np.uint8)
    rgba[..., 0] = 200  # red-ish everywhere
    rgba[:32, :, 3] = 255  # top half opaque, bottom half transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = load_image(path)
    assert_rgb(image, (64, 48))
    assert (image[:32] == [200, 0, 0]).all()
    assert (image[32:] == 255).all()


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([10, 20, 30, 0, 255, 0] + [0] * 762)
    img.paste(1, (0, 0, 40, 20))
    img.info["transparency"] = 1  # palette entry 1 (green) is transparent
    path = tmp_path / "pal.png"
    img.save(path, transparency=1)
    image = load_image(path)
    assert_rgb(image, (40, 40))
    assert (image[:20] == 255).all()
    assert (image[20:] == [10, 20, 30]).all()


def test_grey_png(tmp_path: Path) -> None:
    grey = (np.arange(64 * 80) % 256).astype(np.uint8).reshape(64, 80)
    path = tmp_path / "grey.png"
    Image.fromarray(grey, "L").save(path)
    image = load_image(path)
    assert_rgb(image, (64, 80))
    assert (image == grey[:, :, None]).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(data.astronaut()).convert("CMYK").save(path, quality=95)
    image = load_image(path)
    assert_rgb(image, (512, 512))
    assert np.abs(image.astype(int) - data.astronaut()).mean() < 8


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey16 = (np.arange(48 * 64, dtype=np.uint32) * 21 % 65536).astype(np.uint16).reshape(48, 64)
    path = tmp_path / "grey16.png"
    Image.fromarray(grey16).save(path)
    image = load_image(path)
    assert_rgb(image, (48, 64))
    assert (image[..., 0] == (grey16 >> 8)).all()


def test_16bit_rgb_png(tmp_path: Path) -> None:
    rgb16 = data.astronaut().astype(np.uint16) * 257  # full 16-bit range
    path = tmp_path / "rgb16.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    image = load_image(path)
    assert_rgb(image, (512, 512))
    assert (image == data.astronaut()).all()


def test_exif_orientation_applied(tmp_path: Path) -> None:
    rgb = np.zeros((60, 100, 3), np.uint8)  # wide image with a red left edge
    rgb[:, :10] = [255, 0, 0]
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    image = load_image(path)
    assert_rgb(image, (100, 60))  # now tall
    # The red left edge ends up at the top after a clockwise turn.
    assert image[:8, :, 0].mean() > 200 and image[-8:, :, 0].mean() < 50


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AvatarcamError) as exc:
        load_image(tmp_path / "nope.jpg")
    assert assert_one_line_error(exc).startswith("face image not found:")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(AvatarcamError) as exc:
        load_image(tmp_path)
    assert "directory" in assert_one_line_error(exc)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(AvatarcamError) as exc:
        load_image(path)
    assert "is not a readable image" in assert_one_line_error(exc)


def test_truncated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "full.jpg"
    Image.fromarray(data.astronaut()).save(path, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AvatarcamError) as exc:
        load_image(cut)
    assert "is not a readable image" in assert_one_line_error(exc)


def test_tiny_image(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    Image.new("RGB", (10, 10), "white").save(path)
    with pytest.raises(AvatarcamError) as exc:
        load_image(path)
    assert "too small to hold a face" in assert_one_line_error(exc)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares a huge size, with a tiny (invalid) body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [100_000, 8_000])  # beyond Pillow's own limit, and only beyond ours
def test_decompression_bomb(tmp_path: Path, side: int) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))
    with pytest.raises(AvatarcamError) as exc:
        load_image(path)
    assert "too large" in assert_one_line_error(exc)


@pytest.mark.parametrize("width, height", [(40_000, 600), (600, 33_000)])
def test_a_side_face_mesh_cannot_take_is_refused(tmp_path: Path, width: int, height: int) -> None:
    # Few megapixels, but Face Mesh aborts the process (no exception to catch) on a side of
    # 32767 pixels or more.
    path = tmp_path / "panorama.png"
    path.write_bytes(_png_header_only(width, height))
    with pytest.raises(AvatarcamError) as exc:
        load_image(path)
    message = assert_one_line_error(exc)
    assert "too large" in message and f"{width}x{height}" in message
