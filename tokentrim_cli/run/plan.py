"""How many frames a request becomes, and where each block lies in time: the one place that converts between
seconds, pixel frames, latent frames and blocks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..config.checks import require_seconds
from ..config.settings import Config


@dataclass(frozen=True)
class Plan:
    """seconds -> pixel frames -> latent frames -> whole blocks, built once per request.

    Pixel frame p shows at p / fps. Latent frame 0 is 1 pixel frame, every later one ``temporal_ratio`` (the
    codec's, ``Codec.temporal_ratio``), so latent frame k > 0 starts at pixel 1 + (k - 1) x ``temporal_ratio``.

    ``start_frame`` 1 (``generate --image``): the video starts with a given picture, VAE-encoded as latent frame 0
    and written to the cache as context; the blocks are generated from latent frame 1, so the video is
    1 + ``temporal_ratio`` x ``latent_frames`` pixel frames before the trim to ``frames``.

    ``continued`` (``generate --extend``, ``start_frame`` N: the input's latent frames): the blocks continue a
    video; ``seconds`` and ``frames`` are the new part's only (time 0 at the seam), every new latent frame is
    ``temporal_ratio`` pixel frames, so the new part is ``temporal_ratio`` x ``latent_frames`` before the trim."""

    seconds: float
    fps: int
    frames: int  # pixel frames asked for; the video is trimmed to this
    latent_frames: int  # generated, a whole number of blocks
    blocks: int
    block_frames: int  # latent frames per block

    temporal_ratio: int = 4  # pixel frames per latent frame after the first
    start_frame: int = 0  # latent frames given before the first block (1: the --image frame; --extend: the input's)
    continued: bool = False  # the blocks continue a video (--extend): frames and seconds count from the seam

    @classmethod
    def for_seconds(cls, seconds: float, fps: int, block_frames: int, temporal_ratio: int = 4,
                    image: bool = False, extend: int = 0) -> "Plan":
        """``image``: the video starts from a picture; ``extend``: the latent frames of the video the blocks
        continue (0: none)."""
        require_seconds(seconds, "seconds")
        if fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps}")
        if image and extend:
            raise ValueError("a plan starts from an image or continues a video, not both")
        frames = max(1, round(seconds * fps))
        if extend:
            latent = math.ceil(frames / temporal_ratio)
        else:
            latent = (0 if image else 1) + math.ceil((frames - 1) / temporal_ratio)
        blocks = max(1, math.ceil(latent / block_frames))
        return cls(float(seconds), fps, frames, blocks * block_frames, blocks, block_frames, temporal_ratio,
                   extend or (1 if image else 0), bool(extend))

    @classmethod
    def for_preset(cls, seconds: float, cfg: Config, image: bool = False, extend: int = 0) -> "Plan":
        return cls.for_seconds(seconds, cfg.video.fps, cfg.sampler.block_frames, cfg.model.vae.temporal_ratio, image,
                               extend)

    def first_latent_frame(self, block: int) -> int:
        """The absolute latent frame index block ``block`` starts at."""
        return self.start_frame + block * self.block_frames

    def block_seconds(self, block: int) -> float:
        """When block ``block``'s first pixel frame is shown (from the seam when the blocks continue a video)."""
        if self.continued:
            return block * self.block_frames * self.temporal_ratio / self.fps
        latent = self.first_latent_frame(block)
        pixel = 0 if latent == 0 else 1 + (latent - 1) * self.temporal_ratio
        return pixel / self.fps

    @property
    def block_duration(self) -> float:
        """Seconds one block shows (after the first)."""
        return self.block_frames * self.temporal_ratio / self.fps

    def as_dict(self) -> dict:
        d = asdict(self)
        if not self.continued:
            del d["continued"]
        if not self.start_frame:  # a plain run's plan reads as before
            del d["start_frame"]
        elif self.continued:
            d["note"] = (f"the blocks continue the --extend video's {self.start_frame} latent frames (its context "
                         f"is written to the cache first); frames and seconds are the new part's")
        else:
            d["note"] = "the video starts with the image: latent frame 0 (1 pixel frame), written to the cache as " \
                         "context; the blocks are generated from latent frame 1"
        return d
