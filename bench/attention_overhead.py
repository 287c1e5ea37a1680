"""The non-matmul work of one full-size self-attention layer per forward: RoPE, cache gathering, casts.

Drives one layer of the 1.3B model's shapes (12 heads x 128, 30x52 tokens per latent frame, bf16) through each
cache policy with random keys/values, exactly as the model does (``begin`` -> ``attend`` -> ``end``, Self Forcing's
4 denoising forwards + 1 write pass per block, Rolling Forcing's window + write pass), and times everything the
processor does besides the projections and scaled-dot-product attention: the RoPE tables and rotations and
``KVCache.attend``. Three variants of the same cache run side by side: "before" (what ``main`` did before the fast
path: un-rotated segments concatenated and rotated on every call, RoPE as separate real multiplies), the reference
path (the same algorithm, RoPE as one complex multiply) and the fast path (rotated keys in preallocated buffers).
Means over the forwards of the second half of the run (the cache is full by then): Rolling Forcing alternates a
15-frame window with a 3-frame write pass, so a median would pick one kind or the other.

    python bench/attention_overhead.py [--blocks 14] [--out bench/results/attention_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed  # noqa: E402

from tokentrim_cli.engine import cache as cache_module  # noqa: E402
from tokentrim_cli.engine.cache import RollingCache  # noqa: E402
from tokentrim_cli.engine.policies import RollingForcingCache, ThreePartitionCache  # noqa: E402
from tokentrim_cli.engine.rope import Rope, rotate  # noqa: E402

HEADS, DIM, GRID, BLOCK = 12, 128, (30, 52), 3

CASES = {
    "self-forcing: rolling 18 (28,080 cached tokens)": (lambda a: RollingCache(1, 18, 0, arena=a), "sf"),
    "self-forcing-packed: three-partition 6/32x16/3": (
        lambda a: ThreePartitionCache(1, 6, 3, 32, 16, arena=a), "sf"),
    "rolling-forcing: sink 3 + span 21": (lambda a: RollingForcingCache(1, 3, 21, arena=a), "rf"),
}


def rotate_before(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE as main computed it before the fast path: real multiplies on unbound channel pairs, then a stack."""
    cos, sin = freqs.real[None, :, None], freqs.imag[None, :, None]
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


def forwards(kind: str, blocks: int):
    """(frames, write) of every forward, in order, as the samplers issue them."""
    if kind == "sf":
        for b in range(blocks):
            frames = torch.arange(BLOCK * b, BLOCK * (b + 1))
            for step in range(4):
                yield frames, False, step == 0
            yield frames, True, False
        return
    for w in range(blocks + 4):  # Rolling Forcing: windows of up to 5 blocks, the oldest written after each
        start, end = max(0, w - 4), min(blocks - 1, w)
        yield torch.arange(BLOCK * start, BLOCK * (end + 1)), False, True
        if w >= 4:
            yield torch.arange(BLOCK * start, BLOCK * (start + 1)), True, False


def run(make, kind: str, variant: str, blocks: int, dtype) -> tuple[list[float], list[float]]:
    """Per forward: all the non-matmul work, and the cache's part of it (``begin`` + ``attend``)."""
    cache = make(variant == "fast")
    rot = rotate_before if variant == "before" else rotate
    cache_module.rotate = rot
    rope = Rope(WanRotaryPosEmbed(DIM, (1, 2, 2), 1024))
    rope.grid_w = GRID[1]
    n = GRID[0] * GRID[1]
    gen = torch.Generator().manual_seed(0)
    times, cache_times = [], []
    for frames, write, first in forwards(kind, blocks):
        tokens = len(frames) * n
        q = torch.randn(1, tokens, HEADS, DIM, generator=gen).to(dtype)
        k = torch.randn(1, tokens, HEADS, DIM, generator=gen).to(dtype)
        v = torch.randn(1, tokens, HEADS, DIM, generator=gen).to(dtype)
        t0 = time.perf_counter()
        cache.begin(frames, GRID, write=write, first_step=first, rope=rope)
        t1 = time.perf_counter()
        freqs = rope.tables(cache.current_positions.repeat_interleave(n), torch.arange(n).repeat(len(frames)))
        q_rot, k_rot = rot(q, freqs), rot(k, freqs)
        t2 = time.perf_counter()
        keys, values = cache.attend(0, q, k, k_rot, v)
        t3 = time.perf_counter()
        times.append(t3 - t0)
        cache_times.append((t1 - t0) + (t3 - t2))
        cache.end()
        assert keys.shape[1] >= tokens and q_rot.shape == q.shape
    cache_module.rotate = rotate
    return times, cache_times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=14)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    dtype = torch.bfloat16
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
                         f"{torch.__version__}", "dtype": str(dtype), "blocks": args.blocks, "cases": {}}
    print(f"one full-size self-attention layer, non-matmul work per forward (ms, mean once the cache is full), {result['machine']}")
    print(f"{'cache':50s} {'before':>8s} {'reference':>10s} {'fast path':>10s} {'cut':>6s}   "
          f"{'cache part: before':>18s} {'fast':>6s} {'cut':>6s}")
    for name, (make, kind) in CASES.items():
        mean, part = {}, {}
        for variant in ("before", "reference", "fast"):
            times, cache_times = run(make, kind, variant, args.blocks, dtype)
            mean[variant] = statistics.fmean(times[len(times) // 2 :])  # the cache is full by then
            part[variant] = statistics.fmean(cache_times[len(cache_times) // 2 :])
        cut, part_cut = mean["before"] / mean["fast"], part["before"] / part["fast"]
        print(f"{name:50s} {1e3 * mean['before']:8.1f} {1e3 * mean['reference']:10.1f} {1e3 * mean['fast']:10.1f} "
              f"{cut:5.1f}x   {1e3 * part['before']:18.1f} {1e3 * part['fast']:6.1f} {part_cut:5.1f}x")
        result["cases"][name] = ({f"{k}_ms": 1e3 * v for k, v in mean.items()}
                                 | {f"cache_part_{k}_ms": 1e3 * v for k, v in part.items()}
                                 | {"cut_before_to_fast": cut, "cache_part_cut": part_cut})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
