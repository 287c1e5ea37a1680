"""The prompt schedule (``run/prompt_schedule.py``) and the state a block carries (``run/state.py``): a switch
added while a run goes on acts as the same switch given from the start; a block's state shares no storage with
the running loop."""

import pytest
import torch

from tokentrim_cli.run.plan import Plan
from tokentrim_cli.run.prompt_schedule import PromptSchedule, timeline_switches
from tokentrim_cli.run.timeline import Entry


def _comps(name, *sets):
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.engine.components import load_components

    preset = load_preset(name, list(sets))
    return preset.config, load_components(preset.config.model, preset.config.runtime)


@pytest.mark.parametrize("mode", ["cut", "keep"])
def test_a_switch_added_during_the_run_equals_one_given_from_the_start(mode):
    from tokentrim_cli.run.pipeline import generate_blocks

    cfg, comps = _comps("tiny", "pruning.lambda=0")
    plan = Plan.for_preset(3.0, cfg)
    timeline = [Entry(0.0, "a red kite"), Entry(1.5, "a blue boat", mode, blend=1)]
    (switch,) = timeline_switches(timeline, cfg, plan)
    assert 1 < switch.block < plan.blocks
    given = list(generate_blocks(comps, cfg, timeline, 3, plan))
    live = PromptSchedule([timeline[0]])
    added = []
    for block in generate_blocks(comps, cfg, live, 3, plan):
        added.append(block)
        if block.index == 0:
            live.add(timeline[1], switch)
    assert [b.index for b in added] == list(range(plan.blocks))
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(given, added))
    assert [b.record.get("prompt") for b in added[1:]] == [b.record["prompt"] for b in given[1:]]
    assert live.switches == [switch] and [e.prompt for e in live.entries] == ["a red kite", "a blue boat"]


def test_a_switch_cannot_be_added_for_a_block_already_started():
    cfg, comps = _comps("tiny")
    plan = Plan.for_preset(3.0, cfg)
    first, later = Entry(0.0, "a"), Entry(1.5, "b")
    (switch,) = timeline_switches([first, later], cfg, plan)
    live = PromptSchedule([first], live=True)
    live.change_before(switch.block)  # the sampler is about to start that block
    with pytest.raises(ValueError, match="too early"):
        live.add(later, switch)
    with pytest.raises(ValueError, match="names entry"):
        live.add(later, type(switch)(2, switch.block + 1, 2.0, 2.0, "keep"))
    assert live.switches == [] and len(live.entries) == 1


def test_a_blocks_state_shares_no_storage_with_the_running_loop():
    """The state is copied when the block is yielded: the window's latents and the kept latents a recache needs
    are the loop's values, in storage of their own (the writer may save them blocks later)."""
    from tokentrim_cli.engine.journal import Journal
    from tokentrim_cli.run.pipeline import BlockLoop

    cfg, comps = _comps("tiny-rolling")
    plan = Plan.for_preset(3.0, cfg)
    timeline = [Entry(0.0, "a red kite"), Entry(1.5, "a blue boat", "recache")]
    schedule = PromptSchedule.of(timeline, cfg, plan)
    loop = BlockLoop(comps, cfg, schedule, 3, plan, Journal())
    loop.start(None)
    seen = 0
    for block in loop.blocks():
        state = block.state
        live = loop.loop.window
        assert [w.block for w in state.loop.window] == [w.block for w in live]
        for saved, running in zip(state.loop.window, live):
            assert torch.equal(saved.x, running.x.cpu())
            assert saved.x.untyped_storage().data_ptr() != running.x.untyped_storage().data_ptr()
        for saved, running in zip(state.kept, loop.kept.blocks):
            assert torch.equal(saved.latents, running.latents.cpu())
            assert saved.latents.untyped_storage().data_ptr() != running.latents.untyped_storage().data_ptr()
        seen += len(state.loop.window) + len(state.kept)
    assert seen > 0


def test_a_recache_switch_is_added_only_to_a_live_schedule():
    """A recache rebuilds the cache from the finished blocks' latents: a live schedule has them kept from the
    start, and its recache switch added during the run equals one given from the start."""
    from tokentrim_cli.run.pipeline import generate_blocks

    cfg, comps = _comps("tiny", "pruning.lambda=0", "cache.sink_frames=3")
    plan = Plan.for_preset(3.0, cfg)
    timeline = [Entry(0.0, "a red kite"), Entry(1.5, "a blue boat", "recache")]
    (switch,) = timeline_switches(timeline, cfg, plan)
    with pytest.raises(ValueError, match="live schedule"):
        PromptSchedule([timeline[0]]).add(timeline[1], switch)
    given = list(generate_blocks(comps, cfg, timeline, 3, plan))
    live = PromptSchedule([timeline[0]], live=True)
    added = []
    for block in generate_blocks(comps, cfg, live, 3, plan):
        added.append(block)
        if block.index == 0:
            live.add(timeline[1], switch)
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(given, added)) and len(added) == plan.blocks
