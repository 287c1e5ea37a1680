"""The loop's view of a live run: a :class:`~..run.prompt_schedule.PromptSchedule` that follows a
:class:`~.control.LiveControl`.

At each block boundary (``change_before``, called just before the sampler starts a block) the control is told
the block starts (which raises to stop the run) and the schedule takes the control's timeline as it stands: a
live prompt may have been added, also between planned entries (the later ones renumbered; embeddings are kept by
prompt text, so nothing is encoded twice). Its length is the control's (``num_blocks``: "keep going"), and it
always keeps the finished blocks' latents (a recache switch may come at any time).
"""

from __future__ import annotations

from ..run.prompt_schedule import Change, PromptSchedule
from .control import LiveControl


class LiveSchedule(PromptSchedule):
    def __init__(self, control: LiveControl):
        entries, switches = control.schedule()
        super().__init__(entries, switches, timeline=True, live=True)  # live: the finished blocks' latents kept
        self.control = control
        self.num_blocks = control.count

    def change_before(self, block: int) -> Change | None:
        self.control.boundary(block)
        entries, switches = self.control.schedule()
        if entries != self.entries or switches != self.switches:
            self.replace(entries, switches)
        return super().change_before(block)
