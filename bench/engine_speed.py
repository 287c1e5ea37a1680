"""Engine speed and memory: seconds per Self Forcing block (4 steps + context pass), peak memory, KV bytes/frame.

    python bench/engine_speed.py                       # tiny preset, CPU
    python bench/engine_speed.py --full --blocks 10    # 1.3B architecture, random weights, bf16, 480x832 (GPU)

Prints a table and writes JSON (bench/results/engine_speed[_full].json). Timings are medians over blocks after
the first (warm-up); absolute times are machine-dependent, compare ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokentrim_cli.config.presets import load_preset  # noqa: E402
from tokentrim_cli.engine.components import build_transformer  # noqa: E402
from tokentrim_cli.engine.noise import NoiseSource  # noqa: E402
from tokentrim_cli.engine.samplers import BlockSteps, self_forcing  # noqa: E402
from tokentrim_cli.engine.schedule import warp_steps  # noqa: E402
from tokentrim_cli.engine.policies import make_cache  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="full-size 1.3B architecture at 480x832 in bf16 (needs CUDA)")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--preset", default=None, help="preset whose cache/sampler settings to use")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    preset = load_preset(args.preset or ("self-forcing" if args.full else "tiny"))
    cfg = preset.config
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.full and device.type != "cuda":
        sys.exit("--full needs a CUDA GPU (a 1.3B forward over 21 latent frames takes minutes on a CPU)")
    dtype = torch.bfloat16 if args.full else torch.float32
    spec = dataclasses.replace(cfg.model.transformer, weights="random:0")
    t0 = time.perf_counter()
    model = build_transformer(spec, device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    text_dim = model.config.text_dim
    model.set_prompt(torch.randn(1, 512, text_dim, generator=torch.Generator().manual_seed(0)).to(device, dtype) * 0.1)
    h, w = cfg.video.height // 8, cfg.video.width // 8
    cache = make_cache(cfg.cache, model.num_layers, model.rope_len)
    noise = NoiseSource(0, (1, 16, 3, h, w), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    times, cache_bytes = [], []
    t = time.perf_counter()
    for blk in self_forcing(model, cache, noise, BlockSteps(args.blocks, warp_steps(cfg.sampler.steps))):
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - t)
        t = now
        cache_bytes.append(cache.nbytes)
    frames_cached = len(cache.frames)
    res = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "architecture": "Wan2.1-1.3B" if args.full else "tiny",
        "dtype": str(dtype),
        "resolution": [cfg.video.height, cfg.video.width],
        "cache_policy": cfg.cache.policy,
        "build_seconds": round(build_s, 2),
        "blocks": args.blocks,
        "median_block_seconds": statistics.median(times[1:] or times),
        "first_block_seconds": times[0],
        "output_fps": 12 / statistics.median(times[1:] or times),
        "kv_bytes_per_latent_frame": cache_bytes[-1] / max(frames_cached, 1),
        "kv_bytes_final": cache_bytes[-1],
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    }
    print(f"{'architecture':28s} {res['architecture']} ({res['dtype']}, {res['resolution'][0]}x{res['resolution'][1]}, {res['device']})")
    print(f"{'median s / block (4+1 fwd)':28s} {res['median_block_seconds']:.4f}   first block {res['first_block_seconds']:.4f}")
    print(f"{'output frames / s':28s} {res['output_fps']:.2f}   (12 pixel frames per 3-latent-frame block)")
    print(f"{'KV bytes / latent frame':28s} {res['kv_bytes_per_latent_frame'] / 2**20:.2f} MiB")
    if res["peak_gpu_bytes"]:
        print(f"{'peak GPU memory':28s} {res['peak_gpu_bytes'] / 2**30:.2f} GiB")
    out = Path(args.out or Path(__file__).parent / "results" / f"engine_speed{'_full' if args.full else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
