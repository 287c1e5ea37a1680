"""What a live run is told while it goes (a new prompt, a longer video, stop), made safe between the threads that
tell it (the page's server, the stdin reader) and the loop that carries it out at block boundaries.

Every request is checked when it arrives, against the timeline and plan as they are then, with the same rules as
a timeline written in advance (``run/timeline.py``'s ``snap``): a request that would not fit changes nothing and
raises :class:`LiveError` (an HTTP status and one line). An accepted prompt becomes a timeline entry whose start
is the first pixel frame of the block it takes effect at, written so that snapping it again gives that block:
the finished run's timeline (in its sidecar) replays the same video.

The loop calls :meth:`LiveControl.boundary` just before a block starts (through ``schedule.LiveSchedule``, the
run's prompt schedule); from then on that block is past and no request may change it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from ..run.timeline import MODES, Entry, Switch, check, entries_problems, from_data

MAX_PROMPT = 2000  # characters of one live prompt
MAX_EXTEND = 3600.0  # seconds one "keep going" may add


class LiveError(Exception):
    """A request refused: ``status`` is the HTTP status that says why (400 bad input, 409 too late)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Stopped(KeyboardInterrupt):
    """Raised at a block boundary after Stop: the run ends the way Ctrl-C ends it (video kept, state saved)."""


@dataclass(frozen=True)
class Request:
    """A prompt as a viewer sends it: ``start`` None takes effect at the next block boundary."""

    prompt: str
    mode: str = "recache"
    blend: int = 0
    start: float | None = None


@dataclass(frozen=True)
class Accepted:
    """Where an accepted prompt went: timeline entry ``entry``, from ``block`` (``start`` seconds)."""

    entry: int
    block: int
    start: float
    mode: str
    blend: int

    def as_dict(self) -> dict:
        return {"entry": self.entry, "block": self.block, "start": self.start, "mode": self.mode,
                "blend": self.blend}


def check_request(req: Request, modes: tuple[str, ...] = MODES) -> None:
    """LiveError 400 for a request that is wrong whatever the run's state (empty prompt, unknown mode, ...)."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise LiveError(400, "the prompt is empty: describe what the video shows next")
    if len(req.prompt) > MAX_PROMPT:
        raise LiveError(400, f"the prompt has {len(req.prompt)} characters; at most {MAX_PROMPT}")
    if req.mode not in modes:
        raise LiveError(400, f"unknown switch mode {str(req.mode)[:40]!r} (allowed: {', '.join(modes)})")
    if isinstance(req.blend, bool) or not isinstance(req.blend, int) or not 0 <= req.blend <= 1000:
        raise LiveError(400, f"blend must be a whole number of blocks from 0 to 1000, got {str(req.blend)[:40]}")
    if req.start is not None and (isinstance(req.start, bool) or not isinstance(req.start, (int, float))
                                  or not req.start > 0 or req.start == float("inf")):
        raise LiveError(400, f"start must be a number of seconds > 0, got {str(req.start)[:40]}")


def restored(data, seconds: float) -> tuple[list[Entry], float]:
    """The timeline and length a live run's state recorded (``LiveControl.resumable``), checked as untrusted
    input; ``seconds``: the length asked for on the command line (a live run only grows). ConfigError when they do
    not read."""
    problems = entries_problems(data.get("timeline")) if isinstance(data, dict) else ["it is not an object"]
    length = data.get("seconds") if isinstance(data, dict) else None
    if not problems and (isinstance(length, bool) or not isinstance(length, (int, float)) or not
                         seconds <= length <= seconds + 1000 * MAX_EXTEND):
        problems = [f"its length {str(length)[:40]} is not one this run can have"]
    if problems:
        raise ConfigError(f"the resumable state's live timeline does not read ({problems[0]}); run without --resume "
                          "to start again")
    return from_data(data["timeline"]), float(length)


def entry_start(plan, block: int, fits: Callable[[float], bool]) -> float:
    """The seconds written for a switch at ``block``: the block's first pixel frame when it has at most 4
    decimals, else the fewest decimals (2 to 6), rounded down, for which ``fits`` (snapping gives ``block``
    again) holds; the exact value otherwise."""
    exact = plan.block_seconds(block)
    short = [round(exact, d) for d in range(5) if round(exact, d) == exact]
    cut = [math.floor(exact * 10**d) / 10**d for d in range(2, 7)]
    return next((t for t in short + cut if fits(t)), exact)


class LiveControl:
    """Args:
        entries: the timeline the run starts with (one entry: a single prompt).
        seconds: the planned length.
        plan_for: seconds -> the run's ``Plan`` for that length.
        switches_for: (entries, plan) -> the snapped switches (ConfigError when they do not fit).
        next_block: the first block not yet started (a resumed run's).
        recache: False when a recache switch cannot be made (a resumed state without the latents it needs).
    """

    def __init__(self, entries: list[Entry], seconds: float, plan_for: Callable, switches_for: Callable,
                 next_block: int = 0, recache: bool = True):
        self._lock = threading.Lock()
        self._plan_for, self._switches_for = plan_for, switches_for
        self.listeners: list[Callable[[str, dict], None]] = []  # (event, data), called outside the lock
        self.on_plan: list[Callable] = []  # called with the new Plan inside the lock (keep going): quick, no I/O
        self._set(list(entries), float(seconds), next_block)
        self.recache = recache
        self.stop_requested = False
        self.finished = False

    def _set(self, entries: list[Entry], seconds: float, next_block: int) -> None:
        self.entries, self.seconds, self.next_block = entries, seconds, next_block
        self.plan = self._plan_for(seconds)
        self.switches = self._switches_for(entries, self.plan) if len(entries) > 1 else []

    def restore(self, entries: list[Entry], seconds: float, next_block: int, recache: bool = True) -> None:
        """Go on from a resumed state: its timeline and length (live changes included), from ``next_block``."""
        with self._lock:
            self._set(list(entries), float(seconds), next_block)
            self.recache = recache

    # ------------------------------------------------------------------ loop side (main thread)
    def boundary(self, block: int) -> None:
        """Block ``block`` starts now: requests can no longer change it. Raises :class:`Stopped` after Stop."""
        with self._lock:
            self.next_block = max(self.next_block, block + 1)
            stop = self.stop_requested
        if stop:
            raise Stopped("stopped from the live page")

    def schedule(self) -> tuple[list[Entry], list[Switch]]:
        """The timeline and its switches as they are now (copies)."""
        with self._lock:
            return list(self.entries), list(self.switches)

    def count(self) -> int:
        """The planned number of blocks (it grows with "keep going")."""
        with self._lock:
            return self.plan.blocks

    def finish(self) -> None:
        """The run is over: every later request is refused (409)."""
        with self._lock:
            self.finished = True

    # ------------------------------------------------------------------ request side (any thread)
    def submit(self, req: Request) -> Accepted:
        """Add a prompt to the timeline (LiveError when it does not fit; then nothing changed)."""
        check_request(req)
        if req.mode == "recache" and not self.recache:
            raise LiveError(409, "recache is not available in this resumed run (its state has no latents to "
                                 "rebuild the cache from); use keep or cut")
        entry = Entry(0.0, " ".join(req.prompt.split()), req.mode, req.blend)
        with self._lock:
            self._open()
            accepted, entries, switches = self._place(entry, req.start)
            self.entries, self.switches = entries, switches
            data = self._state()
        self._tell("timeline", {**data, "accepted": accepted.as_dict()})
        return accepted

    def extend(self, seconds: float) -> dict:
        """Make the video ``seconds`` longer ("keep going"); refused once its last block has started."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_EXTEND:
            raise LiveError(400, f"keep going needs a number of seconds from 0 to {MAX_EXTEND:g}, got "
                                 f"{str(seconds)[:40]}")
        with self._lock:
            self._open()
            plan = self._plan_for(self.seconds + seconds)
            switches = self._switches_for(self.entries, plan) if len(self.entries) > 1 else []
            self.seconds, self.plan, self.switches = self.seconds + seconds, plan, switches
            for follow in self.on_plan:  # before the loop can start a block under the new plan
                follow(plan)
            data = self._state()
        self._tell("timeline", data)
        return data

    def stop(self) -> None:
        """End the run at the next block boundary, as Ctrl-C does."""
        with self._lock:
            if self.finished:
                raise LiveError(409, "the run is over already")
            self.stop_requested = True
        self._tell("stopping", {})

    def state(self) -> dict:
        with self._lock:
            return self._state()

    def resumable(self) -> dict:
        """What a resumed run needs to go on as this one would have (saved with each state)."""
        with self._lock:
            return {"timeline": [e.as_dict() for e in self.entries], "seconds": self.seconds}

    # ------------------------------------------------------------------ inside the lock
    def _open(self) -> None:
        if self.finished:
            raise LiveError(409, "the run is over: nothing can change any more")
        if self.stop_requested:
            raise LiveError(409, "the run is stopping")
        if self.next_block >= self.plan.blocks:
            raise LiveError(409, f"too late: the video's last block ({self.plan.blocks - 1}) has started; "
                                 "nothing can change after the end")

    def _place(self, entry: Entry, start: float | None) -> tuple[Accepted, list[Entry], list[Switch]]:
        """The timeline with ``entry`` in it, at ``start`` seconds or at the first block from ``next_block`` where
        a switch fits (not inside a blend, not on another switch)."""
        first = max(self.next_block, 1)  # block 0 is the first prompt's
        if start is not None:
            return self._try(entry, start, first, exact=False)
        taken = {s.block + k for s in self.switches for k in range(max(1, s.blend))}  # a switch or its blend
        block = next((b for b in range(first, self.plan.blocks) if b not in taken), None)
        if block is None:
            raise LiveError(409, f"no block left to switch at (the video ends after block {self.plan.blocks - 1}); "
                                 "press keep going to make it longer")
        return self._try(entry, block, first, exact=True)

    def _try(self, entry: Entry, at, first: int, exact: bool) -> tuple[Accepted, list[Entry], list[Switch]]:
        def placed(seconds: float):
            new = Entry(seconds, entry.prompt, entry.switch, entry.blend)
            entries = sorted(self.entries + [new], key=lambda e: e.start)
            check(entries, "live")
            return entries, self._switches_for(entries, self.plan), entries.index(new)

        def fits(seconds: float) -> bool:
            try:
                entries, switches, k = placed(seconds)
            except ConfigError:
                return False
            return next(s.block for s in switches if s.entry == k) == at

        seconds = entry_start(self.plan, at, fits) if exact else float(at)
        try:
            entries, switches, k = placed(seconds)
        except ConfigError as exc:
            raise LiveError(409, str(exc).removeprefix("timeline: ")) from None
        sw = next(s for s in switches if s.entry == k)
        if sw.block < first:
            raise LiveError(409, f"{seconds:g} s is past: block {sw.block} has started (the next block boundary "
                                 f"is block {first})")
        return Accepted(k, sw.block, seconds, sw.mode, sw.blend), entries, switches

    def _state(self) -> dict:
        return {"timeline": [e.as_dict() for e in self.entries], "switches": [s.as_dict() for s in self.switches],
                "seconds": self.seconds, "blocks": self.plan.blocks, "frames": self.plan.frames,
                "next_block": self.next_block, "plan": self.plan.as_dict()}

    def _tell(self, event: str, data: dict) -> None:
        for listen in list(self.listeners):
            listen(event, data)
