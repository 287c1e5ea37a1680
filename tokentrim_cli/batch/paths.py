"""The paths of a batch's items, checked together before any model loads (``write_guard``), and how an item that
another batch on the same folder finished or is writing is told from a failed one."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..output.files import OutputBusy, sidecar_path
from ..output.write_guard import Input, Target, check, run_targets
from .manifest import MANIFEST
from .prompts import Item


def check_items(items: list[Item], out_dir: Path, prompts: Path, overwrite: bool) -> None:
    """Raise ConfigError (one line naming the item's line) for the first item whose sidecar, unfinished pair,
    state folder or lock cannot be written: one of the batch's own files (the prompts file, the manifest), a
    folder, or a file tokentrim did not make (without --overwrite). Existing videos are ``refuse_existing``'s."""
    inputs = [Input(prompts, "the prompts file"), Input(out_dir / MANIFEST, "the batch manifest")]
    check([Target(out_dir / MANIFEST, "the batch manifest", lambda p: True)], True, inputs[:1],
          other="rename the prompts file or choose another --out-dir")  # each item appends a line to it
    other = "change the item's output name or choose another --out-dir"
    for it in items:
        video = out_dir / (it.name + ".mp4")
        targets = run_targets(video)
        # the video: neither an input nor a folder (an existing one is refuse_existing's)
        check(targets[:1], True, inputs, where=f"line {it.line}: ", other=other)
        check(targets[1:], overwrite, inputs, where=f"line {it.line}: ", other=other)


def done_elsewhere(exc: ConfigError, video: Path, settings_hash: str | None) -> str | None:
    """Why an item refused with ``exc`` is no failure: another process is writing ``video`` (its lock), or another
    batch on the folder finished it with these very settings (its sidecar says so); None otherwise. Such an item
    is skipped without a manifest line, so that the other run's line stays the item's latest."""
    if isinstance(exc, OutputBusy):
        return f"another process is writing {video.name}"
    if settings_hash is None or not Path(video).is_file():
        return None
    try:
        data = json.loads(sidecar_path(video).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    batch = data.get("batch") if isinstance(data, dict) else None
    if (data.get("tool") == "tokentrim" and data.get("status") == "ok" and isinstance(batch, dict)
            and batch.get("settings_hash") == settings_hash):
        return f"another run finished {video.name} with these settings"
    return None
