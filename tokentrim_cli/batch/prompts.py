"""The prompts file of a batch: text (one prompt per line) or JSONL (one object per line), validated whole.

Every problem of the file is reported at once, as one :class:`ConfigError` line (exit 2), before any model
loads. An item's index is its position among the kept lines; it keys its seed, its name and the manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config.checks import seconds_problem, seed_problem
from ..errors import ConfigError
from ..run.timeline import canonical, entries_problems, from_data, length_problem

FIELDS = ("prompt", "seconds", "seed", "preset", "output", "set", "timeline")
MAX_ERRORS = 5  # validation problems listed on the one error line
SEED_SPACE = 2**31


@dataclass
class Item:
    index: int  # position among the kept items of the file, 0-based
    line: int  # 1-based line in the prompts file
    prompt: str
    seconds: float
    seed: int | None  # None: derived from the batch seed (see item_seed)
    preset: str | None = None  # per-item preset name or path (None: --preset)
    output: str | None = None  # per-item name (None: --name-template)
    sets: list[str] = field(default_factory=list)
    name: str = ""  # final file stem, filled by assign_names
    timeline: list | None = None  # timeline.Entry list (``prompt`` is its first prompt); None: one prompt

    @property
    def hash_prompt(self) -> str:
        """What the settings hash reads as the prompt: the prompt, or the whole timeline."""
        return canonical(self.timeline) if self.timeline else self.prompt


def item_seed(batch_seed: int, index: int) -> int:
    """The seed of an item that names none: the first 8 bytes of
    sha256("tokentrim-batch/{batch_seed}/{index}") as a big-endian integer, modulo 2^31."""
    digest = hashlib.sha256(f"tokentrim-batch/{batch_seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_SPACE


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def _check_object(obj: dict, seconds: float) -> list[str]:  # noqa: C901 - a check per field, each its own message
    """Problems of one JSONL object (empty when fine); ``seconds``: the batch's default length."""
    problems = []
    unknown = [k for k in obj if k not in FIELDS]
    for k in unknown:
        problems.append(f"unknown field {k!r} (allowed: {', '.join(FIELDS)})")
    if "prompt" in obj and "timeline" in obj:
        problems.append("give 'prompt' or 'timeline', not both")
    elif "timeline" in obj:
        found = entries_problems(obj["timeline"])
        problems += found
        length = obj.get("seconds", seconds)
        if not found and not seconds_problem(length):
            problems += [p for p in [length_problem(from_data(obj["timeline"]), length)] if p]
    elif "prompt" not in obj:
        problems.append("missing field 'prompt' (or 'timeline')")
    elif not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
        problems.append(f"prompt must be a non-empty string, got {obj['prompt']!r}")
    for key, problem in (("seconds", seconds_problem), ("seed", seed_problem)):
        if key in obj and problem(obj[key]):
            problems.append(f"{key} {problem(obj[key])}")
    if "preset" in obj and (not isinstance(obj["preset"], str) or not obj["preset"].strip()):
        problems.append(f"preset must be a preset name or path, got {obj['preset']!r}")
    if "output" in obj:
        o = obj["output"]
        if not isinstance(o, str) or not o.strip():
            problems.append(f"output must be a non-empty file name, got {o!r}")
        elif "/" in o or "\\" in o or o.strip() in (".", ".."):
            problems.append(f"output must be a file name without folders, got {o!r}")
    if "set" in obj:
        s = obj["set"]
        if not isinstance(s, list) or not all(isinstance(x, str) for x in s):
            problems.append(f"set must be a list of dotted.key=value strings, got {s!r}")
    return problems


def _is_jsonl(path: Path, lines: list[str]) -> bool:
    if path.suffix.lower() == ".jsonl":
        return True
    kept = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    return bool(kept) and all(ln.startswith("{") for ln in kept)


def raise_problems(path: Path, problems: list[tuple[str, str]]) -> None:
    """One ConfigError line listing (where, what) pairs, at most MAX_ERRORS of them."""
    if not problems:
        return
    shown = "; ".join(f"{where}: {what}" for where, what in problems[:MAX_ERRORS])
    more = f" (and {len(problems) - MAX_ERRORS} more)" if len(problems) > MAX_ERRORS else ""
    raise ConfigError(f"{path}: {shown}{more}")


def read_prompts(path: Path | str, seconds: float = 5.0) -> list[Item]:
    """Parse a prompts file; every problem of the whole file is raised as one ConfigError line (exit 2).

    Text: one prompt per line. A JSON array (``*.json``, or a file starting with ``[``): its elements, objects as in
    JSONL or plain prompt strings, each keyed by the line it starts on. JSONL (``*.jsonl`` or every kept line starting with ``{``): one object per line
    with ``prompt`` (or ``timeline``, a list of {start, prompt, switch}) and optionally ``seconds``, ``seed``, ``preset``, ``output``, ``set``. In both, blank lines
    and lines starting with ``#`` are skipped; an item's index is its position among the kept lines.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"prompts file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"prompts file {path} is a folder, expected a .txt or .jsonl file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    text = _decode(path, data)
    elements = _json_array(path, text)
    lines = [] if elements is not None else [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    jsonl = _is_jsonl(path, lines)
    items: list[Item] = []
    problems: list[tuple[str, str]] = []
    for no, value in elements or []:  # a JSON array's elements, parsed already
        _add(items, problems, len(items), no, value, seconds)
    for no, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        index = len(items)  # position among the kept lines
        if not jsonl:
            items.append(Item(index, no, text, float(seconds), None))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append((f"line {no}", f"invalid JSON ({exc.msg} at column {exc.colno})"))
            items.append(Item(index, no, "", float(seconds), None))  # keep indices stable in the error report
            continue
        _add(items, problems, index, no, obj, seconds)
    raise_problems(path, problems)
    if not items:
        raise ConfigError(f"{path}: no prompts found (blank lines and lines starting with # are skipped)")
    return items


def _add(items: list[Item], problems: list, index: int, no: int, obj, seconds: float) -> None:
    """Append the item of one JSON value (an object, or a plain string prompt in a JSON array) found at line
    ``no``, or a placeholder and its problems."""
    if isinstance(obj, str) and obj.strip():
        obj = {"prompt": obj}
    if not isinstance(obj, dict):
        problems.append((f"line {no}", 'expected a JSON object like {"prompt": "..."}, got ' + type(obj).__name__))
        items.append(Item(index, no, "", float(seconds), None))
        return
    found = _check_object(obj, seconds)
    problems += [(f"line {no}", p) for p in found]
    if found:
        items.append(Item(index, no, "", float(seconds), None))
        return
    out = obj.get("output")
    if out is not None and out.lower().endswith(".mp4"):
        out = out[:-4]
    timeline = from_data(obj["timeline"]) if "timeline" in obj else None
    prompt = timeline[0].prompt if timeline else obj["prompt"].strip()
    items.append(Item(index, no, prompt, float(obj.get("seconds", seconds)), obj.get("seed"),
                      obj.get("preset"), out, list(obj.get("set", [])), timeline=timeline))


def _json_array(path: Path, text: str) -> list[tuple[int, object]] | None:
    """(line, element) of a prompts file written as one JSON array (a ``*.json`` file starting with ``[``, or any
    file starting with ``[`` alone on its line, ``[{``, ``["``, ``[[`` or ``[]``), pretty-printed or not; None for
    a text or JSONL file (a ``*.json`` file of one object per line is JSONL). ConfigError (one line) when it starts
    like an array but is not valid JSON."""
    if path.suffix.lower() == ".jsonl":  # one JSON value per line, whatever it starts with
        return None
    body = text.lstrip()
    first = body.split("\n", 1)[0].strip()
    if not (body.startswith("[") and (path.suffix.lower() == ".json" or first == "["
                                      or body.startswith(("[{", '["', "[]", "[[")))):
        return None
    decoder = json.JSONDecoder()
    try:
        pos, out = text.index("[") + 1, []
        while True:
            pos = _skip_space(text, pos)
            if text.startswith("]", pos) and not out:
                pos += 1
                break
            value, end = decoder.raw_decode(text, pos)
            out.append((text.count("\n", 0, pos) + 1, value))
            pos = _skip_space(text, end)
            if text.startswith(",", pos):
                pos += 1
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise json.JSONDecodeError("expected ',' or ']'", text, pos)
        if _skip_space(text, pos) != len(text):
            raise json.JSONDecodeError("extra data after the array", text, pos)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: reads as a JSON array but is not valid JSON ({exc.msg} at line {exc.lineno}, "
                          f"column {exc.colno}); give a JSON array of objects, JSONL (one object per line) or "
                          "text (one prompt per line)") from None
    return out


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos
