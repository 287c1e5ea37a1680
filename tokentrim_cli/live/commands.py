"""Live prompts as text: one line of ``--prompts-from`` (``[SECONDSs] [MODE] [blend=N]: PROMPT`` or just
``PROMPT``), and the mode words a page sends (``keep``, ``cut blend=3``, ``blend=2``).

The prefix is ``--prompt``'s (``run/timeline.py``); a line without a time takes effect at the next block boundary,
a line without a mode recaches. The stdin reader turns each line into a :class:`~.control.Request` and tells the
user on stderr where it went (or why not).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import TextIO

from ..run.timeline import MODES, PREFIX, switch_words
from .control import LiveError, Request

DEFAULT_MODE = "recache"
_WORD = r"(?:[A-Za-z_]+|blend=\S*)"
_UNTIMED = re.compile(rf"^\s*({_WORD}(?:\s+{_WORD})*)\s*:(.*)$", re.DOTALL)


def parse_mode(words: str | None) -> tuple[str, int]:
    """(mode, blend) from mode words: at most one of MODES and at most one blend=N (LiveError 400 otherwise)."""
    try:
        mode, blend = switch_words(words)
    except ValueError as exc:
        raise LiveError(400, str(exc)) from None
    return mode or DEFAULT_MODE, blend


def parse_line(line: str) -> Request | None:
    """The request a line asks for (None for a blank line or a # comment)."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    timed = PREFIX.match(text)
    if timed is not None:
        mode, blend = parse_mode(timed.group(2))
        return Request(timed.group(3).strip(), mode, blend, float(timed.group(1)))
    untimed = _UNTIMED.match(text)
    if untimed is not None and all(w in MODES or w.startswith("blend=") for w in untimed.group(1).split()):
        mode, blend = parse_mode(untimed.group(1))
        return Request(untimed.group(2).strip(), mode, blend)
    return Request(text, DEFAULT_MODE, 0)  # a prompt that merely contains a colon stays whole


def read_prompts(stream: TextIO, submit: Callable[[Request], object], say: Callable[[str], None]) -> threading.Thread:
    """Start a daemon thread that submits each line of ``stream`` and says what became of it."""

    def run() -> None:
        for number, line in enumerate(stream, 1):
            try:
                req = parse_line(line)
                if req is not None:
                    got = submit(req)
                    say(f"live: prompt from block {got.block} ({got.start:g} s, {got.mode}"
                        + (f", blend={got.blend}" if got.blend else "") + f"): {req.prompt}")
            except LiveError as exc:
                say(f"live: line {number} refused: {exc}")

    thread = threading.Thread(target=run, name="tokentrim-live-stdin", daemon=True)
    thread.start()
    return thread
