"""CPU threads on a shared machine: the toy preset's video alone, beside a busy Python process and beside another
torch job, with OpenMP's default or passive waiting, and the default thread count (the CPUs this process may use)
or one.

    python bench/threads.py [--seconds 2] [--repeats 2] [--timeout 240]

Each run is a fresh ``tokentrim generate`` process; the table gives the median wall time per setting and the
JSON goes to bench/results/threads.json. Run it on an otherwise idle machine: the neighbours are the only other
load it should see.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the command without the entry point's default OMP_WAIT_POLICY=PASSIVE, so "default" is the library's own
COMMAND = [sys.executable, "-c", "from tokentrim_cli.cli import main; main()"]
# neighbours: one busy Python process (one core), and another torch job (matrix products on torch's default threads,
# as a second render on the same node would be)
NEIGHBOURS = {
    "python": [sys.executable, "-c", "while True: pass"],
    "torch": [sys.executable, "-c", "import torch\na = torch.randn(512, 512)\nwhile True: a = (a @ a).tanh()"],
}


def one_run(seconds: float, policy: str | None, threads: int | None, timeout: float, out: Path) -> float | None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    args = [*COMMAND, "generate", "--prompt", "a red circle bouncing on a dark blue background", "--seconds",
            str(seconds), "--seed", "1", "--output", str(out), "--quiet", "--overwrite"]
    if threads:
        args += ["--set", f"runtime.threads={threads}"]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=240.0, help="a run slower than this counts as 'over'")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "threads.json"))
    args = ap.parse_args()
    settings = [("library default wait, default threads", None, None), ("passive wait, default threads", "PASSIVE", None),
                ("library default wait, 1 thread", None, 1), ("passive wait, 1 thread", "PASSIVE", 1)]
    result = {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "seconds": args.seconds, "repeats": args.repeats, "timeout": args.timeout, "runs": {}}
    print(f"toy preset, {args.seconds:g} s video, {result['cpus']} usable CPUs, median of {args.repeats}")
    print(f"{'setting':42s} {'alone':>9s} {'busy python':>12s} {'torch job':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "v.mp4"
        for name, policy, threads in settings:
            row = {}
            for neighbour in (None, "python", "torch"):
                busy = subprocess.Popen(NEIGHBOURS[neighbour]) if neighbour else None
                try:
                    times = [one_run(args.seconds, policy, threads, args.timeout, out) for _ in range(args.repeats)]
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                ok = [t for t in times if t is not None]
                row[neighbour or "alone"] = {
                    "median_s": round(statistics.median(ok), 2) if len(ok) == len(times) else None, "runs_s": times}
            result["runs"][name] = row
            cells = [f"{r['median_s']:.1f} s" if r["median_s"] is not None else f"> {args.timeout:.0f} s"
                     for r in (row["alone"], row["python"], row["torch"])]
            print(f"{name:42s} {cells[0]:>9s} {cells[1]:>12s} {cells[2]:>10s}", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
