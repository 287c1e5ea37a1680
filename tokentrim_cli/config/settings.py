"""What a preset holds: one frozen dataclass per section, every field with its check, its allowed values in
words, and its default.

These classes are the schema: ``config.py`` validates YAML and ``--set`` against them and returns a filled
:class:`Config`, so a default is applied in exactly one place, and everything downstream reads attributes.
``Config.as_dict()`` gives the resolved YAML back (``presets show``, the sidecar's ``config``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

REQUIRED = dataclasses.MISSING


def setting(check: Callable[[object], bool], allowed: str, default=REQUIRED, *, key: str | None = None,
            convert: Callable | None = None):
    """A leaf field. ``allowed`` completes "X must be ..."; ``key`` is the YAML name when it is not a Python
    name (``lambda``); ``convert`` turns a checked YAML value into the stored one (lists into tuples)."""
    meta = {"check": check, "allowed": allowed, "key": key, "convert": convert}
    if isinstance(default, dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def choice(*options: str, default=None, allowed: str | None = None):
    """One of ``options``; the default is the first unless given (``REQUIRED``: the preset must say)."""
    return setting(lambda v: v in options, allowed or "one of " + ", ".join(options),
                   options[0] if default is None else default)


def section():
    """A nested section (its class is the field's type); a missing one is validated as empty."""
    return field(metadata={"section": True})


def integer(lo=None, hi=None, extra=None) -> Callable[[object], bool]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return False
        return (lo is None or v >= lo) and (hi is None or v <= hi) and (extra is None or extra(v))

    return check


def number(lo=None, hi=None, lo_open=False) -> Callable[[object], bool]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or v <= hi

    return check


def _steps(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(integer(1, 1000)(s) for s in v) and v == sorted(v, reverse=True)


def _boolean(v) -> bool:
    return isinstance(v, bool)


def _string(v) -> bool:
    return isinstance(v, str)


def _mapping(v) -> bool:
    return isinstance(v, dict)


def _weights(v) -> bool:
    return isinstance(v, str) and v.strip() != ""


WEIGHTS = "a path, hf://OWNER/REPO[/PATH], https://URL of one file, or random[:SEED]"
# TAEHV's Wan 2.1 decoder (``video.decoder: tiny``, engine/tiny_decoder.py), pinned to the commit that last changed it
TINY_DECODER_WEIGHTS = ("https://github.com/madebyollin/taehv/raw/0ad83bb8fdc48e9e94138704e939d500a3b43660/"
                        "safetensors/taew2_1.safetensors")
ARCH = "a mapping of constructor arguments"


class Section:
    def as_dict(self) -> dict:
        """The section as resolved YAML: YAML key names, lists for tuples, nested sections as mappings."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Section):
                value = value.as_dict()
            elif isinstance(value, tuple):
                value = list(value)
            else:
                value = copy.deepcopy(value)
            out[f.metadata.get("key") or f.name] = value
        return out


# ---------------------------------------------------------------------- model
@dataclass(frozen=True, kw_only=True)
class Weights(Section):
    """A transformer or text encoder: constructor arguments and where its weights come from."""

    config: dict = setting(_mapping, ARCH, {})
    weights: str = setting(_weights, WEIGHTS)


@dataclass(frozen=True, kw_only=True)
class Codec(Section):
    """The video codec: Wan's VAE or the toy world's patch codec."""

    kind: str | None = setting(lambda v: v in ("wan", "patch"), "one of wan, patch", None)  # None: wan (the
    # resolved YAML of presets that omit it has said null since the first release; batch --resume hashes it)
    config: dict = setting(_mapping, ARCH, {})
    weights: str = setting(_weights, WEIGHTS)

    @property
    def temporal_ratio(self) -> int:
        """Pixel frames per latent frame after the first, known before anything loads (4 for Wan2.1's VAE)."""
        if self.kind == "patch":
            return 1
        return 2 ** sum(bool(x) for x in self.config.get("temperal_downsample", [False, True, True]))


@dataclass(frozen=True, kw_only=True)
class Transformer(Weights):
    """The generator: a base checkpoint, optionally with a LoRA merged into it at load (LongLive)."""

    checkpoint_key: str | None = setting(lambda v: v is None or _weights(v), "null (generator_ema, else "
                                         "generator, else model) or the top-level key of the .pt to read", None)
    lora: str | None = setting(lambda v: v is None or _weights(v), "null (no LoRA) or a path or "
                               "hf://OWNER/REPO/PATH of a LoRA file", None)
    lora_scale: float = setting(number(), "a number (the LoRA's alpha / rank; W += scale * B @ A)", 1.0)


def _tokenizer(v) -> bool:
    return (isinstance(v, str) and v.strip() != "") or (isinstance(v, dict) and v.get("kind") == "words")


@dataclass(frozen=True, kw_only=True)
class Model(Section):
    transformer: Transformer = section()
    vae: Codec = section()
    text_encoder: Weights = section()
    tokenizer: str | dict = setting(_tokenizer, "a weights reference or {kind: words, vocab: [...]}")
    max_text_length: int = setting(integer(1, 4096), "an integer from 1 to 4096", 512)
    tiny_decoder: str = setting(_weights, WEIGHTS + " (the fast decoder video.decoder tiny uses: TAEHV's taew2_1, MIT)",
                                TINY_DECODER_WEIGHTS)


# ---------------------------------------------------------------------- sampling
@dataclass(frozen=True, kw_only=True)
class Sampler(Section):
    kind: str = choice("self_forcing", "rolling_forcing", default=REQUIRED)
    steps: tuple = setting(_steps, "a decreasing list of integers in 1..1000, e.g. [1000, 750, 500, 250]",
                           convert=tuple)
    shift: float = setting(number(0, lo_open=True), "a number > 0", 5.0)
    block_frames: int = setting(integer(1, 64), "an integer from 1 to 64", 3)
    context_noise: float = setting(number(0, 1000), "a timestep from 0 to 1000", 0)
    guidance_scale: float = setting(number(1), "a number >= 1 (1: no classifier-free guidance; > 1 doubles the "
                                    "cost)", 1.0)
    guidance_min_timestep: float = setting(number(0, 1000), "a timestep from 0 to 1000 (frames below it are not "
                                           "guided)", 0)
    negative_prompt: str = setting(_string, "a string (the guidance's unconditional prompt)", "")
    solver: str = choice("renoise", "euler", allowed="renoise (distilled few-step models) or euler (flow-matching "
                         "models: an ODE step that keeps the noise the model sees)")
    switch: str = choice("recache", "keep", "cut", "rope_cut", allowed="recache, keep, cut or rope_cut (how a prompt "
                         "timeline changes prompt: rebuild the cache under the new prompt, keep it, clear it, or keep "
                         "it and jump the RoPE distance for one block: Infinity-RoPE's scene cut, cache.policy "
                         "infinity_rope only)")
    first_block_steps: tuple | None = setting(lambda v: v is None or _steps(v), "null (the first block uses steps) "
                                              "or a decreasing list of integers in 1..1000 for the first block only "
                                              "(Causal Forcing++'s 1- and 2-step models: [1000, 750, 500, 250])",
                                              None, convert=tuple)


def _compression(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(integer(1)(x) for x in v)


CACHE_POLICIES = ("full", "rolling", "rolling_forcing", "sink_window", "deep_sink", "three_partition", "ema_sink",
                  "infinity_rope")  # the names ``cache.policy`` accepts (each a class in engine/, or an alias)
POLICY_ALIASES = {"sink_window": "rolling"}  # older names of a policy: the one place they are resolved


@dataclass(frozen=True, kw_only=True)
class Cache(Section):
    """The KV-cache policy and its parameters; each policy reads the fields it needs (``engine/policies.py``)."""

    policy: str = choice(*CACHE_POLICIES, default="rolling")
    window_frames: int | None = setting(lambda v: v is None or integer(1)(v), "a positive integer or null (no limit)",
                                        None)
    sink_frames: int = setting(integer(0), "an integer >= 0", 0)
    span_frames: int = setting(integer(1), "a positive integer (latent frames one attention call spans, current "
                               "included)", 21)
    recent_frames: int = setting(integer(0), "an integer >= 0", 4)
    mid_capacity: int = setting(integer(0), "an integer >= 0 (compressed blocks kept)", 64)
    mid_top_k: int = setting(integer(0), "an integer >= 0 (mid blocks attended per block)", 16)
    budget_frames: int = setting(integer(1), "a positive integer", 16)
    compression: tuple = setting(_compression, "three pooling factors [time, height, width], e.g. [2, 4, 4]",
                                 (2, 4, 4), convert=tuple)
    selection: str = choice("per_layer", "shared")
    query_samples: int = setting(integer(1), "a positive integer", 256)
    ema_alpha: float = setting(number(0, 1), "a number from 0 to 1 (ema_sink: sink = alpha sink + (1 - alpha) evicted)",
                               0.999)
    positions: str = choice("packed", "absolute", allowed="packed (gaps closed: the sink sits right before the "
                            "window; Rolling Forcing) or absolute (every key at its own latent frame; LongLive, Self "
                            "Forcing)")

    @property
    def policy_name(self) -> str:
        """The policy ``policy`` names, aliases resolved (``sink_window`` is ``rolling``)."""
        return POLICY_ALIASES.get(self.policy, self.policy)


@dataclass(frozen=True, kw_only=True)
class Pruning(Section):
    """TokenTrim: drift-triggered pruning of the KV cache and regeneration of the block (``pruning.py``)."""

    enabled: bool = setting(_boolean, "true or false", False)
    p: float = setting(number(0, 1, lo_open=True), "a fraction in (0, 1]", 0.1)
    lam: float = setting(number(0), "a number >= 0", 2.0, key="lambda")
    warmup: int = setting(integer(0), "an integer >= 0", 2)
    max_regenerations: int = setting(integer(0, 16), "an integer from 0 to 16", 1)
    measure_at: str = choice("final", "first_step")
    noise: str = choice("same", "fresh")


# ---------------------------------------------------------------------- output and machine
MAX_SIDE = 4096  # video.width / height: beyond 4K a frame's latents and decoder state do not fit any GPU


def _multiple_of_16(v) -> bool:
    return integer(16, MAX_SIDE)(v) and v % 16 == 0


@dataclass(frozen=True, kw_only=True)
class Video(Section):
    height: int = setting(_multiple_of_16, f"a positive multiple of 16 up to {MAX_SIDE}")
    width: int = setting(_multiple_of_16, f"a positive multiple of 16 up to {MAX_SIDE}")
    fps: int = setting(integer(1, 240), "an integer from 1 to 240", 16)
    crf: int = setting(integer(1, 51), "an integer from 1 to 51 (0 is lossless and unplayable in yuv420p)", 18)
    preset: str = choice("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower")
    decoder: str = choice("vae", "tiny", allowed="vae (the model's own Wan VAE) or tiny (TAEHV's taew2_1: several "
                          "times faster and lighter, slightly softer pictures; model.tiny_decoder)")

    @property
    def x264_preset(self) -> str:
        """The encoder's speed/size preset (the setting ``video.preset``; not a tokentrim preset)."""
        return self.preset


def _device(v) -> bool:
    return isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda"))


@dataclass(frozen=True, kw_only=True)
class Runtime(Section):
    device: str = setting(_device, "auto, cpu or cuda[:N]", "auto")
    dtype: str = choice("bfloat16", "float16", "float32")
    vae_dtype: str | None = setting(lambda v: v in (None, "bfloat16", "float16", "float32"),
                                    "null, bfloat16, float16 or float32", None)
    offload_text_encoder: bool = setting(_boolean, "true or false", True)
    text_encoder_device: str = choice("auto", "cpu", allowed="auto (the run's device: the encoder visits it for each "
                                      "prompt) or cpu (prompts encode on the CPU: the GPU never holds the text "
                                      "encoder, 12.5 GiB for Wan's UMT5-XXL; each prompt then takes seconds: about 22 "
                                      "on 2 cores)")
    overlap_decode: bool = setting(_boolean, "true or false (decode and encode on a worker thread, overlapping the "
                                   "next block's generation)", True)
    compile: bool = setting(_boolean, "true or false (torch.compile the transformer blocks)", False)
    compile_mode: str = choice("default", "max-autotune-no-cudagraphs", allowed="default or "
                               "max-autotune-no-cudagraphs (torch.compile's mode with runtime.compile; autotuning "
                               "compiles for minutes; CUDA graphs are runtime.cuda_graphs)")
    compile_dynamic: bool = setting(_boolean, "true or false (runtime.compile with dynamic shapes: one compiled "
                                    "graph for every token count; false recompiles per shape)", True)
    cuda_graphs: bool = setting(_boolean, "true or false (replay each transformer block's work as CUDA graphs; a "
                                "CUDA device only)", False)
    quantize: str = choice("none", "int8", "fp8", allowed="none, int8 (weight-only, any device) or fp8 (W8A8 "
                           "dynamic, CUDA compute capability 8.9+): the transformer's linear layers, with torchao")
    threads: int | None = setting(lambda v: v is None or integer(1, 1024)(v), "a positive integer or null (the CPUs "
                                  "this process may use)", None)
    state_every: int = setting(integer(0, 1_000_000), "an integer >= 0 (blocks between saves of the resumable state "
                               "NAME.state/; 0: only when a run stops early)", 32)


@dataclass(frozen=True, kw_only=True)
class License(Section):
    """The checkpoint's license, whether it allows commercial use, and where that was read. A run of a checkpoint
    that does not allow commercial use says so (``notices.py``); null fields: not stated (a user's own preset)."""

    name: str | None = setting(lambda v: v is None or _weights(v), "null or a short license name, e.g. Apache-2.0 or "
                               "'academic use only'", None)
    commercial: bool | None = setting(lambda v: v is None or _boolean(v), "null, true or false (the license allows "
                                      "commercial use)", None)
    source: str | None = setting(lambda v: v is None or _weights(v), "null or where the license was read, e.g. "
                                 "github.com/OWNER/REPO LICENSE", None)

    def describe(self) -> str:
        """One line: "Apache-2.0 (commercial use allowed; github.com/... LICENSE)", or that none is stated."""
        if self.name is None:
            return "license not stated"
        use = {True: "commercial use allowed", False: "NOT for commercial use", None: "commercial use not stated"}
        return f"{self.name} ({use[self.commercial]}{'; ' + self.source if self.source else ''})"


@dataclass(frozen=True, kw_only=True)
class Config(Section):
    """A whole resolved preset."""

    description: str = setting(_string, "a string", "")
    license: License = section()
    model: Model = section()
    sampler: Sampler = section()
    cache: Cache = section()
    pruning: Pruning = section()
    video: Video = section()
    runtime: Runtime = section()


def yaml_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def section_type(cls: type, f: dataclasses.Field) -> type | None:
    """The class of a nested section field, or None for a leaf."""
    if not f.metadata.get("section"):
        return None
    return SECTIONS[f.type] if isinstance(f.type, str) else f.type


SECTIONS = {c.__name__: c for c in (Weights, Transformer, Codec, Model, Sampler, Cache, Pruning, Video, Runtime,
                                    License, Config)}
