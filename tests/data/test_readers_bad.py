"""``load_image_folder`` on images that are not 8-bit: deeper gray levels, floats, forged headers.

The references are the values written into the files (divided by the bit depth's maximum) and
Pillow's own conversion of 8-bit images.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from xai_feedback.data import load_image_folder
from xai_feedback.errors import DataError

Image = pytest.importorskip("PIL.Image")

LEVELS16 = np.array([[0, 1, 257, 1000], [32768, 40000, 65534, 65535]], dtype=np.uint16)


def _folder(tmp_path: Path, image: object, name: str = "a.png") -> Path:
    root = tmp_path / "root"
    (root / "only").mkdir(parents=True)
    image.save(root / "only" / name)  # type: ignore[attr-defined]
    return root


def test_16bit_png_is_scaled_by_65535(tmp_path: Path) -> None:
    image = Image.fromarray(LEVELS16)
    assert image.mode == "I;16"
    root = _folder(tmp_path, image)
    assert Image.open(root / "only" / "a.png").mode.startswith("I;16")
    expected = torch.from_numpy(LEVELS16.astype(np.float64) / 65535)
    gray = load_image_folder(root, mode="L", dtype=torch.float64).images
    assert gray.shape == (1, 1, 2, 4)
    torch.testing.assert_close(gray[0, 0], expected, rtol=0, atol=0)
    rgb = load_image_folder(root, dtype=torch.float64).images
    assert rgb.shape == (1, 3, 2, 4)
    for channel in range(3):
        torch.testing.assert_close(rgb[0, channel], expected, rtol=0, atol=0)
    # default float32: 65535 -> exactly 1.0, 0 -> 0.0, and distinct levels stay distinct
    gray32 = load_image_folder(root, mode="L").images[0, 0]
    assert gray32.dtype == torch.float32
    assert gray32.max().item() == 1.0 and gray32.min().item() == 0.0
    assert gray32.flatten().unique().numel() == 8


def test_16bit_resized_matches_the_8bit_image_it_encodes(tmp_path: Path) -> None:
    """A 16-bit image of levels 257 * v loads as the 8-bit image of levels v (resized too)."""
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, size=(6, 10), dtype=np.uint8)
    deep = _folder(tmp_path / "deep", Image.fromarray(eight.astype(np.uint16) * 257))
    flat = _folder(tmp_path / "flat", Image.fromarray(eight))
    for size in (None, (3, 5), 12):
        a = load_image_folder(deep, size=size, mode="L").images
        b = load_image_folder(flat, size=size, mode="L").images
        assert a.shape == b.shape
        # Pillow resizes 8-bit images in 8-bit (rounded), the 16-bit ones in float
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 if size is None else 1 / 255)
    constant = _folder(tmp_path / "const", Image.fromarray(np.full((5, 7), 30000, np.uint16)))
    resized = load_image_folder(constant, size=(9, 4), mode="L", dtype=torch.float64).images
    torch.testing.assert_close(
        resized, torch.full((1, 1, 9, 4), 30000 / 65535, dtype=torch.float64)
    )


def test_big_endian_16bit_and_32bit_integer_tiffs(tmp_path: Path) -> None:
    big = Image.fromarray(LEVELS16).convert("I").convert("I;16B")
    root = _folder(tmp_path / "b", big, "a.tif")
    assert Image.open(root / "only" / "a.tif").mode == "I;16B"
    got = load_image_folder(root, mode="L", dtype=torch.float64).images[0, 0]
    torch.testing.assert_close(got, torch.from_numpy(LEVELS16 / 65535), rtol=0, atol=0)

    wide = Image.fromarray(LEVELS16.astype(np.int32))
    root = _folder(tmp_path / "i", wide, "a.tif")
    assert Image.open(root / "only" / "a.tif").mode == "I"
    got = load_image_folder(root, mode="L", dtype=torch.float64).images[0, 0]
    torch.testing.assert_close(got, torch.from_numpy(LEVELS16 / 65535), rtol=0, atol=0)

    beyond = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
    root = _folder(tmp_path / "x", beyond, "a.tif")
    with pytest.raises(DataError, match=r"'I'.*\[0, 65535\].*a\.tif.*\[0, 70000\]"):
        load_image_folder(root)


def test_float_tiff_in_unit_range_is_read_as_floats(tmp_path: Path) -> None:
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    root = _folder(tmp_path, Image.fromarray(values), "a.tif")
    assert Image.open(root / "only" / "a.tif").mode == "F"
    got = load_image_folder(root, mode="L").images[0, 0]
    torch.testing.assert_close(got, torch.from_numpy(values), rtol=0, atol=0)
    assert got.max().item() == 1.0
    rgb = load_image_folder(root, size=6).images
    assert rgb.shape == (1, 3, 6, 6)
    assert 0 <= rgb.min().item() < rgb.max().item() <= 1


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        (np.array([[0.0, 2.0]], np.float32), r"\[0, 2\]"),
        (np.array([[-0.5, 0.5]], np.float32), r"\[-0\.5, 0\.5\]"),
        (np.array([[np.nan, 0.5]], np.float32), r"1 NaN or infinite"),
        (np.array([[0, 255]], np.float32), r"\[0, 255\]"),
    ],
)
def test_float_tiff_outside_unit_range_is_refused(
    tmp_path: Path, values: np.ndarray, shown: str
) -> None:
    root = _folder(tmp_path, Image.fromarray(values), "a.tif")
    with pytest.raises(DataError, match=rf"mode 'F'.*a\.tif.*{shown}"):
        load_image_folder(root, mode="L")


def _forged_png(path: Path, width: int, height: int) -> None:
    """A valid 2x2 PNG whose IHDR then claims ``width x height`` (CRC fixed, data unchanged)."""
    Image.new("L", (2, 2)).save(path)
    raw = bytearray(path.read_bytes())
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


def test_png_header_claiming_a_huge_size_is_a_data_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "only").mkdir(parents=True)
    bomb = root / "only" / "bomb.png"
    _forged_png(bomb, 30000, 30000)
    assert bomb.stat().st_size < 200
    with pytest.raises(Image.DecompressionBombError):  # Pillow refuses on the header alone
        Image.open(bomb)
    with pytest.raises(DataError, match=r"`root`.*bomb\.png.*MAX_IMAGE_PIXELS") as info:
        load_image_folder(root)
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)
    # the same file as a mask: the error names `masks`
    (root / "only" / "bomb.png").unlink()
    Image.new("L", (2, 2)).save(root / "only" / "bomb.png")
    masks = tmp_path / "masks"
    (masks / "only").mkdir(parents=True)
    _forged_png(masks / "only" / "bomb.png", 30000, 30000)
    with pytest.raises(DataError, match=r"`masks`.*bomb\.png"):
        load_image_folder(root, masks=masks)


def test_eight_bit_modes_follow_their_colors(tmp_path: Path) -> None:
    """Modes 1, L, LA, P, PA, RGB, RGBA, CMYK, LAB: the colors written, divided by 255."""
    bits = Image.fromarray(np.array([[True, False]]))
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (765 - 9))
    palette.putpixel((0, 0), 1)
    palette.putpixel((1, 0), 2)
    cases = {
        "1": (bits, "png", [[1, 1, 1], [0, 0, 0]]),
        "LA": (Image.new("LA", (2, 1), (51, 0)), "png", [[51 / 255] * 3] * 2),
        "P": (palette, "png", [[1, 0, 0], [0, 0, 1]]),
        "RGBA": (Image.new("RGBA", (2, 1), (255, 102, 0, 7)), "png", [[1, 0.4, 0]] * 2),
        "CMYK": (Image.new("CMYK", (2, 1), (255, 0, 0, 0)), "tif", [[0, 1, 1]] * 2),
    }
    for mode, (image, ext, colors) in cases.items():
        root = _folder(tmp_path / mode, image, f"a.{ext}")
        assert Image.open(root / "only" / f"a.{ext}").mode == mode
        got = load_image_folder(root).images[0]  # (3, 1, 2)
        expected = torch.tensor(colors, dtype=torch.float32).T.unsqueeze(1)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=mode)


def test_mode_pillow_cannot_convert_is_a_data_error(tmp_path: Path) -> None:
    root = _folder(tmp_path, Image.new("LAB", (2, 1)), "a.tif")
    assert Image.open(root / "only" / "a.tif").mode == "LAB"
    with pytest.raises(DataError, match=r"mode 'L'.*a\.tif.*mode 'LAB'"):
        load_image_folder(root, mode="L")
