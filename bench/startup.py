"""The entry point's start-up without garbage collection (tokentrim_cli/startup.py), side by side with the same
command started with collection on, in alternating fresh processes.

    python bench/startup.py [--repeats 3] [--seconds 2]

"paused" runs the entry point as ``tokentrim`` does; "collecting" runs it with ``pause_collection`` replaced by a
no-op, so nothing else differs. Both run with
OMP_WAIT_POLICY=PASSIVE and one thread, the tiny and the toy preset, and write the same video. The table gives the
medians of wall and CPU (user + system) seconds per process and their ratio; the JSON goes to
bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = "from tokentrim_cli.__main__ import run; run()"  # what `tokentrim` and `python -m tokentrim_cli` run
COMMANDS = {
    "paused": [sys.executable, "-c", ENTRY],
    "collecting": [sys.executable, "-c",
                   "import tokentrim_cli.startup as s; s.pause_collection = lambda: None; " + ENTRY],
}

def one_run(command: list[str], preset: str, seconds: float, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one fresh process that generates ``seconds`` of ``preset``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    args = [*command, "generate", "--preset", preset, "--prompt", "a red circle bouncing on a dark blue background",
            "--seconds", str(seconds), "--seed", "1", "--output", str(out), "--quiet", "--overwrite",
            "--set", "runtime.threads=1"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "startup.json"))
    args = ap.parse_args()
    result = {"seconds": args.seconds, "repeats": args.repeats, "presets": {}}
    print(f"{args.seconds:g} s of video, one thread, median of {args.repeats} alternating runs")
    print(f"{'preset':8s} {'paused wall':>12s} {'collecting wall':>16s} {'ratio':>6s} {'paused CPU':>11s} "
          f"{'collecting CPU':>15s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in ("tiny", "toy"):
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
            for _ in range(args.repeats):
                for name, command in COMMANDS.items():
                    runs[name].append(one_run(command, preset, args.seconds, Path(tmp) / f"{name}.mp4"))
            med = {name: [statistics.median(x[i] for x in r) for i in (0, 1)] for name, r in runs.items()}
            (pw, pc), (cw, cc) = med["paused"], med["collecting"]
            print(f"{preset:8s} {pw:11.2f}s {cw:15.2f}s {pw / cw:6.2f} {pc:10.2f}s {cc:14.2f}s {pc / cc:6.2f}")
            result["presets"][preset] = {name: {"wall": [round(x[0], 3) for x in r], "cpu": [round(x[1], 3) for x in r]}
                                         for name, r in runs.items()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
