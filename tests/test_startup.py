"""Garbage collection during the start-up (tokentrim_cli/startup.py): the entry point pauses it, the command's work
resumes it with the start-up's objects frozen; a program calling the command in-process keeps its own collector."""

import gc

from tokentrim_cli import signals, startup


def test_the_start_up_collects_nothing_and_the_work_collects_without_its_objects():
    startup.pause_collection()
    try:
        assert not gc.isenabled()
        frozen = gc.get_freeze_count()
        made = [[] for _ in range(1000)]  # what the start-up made: frozen, never walked again
        signals.begin_work()
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(made)
    finally:
        gc.enable()


def test_a_program_that_collects_keeps_its_collector_as_it_is():
    frozen = gc.get_freeze_count()
    startup.resume_collection()
    assert gc.isenabled() and gc.get_freeze_count() == frozen
