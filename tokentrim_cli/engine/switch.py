"""Prompt switches between blocks: what happens to the self-attention cache when the prompt changes.

- ``recache`` (LongLive's KV re-cache): the cache is emptied and rebuilt by write passes, under the new
  prompt, over the latents of every finished block it still holds a frame of, oldest first, sink blocks
  included. Every policy then re-admits them by its own rules (windows, compression, sink), so the next block
  sees a context made wholly under the new prompt. Tokens TokenTrim pruned before the switch come back (they are
  rebuilt from the full latents of those blocks).
- ``keep``: only the cross-attention changes; the cache is left exactly as it is (pruning persists).
- ``cut``: the cache is emptied (nothing is kept) and the sink moves: the first ``sink_frames`` frames from the
  cut on become the new sink. Frame indices (RoPE positions) continue.
- ``rope_cut`` (Infinity-RoPE's scene cut; ``cache.policy: infinity_rope``): the cache is kept, and the next block
  is laid out with a jump in RoPE distance from its context (``InfinityRopeCache.rope_cut``).

The caller (the pipeline) sets the new prompt's cross-attention first and keeps the latents with
:class:`ContextLatents`. Knows no files and no terminals.
"""

from __future__ import annotations

import torch

from .cache import KVCache
from .noise import NoiseSource
from .samplers import Block, write_block


class ContextLatents:
    """The finished blocks' latents the cache may still hold: a block is kept while the cache has a token of
    one of its frames (so memory is bounded by what the cache can hold)."""

    def __init__(self):
        self.blocks: list[Block] = []

    def add(self, block: Block, cache: KVCache) -> None:
        """Keep a finished block; forget those the cache holds no frame of any more (after its write pass)."""
        self.blocks.append(block)
        held = set(cache.frames)
        self.blocks = [b for b in self.blocks if held.intersection(b.latent_frames)]

    def clear(self) -> None:
        """Forget every block (a hard cut)."""
        self.blocks = []


@torch.no_grad()
def recache(model, cache: KVCache, kept: ContextLatents, noise: NoiseSource, context_noise: float = 0.0) -> None:
    """Rebuild ``cache`` under the model's current prompt from the kept latents (see the module docstring).

    Args:
        model: the model, its new prompt set.
        cache: the cache to rebuild (emptied first).
        kept: the finished blocks it may still hold; trimmed to those it holds after the rebuild.
        noise: the run's noise (the context passes' draws).
        context_noise: the timestep of the context passes (the preset's ``sampler.context_noise``).
    """
    cache.reset()
    for b in sorted(kept.blocks, key=lambda b: b.latent_frames[0]):
        write_block(model, cache, b.latents, torch.tensor(b.latent_frames), noise, b.index, context_noise)
    held = set(cache.frames)
    kept.blocks = [b for b in kept.blocks if held.intersection(b.latent_frames)]


def cut(cache: KVCache, kept: ContextLatents | None, next_frame: int) -> None:
    """A hard cut: nothing cached survives; the sink starts at the cut.

    Args:
        cache: the cache to empty.
        kept: the kept latents, cleared too (None: not kept).
        next_frame: the absolute latent frame the next block starts at.
    """
    cache.reset(sink_origin=next_frame)
    if kept is not None:
        kept.clear()


def switch(mode: str, model, cache: KVCache, kept: ContextLatents | None, noise: NoiseSource, next_frame: int,
           context_noise: float = 0.0) -> None:
    """Apply a prompt switch after the new prompt has been set on ``model``.

    Args:
        mode: ``"recache"``, ``"keep"``, ``"cut"`` or ``"rope_cut"`` (module docstring).
        model, noise, context_noise: as :func:`recache`'s.
        cache: the run's cache.
        kept: the kept latents (needed by ``recache``).
        next_frame: the absolute latent frame the next block starts at.
    """
    if mode == "recache":
        recache(model, cache, kept, noise, context_noise)
    elif mode == "cut":
        cut(cache, kept, next_frame)
    elif mode == "rope_cut":
        cache.rope_cut(next_frame)
    elif mode != "keep":
        raise ValueError(f"unknown switch mode {mode!r}")
