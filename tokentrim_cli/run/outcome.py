"""How a run ended: its :class:`Outcome` while it runs, the :class:`Result` it returns, the exit codes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TokentrimError
from ..output.files import error_text
from ..signals import pending

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class Result:
    status: str  # ok | interrupted | failed
    video: Path | None
    sidecar: Path
    error: str | None
    frames_written: int
    seconds: float
    exit_code: int
    held_signal: int = 0  # a Ctrl-C / SIGTERM that came while the outputs were being finished: the caller's to act on
    resumable: int | None = None  # an unfinished run's NAME.state/ goes on after this block (``Job.resume``)

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "video": str(self.video) if self.video else None,
            "sidecar": str(self.sidecar),
            "error": self.error,
            "frames_written": self.frames_written,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Outcome:
    """How a run ended: ok | interrupted | failed, its one-line error and exit code."""

    status: str = "ok"
    error: str | None = None
    code: int = EXIT_OK


def outcome_of(exc: BaseException, output: Path) -> Outcome:
    """The outcome of a run stopped by ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        return Outcome("interrupted", str(exc) or "interrupted", EXIT_INTERRUPTED)
    if isinstance(exc, TokentrimError):
        return Outcome("failed", str(exc), exc.exit_code)
    if isinstance(exc, torch.OutOfMemoryError):
        return Outcome("failed", f"out of memory: {str(exc).splitlines()[0]}", EXIT_FAILED)
    if isinstance(exc, OSError):  # a full disk, a read-only or unwritable folder, ffmpeg gone: one line, the path
        return Outcome("failed", error_text(exc, output), EXIT_FAILED)
    if pending():  # a library cut short by Ctrl-C while loading fails in its own way
        return Outcome("interrupted", f"received signal {pending()}", EXIT_INTERRUPTED)
    return Outcome("failed", f"{type(exc).__name__}: {exc}", EXIT_FAILED)
