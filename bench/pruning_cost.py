"""TokenTrim's drift scoring cost per batch, as a fraction of the time to generate the batch.

    python bench/pruning_cost.py

Scoring (latent summary, per-token drift, top-k, threshold) uses only latents the loop already has: no model
forward. Measured on the tiny preset end to end (scoring time inside real runs vs block time), and on a
full-size latent batch (16 x 3 x 60 x 104, 480x832) on this machine's CPU; the full-size block time needs a GPU
(bench/engine_speed.py --full).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokentrim_cli import pruning  # noqa: E402
from tokentrim_cli.config.presets import load_preset  # noqa: E402
from tokentrim_cli.engine.cache import KVCache  # noqa: E402
from tokentrim_cli.engine.components import load_components  # noqa: E402
from tokentrim_cli.run.pipeline import Plan, generate_blocks  # noqa: E402


def score_once(ctrl: pruning.TokenTrim, shape, n=50) -> float:
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(shape, generator=gen) for _ in range(n)]
    cache = KVCache(1)
    times = []
    for i, x in enumerate(xs):
        t = time.perf_counter()
        ctrl.review(i, x, cache, 0)
        ctrl.accept(i, x)
        times.append(time.perf_counter() - t)
    return statistics.median(times[5:])


def main() -> None:
    preset = load_preset("tiny", ["pruning.lambda=1000"])  # scoring on every batch, never a regeneration
    comps = load_components(preset.config.model, preset.config.runtime)
    plan = Plan.for_seconds(30, 16, 3)
    spent = []
    orig = pruning.TokenTrim.review

    def timed(self, *a):
        t = time.perf_counter()
        r = orig(self, *a)
        spent.append(time.perf_counter() - t)
        return r

    pruning.TokenTrim.review = timed
    block_s = [b.record["seconds"] for b in generate_blocks(comps, preset.config, "a red circle", 0, plan)]
    pruning.TokenTrim.review = orig
    tiny_score, tiny_block = statistics.median(spent), statistics.median(block_s)
    full_score = score_once(pruning.TokenTrim(), (1, 16, 3, 60, 104))
    est_block = 5 * 4e13 / 790e12  # brief section 6: ~4e13 FLOP per forward, 5 forwards, ~790 TFLOP/s bf16
    rows = {
        "tiny_cpu": {"score_s": tiny_score, "block_s": tiny_block, "fraction": tiny_score / tiny_block},
        "full_size_latents_cpu_scoring": {"score_s": full_score, "block_s_estimate_h100": est_block,
                                          "fraction_estimate": full_score / est_block},
    }
    print(f"{'case':34s} {'score ms':>9s} {'block ms':>9s} {'fraction':>9s}")
    print(f"{'tiny preset, CPU (measured)':34s} {1e3 * tiny_score:9.3f} {1e3 * tiny_block:9.2f} {100 * tiny_score / tiny_block:8.2f}%")
    print(f"{'480x832 latents: CPU score vs':34s} {1e3 * full_score:9.3f} {1e3 * est_block:9.1f} {100 * full_score / est_block:8.2f}%"
          "  (block time is the compute floor estimate, not measured)")
    out = Path(__file__).parent / "results" / "pruning_cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
