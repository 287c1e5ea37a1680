"""Bounded cache policies: plateaued memory, no length ceiling, re-packing, top-K selection, an untouchable sink."""

import pytest
import torch

from conftest import CacheDriver
from tokentrim_cli.engine.cache import KVCache, RollingCache, Segment
from tokentrim_cli.engine.noise import NoiseSource
from tokentrim_cli.engine.policies import DeepSinkCache, PoolingCompressor, ThreePartitionCache, affinity, query_summary
from tokentrim_cli.engine.samplers import BlockSteps, self_forcing
from tokentrim_cli.engine.schedule import warp_steps

SHAPE = (1, 16, 3, 8, 8)  # 4 x 4 spatial tokens per latent frame


def policies(layers=2, rope_len=64):
    return {
        "rolling": lambda: RollingCache(layers, window_frames=9, rope_len=rope_len),
        "sink_window": lambda: RollingCache(layers, window_frames=9, sink_frames=3, rope_len=rope_len),
        "deep_sink": lambda: DeepSinkCache(layers, sink_frames=6, recent_frames=3, budget_frames=4, rope_len=rope_len),
        "three_partition": lambda: ThreePartitionCache(layers, sink_frames=6, recent_frames=3, mid_capacity=4,
                                                       mid_top_k=2, rope_len=rope_len),
    }


def max_bytes(model, cache, blocks):
    peak = 0
    for _ in self_forcing(model, cache, NoiseSource(0, SHAPE), BlockSteps(blocks, warp_steps([1000, 500]))):
        peak = max(peak, cache.nbytes)
    return peak


@pytest.mark.parametrize("name", list(policies()))
def test_four_times_longer_run_has_same_peak_cache(name):
    make, model = policies()[name], CacheDriver()  # bookkeeping: the cache driven as the model drives it
    assert max_bytes(model, make(), 10) == max_bytes(model, make(), 40)
    assert max_bytes(model, KVCache(2, 1024), 10) < max_bytes(model, KVCache(2, 1024), 20)


@pytest.mark.parametrize("case", ["model, sink + window, 64-entry table", "three-partition, 1024-entry table"])
def test_a_run_past_the_rope_table_stays_inside_it(causal_model, case):
    """Every position handed out stays inside the RoPE table, and once a run is past it the current frames sit
    at its end: the tiny transformer end to end (30 two-step blocks = 90 latent frames through a 12-frame window
    with a sink, table of 64), and 345 one-step blocks (1035 latent frames) through the three-partition cache
    with the real 1024-entry table, the cache driven as the model drives it (``CacheDriver``)."""
    if case.startswith("model"):
        model, blocks, steps = causal_model, 30, [1000, 500]
        cache = RollingCache(2, window_frames=12, sink_frames=3, rope_len=causal_model.rope_len)
    else:
        model, blocks, steps = CacheDriver(rope_len=1024), 345, [1000]
        cache = ThreePartitionCache(2, sink_frames=6, recent_frames=3, mid_capacity=8, mid_top_k=4, rope_len=1024)
    highest = []
    orig = cache.layout

    def spy(segs):
        plan = orig(segs)
        highest.append(max(plan.pos.values()))
        assert min(plan.pos.values()) >= 0
        return plan

    cache.layout = spy
    last = None
    for last in self_forcing(model, cache, NoiseSource(0, SHAPE), BlockSteps(blocks, warp_steps(steps))):
        assert torch.isfinite(last.latents).all()
    assert last.latent_frames[-1] == 3 * blocks - 1
    assert max(highest) == cache.rope_len - 1


def _seg(frames, kind="recent", layers=1, heads=2, dim=4, grid=16, fill=0.0):
    t = torch.tensor(frames).repeat_interleave(grid)
    hw = torch.arange(grid).repeat(len(frames))
    k = torch.full((1, len(t), heads, dim), fill)
    return Segment(t=t, hw=hw, keys=[k.clone() for _ in range(layers)], values=[k.clone() for _ in range(layers)],
                   kind=kind, frames=tuple(frames))


def test_repacked_positions_are_contiguous_and_recent_current_unchanged():
    cache = KVCache(1, rope_len=1024)
    sink = _seg([0, 1, 2], "sink")
    mids = [_seg([f, f + 1, f + 2], "mid") for f in (3, 9, 15, 21)]
    recent = _seg([27, 28, 29])
    chosen = [sink, mids[1], mids[3], recent]  # two mid blocks left out
    cache.segments = [sink, *mids, recent]
    cache.begin(torch.tensor([30, 31, 32]), (4, 4), write=False)
    plan = cache.layout(chosen)
    pos = plan.pos
    assert all(len(set(plan.tokens(s).tolist())) == len(s.frames) for s in chosen)  # one position per frame
    # recent and current keep their absolute positions...
    assert [pos[f] for f in (27, 28, 29)] == [27, 28, 29] and plan.current.tolist() == [30, 31, 32]
    # ...and sink + selected mid sit contiguously right before them, in time order
    packed = [pos[f] for f in (0, 1, 2, 9, 10, 11, 21, 22, 23)]
    assert packed == list(range(27 - 9, 27))
    every = sorted(set(pos.values()))
    assert every == list(range(every[0], every[-1] + 1))


def test_positions_shift_down_when_absolute_index_exceeds_table():
    cache = KVCache(1, rope_len=64)
    cache.segments = [_seg([0, 1, 2], "sink"), _seg([97, 98, 99])]
    cache.begin(torch.tensor([100, 101, 102]), (4, 4), write=False)
    plan = cache.layout(cache.segments)
    assert plan.current.tolist() == [61, 62, 63]
    assert sorted(plan.pos[f] for f in (0, 1, 2, 97, 98, 99)) == [55, 56, 57, 58, 59, 60]


def test_top_k_selects_highest_affinity_blocks():
    cache = ThreePartitionCache(1, sink_frames=3, recent_frames=3, mid_capacity=10, mid_top_k=2, query_samples=8)
    direction = torch.tensor([1.0, 0.0, 0.0, 0.0])
    strengths = [0.1, 2.0, -1.0, 0.5, 3.0]  # blocks 1 and 4 align best with the queries
    mids = []
    for i, s in enumerate(strengths):
        seg = _seg([3 + 3 * i, 4 + 3 * i, 5 + 3 * i], "mid")
        seg.store([direction.expand(1, seg.num_tokens, 2, 4) * s + 0.01 * torch.randn(1, seg.num_tokens, 2, 4)],
                  seg.values)
        mids.append(seg)
    cache.segments = [_seg([0, 1, 2], "sink"), *mids, _seg([18, 19, 20])]
    cache.begin(torch.tensor([21, 22, 23]), (4, 4), write=False, first_step=True)
    query = direction.expand(1, 48, 2, 4).clone()
    chosen = cache.select(0, query)
    assert [s for s in chosen if s.kind == "mid"] == [mids[1], mids[4]]
    heads = torch.tensor([0])
    scores = [float(affinity(query_summary(query, 8, heads), m.unrotated_keys()[0], heads)) for m in mids]
    assert sorted(range(5), key=lambda i: -scores[i])[:2] == [4, 1]
    # later steps of the block reuse the choice even if queries change
    cache.begin(torch.tensor([21, 22, 23]), (4, 4), write=False)
    assert [s for s in cache.select(0, -query) if s.kind == "mid"] == [mids[1], mids[4]]


def test_pooling_compressor_means_and_cover():
    seg = _seg([3, 4, 5], grid=16)
    keys = [torch.arange(48 * 2 * 4, dtype=torch.float32).reshape(1, 48, 2, 4)]
    seg.store(keys, [keys[0].clone()])
    out = PoolingCompressor((2, 2, 2))(seg, (4, 4))
    assert out.kind == "mid" and out.num_tokens == 2 * 2 * 2  # frames {3,4},{5} x 2 x 2 cells
    first = (torch.isin(seg.t, torch.tensor([3, 4])) & torch.isin(seg.hw, torch.tensor([0, 1, 4, 5])))
    assert torch.allclose(out.unrotated_keys()[0][0, 0], seg.unrotated_keys()[0][0, first].mean(0))
    assert out.t.tolist()[:4] == [3, 3, 3, 3] and out.cover[0].tolist() == [0, 1, 4, 5]
    # a compressed token is pruned once half of the positions it stands for are
    assert out.prune_mask(torch.tensor([0])).tolist()[0] is True
    assert out.prune_mask(torch.tensor([0, 5])).tolist()[0] is False


def test_sink_is_byte_identical_after_compression_and_pruning(causal_model):
    cache = ThreePartitionCache(2, sink_frames=3, recent_frames=3, mid_capacity=3, mid_top_k=1, rope_len=64)
    gen = self_forcing(causal_model, cache, NoiseSource(0, SHAPE), BlockSteps(12, warp_steps([1000, 500])))
    next(gen)
    sink = cache.sink[0]
    snapshot = [(k.clone(), v.clone()) for k, v in zip(sink.unrotated_keys(), sink.values)]
    for _ in gen:
        pass
    assert len(cache.mid) == 3  # compression and eviction happened
    removed = cache.prune(torch.arange(0, 16, 2))
    assert removed > 0
    assert cache.sink == [sink] and sink.num_tokens == 3 * 16
    for (k0, v0), k1, v1 in zip(snapshot, sink.unrotated_keys(), sink.values):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


@pytest.mark.parametrize("policy", ["rolling", "deep_sink", "three_partition"])
def test_guidance_runs_through_every_policy_and_pruning(policy):
    """Guidance doubles the batch inside the cache: each policy keeps both branches (twice the bytes of an
    unguided run at the same point), pruning still fires, and the sampler still yields one latent block."""
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.engine.components import load_components
    from tokentrim_cli.run.pipeline import Plan, generate_blocks

    def run(*sets):
        preset = load_preset("tiny", [f"cache.policy={policy}", "cache.sink_frames=3", "cache.recent_frames=3",
                                      "cache.mid_capacity=2", "cache.mid_top_k=1", "cache.budget_frames=3",
                                      "pruning.lambda=0", *sets])
        comps = load_components(preset.config.model, preset.config.runtime)
        return list(generate_blocks(comps, preset.config, "a red circle", 0, Plan.for_preset(4, preset.config)))

    plain, guided = run(), run("sampler.guidance_scale=3", "sampler.negative_prompt=blurry")
    assert len(guided) == len(plain) and all(b.latents.shape == plain[0].latents.shape for b in guided)
    assert [b.record["cache_bytes"] for b in guided] == [2 * b.record["cache_bytes"] for b in plain]
    assert sum(b.record["regenerations"] for b in guided) > 0
    assert not torch.equal(guided[-1].latents, plain[-1].latents)
