"""What happens once a block is in the video file (on the writer's thread, in order): its sidecar record, its
display line (naming a timeline's prompt from its first block) and, every ``runtime.state_every`` blocks, the
resumable state right after it. The run reads :attr:`BlockRecorder.pending` only after the writer has stopped."""

from __future__ import annotations

import errno
from dataclasses import dataclass

import torch

from ..output.display import Display
from ..output.files import error_text
from ..output.sidecar import Sidecar
from ..output.writer import Written
from .prompt_schedule import PromptSchedule
from .resume import StateWriter
from .state import History, RunState, off_device

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def device_label(device) -> str:
    """Where a state was made: the GPU's name or cpu, and the torch version (bit-exact resumes need both)."""
    name = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else "cpu"
    return f"{name}, torch {torch.__version__}"


@dataclass(frozen=True)
class StateSaving:
    """Where and how often a run saves its resumable state: ``every`` blocks (0: only when it stops early); the
    decoder whose causal state goes with it; ``device`` the models run on."""

    saver: StateWriter
    every: int
    decoder: object
    device: object = None


class BlockRecorder:
    """Args:
        sidecar: the run's sidecar (its ``blocks`` get each record).
        display: the progress display.
        schedule: the run's prompts (a timeline's prompt is named when its first block is written).
        seam: pixel frames in the video before the plan's (an ``--extend`` input's); the display counts after it.
        shown: the timeline entry whose prompt was named last (a resumed run's, or 0).
        saving: the resumable state's saving (None: none is kept).
        live: a live run's session (``live.session.LiveSession``): it brings the sidecar's timeline and length up
            to date before each record and shows each record to its viewers; None: not live.
    """

    def __init__(self, sidecar: Sidecar, display: Display, schedule: PromptSchedule, seam: int, shown: int,
                 saving: StateSaving | None, live=None):
        self.sidecar, self.display, self.schedule, self.seam = sidecar, display, schedule, seam
        self.shown, self.saving, self.live = shown, saving, live
        self.pending: Written | None = None  # the last block in the file whose state is newer than the one on disk
        self.warned: set[str] = set()

    def record(self, written: Written) -> None:
        """A block is in the file: its record goes to the sidecar and the display; its state is saved when due."""
        block, frames = written.block, written.frames
        rec = {"index": block.index, "latent_frames": block.latent_frames, **block.record, "frames_written": frames}
        if self.live is not None:
            self.live.sync(self.sidecar.data, self.display)
        self._name_prompt(rec.get("prompt"), block.index)
        rec["seconds"] = round(rec["seconds"], 4)
        self.sidecar.add_block(rec)
        if self.live is not None:
            self.live.block(rec)
        self.display.block(rec, frames - self.seam)  # the display counts the new part's frames (its plan's)
        if block.state is None or self.saving is None:
            return
        self.pending = written
        every = self.saving.every
        if every and (block.index + 1) % every == 0:
            try:
                self.save_pending()
            except OSError as exc:  # the video matters more than its resumability, but a full disk ends both
                if exc.errno in DISK_FULL:
                    raise
                self.warn_once(f"could not save the resumable state: {error_text(exc, self.saving.saver.folder)}")

    def save_pending(self) -> None:
        """Save the state right after the pending block, with the decoder's state (which is right after it)."""
        saving, written = self.saving, self.pending
        if saving.device is not None and saving.device.type == "cuda":  # the decoder ran on a side stream,
            torch.cuda.synchronize(saving.device)  # the journal's copies are asynchronous
        data = self.sidecar.data
        live = None
        if "live" in data:  # a live run's timeline and length so far: a resume goes on with them
            live = {"timeline": data.get("timeline") or [{"start": 0.0, "prompt": data["prompt"]}],
                    "seconds": data["live"]["seconds"]}
        history = History(tuple(data["blocks"]), tuple(data.get("resumed", [])), device_label(saving.device), live)
        saving.saver.save(RunState(written.block.state, off_device(saving.decoder.state_dict()), written.frames,
                                    history))
        self.pending = None

    def warn_once(self, text: str) -> None:
        """A problem that repeats every block is said once."""
        if text not in self.warned:
            self.warned.add(text)
            self.display.warning(text)

    def _name_prompt(self, entry: int | None, block: int) -> None:
        """The display names a timeline's prompt from the first block made under it."""
        schedule = self.schedule
        if not schedule.timeline or entry is None or entry == self.shown:
            return
        self.shown = entry
        entries, switches = schedule.entries, schedule.switches  # a live run's sidecar timeline: LiveSession.sync
        sw = next(s for s in switches if s.entry == entry)
        self.display.message(f"prompt {entry + 1}/{len(entries)} from block {block} ({round(sw.snapped, 4):g} s, "
                             f"{sw.mode}): {entries[entry].prompt}")
