"""Which prompt embeddings each block is made under: one prompt, or a timeline's prompts with their switches and
blends (``timeline.py``). Encodes each prompt once. Knows no files.

A switch with ``blend`` N sets, for the switch block and the N - 1 after it, the prompt embeddings k / (N + 1) of
the way (k = 1..N) from the old prompt's to the new one's, and the new prompt's from the block after (the switch's
cache treatment happens once, at the switch block). ``add`` appends a switch while a run goes on (from another
thread), effective at a block the run has not started yet.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch

from ..config.settings import Config
from ..errors import ConfigError
from .plan import Plan
from .timeline import Entry, Switch, blend_weight, prompt_of, snap

Embeddings = tuple  # (prompt (1, L, D),) or, guided, (prompt, negative prompt)


def blended(old: Embeddings, new: Embeddings, weight: float) -> Embeddings:
    """The prompt embeddings ``weight`` of the way from ``old`` to ``new`` (linear; the negative prompt stays)."""
    return (torch.lerp(old[0], new[0], weight), *new[1:])


def timeline_switches(timeline: list[Entry] | None, cfg: Config, plan: Plan) -> list[Switch]:
    """The snapped switches of a timeline (ConfigError when it does not fit the video); [] without one."""
    if not timeline or len(timeline) < 2:
        return []
    switches = snap(timeline, plan, cfg.sampler.switch)
    if cfg.cache.policy != "infinity_rope" and any(s.mode == "rope_cut" for s in switches):
        raise ConfigError(f"a rope_cut switch needs cache.policy infinity_rope (this preset's is {cfg.cache.policy}); "
                          "use cut, keep or recache")
    return switches


@dataclass(frozen=True)
class Change:
    """What happens just before a block: ``embeddings`` become the prompt; ``switch`` is the switch made there
    (None: a later block of a blend, only the cross-attention moves on)."""

    embeddings: Embeddings
    switch: Switch | None


class PromptSchedule:
    """The prompts of one run and the blocks they apply from.

    Args:
        entries: the timeline's entries (one entry: a single prompt); entry 0 starts at block 0.
        switches: the snapped switches (``timeline_switches``), one per entry after the first, in block order.
        timeline: the request gave a timeline (its blocks' records then name their entry).
        live: switches may be added while the run goes on (:meth:`add`); the generation then keeps the latents
            a recache switch needs, whatever the switches so far.
    """

    def __init__(self, entries: list[Entry], switches: list[Switch] = (), timeline: bool = False,
                 live: bool = False):
        self._entries, self._switches = list(entries), list(switches)
        self.timeline, self.live = timeline, live
        self._lock = threading.Lock()
        self._encode: Callable[[str], Embeddings] | None = None
        self._encoded: dict[str, Embeddings] = {}  # by prompt text: an entry's index moves when one is inserted
        self._started = -1  # the last block a change was asked for: ``add`` must be later
        self.num_blocks: Callable[[], int] | None = None  # a length that grows while the run goes (live/schedule.py)

    @classmethod
    def of(cls, prompts: "str | list[Entry] | PromptSchedule", cfg: Config, plan: Plan) -> "PromptSchedule":
        """A schedule from one prompt, a timeline (snapped to ``plan``; ConfigError when it does not fit) or a
        schedule (returned as it is)."""
        if isinstance(prompts, PromptSchedule):
            return prompts
        if isinstance(prompts, str):
            return cls([Entry(0.0, prompts)])
        return cls(prompts, timeline_switches(prompts, cfg, plan), timeline=True)

    def bind(self, encode: Callable[[str], Embeddings]) -> None:
        """The text encoder the generation uses (its model decides whether a negative prompt goes with it)."""
        self._encode = encode

    @property
    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries)

    @property
    def switches(self) -> list[Switch]:
        with self._lock:
            return list(self._switches)

    @property
    def recaches(self) -> bool:
        """A switch may rebuild the cache from the finished blocks' latents (they must be kept)."""
        return self.live or any(s.mode == "recache" for s in self.switches)

    def embeddings(self, entry: int) -> Embeddings:
        """Entry ``entry``'s prompt embeddings (each prompt text encoded once, on first use)."""
        text = self.entries[entry].prompt
        if text not in self._encoded:
            self._encoded[text] = self._encode(text)
        return self._encoded[text]

    def entry_of(self, block: int) -> int:
        """The entry block ``block`` is made under (admitted under, for Rolling Forcing)."""
        return prompt_of(block, self.switches)

    def blend_of(self, block: int) -> float | None:
        """How far block ``block``'s embeddings are from the old prompt's to the new one's (None: no blend)."""
        return blend_weight(block, self.switches)

    def change_before(self, block: int) -> Change | None:
        """What changes just before ``block`` (None: nothing)."""
        switches = self.switches
        with self._lock:
            self._started = max(self._started, block)
        for s in switches:
            if s.block <= block <= s.block + s.blend:
                weight = (block - s.block + 1) / (s.blend + 1)
                new = self.embeddings(s.entry)
                if weight < 1:
                    new = blended(self.embeddings(prompt_of(s.block - 1, switches)), new, weight)
                return Change(new, s if block == s.block else None)
        return None

    def add(self, entry: Entry, switch: Switch) -> None:
        """Append ``entry`` and its ``switch`` (``switch.entry`` its index) while the run goes on: ValueError unless
        the switch lies after every block started and after the last switch (and its blend), and, for a recache
        switch, the schedule is ``live`` or had one already (the latents it needs are kept)."""
        if switch.mode == "recache" and not self.recaches:
            raise ValueError("a recache switch added during a run needs a live schedule (PromptSchedule(..., "
                             "live=True)): the generation keeps the latents it rebuilds the cache from")
        with self._lock:
            last = self._switches[-1] if self._switches else None
            if switch.entry != len(self._entries):
                raise ValueError(f"the switch names entry {switch.entry}; the next entry is {len(self._entries)}")
            if switch.block <= self._started or (last is not None and switch.block < last.block + max(1, last.blend)):
                raise ValueError(f"a switch at block {switch.block} is too early: block {self._started} has started"
                                 + (f" and the last switch is at block {last.block}" if last is not None else ""))
            self._entries.append(entry)
            self._switches.append(switch)
            self.timeline = True

    def replace(self, entries: list[Entry], switches: list[Switch]) -> None:
        """The whole timeline as it now stands, while the run goes on (a live run's, ``live/schedule.py``: an entry
        may come between planned ones, which are renumbered): ValueError when a switch at a block already started
        would change. Embeddings already encoded are kept by their prompt's text."""
        past = lambda found: [(s.block, s.mode, s.blend) for s in found if s.block <= self._started]  # noqa: E731
        with self._lock:
            if past(switches) != past(self._switches):
                raise ValueError(f"the new timeline changes a switch at or before block {self._started}, which has "
                                 "started")
            self._entries, self._switches = list(entries), list(switches)
            self.timeline = self.timeline or len(entries) > 1
