"""Train the toy world model from scratch: ``make toy-model`` (seeded; four phases, 99 min on a 2-core CPU).

Run from a checkout, ``python training/train_toy.py --out build/RUN ...``; it is not part of the installed
package. The architecture (transformer, text encoder and codec configs, tokenizer vocabulary, prompt length), the
frame size and the sampling that rollout training imitates are the toy preset's (presets/toy.yaml, read once by
``toy_preset``).

1. Render clips of the procedural world (training split only) and fit the patch codec on their frames.
2. Encode the clips to latents once.
3. Train a small causal ``WanTransformer3DModel`` and a small UMT5 text encoder jointly with flow matching and
   diffusion forcing: each 3-frame block of a training window gets its own noise level (some blocks clean, as the
   context pass writes them at sampling time), attention is block-causal through the engine's own forward
   (``CausalWan(..., block_frames=3)``), and the loss covers the noisy blocks.

The third phase weights the latent cells near objects more (objects cover ~5% of a frame), drops 10% of the
captions (so the model also learns the empty prompt, which classifier-free guidance needs) and saves an
exponential moving average of the weights. The fourth (``--rollout``) trains on context the model generated
itself, as it will at sampling time (``self_generated_context``). The result is sampled by the engine's Self
Forcing loop like any other model (preset ``toy``: Euler steps, guidance).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
from transformers import UMT5Config, UMT5EncoderModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tokentrim_cli

from tokentrim_cli.config.presets import dump, load_preset  # noqa: E402
from tokentrim_cli.engine.cache import KVCache  # noqa: E402
from tokentrim_cli.engine.guidance import Guided  # noqa: E402
from tokentrim_cli.engine.model import CausalWan  # noqa: E402
from tokentrim_cli.engine.patch_codec import PatchCodec  # noqa: E402
from tokentrim_cli.engine.samplers import BlockSteps, self_forcing  # noqa: E402
from tokentrim_cli.engine.schedule import shift_sigma, warp_steps  # noqa: E402
from tokentrim_cli.engine.text import TIED_EMBEDDING, encode_prompts, restore_tied_embedding  # noqa: E402
from tokentrim_cli.engine.tokenizer import word_tokenizer  # noqa: E402
from tokentrim_cli.signals import HeldSignals  # noqa: E402
from tokentrim_cli.toy import world  # noqa: E402
from tokentrim_cli.toy.world import to_pixels  # noqa: E402

WEIGHTS_DIR = Path(world.__file__).parent / "weights"  # the shipped weights: the toy preset's pkg://toy/weights
STATE_FILE = "training_state.pt"  # what --resume continues from
RESUME_MAY_CHANGE = {"out", "resume", "max_minutes", "stop_at", "threads", "device", "snapshot_every"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def toy_preset() -> dict:
    """What training takes from the toy preset, the one place it reads presets/toy.yaml: the architecture
    (``transformer``, ``text_encoder`` and ``codec`` configs, the tokenizer's ``vocab``, ``max_text_length``),
    the frame size (``height``, ``width``) and how the preset samples (``steps``, ``shift``, ``block_frames``,
    ``solver``, ``guidance_scale``, ``guidance_min_timestep``), which rollout training samples as."""
    cfg = load_preset("toy").config.as_dict()
    model, sampler = cfg["model"], cfg["sampler"]
    transformer = model["transformer"]["config"]
    return {"transformer": {**transformer, "patch_size": tuple(transformer["patch_size"])},
            "text_encoder": dict(model["text_encoder"]["config"]), "codec": dict(model["vae"]["config"]),
            "vocab": list(model["tokenizer"]["vocab"]), "max_text_length": model["max_text_length"],
            "height": cfg["video"]["height"], "width": cfg["video"]["width"],
            "steps": list(sampler["steps"]), "shift": sampler["shift"], "block_frames": sampler["block_frames"],
            "solver": sampler["solver"], "guidance_scale": sampler["guidance_scale"],
            "guidance_min_timestep": sampler["guidance_min_timestep"]}


def render_clips(n: int, frames: int, seed: int, height: int, width: int, patch: int
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Clips (N, F, H, W, 3) uint8, the latent cells (N, F, H/p, W/p) bool an object touches, and captions."""
    rng = np.random.default_rng(seed)
    clips, cells, captions = [], [], []
    for _ in range(n):
        spec = world.sample_spec(rng, split="train")
        px, _ = world.render(spec, frames, height, width)
        bg = world.render_background(spec.background_kind, spec.background_colour, height, width)
        mask = np.abs(px.astype(np.float32) - bg).max(-1) > 8
        clips.append(px)
        cells.append(mask.reshape(frames, height // patch, patch, width // patch, patch).any(axis=(2, 4)))
        captions.append(world.caption(spec))
    return np.stack(clips), np.stack(cells), captions


def latent_weights(cells: np.ndarray, object_weight: float) -> torch.Tensor:
    """Per-latent-cell loss weights (N, F, h, w): 1 on the background, ``object_weight`` on cells an object
    touches or borders. Objects cover ~5% of the frame, so without this the loss is spent on the background."""
    m = torch.from_numpy(cells).float()
    n, f, h, w = m.shape
    near = F.max_pool2d(m.reshape(n * f, 1, h, w), 3, stride=1, padding=1).reshape(n, f, h, w)
    return 1 + (object_weight - 1) * near


def sample_sigmas(shape, shift: float, gen: torch.Generator, p_clean: float) -> torch.Tensor:
    """Per-block noise levels: shifted-uniform (Wan's shift), some blocks exactly clean."""
    sigma = shift_sigma(torch.rand(shape, generator=gen), shift)
    clean = torch.rand(shape, generator=gen) < p_clean
    return torch.where(clean, torch.zeros_like(sigma), sigma)


class _TrainingNoise:
    """The sampler's noise source for rollout training: plain draws from the training generator, so a phase
    replays from its seed (the Euler solver draws once per block)."""

    def __init__(self, gen: torch.Generator, shape: tuple[int, ...], device):
        self.gen, self.shape, self.device = gen, shape, device

    def draw(self, block, step, attempt=0, frames=None) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.gen).to(self.device)


@torch.no_grad()
def self_generated_context(model, x0: torch.Tensor, k: int, cond, uncond, sigmas, guidance: float,
                           min_timestep: float, gen: torch.Generator, *, block_frames: int, solver: str
                           ) -> torch.Tensor:
    """Replace blocks 1..k of each window with the model's own continuation of its real block 0.

    At sampling time every context block is the model's own output, with its own errors; trained only on real
    context, the model carries those errors forward and the picture drifts within a few blocks (exposure bias).
    Here the engine's Self Forcing loop continues the real block 0 as the toy preset samples (its ``solver``,
    blocks of ``block_frames``, guidance, a KV cache), and the caller trains the blocks after k on the real
    continuation. Block 0 stays real so that the generated blocks keep the real clip's object and motion, which
    the targets continue.
    """
    x0 = x0.clone()
    if guidance > 1:
        model = Guided(model, guidance, min_timestep)
        model.set_prompt(cond, uncond)
    else:
        model.set_prompt(cond)
    block = block_frames
    cache = KVCache(model.num_layers, model.rope_len)  # k + 1 blocks fit the toy preset's window: none evicted
    model(x0[:, :, :block], torch.zeros(block), torch.arange(block), cache=cache, write=True)
    noise = _TrainingNoise(gen, x0[:, :, :block].shape, x0.device)
    for b in self_forcing(model, cache, noise, BlockSteps(k, sigmas, block, start_frame=block, solver=solver)):
        x0[:, :, b.latent_frames] = b.latents
    return x0


def save_weights(model, text, params, ema, out: Path) -> None:
    """Write the transformer and text encoder; with an EMA, its weights (as Self Forcing ships generator_ema)."""
    out.mkdir(parents=True, exist_ok=True)
    live = [p.detach().clone() for p in params] if ema is not None else None
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    save_file({k: v.contiguous().cpu() for k, v in model.transformer.state_dict().items()}, str(out / "transformer.safetensors"))
    # the tied embedding is saved once, as shared.weight (restore_tied_embedding puts it back on load)
    save_file({k: v.contiguous().cpu() for k, v in text.state_dict().items() if k != TIED_EMBEDDING},
              str(out / "text_encoder.safetensors"))
    if live is not None:  # training goes on from the live weights
        with torch.no_grad():
            for p, w in zip(params, live):
                p.copy_(w)


def save_state(out: Path, step: int, model, text, opt, sched, ema, gen, history, minutes: float, args) -> None:
    """Everything a run needs to go on exactly where it stopped (``--resume``): raw weights, optimizer,
    schedule, EMA, the data generator's state and the losses so far."""
    state = {"step": step, "transformer": model.transformer.state_dict(), "text": text.state_dict(),
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "ema": ema, "generator": gen.get_state(),
             "history": history, "minutes": minutes, "args": vars(args)}
    torch.save(state, out / (STATE_FILE + ".tmp"))
    (out / (STATE_FILE + ".tmp")).replace(out / STATE_FILE)  # a kill mid-write leaves the previous state whole


def load_state(out: Path, args) -> dict:
    path = out / STATE_FILE
    if not path.exists():
        raise SystemExit(f"error: --resume: {path} does not exist; a run writes it when it stops before its last "
                         f"step (--stop-at, --max-minutes, Ctrl-C) and at every --snapshot-every")
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file
    differ = sorted(k for k, v in vars(args).items() if k not in RESUME_MAY_CHANGE and state["args"].get(k) != v)
    if differ:
        flags = ", ".join(f"--{k.replace('_', '-')} ({state['args'].get(k)!r} before)" for k in differ)
        raise SystemExit(f"error: --resume: {flags} differ from the run in {out}; resume it with its own arguments "
                         f"(only where and how long it runs may change)")
    return state


def architecture(args, transformer: dict) -> dict:
    """The transformer config of this run: the toy preset's (``transformer``), resized by --layers/--heads/
    --head-dim/--ffn."""
    return {**transformer, "num_layers": args.layers, "num_attention_heads": args.heads,
            "attention_head_dim": args.head_dim, "ffn_dim": args.ffn}


def write_preset(out: Path, arch: dict) -> Path:
    """``OUT/preset.yaml``: the toy preset with this run's architecture and weight files, so a run's result is
    generated from at once (``tokentrim generate --preset OUT/preset.yaml``). Paths are absolute (a preset's
    local paths are read from the working directory)."""
    d = out.resolve()
    preset = {"extends": "toy",
              "description": f"A toy world model trained by training/train_toy.py into {d}.",
              "model": {"transformer": {"config": {**arch, "patch_size": list(arch["patch_size"])},
                                        "weights": str(d / "transformer.safetensors")},
                        "vae": {"weights": str(d / "codec.safetensors")},
                        "text_encoder": {"weights": str(d / "text_encoder.safetensors")}}}
    path = out / "preset.yaml"
    path.write_text(dump(preset))
    return path


def rollout_steps(n: int, preset_steps: list[int]) -> list[int]:
    """The denoising steps of rollout sampling: the toy preset's when there are as many (the default), else n
    evenly spaced ones from 1000."""
    return list(preset_steps) if n == len(preset_steps) else [round(1000 * (1 - i / n)) for i in range(n)]


def train(args, toy: dict | None = None) -> None:
    toy = toy or toy_preset()
    block, text_len, height, width = toy["block_frames"], toy["max_text_length"], toy["height"], toy["width"]
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    log(f"rendering {args.clips} clips of {args.clip_frames} frames at {width}x{height}")
    clips, cells, captions = render_clips(args.clips, args.clip_frames, args.seed, height, width,
                                          toy["codec"]["patch"])
    pixels = to_pixels(clips)
    cell_weights = latent_weights(cells, args.object_weight)
    del clips, cells

    state = load_state(out, args) if args.resume else None
    codec = PatchCodec(**toy["codec"])
    if state is not None:
        log(f"resuming the run in {out} at step {state['step']} of {args.steps}")
        codec.load_state_dict(load_file(str(out / "codec.safetensors")))
    elif args.init:
        log(f"continuing from {args.init}")
        codec.load_state_dict(load_file(str(Path(args.init) / "codec.safetensors")))
    else:
        log("fitting the patch codec")
        sample = pixels[:, :, :: max(1, args.clip_frames // 8)].permute(0, 2, 1, 3, 4).reshape(-1, 3, height, width)
        codec.fit(sample, scale=args.codec_scale)
    with torch.no_grad():
        latents = torch.cat([codec.encode(pixels[i : i + 64]) for i in range(0, len(pixels), 64)])
        rec = codec.decode(latents[:16])
    psnr = 10 * math.log10(4 / float((rec - pixels[:16]).pow(2).mean()))
    log(f"codec: latents {tuple(latents.shape[1:])}, reconstruction {psnr:.1f} dB PSNR")
    save_file({k: v.contiguous() for k, v in codec.state_dict().items()}, str(out / "codec.safetensors"))
    del pixels

    tokenizer = word_tokenizer(toy["vocab"])
    assert len(tokenizer) <= toy["text_encoder"]["vocab_size"], "grow the toy preset's text encoder vocab_size"
    text = UMT5EncoderModel(UMT5Config(**toy["text_encoder"]))
    arch = architecture(args, toy["transformer"])
    model = CausalWan(WanTransformer3DModel(**arch))
    if state is not None:
        model.transformer.load_state_dict(state["transformer"])
        text.load_state_dict(state["text"])
    elif args.init:
        try:
            model.transformer.load_state_dict(load_file(str(Path(args.init) / "transformer.safetensors")))
        except RuntimeError as e:  # size mismatches: name the flags rather than print every tensor
            raise SystemExit(f"error: --init {args.init} holds another transformer size than --layers {args.layers} "
                             f"--heads {args.heads} --head-dim {args.head_dim} --ffn {args.ffn}; pass the sizes "
                             f"it was trained with (its training.json)") from e
        text.load_state_dict(restore_tied_embedding(load_file(str(Path(args.init) / "text_encoder.safetensors"))))
    text.to(device)
    model.to(device)
    params = [p for p in list(text.parameters()) + list(model.parameters()) if p.requires_grad]
    ema = [p.detach().clone() for p in params] if args.ema else None
    log(f"transformer {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"text encoder {sum(p.numel() for p in text.parameters()) / 1e6:.2f}M, on {device}"
        f"{' with bfloat16 autocast' if args.bf16 else ''}")
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    gen = torch.Generator().manual_seed(args.seed + 1)
    horizon = args.horizon_blocks * block
    rollout_sigmas = warp_steps(rollout_steps(args.rollout_steps, toy["steps"]), args.shift)
    frames = torch.arange(horizon)
    history, first_step, minutes_before = [], 0, 0.0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        if ema is not None:
            ema = [e.to(device) for e in state["ema"]]
        history, first_step, minutes_before = state["history"], state["step"], state["minutes"]
        del state
    with HeldSignals() as signals:  # Ctrl-C / SIGTERM end the run after its current step, its state saved
        for step in range(first_step, args.steps + 1):  # ends at the step it stopped before: args.steps when done
            if step == args.steps:
                break
            if args.stop_at and step >= args.stop_at:
                log(f"stopping at step {step} as asked (schedule spans {args.steps})")
                break
            if time.time() - t0 > args.max_minutes * 60:
                log(f"time budget of {args.max_minutes} min reached at step {step}")
                break
            if signals.received:
                log(f"{signal.Signals(signals.received).name} received: stopping at step {step}")
                break
            idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
            start = torch.randint(0, latents.shape[2] - horizon + 1, (args.batch,), generator=gen)
            x0 = torch.stack([latents[i, :, s : s + horizon] for i, s in zip(idx.tolist(), start.tolist())])
            cw = torch.stack([cell_weights[i, s : s + horizon] for i, s in zip(idx.tolist(), start.tolist())])
            x0, cw = x0.to(device), cw.to(device)
            k = 0  # blocks 1..k self-generated (no draw unless --rollout: earlier phases replay)
            if args.rollout > 0 and float(torch.rand(1, generator=gen)) < args.rollout:
                k = int(torch.randint(1, args.horizon_blocks - 1, (1,), generator=gen))
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                    cond = encode_prompts(tokenizer, text, [captions[i] for i in idx.tolist()], text_len)
                    uncond = encode_prompts(tokenizer, text, [""] * args.batch, text_len)
                    x0 = self_generated_context(model, x0, k, cond, uncond, rollout_sigmas, args.rollout_guidance,
                                                toy["guidance_min_timestep"], gen, block_frames=block,
                                                solver=toy["solver"])
            sig_block = sample_sigmas((args.batch, args.horizon_blocks), args.shift, gen, args.p_clean)
            if k:
                sig_block[:, : k + 1] = 0  # the real block 0 and the generated ones are clean context, as sampled
            sig = sig_block.repeat_interleave(block, dim=1)  # (B, F)
            eps = torch.randn(x0.shape, generator=gen).to(device)  # drawn on the CPU: same stream on any device
            sig = sig.to(device)
            s5 = sig.view(args.batch, 1, horizon, 1, 1)
            xt = (1 - s5) * x0 + s5 * eps
            texts = [captions[i] for i in idx.tolist()]
            if args.caption_dropout > 0:  # the empty prompt, for guidance (no draw otherwise: earlier phases replay)
                drop = torch.rand(args.batch, generator=gen) < args.caption_dropout
                texts = ["" if d else t for t, d in zip(texts, drop.tolist())]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                model.set_prompt(encode_prompts(tokenizer, text, texts, text_len))
                v = model(xt, sig * 1000.0, frames, block_frames=block).float()
            weight = (sig > 0).float().view(args.batch, horizon, 1, 1) * cw  # noisy blocks only
            # (clamped: a rollout step may draw all its trained blocks clean, which left 0/0 and NaN weights)
            loss = ((v - (eps - x0)) ** 2 * weight.unsqueeze(1)).sum() / (weight.sum() * x0.shape[1]).clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - args.ema)
            history.append(loss.item())
            if step % 50 == 0 or step == args.steps - 1:
                log(f"step {step}/{args.steps} loss {np.mean(history[-50:]):.4f} lr {sched.get_last_lr()[0]:.2e}")
            if args.snapshot_every and (step + 1) % args.snapshot_every == 0 and step + 1 < args.steps:
                save_weights(model, text, params, ema, out / f"step-{step + 1}")
                shutil.copy(out / "codec.safetensors", out / f"step-{step + 1}")
                save_state(out, step + 1, model, text, opt, sched, ema, gen, history,
                           minutes_before + (time.time() - t0) / 60, args)
                log(f"snapshot at step {step + 1}: {write_preset(out / f'step-{step + 1}', arch)}")
    finished, minutes = step == args.steps, minutes_before + (time.time() - t0) / 60
    save_weights(model, text, params, ema, out)
    if finished:
        (out / STATE_FILE).unlink(missing_ok=True)
    else:
        save_state(out, step, model, text, opt, sched, ema, gen, history, minutes, args)
        log(f"to go on from step {step}, run the same command with --resume")
    meta = {"steps_done": len(history), "finished": finished,
            "final_loss_mean_last_100": float(np.mean(history[-100:])),
            "minutes": round(minutes, 1), "codec_psnr_db": round(psnr, 2), "args": vars(args),
            "loss_every_50": [round(float(np.mean(history[i : i + 50])), 4) for i in range(0, len(history), 50)]}
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    if out.resolve() != WEIGHTS_DIR.resolve():  # the shipped folder is the toy preset itself
        log(f"saved to {out} ({meta['minutes']} min); generate with: tokentrim generate --preset {write_preset(out, arch)}")
    else:
        log(f"saved to {out} ({meta['minutes']} min)")
    if signals.received:
        raise SystemExit(128 + signals.received)


def parse_args(argv: list[str] | None, toy: dict):
    """The command line; the architecture and sampling defaults are the toy preset's (``toy_preset``)."""
    arch, steps, guidance = toy["transformer"], len(toy["steps"]), toy["guidance_scale"]
    ap = argparse.ArgumentParser(description="Train the toy world model (codec, text encoder, causal transformer).")
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--clip-frames", type=int, default=48)
    ap.add_argument("--horizon-blocks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layers", type=int, default=arch["num_layers"],
                    help=f"transformer blocks (toy preset: {arch['num_layers']})")
    ap.add_argument("--heads", type=int, default=arch["num_attention_heads"],
                    help=f"attention heads ({arch['num_attention_heads']})")
    ap.add_argument("--head-dim", type=int, default=arch["attention_head_dim"],
                    help=f"channels per head ({arch['attention_head_dim']})")
    ap.add_argument("--ffn", type=int, default=arch["ffn_dim"], help=f"feed-forward width ({arch['ffn_dim']})")
    ap.add_argument("--shift", type=float, default=float(toy["shift"]),
                    help=f"timestep shift of the training noise levels and of rollout sampling ({toy['shift']:g})")
    ap.add_argument("--p-clean", type=float, default=0.35)
    ap.add_argument("--object-weight", type=float, default=1.0, help="loss weight of latent cells near an object")
    ap.add_argument("--caption-dropout", type=float, default=0.0, help="fraction of samples trained on the empty prompt")
    ap.add_argument("--ema", type=float, default=0.0, help="EMA decay of the saved weights (0: save the raw weights)")
    ap.add_argument("--rollout", type=float, default=0.0,
                    help="fraction of steps whose context blocks the model generates itself (against exposure bias)")
    ap.add_argument("--rollout-steps", type=int, default=steps,
                    help=f"denoising steps of that sampling (the toy preset's {steps}; another count: evenly spaced)")
    ap.add_argument("--rollout-guidance", type=float, default=float(guidance),
                    help=f"guidance of that sampling (the toy preset: {guidance:g})")
    ap.add_argument("--codec-scale", choices=["channel", "global"], default="channel",
                    help="latent scaling of a new codec (engine/patch_codec.py)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (1.4x faster on a CPU with AVX512-BF16)")
    ap.add_argument("--max-minutes", type=float, default=110)
    ap.add_argument("--init", default=None, help="continue from the weights in this folder (a second phase)")
    ap.add_argument("--resume", action="store_true",
                    help=f"go on with the run in --out from where it stopped ({STATE_FILE}), with the same arguments")
    ap.add_argument("--snapshot-every", type=int, default=0, help="also save the weights every this many steps")
    ap.add_argument("--stop-at", type=int, default=None, help="stop after this many steps (the schedule still spans --steps)")
    args = ap.parse_args(argv)
    if args.head_dim % 2 or args.head_dim < 6:
        ap.error("--head-dim must be even and at least 6 (RoPE rotates channel pairs in three bands: t, h, w)")
    if args.rollout > 0 and args.horizon_blocks < 3:
        ap.error("--rollout needs --horizon-blocks >= 3 (a real block, a generated one, a trained one)")
    return args


def main(argv: list[str] | None = None) -> None:
    toy = toy_preset()
    train(parse_args(argv, toy), toy)


if __name__ == "__main__":
    main()
