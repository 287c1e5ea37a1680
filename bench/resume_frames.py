"""The README's resume figure: a toy clip stopped by SIGTERM and resumed, next to its uninterrupted twin.

    python bench/resume_frames.py [--out docs/resume_frames.png] [--seconds 8] [--stop-after 20]

Through the real command: one run is sent SIGTERM after its ``--stop-after``-th block (it saves NAME.state/ and
NAME.partial.mp4 and exits 130), the same command with ``--resume`` finishes it, and a third run makes the twin
that was never stopped. Saves a strip of frames around the seam (top: twin, bottom: resumed) and
bench/results/resume.json: frame counts, whether every block's drift record equals the twin's (the latents are
tested bit for bit in tests/test_resume.py), whether the resumed video starts with the partial one bit for bit
(stream copy), the PSNR of the decoded frames against the twin's (they differ only where H.264 coded them
differently: the partial video ends its stream at the seam), and the wall times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle bouncing on a dark blue background"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def command(out: Path, seconds: float) -> list[str]:
    return [sys.executable, "-m", "tokentrim_cli", "generate", "--prompt", PROMPT, "--seconds", str(seconds),
            "--seed", "1", "--preset", "toy", "--output", str(out)]


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=ENV)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[3:5])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def stopped(args: list[str], after: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen([*args, "--log-format", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    seen = 0
    for line in proc.stdout:
        if json.loads(line).get("event") == "block":
            seen += 1
            if seen == after:
                proc.send_signal(signal.SIGTERM)
    if proc.wait() != 130:
        raise SystemExit(f"the stopped run exited {proc.returncode}: {proc.stderr.read().strip()[-300:]}")
    return time.perf_counter() - t0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return round(10 * math.log10(255.0**2 / mse), 2) if mse else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "resume_frames.png"))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "resume.json"))
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--stop-after", type=int, default=20)
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of the 64x64 frames")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out, twin = Path(tmp) / "clip.mp4", Path(tmp) / "twin.mp4"
        t_stop = stopped(command(out, args.seconds), args.stop_after)
        state = json.loads((out.with_name("clip.state") / "state.json").read_text())
        partial = np.asarray(iio.imread(out.with_name("clip.partial.mp4")))
        t_resume = run([*command(out, args.seconds), "--resume", "--quiet"])
        t_twin = run([*command(twin, args.seconds), "--quiet"])
        frames, ref = np.asarray(iio.imread(out)), np.asarray(iio.imread(twin))
        side, ref_side = (json.loads(p.with_suffix(".json").read_text()) for p in (out, twin))
    seam = state["frames_written"]
    picks = [seam - 2, seam - 1, seam, seam + 1, seam + 8, len(frames) - 1]
    s, label = args.scale, 14
    h, w = frames.shape[1] * s, frames.shape[2] * s
    strip = Image.new("RGB", (len(picks) * (w + 4) - 4 + 60, 2 * (h + label)), "white")
    draw = ImageDraw.Draw(strip)
    for row, (name, video) in enumerate((("twin", ref), ("resumed", frames))):
        y = row * (h + label)
        draw.text((2, y + label + h // 2 - 6), name, fill=(0, 0, 0))
        for k, i in enumerate(picks):
            x = 60 + k * (w + 4)
            strip.paste(Image.fromarray(video[i]).resize((w, h), Image.NEAREST), (x, y + label))
            after = row == 1 and i >= seam
            draw.text((x + 2, y + 1), f"{'resumed ' if after else ''}{i}", fill=(200, 0, 0) if after else (0, 0, 0))
    strip.save(args.out)
    same = [b["severity"] for b in side["blocks"]] == [b["severity"] for b in ref_side["blocks"]]
    result = {
        "prompt": PROMPT, "seconds": args.seconds, "stopped_after_block_event": args.stop_after,
        "state": {k: state[k] for k in ("after_block", "next_block", "frames_written", "journal_entries", "bytes")},
        "frames": {"resumed": int(len(frames)), "twin": int(len(ref)), "partial": int(len(partial))},
        "drift_records_equal_twin": same, "resumed_list": side["resumed"],
        "prefix_is_partial_bit_for_bit": bool(np.array_equal(frames[:seam], partial)),
        "psnr_vs_twin_db": {"before_seam": psnr(frames[:seam], ref[:seam]), "after_seam": psnr(frames[seam:], ref[seam:])},
        "seconds_wall": {"stopped_run": round(t_stop, 2), "resume": round(t_resume, 2), "twin": round(t_twin, 2)},
        "columns_frames": picks,
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"stopped after block {state['after_block']} ({seam} frames, state {state['bytes']} bytes); resumed: "
          f"{len(frames)} frames, twin {len(ref)}; drift records equal: {same}; prefix copied bit for bit: "
          f"{result['prefix_is_partial_bit_for_bit']}; PSNR vs twin {result['psnr_vs_twin_db']}")
    print(f"wall: stopped run {t_stop:.1f} s, resume {t_resume:.1f} s, twin {t_twin:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
