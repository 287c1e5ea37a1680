"""The checks of a request that ``generate``, ``batch`` (its options and every prompts-file item) and the plan
share, so that one value gets one verdict and one wording wherever it is given."""

from __future__ import annotations

import dataclasses
import math

from ..errors import ConfigError

SEED_LIMIT = 2**63
LOG_FORMATS = ("text", "jsonl")


CONFIRM_SECONDS = 3600  # a longer video is only made with --yes (a typo like 1e5 would run for days)
MAX_SECONDS = 86400  # never: 24 h of video is 1.4 million frames at 16 fps


def seconds_problem(value, confirmed: bool = True) -> str | None:
    """Why ``value`` is not a video length in seconds (None when it is); over an hour needs ``confirmed``."""
    shown = f"{value:g}" if isinstance(value, float) else repr(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return f"must be a positive number, got {shown}"
    if value > MAX_SECONDS:
        return f"must be at most {MAX_SECONDS} (24 hours), got {shown}"
    if value > CONFIRM_SECONDS and not confirmed:
        return (f"is {value / 3600:.1f} hours of video (over {CONFIRM_SECONDS}); pass --yes to confirm a run that "
                f"long")
    return None


def seed_problem(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        return f"must be an integer from 0 to 2^63-1, got {value!r}"
    return None


def _require(problem: str | None, name: str) -> None:
    if problem:
        raise ConfigError(f"{name} {problem}")


def require_seconds(value, name: str = "--seconds", confirmed: bool = True) -> None:
    _require(seconds_problem(value, confirmed), name)


def require_setting(section: type, key: str, value, name: str) -> None:
    """Check a command-line shortcut for a preset value (``--fps``) with the preset's own rule, so that the
    message names the option the user typed."""
    f = {x.name: x for x in dataclasses.fields(section)}[key]
    if not f.metadata["check"](value):
        raise ConfigError(f"{name} must be {f.metadata['allowed']}, got {value!r}")


def require_seed(value, name: str = "--seed") -> None:
    _require(seed_problem(value), name)


def require_log_format(value: str) -> None:
    if value not in LOG_FORMATS:
        raise ConfigError(f"--log-format must be text or jsonl, got {value!r}")
