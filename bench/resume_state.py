"""How big a resumable state (NAME.state/) is at 480x832, and what resuming costs.

Part 1 (the loop's state at the full-size latent shape): the tiny transformer (cast to bf16) generates 30 s at 480x832
(60 x 104 latents, 16 channels: what the journal and the window hold depends on the latent shape and dtype, not
on the transformer's size), for Self Forcing and Rolling Forcing; the state after the last block is saved with
the real StateWriter and its files are measured (state.pt mid-run, when Rolling Forcing's window is full). The prompt embeddings the journal keeps are the tiny text
encoder's; Wan's umT5 gives 512 x 4096 per prompt (4 MiB in bf16, twice that with guidance), added by hand.
Part 2 (the decoder's causal state): Wan2.1's VAE architecture (diffusers' default config, random weights) decodes
two latent frames at 1/4 and 1/2 of 480x832 in float32; its feature cache scales with the area exactly, so the
480x832 figure is the 1/4 one times 16 (the 1/2 one checks the scaling), halved for a bf16 VAE.
Part 3 (the cost of resuming, toy model, CPU): the time to replay the journal of an 8 s clip (rebuilding the
cache) next to the time it took to generate it.

    python bench/resume_state.py [--out bench/results/resume_state.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokentrim_cli.config.presets import load_preset  # noqa: E402
from tokentrim_cli.engine.components import cast, load_components  # noqa: E402
from tokentrim_cli.engine.journal import replay  # noqa: E402
from tokentrim_cli.engine.policies import make_cache  # noqa: E402
from tokentrim_cli.run.pipeline import Plan, generate_blocks, guided_model  # noqa: E402
from tokentrim_cli.run.state import History, RunState  # noqa: E402
from tokentrim_cli.run.resume import StateWriter  # noqa: E402

MIB = 2**20
UMT5_PROMPT_BYTES = 512 * 4096 * 2  # one prompt's embeddings, bf16


def loop_state(preset: str, seconds: float) -> dict:
    cfg = load_preset(preset, ["video.height=480", "video.width=832"]).config
    comps = load_components(cfg.model, cfg.runtime)
    cast(comps.model.transformer, torch.bfloat16)  # the loader keeps float32 on a CPU; the real presets run bf16
    plan = Plan.for_preset(seconds, cfg)
    t0 = time.perf_counter()
    mid = last = None
    for last in generate_blocks(comps, cfg, "a red kite over a beach", 1, plan, resumable=True):
        if last.index == plan.blocks // 2:
            mid = last  # with Rolling Forcing's window full
    gen = time.perf_counter() - t0
    sizes = {}
    for name, block in (("mid", mid), ("last", last)):
        with tempfile.TemporaryDirectory() as tmp:
            writer = StateWriter(Path(tmp) / "clip.state", "bench")
            writer.save(RunState(block.state, {"first": False, "feat_map": None}, plan.frames, History()))
            sizes[name] = {f.name: f.stat().st_size for f in writer.folder.iterdir()}
    journal = sum(v for k, v in sizes["last"].items() if k.startswith("journal-"))
    x = next(op[1] for op in last.state.journal.ops if op[0] == "write")
    return {"preset": preset, "seconds": seconds, "blocks": plan.blocks, "generate_seconds": round(gen, 1),
            "journal_dtype": str(x.dtype), "journal_bytes": journal, "journal_bytes_per_block": journal // plan.blocks,
            "state_pt_bytes_mid_run": sizes["mid"]["state.pt"], "window_blocks_mid_run": len(mid.state.loop.window)}


def decoder_state() -> dict:
    from diffusers import AutoencoderKLWan

    from tokentrim_cli.engine.vae import StreamingDecoder

    torch.manual_seed(0)
    vae = AutoencoderKLWan().eval()  # the default config is Wan2.1's VAE
    out = {}
    for name, (h, w) in {"quarter": (15, 26), "half": (30, 52)}.items():
        dec = StreamingDecoder(vae)
        dec.reset()
        t0 = time.perf_counter()
        dec.decode(torch.randn(1, 16, 2, h, w))
        state = dec.state_dict()
        out[name] = {"latent": [h, w], "pixels": [h * 8, w * 8], "float32_bytes":
                     sum(f.numel() * f.element_size() for f in state["feat_map"] if torch.is_tensor(f)),
                     "decode_seconds": round(time.perf_counter() - t0, 1)}
    q = out["quarter"]["float32_bytes"]
    out["scaling_half_over_quarter"] = round(out["half"]["float32_bytes"] / q, 4)
    out["480x832_float32_bytes"] = q * 16
    out["480x832_bf16_bytes"] = q * 8
    return out


def replay_cost(seconds: float = 8.0) -> dict:
    cfg = load_preset("toy").config
    comps = load_components(cfg.model, cfg.runtime)
    plan = Plan.for_preset(seconds, cfg)
    t0 = time.perf_counter()
    last = None
    for last in generate_blocks(comps, cfg, "a red circle bouncing on a dark blue background", 1, plan,
                                resumable=True):
        pass
    gen = time.perf_counter() - t0
    model = guided_model(comps, cfg.sampler)
    times = []
    for _ in range(3):
        cache = make_cache(cfg.cache, model.num_layers, model.rope_len)
        t1 = time.perf_counter()
        replay(last.state.journal, model, cache)
        times.append(time.perf_counter() - t1)
    rep = sorted(times)[1]
    return {"preset": "toy", "seconds": seconds, "blocks": plan.blocks, "generate_seconds": round(gen, 2),
            "replay_seconds_median_of_3": round(rep, 3), "replay_over_generate": round(rep / gen, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "resume_state.json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    loops = [loop_state("tiny", 30.0), loop_state("tiny-rolling", 30.0)]
    dec = decoder_state()
    cost = replay_cost()
    print(f"{'480x832, 30 s (' + loops[0]['journal_dtype'] + ')':34s} {'journal/block':>14s} {'journal':>10s} "
          f"{'state.pt mid-run':>17s} {'window':>7s}")
    for r in loops:
        print(f"{r['preset']:34s} {r['journal_bytes_per_block'] / MIB:11.2f} MiB {r['journal_bytes'] / MIB:7.1f} MiB "
              f"{r['state_pt_bytes_mid_run'] / MIB:13.2f} MiB {r['window_blocks_mid_run']:7d}")
    print(f"Wan VAE decoder state at 480x832: {dec['480x832_bf16_bytes'] / MIB:.0f} MiB in bf16 "
          f"({dec['480x832_float32_bytes'] / MIB:.0f} MiB float32; half/quarter area ratio "
          f"{dec['scaling_half_over_quarter']})")
    print(f"umT5 prompt embeddings in the journal: {UMT5_PROMPT_BYTES / MIB:.0f} MiB per prompt (x2 with guidance)")
    print(f"replay of an {cost['seconds']:g} s toy clip's journal ({cost['blocks']} blocks): "
          f"{cost['replay_seconds_median_of_3']:.2f} s vs {cost['generate_seconds']:.1f} s to generate "
          f"({100 * cost['replay_over_generate']:.1f}%)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"loop_state": loops, "decoder_state": dec, "umt5_prompt_bytes": UMT5_PROMPT_BYTES,
                                    "replay_cost": cost}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
