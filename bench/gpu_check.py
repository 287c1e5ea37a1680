"""GPU check: every real preset on one CUDA GPU, with random weights of the real shapes (no download).

For each real preset (every shipped preset whose weights come from the hub: ``real_presets()``; the ``absolute``
position rule through self-forcing and longlive, ``packed`` through the others), with a preset that extends it
with seeded random weights: the 1.3B transformer, the full Wan2.1 VAE and a UMT5-XXL-shaped text
encoder (24 layers, 4096 wide: the real peak memory; it encodes on the GPU and is then offloaded, as in a real run):

1. loop: the command's own components and ``generate_blocks`` (TokenTrim as the preset has it), blocks only,
   synchronised per block: median s/block over blocks 3.., KV bytes, peak GPU memory; then the streaming decode
   of the same blocks in the preset's VAE dtype and in float32 (s/block, PSNR of the frames between the two);
2. command: ``tokentrim generate`` for a few seconds in a subprocess: exit code, the MP4 read back (frames, fps,
   size agree with the sidecar), status ok; command FPS (frames / generate seconds) and peak GPU memory from the
   sidecar. Each peak is put beside the memory planner's prediction; self-forcing's command runs a second time
   with the prompts encoded on the CPU (``runtime.text_encoder_device=cpu``, the planner's first lever).
3. resume (in the loop step): the loop's resumable state 3 blocks before the end is resumed (the cache rebuilt from
   its journal) and the last blocks generated again: bit-identical to the first time on this device and dtype?
Plus self-forcing-packed for 120 s: the loop (peak memory at 30 s vs 120 s) and the whole command with TokenTrim on.
Plus the speed levers side by side on self-forcing (``bench/levers.py``: eager bf16, CUDA graphs, fp8, int8, compile
with static and dynamic shapes, all together; ratios to eager, latent differences, compile time apart), after the
loops and before the commands, with ``--levers-budget`` seconds kept for them (the loops leave them that much).

Order: the presets in FIRST (the ones the targets name) through every step above, then the other presets' loops and
commands; a second call with ``--resume`` measures what the first left for time.
Every step runs in its own subprocess under its own timeout and a global deadline; results go to the JSON after
each step, so a crash or a hang costs one cell, not the run. MP4s are deleted after they are checked (frames from
random weights are noise: x264 runs with ``--set video.preset=veryfast`` so that encoding noise does not dominate).

    python bench/gpu_check.py [--out bench/results/gpu_check.json] [--budget 470] [--presets self-forcing ...]
    make gpu-check
    python bench/gpu_check.py --resume   # a second call: measures only the cells the first one left out
    python bench/gpu_check.py --smoke --out /tmp/smoke.json   # the same steps on the CPU with the tiny presets
                                                              # (tiny-absolute: LongLive's cache shape, absolute)

On the project's lent machine (no diffusers, no imageio-ffmpeg, no torchao, no network: ../shared/docs/gpu.md),
``make gpu-wheels`` here first (the three wheels into .whl/, 38 MB; torchao for the fp8 and int8 levers), then one
call that carries ``.whl`` with a timeout of ~560 s (``make gpu-check`` installs the wheels it finds in .whl/ into
build/gpu-site, offline, when a package is missing, and puts them ahead on the path):
    make gpu-check ARGS="--out $OUT/gpu_check.json"
(without make: ``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl`` and then
``PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_check.py --out $OUT/gpu_check.json``)
and, if cells say "skipped: the run's time budget is spent", a second call on the still-warm machine with the
first call's JSON carried back into the checkout (``--budget`` sized to the device time left):
    make gpu-check ARGS="--resume --out bench/results/gpu_check.json --budget 240"
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # also when imported from a file path (the tests), not run
from levers import lever_preset, run_levers, table as lever_table  # noqa: E402

SMOKE = ["tiny", "tiny-rolling", "tiny-absolute"]
# tiny with LongLive's cache (sink 3 + window 6, absolute positions): the smoke run's absolute-position preset
TINY_ABSOLUTE = {"policy": "rolling", "sink_frames": 3, "window_frames": 6, "positions": "absolute"}
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "layer_norm_epsilon": 1e-6}
PROMPT = "a corgi running on a beach at sunset, waves rolling in"
ENCODE = ["--set", "video.preset=veryfast"]
CPU_ENCODE = "runtime.text_encoder_device=cpu"  # the planner's first lever, measured on one preset
# the presets the performance targets name (docs/performance.md): every step of theirs runs before any of the others'
# (15 real presets do not fit one call's 8 minutes; --resume measures the rest)
FIRST = ("self-forcing", "self-forcing-packed", "rolling-forcing", "longlive")


def versions() -> dict:
    """The libraries every number depends on (None: not importable here), and the ffmpeg that encodes."""
    import importlib.metadata as md

    import imageio_ffmpeg

    found = {}
    for dist in ("diffusers", "transformers", "accelerate", "torchao", "imageio-ffmpeg"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = None
    found["ffmpeg"] = imageio_ffmpeg.get_ffmpeg_version()
    return found


def real_presets() -> list[str]:
    """Every shipped preset that downloads a checkpoint: FIRST's, then the others, the longlive ones last (their
    base has no LoRA here)."""
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.config.loading import weights_refs

    names = [p.stem for p in sorted((ROOT / "presets").glob("*.yaml"))]
    real = [n for n in names if any(r.startswith("hf://") for r in weights_refs(load_preset(n).config.model))]
    rank = {n: i for i, n in enumerate(FIRST)}
    return sorted(real, key=lambda n: (rank.get(n, len(FIRST)), n.startswith("longlive"), n))


def random_preset(name: str, folder: Path, smoke: bool = False) -> Path:
    """A preset that extends ``name`` with random weights of the real shapes (``smoke``: the preset as it is)."""
    import yaml

    base = ROOT / "presets" / f"{name}.yaml"
    if smoke and name == "tiny-absolute":
        path = folder / "tiny-absolute.yaml"
        path.write_text(yaml.safe_dump({"description": "tiny with LongLive's cache, absolute positions (gpu_check)",
                                        "extends": str(ROOT / "presets" / "tiny.yaml"), "cache": TINY_ABSOLUTE}))
        return path
    if smoke:
        return base
    data = {
        "description": f"{name} with seeded random weights of the real shapes (bench/gpu_check.py)",
        "extends": str(base),
        # random weights: no checkpoint entry to pick and no LoRA to merge (longlive's shapes are the base model's)
        "model": {"transformer": {"weights": "random:0", "checkpoint_key": None, "lora": None},
                  "vae": {"config": {}, "weights": "random:1"},
                  "text_encoder": {"config": UMT5_XXL, "weights": "random:2"}, "tokenizer": {"kind": "words"}},
    }
    path = folder / f"{name}-random.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------------- workers (run in their own process)
def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_bytes() -> int | None:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def worker_loop(preset_path: str, seconds: float, out: str) -> None:
    import torch

    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.engine.components import load_components
    from tokentrim_cli.engine.vae import StreamingDecoder
    from tokentrim_cli.run.pipeline import Plan, generate_blocks, resume_blocks

    preset = load_preset(preset_path)
    cfg = preset.config
    t0 = time.perf_counter()
    comps = load_components(cfg.model, cfg.runtime)
    load_s = time.perf_counter() - t0
    plan = Plan.for_preset(seconds, cfg)
    fps = cfg.video.fps
    sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times, records, kept, peak_30 = [], [], [], None
    snap, tail = None, []  # the resumable state 3 blocks before the end, and the blocks after it
    t = time.perf_counter()
    for blk in generate_blocks(comps, cfg, PROMPT, 0, plan, resumable=True):  # journaled, as the command runs
        sync()
        now = time.perf_counter()
        times.append(now - t)
        t = now
        records.append(blk.record)
        if len(kept) < 6:
            kept.append(blk.latents.clone())
        if blk.index == plan.blocks - 3:
            snap = blk.state
        elif snap is not None:
            tail.append(blk.latents.clone())
        if peak_30 is None and (blk.latent_frames[-1] + 1) * 4 >= 30 * fps:
            peak_30 = peak_bytes()
    steady = times[2:] or times
    per_block_frames = plan.block_frames * 4
    res = {
        "load_seconds": round(load_s, 2), "blocks": len(times), "median_block_s": statistics.median(steady),
        "loop_fps": per_block_frames / statistics.median(steady), "first_block_s": times[0],
        "kv_bytes": records[-1]["cache_bytes"], "cache_tokens": records[-1]["cache_tokens"],
        "regenerations": sum(r["regenerations"] for r in records),
        "peak_gpu_bytes": peak_bytes(), "peak_gpu_bytes_at_30s": peak_30,
    }
    Path(out).write_text(json.dumps(res))  # the loop's numbers are safe before the decode starts
    if snap is not None:  # exact resume on this device: replay the journal, generate the last blocks again
        t = time.perf_counter()
        again = [b.latents for b in resume_blocks(comps, cfg, PROMPT, 0, plan, snap)]
        sync()
        res["resume_seconds"] = time.perf_counter() - t
        res["resume_bit_identical"] = len(again) == len(tail) and all(torch.equal(a, b) for a, b in zip(again, tail))
        res["resume_max_abs_diff"] = max(float((a.float() - b.float()).abs().max()) for a, b in zip(again, tail))
        Path(out).write_text(json.dumps(res))
    res.update(decode(comps.vae, kept, StreamingDecoder))
    Path(out).write_text(json.dumps(res))


def decode(vae, latents: list, decoder_cls) -> dict:
    """Streaming decode of the kept blocks in the VAE's dtype and in float32: s/block and PSNR between them."""
    import copy

    import numpy as np
    import torch

    out = {"vae_dtype": str(next(vae.parameters()).dtype)}
    frames = {}
    for label, model in (("preset", vae), ("float32", copy.deepcopy(vae).float())):
        dec = decoder_cls(model)
        dec.reset()
        times, px = [], []
        for z in latents:
            sync()
            t = time.perf_counter()
            px.append(dec.frames(z))
            times.append(time.perf_counter() - t)
        frames[label] = np.concatenate(px).astype(np.float64)
        out[f"decode_block_s_{label}"] = statistics.median(times[1:] or times)
        del dec, model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    mse = float(((frames["preset"] - frames["float32"]) ** 2).mean())
    out["decode_psnr_db_vs_float32"] = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return out


# ---------------------------------------------------------------------- orchestrator
class Run:
    def __init__(self, out: Path, budget: float, keep: bool = False):
        self.out, self.deadline, self.keep = out, time.monotonic() + budget, keep and out.exists()
        fresh = {"machine": None, "presets": {}, "notes": []}
        self.results: dict = json.loads(out.read_text()) if self.keep else fresh
        self.reserve = 0.0  # seconds kept for a later step (the levers)

    def kept(self, preset: str, key: str) -> bool:
        """``--resume``: the cell holds a result from an earlier call (not an error, not skipped for time)."""
        cell = self.results["presets"].get(preset, {}).get(key)
        return self.keep and isinstance(cell, dict) and cell.get("error") is None  # a command's is null when ok

    def left(self) -> float:
        return self.deadline - self.reserve - time.monotonic()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.results, indent=1, default=str))

    def cell(self, preset: str) -> dict:
        return self.results["presets"].setdefault(preset, {})

    def step(self, preset: str, key: str, timeout: float, fn) -> None:
        """Run one step with a timeout (capped by what the deadline leaves); record its result or its error."""
        if self.kept(preset, key):
            print(f"  {preset:24s} {key:14s} kept from {self.out}", flush=True)
            return
        timeout = min(timeout, self.left() - 5)
        if timeout < 30:
            self.cell(preset)[key] = {"error": "skipped: the run's time budget is spent"}
            self.save()
            return
        t = time.monotonic()
        try:
            self.cell(preset)[key] = fn(timeout)
        except subprocess.TimeoutExpired:
            self.cell(preset)[key] = {"error": f"timed out after {timeout:.0f} s"}
        except Exception as exc:  # noqa: BLE001 - one cell fails, the run goes on
            self.cell(preset)[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        self.cell(preset)[key]["step_seconds"] = round(time.monotonic() - t, 1)
        print(f"  {preset:24s} {key:14s} {json.dumps(self.cell(preset)[key], default=str)[:300]}", flush=True)
        self.save()


def describe(preset_path: Path) -> dict:
    """The cache rule and license the preset runs with (the random-weights preset inherits both)."""
    from tokentrim_cli.config.presets import load_preset

    cfg = load_preset(str(preset_path)).config
    return {"cache": cfg.cache.policy, "positions": cfg.cache.positions, "license": cfg.license.name,
            "commercial": cfg.license.commercial}


def run_loop(preset_path: Path, seconds: float, tmp: Path, timeout: float) -> dict:
    res_file = tmp / f"{preset_path.stem}-{seconds:g}.loop.json"
    res_file.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker-loop", str(preset_path), str(seconds), str(res_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    res = json.loads(res_file.read_text()) if res_file.exists() else {}
    if proc.returncode != 0:
        res["error"] = f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"
    return res


def run_command(preset_path: Path, seconds: float, tmp: Path, timeout: float, extra: tuple[str, ...] = (),
                tag: str = "") -> dict:
    """``tokentrim generate`` in its own process (``extra``: more options; ``tag``: in the output's name)."""
    from tokentrim_cli.output.sidecar import block_records
    from tokentrim_cli.output.video import probe

    video = tmp / f"{preset_path.stem}-{seconds:g}s{tag}.mp4"
    cmd = [sys.executable, "-m", "tokentrim_cli", "generate", "--preset", str(preset_path), "--prompt", PROMPT,
           "--seconds", str(seconds), "--seed", "0", "--output", str(video), "--log-format", "jsonl", *ENCODE, *extra]
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    wall = time.monotonic() - t
    res = {"exit_code": proc.returncode, "wall_seconds": round(wall, 2)}
    side = video.with_suffix(".json")
    if side.exists():
        data = json.loads(side.read_text())
        tm = data.get("timings", {})
        res.update(status=data["status"], error=data.get("error"), frames=data.get("frames_written"),
                   load_seconds=tm.get("load_seconds"), generate_seconds=tm.get("generate_seconds"),
                   peak_gpu_bytes=tm.get("peak_gpu_bytes"), regenerations=sum(b["regenerations"] for b in block_records(data)))
        if tm.get("generate_seconds"):
            res["command_fps"] = data["frames_written"] / tm["generate_seconds"]
            res["command_fps_with_load"] = data["frames_written"] / wall
        if data.get("video") and Path(data["video"]).exists():
            info = probe(Path(data["video"]))
            vid = data["config"]["video"]
            res["mp4_ok"] = (info["frames"] == data["frames_written"] and info["fps"] == vid["fps"]
                             and (info["width"], info["height"]) == (vid["width"], vid["height"]))
            res["mp4"] = {k: info[k] for k in ("frames", "fps", "width", "height")}
            res["mp4_bytes"] = Path(data["video"]).stat().st_size
            Path(data["video"]).unlink()
    if proc.returncode != 0:
        res["stderr"] = proc.stderr.strip()[-1500:]
    return res


# ---------------------------------------------------------------------- memory planner and speed records
def calibrate(run: Run, paths: dict, seconds: float, tmp: Path) -> None:
    """Per preset: the planner's predicted peak (``planner.predict``, from shapes alone) next to the command step's
    measured peak, and the command's speed record (loop, decode, end-to-end FPS, warm-up left out) from its
    sidecar; a table of its own. Run after the command steps (their sidecars are still in ``tmp``)."""
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.planner import predict

    for name, path in paths.items():
        cell = run.cell(name)
        steps = (("planner", "command", []), ("planner_cpu_encode", "command_cpu_encode", [CPU_ENCODE]))
        for key, step, sets in steps:
            if step not in cell:
                continue
            try:
                pred = predict(load_preset(str(path), sets, architecture=False).config, seconds)
            except Exception as exc:  # noqa: BLE001 - one cell fails, the run goes on
                cell[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                continue
            measured = cell[step].get("peak_gpu_bytes")
            cell[key] = {"seconds": seconds, "predicted_peak_bytes": pred.peak, "measured_peak_bytes": measured,
                         "ratio": measured / pred.peak if measured else None,
                         "components": {row[0]: row[1] for row in pred.rows()}}
        side = tmp / f"{path.stem}-{seconds:g}s.json"
        if side.exists():
            cell["speed"] = json.loads(side.read_text()).get("speed")
    run.save()
    print(calibration_table(run.results), flush=True)


def calibration_table(results: dict) -> str:
    def gib(b):
        return f"{b / 2**30:.2f}" if isinstance(b, (int, float)) else "-"

    def num(v):
        return f"{v:.2f}" if isinstance(v, (int, float)) else "-"

    head = (f"{'preset':24s} {'predicted GiB':>13s} {'measured GiB':>12s} {'ratio':>6s} {'loop FPS':>8s} "
            f"{'decode FPS':>10s} {'e2e FPS':>8s} {'warm-up s':>9s}")
    lines = [head]
    for name, cell in results["presets"].items():
        plan, sp = cell.get("planner", {}), cell.get("speed") or {}
        lines.append(f"{name:24s} {gib(plan.get('predicted_peak_bytes')):>13s} "
                     f"{gib(plan.get('measured_peak_bytes')):>12s} "
                     f"{num(plan.get('ratio')):>6s} {num(sp.get('loop_fps')):>8s} {num(sp.get('decode_fps')):>10s} "
                     f"{num(sp.get('end_to_end_fps')):>8s} {num(sp.get('warmup_seconds')):>9s}")
        if "planner_cpu_encode" in cell:
            plan = cell["planner_cpu_encode"]
            lines.append(f"{'  text encoder on CPU':24s} {gib(plan.get('predicted_peak_bytes')):>13s} "
                         f"{gib(plan.get('measured_peak_bytes')):>12s} {num(plan.get('ratio')):>6s}")
    return "\n".join(lines)


def _resume(loop: dict) -> str:
    if "resume_bit_identical" not in loop:
        return "-"
    return "exact" if loop["resume_bit_identical"] else f"{loop['resume_max_abs_diff']:.1e}"


def table(results: dict) -> str:
    gib = lambda b: f"{b / 2**30:.2f}" if isinstance(b, (int, float)) else "-"  # noqa: E731
    num = lambda v, f="{:.3f}": f.format(v) if isinstance(v, (int, float)) else "-"  # noqa: E731
    head = (f"{'preset':24s} {'positions':>9s} {'loop s/blk':>10s} {'loop FPS':>8s} {'decode s/blk':>12s} {'PSNR dB':>8s} "
            f"{'cmd FPS':>8s} {'peak GiB':>8s} {'KV GiB':>7s} {'mp4':>4s} {'resume':>7s}")
    lines = [head]
    for name, cell in results["presets"].items():
        if "rules" not in cell:  # the levers' cell (its own table)
            continue
        loop, cmd = cell.get("loop", {}), cell.get("command", {})
        lines.append(f"{name:24s} {cell.get('rules', {}).get('positions', '-'):>9s} {num(loop.get('median_block_s')):>10s} {num(loop.get('loop_fps'), '{:.1f}'):>8s} "
                     f"{num(loop.get('decode_block_s_preset')):>12s} {num(loop.get('decode_psnr_db_vs_float32'), '{:.1f}'):>8s} "
                     f"{num(cmd.get('command_fps'), '{:.1f}'):>8s} {gib(cmd.get('peak_gpu_bytes') or loop.get('peak_gpu_bytes')):>8s} "
                     f"{gib(loop.get('kv_bytes')):>7s} {('ok' if cmd.get('mp4_ok') else '-'):>4s} "
                     f"{_resume(loop):>7s}")
        for key in ("loop", "command", "loop_120s", "command_120s", "command_cpu_encode"):
            if cell.get(key, {}).get("error"):
                lines.append(f"    {key}: {str(cell[key]['error'])[:200]}")
    long = results["presets"].get("self-forcing-packed", {})
    lp, lc = long.get("loop_120s", {}), long.get("command_120s", {})
    if lp.get("peak_gpu_bytes_at_30s"):
        ratio = lp["peak_gpu_bytes"] / lp["peak_gpu_bytes_at_30s"]
        lines.append(f"self-forcing-packed 120 s: peak {gib(lp['peak_gpu_bytes'])} GiB vs {gib(lp['peak_gpu_bytes_at_30s'])} "
                     f"GiB at 30 s (x{ratio:.3f}); loop {num(lp.get('median_block_s'))} s/block")
    if lc.get("command_fps"):
        lines.append(f"self-forcing-packed 120 s command, TokenTrim on: {lc['command_fps']:.1f} FPS "
                     f"({lc.get('regenerations')} regenerations), peak {gib(lc.get('peak_gpu_bytes'))} GiB")
    return "\n".join(lines)


def measure(run: Run, paths: dict[str, Path], args, tmp: Path) -> None:
    """Every step, the presets FIRST names through all of theirs (loops, levers, commands, the 120 s command, the
    prompts encoded on the CPU) before the others' loops and commands (all presets at once when none is FIRST's)."""
    first = [p for p in paths if p in FIRST] or list(paths)
    others = [p for p in paths if p not in first]
    long = "self-forcing-packed" in paths and not args.no_long
    run.reserve = args.levers_budget if args.levers_preset else 0.0
    loops(run, first, paths, args, tmp, long)
    run.reserve = 0.0
    if args.levers_preset:
        lever_path = lever_preset(args.levers_preset, tmp, args.smoke)
        run.step(args.levers_preset, "levers", args.levers_budget,
                 lambda t: run_levers(lever_path, args.levers_seconds, tmp, t - 5))
    commands(run, first, paths, args, tmp)
    if long:
        run.step("self-forcing-packed", "command_120s", 300,
                 lambda t: run_command(paths["self-forcing-packed"], 120.0, tmp, t))
    enc = "self-forcing" if "self-forcing" in paths else first[0]
    run.step(enc, "command_cpu_encode", 240,  # the encoder's random weights drawn on the CPU: a minute or more
             lambda t: run_command(paths[enc], args.seconds, tmp, t, ("--set", CPU_ENCODE), "-cpu-encode"))
    loops(run, others, paths, args, tmp, long)
    commands(run, others, paths, args, tmp)


def loops(run: Run, names: list[str], paths: dict[str, Path], args, tmp: Path, long: bool) -> None:
    for p in names:
        seconds = 120.0 if (long and p == "self-forcing-packed") else args.loop_seconds
        run.step(p, "loop_120s" if seconds == 120 else "loop", 240 if seconds == 120 else 150,
                 lambda t, path=paths[p], s=seconds: run_loop(path, s, tmp, t))
        if seconds == 120:  # its loop figures: the median over the whole 120 s
            run.cell(p)["loop"] = run.cell(p)["loop_120s"]


def commands(run: Run, names: list[str], paths: dict[str, Path], args, tmp: Path) -> None:
    for p in names:
        run.step(p, "command", 150, lambda t, path=paths[p]: run_command(path, args.seconds, tmp, t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.json"))
    ap.add_argument("--budget", type=float, default=470, help="seconds for the whole check (default fits 8 min)")
    ap.add_argument("--presets", nargs="*", default=None,
                    help="default: every real preset (--smoke: " + ", ".join(SMOKE) + ")")
    ap.add_argument("--seconds", type=float, default=3.0, help="video length of the command step")
    ap.add_argument("--loop-seconds", type=float, default=10.0, help="video length of the loop step (14 blocks)")
    ap.add_argument("--no-long", action="store_true", help="skip the 120 s self-forcing-packed steps")
    ap.add_argument("--levers-preset", default=None, help="the preset the levers are measured on (default: "
                    "self-forcing; --smoke: none, unless given)")
    ap.add_argument("--levers-budget", type=float, default=150, help="seconds kept for the levers step")
    ap.add_argument("--levers-seconds", type=float, default=3.0, help="video length of each lever's loop")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny presets: check the script itself")
    ap.add_argument("--resume", action="store_true", help="keep the cells --out holds from an earlier call on this "
                    "GPU and measure only those it lacks (skipped for time, failed): a second call finishes the check")
    ap.add_argument("--worker-loop", nargs=3, metavar=("PRESET", "SECONDS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_loop:
        worker_loop(args.worker_loop[0], float(args.worker_loop[1]), args.worker_loop[2])
        return
    import torch

    if args.smoke:
        args.presets = [p for p in args.presets or [] if p.startswith("tiny")] or SMOKE
        args.no_long = True
    else:
        args.presets = args.presets or real_presets()
        args.levers_preset = args.levers_preset or "self-forcing"
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run it on a GPU machine (see ../shared/docs/gpu.md), or --smoke")
    run = Run(Path(args.out), args.budget, keep=args.resume)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    earlier = (run.results.get("machine") or {}).get("gpu")
    if run.keep and earlier not in (None, name):
        sys.exit(f"gpu_check: --resume: {args.out} was measured on {earlier}, this is {name}; give another --out")
    total = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
    run.results["machine"] = {"gpu": name, "memory_gib": total, "torch": torch.__version__, "cuda": torch.version.cuda,
                              **versions()}
    run.results["notes"] = ["random weights of the real shapes; UMT5-XXL-shaped encoder", "x264 preset veryfast",
                            f"loop: {args.loop_seconds} s of video, median over blocks 3..; command: {args.seconds} s"]
    print(f"gpu_check on {name}, budget {args.budget:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as d:
        tmp = Path(d)
        paths = {p: random_preset(p, tmp, args.smoke) for p in args.presets}
        for p, path in paths.items():
            run.cell(p)["rules"] = describe(path)
        measure(run, paths, args, tmp)
        calibrate(run, paths, args.seconds, tmp)
    print()
    print(table(run.results))
    if args.levers_preset and "levers" in run.cell(args.levers_preset):
        print(lever_table(args.levers_preset, run.cell(args.levers_preset)["levers"]))
    print(f"wrote {run.out}")


if __name__ == "__main__":
    main()
