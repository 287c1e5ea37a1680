"""The ``longlive`` preset gives LongLive's own video, block for block (NVlabs/LongLive v1.0, e52d9ef).

The reference below is written from LongLive's inference rules (``inference.py``, ``pipeline/causal_inference.py``,
``wan/modules/causal_model.py``, ``utils/lora_utils.py``, ``configs/longlive_inference.yaml``), independently of
tokentrim's engine: it reads the checkpoint in LongLive's file layout (``generator`` of the base ``.pt``, original Wan
names; the peft LoRA applied un-merged, y = W x + b + (alpha / rank) B A x), runs the Wan blocks from the original
weights, and keeps LongLive's KV cache: one fixed buffer of ``local_attn_size`` frames per layer, keys rotated at
their absolute frame when written (``start_frame``), ``global_end_index`` / ``local_end_index``, the roll that keeps
the first ``sink_size`` frames and shifts the rest left, the current block written into a copy of the buffer for
each forward (its denoising passes overwrite one another, the t = 0 context pass stays), and attention over
[sink ; the newest ``local_attn_size - sink_size`` frames up to the current ones]. LongLive sizes its buffers with
the 1560 tokens of a 480x832 frame; here a frame is 16 tokens and the sizes follow.

``slots`` instead of ``absolute`` is LongLive's long-video variant (``causal_model_infinity.py``,
``configs/longlive_inference_infinity.yaml``): keys cached un-rotated and rotated at their slot in the buffer,
queries at theirs. tokentrim's ``absolute`` rule falls back to it past the RoPE table.

Same seeded random tiny weights (base + a non-zero LoRA), prompt embeddings and noise on both sides; fp32.
"""


import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_TRANSFORMER, tiny_transformer
from test_longlive import RANK, longlive_base, longlive_lora
from tokentrim_cli.config.presets import load_preset
from tokentrim_cli.engine.components import build_transformer
from tokentrim_cli.engine.noise import NoiseSource
from tokentrim_cli.engine.policies import make_cache
from tokentrim_cli.engine.samplers import BlockSteps, self_forcing
from tokentrim_cli.engine.schedule import warp_steps

SHAPE = (1, 16, 3, 8, 8)  # one 3-frame block of latents: 4 x 4 tokens per frame
TEXT_LEN = 24  # LongLive pads the prompt to text_len with zeros; the embeddings below come padded
BLOCKS = 10  # 30 latent frames: the window first evicts at block 4 (frames 12-14)
TOL = 1e-4


# ---------------------------------------------------------------------- LongLive's weights, as it loads them
def _weights(base_path, lora_path):
    """(base state dict in original Wan names, {module: (A, B)}) as inference.py reads them."""
    raw = torch.load(base_path, map_location="cpu")["generator"]  # use_ema: false
    base = {k.removeprefix("model."): v for k, v in raw.items()}
    lora_sd = torch.load(lora_path, map_location="cpu")
    lora_sd = lora_sd.get("generator_lora", lora_sd)
    lora = {}
    for key, a in lora_sd.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            lora[module] = (a, lora_sd[key.replace("lora_A", "lora_B")])
    return base, lora


class Wan:
    """The Wan forward of ``CausalWanModel._forward_inference`` over an original-name state dict."""

    def __init__(self, base, lora, lora_alpha=RANK, dim=24, heads=2, eps=1e-6, freq_dim=256, patch=(1, 2, 2)):
        self.w, self.lora, self.scale = base, lora, lora_alpha / RANK
        self.dim, self.heads, self.eps, self.freq_dim, self.patch = dim, heads, eps, freq_dim, patch
        self.layers = sum(1 for k in base if k.endswith(".self_attn.q.weight"))
        d = dim // heads
        self.freqs = torch.cat([_rope_params(1024, d - 4 * (d // 6)), _rope_params(1024, 2 * (d // 6)),
                                _rope_params(1024, 2 * (d // 6))], dim=1)

    def linear(self, x, name):
        y = F.linear(x, self.w[name + ".weight"], self.w.get(name + ".bias"))
        if name in self.lora:  # peft's LoRA layer, dropout 0
            a, b = self.lora[name]
            y = y + self.scale * F.linear(F.linear(x, a), b)
        return y

    def rms(self, x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w[name + ".weight"]

    def layer_norm(self, x, name=None):
        w = self.w[name + ".weight"] if name else None
        b = self.w[name + ".bias"] if name else None
        return F.layer_norm(x, (self.dim,), w, b, self.eps)

    def set_prompt(self, embeds):
        ctx = self.linear(F.gelu(self.linear(embeds, "text_embedding.0"), approximate="tanh"), "text_embedding.2")
        self.cross = []
        for i in range(self.layers):  # the cross-attention cache: K/V of the prompt, once
            p = f"blocks.{i}.cross_attn"
            k = self.rms(self.linear(ctx, p + ".k"), p + ".norm_k").unflatten(2, (self.heads, -1))
            self.cross.append((k, self.linear(ctx, p + ".v").unflatten(2, (self.heads, -1))))

    def forward(self, x, t, self_attention):
        """Velocity for latents x (1, C, F, H, W) at timesteps t (F,); ``self_attention(layer, q, k, v, grid)``
        returns the attention output of one layer (the cache's business)."""
        b, _, f, hh, ww = x.shape
        w = self.w
        tokens = F.conv3d(x, w["patch_embedding.weight"], w["patch_embedding.bias"], stride=self.patch)
        grid = tokens.shape[2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        fs = grid[1] * grid[2]
        e = self.linear(F.silu(self.linear(_sinusoid(self.freq_dim, t).float(), "time_embedding.0")),
                        "time_embedding.2")  # (F, dim)
        e0 = self.linear(F.silu(e), "time_projection.1").unflatten(1, (6, self.dim))[None]  # (1, F, 6, dim)

        def per_frame(y, mod):  # y (1, F*fs, dim) modulated frame by frame
            return y.unflatten(1, (f, fs)) * mod

        for i in range(self.layers):
            p = f"blocks.{i}"
            m = (w[p + ".modulation"].unsqueeze(1) + e0).chunk(6, dim=2)
            h = (per_frame(self.layer_norm(tokens), 1 + m[1]) + m[0]).flatten(1, 2)
            q = self.rms(self.linear(h, p + ".self_attn.q"), p + ".self_attn.norm_q").unflatten(2, (self.heads, -1))
            k = self.rms(self.linear(h, p + ".self_attn.k"), p + ".self_attn.norm_k").unflatten(2, (self.heads, -1))
            v = self.linear(h, p + ".self_attn.v").unflatten(2, (self.heads, -1))
            y = self.linear(self_attention(i, q, k, v, grid).flatten(2), p + ".self_attn.o")
            tokens = tokens + per_frame(y, m[2]).flatten(1, 2)
            h = self.layer_norm(tokens, p + ".norm3")
            cq = self.rms(self.linear(h, p + ".cross_attn.q"), p + ".cross_attn.norm_q").unflatten(2, (self.heads, -1))
            ck, cv = self.cross[i]
            tokens = tokens + self.linear(_attention(cq, ck, cv).flatten(2), p + ".cross_attn.o")
            h = (per_frame(self.layer_norm(tokens), 1 + m[4]) + m[3]).flatten(1, 2)
            y = self.linear(F.gelu(self.linear(h, p + ".ffn.0"), approximate="tanh"), p + ".ffn.2")
            tokens = tokens + per_frame(y, m[5]).flatten(1, 2)
        hm = (w["head.modulation"].unsqueeze(1) + e[None, :, None]).chunk(2, dim=2)  # (1, F, 1, dim) each
        out = self.linear(per_frame(self.layer_norm(tokens), 1 + hm[1]) + hm[0], "head.head")  # (1, F, fs, .)
        pt, ph, pw = self.patch
        out = out.reshape(b, *grid, pt, ph, pw, -1)
        return torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(b, -1, f * pt, hh, ww)


def _sinusoid(dim, t):
    half = dim // 2
    t = t.double()
    s = torch.outer(t, torch.pow(10000, -torch.arange(half, dtype=torch.float64) / half))
    return torch.cat([torch.cos(s), torch.sin(s)], dim=1)


def _rope_params(length, dim, theta=10000):
    angles = torch.outer(torch.arange(length), 1.0 / torch.pow(theta, torch.arange(0, dim, 2).double() / dim))
    return torch.polar(torch.ones_like(angles), angles)


def _rope(x, grid, freqs, frame_positions):
    """x (1, f*h*w, heads, d) rotated with frame i of the grid at temporal position frame_positions[i] (float64)."""
    f, h, w = grid
    c = x.shape[-1] // 2
    ft, fh, fw = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    table = torch.cat([ft[frame_positions].view(f, 1, 1, -1).expand(f, h, w, -1),
                       fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                       fw[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)
    xc = torch.view_as_complex(x[0].double().reshape(f * h * w, x.shape[2], -1, 2))
    return torch.view_as_real(xc * table).flatten(2)[None].type_as(x)


def _attention(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


# ---------------------------------------------------------------------- LongLive's KV cache
class LongLiveCache:
    """LongLive's self-attention cache for every layer (``CausalWanSelfAttention.forward`` with a kv_cache, and
    ``CausalWanModel._apply_cache_updates``), sizes in frames of ``fs`` tokens.

    ``rope``: "absolute" (causal_model.py: keys rotated at their frame when written and cached rotated) or "slots"
    (causal_model_infinity.py: keys cached un-rotated, rotated at their buffer slot for each attention, queries at
    theirs). ``table``: frames of the RoPE table; "absolute" switches to "slots" for forwards past it (tokentrim's
    fallback; LongLive's own absolute code stops there). Both key forms are kept, so a switch has the keys it needs.
    """

    def __init__(self, layers, fs, local_attn_size=12, sink_size=3, rope="absolute", freqs=None, table=1024):
        self.fs, self.size, self.sink, self.rope, self.freqs = fs, local_attn_size * fs, sink_size * fs, rope, freqs
        self.table = table
        self.budget = local_attn_size * fs  # max_attention_size (local_attn_size x 1560 tokens at 480x832)
        self.buf = [None] * layers  # per layer {"k": keys rotated at write, "raw": un-rotated keys, "v": values}
        self.global_end = [0] * layers
        self.local_end = [0] * layers
        self.updates = {}

    def attend(self, layer, q, k, v, grid, current_start):
        """One layer's attention for the tokens from ``current_start`` (tokens since the video's start)."""
        fs, n = self.fs, q.shape[1]
        if self.buf[layer] is None:
            self.buf[layer] = {name: q.new_zeros(1, self.size, *q.shape[2:]) for name in ("k", "raw", "v")}
        start_frame = current_start // fs
        frames = torch.arange(start_frame, start_frame + grid[0])
        absolute = self.rope == "absolute" and int(frames[-1]) < self.table
        new = {"k": _rope(k, grid, self.freqs, frames.clamp(max=self.table - 1)), "raw": k, "v": v}
        current_end = current_start + n
        recompute = current_end <= self.global_end[layer] and current_start > 0
        temp = {name: b.clone() for name, b in self.buf[layer].items()}
        local_end = self.local_end[layer] + current_end - self.global_end[layer]
        roll = None
        if current_end > self.global_end[layer] and n + self.local_end[layer] > self.size:
            evicted = n + self.local_end[layer] - self.size
            kept = self.local_end[layer] - evicted - self.sink
            local_end -= evicted
            roll = (evicted, kept)
            for b in temp.values():  # the sink stays; the rest moves left over the evicted frames
                b[:, self.sink: self.sink + kept] = b[:, self.sink + evicted: self.sink + evicted + kept].clone()
        local_start = local_end - n
        write_start = max(local_start, self.sink) if recompute else local_start
        offset = write_start - local_start
        for name, b in temp.items():
            b[:, write_start:local_end] = new[name][:, offset:]
        self.updates[layer] = (roll, write_start, local_end, {m: t[:, offset:] for m, t in new.items()}, current_end,
                               recompute)
        if absolute:  # rotated once, at the absolute frame, before caching
            q, keys = _rope(q, grid, self.freqs, frames), temp["k"]
        else:  # queries and cached keys at their slots in the buffer
            slots = local_end // fs
            q = _rope(q, grid, self.freqs, torch.arange(local_start // fs, local_start // fs + grid[0]))
            keys = _rope(temp["raw"][:, :local_end], (slots, *grid[1:]), self.freqs, torch.arange(slots))
        window_start = max(self.sink, local_end - (self.budget - self.sink))
        k_att = torch.cat([keys[:, : self.sink], keys[:, window_start:local_end]], 1)
        v_att = torch.cat([temp["v"][:, : self.sink], temp["v"][:, window_start:local_end]], 1)
        return _attention(q, k_att, v_att)

    def apply_updates(self):
        """After all layers: write what each layer computed into its buffer (``_apply_cache_updates``)."""
        for layer, (roll, start, end, new, current_end, recompute) in self.updates.items():
            for name, b in self.buf[layer].items():
                if roll is not None:
                    evicted, kept = roll
                    b[:, self.sink: self.sink + kept] = b[:, self.sink + evicted: self.sink + evicted + kept].clone()
                b[:, start:end] = new[name]
            if not recompute:
                self.global_end[layer], self.local_end[layer] = current_end, end
        self.updates = {}


def longlive_reference(wan, blocks, seed, rope="absolute", steps=(1000, 750, 500, 250), shift=5.0,
                       sink_size=3, local_attn_size=12, context_noise=0, table=1024):
    """``CausalInferencePipeline.inference``: per 3-frame block, the warped denoising steps (x0 from the flow,
    re-noised with fresh noise to the next step's level), then a context pass at ``context_noise`` whose keys
    stay in the cache. Noise from tokentrim's NoiseSource under the keys the engine's sampler uses."""
    sigmas = torch.linspace(1.0, 0.0, 1001)[:-1]  # FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = sigmas * 1000
    step_list = timesteps[1000 - torch.tensor(steps)]  # warp_denoising_step
    noise = NoiseSource(seed, SHAPE)
    fs = (SHAPE[3] // 2) * (SHAPE[4] // 2)
    cache = LongLiveCache(wan.layers, fs, local_attn_size, sink_size, rope, wan.freqs, table)

    def model(x, t, start):
        out = wan.forward(x, t, lambda i, q, k, v, grid: cache.attend(i, q, k, v, grid, start * fs))
        cache.apply_updates()
        return out

    def sigma_of(t):
        return sigmas[torch.argmin((timesteps - t).abs())].double()

    out = []
    with torch.no_grad():
        for i in range(blocks):
            start = 3 * i
            x = noise.draw(i, 0)
            for j, t in enumerate(step_list):
                flow = model(x, t.repeat(3), start)
                x0 = (x.double() - sigma_of(t) * flow.double()).float()
                if j + 1 < len(step_list):
                    s = sigma_of(step_list[j + 1])
                    x = ((1 - s) * x0 + s * noise.draw(i, j + 1)).float()
            out.append(x0)
            model(x0, torch.full((3,), float(context_noise)), start)
    return out


# ---------------------------------------------------------------------- tokentrim's longlive preset
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """longlive_base.pt + lora.pt in LongLive's layout (seeded; the LoRA shrunk to keep activations moderate)."""
    folder = tmp_path_factory.mktemp("longlive")
    src = tiny_transformer(seed=7)
    base, lora = folder / "longlive_base.pt", folder / "lora.pt"
    torch.save(longlive_base(src), base)
    torch.save({k: 0.2 * v for k, v in longlive_lora(src, seed=1).items()}, lora)
    torch.manual_seed(11)
    embeds = torch.cat([torch.randn(1, 16, TINY_TRANSFORMER["text_dim"]),
                        torch.zeros(1, TEXT_LEN - 16, TINY_TRANSFORMER["text_dim"])], 1)
    return base, lora, embeds


def preset(base, lora, rope_len=64, sets=()):
    config = "{" + ", ".join(f"{k}: {list(v) if isinstance(v, tuple) else v}" for k, v in
                             {**TINY_TRANSFORMER, "rope_max_seq_len": rope_len}.items()) + "}"
    return load_preset("longlive", [f"model.transformer.config={config}", f"model.transformer.weights={base}",
                                    f"model.transformer.lora={lora}", *sets]).config


def tokentrim_blocks(cfg, embeds, blocks, seed):
    """The longlive preset's transformer section, sampler and cache, as ``pipeline.generate_blocks`` uses them."""
    model = build_transformer(cfg.model.transformer)
    model.set_prompt(embeds)
    cache = make_cache(cfg.cache, model.num_layers, model.rope_len)
    s = cfg.sampler
    out = self_forcing(model, cache, NoiseSource(seed, SHAPE),
                       BlockSteps(blocks, warp_steps(list(s.steps), s.shift), s.block_frames, s.context_noise))
    return [b.latents for b in out], cache


@pytest.fixture(scope="module")
def reference(checkpoint):
    base, lora, embeds = checkpoint
    wan = Wan(*_weights(base, lora))
    wan.set_prompt(embeds)
    return {rope: longlive_reference(wan, BLOCKS, seed=5, rope=rope) for rope in ("absolute", "slots")}


def _errors(got, want):
    return [(a - b).abs().max().item() for a, b in zip(got, want)]


def test_longlive_matches_its_reference_block_for_block(checkpoint, reference):
    """Every block within 1e-4 (fp32), through the sink, the window's first eviction (block 4) and 5 more."""
    base, lora, embeds = checkpoint
    got, cache = tokentrim_blocks(preset(base, lora), embeds, BLOCKS, seed=5)
    errors = _errors(got, reference["absolute"])
    print("max |tokentrim - LongLive| per block:", ["%.1e" % e for e in errors])
    assert len(errors) == BLOCKS and max(errors) <= TOL, errors
    # the sink and the 6 frames the next block reads (LongLive's 12-frame buffer also holds 21-23, never read again)
    assert cache.frames == [0, 1, 2] + list(range(24, 30))
    assert max(got[-1].abs().max().item(), 1.0) < 100  # moderate activations: 1e-4 is a tight bound


@pytest.mark.parametrize("sets", [
    ["cache.positions=packed"],  # the sink re-aligned before the window (Rolling Forcing's rule)
    ["cache.sink_frames=0", "cache.window_frames=9"],  # no sink (the same 12-frame span)
    ["cache.sink_frames=6"],  # a sink of two blocks
    ["cache.window_frames=9"],  # the window one block too long
    ["model.transformer.lora_scale=0.5"],  # the LoRA at half strength
], ids=["packed-positions", "no-sink", "sink-6", "window-9", "lora-half"])
def test_a_wrong_rule_fails_the_comparison(checkpoint, reference, sets):
    """Each rule matters: changing one of them moves some block beyond the tolerance (by block 5: the first
    eviction is at block 4)."""
    base, lora, embeds = checkpoint
    got, _ = tokentrim_blocks(preset(base, lora, sets=sets), embeds, 6, seed=5)
    assert max(_errors(got, reference["absolute"])) > 100 * TOL


def test_packed_positions_are_longlives_long_video_rule(checkpoint, reference):
    """``positions: packed`` with LongLive's sink and window is its infinity variant (keys at their buffer slot),
    block for block: the rule ``absolute`` falls back to past the RoPE table."""
    base, lora, embeds = checkpoint
    got, _ = tokentrim_blocks(preset(base, lora, sets=["cache.positions=packed"]), embeds, BLOCKS, seed=5)
    errors = _errors(got, reference["slots"])
    assert max(errors) <= TOL, errors
    assert max(_errors(reference["slots"], reference["absolute"])) > 100 * TOL  # two different videos


def test_past_the_rope_table_absolute_goes_on_with_the_slot_rule(checkpoint, reference):
    """A RoPE table of 24 frames: blocks 0-7 (frames 0-23) are LongLive's absolute ones; from block 8 on the cache
    lays its keys out by slot (LongLive's infinity rule) over the same content. Checked against the reference
    with the rule switched at frame 24."""
    base, lora, embeds = checkpoint
    got, cache = tokentrim_blocks(preset(base, lora, rope_len=24), embeds, BLOCKS, seed=5)
    assert cache.fallback_frame == 24
    errors = _errors(got, reference["absolute"])
    assert max(errors[:8]) <= TOL, errors
    wan = Wan(*_weights(base, lora))
    wan.set_prompt(embeds)
    switched = longlive_reference(wan, BLOCKS, seed=5, table=24)
    assert max(_errors(got, switched)) <= TOL, _errors(got, switched)
