"""Drift on the toy world: baseline rolling window vs TokenTrim vs three-partition cache vs both.

Prompts x seeds, training-distribution and held-out combinations, generated at >= 10x the training horizon with
the shipped toy model; metrics at the end of each video (tokentrim_cli.metrics, with the toy world's attribute
errors from tokentrim_cli.toy.scoring). Prints a table (mean and spread over prompts x seeds), writes JSON, and
records which tokens TokenTrim pruned and when.

    python bench/drift.py [--seconds 12] [--seeds 2] [--prompts 2] [--out bench/results/drift.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokentrim_cli.config.presets import load_preset  # noqa: E402
from tokentrim_cli.engine.components import load_components  # noqa: E402
from tokentrim_cli.metrics import evaluate_video, merge_metrics  # noqa: E402
from tokentrim_cli.run.pipeline import generate_video  # noqa: E402
from tokentrim_cli.toy import world  # noqa: E402
from tokentrim_cli.toy.scoring import toy_metrics  # noqa: E402

CONFIGS = {  # (preset, overrides); toy-packed = toy with the three-partition cache
    "baseline (rolling 9)": ("toy", ["pruning.enabled=false"]),
    "TokenTrim": ("toy", ["pruning.enabled=true"]),
    "three-partition": ("toy-packed", ["pruning.enabled=false"]),
    "three-partition + TokenTrim": ("toy-packed", ["pruning.enabled=true"]),
}
METRICS = ["background_error_last", "object_error_last", "object_present_last", "object_compactness_last",
           "flicker_score", "histogram_drift", "saturation_drift"]


def prompts(n: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(1234)
    out = []
    for split in ("train", "heldout"):
        for _ in range(n):
            out.append((split, world.caption(world.sample_spec(rng, split=split, two_objects_prob=0.0))))
    return out


def run(comps, cfg, prompt: str, seed: int, seconds: float) -> dict:
    t0 = time.perf_counter()
    video, records = generate_video(comps, cfg, prompt, seed, seconds)
    wall = time.perf_counter() - t0
    fps = cfg.video.fps
    res = merge_metrics(evaluate_video(video, fps), toy_metrics(video, fps, prompt))["summary"]
    res["wall_s"] = wall
    res["regeneration_rate"] = sum(r["regenerated"] for r in records) / len(records)
    res["pruned_tokens"] = sum(r["pruned_tokens"] for r in records)
    res["pruning_events"] = [{"block": r.get("index", i), "severity": r["severity"], "threshold": r["threshold"],
                              "unstable": r.get("unstable", [])} for i, r in enumerate(records) if r["pruned_tokens"]]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="video length (toy training horizon: 0.75 s)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per split (train, held-out)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "drift.json"))
    args = ap.parse_args()
    base = load_preset("toy")
    comps = load_components(base.config.model, base.config.runtime)
    horizon = 4 * base.config.sampler.block_frames / base.config.video.fps
    print(f"toy model, {args.seconds:g} s videos ({args.seconds / horizon:.0f}x the {horizon:.2f} s training horizon), "
          f"{args.prompts} prompts per split x {args.seeds} seeds")
    rows = {}
    t_all = time.perf_counter()
    for name, (preset, sets) in CONFIGS.items():
        cfg = load_preset(preset, sets).config
        for split, prompt in prompts(args.prompts):
            for seed in range(args.seeds):
                r = run(comps, cfg, prompt, seed, args.seconds)
                rows.setdefault(name, {}).setdefault(split, []).append({"prompt": prompt, "seed": seed, **r})
    header = f"{'config':28s} {'split':8s} " + " ".join(f"{m[:18]:>18s}" for m in METRICS) + f" {'regen':>6s} {'wall s':>7s}"
    print(header)
    table = {}
    for name, by_split in rows.items():
        for split, runs in by_split.items():
            cells, entry = [], {}
            for m in METRICS:
                vals = [r[m] for r in runs if r.get(m) is not None]
                mean = statistics.fmean(vals) if vals else float("nan")
                sd = statistics.pstdev(vals) if len(vals) > 1 else 0.0
                entry[m] = {"mean": mean, "std": sd}
                cells.append(f"{mean:9.3f} ±{sd:7.3f}")
            regen = statistics.fmean(r["regeneration_rate"] for r in runs)
            wall = statistics.median(r["wall_s"] for r in runs)
            entry.update(regeneration_rate=regen, median_wall_s=wall)
            table[f"{name} / {split}"] = entry
            print(f"{name:28s} {split:8s} " + " ".join(cells) + f" {regen:6.3f} {wall:7.2f}")
    out = {"seconds": args.seconds, "training_horizon_s": horizon, "table": table, "runs": rows,
           "total_minutes": (time.perf_counter() - t_all) / 60}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {args.out} ({out['total_minutes']:.1f} min)")


if __name__ == "__main__":
    main()
