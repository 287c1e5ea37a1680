"""LiveControl: live prompts become timeline entries that snap back to the block they took effect at; requests
that do not fit are refused and change nothing; keep going and stop; the stdin grammar; the feeds' bounds."""

import asyncio
import io
import threading

import pytest

from tokentrim_cli.errors import ConfigError
from tokentrim_cli.live.commands import parse_line, parse_mode, read_prompts
from tokentrim_cli.live.control import LiveControl, LiveError, Request, Stopped, restored
from tokentrim_cli.live.feed import Behind, Feed
from tokentrim_cli.run.plan import Plan
from tokentrim_cli.run.timeline import Entry, snap


def make(seconds=4.0, fps=16, block_frames=3, ratio=1, entries=None, next_block=0) -> LiveControl:
    plan_for = lambda s: Plan.for_seconds(s, fps, block_frames, ratio)
    switches_for = lambda e, p: snap(e, p)
    return LiveControl(entries or [Entry(0.0, "a red circle")], seconds, plan_for, switches_for, next_block)


@pytest.mark.parametrize("fps,ratio,block_frames", [(16, 1, 3), (16, 4, 3), (24, 4, 3), (30, 4, 3), (15, 4, 2)])
def test_a_live_switch_is_written_in_seconds_that_snap_back_to_its_block(fps, ratio, block_frames):
    """For every block a switch can take effect at, the seconds recorded give that block again through the
    timeline's own snapping (what --timeline does with the sidecar)."""
    for block in range(1, 12):
        control = make(seconds=30.0, fps=fps, block_frames=block_frames, ratio=ratio, next_block=block)
        got = control.submit(Request("a blue square"))
        assert got.block == block
        entries = [Entry(0.0, "a red circle"), Entry(got.start, "a blue square", "recache")]
        plan = control.plan
        again = snap(entries, plan)
        assert again[0].block == block, (fps, ratio, block, got.start)
        assert len(repr(got.start)) <= 8  # a readable number when one snaps right (0.1875, 1.5417)


def test_the_next_boundary_is_the_first_block_not_started_and_not_inside_a_blend():
    control = make()
    control.boundary(0)
    control.boundary(4)  # block 4 is being made: the next boundary is 5
    first = control.submit(Request("a blue square", "keep", 3))
    assert (first.block, first.mode, first.blend, first.entry) == (5, "keep", 3, 1)
    second = control.submit(Request("a green ring", "cut"))
    assert second.block == 8  # blocks 5, 6, 7 blend towards the first
    entries, switches = control.schedule()
    assert [e.prompt for e in entries] == ["a red circle", "a blue square", "a green ring"]
    assert [(s.block, s.mode) for s in switches] == [(5, "keep"), (8, "cut")]


def test_a_timed_live_prompt_lands_between_planned_entries_and_renumbers_the_later_ones():
    control = make(seconds=4.0, entries=[Entry(0.0, "a red circle"), Entry(3.0, "a white cross", "cut")])
    got = control.submit(Request("a blue square", "keep", 0, 1.0))
    assert (got.entry, got.block) == (1, 6)  # 1.0 s: first block from frame 16 (3 frames a block)
    assert [s.entry for s in control.schedule()[1]] == [1, 2]


@pytest.mark.parametrize("req,status,words", [
    (Request(""), 400, "empty"), (Request("   "), 400, "empty"), (Request("x", "explode"), 400, "unknown switch mode"),
    (Request("x", "keep", -1), 400, "blend"), (Request("x", start=float("nan")), 400, "start"),
    (Request("x", start=9.0), 409, "at or past the end"), (Request("x", start=0.1), 409, "is past"),
    (Request("x", "keep", 99), 409, "blend=99"), (Request("x" * 3000), 400, "characters")])
def test_a_request_that_does_not_fit_is_refused_and_changes_nothing(req, status, words):
    control = make()
    control.boundary(3)
    before = control.state()
    with pytest.raises(LiveError) as err:
        control.submit(req)
    assert err.value.status == status and words in str(err.value)
    assert control.state() == before


def test_nothing_changes_after_the_last_block_started_nor_after_the_end():
    control = make(seconds=1.0)  # 16 frames: 6 blocks
    control.boundary(control.plan.blocks - 1)
    for call in (lambda: control.submit(Request("late")), lambda: control.extend(2.0)):
        with pytest.raises(LiveError) as err:
            call()
        assert err.value.status == 409 and "after the end" in str(err.value)
    control.finish()
    with pytest.raises(LiveError, match="over"):
        control.stop()


def test_keep_going_makes_the_plan_longer_and_the_sampler_sees_it():
    control = make(seconds=1.0)
    blocks = control.count()
    got = control.extend(2.0)
    assert got["seconds"] == 3.0 and control.count() == got["blocks"] > blocks
    assert control.resumable()["seconds"] == 3.0
    with pytest.raises(LiveError):
        control.extend(0)


def test_stop_ends_the_run_at_the_next_boundary_as_a_ctrl_c():
    control = make()
    control.boundary(0)
    control.stop()
    with pytest.raises(Stopped) as err:
        control.boundary(1)
    assert isinstance(err.value, KeyboardInterrupt)
    with pytest.raises(LiveError, match="stopping"):
        control.submit(Request("too late"))


def test_a_resumed_states_live_timeline_is_checked_as_untrusted_input():
    entries, seconds = restored({"timeline": [{"start": 0, "prompt": "a"}, {"start": 1.0, "prompt": "b",
                                                                              "switch": "cut"}], "seconds": 5.0}, 4.0)
    assert [e.prompt for e in entries] == ["a", "b"] and seconds == 5.0
    for bad in ({"timeline": "x", "seconds": 5}, {"timeline": [{"start": 0, "prompt": "a"}], "seconds": 1.0},
                {"timeline": [{"start": 0, "prompt": "a", "evil": 1}], "seconds": 4.0}, [1, 2]):
        with pytest.raises(ConfigError, match="live timeline does not read"):
            restored(bad, 4.0)


def test_a_line_of_prompts_from_reads_like_a_prompt_option():
    assert parse_line("a corgi") == Request("a corgi", "recache", 0, None)
    assert parse_line("cut: sunset") == Request("sunset", "cut", 0, None)
    assert parse_line("keep blend=2: night") == Request("night", "keep", 2, None)
    assert parse_line("20s cut: waves") == Request("waves", "cut", 0, 20.0)
    assert parse_line("a photo: of a cat") == Request("a photo: of a cat", "recache", 0, None)
    assert parse_line("  ") is None and parse_line("# a comment") is None
    assert parse_mode("blend=3") == ("recache", 3)
    with pytest.raises(LiveError):
        parse_line("5s explode: x")


def test_the_stdin_reader_submits_each_line_and_says_what_became_of_it():
    control = make()
    control.boundary(2)
    said = []
    read_prompts(io.StringIO("a blue square\n\n5s: too late for this video\ncut: a green ring\n"), control.submit,
                 said.append).join(5)
    assert [e.prompt for e in control.schedule()[0]] == ["a red circle", "a blue square", "a green ring"]
    assert said[0].startswith("live: prompt from block 3") and "line 3 refused" in said[1] and len(said) == 3


def test_a_viewer_that_falls_behind_is_dropped_and_the_writer_never_waits():
    feed = Feed(keep=4)
    for k in range(10):
        feed.publish(k)  # nobody reads: no wait, memory bounded
    with pytest.raises(Behind):
        feed.since(0)
    assert feed.since(6) == ([6, 7, 8, 9], 10)

    async def reader():
        feed.attach(asyncio.get_running_loop())
        threading.Thread(target=lambda: feed.publish("new")).start()
        await asyncio.wait_for(feed.wait(10), 5)
        return feed.since(10)[0]

    assert asyncio.run(reader()) == ["new"]


def test_the_loops_schedule_takes_an_inserted_entry_and_refuses_to_change_a_started_block():
    """PromptSchedule.replace (what LiveSchedule calls at each boundary): the later entries renumbered, the
    embeddings already encoded kept by prompt text, a switch at a started block never changed."""
    from tokentrim_cli.run.prompt_schedule import PromptSchedule

    control = make(entries=[Entry(0.0, "a red circle"), Entry(3.0, "a white cross", "cut")])
    schedule = PromptSchedule(*control.schedule(), timeline=True, live=True)
    encoded = []
    schedule.bind(lambda text: encoded.append(text) or (text,))
    assert schedule.embeddings(0) == ("a red circle",) and schedule.change_before(4) is None  # blocks 0-4 start
    control.boundary(4)
    control.submit(Request("a blue square", "keep"))
    schedule.replace(*control.schedule())
    assert [e.prompt for e in schedule.entries] == ["a red circle", "a blue square", "a white cross"]
    assert schedule.change_before(5).embeddings == ("a blue square",) and schedule.entry_of(16) == 2
    assert encoded == ["a red circle", "a blue square"]  # the first prompt was not encoded again
    entries, switches = control.schedule()
    with pytest.raises(ValueError, match="started"):
        schedule.replace(entries[:1], [])
