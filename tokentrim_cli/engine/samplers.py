"""The two autoregressive samplers, as generators of finished latent blocks.

Both follow the reference loops: the model predicts the flow velocity v, x0 = x_t - sigma_t * v, and between
steps x0 is re-noised, x_next = (1 - sigma_next) x0 + sigma_next * eps. With ``solver="renoise"`` (the
references, for distilled few-step models whose x0 is a sample) eps is fresh Gaussian noise. With
``solver="euler"`` eps is the noise the model sees, x_t + (1 - sigma_t) v, which makes the step the
flow-matching Euler step: a model trained only by flow matching predicts the mean x0, and fresh noise at every
step would wash out whatever it has not committed to (small objects vanish). A finished block is written into
the cache by a write pass at t = ``context_noise`` (0 by default).

What to sample is a :class:`BlockSteps`; how a caller takes part is a :class:`Hooks`:

- ``reviewer`` (TokenTrim, or None) may look at a candidate block, prune the cache and ask for the block to be
  generated again; the samplers call it only at the moments the method defines.
- ``before_block`` (or None) is called with a block's index just before the sampler first runs the model on it
  (Self Forcing: before its first step; Rolling Forcing: before the forward that admits it to the window); a
  caller changes the prompt or the cache there (prompt timelines, ``engine/switch.py``).
- ``state`` (a :class:`LoopState`) is where a sampler stands between two blocks: it is up to date whenever a
  block is yielded, and a sampler given one that a previous run left goes on from there (exact resume: the cache
  is rebuilt separately, ``engine/journal.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch

from .cache import KVCache
from .journal import write_pass
from .model import CausalWan
from .noise import NoiseSource


@dataclass
class Block:
    """One finished latent block and what happened while making it."""

    index: int
    latent_frames: list[int]  # the block's absolute latent frame indices
    latents: torch.Tensor  # (B, C, len(latent_frames), h, w) float32, normalised latent space
    record: dict = field(default_factory=dict)  # filled by the reviewer: drift, threshold, regenerations, ...
    state: object | None = None  # the run's resumable state right after this block (``run/state.BlockState``)


@dataclass
class WindowEntry:
    """A block in Rolling Forcing's window: its noisy latents ``x`` (B, C, block_frames, h, w) at noise level
    ``sigmas[step]``, on its ``attempt``-th generation."""

    block: int
    x: torch.Tensor
    step: int = 0
    attempt: int = 0


@dataclass
class LoopState:
    """What a sampler carries from one block to the next besides the cache and the reviewer."""

    next_block: int = 0  # the next block to start (Rolling Forcing: to admit to the window)
    window: list[WindowEntry] = field(default_factory=list)  # Rolling Forcing's blocks in flight, oldest first


class Reviewer(Protocol):
    measure_at: str  # "final" or "first_step"

    def review(self, block: int, latents: torch.Tensor, cache: KVCache, attempt: int) -> bool:
        """Return True to regenerate ``block`` (the reviewer has already pruned the cache)."""

    def accept(self, block: int, latents: torch.Tensor) -> dict:
        """The block is final; return its record for the event stream."""


@dataclass(frozen=True)
class BlockSteps:
    """What a sampler makes.

    Args:
        num_blocks: blocks to yield (indices 0 .. num_blocks - 1).
        sigmas: (S,) the noise levels in [0, 1], highest first (Rolling Forcing: S is the window's length).
        block_frames: latent frames per block.
        context_noise: the timestep (0-1000) of a finished block's write pass.
        start_frame: the latent frame index of block 0's first frame (frames before it are context).
        solver: ``renoise`` (fresh noise between steps) or ``euler`` (the noise the model sees).
        first_sigmas: (S0,) the levels of block 0 alone, when they differ (Self Forcing only; Causal Forcing++'s
            1- and 2-step models denoise the first block in 4 steps).
    """

    num_blocks: int
    sigmas: torch.Tensor
    block_frames: int = 3
    context_noise: float = 0.0
    start_frame: int = 0
    solver: str = "renoise"
    first_sigmas: torch.Tensor | None = None

    def frames_of(self, block: int, count: int = 1) -> torch.Tensor:
        """(count * block_frames,) the latent frame indices of ``count`` blocks from ``block`` on."""
        f0 = self.start_frame + block * self.block_frames
        return torch.arange(f0, f0 + count * self.block_frames)


@dataclass
class Hooks:
    """How a caller takes part in sampling (module docstring)."""

    reviewer: Reviewer | None = None
    before_block: Callable[[int], None] | None = None
    state: LoopState = field(default_factory=LoopState)


def _to_x0(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x - sigma * v.float()


def _renoise(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (1 - sigma) * x0 + sigma * eps


def _implied_noise(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The noise the model sees in x_t: re-noising x0 with it is the flow-matching Euler (ODE) step."""
    return x + (1 - sigma) * v.float()


def write_block(model, cache: KVCache, x0: torch.Tensor, latent_frames: torch.Tensor, noise: NoiseSource | None,
                block: int, context_noise: float) -> None:
    """The write pass of a finished block: ``x0`` re-noised to ``context_noise`` (when > 0, with the block's own
    noise) and written to ``cache``.

    Args:
        x0: (B, C, F, h, w) the clean latents.
        latent_frames: (F,) their absolute latent frame indices.
        noise: the run's noise source (unused when ``context_noise`` is 0).
        block: the noise key of the pass (the block's index; a lead's passes have their own keys).
        context_noise: the timestep, 0-1000.
    """
    sigma = context_noise / 1000.0
    x = _renoise(x0, noise.draw(block, -1, frames=x0.shape[2]), sigma) if sigma > 0 else x0
    write_pass(model, cache, x, torch.full((x0.shape[2],), float(context_noise)), latent_frames)


def _review(reviewer: Reviewer | None, at: str, block: int, x0: torch.Tensor, cache: KVCache, attempt: int) -> bool:
    """True when the reviewer, measuring ``at`` this moment, asks for the block again."""
    return reviewer is not None and reviewer.measure_at == at and reviewer.review(block, x0, cache, attempt)


def _denoise(model, cache, noise, steps: BlockSteps, reviewer, i: int, attempt: int) -> torch.Tensor | None:
    """Block ``i``'s attempt ``attempt``, denoised through its levels: (B, C, F, h, w) x0, or None when the
    reviewer asks for another attempt."""
    sigmas = (steps.first_sigmas if i == 0 and steps.first_sigmas is not None else steps.sigmas).float()
    frames = steps.frames_of(i)
    x = noise.draw(i, 0, attempt)
    for j, sigma in enumerate(sigmas):
        ts = torch.full((steps.block_frames,), float(sigma) * 1000.0)
        v = model(x, ts, frames, cache=cache, first_step=(j == 0))
        x0 = _to_x0(x, v, sigma)
        if j == 0 and _review(reviewer, "first_step", i, x0, cache, attempt):
            return None
        if j + 1 < len(sigmas):
            eps = noise.draw(i, j + 1, attempt) if steps.solver == "renoise" else _implied_noise(x, v, sigma)
            x = _renoise(x0, eps, sigmas[j + 1])
    return None if _review(reviewer, "final", i, x0, cache, attempt) else x0


@torch.no_grad()
def self_forcing(model: CausalWan, cache: KVCache, noise: NoiseSource, steps: BlockSteps,
                 hooks: Hooks | None = None) -> Iterator[Block]:
    """Self Forcing: each block is denoised in ``len(steps.sigmas)`` steps reading the cache, then written to it.

    Args:
        model: the causal transformer, its prompt set.
        cache: the self-attention cache the blocks read and are written to.
        noise: draws (B, C, block_frames, h, w) noise per (block, step, attempt).
        steps: what to make (:class:`BlockSteps`).
        hooks: the caller's reviewer, ``before_block`` and loop state (:class:`Hooks`).

    Yields:
        :class:`Block` with latents (B, C, block_frames, h, w), in order.
    """
    hooks = hooks if hooks is not None else Hooks()
    state, reviewer = hooks.state, hooks.reviewer
    for i in range(state.next_block, steps.num_blocks):
        if hooks.before_block is not None:
            hooks.before_block(i)
        attempt = 0
        while (x0 := _denoise(model, cache, noise, steps, reviewer, i, attempt)) is None:
            attempt += 1
        record = reviewer.accept(i, x0) if reviewer is not None else {}
        frames = steps.frames_of(i)
        write_block(model, cache, x0, frames, noise, i, steps.context_noise)
        state.next_block = i + 1
        yield Block(i, frames.tolist(), x0, record)


def _admit(steps: BlockSteps, hooks: Hooks, noise: NoiseSource) -> None:
    """Rolling Forcing: the next block enters the window at the highest noise level."""
    state = hooks.state
    if state.next_block < steps.num_blocks:
        b = state.next_block
        if hooks.before_block is not None:
            hooks.before_block(b)
        state.window.append(WindowEntry(b, noise.draw(b, 0)))
        state.next_block = b + 1


def _window_forward(model, cache, noise, steps: BlockSteps, reviewer, window: list[WindowEntry]):
    """One forward over the window, repeated while the reviewer asks for its candidate again:
    (x, v, level) of the forward that stands, level (1, 1, F, 1, 1) the noise level of each frame."""
    sigmas, last = steps.sigmas.float(), len(steps.sigmas) - 1
    frames = steps.frames_of(window[0].block, len(window))
    while True:
        x = torch.cat([w.x for w in window], dim=2)
        level = torch.cat([sigmas[w.step].repeat(steps.block_frames) for w in window])
        v = model(x, level * 1000.0, frames, cache=cache, first_step=True)
        level = level.view(1, 1, -1, 1, 1).to(x.device)  # the timesteps stay on the CPU (Guided reads them)
        if reviewer is None:
            return x, v, level
        # the reviewer sees a block either at its first step (newest) or when final (oldest)
        early = reviewer.measure_at == "first_step"
        k = len(window) - 1 if early else 0
        cand = window[k]
        if cand.step != (0 if early else last):
            return x, v, level
        x0 = _to_x0(x, v, level).split(steps.block_frames, dim=2)[k]
        if not reviewer.review(cand.block, x0, cache, cand.attempt):
            return x, v, level
        cand.attempt += 1
        if early:
            cand.x = noise.draw(cand.block, 0, cand.attempt)


@torch.no_grad()
def rolling_forcing(model: CausalWan, cache: KVCache, noise: NoiseSource, steps: BlockSteps,
                    hooks: Hooks | None = None) -> Iterator[Block]:
    """Rolling Forcing: a window of ``len(steps.sigmas)`` blocks at staggered noise levels, one forward per window.

    Each forward admits a new block at the highest noise level; the oldest block, at the lowest level, is then
    final: it is emitted and written to the cache by a write pass. Attention inside the window is bidirectional;
    the cache supplies the context before the window (sink + last clean block in the preset).

    Args: as :func:`self_forcing` (``steps.first_sigmas`` is not used).

    Yields:
        :class:`Block` with latents (B, C, block_frames, h, w), in order.
    """
    hooks = hooks if hooks is not None else Hooks()
    state, reviewer, sigmas = hooks.state, hooks.reviewer, steps.sigmas.float()
    window = state.window
    while window or state.next_block < steps.num_blocks:
        _admit(steps, hooks, noise)
        x, v, level = _window_forward(model, cache, noise, steps, reviewer, window)
        x0s = _to_x0(x, v, level).split(steps.block_frames, dim=2)
        implied = (_implied_noise(x, v, level).split(steps.block_frames, dim=2) if steps.solver == "euler"
                   else [None] * len(window))  # renoise draws fresh noise below
        done = None
        if window[0].step == len(sigmas) - 1:
            done, final = window.pop(0), x0s[0].clone()  # its own storage, not a view of the whole prediction
            x0s, implied = x0s[1:], implied[1:]
            record = reviewer.accept(done.block, final) if reviewer is not None else {}
            frames = steps.frames_of(done.block)
            write_block(model, cache, final, frames, noise, done.block, steps.context_noise)
        for w, x0, eps in zip(window, x0s, implied):  # before the yield: ``state`` is whole while the caller has it
            w.step += 1
            if steps.solver == "renoise":
                eps = noise.draw(w.block, w.step, w.attempt)
            w.x = _renoise(x0, eps, sigmas[w.step])
        if done is not None:
            yield Block(done.block, frames.tolist(), final, record)


SAMPLERS = {"self_forcing": self_forcing, "rolling_forcing": rolling_forcing}
