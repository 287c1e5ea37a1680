"""Will a preset fit my GPU? Peak GPU memory predicted from shapes alone (``tokentrim doctor --preset P``).

Exact from the shapes (the models are built on the meta device, no weights are read, and cast as a run casts them):
the weights of the transformer, VAE, text encoder and fast decoder, and the KV cache's bytes at its plateau for the
preset's cache policy and length (``kv_tokens`` replays each policy's admission rules frame by frame; the tests hold
it to what the real caches hold). Estimated, to be calibrated by ``make gpu-check`` (which prints prediction against
measured peak): the activations of one transformer forward, the cache's working rows (the block being written, the
rotated copies of sink and mid blocks, the buffer's 1/8 growth room), and the decoder's.

Two phases peak: encoding the prompt (the text encoder on the GPU beside the loaded models) and generating (the
cache, one forward's activations and the decoder; the text encoder too unless it is offloaded).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace

import torch

from .config.presets import Preset, load_preset
from .config.settings import Cache, Config
from .engine.components import DTYPES, cast
from .engine.levers import weight_bytes
from .run.plan import Plan

GPU_SIZES = (80, 48, 24, 16, 12)  # GiB, the cards users ask about
HEADROOM = 1.05  # CUDA context, allocator fragmentation: a preset "fits" when peak x HEADROOM <= the card
GIB = 2**30
TEXT_TOKENS = 512
# Wan 2.1's text encoder, assumed when a preset names no text encoder config (its config is in the checkpoint folder)
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}


@dataclass(frozen=True)
class Prediction:
    """Bytes by component; ``peak`` is the larger of the two phases."""

    transformer: int
    vae: int
    text_encoder: int
    fast_decoder: int
    kv_cache: int  # cached keys and values at the plateau (``KVCache.nbytes``)
    kv_working: int  # estimated: the block being written, staged copies, growth room
    activations: int  # estimated: one transformer forward
    text_activations: int  # estimated: one prompt encode
    decoder: int  # estimated: one block's decode
    offload_text_encoder: bool = True
    kv_tokens: int = 0
    encode_on_gpu: bool = True  # False: runtime.text_encoder_device cpu, the encoder never on the GPU

    @property
    def encode_phase(self) -> int:
        text = self.text_encoder + self.text_activations if self.encode_on_gpu else 0
        return self.transformer + self.vae + self.fast_decoder + text

    @property
    def generate_phase(self) -> int:
        text = 0 if self.offload_text_encoder or not self.encode_on_gpu else self.text_encoder
        return (self.transformer + self.vae + self.fast_decoder + text + self.kv_cache + self.kv_working
                + self.activations + self.decoder)

    @property
    def peak(self) -> int:
        return max(self.encode_phase, self.generate_phase)

    def fits(self, gib: int) -> bool:
        return self.peak * HEADROOM <= gib * GIB

    def rows(self) -> list[tuple[str, int, str]]:
        """(component, bytes, how it is known) in table order."""
        if not self.encode_on_gpu:
            text = "exact, on the CPU (runtime.text_encoder_device=cpu): not counted"
        else:
            text = ("exact" + ("" if self.offload_text_encoder else ", kept on the GPU (offload off)")
                    + " (on the GPU while encoding)")
        return [("transformer weights", self.transformer, "exact"), ("VAE weights", self.vae, "exact"),
                ("text encoder weights", self.text_encoder, text),
                ("fast decoder weights", self.fast_decoder, "exact"),
                ("KV cache at its plateau", self.kv_cache, f"exact, {self.kv_tokens} tokens"),
                ("KV working rows", self.kv_working, "estimate"), ("one forward's activations", self.activations,
                                                                   "estimate"),
                ("prompt encoding activations", self.text_activations, "estimate"),
                ("decoder activations", self.decoder, "estimate")]


# ---------------------------------------------------------------------- weights (meta device)
@functools.lru_cache(maxsize=16)
def _meta(kind: str, config: str, dtype: torch.dtype) -> torch.nn.Module:
    """A model of ``kind`` with the JSON ``config``, built on the meta device and cast as a run casts it; kept,
    as the levers' search predicts the same models many times (building UMT5-XXL's 24 layers takes a while)."""
    with torch.device("meta"):
        module = _BUILDERS[kind](**json.loads(config))
    return cast(module, dtype)


def _build_transformer(**config):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**config)


def _build_vae(**config):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**config)


def _build_patch_codec(**config):
    from .engine.patch_codec import PatchCodec

    return PatchCodec(**config)


def _build_text_encoder(**config):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**config))


def _build_tiny_decoder():
    from .engine.tiny_decoder import TinyDecoder

    return TinyDecoder()


_BUILDERS = {"transformer": _build_transformer, "vae": _build_vae, "patch": _build_patch_codec,
             "text_encoder": _build_text_encoder, "tiny_decoder": _build_tiny_decoder}


def _model(kind: str, config: dict, dtype: torch.dtype) -> torch.nn.Module:
    return _meta(kind, json.dumps(config, sort_keys=True), dtype)


def _transformer(cfg: Config, dtype: torch.dtype):
    return _model("transformer", cfg.model.transformer.config, dtype)


def _vae(cfg: Config, dtype: torch.dtype):
    return _model("patch" if cfg.model.vae.kind == "patch" else "vae", cfg.model.vae.config, dtype)


def _text_encoder(cfg: Config, dtype: torch.dtype):
    return _model("text_encoder", cfg.model.text_encoder.config or UMT5_XXL, dtype)


# ---------------------------------------------------------------------- KV cache plateau
@dataclass
class _Seg:
    kind: str  # sink | recent | mid
    first: int
    last: int
    tokens: int


def kv_tokens(cache: Cache, block: int, blocks: int, grid: tuple[int, int]) -> int:
    """The most tokens the cache holds after any block's write (TokenTrim pruning aside): each policy's admission
    rules replayed on frame ranges. ``grid``: latent tokens per frame (height, width)."""
    n, segs, peak = grid[0] * grid[1], [], 0
    sink = 0 if cache.policy == "full" else cache.sink_frames
    for k in range(blocks):
        if cache.policy == "deep_sink":
            _trim_mid(segs, cache.budget_frames * n)
        first, last = k * block, (k + 1) * block - 1
        if first < sink:
            segs.append(_Seg("sink", first, min(last, sink - 1), (min(last, sink - 1) - first + 1) * n))
        if last >= sink:
            segs.append(_Seg("recent", max(first, sink), last, (last - max(first, sink) + 1) * n))
        segs = _admit(cache, segs, block, grid)
        peak = max(peak, sum(s.tokens for s in segs))
    return peak


def _admit(cache: Cache, segs: list[_Seg], block: int, grid: tuple[int, int]) -> list[_Seg]:
    policy, n = cache.policy, grid[0] * grid[1]
    if policy in ("rolling", "sink_window", "infinity_rope", "ema_sink") and cache.window_frames is not None:
        return _keep_from(segs, _newest(segs) - cache.window_frames + 1, n)
    if policy == "rolling_forcing":
        return _keep_from(segs, _newest(segs) + 1 + block - cache.span_frames, n)
    if policy not in ("deep_sink", "three_partition"):
        return segs
    newest = max((s.last for s in segs if s.kind == "recent"), default=-1)
    for s in [s for s in segs if s.kind == "recent" and s.last <= newest - cache.recent_frames]:
        s.kind = "mid"
        if policy == "three_partition":
            ft, fh, fw = cache.compression
            s.tokens = math.ceil((s.last - s.first + 1) / ft) * math.ceil(grid[0] / fh) * math.ceil(grid[1] / fw)
    if policy == "three_partition":
        mid = [s for s in segs if s.kind == "mid"]
        drop = mid[: max(0, len(mid) - cache.mid_capacity)]
        segs = [s for s in segs if all(s is not d for d in drop)]
    return segs


def _newest(segs: list[_Seg]) -> int:
    return max((s.last for s in segs if s.kind != "sink"), default=0)


def _keep_from(segs: list[_Seg], oldest: int, n: int) -> list[_Seg]:
    out = []
    for s in segs:
        if s.kind != "sink" and s.first < oldest:
            s.first = oldest
            s.tokens = max(0, s.last - oldest + 1) * n
        if s.tokens > 0:
            out.append(s)
    return out


def _trim_mid(segs: list[_Seg], budget: int) -> None:
    """Deep sink: the mid tokens cut to the budget at a block's first step (which tokens does not matter here)."""
    excess = sum(s.tokens for s in segs if s.kind == "mid") - budget
    for s in (s for s in segs if s.kind == "mid"):
        cut = min(max(excess, 0), s.tokens)
        s.tokens, excess = s.tokens - cut, excess - cut
    segs[:] = [s for s in segs if s.tokens > 0]


# ---------------------------------------------------------------------- the prediction
@dataclass(frozen=True)
class _Dims:
    """What the estimates read, from the meta-built models."""

    layers: int
    dim: int
    ffn: int
    elem: int  # bytes per element of the run's dtype
    batch: int  # 2 with classifier-free guidance
    grid: tuple[int, int]  # latent tokens per frame
    height: int
    width: int


def predict(cfg: Config, seconds: float, device: str = "cuda", quantize: str | None = None) -> Prediction:
    """Peak GPU memory of ``tokentrim generate`` for ``seconds`` with ``cfg``, from shapes alone. ``device``
    "cpu": the dtypes a CPU run uses (float32), for comparing with models loaded here. ``quantize`` "int8": the
    transformer's linear weights as int8 with a scale per output channel (``runtime.quantize``; None: what the
    config says, if it has that setting)."""
    cpu = device == "cpu"
    quantize = quantize or getattr(cfg.runtime, "quantize", "none")
    dtype = torch.float32 if cpu else DTYPES[cfg.runtime.dtype]
    vae_dtype = DTYPES[cfg.runtime.vae_dtype] if cfg.runtime.vae_dtype and not cpu else dtype
    model, vae, text = _transformer(cfg, dtype), _vae(cfg, vae_dtype), _text_encoder(cfg, dtype)
    d = _dims(cfg, model, vae, dtype)
    plan = Plan.for_preset(seconds, cfg)
    tokens = kv_tokens(cfg.cache, cfg.sampler.block_frames, plan.blocks, d.grid)
    per_token = 2 * d.layers * d.batch * d.dim * d.elem
    fast = _fast_decoder(cfg, vae_dtype)
    return Prediction(
        transformer=_int8_bytes(model) if quantize in ("int8", "fp8") else weight_bytes(model), vae=weight_bytes(vae),
        text_encoder=weight_bytes(text), fast_decoder=weight_bytes(fast) if fast else 0,
        kv_cache=tokens * per_token, kv_working=_kv_working(cfg, d, tokens, per_token),
        activations=_activations(cfg, d, tokens), text_activations=_text_activations(cfg, dtype),
        decoder=_decoder(cfg, d, torch.tensor([], dtype=vae_dtype).element_size()),
        offload_text_encoder=cfg.runtime.offload_text_encoder, kv_tokens=tokens,
        encode_on_gpu=cfg.runtime.text_encoder_device != "cpu")


def _int8_bytes(model: torch.nn.Module) -> int:
    """Weight-only int8: every linear weight one byte per element plus one scale per output row."""
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    saved = sum(m.weight.numel() * m.weight.element_size() - m.weight.numel() - m.out_features * m.weight.element_size()
                for m in linear)
    return weight_bytes(model) - saved


def _dims(cfg: Config, model, vae, dtype: torch.dtype) -> _Dims:
    c = model.config
    scale = vae.spatial_compression_ratio
    ph, pw = c.patch_size[1], c.patch_size[2]
    grid = (cfg.video.height // scale // ph, cfg.video.width // scale // pw)
    return _Dims(c.num_layers, c.num_attention_heads * c.attention_head_dim, c.ffn_dim,
                 torch.tensor([], dtype=dtype).element_size(), 2 if cfg.sampler.guidance_scale > 1 else 1, grid,
                 cfg.video.height, cfg.video.width)


def _fast_decoder(cfg: Config, dtype: torch.dtype):
    if cfg.video.decoder != "tiny":
        return None
    return _model("tiny_decoder", {}, dtype)


def _forward_tokens(cfg: Config, d: _Dims) -> int:
    """Query tokens of one forward: a block (Self Forcing) or the whole window (Rolling Forcing)."""
    frames = cfg.sampler.block_frames * (len(cfg.sampler.steps) if cfg.sampler.kind == "rolling_forcing" else 1)
    return frames * d.grid[0] * d.grid[1] * d.batch


def _kv_working(cfg: Config, d: _Dims, tokens: int, per_token: int) -> int:
    """Estimate: the written block's rows in every layer, a rotated copy of the sink and mid tokens beside the
    recent ones (all of them, at worst), and the buffer's growth room (1/8)."""
    block = cfg.sampler.block_frames * d.grid[0] * d.grid[1]
    frame = d.grid[0] * d.grid[1]
    staged = tokens if cfg.cache.policy in ("three_partition", "deep_sink") else cfg.cache.sink_frames * frame
    return int((block + staged + tokens / 8) * per_token)


def _activations(cfg: Config, d: _Dims, tokens: int) -> int:
    """Estimate: one transformer block's live tensors over the forward's tokens (hidden states, norm, q, k, v,
    rotated q and k, attention output, feed-forward hidden) plus one layer's context keys and values."""
    q = _forward_tokens(cfg, d)
    context = (tokens * d.batch + q) * 2 * d.dim
    return (q * (8 * d.dim + 2 * d.ffn) + context) * d.elem


def _text_activations(cfg: Config, dtype: torch.dtype) -> int:
    enc = cfg.model.text_encoder.config or UMT5_XXL
    width = enc.get("d_model", 512) * 4 + enc.get("d_ff", 1024) * 2
    return TEXT_TOKENS * width * torch.tensor([], dtype=dtype).element_size() * 2


def _decoder(cfg: Config, d: _Dims, elem: int) -> int:
    """Estimate. Wan VAE: its causal feature cache (3.6 GiB in float32 at 480x832 with base_dim 96, measured for
    the design notes) and as much again in transient tensors while a latent frame decodes. Fast decoder: six
    64-channel tensors over the 4 pixel frames of one latent frame, and the block's frames."""
    pixels = d.height * d.width
    out = 3 * 4 * cfg.sampler.block_frames * pixels * 4
    if cfg.video.decoder == "tiny":
        return 6 * 64 * 4 * pixels * elem + out
    if cfg.model.vae.kind == "patch":
        return out
    base = cfg.model.vae.config.get("base_dim", 96)
    cache = 3.6 * GIB * pixels / (480 * 832) * base / 96 * elem / 4
    return int(2 * cache) + out


# ---------------------------------------------------------------------- what brings it under
@dataclass(frozen=True)
class Lever:
    setting: str  # a --set line
    apply: object  # Config -> Config
    quantize: str | None = None


def levers(cfg: Config) -> list[Lever]:
    """The settings that lower the peak, cheapest in quality first, those that apply to ``cfg``."""
    found = []
    rt, cache = cfg.runtime, cfg.cache
    if not rt.offload_text_encoder:
        found.append(Lever("runtime.offload_text_encoder=true",
                           lambda c: replace(c, runtime=replace(c.runtime, offload_text_encoder=True))))
    if rt.text_encoder_device != "cpu":  # the same video within rounding; each prompt encodes slower
        found.append(Lever("runtime.text_encoder_device=cpu",
                           lambda c: replace(c, runtime=replace(c.runtime, text_encoder_device="cpu"))))
    if cfg.video.decoder == "vae" and cfg.model.vae.kind != "patch":
        found.append(Lever("video.decoder=tiny", lambda c: replace(c, video=replace(c.video, decoder="tiny"))))
    if getattr(rt, "quantize", "none") == "none":
        found.append(Lever("runtime.quantize=int8", lambda c: c, "int8"))
    smaller = _smaller_window(cache, cfg.sampler.block_frames)
    if smaller:
        key, value = smaller
        found.append(Lever(f"cache.{key}={value}", lambda c: replace(c, cache=replace(c.cache, **{key: value}))))
    return found


def _smaller_window(cache: Cache, block: int) -> tuple[str, int] | None:
    """Half the policy's bounded part (never below one block): window, mid blocks or mid budget."""
    if cache.policy in ("rolling", "sink_window", "infinity_rope", "ema_sink") and cache.window_frames:
        half = max(block, cache.window_frames // 2)
        return ("window_frames", half) if half < cache.window_frames else None
    key = {"three_partition": "mid_capacity", "deep_sink": "budget_frames"}.get(cache.policy)
    if key and getattr(cache, key) > 1:
        return key, getattr(cache, key) // 2
    return None


def under(cfg: Config, seconds: float, gib: int) -> list[str] | None:
    """The fewest levers, taken in order, that bring the peak under ``gib``: their --set lines ([] when it fits
    as it is, None when even all of them do not)."""
    chosen: list[Lever] = []
    for lever in [None, *levers(cfg)]:
        if lever is not None:
            chosen.append(lever)
        c, quantize = cfg, None
        for lv in chosen:
            c, quantize = lv.apply(c), lv.quantize or quantize
        if predict(c, seconds, quantize=quantize).fits(gib):
            return [lv.setting for lv in chosen]
    return None


def report(preset: Preset, seconds: float) -> list[str]:
    """``doctor --preset``'s lines: the table, then one line per card size."""
    cfg = preset.config
    pred = predict(cfg, seconds)
    head = (f"preset {preset.name}, {seconds:g} s at {cfg.video.width}x{cfg.video.height}, {cfg.runtime.dtype}, "
            f"cache {cfg.cache.policy}: predicted peak GPU memory {pred.peak / GIB:.2f} GiB")
    lines = [head]
    lines += [f"  {name:<28} {n / GIB:8.2f} GiB  {how}" for name, n, how in pred.rows()]
    if not cfg.model.text_encoder.config:
        lines.append("  (text encoder: UMT5-XXL's shapes assumed, Wan 2.1's; the preset names no config)")
    lines.append(f"  {'prompt encoding phase':<28} {pred.encode_phase / GIB:8.2f} GiB")
    lines.append(f"  {'generation phase':<28} {pred.generate_phase / GIB:8.2f} GiB")
    for gib in GPU_SIZES:
        lines.append(_fit_line(cfg, seconds, gib, pred))
    lines.append(f"(fits: peak x {HEADROOM} <= the card; estimates are calibrated by make gpu-check)")
    return lines


def _fit_line(cfg: Config, seconds: float, gib: int, pred: Prediction) -> str:
    if pred.fits(gib):
        return f"{gib:>3} GB: fits"
    sets = under(cfg, seconds, gib)
    if sets is None:
        return f"{gib:>3} GB: does not fit, not even with {', '.join(lv.setting for lv in levers(cfg)) or 'any lever'}"
    return f"{gib:>3} GB: fits with " + " ".join(f"--set {s}" for s in sets)


def print_plan(ref: str, seconds: float, overrides: list[str] | None = None) -> None:
    """``tokentrim doctor --preset``: the plan of a preset (name or path, with --set lines) on stdout."""
    from .config.checks import require_seconds

    require_seconds(seconds, "--seconds")
    for line in report(load_preset(ref, overrides, architecture=False), seconds):
        print(line)


def predict_preset(name: str, seconds: float, overrides: list[str] | None = None) -> Prediction:
    """The prediction for a preset by name or path (``bench/gpu_check.py`` compares it with the measured peak)."""
    return predict(load_preset(name, overrides, architecture=False).config, seconds)
