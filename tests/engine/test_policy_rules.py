"""Each cache policy owns its rules: the registry matches the names settings accept, and the frames a policy says it
retains (what ``generate --extend`` writes as context) are the frames its cache really holds after a long run."""

import dataclasses

import pytest
import torch
from conftest import CacheDriver

from tokentrim_cli.config.settings import CACHE_POLICIES, POLICY_ALIASES, Cache
from tokentrim_cli.engine.cache import POLICIES, KVCache, RollingCache
from tokentrim_cli.engine.noise import NoiseSource
from tokentrim_cli.engine.policies import make_cache
from tokentrim_cli.engine.samplers import BlockSteps, self_forcing
from tokentrim_cli.engine.schedule import warp_steps

SHAPE = (1, 16, 3, 8, 8)  # 3-frame blocks of 4 x 4 tokens
HW, BLOCK, BLOCKS, ROPE = 16, 3, 8, 64
SETTINGS = {  # one preset-like cache section per registered policy, each small enough to evict within BLOCKS
    "full": Cache(policy="full", sink_frames=3),  # a sink setting the unbounded cache ignores
    "rolling": Cache(policy="rolling", window_frames=4, sink_frames=2),  # evicts part of a block, splits the sink
    "ema_sink": Cache(policy="ema_sink", window_frames=3, sink_frames=3),
    "infinity_rope": Cache(policy="infinity_rope", window_frames=2, sink_frames=1),
    "rolling_forcing": Cache(policy="rolling_forcing", sink_frames=3, span_frames=12),
    "deep_sink": Cache(policy="deep_sink", sink_frames=3, recent_frames=3, budget_frames=2, query_samples=8),
    "three_partition": Cache(policy="three_partition", sink_frames=3, recent_frames=4, mid_capacity=2, mid_top_k=1),
}


def _held(cache: KVCache) -> tuple[tuple[int, ...], int, int]:
    """What the cache holds: (its sink frames, how many latent frames' worth of tokens after the sink (a compressed
    block counts as the frames it stands for), the newest frame)."""
    sink = sorted({f for s in cache.segments if s.kind == "sink" for f in s.distinct_frames})
    rest = [s for s in cache.segments if s.kind != "sink"]
    worth = sum(len(s.frames) * HW if s.cover is not None else s.num_tokens for s in rest)
    assert worth % HW == 0
    return tuple(sink), worth // HW, max(f for s in rest for f in s.distinct_frames)


def _said(cache: KVCache, latent_frames: int) -> tuple[tuple[int, ...], int, int]:
    """The same, as the policy answers it (room in the RoPE table: exactly the video, so ``full`` is bounded too)."""
    frames, sink = cache.retained_frames(latent_frames, BLOCK, new_frames=cache.rope_len - latent_frames)
    tail = frames[sink:]
    assert tail == tuple(range(tail[0], tail[-1] + 1))  # the tail is contiguous
    return frames[:sink], len(tail), tail[-1]


def _run(name: str) -> KVCache:
    """BLOCKS blocks through the policy, then the first step of the next block (where Deep Forcing's budget trims)."""
    model, cache = CacheDriver(rope_len=ROPE), make_cache(SETTINGS[name], 2, ROPE)
    for _ in self_forcing(model, cache, NoiseSource(0, SHAPE), BlockSteps(BLOCKS, warp_steps([1000, 500]))):
        pass
    nxt = torch.arange(BLOCKS * BLOCK, (BLOCKS + 1) * BLOCK)
    model(torch.randn(SHAPE), torch.full((BLOCK,), 1000.0), nxt, cache=cache, first_step=True)
    return cache


def test_every_registered_policy_has_a_case():
    assert set(SETTINGS) == set(POLICIES)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_frames_a_policy_retains_are_what_its_cache_holds(name):
    """The sink, the size of the tail and where it ends, as the policy says them, match its cache after 24 latent
    frames: what --extend writes as context leaves the cache as generating would have."""
    cache = _run(name)
    assert _said(cache, BLOCKS * BLOCK) == _held(cache)
    assert _held(cache)[1] < BLOCKS * BLOCK - len(_held(cache)[0]) or name == "full"  # it did evict


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("mutation", ["tail one shorter", "sink one longer"])
def test_a_mutated_retention_rule_is_caught(name, mutation, monkeypatch):
    """The comparison above fails for every policy whose rule is changed by one frame."""
    cache = _run(name)
    if mutation == "tail one shorter":
        rule = type(cache).tail_frames
        monkeypatch.setattr(type(cache), "tail_frames", lambda self, block, room: rule(self, block, room) - 1)
    else:
        monkeypatch.setattr(cache, "sink_frames", cache.sink_frames + 1)
    assert _said(cache, BLOCKS * BLOCK) != _held(cache)


def test_registry_and_settings_name_the_same_policies():
    """No name accepted by the settings without a class, no class the settings cannot name; aliases point at a
    class; the settings' check accepts exactly these names."""
    assert set(POLICIES) | set(POLICY_ALIASES) == set(CACHE_POLICIES)
    assert not set(POLICIES) & set(POLICY_ALIASES) and set(POLICY_ALIASES.values()) <= set(POLICIES)
    check = next(f for f in dataclasses.fields(Cache) if f.name == "policy").metadata["check"]
    assert all(check(name) for name in POLICIES) and not check("sliding")
    for name in CACHE_POLICIES:
        cache = make_cache(dataclasses.replace(SETTINGS.get(name, Cache()), policy=name), 1, ROPE)
        assert type(cache) is POLICIES[Cache(policy=name).policy_name]
    assert type(make_cache(Cache(policy="sink_window", sink_frames=3, window_frames=6), 1, ROPE)) is RollingCache


def test_an_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown cache policy 'sliding'"):
        make_cache(Cache(policy="sliding"), 1, ROPE)
