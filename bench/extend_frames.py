"""The README's extend figure: a toy clip, then the same clip extended with another prompt, through the real command.

    python bench/extend_frames.py [--out docs/extend_frames.png] [--seconds 4] [--more 4]

Makes a --seconds toy clip from one prompt, extends it by --more seconds with a second prompt
(``generate --extend``), and saves a labelled strip of the output's frames around the seam (and the first and
last frame) plus bench/results/extend.json (frame counts, the sidecar's ``extend`` record, timings, and whether
the output's first part is the input bit for bit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
FIRST = "a red circle bouncing on a plain blue background"
SECOND = "a yellow square sliding on a plain blue background"


def tokentrim(*args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tokentrim_cli", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"tokentrim {' '.join(args[:2])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "extend_frames.png"))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "extend.json"))
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--more", type=float, default=4.0)
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of the 64x64 frames")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "clip.mp4", Path(tmp) / "extended.mp4"
        t_src = tokentrim("generate", "--prompt", FIRST, "--seconds", str(args.seconds), "--seed", "1",
                          "--preset", "toy", "--output", str(src), "--quiet")
        t_ext = tokentrim("generate", "--extend", str(src), "--prompt", SECOND, "--seconds", str(args.more),
                          "--seed", "2", "--preset", "toy", "--output", str(out), "--quiet")
        before, frames = np.asarray(iio.imread(src)), np.asarray(iio.imread(out))
        side = json.loads(out.with_suffix(".json").read_text())
    seam = side["extend"]["seam_frame"]
    picks = [0, seam - 8, seam - 2, seam - 1, seam, seam + 1, seam + 4, seam + 16, len(frames) - 1]
    s, label = args.scale, 14
    h, w = frames.shape[1] * s, frames.shape[2] * s
    strip = Image.new("RGB", (len(picks) * (w + 4) - 4, h + label), "white")
    draw = ImageDraw.Draw(strip)
    for k, i in enumerate(picks):
        tile = Image.fromarray(frames[i]).resize((w, h), Image.NEAREST)
        strip.paste(tile, (k * (w + 4), label))
        text = f"{'new ' if i >= seam else 'in '}{i}"
        draw.text((k * (w + 4) + 2, 1), text, fill=(200, 0, 0) if i >= seam else (0, 0, 0))
    strip.save(args.out)
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # diffs[i]: frame i -> i + 1
    result = {
        "prompts": [FIRST, SECOND], "seconds": args.seconds, "more": args.more,
        "input_frames": int(len(before)), "output_frames": int(len(frames)), "new_frames": side["plan"]["frames"],
        "prefix_identical": bool(np.array_equal(frames[:seam], before)),
        "extend": {**side["extend"], "path": Path(side["extend"]["path"]).name}, "columns_frames": picks,
        "mean_abs_frame_step": {"inside_input": round(float(diffs[: seam - 1].mean()), 3),
                                "at_seam": round(float(diffs[seam - 1]), 3),
                                "inside_new": round(float(diffs[seam:].mean()), 3)},
        "seconds_wall": {"make_clip": round(t_src, 2), "extend": round(t_ext, 2)},
        "generate_seconds": side["timings"].get("generate_seconds"),
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"input {len(before)} frames + new {side['plan']['frames']} = output {len(frames)} frames "
          f"(prefix identical: {result['prefix_identical']}, copied: {side['extend']['copied']})")
    print(f"mean |frame step|: input {result['mean_abs_frame_step']['inside_input']}, seam "
          f"{result['mean_abs_frame_step']['at_seam']}, new part {result['mean_abs_frame_step']['inside_new']}")
    print(f"wall: clip {t_src:.1f} s, extend {t_ext:.1f} s; wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
