"""The speed levers side by side (issue 32): eager bf16, CUDA graphs, fp8, int8, compile (static shapes, then again
from the inductor's caches, then dynamic shapes) and all together, on one preset's loop, as ratios to eager on the
same seed.

Every lever runs on the same loaded model (quantised ones on a copy), TokenTrim off so that every lever makes the
same blocks: s/block is the median over the blocks after the first two (the first block pays compile and capture;
it is reported apart with the compile's first-call time), and the latents' max abs difference against eager's
(first block alone, and over all blocks: random weights make differences grow from block to block).
A lever that fails is recorded with its error and the rest still run; a worker that dies is started again for the
levers it did not reach. Used by ``bench/gpu_check.py``; alone:

    python bench/levers.py [--preset self-forcing] [--seconds 5] [--levers eager int8 ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> runtime settings over the preset's own (bf16, every lever off); the order is the priority under a budget
LEVERS = {
    "eager": {},
    "cuda_graphs": {"cuda_graphs": True},
    "fp8": {"quantize": "fp8"},
    "int8": {"quantize": "int8"},
    "compile": {"compile": True, "compile_dynamic": False},
    # the same again after torch._dynamo.reset(): its compile time is what a second run pays with the inductor's
    # on-disk caches (FX graph and AOTAutograd caches, on by default; TORCHINDUCTOR_CACHE_DIR says where)
    "compile_again": {"compile": True, "compile_dynamic": False},
    "compile_dynamic": {"compile": True, "compile_dynamic": True},
    "combined": {"quantize": "fp8", "compile": True, "compile_dynamic": False, "cuda_graphs": True},
}
SAME_OUTPUT = 0.05  # first block's latents within this of eager's (their spread is ~1): "the same output"
PROMPT = "a corgi running on a beach at sunset, waves rolling in"
# the levers do not touch the text encoder: a one-layer 4096-wide UMT5 loads in a second
SMALL_UMT5 = {"vocab_size": 256, "d_model": 4096, "d_kv": 64, "d_ff": 256, "num_layers": 1, "num_heads": 4}


def skip_reason(overrides: dict, device) -> str | None:
    """Why a lever is not measured on ``device`` (None: it is)."""
    if device.type == "cuda":
        return None
    if overrides.get("cuda_graphs") or overrides.get("quantize") == "fp8":
        return "skipped: needs a CUDA GPU"
    if overrides.get("compile"):
        return "skipped on the CPU: the inductor compiles for minutes here (measured on a GPU)"
    return None


def setup(comps, cfg) -> dict:
    """What every number was measured on."""
    import torch

    dev = comps.device
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "resolution": f"{cfg.video.height}x{cfg.video.width}", "block_frames": cfg.sampler.block_frames,
            "dtype": str(comps.model.dtype).removeprefix("torch.")}


def timed_loop(comps, cfg, seconds: float) -> tuple[list[float], list]:
    """Seconds per block (synchronised) and every block's latents (on the CPU)."""
    import torch

    from tokentrim_cli.run.pipeline import Plan, generate_blocks

    plan = Plan.for_preset(seconds, cfg)
    times, latents = [], []
    t = time.perf_counter()
    for blk in generate_blocks(comps, cfg, PROMPT, 0, plan):
        if comps.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - t)
        latents.append(blk.latents.float().cpu())
        t = now
    return times, latents


def measure(comps, cfg, base, name: str, seconds: float, ref: list | None) -> tuple[dict, list]:
    """One lever: its settings applied to ``base`` (a copy when quantised), the loop timed, compared with ``ref``."""
    import torch

    from tokentrim_cli.engine.levers import apply_levers, check_levers

    runtime = dataclasses.replace(cfg.runtime, **LEVERS[name])
    check_levers(runtime, comps.device)
    model = copy.deepcopy(base) if runtime.quantize != "none" else base
    torch._dynamo.reset()
    report = apply_levers(model, runtime)
    if comps.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        times, latents = timed_loop(dataclasses.replace(comps, model=model), cfg, seconds)
    finally:  # the next lever starts from the plain model (a copy of it must not copy captured graphs)
        base.piecewise = base.levers = None
        if model is not base:
            del model
        if comps.device.type == "cuda":
            torch.cuda.empty_cache()
    median = statistics.median(times[2:] or times)
    frames = cfg.sampler.block_frames * cfg.model.vae.temporal_ratio
    res = {"levers": LEVERS[name], **setup(comps, cfg), "blocks": len(times), "median_block_s": median,
           "first_block_s": times[0], "loop_fps": frames / median,
           **{k: v for k, v in report.as_dict().items() if v is not None},
           "peak_gpu_bytes": torch.cuda.max_memory_allocated() if comps.device.type == "cuda" else None}
    if ref is not None:
        diffs = [float((a - b).abs().max()) for a, b in zip(latents, ref)]
        res.update(first_block_max_abs_diff=diffs[0], max_abs_diff=max(diffs),
                   same_output=diffs[0] <= SAME_OUTPUT)
    return res, latents


def worker(preset_path: str, seconds: float, names: list[str], out: str, ref_file: str) -> None:
    """Measure ``names`` in order, writing ``out`` (name -> result) after each; eager's latents go to
    ``ref_file`` (a worker started again compares with them)."""
    import torch

    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.engine.components import load_components

    cfg = load_preset(preset_path).config
    cfg = dataclasses.replace(cfg, pruning=dataclasses.replace(cfg.pruning, enabled=False))
    comps = load_components(cfg.model, cfg.runtime)  # every lever off: the eager model
    results = json.loads(Path(out).read_text()) if Path(out).exists() else {}
    ref = torch.load(ref_file) if Path(ref_file).exists() else None
    timed_loop(comps, cfg, 1.0)  # untimed: CUDA context, cuBLAS and allocator warm-up are no lever's cost
    for name in names:
        reason = skip_reason(LEVERS[name], comps.device)
        if reason is not None:
            results[name] = {"levers": LEVERS[name], **setup(comps, cfg), "error": reason}
        else:
            results[name] = {"levers": LEVERS[name], "error": "started, did not finish (the worker died)"}
            Path(out).write_text(json.dumps(results))
            try:
                results[name], latents = measure(comps, cfg, comps.model, name, seconds, ref)
                if name == "eager":
                    ref = latents
                    torch.save(ref, ref_file)
            except Exception as exc:  # noqa: BLE001 - one lever fails, the others still run
                error = f"{type(exc).__name__}: {exc}"[:1500]
                results[name] = {"levers": LEVERS[name], **setup(comps, cfg), "error": error}
        Path(out).write_text(json.dumps(results, default=str))
    add_ratios(results)
    Path(out).write_text(json.dumps(results, default=str))


def add_ratios(results: dict) -> None:
    """Each lever's speed as eager's s/block over its own (> 1: faster)."""
    eager = results.get("eager", {}).get("median_block_s")
    for res in results.values():
        if eager and res.get("median_block_s"):
            res["speedup_vs_eager"] = eager / res["median_block_s"]


def run_levers(preset_path: Path, seconds: float, tmp: Path, timeout: float, names: list[str] | None = None) -> dict:
    """Every lever in worker processes under one ``timeout``; a worker that dies is started again for the rest."""
    names = list(names or LEVERS)
    out, ref = tmp / f"{preset_path.stem}.levers.json", tmp / f"{preset_path.stem}.eager_latents.pt"
    out.unlink(missing_ok=True)
    ref.unlink(missing_ok=True)
    deadline, errors = time.monotonic() + timeout, []
    while names and deadline - time.monotonic() > 10:
        cmd = [sys.executable, __file__, "--worker", str(preset_path), str(seconds), str(out), str(ref), *names]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline - time.monotonic(), cwd=ROOT)
        except subprocess.TimeoutExpired:
            errors.append("timed out")
            break
        if proc.returncode == 0:
            names = []
            break
        errors.append(f"worker exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
        done = json.loads(out.read_text()) if out.exists() else {}
        if not any("did not finish" in str(done.get(n, {}).get("error", "")) for n in names):
            break  # it died loading the model: starting it again would die the same way
        names = [n for n in names if n not in done]  # the lever it died in stays recorded as not finished
    results = json.loads(out.read_text()) if out.exists() else {}
    for n in names:
        results.setdefault(n, {"levers": LEVERS[n], "error": errors[-1] if errors else "skipped: no time left"})
    add_ratios(results)
    return {"levers": results, "errors": errors, "same_output_tolerance": SAME_OUTPUT}


def table(preset: str, cell: dict) -> str:
    """One line per lever: the setup next to every number."""
    num = lambda v, f="{:.3f}": f.format(v) if isinstance(v, (int, float)) else "-"  # noqa: E731
    lines = [f"levers on {preset}: {'lever':16s} {'device':22s} {'size':>8s} {'blk':>3s} {'dtype':>8s} {'s/blk':>7s} "
             f"{'x eager':>7s} {'1st blk s':>9s} {'compile s':>9s} {'diff blk1':>9s} {'diff all':>8s}"]
    for name, r in cell.get("levers", {}).items():
        comp = (r.get("compile") or {}).get("first_call_seconds") or []
        lines.append(f"{'':{len(preset) + 11}s} {name:16s} {str(r.get('device', '-'))[:22]:22s} "
                     f"{r.get('resolution', '-'):>8s} {str(r.get('block_frames', '-')):>3s} {r.get('dtype', '-'):>8s} "
                     f"{num(r.get('median_block_s')):>7s} {num(r.get('speedup_vs_eager'), '{:.2f}'):>7s} "
                     f"{num(r.get('first_block_s'), '{:.2f}'):>9s} {num(comp[0] if comp else None, '{:.1f}'):>9s} "
                     f"{num(r.get('first_block_max_abs_diff'), '{:.1e}'):>9s} "
                     f"{num(r.get('max_abs_diff'), '{:.1e}'):>8s}")
        if r.get("error"):
            lines.append(f"{'':{len(preset) + 11}s}   {name}: {str(r['error'])[:160]}")
    return "\n".join(lines)


def lever_preset(name: str, folder: Path, smoke: bool = False) -> Path:
    """``name`` with random weights of the real shapes and a small text encoder (``smoke``: the preset itself)."""
    import yaml

    if smoke:
        return ROOT / "presets" / f"{name}.yaml"
    data = {"description": f"{name}, random weights, small text encoder (bench/levers.py)",
            "extends": str(ROOT / "presets" / f"{name}.yaml"),
            "model": {"transformer": {"weights": "random:0", "checkpoint_key": None, "lora": None},
                      "vae": {"config": {}, "weights": "random:1"},
                      "text_encoder": {"config": SMALL_UMT5, "weights": "random:2"}, "tokenizer": {"kind": "words"}}}
    path = folder / f"{name}-levers.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="self-forcing")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--levers", nargs="*", default=None, choices=list(LEVERS))
    ap.add_argument("--timeout", type=float, default=400)
    ap.add_argument("--smoke", action="store_true", help="the preset as it is (tiny presets on a CPU)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "levers.json"))
    args = ap.parse_args()
    if args.worker:
        preset, seconds, out, ref, *names = args.worker
        worker(preset, float(seconds), names, out, ref)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="levers_") as d:
        cell = run_levers(lever_preset(args.preset, Path(d), args.smoke), args.seconds, Path(d), args.timeout,
                          args.levers)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(cell, indent=1, default=str))
    print(table(args.preset, cell))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
