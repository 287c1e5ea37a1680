"""Ctrl-C and SIGTERM held back while work that must not be cut in half runs; the caller decides what a held
signal means afterwards (a video job re-raises it once the block is written, toy training stops after its step)."""

from __future__ import annotations

import signal


class HeldSignals:
    """Context manager: SIGINT / SIGTERM received inside are recorded in ``received`` (the first one; 0 if none)
    instead of running their handlers, which are restored on exit. Outside the main thread, where Python cannot
    set handlers, signals stay as they were."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> "HeldSignals":
        self.received, self.previous = 0, {}
        try:
            self.previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        except ValueError:  # not the main thread
            pass
        return self

    def _on_signal(self, signum, frame) -> None:
        self.received = self.received or signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
