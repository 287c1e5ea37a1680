"""A run's resumable state, typed: what it takes to go on exactly from right after a block (``generate --resume``).

Every tensor is copied off the device when the state is taken (:func:`off_device`), so a state stays what it was
while the run goes on and a writer saves it later. ``resume.py`` writes and reads it as plain data (``as_plain`` /
``from_plain``: tensors, numbers, strings, lists and dicts, which ``torch.load(weights_only=True)`` reads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.journal import JournalState
from ..engine.samplers import WindowEntry


def off_device(obj):
    """A copy of ``obj`` with every tensor copied to the CPU (containers rebuilt alike)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: off_device(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(off_device(v) for v in obj)
    return obj


@dataclass(frozen=True)
class KeptBlock:
    """A finished block's latents a recache switch may write again: (B, C, F, h, w) at ``latent_frames``."""

    index: int
    latent_frames: tuple[int, ...]
    latents: torch.Tensor


@dataclass(frozen=True)
class LoopPosition:
    """Where the sampler stands: the next block to start and Rolling Forcing's window (x on the CPU)."""

    next_block: int
    window: tuple[WindowEntry, ...] = ()


@dataclass(frozen=True)
class BlockState:
    """The generation's state right after block ``block``.

    Args:
        block: the last block finished.
        loop: the sampler's position.
        journal: the cache's history (the cache is rebuilt from it, ``engine/journal.py``).
        reviewer: TokenTrim's statistics (``TokenTrim.state_dict``), None without pruning.
        kept: the latents a recache switch needs, None when no switch recaches.
    """

    block: int
    loop: LoopPosition
    journal: JournalState
    reviewer: dict | None = None
    kept: tuple[KeptBlock, ...] | None = None

    def plain_parts(self) -> dict:
        """The state's fields but the journal, as plain data (``state.pt``'s layout)."""
        window = [{"block": w.block, "x": w.x, "step": w.step, "attempt": w.attempt} for w in self.loop.window]
        kept = [(k.index, list(k.latent_frames), k.latents) for k in self.kept] if self.kept is not None else None
        return {"block": self.block, "loop": {"next_block": self.loop.next_block, "window": window},
                "reviewer": self.reviewer, "kept": kept}

    @classmethod
    def from_plain(cls, data: dict, journal: JournalState) -> "BlockState":
        loop = data["loop"]
        window = tuple(WindowEntry(w["block"], w["x"], w["step"], w["attempt"]) for w in loop["window"])
        kept = data.get("kept")
        kept = tuple(KeptBlock(i, tuple(f), x) for i, f, x in kept) if kept is not None else None
        return cls(data["block"], LoopPosition(loop["next_block"], window), journal, data.get("reviewer"), kept)


@dataclass(frozen=True)
class History:
    """What the video's sidecar said so far: the blocks' records, earlier resumes, where the state was made."""

    blocks: tuple[dict, ...] = ()
    resumed: tuple[dict, ...] = ()
    device: str | None = None
    live: dict | None = None  # a live run's timeline and length so far (``live.control.LiveControl.resumable``)


@dataclass(frozen=True)
class RunState:
    """A whole run's resumable state: the generation's after block ``generation.block``, the decoder's causal
    state after that block, the pixel frames in the video and the sidecar's history."""

    generation: BlockState
    decoder: dict
    frames_written: int
    history: History
    fingerprint: str = ""

    @property
    def block(self) -> int:
        return self.generation.block
