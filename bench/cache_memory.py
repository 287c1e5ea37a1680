"""KV-cache bytes and attention tokens per block vs video length, for every cache policy.

Part 1 (full size, exact bytes, any machine): the 1.3B architecture's cache shapes at 480x832 in bf16 (30 layers,
12 heads x 128, 1560 tokens per latent frame), driven through each policy on meta tensors (no memory, no model
forward), over 30 s and 120 s of video: cached bytes, allocated bytes (the fast path's buffers with their staging,
current and slack rows) and the keys a write pass attends to (top-K stands in as the newest K mid blocks).
Part 2 (tiny model, CPU, real forwards): the same policies generating 30 s and 120 s at the tiny preset's size,
with the time spent in compression and top-K selection as a fraction of block time, for per-layer and shared
selection, and how often the two pick the same mid blocks.

    python bench/cache_memory.py [--out bench/results/cache_memory.json]

A GPU run of the full-size model (peak memory at 30 s vs 120 s) is bench/gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokentrim_cli.config.presets import load_preset  # noqa: E402
from tokentrim_cli.engine import policies as P  # noqa: E402
from tokentrim_cli.engine.cache import KVCache, RollingCache  # noqa: E402
from tokentrim_cli.run.pipeline import Plan  # noqa: E402

FULL = dict(layers=30, heads=12, head_dim=128, grid=(30, 52), fps=16, block=3)


def full_policies(layers):
    sf = load_preset("self-forcing-packed").config.cache
    return {
        "full (no eviction)": lambda: KVCache(layers, 10**6),
        "rolling 18 (Self Forcing)": lambda: RollingCache(layers, 18, 0),
        "Rolling Forcing: sink 3 + span 21": lambda: P.RollingForcingCache(layers, 3, 21),
        "sink 3 + window 9 (LongLive)": lambda: RollingCache(layers, 9, 3),
        "deep sink 10/16/4 (Deep Forcing)": lambda: P.DeepSinkCache(layers, 10, 4, 16),
        "three-partition 6/32x16/3 (packed preset)": lambda: P.make_cache(sf, layers, 1024),
    }


def simulate_full(seconds: float) -> dict:
    """Drive each policy through the fast path on meta tensors of the full-size shapes (write passes only);
    return peak/final bytes per policy: the cached tokens, and what the cache allocates (buffers with their
    staging, current and slack rows, plus loose segments)."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    from tokentrim_cli.engine.rope import Rope

    plan = Plan.for_seconds(seconds, FULL["fps"], FULL["block"])
    gh, gw = FULL["grid"]
    n = gh * gw * FULL["block"]
    rope = Rope(WanRotaryPosEmbed(FULL["head_dim"], (1, 2, 2), 1024)).to("meta")
    rope.grid_w = gw
    out = {}
    for name, make in full_policies(FULL["layers"]).items():
        cache = make()
        peak = peak_alloc = peak_attn = 0
        kv = torch.empty(1, n, FULL["heads"], FULL["head_dim"], dtype=torch.bfloat16, device="meta")
        for b in range(plan.blocks):
            frames = torch.arange(b * FULL["block"], (b + 1) * FULL["block"])
            cache.begin(frames, (gh, gw), write=True, first_step=True, rope=rope)
            if isinstance(cache, P.DeepSinkCache):  # its token budget is applied at a block's first step
                mid = [s for s in cache.segments if s.kind == "mid"]
                budget = cache.budget_frames * gh * gw
                total = sum(s.num_tokens for s in mid)
                for s in mid:  # keep the newest tokens within budget (bytes only; importance needs real values)
                    if total <= budget:
                        break
                    drop = min(s.num_tokens, total - budget)
                    s.keep(torch.arange(s.num_tokens) >= drop)
                    total -= drop
                cache.segments = [s for s in cache.segments if s.num_tokens > 0]
                cache._first = False
            if isinstance(cache, P.ThreePartitionCache) and len(cache.mid) > cache.mid_top_k:
                for layer in range(FULL["layers"]):  # top-K needs real values: attend to the newest K mid blocks
                    cache._chosen[layer] = cache.mid[-cache.mid_top_k:]
            for layer in range(FULL["layers"]):
                keys, _ = cache.attend(layer, kv, kv, kv, kv)
                peak_attn = max(peak_attn, keys.shape[1])
            cache.end()
            peak = max(peak, cache.nbytes)
            peak_alloc = max(peak_alloc, cache.allocated_bytes)
        out[name] = {"peak_bytes": peak, "final_bytes": cache.nbytes, "peak_allocated_bytes": peak_alloc,
                     "peak_attention_tokens": peak_attn, "latent_frames": plan.latent_frames}
    return out


def tiny_run(policy_cfg: dict, seconds: float, selection: str | None = None) -> dict:
    from tokentrim_cli.engine.components import load_components
    from tokentrim_cli.run.pipeline import generate_blocks

    sets = [f"cache.{k}={json.dumps(v)}" for k, v in policy_cfg.items()] + ["pruning.enabled=false"]
    if selection:
        sets.append(f"cache.selection={selection}")
    preset = load_preset("tiny", sets)
    comps = tiny_run.components = getattr(tiny_run, "components", None) or load_components(
        preset.config.model, preset.config.runtime)
    plan = Plan.for_seconds(seconds, preset.config.video.fps, 3)
    timers = {"compress": 0.0, "select": 0.0}
    choices = []
    orig_c, orig_s = P.PoolingCompressor.__call__, P.ThreePartitionCache._score

    def timed_c(self, *a):
        t = time.perf_counter()
        r = orig_c(self, *a)
        timers["compress"] += time.perf_counter() - t
        return r

    def timed_s(self, layer, q, mid):
        t = time.perf_counter()
        r = orig_s(self, layer, q, mid)
        timers["select"] += time.perf_counter() - t
        choices.append((layer, tuple(s.frames for s in r)))
        return r

    P.PoolingCompressor.__call__, P.ThreePartitionCache._score = timed_c, timed_s
    try:
        t0 = time.perf_counter()
        peak, per_block = 0, []
        for blk in generate_blocks(comps, preset.config, "a red circle", 0, plan):
            peak = max(peak, blk.record["cache_bytes"])
            per_block.append(blk.record["seconds"])
        total = time.perf_counter() - t0
    finally:
        P.PoolingCompressor.__call__, P.ThreePartitionCache._score = orig_c, orig_s
    per_block.sort()
    return {"seconds": seconds, "blocks": plan.blocks, "peak_bytes": peak, "median_block_s": per_block[len(per_block) // 2],
            "compress_frac": timers["compress"] / total, "select_frac": timers["select"] / total, "choices": choices}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cache_memory.json"))
    ap.add_argument("--tiny-seconds", type=float, nargs=2, default=[30, 120])
    args = ap.parse_args()
    result = {"full_size_480x832_bf16": {}, "tiny_cpu": {}}

    print("Full-size 1.3B cache shapes at 480x832, bf16 (exact byte accounting on meta tensors)")
    print(f"{'policy':44s} {'30 s peak':>10s} {'120 s peak':>11s} {'ratio':>6s} {'allocated':>10s} {'attn tokens':>12s}")
    r30, r120 = simulate_full(30), simulate_full(120)
    for name in r30:
        a, b = r30[name]["peak_bytes"], r120[name]["peak_bytes"]
        alloc = r120[name]["peak_allocated_bytes"]
        print(f"{name:44s} {a / 2**30:9.2f}G {b / 2**30:10.2f}G {b / a:6.2f} {alloc / 2**30:9.2f}G "
              f"{r120[name]['peak_attention_tokens']:12d}")
        result["full_size_480x832_bf16"][name] = {"30s": r30[name], "120s": r120[name]}

    print("\nTiny preset on CPU (real forwards), pruning off")
    print(f"{'policy':34s} {'seconds':>7s} {'peak bytes':>10s} {'ms/block':>9s} {'compress':>9s} {'select':>8s}")
    tiny = {
        "rolling 18": {"policy": "rolling", "window_frames": 18, "sink_frames": 0},
        "three-partition per_layer": {"policy": "three_partition", "sink_frames": 6, "recent_frames": 3,
                                      "mid_capacity": 16, "mid_top_k": 4},
    }
    for name, cfg in tiny.items():
        for s in args.tiny_seconds:
            r = tiny_run(cfg, s)
            print(f"{name:34s} {s:7.0f} {r['peak_bytes']:10d} {1e3 * r['median_block_s']:9.1f} "
                  f"{100 * r['compress_frac']:8.2f}% {100 * r['select_frac']:7.2f}%")
            result["tiny_cpu"][f"{name} {s:.0f}s"] = {k: v for k, v in r.items() if k != "choices"}
    cfg = tiny["three-partition per_layer"]
    shared = tiny_run(cfg, args.tiny_seconds[0], "shared")
    per = tiny_run(cfg, args.tiny_seconds[0], "per_layer")
    # agreement: for each scoring event of the per-layer run, does layer L pick what layer 0 picked?
    by_event, agree, total = [], 0, 0
    for layer, ch in per["choices"]:
        if layer == 0:
            by_event.append(ch)
        else:
            total += 1
            agree += ch == by_event[-1]
    print(f"\nselection shared: select {100 * shared['select_frac']:.2f}% of time, median {1e3 * shared['median_block_s']:.1f} ms/block;"
          f" per_layer: {100 * per['select_frac']:.2f}%, {1e3 * per['median_block_s']:.1f} ms/block;"
          f" layers agreeing with layer 0: {agree}/{total}")
    result["selection"] = {"shared": {k: v for k, v in shared.items() if k != "choices"},
                           "per_layer": {k: v for k, v in per.items() if k != "choices"},
                           "per_layer_agreement_with_layer0": [agree, total]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
