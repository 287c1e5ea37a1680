"""The README's timeline figure: the toy model following a two-prompt script under each switch mode, with
``tokentrim evaluate``'s per-segment scores, through the real command.

    python bench/timeline_frames.py [--out docs/timeline_frames.png] [--seconds 10] [--switch-at 5]

Rows: recache, keep, cut; columns: frames just before and after the switch and at the end. The per-segment
summaries go to bench/results/timeline.json and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIRST = "a red circle bouncing on a dark blue background"
SECOND = "a red circle bouncing on a white background"
MODES = ("recache", "keep", "cut")
KEYS = ("background_error_last", "object_error_last", "object_present_last", "object_compactness_last",
        "flicker_score")


def tokentrim(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tokentrim_cli", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"tokentrim {' '.join(args[:2])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "timeline_frames.png"))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "timeline.json"))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--switch-at", type=float, default=5.0)
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of the 64x64 frames")
    args = ap.parse_args()
    times = [args.switch_at - 0.5, args.switch_at + 0.25, args.switch_at + 0.75, args.switch_at + 1.5,
             args.seconds]
    rows, result = [], {"prompts": [FIRST, SECOND], "switch_at": args.switch_at, "seconds": args.seconds,
                        "columns_s": times, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            video = Path(tmp) / f"{mode}.mp4"
            tokentrim("generate", "--prompt", FIRST, "--prompt", f"{args.switch_at:g}s {mode}: {SECOND}", "--seconds",
                      str(args.seconds), "--seed", "1", "--output", str(video), "--quiet")
            tokentrim("evaluate", str(video), "--quiet")
            metrics = json.loads(video.with_suffix(".metrics.json").read_text())
            side = json.loads(video.with_suffix(".json").read_text())
            result["modes"][mode] = {"switch": side["switches"][0], "segments": [
                {"prompt": s["prompt"], "start_s": s["start_s"], "end_s": s["end_s"],
                 **{k: s["summary"].get(k) for k in KEYS}} for s in metrics["segments"]]}
            frames = np.asarray(iio.imread(video))
            fps = side["fps"]
            picks = [frames[min(round(t * fps), len(frames) - 1)] for t in times]
            gap = np.full((frames.shape[1], 4, 3), 255, np.uint8)
            rows.append(np.concatenate([x for f in picks for x in (f, gap)][:-1], 1))
    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    img = Image.fromarray(np.concatenate([x for r in rows for x in (r, sep)][:-1], 0))
    img.resize((img.width * args.scale, img.height * args.scale), Image.NEAREST).save(args.out)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"switch requested at {args.switch_at:g} s, snapped to "
          f"{result['modes']['recache']['switch']['snapped']:g} s (block {result['modes']['recache']['switch']['block']})")
    print(f"{'mode':8s} {'segment':8s} " + " ".join(f"{k:>24s}" for k in KEYS))
    for mode, r in result["modes"].items():
        for k, seg in enumerate(r["segments"]):
            cells = " ".join(f"{seg[key]:24.4f}" if isinstance(seg[key], (int, float)) else f"{'-':>24s}"
                             for key in KEYS)
            print(f"{mode:8s} {k + 1:<8d} {cells}")
    print(f"wrote {args.out} (rows: {', '.join(MODES)}; columns: t = {', '.join(f'{t:g}' for t in times)} s) "
          f"and {args.json}")


if __name__ == "__main__":
    main()
