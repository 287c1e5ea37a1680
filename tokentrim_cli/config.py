"""Presets: YAML files naming the model components and every setting of a run, validated strictly.

A preset may ``extends: OTHER`` and override any part of it. ``--set dotted.key=value`` overrides any value
(the value is read as YAML: numbers, booleans and lists work). Every problem becomes one :class:`ConfigError`
line naming the file (or ``--set``), the key and what is allowed, before any model is loaded.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import ConfigError

PRESETS_ENV = "TOKENTRIM_PRESETS"  # extra folders to search, os.pathsep-separated
DEFAULT_ENV = "TOKENTRIM_PRESET"  # the preset used when --preset is not given


def default_preset() -> str:
    """``$TOKENTRIM_PRESET``, else the shipped toy model."""
    return os.environ.get(DEFAULT_ENV) or "toy"


# ---------------------------------------------------------------------- schema
class Rule:
    def __init__(self, check, allowed: str, default=None):
        self.check, self.allowed, self.default = check, allowed, default


def _int(lo=None, hi=None, extra=None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return False
        return (lo is None or v >= lo) and (hi is None or v <= hi) and (extra is None or extra(v))

    return check


def _num(lo=None, hi=None, lo_open=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or v <= hi

    return check


def _choice(*options):
    return Rule(lambda v: v in options, "one of " + ", ".join(map(str, options)))


def _steps(v):
    return isinstance(v, list) and len(v) > 0 and all(_int(1, 1000)(s) for s in v) and v == sorted(v, reverse=True)


def _optional(check):
    return lambda v: v is None or check(v)


_WEIGHTS = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a path, hf://OWNER/REPO[/PATH], or random[:SEED]")
_ARCH = Rule(lambda v: isinstance(v, dict), "a mapping of constructor arguments", default={})

SCHEMA: dict = {
    "description": Rule(lambda v: isinstance(v, str), "a string", default=""),
    "extends": Rule(lambda v: isinstance(v, str), "a preset name or path", default=None),
    "model": {
        "transformer": {"config": _ARCH, "weights": _WEIGHTS},
        "vae": {"kind": _choice("wan", "patch"), "config": _ARCH, "weights": _WEIGHTS},
        "text_encoder": {"config": _ARCH, "weights": _WEIGHTS},
        "tokenizer": Rule(
            lambda v: (isinstance(v, str) and v.strip() != "") or (isinstance(v, dict) and v.get("kind") == "words"),
            "a weights reference or {kind: words, vocab: [...]}",
        ),
        "max_text_length": Rule(_int(1, 4096), "an integer from 1 to 4096", default=512),
    },
    "sampler": {
        "kind": _choice("self_forcing", "rolling_forcing"),
        "steps": Rule(_steps, "a decreasing list of integers in 1..1000, e.g. [1000, 750, 500, 250]"),
        "shift": Rule(_num(0, lo_open=True), "a number > 0", default=5.0),
        "block_frames": Rule(_int(1, 64), "an integer from 1 to 64", default=3),
        "context_noise": Rule(_num(0, 1000), "a timestep from 0 to 1000", default=0),
        "guidance_scale": Rule(_num(1), "a number >= 1 (1: no classifier-free guidance; > 1 doubles the cost)", default=1.0),
        "guidance_min_timestep": Rule(_num(0, 1000), "a timestep from 0 to 1000 (frames below it are not guided)", default=0),
        "negative_prompt": Rule(lambda v: isinstance(v, str), "a string (the guidance's unconditional prompt)", default=""),
        "solver": Rule(_choice("renoise", "euler").check, "renoise (distilled few-step models) or euler (flow-matching "
                       "models: an ODE step that keeps the noise the model sees)", default="renoise"),
    },
    "cache": {
        "policy": _choice("full", "rolling", "rolling_forcing", "sink_window", "deep_sink", "three_partition"),
        "window_frames": Rule(_optional(_int(1)), "a positive integer or null (no limit)", default=None),
        "sink_frames": Rule(_int(0), "an integer >= 0", default=0),
        "span_frames": Rule(_int(1), "a positive integer (latent frames one attention call spans, current included)",
                            default=21),
        "recent_frames": Rule(_int(0), "an integer >= 0", default=4),
        "mid_capacity": Rule(_int(0), "an integer >= 0 (compressed blocks kept)", default=64),
        "mid_top_k": Rule(_int(0), "an integer >= 0 (mid blocks attended per block)", default=16),
        "budget_frames": Rule(_int(1), "a positive integer", default=16),
        "compression": Rule(
            lambda v: isinstance(v, list) and len(v) == 3 and all(_int(1)(x) for x in v),
            "three pooling factors [time, height, width], e.g. [2, 4, 4]",
            default=[2, 4, 4],
        ),
        "selection": _choice("per_layer", "shared"),
        "query_samples": Rule(_int(1), "a positive integer", default=256),
    },
    "pruning": {
        "enabled": Rule(lambda v: isinstance(v, bool), "true or false", default=False),
        "p": Rule(_num(0, 1, lo_open=True), "a fraction in (0, 1]", default=0.1),
        "lambda": Rule(_num(0), "a number >= 0", default=2.0),
        "warmup": Rule(_int(0), "an integer >= 0", default=2),
        "max_regenerations": Rule(_int(0, 16), "an integer from 0 to 16", default=1),
        "measure_at": _choice("final", "first_step"),
        "noise": _choice("same", "fresh"),
    },
    "video": {
        "height": Rule(_int(16, extra=lambda v: v % 16 == 0), "a positive multiple of 16"),
        "width": Rule(_int(16, extra=lambda v: v % 16 == 0), "a positive multiple of 16"),
        "fps": Rule(_int(1, 240), "an integer from 1 to 240", default=16),
        "crf": Rule(_int(1, 51), "an integer from 1 to 51 (0 is lossless and unplayable in yuv420p)", default=18),
        "preset": _choice("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"),
    },
    "runtime": {
        "device": Rule(lambda v: isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda")), "auto, cpu or cuda[:N]", default="auto"),
        "dtype": _choice("bfloat16", "float16", "float32"),
        "vae_dtype": Rule(lambda v: v in (None, "bfloat16", "float16", "float32"), "null, bfloat16, float16 or float32", default=None),
        "offload_text_encoder": Rule(lambda v: isinstance(v, bool), "true or false", default=True),
        "overlap_decode": Rule(lambda v: isinstance(v, bool), "true or false (decode and encode on a worker thread, "
                               "overlapping the next block's generation)", default=True),
        "compile": Rule(lambda v: isinstance(v, bool), "true or false (torch.compile the transformer blocks)",
                        default=False),
    },
}
# choices default to their first option
for _section in SCHEMA.values():
    if isinstance(_section, dict):
        for _rule in _section.values():
            if isinstance(_rule, Rule) and _rule.default is None and _rule.allowed.startswith("one of "):
                _rule.default = _rule.allowed[len("one of ") :].split(", ")[0]
SCHEMA["sampler"]["kind"].default = None  # a preset must say which sampler
SCHEMA["cache"]["policy"].default = "rolling"
REQUIRED = {("model", "transformer", "weights"), ("model", "vae", "weights"), ("model", "text_encoder", "weights"),
            ("model", "tokenizer"), ("sampler", "kind"), ("sampler", "steps"), ("video", "height"), ("video", "width")}


# ---------------------------------------------------------------------- finding presets
def preset_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(PRESETS_ENV, "").split(os.pathsep) if p]
    checkout = Path(__file__).resolve().parent.parent / "presets"
    installed = Path(__file__).resolve().parent / "presets"
    dirs += [d for d in (checkout, installed) if d.is_dir()]
    return dirs


def list_presets() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in preset_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def find_preset(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.is_file():
            raise ConfigError(f"preset file {p} does not exist")
        return p
    presets = list_presets()
    if name_or_path not in presets:
        raise ConfigError(f"unknown preset {name_or_path!r}; available: {', '.join(presets) or 'none'} (see: tokentrim presets list)")
    return presets[name_or_path]


# ---------------------------------------------------------------------- loading
@dataclass
class Preset:
    name: str
    path: Path
    config: dict  # fully resolved: defaults filled, extends merged, overrides applied


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a mapping of sections (model, sampler, cache, ...)")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "config":
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _load_raw(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise ConfigError(f"{path}: extends forms a cycle")
    data = _read_yaml(path)
    parent = data.get("extends")
    if parent:
        base_path = (path.parent / parent) if str(parent).endswith((".yaml", ".yml")) else find_preset(parent)
        data = _merge(_load_raw(base_path, seen + (path,)), {k: v for k, v in data.items() if k != "extends"})
    return data


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected dotted.key=value, e.g. --set pruning.lambda=1.5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text}: expected dotted.key=value, e.g. --set pruning.lambda=1.5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(cfg: dict, keys: list[str], value, source: str) -> None:
    node, schema = cfg, SCHEMA
    for i, k in enumerate(keys[:-1]):
        sub = schema.get(k) if isinstance(schema, dict) else None
        if isinstance(schema, dict) and sub is None and not _free_form(schema):
            raise ConfigError(f"{source}: unknown key {'.'.join(keys[: i + 1])}; allowed: {', '.join(schema)}")
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node, schema = node[k], sub if isinstance(sub, dict) else {}
    last = keys[-1]
    if isinstance(schema, dict) and schema and last not in schema and not _free_form(schema):
        raise ConfigError(f"{source}: unknown key {'.'.join(keys)}; allowed: {', '.join(schema)}")
    node[last] = value


def _free_form(schema) -> bool:
    return schema is _ARCH or schema == {}


def validate(cfg: dict, source: str) -> dict:
    """Check every key against SCHEMA, fill defaults, return a new dict; one ConfigError for the first problem."""
    out = {}
    for key in cfg:
        if key not in SCHEMA:
            raise ConfigError(f"{source}: unknown key {key}; allowed: {', '.join(SCHEMA)}")
    for key, rule in SCHEMA.items():
        out[key] = _validate_node(cfg.get(key), rule, key, source)
    out.pop("extends", None)
    _check_architecture(out, source)
    return out


def _validate_node(value, rule, path: str, source: str):
    if isinstance(rule, Rule):
        if value is None:
            if tuple(path.split(".")) in REQUIRED:
                raise ConfigError(f"{source}: {path} is required ({rule.allowed})")
            return copy.deepcopy(rule.default)
        if rule is _ARCH and not isinstance(value, dict):
            raise ConfigError(f"{source}: {path} must be {rule.allowed}, got {value!r}")
        if not rule.check(value):
            raise ConfigError(f"{source}: {path} must be {rule.allowed}, got {value!r}")
        return copy.deepcopy(value)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {path} must be a mapping with keys {', '.join(rule)}, got {value!r}")
    for k in value:
        if k not in rule:
            raise ConfigError(f"{source}: unknown key {path}.{k}; allowed: {', '.join(rule)}")
    return {k: _validate_node(value.get(k), sub, f"{path}.{k}", source) for k, sub in rule.items()}


def _check_architecture(cfg: dict, source: str) -> None:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config

    from .engine.patch_codec import PatchCodec

    vae_cls = PatchCodec if cfg["model"]["vae"]["kind"] == "patch" else AutoencoderKLWan
    for key, cls in (("transformer", WanTransformer3DModel), ("vae", vae_cls)):
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
        for arg in cfg["model"][key]["config"]:
            if arg not in allowed:
                raise ConfigError(f"{source}: unknown key model.{key}.config.{arg}; allowed: {', '.join(sorted(allowed))}")
    enc = cfg["model"]["text_encoder"]["config"]
    for arg in enc:
        if not hasattr(UMT5Config(), arg):
            raise ConfigError(f"{source}: unknown key model.text_encoder.config.{arg} (not a UMT5Config field)")
    t, e = cfg["model"]["transformer"]["config"], enc
    if "text_dim" in t and "d_model" in e and t["text_dim"] != e["d_model"]:
        raise ConfigError(
            f"{source}: model.transformer.config.text_dim ({t['text_dim']}) must equal "
            f"model.text_encoder.config.d_model ({e['d_model']})"
        )


def load_preset(name_or_path: str | None = None, overrides: list[str] | None = None) -> Preset:
    path = find_preset(name_or_path or default_preset())
    raw = _load_raw(path)
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(raw, keys, value, f"--set {text}")
    source = str(path) if not overrides else f"{path} (with --set)"
    return Preset(name=path.stem, path=path, config=validate(raw, source))


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=120)
