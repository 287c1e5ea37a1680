"""Helpers for untrusted input: what an error line may echo of it, and how big a file may be read.

An error message quotes the user's input so that they can find it, but never unbounded (a 2 GB "line" is no
message) and never raw control characters (an escape sequence would act on the terminal): :func:`clip` gives
``repr``-style text cut to a bound, :func:`printable` escapes control characters in text shown as it is.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

ECHO_LIMIT = 80  # characters of an untrusted value an error line repeats
MAX_TEXT_FILE = 4 * 2**20  # a timeline or prompts file larger than this is refused before it is parsed


def clip(value, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` (strings as repr too, so control characters are escaped), cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with control characters (C0, DEL, C1; newlines and tabs included) escaped as \\xNN / \\uNNNN,
    optionally cut to ``limit`` characters: safe to print to a terminal as part of one line."""
    out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    if limit is not None and len(out) > limit:
        out = out[: limit - 3] + "..."
    return out


def read_bounded(path: Path, what: str, limit: int = MAX_TEXT_FILE) -> bytes:
    """The bytes of a small input file; ConfigError (one line) when it is larger than ``limit`` (checked before
    reading) or cannot be read. FileNotFoundError / IsADirectoryError pass through for the caller's wording."""
    path = Path(path)
    size = path.stat().st_size
    if size > limit:
        raise ConfigError(f"{what} {path} is {size:,} bytes, over the {limit // 2**20} MiB a {what.lstrip('-')} "
                          "file may have; split it or check it is the right file")
    with open(path, "rb") as f:
        data = f.read(limit + 1)  # a file growing meanwhile is still bounded
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is over the {limit // 2**20} MiB a {what.lstrip('-')} file may have")
    return data
