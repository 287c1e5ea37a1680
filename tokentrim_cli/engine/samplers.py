"""The two autoregressive samplers, as generators of finished latent blocks.

Both follow the reference loops: the model predicts the flow velocity v, x0 = x_t - sigma_t * v, and between
steps x0 is re-noised, x_next = (1 - sigma_next) x0 + sigma_next * eps. With ``solver="renoise"`` (the
references, for distilled few-step models whose x0 is a sample) eps is fresh Gaussian noise. With
``solver="euler"`` eps is the noise the model sees, x_t + (1 - sigma_t) v, which makes the step the
flow-matching Euler step: a model trained only by flow matching predicts the mean x0, and fresh noise at every
step would wash out whatever it has not committed to (small objects vanish). A finished block is written into
the cache by a context forward at t = ``context_noise`` (0 by default).

A ``reviewer`` (TokenTrim, or None) may look at a candidate block, prune the cache and ask for
the block to be generated again; the samplers only call it at the moments the method defines and otherwise
know nothing about it. ``before_block`` (or None) is called with a block's index just before the sampler
first runs the model on it (Self Forcing: before its first step; Rolling Forcing: before the forward that admits
it to the window); a caller changes the prompt or the cache there (prompt timelines, ``engine/switch.py``).

``num_blocks`` is an int, or a callable read again before each block (a live run's length grows while it runs).

``state`` (a :class:`LoopState`, or None) is where a sampler stands between two blocks: it is up to date whenever
a block is yielded, and a sampler given one that a previous run left goes on from there (exact resume: the cache
is rebuilt separately, ``engine/journal.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch

from .cache import KVCache
from .journal import context_pass
from .model import CausalWan
from .noise import NoiseSource


@dataclass
class Block:
    """One finished latent block and what happened while making it."""

    index: int
    frames: list[int]
    latents: torch.Tensor  # (B, C, F, H, W) float32, normalised latent space
    record: dict = field(default_factory=dict)  # filled by the reviewer: drift, threshold, regenerations, ...
    state: dict | None = None  # the run's resumable state right after this block (pipeline.generate_blocks)


@dataclass
class LoopState:
    """What a sampler carries from one block to the next besides the cache and the reviewer."""

    next_block: int = 0  # the next block to start (Rolling Forcing: to admit to the window)
    window: list[dict] = field(default_factory=list)  # Rolling Forcing's blocks in flight: block, x, step, attempt


class Reviewer(Protocol):
    measure_at: str  # "final" or "first_step"

    def review(self, block: int, latents: torch.Tensor, cache: KVCache, attempt: int) -> bool:
        """Return True to regenerate ``block`` (the reviewer has already pruned the cache)."""

    def accept(self, block: int, latents: torch.Tensor) -> dict:
        """The block is final; return its record for the event stream."""


def _to_x0(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x - sigma * v.float()


def _renoise(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (1 - sigma) * x0 + sigma * eps


def _implied_noise(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The noise the model sees in x_t: re-noising x0 with it is the flow-matching Euler (ODE) step."""
    return x + (1 - sigma) * v.float()


def _count(num_blocks: int | Callable[[], int]) -> int:
    return num_blocks() if callable(num_blocks) else num_blocks


def write_context(model, cache, x0, frames, noise, block, context_noise):
    sigma = context_noise / 1000.0
    x = _renoise(x0, noise.draw(block, -1, frames=x0.shape[2]), sigma) if sigma > 0 else x0
    context_pass(model, cache, x, torch.full((x0.shape[2],), float(context_noise)), frames)


@torch.no_grad()
def self_forcing(
    model: CausalWan,
    cache: KVCache,
    noise: NoiseSource,
    num_blocks: int | Callable[[], int],
    sigmas: torch.Tensor,
    block_frames: int = 3,
    context_noise: float = 0.0,
    reviewer: Reviewer | None = None,
    start_frame: int = 0,
    solver: str = "renoise",
    before_block: Callable[[int], None] | None = None,
    state: LoopState | None = None,
    first_sigmas: torch.Tensor | None = None,
) -> Iterator[Block]:
    """Self Forcing: each block is denoised in ``len(sigmas)`` steps reading the cache, then written to it.

    ``first_sigmas``: the levels of block 0 alone, when they differ (Causal Forcing++'s 1- and 2-step models denoise
    the first block in 4 steps, ``denoising_step_list_first_chunk`` in thu-ml/Causal-Forcing)."""
    state = state if state is not None else LoopState()
    i = state.next_block - 1
    while (i := i + 1) < _count(num_blocks):
        sigmas_i = (first_sigmas if i == 0 and first_sigmas is not None else sigmas).float()
        frames = torch.arange(start_frame + i * block_frames, start_frame + (i + 1) * block_frames)
        if before_block is not None:
            before_block(i)
        attempt = 0
        while True:
            x = noise.draw(i, 0, attempt)
            retry = False
            for j, sigma in enumerate(sigmas_i):
                ts = torch.full((block_frames,), float(sigma) * 1000.0)
                v = model(x, ts, frames, cache=cache, first_step=(j == 0))
                x0 = _to_x0(x, v, sigma)
                if reviewer is not None and j == 0 and reviewer.measure_at == "first_step":
                    if reviewer.review(i, x0, cache, attempt):
                        retry = True
                        break
                if j + 1 < len(sigmas_i):
                    eps = noise.draw(i, j + 1, attempt) if solver == "renoise" else _implied_noise(x, v, sigma)
                    x = _renoise(x0, eps, sigmas_i[j + 1])
            if not retry and reviewer is not None and reviewer.measure_at == "final":
                retry = reviewer.review(i, x0, cache, attempt)
            if not retry:
                break
            attempt += 1
        record = reviewer.accept(i, x0) if reviewer is not None else {}
        write_context(model, cache, x0, frames, noise, i, context_noise)
        state.next_block = i + 1
        yield Block(i, frames.tolist(), x0, record)


@torch.no_grad()
def rolling_forcing(
    model: CausalWan,
    cache: KVCache,
    noise: NoiseSource,
    num_blocks: int | Callable[[], int],
    sigmas: torch.Tensor,
    block_frames: int = 3,
    context_noise: float = 0.0,
    reviewer: Reviewer | None = None,
    start_frame: int = 0,
    solver: str = "renoise",
    before_block: Callable[[int], None] | None = None,
    state: LoopState | None = None,
) -> Iterator[Block]:
    """Rolling Forcing: a window of ``len(sigmas)`` blocks at staggered noise levels, one forward per window.

    Each forward admits a new block at the highest noise level; the oldest block, at the lowest level, is then
    final: it is emitted and written to the cache by a context pass. Attention inside the window is
    bidirectional; the cache supplies the context before the window (sink + last clean block in the preset).
    """
    sigmas = sigmas.float()
    steps = len(sigmas)
    state = state if state is not None else LoopState()
    window = state.window  # oldest first: {"block", "x", "step", "attempt"}
    while window or state.next_block < _count(num_blocks):
        if state.next_block < _count(num_blocks):
            b = state.next_block
            if before_block is not None:
                before_block(b)
            window.append({"block": b, "x": noise.draw(b, 0), "step": 0, "attempt": 0})
            state.next_block = b + 1
        f0 = start_frame + window[0]["block"] * block_frames
        frames = torch.arange(f0, f0 + len(window) * block_frames)
        while True:
            x = torch.cat([w["x"] for w in window], dim=2)
            level = torch.cat([sigmas[w["step"]].repeat(block_frames) for w in window])
            v = model(x, level * 1000.0, frames, cache=cache, first_step=True)
            level = level.view(1, 1, -1, 1, 1).to(x.device)  # the timesteps stay on the CPU (Guided reads them)
            x0s = _to_x0(x, v, level).split(block_frames, dim=2)
            # the reviewer sees a block either at its first step (newest) or when final (oldest)
            if reviewer is None:
                break
            cand = window[-1] if reviewer.measure_at == "first_step" else window[0]
            if cand["step"] != (0 if reviewer.measure_at == "first_step" else steps - 1):
                break
            k = window.index(cand)
            if not reviewer.review(cand["block"], x0s[k], cache, cand["attempt"]):
                break
            cand["attempt"] += 1
            if reviewer.measure_at == "first_step":
                cand["x"] = noise.draw(cand["block"], 0, cand["attempt"])
        implied = (_implied_noise(x, v, level).split(block_frames, dim=2) if solver == "euler"
                   else [None] * len(window))  # renoise draws fresh noise below
        for w, x0, eps in zip(window, x0s, implied):
            w["x0"], w["eps"] = x0, eps
        done = None
        if window[0]["step"] == steps - 1:
            done = window.pop(0)
            done["x0"] = done["x0"].clone()  # its own storage, not a view of the whole window's prediction
            bframes = torch.arange(start_frame + done["block"] * block_frames, start_frame + (done["block"] + 1) * block_frames)
            record = reviewer.accept(done["block"], done["x0"]) if reviewer is not None else {}
            write_context(model, cache, done["x0"], bframes, noise, done["block"], context_noise)
        for w in window:  # before the yield, so that ``state`` is whole while the caller has the block
            w["step"] += 1
            x0, eps = w.pop("x0"), w.pop("eps")
            if solver == "renoise":
                eps = noise.draw(w["block"], w["step"], w["attempt"])
            w["x"] = _renoise(x0, eps, sigmas[w["step"]])
        if done is not None:
            yield Block(done["block"], bframes.tolist(), done["x0"], record)


SAMPLERS = {"self_forcing": self_forcing, "rolling_forcing": rolling_forcing}
