"""The picture a video starts from (``generate --image``): read, fitted to the preset's frame, described.

Any size up to ``MAX_PIXELS`` of png / jpg / webp (whatever PIL reads; any mode, see :func:`to_rgb`) is resized,
aspect kept, so that it covers ``video.height`` x ``video.width`` (bicubic), then centre-cropped to exactly that
size; ``crop`` says what was cut, as (left, top, right, bottom) in the resized picture. A missing or unreadable file is a ConfigError (exit 2),
raised before anything loads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class StartImage:
    path: Path
    sha256: str
    size: tuple[int, int]  # the file's (width, height)
    resized: tuple[int, int]  # (width, height) after the resize that covers the frame
    crop: tuple[int, int, int, int]  # (left, top, right, bottom) of the frame in the resized picture
    pixels: np.ndarray  # (H, W, 3) uint8, the frame the video starts with (before the VAE)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "size": list(self.size),
                "crop": {"resized": list(self.resized), "box": list(self.crop), "mode": "cover, centre crop"}}

    def tensor(self):
        """(1, 3, 1, H, W) float32 in [-1, 1], the VAE's input range."""
        import torch  # not at the top: an image is checked before torch loads (a bad one answers at once)

        x = torch.from_numpy(self.pixels.copy()).float().div(127.5).sub(1.0)
        return x.permute(2, 0, 1)[None, :, None]


def fit(img, height: int, width: int):
    """Resize ``img`` (PIL, RGB) to cover height x width with its aspect kept, then centre-crop:
    (frame, resized (w, h), crop box in the resized picture). Done as one resize of the source region the box
    covers, so memory holds the frame, never the resized picture (a 1x5000 strip would be 256x1,280,000)."""
    from PIL import Image

    w, h = img.size
    scale = max(width / w, height / h)
    rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
    left, top = (rw - width) // 2, (rh - height) // 2
    box = (left, top, left + width, top + height)
    if (rw, rh) == (w, h):
        return img.crop(box), (rw, rh), box
    sx, sy = w / rw, h / rh  # the box in source pixels
    region = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
    return img.resize((width, height), Image.BICUBIC, box=region), (rw, rh), box


MAX_PIXELS = 100_000_000  # a start image's bound (10000 x 10000); larger ones are refused before they are decoded


def to_rgb(img):
    """``img`` (PIL, any mode) as 8-bit RGB: 16- and 32-bit grey scaled down (not clipped to white), a palette
    expanded, transparency composited over white."""
    import numpy as np
    from PIL import Image

    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and a.max(initial=0) > 255) else 255.0
        if img.mode == "F" and a.max(initial=0) <= 1.0:
            top = 1.0
        img = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def load_image(path: Path, height: int, width: int) -> StartImage:
    import warnings

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--image {path} does not exist" if not path.exists() else f"--image {path} is not a file")
    try:
        data = path.read_bytes()
        with warnings.catch_warnings():  # the size is checked here, in one line: not PIL's two-line warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ConfigError(f"--image {path} is {w}x{h}, over {MAX_PIXELS // 1_000_000} megapixels; "
                                      "scale it down first")
                img.load()
                rgb = to_rgb(img)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        why = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ConfigError(f"--image {path} is not a readable image ({why})") from None
    frame, resized, box = fit(rgb, height, width)
    return StartImage(path, hashlib.sha256(data).hexdigest(), rgb.size, resized, box, np.asarray(frame, np.uint8))
