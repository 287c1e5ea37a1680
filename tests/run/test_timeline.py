"""Prompt timelines: parsing and snapping (pure), the switch modes on the cache, the reviewer's restart and the
pipeline (tiny models, CPU)."""

import pytest
import torch

from tokentrim_cli.errors import ConfigError
from tokentrim_cli.run.timeline import Entry, blend_weight, entries_problems, parse_prompts, prompt_of, snap


# ---------------------------------------------------------------------------------------------- parsing, snapping
def test_parse_prompts_prefixes_and_modes():
    got = parse_prompts(["a corgi on a beach", "20s: the corgi runs into the waves", "45.5s cut: sunset: red sky"])
    assert got == [Entry(0.0, "a corgi on a beach"), Entry(20.0, "the corgi runs into the waves"),
                   Entry(45.5, "sunset: red sky", "cut")]
    assert parse_prompts(["note: a cat"]) == [Entry(0.0, "note: a cat")]  # a colon alone is no prefix
    assert parse_prompts(["a", "2s keep blend=3: b"])[1] == Entry(2.0, "b", "keep", 3)


@pytest.mark.parametrize("values, words", [
    (["a", "b"], "needs a start time"),
    (["a", "20s: b", "10s: c"], "must increase"),
    (["5s: a"], "must start at 0"),
    (["a", "20s:   "], "is empty"),
    (["a", "20s fade: b"], "unknown switch mode 'fade'"),
    (["a", "20s blend=two: b"], "blend must be given once as a whole number"),
    (["a", "20s blend=2 blend=3: b"], "blend must be given once"),  # the same words a live line takes
    (["a", "20s keep cut: b"], "unknown switch mode 'cut'.*once"),
])
def test_bad_prompt_lists(values, words):
    with pytest.raises(ConfigError, match=words):
        parse_prompts(values)


@pytest.mark.parametrize("raw, words", [
    ([], "non-empty list"),
    ([{"start": 0, "prompt": "a"}, {"start": 0, "prompt": "b"}], "must increase"),
    ([{"start": 0, "prompt": "a", "duration": 2}], "unknown field 'duration'"),
    ([{"start": 0, "prompt": "a"}, {"start": 1, "prompt": "b", "blend": -1}], "blend must be a whole number"),
    ([{"start": 0, "prompt": "a"}, {"start": 3, "prompt": "b", "switch": "fade"}], "switch must be one of"),
    ([{"start": 0, "prompt": ""}], "prompt must be a non-empty string"),
    ([{"start": "1s", "prompt": "a"}], "start must be a number"),
])
def test_bad_timeline_data(raw, words):
    problems = entries_problems(raw)
    assert problems and words in problems[0]


def test_snap_to_first_block_at_or_after_the_time():
    # 16 fps, 3 latent frames a block: block b starts at pixel 1 + 4 (3b - 1) = 12b - 3 (b > 0)
    tl = [Entry(0, "a"), Entry(0.5, "b"), Entry(1.3125, "c", "keep")]
    sw = snap(tl, _plan(3, 4))
    assert [(s.block, s.snapped, s.mode) for s in sw] == [(1, 9 / 16, "recache"), (2, 21 / 16, "keep")]
    assert [prompt_of(b, sw) for b in range(4)] == [0, 1, 2, 2]
    with pytest.raises(ConfigError, match="past the end"):
        snap([Entry(0, "a"), Entry(3, "b")], _plan(3, 4))
    with pytest.raises(ConfigError, match="past the video's last block"):
        snap([Entry(0, "a"), Entry(2.9, "b")], _plan(3, 4))
    with pytest.raises(ConfigError, match="both snap to block 1"):
        snap([Entry(0, "a"), Entry(0.4, "b"), Entry(0.5, "c")], _plan(3, 4))


def test_blend_weights_and_overlap():
    sw = snap([Entry(0, "a"), Entry(0.5, "b", blend=2), Entry(2, "c")], _plan(3, 5))
    assert [blend_weight(b, sw) for b in range(5)] == [None, 1 / 3, 2 / 3, None, None]
    with pytest.raises(ConfigError, match="blend over 3 blocks .* runs into prompt 3's switch at block 3"):
        snap([Entry(0, "a"), Entry(0.5, "b", blend=3), Entry(2, "c")], _plan(3, 5))


# ---------------------------------------------------------------------------------------------- the switch modes
def _state(cache):
    return [(s.kind, s.t.clone(), s.hw.clone(), [k.clone() for k in s.unrotated_keys()], [v.clone() for v in s.values])
            for s in cache.segments]


def _same(a, b):
    return len(a) == len(b) and all(
        x[0] == y[0] and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2])
        and all(torch.allclose(p, q, atol=1e-6) for p, q in zip(x[3] + x[4], y[3] + y[4])) for x, y in zip(a, b))


def _caches(model):
    from tokentrim_cli.engine.cache import RollingCache
    from tokentrim_cli.engine.policies import RollingForcingCache, ThreePartitionCache

    return {
        "rolling": lambda: RollingCache(model.num_layers, window_frames=6, sink_frames=3, rope_len=model.rope_len),
        "three_partition": lambda: ThreePartitionCache(model.num_layers, sink_frames=3, recent_frames=3,
                                                       mid_capacity=2, mid_top_k=1, rope_len=model.rope_len),
        "rolling_forcing": lambda: RollingForcingCache(model.num_layers, sink_frames=3, span_frames=12,
                                                       rope_len=model.rope_len),
    }


def _switched_run(model, make_cache, sampler, mode, switch_at=3, blocks=5, steps=(1000, 750, 500, 250)):
    """Run ``blocks`` blocks, switching to a second prompt before ``switch_at``; returns the blocks and the cache
    state right after the switch (plus the kept latents and the cache before it)."""
    from tokentrim_cli.engine.noise import NoiseSource
    from tokentrim_cli.engine.samplers import BlockSteps, Hooks
    from tokentrim_cli.engine.schedule import warp_steps
    from tokentrim_cli.engine.switch import ContextLatents, switch

    torch.manual_seed(7)
    new_prompt = torch.randn(1, 16, 32)
    cache, kept, noise = make_cache(), ContextLatents(), NoiseSource(5, (1, 16, 3, 8, 8))
    seen = {}

    def hook(i):
        if i == switch_at:
            seen["before"] = _state(cache)
            seen["kept"] = list(kept.blocks)
            model.set_prompt(new_prompt)
            switch(mode, model, cache, kept, noise, i * 3)
            seen["after"] = _state(cache)

    out = []
    for b in sampler(model, cache, noise, BlockSteps(blocks, warp_steps(list(steps))), Hooks(before_block=hook)):
        kept.add(b, cache)
        out.append(b)
    return out, seen, new_prompt


SAMPLER_CACHES = [("self_forcing", "rolling"), ("self_forcing", "three_partition"),
                  ("rolling_forcing", "rolling_forcing")]


def _sampler(name):
    from tokentrim_cli.engine.samplers import SAMPLERS

    return SAMPLERS[name], ((1000, 800, 600, 400, 200) if name == "rolling_forcing" else (1000, 750, 500, 250))


@pytest.mark.parametrize("sampler, policy", SAMPLER_CACHES)
def test_recache_equals_a_cache_rebuilt_from_scratch(causal_model, sampler, policy):
    from tokentrim_cli.engine.samplers import write_block

    fn, steps = _sampler(sampler)
    make = _caches(causal_model)[policy]
    prompt0 = causal_model.state.prompt_kv
    at = 6 if sampler == "rolling_forcing" else 3
    _, seen, new_prompt = _switched_run(causal_model, make, fn, "recache", switch_at=at, blocks=8, steps=steps)
    assert seen["kept"], "the cache held finished blocks at the switch"
    fresh = make()
    causal_model.set_prompt(new_prompt)
    for b in seen["kept"]:
        write_block(causal_model, fresh, b.latents, torch.tensor(b.latent_frames), None, b.index, 0.0)
    assert _same(seen["after"], _state(fresh))
    assert not _same(seen["after"], seen["before"])  # the K/V did change: they are the new prompt's
    causal_model.state.prompt_kv = prompt0


@pytest.mark.parametrize("sampler, policy", SAMPLER_CACHES)
def test_keep_leaves_the_cache_and_cut_empties_it(causal_model, sampler, policy):
    fn, steps = _sampler(sampler)
    make = _caches(causal_model)[policy]
    prompt0 = causal_model.state.prompt_kv
    at = 6 if sampler == "rolling_forcing" else 3  # Rolling Forcing's first block is final when the 5th enters
    _, seen, _ = _switched_run(causal_model, make, fn, "keep", switch_at=at, blocks=8, steps=steps)
    assert seen["before"] and _same(seen["after"], seen["before"])
    causal_model.state.prompt_kv = prompt0
    out, seen, _ = _switched_run(causal_model, make, fn, "cut", switch_at=at, blocks=8, steps=steps)
    assert seen["after"] == [] and len(out) == 8
    assert out[-1].latent_frames == [21, 22, 23]  # positions continue
    causal_model.state.prompt_kv = prompt0


def test_cut_moves_the_sink(causal_model):
    from tokentrim_cli.engine.samplers import self_forcing

    make = _caches(causal_model)["rolling"]
    cache_box = {}

    def make_and_keep():
        cache_box["c"] = make()
        return cache_box["c"]

    _switched_run(causal_model, make_and_keep, self_forcing, "cut", switch_at=2, blocks=5)
    sinks = [s for s in cache_box["c"].segments if s.kind == "sink"]
    assert sinks and sorted(set(torch.cat([s.t for s in sinks]).tolist())) == [6, 7, 8]


# ---------------------------------------------------------------------------------------------- the reviewer
def test_reviewer_restarts_at_a_switch():
    """A forced-drift check: a block after the switch that differs a lot from the one before it would trigger
    (lambda 0) without the restart; with it, it is compared with nothing."""
    from tokentrim_cli.engine.cache import KVCache
    from tokentrim_cli.pruning import TokenTrim

    torch.manual_seed(0)
    base = torch.randn(1, 16, 3, 8, 8)
    blocks = [base + 0.01 * torch.randn_like(base) for _ in range(4)] + [base + 5.0]
    cache = KVCache(2)

    def run(restart):
        tt = TokenTrim(lam=0.0, warmup=2)
        verdicts = []
        for i, x in enumerate(blocks):
            if restart and i == 4:
                tt.restart(4)
            retry = tt.review(i, x, cache, 0)
            verdicts.append((retry, tt._records[i].get("verdict")))
            tt.accept(i, x)
        return verdicts

    assert run(False)[4][0] is True
    assert run(True)[4] == (False, "switch")


# ---------------------------------------------------------------------------------------------- the pipeline
def _blocks(preset_name, seconds, timeline, *sets, prompt="a red circle"):
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.engine.components import load_components
    from tokentrim_cli.run.pipeline import Plan, generate_blocks

    preset = load_preset(preset_name, list(sets))
    comps = load_components(preset.config.model, preset.config.runtime)
    return list(generate_blocks(comps, preset.config, timeline or prompt, 0, Plan.for_preset(seconds, preset.config)))


def test_one_entry_timeline_is_bit_identical_to_a_plain_run():
    plain = _blocks("tiny", 2, None)
    one = _blocks("tiny", 2, [Entry(0.0, "a red circle")], prompt="ignored")
    assert len(one) == len(plain) and all(torch.equal(a.latents, b.latents) for a, b in zip(one, plain))


@pytest.mark.parametrize("preset, sets", [
    ("tiny", ["cache.sink_frames=3"]),
    ("tiny", ["cache.policy=three_partition", "cache.sink_frames=3", "cache.recent_frames=3",
              "cache.mid_capacity=2", "cache.mid_top_k=1"]),
    ("tiny", ["cache.policy=full"]),
    ("tiny", ["cache.policy=sink_window", "cache.sink_frames=3", "cache.window_frames=6"]),
    ("tiny", ["cache.policy=deep_sink", "cache.sink_frames=3", "cache.recent_frames=3", "cache.budget_frames=6"]),
    ("tiny-rolling", []),
])
def test_every_mode_runs_with_every_sampler(preset, sets):
    tl = [Entry(0.0, "a red circle"), Entry(1.0, "a blue square"), Entry(2.0, "a green star", "keep"),
          Entry(3.0, "a yellow moon", "cut")]
    blocks = _blocks(preset, 4, tl, "pruning.lambda=0", *sets)
    prompts = [b.record["prompt"] for b in blocks]
    assert prompts == sorted(prompts) and set(prompts) == {0, 1, 2, 3}
    firsts = [b for i, b in enumerate(blocks) if i and prompts[i] != prompts[i - 1]]
    if preset == "tiny":  # Rolling Forcing reviews in-flight blocks first; Self Forcing reviews the switch block
        assert all(b.record["verdict"] == "switch" and b.record["regenerations"] == 0 for b in firsts)
    plain = _blocks(preset, 4, None, "pruning.lambda=0", *sets)
    first_switch = next(i for i, p in enumerate(prompts) if p)
    same = [torch.equal(a.latents, b.latents) for a, b in zip(blocks, plain)]
    assert all(same[:max(0, first_switch - (4 if preset == "tiny-rolling" else 0))]) and not same[-1]
    assert first_switch == 2 and same[:2] == ([True, True] if preset == "tiny" else [False, False])


def test_blend_interpolates_the_prompt_embeddings(monkeypatch):
    """blend 2 at block 2: blocks 2 and 3 get 1/3 and 2/3 of the way from the old embeddings to the new, block 4
    the new ones; the records say so."""
    from tokentrim_cli.engine.model import CausalWan

    seen = []
    real = CausalWan.set_prompt
    monkeypatch.setattr(CausalWan, "set_prompt", lambda self, e: (seen.append(e.clone()), real(self, e))[1])
    blocks = _blocks("tiny", 4, [Entry(0.0, "a red circle"), Entry(1.0, "a blue square", blend=2)])
    old, a, b, new = seen
    assert torch.allclose(a, torch.lerp(old, new, 1 / 3)) and torch.allclose(b, torch.lerp(old, new, 2 / 3))
    assert [r.record.get("blend") for r in blocks] == [None, None, 0.3333, 0.6667, None, None]
    assert [r.record["prompt"] for r in blocks] == [0, 0, 1, 1, 1, 1]


def _plan(seconds, blocks, block_frames=3, fps=16):
    """A plan of ``blocks`` blocks for a video of ``seconds`` (its other counts do not matter to ``snap``)."""
    from tokentrim_cli.run.plan import Plan

    return Plan(float(seconds), fps, round(seconds * fps), blocks * block_frames, blocks, block_frames)
