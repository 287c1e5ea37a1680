"""The JSON record next to each video: what was asked, what was used, what happened per latent block.

It is rewritten atomically after every block, so even a killed run leaves a consistent, parseable record. Where it
lives while running and at the end is decided by ``outputs.py`` (``path`` may change before the last write).

Format versions (``sidecar_version``): 1 (tokentrim 0.1, no such key) listed the blocks under ``batches``;
2 lists them under ``blocks`` and keeps ``batches`` as the same list for readers of version 1 (it goes in 3).
Use :func:`block_records` to read either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import __version__

SIDECAR_VERSION = 2


def block_records(data: dict) -> list[dict]:
    """The per-block records of a sidecar of any version."""
    return data.get("blocks", data.get("batches", []))


class Sidecar:
    def __init__(self, path: Path, **fields):
        self.path = Path(path)
        blocks: list[dict] = []
        self.data = {"tool": "tokentrim", "version": __version__, "sidecar_version": SIDECAR_VERSION,
                     "status": "running", **fields, "blocks": blocks, "batches": blocks}
        self.write()

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.write()

    def add_block(self, record: dict) -> None:
        self.data["blocks"].append(record)
        self.write()

    def write(self) -> None:
        tmp = self.stage()
        try:
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def write_in_place(self) -> bool:
        """Last resort on a full disk: overwrite the current file within the blocks it already has (no new space
        needed on ext4, xfs, tmpfs; not atomic). The whole record if it fits, else the record without its
        indentation and resolved config, else its outcome alone (status, error, frames, video; no block records).
        False, with the file untouched, when not even that fits."""
        compact = {k: v for k, v in self.data.items() if k not in ("config", "batches")}
        outcome = {k: self.data.get(k) for k in ("tool", "version", "sidecar_version", "status", "error", "preset",
                                                 "prompt", "seed", "fps", "frames", "frames_written", "video")}
        outcome["truncated"] = "the disk was full: only the outcome was recorded"
        forms = [json.dumps(self.data, indent=1, default=_jsonable), json.dumps(compact, default=_jsonable),
                 json.dumps(outcome, default=_jsonable)]
        try:
            fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return False
        try:
            room = os.fstat(fd).st_blocks * 512
            data = next((f.encode("utf-8") + b"\n" for f in forms if len(f.encode("utf-8")) + 1 <= room), None)
            if data is None:
                return False
            os.write(fd, data)
            os.ftruncate(fd, len(data))
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def stage(self) -> Path:
        """Write the record to a hidden temporary file next to ``path`` and return it (``write`` renames it into
        place). On an error the temporary file is removed and the OSError names ``path``."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable) + "\n", encoding="utf-8")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        return tmp

    def short(self) -> str:
        """One-line JSON summary for the MP4 comment tag."""
        d = self.data
        keep = ("tool", "version", "status", "preset", "prompt", "seed", "fps", "frames", "run")
        short = {k: d.get(k) for k in keep}
        short["regenerations"] = sum(b.get("regenerations", 0) for b in d["blocks"])
        short["pruned_tokens"] = sum(b.get("pruned_tokens", 0) for b in d["blocks"])
        if d.get("timeline"):  # [start seconds, prompt] per entry
            short["timeline"] = [[e["start"], e["prompt"]] for e in d["timeline"]]
        short["sidecar"] = self.path.name
        return json.dumps(short, ensure_ascii=False)


def _jsonable(obj):
    if hasattr(obj, "as_dict"):  # a typed record (engine.levers.LeverReport)
        return obj.as_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
