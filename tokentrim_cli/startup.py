"""Garbage collection during the command's start-up: off while it imports, back on once its work begins.

The start-up makes about a million objects that live as long as the process (torch's and diffusers' modules and
classes). Collecting while they are made walks them again and again: ``bench/startup.py`` measured a whole 2 s run
of the tiny or the toy preset at 0.78x the wall time without it (about 2-2.7 s less per process). Once the work
begins they are frozen (the collector's permanent generation), so later collections leave them alone too."""

import gc


def pause_collection() -> None:
    """At the entry point, before the imports."""
    gc.disable()


def resume_collection() -> None:
    """Once the imports are done: freeze what exists and collect again. Nothing happens when collection was not
    paused (the command called in-process by a program that collects)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
