"""``NAME.state/``: what an unfinished run leaves so that ``generate --resume`` goes on exactly where it stopped.

A run to ``NAME.mp4`` saves the state (``state.RunState``) of the block last written to the video every
``runtime.state_every`` blocks and when it stops early (Ctrl-C, SIGTERM, an error); a run that finishes removes it.
The folder holds:

    state.pt            everything but the journal's entries: the next block, the sampler's window, TokenTrim's
                        statistics, the latents a recache needs, the decoder's causal state, the frames in the
                        video, and the run's fingerprint. Replaced atomically (written to a temporary, renamed).
    journal-E-N.pt      the cache journal's entries from N on, of epoch E (``engine/journal.py``); files are only
                        ever added, so each save writes what is new; ``state.pt`` names the ones it needs and the
                        others are removed after it is in place.
    state.json          a readable summary (block, frames, sizes); informative only.

The cache itself is not saved: it is rebuilt by replaying the journal's write passes, which is exact and keeps
the state to the latents (one block is 0.6 MB in bf16 at 480x832, see ``bench/resume_state.py``) plus the
decoder's state. The fingerprint (the settings hash of the request, the tokentrim version and the state format)
must match the resuming run's, or the state is refused with one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch

from .. import __version__
from ..engine.journal import JournalState
from ..errors import ConfigError
from ..inputs import clip, printable
from ..output.write_guard import mark_state
from .state import BlockState, History, RunState

STATE_FORMAT = 1


def state_dir(video: Path) -> Path:
    """NAME.mp4 -> NAME.state/"""
    video = Path(video)
    return video.with_name(video.stem + ".state")


def fingerprint(settings_hash: str, start: dict | None = None) -> str:
    """What a state must have been made by: the request's settings hash (config, prompt or timeline, seconds,
    seed), the start image's hash, the tokentrim version and the state format."""
    payload = json.dumps([settings_hash, start, __version__, STATE_FORMAT], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _atomic_save(obj, path: Path) -> None:
    """Via a temporary and a rename; serialised in memory first, so that a full disk is an OSError with its
    errno (torch.save writing a file itself turns it into a RuntimeError)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    buf = io.BytesIO()
    torch.save(obj, buf)
    try:
        tmp.write_bytes(buf.getbuffer())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class StateWriter:
    """Saves a run's states into its ``NAME.state/`` (see the module docstring)."""

    def __init__(self, folder: Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.saved_block: int | None = None  # the block the state on disk goes on after
        self.bytes = 0
        self._chunks: list[tuple[str, int, int]] = []  # (file, epoch, first entry) of the journal on disk
        self._entries = 0  # journal entries on disk (of the last epoch)

    def save(self, state: RunState) -> None:
        """Save ``state``: the journal's new entries, then ``state.pt`` and the summary."""
        mark_state(self.folder)  # the marker: a later run may remove this folder (write_guard)
        journal = state.generation.journal
        self._save_journal(journal.ops, journal.epoch)
        _atomic_save(self._plain(state), self.folder / "state.pt")
        keep = {"state.pt", "state.json"} | {c[0] for c in self._chunks}
        for entry in os.listdir(self.folder):
            if entry not in keep and not entry.startswith("."):
                (self.folder / entry).unlink(missing_ok=True)
        self.bytes = sum(f.stat().st_size for f in self.folder.iterdir() if f.is_file())
        self.saved_block = state.block
        summary = {"next_block": state.generation.loop.next_block, "after_block": state.block,
                   "frames_written": state.frames_written, "journal_entries": len(journal.ops), "bytes": self.bytes,
                   "fingerprint": self.fingerprint, "version": __version__}
        tmp = self.folder / f".state.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(tmp, self.folder / "state.json")

    def _save_journal(self, ops: tuple, epoch: int) -> None:
        """Write the entries not on disk yet (all of them when the history was cut since)."""
        if any(e != epoch for _, e, _ in self._chunks) or len(ops) < self._entries:
            self._chunks, self._entries = [], 0  # the history was cut: write it anew
        if len(ops) > self._entries:
            name = f"journal-{epoch}-{self._entries}.pt"
            _atomic_save(list(ops[self._entries:]), self.folder / name)
            self._chunks.append((name, epoch, self._entries))
            self._entries = len(ops)

    def _plain(self, state: RunState) -> dict:
        """``state.pt``'s content: everything but the journal's entries, which it names."""
        h, journal = state.history, state.generation.journal
        return {"format": STATE_FORMAT, "version": __version__, "fingerprint": self.fingerprint,
                "block": state.block, "frames_written": state.frames_written,
                "blocks": list(h.blocks), "resumed": list(h.resumed), "device": h.device,
                **({"live": h.live} if h.live is not None else {}),
                "journal": {"epoch": journal.epoch, "chunks": [c[0] for c in self._chunks],
                            "entries": len(journal.ops)},
                **state.generation.plain_parts(), "decoder": state.decoder}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def peek_state(folder: Path) -> dict | None:
    """A state's summary (``state.json``), None when it has none that reads."""
    try:
        found = json.loads((Path(folder) / "state.json").read_text())
        return found if isinstance(found, dict) and (Path(folder) / "state.pt").is_file() else None
    except (OSError, ValueError):
        return None


JOURNAL_NAME = re.compile(r"journal-\d+-\d+\.pt")


def _read(path: Path):
    """A state file's content. ``weights_only``: tensors and plain containers only, so a crafted file cannot run
    code or build objects while it is read (it fails to load instead)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_state(folder: Path, fingerprint: str, video: Path, source: str | None = None) -> RunState:
    """The state in ``folder`` with its journal joined.
    ConfigError (exit 2, one line) when there is none, it is damaged or not a state (random bytes, a pickle of
    anything but tensors and plain data: never executed), or another request made it (``source``: the input the
    run started from, e.g. "--extend clip.mp4", named as what may have changed)."""
    folder = Path(folder)
    again = f"run without --resume to start {Path(video).name} again"
    if not (folder / "state.pt").is_file():
        raise ConfigError(f"nothing to resume: {folder} does not exist (a run saves it when it stops early); {again}")
    try:
        return _parse(folder, fingerprint, source, again)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted bytes fail in many ways; each is one line, never a traceback
        why = " ".join(str(exc).split())
        if isinstance(exc, pickle.UnpicklingError):
            why = "not a tokentrim state: it holds objects other than tensors and plain data, and was not loaded"
        raise ConfigError(f"{folder} is damaged ({why[:120] or type(exc).__name__}); {again}") from None


def _parse(folder: Path, fingerprint: str, source: str | None, again: str) -> RunState:
    """The state in ``folder``; ConfigError when another version or request made it, any other error when it is
    damaged."""
    state = _read(folder / "state.pt")
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a state")
    if state.get("format") != STATE_FORMAT or state.get("version") != __version__:
        raise ConfigError(f"{folder} was saved by tokentrim {printable(str(state.get('version')), 40)} (state "
                          f"format {printable(str(state.get('format')), 40)}); this is {__version__}: {again}")
    if state["fingerprint"] != fingerprint:
        changed = f"; or {source} has changed since" if source else ""
        raise ConfigError(f"{folder} was saved by a run with other settings (preset, --set, prompt, seconds, "
                          f"seed or image differ{changed}); repeat that run's options with --resume, or {again}")
    _check_shape(state)
    ops = []
    for name in state["journal"]["chunks"]:
        if not isinstance(name, str) or not JOURNAL_NAME.fullmatch(name):
            raise ValueError(f"journal file {clip(name)} is not one a state names")
        ops += _read(folder / name)
    if len(ops) != state["journal"]["entries"]:
        raise ValueError(f"its journal has {len(ops)} of {clip(state['journal']['entries'])} entries")
    generation = BlockState.from_plain(state, JournalState(tuple(ops), state["journal"]["epoch"]))
    history = History(tuple(state["blocks"]), tuple(state["resumed"]), state.get("device"), state.get("live"))
    return RunState(generation, state["decoder"], state["frames_written"], history, state["fingerprint"])


SHAPE = {"block": int, "frames_written": int, "blocks": list, "resumed": list, "journal": dict, "loop": dict,
         "decoder": dict}


def _check_shape(state: dict) -> None:
    """ValueError when a field a resume reads is missing or of another type (a crafted or foreign file)."""
    for key, kind in SHAPE.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise ValueError(f"its {key!r} is {clip(state.get(key), 30)}")
    if not isinstance(state["journal"].get("chunks"), list) or state["block"] < 0 or state["frames_written"] < 0:
        raise ValueError("its journal or block numbers are not a state's")

