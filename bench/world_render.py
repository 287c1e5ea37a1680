"""How long the toy world takes to render a clip (training draws one per sample, so it must stay well under a
second for 200 frames at 64x64): the median of a few renders per setting, as a table and JSON.

    python bench/world_render.py [--repeats 5] [--out bench/results/world_render.json]

This was a test's time limit (< 1 s for 200 frames, two objects); timings belong here, not in the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokentrim_cli.toy import world  # noqa: E402

CASES = {  # name: (frames, height, width, probability of a second object)
    "200 frames 64x64, two objects": (200, 64, 64, 1.0),
    "200 frames 64x64, one object": (200, 64, 64, 0.0),
    "200 frames 64x96, two objects": (200, 64, 96, 1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "world_render.json"))
    args = ap.parse_args()
    results = {}
    print(f"{'case':34} {'median s':>9} {'frames/s':>9}")
    for name, (frames, h, w, two) in CASES.items():
        times = []
        for seed in range(args.repeats):
            spec = world.sample_spec(seed, two_objects_prob=two)
            t = time.perf_counter()
            world.render(spec, frames, h, w)
            times.append(time.perf_counter() - t)
        median = statistics.median(times)
        results[name] = {"median_s": median, "times_s": times, "frames": frames, "size": [h, w]}
        print(f"{name:34} {median:9.3f} {frames / median:9.0f}")
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
