"""Decode speed: the full Wan 2.1 VAE against the fast decoder (``video.decoder: tiny``, TAEHV's taew2_1), both
with random weights of the real shapes, block by block through the streaming decoders the command uses.

Per decoder: median seconds per block over blocks 2.. (the first warms up), pixel frames per second, and the peak
GPU memory of the decode on a GPU. The pictures are noise (random weights); only time and memory mean anything.

    python bench/decoder_speed.py [--height 480 --width 832] [--blocks 5] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(decoder, latents: list[torch.Tensor], device: torch.device) -> dict:
    """Decode the blocks in order: median s/block after the first, frames/s, peak GPU bytes."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, frames = [], 0
    for z in latents:
        sync(device)
        t = time.perf_counter()
        frames_out = decoder.frames(z)
        sync(device)
        times.append(time.perf_counter() - t)
        frames += frames_out.shape[0]
    steady = times[1:] or times
    per_block = latents[0].shape[2] * 4
    return {"median_block_s": statistics.median(steady), "fps": per_block / statistics.median(steady),
            "first_block_s": times[0], "frames": frames,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def decoders(device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    from tokentrim_cli.engine.tiny_decoder import TinyStreamingDecoder, build_tiny_decoder
    from tokentrim_cli.engine.vae import StreamingDecoder

    torch.manual_seed(1)
    vae = AutoencoderKLWan().to(device, dtype).eval().requires_grad_(False)
    full = StreamingDecoder(vae)
    full.reset()
    yield "wan vae", full
    del vae, full
    yield "tiny (taew2_1)", TinyStreamingDecoder(build_tiny_decoder(1, device, dtype))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--block-frames", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "decoder_speed.json"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    shape = (1, 16, args.block_frames, args.height // 8, args.width // 8)
    latents = [torch.randn(shape, generator=g).to(device) for _ in range(args.blocks)]
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "dtype": str(dtype), "size": [args.height, args.width], "blocks": args.blocks,
               "threads": torch.get_num_threads(), "decoders": {}}
    with torch.no_grad():
        for name, dec in decoders(device, dtype):
            results["decoders"][name] = measure(dec, latents, device)
    print(f"{'decoder':16s} {'s/block':>8s} {'FPS':>8s} {'first s':>8s} {'peak GiB':>9s}   "
          f"({results['device']}, {args.height}x{args.width}, {dtype}, {args.block_frames}-frame blocks)")
    for name, r in results["decoders"].items():
        peak = f"{r['peak_gpu_bytes'] / 2**30:.2f}" if r["peak_gpu_bytes"] else "-"
        print(f"{name:16s} {r['median_block_s']:8.3f} {r['fps']:8.2f} {r['first_block_s']:8.3f} {peak:>9s}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
