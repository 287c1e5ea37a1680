"""Presets: YAML files naming the model components and every setting of a run, validated strictly.

A preset may ``extends: OTHER`` and override any part of it. ``--set dotted.key=value`` overrides any value
(the value is read as YAML: numbers, booleans and lists work). Every problem becomes one :class:`ConfigError`
line naming the file (or ``--set``), the key and what is allowed, before any model is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError
from .settings import Config, section_type, yaml_key

PRESETS_ENV = "TOKENTRIM_PRESETS"  # extra folders to search, os.pathsep-separated
DEFAULT_ENV = "TOKENTRIM_PRESET"  # the preset used when --preset is not given


def default_preset() -> str:
    """``$TOKENTRIM_PRESET``, else the shipped toy model."""
    return os.environ.get(DEFAULT_ENV) or "toy"


# ---------------------------------------------------------------------- finding presets
def preset_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(PRESETS_ENV, "").split(os.pathsep) if p]
    package = Path(__file__).resolve().parents[1]  # tokentrim_cli/
    checkout = package.parent / "presets"
    installed = package / "presets"
    dirs += [d for d in (checkout, installed) if d.is_dir()]
    return dirs


def list_presets() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in preset_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def looks_like_path(ref: str) -> bool:
    """The one rule for "is this preset reference a file?": a YAML suffix or a folder separator."""
    return Path(ref).suffix in (".yaml", ".yml") or "/" in ref or os.sep in ref


def preset_label(ref: str) -> str:
    """How a preset reference is named in file names and records: a file's stem, else the name itself."""
    return Path(ref).stem if looks_like_path(ref) else ref


def find_preset(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if looks_like_path(name_or_path):
        if p.is_dir():
            raise ConfigError(f"--preset {p} is a folder; give a preset name or the path of a YAML file")
        if not p.is_file():
            raise ConfigError(f"preset file {p} does not exist")
        return p
    presets = list_presets()
    if name_or_path not in presets and p.is_dir():
        raise ConfigError(f"--preset {p} is a folder; give a preset name or the path of a YAML file")
    if name_or_path not in presets:
        raise ConfigError(f"unknown preset {name_or_path!r}; available: {', '.join(presets) or 'none'} (see: tokentrim presets list)")
    return presets[name_or_path]


# ---------------------------------------------------------------------- loading
@dataclass
class Preset:
    name: str
    path: Path
    config: Config  # fully resolved: defaults filled, extends merged, overrides applied


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
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: extends must be a preset name or path, got {parent!r}")
        try:
            base_path = (path.parent / parent) if parent.endswith((".yaml", ".yml")) else find_preset(parent)
            if not base_path.is_file():
                raise ConfigError(f"preset file {base_path} does not exist")
        except ConfigError as exc:
            raise ConfigError(f"{path}: extends: {exc}") from None
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
    """Set ``keys`` in the raw YAML mapping; a key the schema does not know is an error, except below a free-form
    mapping (``model.*.config``) or a leaf (validation then checks the leaf's value)."""
    node, schema = cfg, Config
    for i, k in enumerate(keys):
        if schema is not None:
            fields = _fields(schema)
            if k not in fields:
                raise ConfigError(f"{source}: unknown key {'.'.join(keys[: i + 1])}; allowed: {', '.join(fields)}")
            schema = section_type(schema, fields[k])
        if i == len(keys) - 1:
            node[k] = value
        else:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]


def _fields(cls) -> dict[str, dataclasses.Field]:
    """A section's fields by YAML key (the top level also allows ``extends``, read before validation)."""
    fields = {yaml_key(f): f for f in dataclasses.fields(cls)}
    return {"description": fields.pop("description"), "extends": _EXTENDS, **fields} if cls is Config else fields


_EXTENDS = dataclasses.field(metadata={"check": lambda v: isinstance(v, str), "allowed": "a preset name or path"})
_EXTENDS.name = "extends"


def validate(cfg: dict, source: str, architecture: bool = True) -> Config:
    """Check every key against the schema (``settings.py``), fill defaults, return the typed :class:`Config`;
    one ConfigError for the first problem. ``architecture=False`` leaves out the check of the model's config keys
    against diffusers' classes (importing them takes seconds: see :func:`check_architecture`)."""
    config = _build(Config, {k: v for k, v in cfg.items() if k != "extends"}, "", source)
    if architecture:
        _check_architecture(config, source)
    if config.sampler.first_block_steps is not None and config.sampler.kind != "self_forcing":
        raise ConfigError(f"{source}: sampler.first_block_steps needs sampler.kind self_forcing (a Rolling Forcing "
                          "window has no first block of its own); remove it or set it to null")
    _check_decoder(config, source)
    if config.cache.policy == "ema_sink" and config.cache.window_frames is None:
        raise ConfigError(f"{source}: cache.policy ema_sink needs cache.window_frames (the frames kept besides the "
                          "sink), e.g. --set cache.window_frames=3")
    return config


def _check_decoder(config: Config, source: str) -> None:
    """The fast decoder reads Wan 2.1 latents (16 channels): not the toy world's patch codec's."""
    vae = config.model.vae
    if config.video.decoder == "tiny" and (vae.kind == "patch" or vae.config.get("z_dim", 16) != 16):
        raise ConfigError(f"{source}: video.decoder tiny decodes Wan 2.1 latents (16 channels), which this preset's "
                          "model.vae does not make; use video.decoder vae")


def check_architecture(preset: "Preset") -> None:
    """The check ``load_preset(..., architecture=False)`` left out: run it once the cheap input checks passed."""
    _check_architecture(preset.config, str(preset.path))


def _build(cls, value, path: str, source: str):
    fields = _fields(cls)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {path} must be a mapping with keys {', '.join(fields)}, got {value!r}")
    for k in value:
        if k not in fields:
            where = f"{path}.{k}" if path else k
            raise ConfigError(f"{source}: unknown key {where}; allowed: {', '.join(fields)}")
    kwargs = {}
    for key, f in fields.items():
        if f is _EXTENDS:
            continue
        where = f"{path}.{key}" if path else key
        sub = section_type(cls, f)
        kwargs[f.name] = _build(sub, value.get(key), where, source) if sub else _leaf(f, value.get(key), where, source)
    return cls(**kwargs)


def _leaf(f: dataclasses.Field, value, path: str, source: str):
    allowed = f.metadata["allowed"]
    if value is None:
        if f.default is not dataclasses.MISSING:
            return copy.deepcopy(f.default)
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        raise ConfigError(f"{source}: {path} is required ({allowed})")
    if not f.metadata["check"](value):
        raise ConfigError(f"{source}: {path} must be {allowed}, got {value!r}")
    convert = f.metadata["convert"]
    return convert(value) if convert else copy.deepcopy(value)


def _check_architecture(cfg: Config, source: str) -> None:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config

    from ..engine.patch_codec import PatchCodec

    model = cfg.model
    vae_cls = PatchCodec if model.vae.kind == "patch" else AutoencoderKLWan
    for key, cls, spec in (("transformer", WanTransformer3DModel, model.transformer), ("vae", vae_cls, model.vae)):
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
        for arg in spec.config:
            if arg not in allowed:
                raise ConfigError(f"{source}: unknown key model.{key}.config.{arg}; allowed: {', '.join(sorted(allowed))}")
    enc = model.text_encoder.config
    for arg in enc:
        if not hasattr(UMT5Config(), arg):
            raise ConfigError(f"{source}: unknown key model.text_encoder.config.{arg} (not a UMT5Config field)")
    t = model.transformer.config
    if "text_dim" in t and "d_model" in enc and t["text_dim"] != enc["d_model"]:
        raise ConfigError(
            f"{source}: model.transformer.config.text_dim ({t['text_dim']}) must equal "
            f"model.text_encoder.config.d_model ({enc['d_model']})"
        )


def load_preset(name_or_path: str | None = None, overrides: list[str] | None = None,
                architecture: bool = True) -> Preset:
    path = find_preset(name_or_path or default_preset())
    raw = _load_raw(path)
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(raw, keys, value, f"--set {text}")
    source = str(path) if not overrides else f"{path} (with --set)"
    return Preset(name=path.stem, path=path, config=validate(raw, source, architecture))


def dump(cfg: Config | dict) -> str:
    """Resolved YAML, in the schema's order."""
    data = cfg.as_dict() if isinstance(cfg, Config) else cfg
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
