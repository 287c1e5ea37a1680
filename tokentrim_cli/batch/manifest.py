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
# settings added after tokentrim 0.1.0, left out of the hash at these values so that a batch begun with 0.1.0
# resumes without redoing its finished items (threads and state saves never change the pictures:
# always left out)
ANY = object()
LATER_SETTINGS = {("runtime", "threads"): ANY, ("runtime", "state_every"): ANY, ("sampler", "switch"): "recache",
                  ("cache", "positions"): "packed"}
UNHASHED = ("license",)  # sections that never change the pictures


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
    """sha256 (first 16 hex digits) of the resolved config + prompt + seconds + seed. ``cuda:N`` counts as
    ``cuda`` so that resuming on another GPU layout does not redo finished work."""
    cfg = copy.deepcopy(config) if config is not None else {"unresolved": fallback}
    for key in UNHASHED:
        cfg.pop(key, None)
    for (section, key), default in LATER_SETTINGS.items():
        values = cfg.get(section)
        if isinstance(values, dict) and key in values and (default is ANY or values[key] == default):
            del values[key]
    dev = cfg.get("runtime", {}).get("device") if isinstance(cfg.get("runtime"), dict) else None
    if isinstance(dev, str) and re.fullmatch(r"cuda:\d+", dev):
        cfg["runtime"]["device"] = "cuda"
    payload = canonical({"config": cfg, "prompt": prompt, "seconds": float(seconds), "seed": int(seed)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
