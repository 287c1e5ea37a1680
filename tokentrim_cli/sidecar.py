"""The JSON record next to each video: what was asked, what was used, what happened per latent block.

It is rewritten atomically after every block, so even a killed run leaves a consistent, parseable record.

Format versions (``sidecar_version``): 1 (tokentrim 0.1, no such key) listed the blocks under ``batches``;
2 lists them under ``blocks`` and keeps ``batches`` as the same list for readers of version 1 (it goes in 3).
Use :func:`block_records` to read either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import __version__

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
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def short(self) -> str:
        """One-line JSON summary for the MP4 comment tag."""
        d = self.data
        keep = ("tool", "version", "status", "preset", "prompt", "seed", "fps", "frames")
        short = {k: d.get(k) for k in keep}
        short["regenerations"] = sum(b.get("regenerations", 0) for b in d["blocks"])
        short["pruned_tokens"] = sum(b.get("pruned_tokens", 0) for b in d["blocks"])
        short["sidecar"] = self.path.name
        return json.dumps(short, ensure_ascii=False)


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
