"""The README's toy-model figure: frames every 5 s of 30 s videos from the shipped toy preset.

    python bench/toy_frames.py [--out docs/toy_frames.png] [--seconds 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokentrim_cli.config.presets import load_preset  # noqa: E402
from tokentrim_cli.engine.components import load_components  # noqa: E402
from tokentrim_cli.run.pipeline import generate_video  # noqa: E402

PROMPTS = ["a red circle bouncing on a dark blue background", "a yellow square sliding on a gray background",
           "a white ring growing on a gradient purple background"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "toy_frames.png"))
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of the 64x64 frames")
    args = ap.parse_args()
    preset = load_preset("toy")
    comps = load_components(preset.config.model, preset.config.runtime)
    fps = preset.config.video.fps
    times = np.arange(0, args.seconds, 5.0)
    rows = []
    for prompt in PROMPTS:
        frames, _ = generate_video(comps, preset.config, prompt, 0, args.seconds)
        picks = [frames[min(int(t * fps), len(frames) - 1)] for t in times] + [frames[-1]]
        gap = np.full((frames.shape[1], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for f in picks for x in (f, gap)][:-1], 1))
        print(f"{prompt}: {len(frames)} frames", flush=True)
    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([x for r in rows for x in (r, sep)][:-1], 0)
    img = Image.fromarray(grid)
    img.resize((img.width * args.scale, img.height * args.scale), Image.NEAREST).save(args.out)
    print(f"wrote {args.out}: rows = prompts, columns = t = {', '.join(f'{t:g}' for t in times)} s and the last frame")


if __name__ == "__main__":
    main()
