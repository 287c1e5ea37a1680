"""Counter-based Gaussian noise: every draw is a pure function of (seed, block, step, attempt).

Drawing from one sequential generator would make block 7's noise depend on how many draws came before, so a
regeneration (or any change in control flow) would shift every later block. Keyed draws keep a baseline run and
a run with TokenTrim reviewing blocks bit-identical wherever they make the same decisions. Noise is drawn on the
CPU in float32, so the same seed gives the same video on any device.
"""

from __future__ import annotations

import numpy as np
import torch


class NoiseSource:
    """Keyed Gaussian noise of one run (module docstring).

    Args:
        seed: the run's seed.
        shape: (B, C, F, H, W) of one block's latents.
        device: where draws are returned (they are made on the CPU).
        fresh_on_retry: a regenerated block draws new noise (TokenTrim's ``noise: fresh``) instead of the same.
    """

    def __init__(self, seed: int, shape: tuple[int, ...], device="cpu", fresh_on_retry: bool = False):
        self.seed = int(seed)
        self.shape = tuple(shape)
        self.device = device
        self.fresh_on_retry = fresh_on_retry

    def draw(self, block: int, step: int, attempt: int = 0, frames: int | None = None) -> torch.Tensor:
        """Noise for ``block`` at denoising ``step``: a pure function of the arguments and the seed.

        Args:
            block: block index.
            step: denoising step (0: the initial sample; -1: the context pass).
            attempt: regeneration attempt (counts only with ``fresh_on_retry``).
            frames: latent frames of the draw, when not the block's (a partial block).

        Returns:
            (B, C, F, H, W) float32 on ``device``.
        """
        key = [self.seed, block, step + 1, attempt if self.fresh_on_retry else 0]
        state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint64)[0]
        gen = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
        shape = self.shape if frames is None else self.shape[:2] + (frames,) + self.shape[3:]
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(self.device)
