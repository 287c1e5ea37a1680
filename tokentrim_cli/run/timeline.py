"""Prompt timelines: which prompt a video shows from when, and how each change is made. Pure: parsing, checks and
the snapping of switch times to blocks; the pipeline carries the switches out.

Forms (all give a list of :class:`Entry`, the first starting at 0 s):
- ``generate --prompt`` repeated: ``"a corgi on a beach"``, ``"20s: the corgi runs into the waves"``,
  ``"45s cut: sunset"``, ``"50s keep blend=3: night"``. The prefix is ``SECONDSs [MODE] [blend=N]:``; the first
  entry may omit it (it starts at 0), every later one needs it. A prompt that merely contains a colon is left
  alone unless it starts so.
- a timeline file (``--timeline``, YAML or JSON; or a run's sidecar, whose ``timeline`` is read) or a batch
  item's ``timeline`` field: a list of
  ``{start: seconds, prompt: "...", switch: recache|keep|cut|rope_cut, blend: N}`` (``switch`` optional:
  ``sampler.switch``; ``blend`` optional: 0, no blend).

``blend: N``: the prompt embeddings move linearly from the old prompt's to the new one's over the switch block and
the N - 1 blocks after it (weights 1/(N+1) .. N/(N+1)); the next block has the new prompt's. A blend must end
before the next switch and may not be longer than the blocks left in the video (a longer one would leave the new
prompt under 1/(N+1) of the weight to the end: refused, it is a slip of units).

Snapping: a switch at time t takes effect at the first block whose first pixel frame is at or after t
(``Plan.block_seconds``; when the blocks continue a video, ``generate --extend``, time 0 is the seam). A timeline is
refused (one-line ConfigError, exit 2) when its times do not increase, a switch lies at or past the video's end
or snaps past its last block, two switches snap to the same block, a prompt is empty, a field is unknown or a
mode is not one of MODES.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..inputs import clip, printable, read_bounded

MODES = ("recache", "keep", "cut", "rope_cut")
FIELDS = ("start", "prompt", "switch", "blend")
# "SECONDSs [MODE] [blend=N]: PROMPT": groups start, switch words, prompt (--prompt and live lines)
PREFIX = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*s((?:\s+[A-Za-z_]+(?:=\S*)?)*)\s*:(.*)$", re.S)
# what a start time was meant to be but is not (-1s, nans, 1e999s, 1e-9s, 1S CUT): refused, not read as prompt text
_LOOSE = re.compile(r"^\s*([-+]?(?:\d|\.\d|inf|nan)[^\s:]*?)\s*[sS]((?:\s+[A-Za-z_]+(?:=\S*)?)*)\s*:", re.I)


@dataclass(frozen=True)
class Entry:
    start: float  # seconds, as requested
    prompt: str
    switch: str | None = None  # None: the preset's sampler.switch
    blend: int = 0  # blocks over which the embeddings move from the old prompt's to this one's

    def as_dict(self) -> dict:
        d = {"start": self.start, "prompt": self.prompt}
        if self.switch is not None:
            d["switch"] = self.switch
        if self.blend:
            d["blend"] = self.blend
        return d


@dataclass(frozen=True)
class Switch:
    """One prompt change as it will be made: from ``block`` on, entry ``entry``'s prompt, by ``mode``."""

    entry: int
    block: int
    requested: float  # seconds
    snapped: float  # seconds: the block's first pixel frame / fps
    mode: str
    blend: int = 0

    def as_dict(self) -> dict:
        d = {"entry": self.entry, "block": self.block, "requested": self.requested,
             "snapped": round(self.snapped, 4), "mode": self.mode}
        if self.blend:
            d["blend"] = self.blend
        return d


def parse_prompts(values: list[str]) -> list[Entry]:
    """Entries from repeated ``--prompt`` values (see the module docstring)."""
    entries = []
    for i, raw in enumerate(values):
        m = PREFIX.match(raw)
        where = f"--prompt #{i + 1}"
        if m is None:
            loose = _LOOSE.match(raw)
            if loose is not None:
                raise ConfigError(f"{where}: {clip(raw[:loose.end()].strip(), 40)} is not a start time: write "
                                  "SECONDSs [recache|keep|cut] [blend=N]: in lower case, SECONDS a plain decimal "
                                  ">= 0, e.g. '20s cut: a sunset'")
            if i > 0:
                raise ConfigError(f"{where} {clip(raw.strip(), 60)} needs a start time, e.g. --prompt "
                                  f"'20s: {printable(raw.strip(), 40)}' (only the first prompt starts at 0 s by itself)")
            entries.append(Entry(0.0, raw.strip()))
            continue
        try:
            mode, blend = switch_words(m.group(2))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        entries.append(Entry(float(m.group(1)), m.group(3).strip(), mode, blend))
    return check(entries, "--prompt")


def switch_words(words: str | None) -> tuple[str | None, int]:
    """(mode or None, blend) from the words before a prompt's colon ("cut blend=3"): at most one of MODES and one
    blend=N. ValueError naming the word otherwise."""
    mode, blend = None, None
    for w in (words or "").split():
        if w.startswith("blend="):
            if blend is not None or not w[6:].isdigit():
                raise ValueError(f"blend must be given once as a whole number of blocks, e.g. blend=3, got {clip(w)}")
            blend = int(w[6:])
        elif w in MODES and mode is None:
            mode = w
        else:
            raise ValueError(f"unknown switch mode {clip(w)} (allowed: {', '.join(MODES)} once, and blend=N)")
    return mode, blend or 0


def entries_problems(raw) -> list[str]:
    """Problems of a timeline given as data (a list of objects); empty when it is fine."""
    if not isinstance(raw, list) or not raw:
        return [f"timeline must be a non-empty list of {{start, prompt, switch}} objects, got {clip(raw)}"]
    problems = []
    for i, e in enumerate(raw):
        where = f"timeline entry {i + 1}"
        if not isinstance(e, dict):
            problems.append(f"{where} must be an object like {{start: 0, prompt: ...}}, got {clip(e)}")
            continue
        problems += [f"{where}: unknown field {clip(k)} (allowed: {', '.join(FIELDS)})" for k in e if k not in FIELDS]
        s = e.get("start")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
            problems.append(f"{where}: start must be a number of seconds >= 0, got {clip(s)}")
        p = e.get("prompt")
        if not isinstance(p, str) or not p.strip():
            problems.append(f"{where}: prompt must be a non-empty string, got {clip(p)}")
        if "switch" in e and e["switch"] not in MODES:
            problems.append(f"{where}: switch must be one of {', '.join(MODES)}, got {clip(e['switch'])}")
        n = e.get("blend", 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            problems.append(f"{where}: blend must be a whole number of blocks >= 0, got {clip(n)}")
    if problems:
        return problems
    try:
        check(from_data(raw), "timeline")
    except ConfigError as exc:
        return [str(exc)]
    return []


def from_data(raw: list[dict]) -> list[Entry]:
    return [Entry(float(e["start"]), e["prompt"].strip(), e.get("switch"), e.get("blend", 0)) for e in raw]


def _yaml_loader():
    """PyYAML's safe loader without aliases: ``*name`` can expand a few hundred bytes into gigabytes (nested
    aliases), and a timeline has no use for them."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, "uses a YAML alias (*name); write the entries out",
                                                  mark)
            return super().compose_node(parent, index)

    return NoAliases


def load_file(path: Path | str) -> list[Entry]:
    """A timeline file: YAML or JSON, a list of entries; at most ``inputs.MAX_TEXT_FILE`` bytes, no aliases."""
    import yaml

    path = Path(path)
    try:
        text = read_bounded(path, "--timeline").decode("utf-8")
        raw = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError(f"--timeline {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"--timeline {path} is a folder; give a YAML or JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--timeline {path}: cannot read it ({clip(str(exc), 120)[1:-1]})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"--timeline {path}: not YAML or JSON ({printable(str(what), 100)}{where})") from None
    problems = entries_problems(of_sidecar(raw))
    if problems:
        raise ConfigError(f"--timeline {path}: {'; '.join(problems[:5])}")
    return from_data(of_sidecar(raw))


def of_sidecar(raw):
    """A run's sidecar (NAME.json) read as its timeline: its ``timeline``, or its one prompt; anything else as
    it is. Such a timeline makes the run's video again (with its seed, seconds and preset)."""
    if isinstance(raw, dict) and raw.get("tool") == "tokentrim" and "blocks" in raw:
        return raw.get("timeline") or [{"start": 0, "prompt": raw.get("prompt")}]
    return raw


def check(entries: list[Entry], name: str) -> list[Entry]:
    """Order and content checks that need no video length."""
    if not entries:
        raise ConfigError(f"{name}: the timeline is empty")
    if entries[0].start != 0:
        raise ConfigError(f"{name}: the first prompt must start at 0 s, got {entries[0].start:g} s")
    for i, e in enumerate(entries):
        if not e.prompt:
            raise ConfigError(f"{name}: prompt {i + 1} is empty")
        if i and e.start <= entries[i - 1].start:
            raise ConfigError(f"{name}: start times must increase, got {entries[i - 1].start:g} s then {e.start:g} s")
    return entries


def length_problem(entries: list[Entry], seconds: float) -> str | None:
    last = entries[-1]
    if last.start >= seconds:
        return f"prompt {len(entries)} starts at {last.start:g} s, at or past the end of the {seconds:g} s video"
    return None


def snap(entries: list[Entry], plan, default_mode: str = "recache") -> list[Switch]:
    """The switches of a checked timeline (one per entry after the first), snapped to ``plan``'s blocks
    (``run/plan.Plan``: when each block starts)."""
    problem = length_problem(entries, plan.seconds)
    if problem:
        raise ConfigError(f"timeline: {problem}")
    switches: list[Switch] = []
    for i, e in enumerate(entries[1:], 1):
        b = 0
        while plan.block_seconds(b) < e.start - 1e-9:
            b += 1
        _check_snapped(entries, i, b, switches, plan)
        switches.append(Switch(i, b, e.start, plan.block_seconds(b), e.switch or default_mode, e.blend))
    return switches


def _check_snapped(entries: list[Entry], i: int, b: int, switches: list[Switch], plan) -> None:
    """ConfigError when entry ``i``, snapped to block ``b``, does not fit the video or the switches before it."""
    e, blocks = entries[i], plan.blocks
    if b >= blocks:
        raise ConfigError(f"timeline: prompt {i + 1} at {e.start:g} s snaps to block {b}, past the video's last "
                          f"block ({blocks - 1}, from {plan.block_seconds(blocks - 1):g} s)")
    if switches and b == switches[-1].block:
        raise ConfigError(f"timeline: prompts {i} and {i + 1} ({entries[i - 1].start:g} s, {e.start:g} s) both "
                          f"snap to block {b}; space them at least one block ({plan.block_duration:g} s) apart")
    if switches and b < switches[-1].block + switches[-1].blend:
        raise ConfigError(f"timeline: prompt {i}'s blend over {switches[-1].blend} blocks (from block "
                          f"{switches[-1].block}) runs into prompt {i + 1}'s switch at block {b}")
    if e.blend > blocks - b:
        raise ConfigError(f"timeline: prompt {i + 1}'s blend={e.blend} is longer than the {blocks - b} block(s) "
                          f"left after its switch at block {b} (the new prompt would never pass "
                          f"{100 * (blocks - b) / (e.blend + 1):.2g}% weight in the video); blend counts blocks of "
                          f"{plan.block_duration:g} s: use at most blend={blocks - b}")


def prompt_of(block: int, switches: list[Switch]) -> int:
    """Index of the entry block ``block`` is made under (admitted under, for Rolling Forcing)."""
    entry = 0
    for s in switches:
        if s.block <= block:
            entry = s.entry
    return entry


def blend_weight(block: int, switches: list[Switch]) -> float | None:
    """How far block ``block``'s embeddings are from the old prompt's to the new one's (None: not in a blend)."""
    for s in switches:
        if s.blend and s.block <= block < s.block + s.blend:
            return (block - s.block + 1) / (s.blend + 1)
    return None


def canonical(entries: list[Entry]) -> str:
    """A stable text for hashing (batch resume)."""
    return json.dumps([e.as_dict() for e in entries], sort_keys=True, ensure_ascii=False)
