"""Ctrl-C and SIGTERM, in one place: SIGTERM taken the way Ctrl-C is, and both held back while work that must
not be cut in half runs (the caller decides what a held signal means afterwards: a video job re-raises it once
the block is written, toy training stops after its step)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from .startup import resume_collection


# SIGHUP (the terminal closed) ends a run the way SIGTERM does: what was generated is kept, the state saved
TERMINATING = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


class Interrupted(KeyboardInterrupt):
    """Raised from the SIGTERM handler so that termination and Ctrl-C take the same path."""


_pending = 0  # the first SIGINT / SIGTERM since install_handlers, whether or not its exception got through
_starting = True  # until the command begins its work (begin_work): nothing of the user's to finish yet


def _importing(frame) -> bool:
    """Whether ``frame`` runs inside an import: a module's top level, which may be called from a C++ initialiser
    (torch's) where an exception aborts the process (``terminate called after throwing ... KeyboardInterrupt``)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_signal(signum, frame):
    global _pending
    _pending = _pending or signum
    if _importing(frame):
        if _starting:  # start-up: nothing written, nothing to finish; the one line and exit 130 at once
            print("tokentrim: interrupted", file=sys.stderr)
            exit_interrupted()
        return  # raised at the next safe point, after the import (raise_pending; at the latest, the command's end)
    raise (KeyboardInterrupt if signum == signal.SIGINT else Interrupted)(f"received signal {signum}")


def exit_interrupted() -> None:
    """Exit 130 at once. Seen with CPython 3.11: after a Ctrl-C that came while the command imported or loaded,
    a normal ``sys.exit(130)`` sometimes ended as death by SIGINT (status -2 to the parent, not 130), with only the
    main thread left and the interrupt handled; the cause was not pinned down. Called once everything is written
    and closed (or nothing was yet), so skipping the interpreter's shutdown loses nothing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def begin_work() -> None:
    """The command's start-up (imports, checks) is over and it begins to write: a signal that came meanwhile is
    raised now, and from here one during an import is remembered and raised after it, not an exit. Garbage
    collection resumes (:mod:`.startup`)."""
    global _starting
    _starting = False
    resume_collection()
    raise_pending()


def install_handlers() -> None:
    """From the command's first instruction: Ctrl-C and SIGTERM raise, and are remembered. An exception raised
    where Python swallows it (in a ``__del__``, a callback of a C library) would otherwise be lost and the run
    would go on; :func:`raise_pending` raises it again at the next safe point. During an import (see
    :func:`_importing`) the signal ends the process at once while the command starts up, and is only remembered
    once it works (:func:`begin_work`)."""
    for s in TERMINATING:
        if s == signal.SIGINT or signal.getsignal(s) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays so
            signal.signal(s, _on_signal)


def pending() -> int:
    """The signal received since :func:`install_handlers` (0: none)."""
    return _pending


def raise_pending() -> None:
    """Raise :class:`Interrupted` if a signal came since :func:`install_handlers` (loading, each block)."""
    if _pending:
        raise Interrupted(f"received signal {_pending}")


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises :class:`Interrupted` inside (on the main thread; elsewhere Python cannot set handlers). Under
    the command's own handlers (:func:`install_handlers`) it already does, and is remembered too."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is _on_signal:
        yield
        return

    def handler(signum, frame):
        raise Interrupted(f"received signal {signum}")

    old = {s: signal.signal(s, handler) for s in TERMINATING[1:] if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class HeldSignals:
    """Context manager: SIGINT / SIGTERM received inside are recorded in ``received`` (the first one; 0 if none)
    instead of running their handlers, which are restored on exit. Outside the main thread, where Python cannot
    set handlers, signals stay as they were."""

    SIGNALS = TERMINATING

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


@contextlib.contextmanager
def deferred():
    """Finish the work inside (outputs, a manifest line) whatever arrives, then act on a signal that came
    meanwhile, once, with the handlers of the surroundings."""
    with HeldSignals() as held:
        yield
    if held.received:
        signal.raise_signal(held.received)
