"""The picture a video starts from (``generate --image``): read, fitted to the preset's frame, described.

Any size of png / jpg / webp (whatever PIL reads) is resized, aspect kept, so that it covers
``video.height`` x ``video.width`` (bicubic), then centre-cropped to exactly that size; ``crop`` says what was
cut, as (left, top, right, bottom) in the resized picture. A missing or unreadable file is a ConfigError (exit 2),
raised before anything loads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError


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

    def tensor(self) -> torch.Tensor:
        """(1, 3, 1, H, W) float32 in [-1, 1], the VAE's input range."""
        x = torch.from_numpy(self.pixels.copy()).float().div(127.5).sub(1.0)
        return x.permute(2, 0, 1)[None, :, None]


def fit(img, height: int, width: int):
    """Resize ``img`` (PIL, RGB) to cover height x width with its aspect kept, then centre-crop:
    (frame, resized (w, h), crop box)."""
    from PIL import Image

    w, h = img.size
    scale = max(width / w, height / h)
    rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
    resized = img.resize((rw, rh), Image.BICUBIC) if (rw, rh) != (w, h) else img
    left, top = (rw - width) // 2, (rh - height) // 2
    box = (left, top, left + width, top + height)
    return resized.crop(box), (rw, rh), box


def load_image(path: Path, height: int, width: int) -> StartImage:
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--image {path} does not exist" if not path.exists() else f"--image {path} is not a file")
    try:
        data = path.read_bytes()
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"--image {path} is not a readable image ({why})") from None
    frame, resized, box = fit(rgb, height, width)
    return StartImage(path, hashlib.sha256(data).hexdigest(), rgb.size, resized, box, np.asarray(frame, np.uint8))
