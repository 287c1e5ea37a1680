"""The JSON record next to each video: what was asked, what was used, what happened per batch.

It is rewritten atomically after every batch, so even a killed run leaves a consistent, parseable record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import __version__


class Sidecar:
    def __init__(self, path: Path, **fields):
        self.path = Path(path)
        self.data = {"tool": "tokentrim", "version": __version__, "status": "running", **fields, "batches": []}
        self.write()

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.write()

    def add_batch(self, record: dict) -> None:
        self.data["batches"].append(record)
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
        short["regenerations"] = sum(b.get("regenerations", 0) for b in d["batches"])
        short["pruned_tokens"] = sum(b.get("pruned_tokens", 0) for b in d["batches"])
        short["sidecar"] = self.path.name
        return json.dumps(short, ensure_ascii=False)


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
