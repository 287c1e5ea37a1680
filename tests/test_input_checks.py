"""Untrusted input is checked before anything loads, bounded, and refused in one line that never echoes it
unbounded: start images of any mode and size, --extend videos, timelines, prompts files, preset values."""

import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from tokentrim_cli.errors import ConfigError
from tokentrim_cli.image import load_image

from test_cli import run_main


def png16(path, arr, size=None):
    """Write a 16-bit PNG of uint16 ``arr`` (H, W) grey or (H, W, 3) RGB; ``size``: claim this (w, h) in the
    header instead (the pixel data is then wrong: only the header is read before the size check)."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    w, h = size or (w, h)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------------------ --image
def test_a_16_bit_grey_png_keeps_its_brightness(tmp_path):
    """PIL's own RGB conversion clips 16-bit grey to white (issue 33 #8)."""
    pic = png16(tmp_path / "g.png", np.full((40, 60), 127 * 257, np.uint16))
    assert abs(load_image(pic, 64, 96).pixels.mean() - 127) < 1


def test_a_16_bit_rgb_png_keeps_its_colours(tmp_path):
    pic = png16(tmp_path / "c.png", np.dstack([np.full((40, 60), v * 257, np.uint16) for v in (200, 100, 50)]))
    assert np.abs(load_image(pic, 64, 96).pixels.mean((0, 1)) - [200, 100, 50]).max() < 1


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA"])
def test_transparency_is_composited_over_white(tmp_path, mode):
    """A transparent half shows white, whatever colour its hidden pixels hold; the opaque half its own."""
    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[:, :48] = (0, 0, 0, 255)  # opaque black left half
    rgba[:, 48:] = (0, 0, 0, 0)  # transparent right half (hidden black)
    img = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":
        img = img.convert("P")  # one palette entry is black; mark it transparent only where alpha was 0
        pal = Image.new("P", (96, 64))
        pal.putpalette([0, 0, 0, 1, 1, 1] + [0] * 762)
        pal.paste(1, (48, 0, 96, 64))
        pal.info["transparency"] = 1
        img = pal
    img.save(tmp_path / "t.png", **({"transparency": 1} if mode == "P" else {}))
    px = load_image(tmp_path / "t.png", 64, 96).pixels
    assert px[:, :40].max() < 5 and px[:, 56:].min() > 250


def test_a_thin_strip_is_cropped_before_it_is_resized(tmp_path, monkeypatch):
    """A 1x5000 picture must not be resized to 256x1,280,000 first (issue 33 #23): no resize asks for more
    pixels than the frame has."""
    Image.fromarray(np.full((5000, 1, 3), 90, np.uint8)).save(tmp_path / "strip.png")
    sizes = []
    original = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, size, *a, **k: sizes.append(size) or original(self, size, *a, **k))
    im = load_image(tmp_path / "strip.png", 256, 256)
    assert im.pixels.shape == (256, 256, 3) and abs(im.pixels.mean() - 90) < 1
    assert sizes and max(w * h for w, h in sizes) <= 256 * 256


def test_a_huge_image_is_refused_by_us_in_one_line_before_decoding(tmp_path):
    """Over the stated bound (100 megapixels): our one line, and never PIL's two-line warning (issue 33 #23)."""
    big = png16(tmp_path / "big.png", np.zeros((2, 2), np.uint16), size=(10001, 10000))
    over_pil = png16(tmp_path / "pil.png", np.zeros((2, 2), np.uint16), size=(9500, 9500))  # PIL warns from 89 MP
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError, match="10001x10000, over 100 megapixels"):
            load_image(big, 64, 96)
        with pytest.raises(ConfigError, match="not a readable image"):  # its data is 2x2: read, refused
            load_image(over_pil, 64, 96)
    assert not [w for w in seen if "DecompressionBomb" in type(w.message).__name__ or "decompression" in str(w.message)]
