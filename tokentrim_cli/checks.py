"""The checks of a request that ``generate``, ``batch`` (its options and every prompts-file item) and the plan
share, so that one value gets one verdict and one wording wherever it is given."""

from __future__ import annotations

import math

from .errors import ConfigError

SEED_LIMIT = 2**63
LOG_FORMATS = ("text", "jsonl")


def seconds_problem(value) -> str | None:
    """Why ``value`` is not a video length in seconds (None when it is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        return f"must be a positive number, got {shown}"
    return None


def seed_problem(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        return f"must be an integer from 0 to 2^63-1, got {value!r}"
    return None


def _require(problem: str | None, name: str) -> None:
    if problem:
        raise ConfigError(f"{name} {problem}")


def require_seconds(value, name: str = "--seconds") -> None:
    _require(seconds_problem(value), name)


def require_seed(value, name: str = "--seed") -> None:
    _require(seed_problem(value), name)


def require_log_format(value: str) -> None:
    if value not in LOG_FORMATS:
        raise ConfigError(f"--log-format must be text or jsonl, got {value!r}")
