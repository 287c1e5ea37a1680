"""How well a toy model predicts its next block, and where its attention goes (docs/toy_model.md).

    python bench/toy_probe.py [--preset toy | build/RUN/preset.yaml] [--clips 24]

Given real context frames of training clips, the model's one-step estimate of the next block (x0 = x_t - sigma v)
is compared with copying the last context frame: a model that has learned the motion beats the copy. The next
block is also sampled as the preset samples (its steps, solver and guidance) and scored like a video: is the
object there, and in one piece (compactness; the real frames through the codec score about 1)? This separates
the model's drawing from the drift of its own context, which free-running video adds. Attention is
read per head for a block at t = 750: the share on the last context frame, on the query's own position there, and
on the 8 neighbours within the query's own frame (an even spread gives each its share of the keys). Fragmented
objects go with attention spread evenly; a larger model should show local, copying heads.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tokentrim_cli.engine.attention as attention  # noqa: E402
from tokentrim_cli.config.presets import load_preset  # noqa: E402
from tokentrim_cli.engine.cache import KVCache  # noqa: E402
from tokentrim_cli.engine.components import load_components  # noqa: E402
from tokentrim_cli.engine.noise import NoiseSource  # noqa: E402
from tokentrim_cli.engine.samplers import BlockSteps, self_forcing  # noqa: E402
from tokentrim_cli.engine.schedule import warp_steps  # noqa: E402
from tokentrim_cli.engine.vae import StreamingDecoder  # noqa: E402
from tokentrim_cli.run.pipeline import prompted_model  # noqa: E402
from tokentrim_cli.toy import world  # noqa: E402
from tokentrim_cli.toy.scoring import attribute_errors  # noqa: E402
from tokentrim_cli.toy.world import to_pixels  # noqa: E402

SIGMAS = (1.0, 0.75, 0.5)


@contextmanager
def recorded_attention(store: list):
    """Record the softmax weights of every self-attention call that has context (the processors call
    ``attention.attend``; diffusers gives no hook for the weights)."""
    plain = attention.attend

    def attend(q, k, v, mask=None):
        if k.shape[1] > q.shape[1]:
            store.append((torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / q.shape[-1] ** 0.5).softmax(-1))
        return plain(q, k, v, mask)

    attention.attend = attend
    try:
        yield
    finally:
        attention.attend = plain


def offsets(grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, n) masks over query x key tokens of one frame: same position, and the 8 neighbours."""
    h, w = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    dh = (h.flatten()[:, None] - h.flatten()[None]).abs()
    dw = (w.flatten()[:, None] - w.flatten()[None]).abs()
    same = (dh == 0) & (dw == 0)
    return same, (dh <= 1) & (dw <= 1) & ~same


def object_scores(latents: torch.Tensor, vae, caption: str) -> np.ndarray:
    """(present, compactness) of each caption object, averaged over the decoded frames; NaN compactness where the
    object's colour is never found."""
    a = attribute_errors(StreamingDecoder(vae).frames(latents), caption)  # the toy codec is stateless
    c = a["object_compactness"]
    found = ~np.isnan(c).all(0)
    compact = np.full(c.shape[1], np.nan)
    compact[found] = np.nanmean(c[:, found], 0)
    return np.stack([a["object_present"].mean(0), compact], 1)


@torch.no_grad()
def sampled_next_block(comps, samp, caption: str, context: torch.Tensor, seed: int) -> torch.Tensor:
    """The block after ``context`` (real latents), sampled as the preset samples."""
    model = prompted_model(comps, samp, caption)
    cache = KVCache(model.num_layers, model.rope_len)
    ctx, block = context.shape[2], samp.block_frames
    model(context, torch.zeros(ctx), torch.arange(ctx), cache=cache, write=True)
    noise = NoiseSource(seed, (*context.shape[:2], block, *context.shape[3:]))
    blocks = self_forcing(model, cache, noise, BlockSteps(1, warp_steps(samp.steps, samp.shift), block,
                                                       start_frame=ctx, solver=samp.solver))
    return next(iter(blocks)).latents


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--context-frames", type=int, default=9)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "toy_probe.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_preset(args.preset).config
    comps = load_components(cfg.model, cfg.runtime)
    model, block, ctx = comps.model, cfg.sampler.block_frames, args.context_frames
    size = cfg.video.height
    rng = np.random.default_rng(args.seed)
    copy, est, attn, drawn, real = [], {s: [] for s in SIGMAS}, [], [], []
    for i in range(args.clips):
        spec = world.sample_spec(rng, split="train")
        px, _ = world.render(spec, ctx + block, size, size)
        lat = comps.vae.encode(to_pixels(px[None]))
        target, caption = lat[:, :, ctx:], world.caption(spec)
        real.append(object_scores(target, comps.vae, caption))
        drawn.append(object_scores(sampled_next_block(comps, cfg.sampler, caption, lat[:, :, :ctx], i),
                                   comps.vae, caption))
        model.set_prompt(comps.encode([caption]))
        copy.append(((lat[:, :, ctx - 1 : ctx] - target) ** 2).mean(dim=(0, 1, 3, 4)))
        eps = torch.randn(target.shape, generator=torch.Generator().manual_seed(i))
        cache = KVCache(model.num_layers, model.rope_len)
        with torch.no_grad():
            model(lat[:, :, :ctx], torch.zeros(ctx), torch.arange(ctx), cache=cache, write=True)
        for sigma in SIGMAS:  # forwards without write leave the context as it is
            store: list = []
            with torch.no_grad(), recorded_attention(store):
                xt = (1 - sigma) * target + sigma * eps
                v = model(xt, torch.full((block,), sigma * 1000), torch.arange(ctx, ctx + block), cache=cache,
                          first_step=True)
            est[sigma].append((((xt - sigma * v) - target) ** 2).mean(dim=(0, 1, 3, 4)))
            if sigma == 0.75:
                attn.append(torch.stack(store)[:, 0])  # (layers, heads, queries, keys)
    _, _, _, gh, gw = lat.shape
    _, ph, pw = model.config.patch_size
    grid = (gh // ph, gw // pw)
    n = grid[0] * grid[1]
    same, near = offsets(grid)
    a = torch.stack(attn).mean(0)[:, :, :n]  # the block's first frame as queries
    last = a[..., (ctx - 1) * n : ctx * n]
    own = a[..., ctx * n : (ctx + 1) * n]
    heads = [{"layer": layer, "head": head, "last_frame": float(last[layer, head].sum(-1).mean()),
              "same_position": float((last[layer, head] * same).sum(-1).mean()),
              "own_frame_neighbours": float((own[layer, head] * near).sum(-1).mean()),
              "own_frame": float(own[layer, head].sum(-1).mean())}
             for layer in range(a.shape[0]) for head in range(a.shape[1])]
    keys = a.shape[-1]
    scores = {name: np.concatenate(x) for name, x in (("real", real), ("sampled", drawn))}  # (objects, 2)
    result = {"preset": args.preset, "clips": args.clips, "context_frames": ctx, "keys": keys,
              "copy_last_frame": torch.stack(copy).mean(0).tolist(),
              "one_step_estimate": {str(s): torch.stack(e).mean(0).tolist() for s, e in est.items()},
              "next_block_objects": {name: {"objects": len(x), "present": float(x[:, 0].mean()),
                                            "compactness": float(np.nanmean(x[:, 1]))} for name, x in scores.items()},
              "attention_t750": heads}
    fmt = lambda xs: " / ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(f"next block ({block} frames), latent MSE, {args.clips} training clips, {ctx} real context frames")
    print("| predictor | MSE per frame |\n|---|---|")
    print(f"| copy the last context frame | {fmt(result['copy_last_frame'])} |")
    for s, e in result["one_step_estimate"].items():
        print(f"| one-step estimate at t = {float(s) * 1000:.0f} | {fmt(e)} |")
    print(f"\nnext block's objects, {len(scores['real'])} in {args.clips} clips (present: share of frames; "
          "compactness: where found)")
    print("| block | present | compactness |\n|---|---|---|")
    for name, label in (("real", "the real clip, through the codec"), ("sampled", "sampled by the preset")):
        r = result["next_block_objects"][name]
        print(f"| {label} | {r['present']:.2f} | {r['compactness']:.2f} |")
    print(f"\nattention at t = 750 ({keys} keys; an even spread puts {n / keys:.3f} on a frame)")
    print("| layer.head | last context frame | its same position | own frame | own-frame neighbours |")
    print("|---|---|---|---|---|")
    for h in heads:
        print(f"| {h['layer']}.{h['head']} | {h['last_frame']:.3f} | {h['same_position']:.3f} | {h['own_frame']:.3f} "
              f"| {h['own_frame_neighbours']:.3f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
