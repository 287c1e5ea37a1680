"""``OUT_DIR/manifest.jsonl``: one line per finished item, appended atomically by every process, read back by
``--resume`` (the latest line of an item wins)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path

MANIFEST = "manifest.jsonl"

# What the settings hash reads: a versioned, explicit list of resolved-YAML fields, so that a manifest written by
# an older tokentrim keeps resuming (its finished items are skipped) and a new field never changes old hashes.
# HASH_FIELDS_V1 is frozen: the fields of tokentrim 0.1.0's resolved config, always hashed.
HASH_FIELDS_V1 = (
    ("description",),
    *(("model", "transformer", k) for k in ("config", "weights")),
    *(("model", "vae", k) for k in ("kind", "config", "weights")),
    *(("model", "text_encoder", k) for k in ("config", "weights")),
    ("model", "tokenizer"), ("model", "max_text_length"),
    *(("sampler", k) for k in ("kind", "steps", "shift", "block_frames", "context_noise", "guidance_scale",
                               "guidance_min_timestep", "negative_prompt", "solver")),
    *(("cache", k) for k in ("policy", "window_frames", "sink_frames", "span_frames", "recent_frames",
                             "mid_capacity", "mid_top_k", "budget_frames", "compression", "selection",
                             "query_samples")),
    *(("pruning", k) for k in ("enabled", "p", "lambda", "warmup", "max_regenerations", "measure_at", "noise")),
    *(("video", k) for k in ("height", "width", "fps", "crf", "preset")),
    *(("runtime", k) for k in ("device", "dtype", "vae_dtype", "offload_text_encoder", "overlap_decode", "compile")),
)
# Fields added after 0.1.0 that change the video, with the value that does what 0.1.0 did: hashed only when they
# differ from it (a new field goes here, never into HASH_FIELDS_V1).
HASH_FIELDS_ADDED = {
    ("model", "transformer", "checkpoint_key"): None,
    ("model", "transformer", "lora"): None,
    ("model", "transformer", "lora_scale"): 1.0,
    ("sampler", "switch"): "recache",
    ("sampler", "first_block_steps"): None,
    ("cache", "positions"): "packed",
    ("cache", "ema_alpha"): 0.999,
    ("video", "decoder"): "vae",
    ("model", "tiny_decoder"): "https://github.com/madebyollin/taehv/raw/0ad83bb8fdc48e9e94138704e939d500a3b43660/"
                               "safetensors/taew2_1.safetensors",
    ("runtime", "compile_mode"): "default",
    ("runtime", "compile_dynamic"): True,
    ("runtime", "cuda_graphs"): False,  # the same kernels in principle; hashed like compile, to be safe
    ("runtime", "quantize"): "none",
    ("runtime", "text_encoder_device"): "auto",  # a CPU's kernels round the embeddings differently
}
# Fields that never change the pictures: never hashed.
UNHASHED_FIELDS = (("runtime", "threads"), ("runtime", "state_every"),
                   ("license", "name"), ("license", "commercial"), ("license", "source"))


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line atomically: O_APPEND, the whole line in one os.write, under an exclusive flock."""
    data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: O_APPEND alone
            fcntl = None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            written = os.write(fd, data)
            while written < len(data):  # never seen on local or network filesystems, but do not lose a tail
                written += os.write(fd, data[written:])
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_manifest(path: Path) -> dict[int, dict]:
    """Latest entry per item index (lines that do not parse are ignored)."""
    latest: dict[int, dict] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return latest
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("index"), int):
            latest[rec["index"]] = rec
    return latest


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def settings_hash(config: dict | None, prompt: str, seconds: float, seed: int, fallback: dict | None = None) -> str:
    """sha256 (first 16 hex digits) of the resolved config's hashed fields (``HASH_FIELDS_V1``, plus those of
    ``HASH_FIELDS_ADDED`` that differ from their 0.1.0 value) + prompt + seconds + seed. ``cuda:N`` counts as
    ``cuda`` so that resuming on another GPU layout does not redo finished work. ``config`` None: an item whose
    preset did not resolve, hashed by ``fallback``."""
    cfg = hashed_fields(config) if config is not None else {"unresolved": fallback}
    dev = cfg.get("runtime", {}).get("device")
    if isinstance(dev, str) and re.fullmatch(r"cuda:\d+", dev):
        cfg["runtime"]["device"] = "cuda"
    payload = canonical({"config": cfg, "prompt": prompt, "seconds": float(seconds), "seed": int(seed)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def hashed_fields(config: dict) -> dict:
    """The part of a resolved config (``Config.as_dict()``) the settings hash reads, nested as in the YAML."""
    out: dict = {}
    chosen = [(path, _get(config, path)) for path in HASH_FIELDS_V1]
    chosen += [(path, value) for path, then in HASH_FIELDS_ADDED.items()
               if (value := _get(config, path, then)) != then]
    for path, value in chosen:
        if value is _ABSENT:
            continue
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = copy.deepcopy(value)
    return out


_ABSENT = object()


def _get(config: dict, path: tuple[str, ...], default=_ABSENT):
    node = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node
