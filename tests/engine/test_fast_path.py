"""The fast path (rotated keys in preallocated buffers, ``engine/arena.py``) gives the reference path's outputs,
does its work once per block rather than once per forward, and keeps every tensor on the model's device."""

import pytest
import torch

from conftest import CacheDriver, tiny_transformer
from tokentrim_cli.engine import arena as arena_mod
from tokentrim_cli.engine.cache import KVCache, RollingCache
from tokentrim_cli.engine.guidance import Guided
from tokentrim_cli.engine.model import CausalWan
from tokentrim_cli.engine.noise import NoiseSource
from tokentrim_cli.engine.policies import DeepSinkCache, RollingForcingCache, ThreePartitionCache
from tokentrim_cli.engine.rope import Rope
from tokentrim_cli.engine.samplers import BlockSteps, Hooks, rolling_forcing, self_forcing
from tokentrim_cli.engine.schedule import warp_steps
from tokentrim_cli.pruning import TokenTrim

SHAPE = (1, 16, 3, 8, 8)  # 4 x 4 tokens per latent frame
SF, RF = (1000, 750, 500, 250), (1000, 800, 600, 400, 200)

CASES = {
    # name: (cache factory(arena), sampler, steps, blocks)
    "rolling window (eviction)": (lambda a: RollingCache(2, window_frames=6, rope_len=64, arena=a), self_forcing, SF, 8),
    "sink + window past the rope table": (lambda a: RollingCache(2, window_frames=9, sink_frames=3, rope_len=24, arena=a),
                                          self_forcing, (1000, 500), 14),
    "window of 4 (partial eviction)": (lambda a: RollingCache(2, window_frames=4, rope_len=64, arena=a), self_forcing, SF, 6),
    "three-partition, per-layer top-K": (lambda a: ThreePartitionCache(2, sink_frames=3, recent_frames=3, mid_capacity=4,
                                                                       mid_top_k=2, rope_len=64, arena=a), self_forcing, SF, 10),
    "three-partition past the rope table": (lambda a: ThreePartitionCache(2, sink_frames=3, recent_frames=3, mid_capacity=3,
                                                                          mid_top_k=1, selection="shared", rope_len=24,
                                                                          arena=a), self_forcing, (1000, 500), 14),
    "deep sink": (lambda a: DeepSinkCache(2, sink_frames=3, recent_frames=3, budget_frames=2, rope_len=64, arena=a),
                  self_forcing, SF, 8),
    "rolling forcing, its reference context": (lambda a: RollingForcingCache(2, 3, 21, rope_len=64, arena=a),
                                               rolling_forcing, RF, 12),
    "rolling forcing, three-partition": (lambda a: ThreePartitionCache(2, sink_frames=3, recent_frames=3, mid_capacity=3,
                                                                       mid_top_k=2, rope_len=64, arena=a), rolling_forcing, RF, 10),
}

EXACT = {"rolling window (eviction)", "window of 4 (partial eviction)", "rolling forcing, its reference context"}


def _generate(model, cache, sampler, steps, blocks, reviewer=None, seed=3):
    out = list(sampler(model, cache, NoiseSource(seed, SHAPE), BlockSteps(blocks, warp_steps(list(steps)), 3, 0.0),
                       Hooks(reviewer)))
    return torch.cat([b.latents for b in out], 2), [b.record for b in out]


def _fast_and_reference(make_model, name, pruning):
    make, sampler, steps, blocks = CASES[name]
    results = []
    for arena in (True, False):
        cache, model = make(arena), make_model()
        reviewer = TokenTrim(p=0.2, lam=0.0, warmup=1) if pruning else None
        lat, records = _generate(model, cache, sampler, steps, blocks, reviewer)
        results.append((lat, records, cache.num_tokens, cache.nbytes, model))
    (fast, rec_fast, tok_fast, bytes_fast, _), (ref, rec_ref, tok_ref, bytes_ref, _) = results
    assert (fast - ref).abs().max().item() <= 1e-5
    if name in EXACT:  # nothing moved or was un-rotated: the same numbers in the same order, bit for bit
        assert torch.equal(fast, ref)
    assert (tok_fast, bytes_fast) == (tok_ref, bytes_ref)
    if pruning:
        assert [r["verdict"] for r in rec_fast] == [r["verdict"] for r in rec_ref]
        assert sum(r["pruned_tokens"] for r in rec_fast) > 0
    return results[0][-1], results[1][-1]


@pytest.mark.parametrize("pruning", [False, True], ids=["", "pruning"])
@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_equals_reference_path(name, pruning):
    """Rotated buffers == un-rotated segments rotated per call (fp32, 1e-5), after eviction, TokenTrim pruning
    (lambda 0 fires on most batches), three-partition selection and re-packing past the RoPE table: the real
    samplers and reviewer over the cache driven as the model drives it, every attention output compared."""
    fast, ref = _fast_and_reference(CacheDriver, name, pruning)
    assert len(fast.calls) == len(ref.calls) > 0
    assert max((a[2] - b[2]).abs().max().item() for a, b in zip(fast.calls, ref.calls)) <= 1e-5


@pytest.mark.parametrize("name, pruning", [("three-partition past the rope table", True),
                                           ("rolling forcing, its reference context", False)])
def test_fast_path_equals_reference_path_on_the_model(causal_model, name, pruning):
    """The same through the tiny transformer, end to end: re-packing past the table with pruning, and a case that
    must be bit for bit."""
    _fast_and_reference(lambda: causal_model, name, pruning)


def test_fast_path_past_1024_frames_equals_reference():
    """345 one-step blocks (1035 latent frames) through the three-partition cache with the real 1024-entry table;
    every attention output of the fast path equals the reference path's."""
    runs = []
    for arena in (True, False):
        model = CacheDriver(rope_len=1024)
        cache = ThreePartitionCache(2, sink_frames=6, recent_frames=3, mid_capacity=4, mid_top_k=2, rope_len=1024,
                                    arena=arena)
        runs.append((_generate(model, cache, self_forcing, (1000,), 345)[0], model.calls))
    (fast, fast_calls), (ref, ref_calls) = runs
    assert fast.shape[2] == 1035 and len(fast_calls) == len(ref_calls) == 345 * 2 * 2
    assert (fast - ref).abs().max().item() <= 1e-5
    assert max((a[2] - b[2]).abs().max().item() for a, b in zip(fast_calls, ref_calls)) <= 1e-5


@pytest.mark.parametrize("policy", ["rolling", "three_partition"])
def test_guidance_fast_path_equals_reference(causal_model, policy):
    """Two branches in one cache, and forwards that run the prompt's branch alone (read the first batch item)."""
    torch.manual_seed(4)
    pos, neg = torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    lats = []
    for arena in (True, False):
        guided = Guided(causal_model, 3.0, min_timestep=900)
        guided.set_prompt(pos, neg)
        cache = (RollingCache(2, window_frames=6, sink_frames=3, rope_len=64, arena=arena) if policy == "rolling" else
                 ThreePartitionCache(2, sink_frames=3, recent_frames=3, mid_capacity=3, mid_top_k=1, rope_len=64, arena=arena))
        lats.append(_generate(guided, cache, self_forcing, SF, 8, TokenTrim(p=0.2, lam=0.0, warmup=1))[0])
    assert (lats[0] - lats[1]).abs().max().item() <= 1e-5


def test_fast_path_does_its_work_once_per_block(causal_model, monkeypatch):
    """Self Forcing's rolling window below the table never turns a stored key, writes each block where it was
    computed and moves the region rarely; three-partition stages its sink + mid blocks once per block per layer."""
    moves, relocations, stagings = [], [], []
    move, relocate = Rope.move, arena_mod.Arena._relocate
    monkeypatch.setattr(Rope, "move", lambda self, *a: moves.append(1) or move(self, *a))
    monkeypatch.setattr(arena_mod.Arena, "_relocate", lambda self, *a, **k: relocations.append(1) or relocate(self, *a, **k))
    cache = RollingCache(2, window_frames=18, rope_len=64)
    _generate(causal_model, cache, self_forcing, SF, 12)
    assert moves == [] and len(relocations) <= 12  # 12 blocks x 5 forwards: it grows and slides back once a block at most
    assert cache.allocated_bytes < 2 * cache.nbytes

    rotate = arena_mod.rotate
    monkeypatch.setattr(arena_mod, "rotate", lambda *a: stagings.append(1) or rotate(*a))
    cache = ThreePartitionCache(2, sink_frames=3, recent_frames=3, mid_capacity=4, mid_top_k=2, rope_len=64)
    _generate(causal_model, cache, self_forcing, SF, 10)
    # per block and layer: the sink and each attended mid block, rotated once (not once per each of 5 forwards)
    assert 0 < len(stagings) <= 10 * 2 * (1 + 2)


def _meta_model():
    model = CausalWan(tiny_transformer(num_layers=1)).to("meta")  # meta kernels run in Python: one layer suffices
    model.set_prompt(torch.randn(1, 16, 32))
    return model


# two denoising steps (Rolling Forcing: windows of three blocks, start-up, full windows and the flush in 6 blocks)
@pytest.mark.parametrize("sampler,steps", [(self_forcing, (1000, 500)), (rolling_forcing, (1000, 600, 200))])
@pytest.mark.parametrize("cache", ["full", "rolling", "sink_window", "rolling_forcing", "deep_sink", "three_partition"])
@pytest.mark.parametrize("guided", [False, True], ids=["", "guided"])
def test_no_cpu_tensor_meets_a_device_tensor(sampler, steps, cache, guided):
    """On the meta device a CPU tensor mixed into the math raises just as it would on CUDA; every sampler, cache
    policy and the guided model run a few blocks there (pruning needs values, so it is off). Budgets are large
    enough that no policy needs to read values (top-K, token budgets) in these few blocks."""
    from tokentrim_cli.engine.policies import make_cache
    from tokentrim_cli.config.settings import Cache

    cfg = Cache(policy=cache, window_frames=9, sink_frames=3, recent_frames=3, mid_capacity=8, mid_top_k=8,
                budget_frames=64)
    model = _meta_model()
    if guided:
        model = Guided(model, 3.0, min_timestep=900)
        model.set_prompt(torch.randn(1, 16, 32), torch.randn(1, 16, 32))
    kv = make_cache(cfg, 1, 64)
    blocks = list(sampler(model, kv, NoiseSource(0, SHAPE, device="meta"), BlockSteps(6, warp_steps(list(steps)))))
    assert len(blocks) == 6 and all(b.latents.device.type == "meta" for b in blocks)
    assert kv.num_tokens > 0


# ---------------------------------------------------------------------- Rolling Forcing's reference, by hand
class _ReferenceSlots(KVCache):
    """Rolling Forcing's cache as its reference keeps it, in frame slots: slot 0 holds the first block (the
    sink), then up to 21 more frames; a denoising window reads the sink plus the clean frames between
    max(3, window start - (21 - 3 - window frames)) and the window start; a write pass reads the last 21 frames
    of the cache including itself. Written independently of RollingForcingCache, over the plain reference path."""

    def __init__(self):
        super().__init__(2, 64, arena=False)

    def admit(self, seg):
        seg.kind = "sink" if seg.frames[0] == 0 else "recent"
        self.segments.append(seg)
        sink = [s for s in self.segments if s.kind == "sink"]
        rest = [s for s in self.segments if s.kind != "sink"]
        while 3 * (len(sink) + len(rest)) > 24:  # 24 frames of slots; the oldest non-sink block goes
            rest.pop(0)
        self.segments = sink + rest

    def select(self, layer, query):
        slots = [f for s in self.segments for f in s.frames]  # frames in slot order; the current ones follow
        n = len(self.current_frames)
        end = len(slots)
        if self.writing:
            chosen = slots[max(0, end + n - 21) : end]
        else:
            chosen = slots[:3] + slots[max(3, end - (21 - n - 3)) : end]
        return [s for s in self.segments if s.frames[0] in chosen]


def _hand_written_rolling_forcing(model, blocks, seed=3):
    """The reference's window schedule spelled out: window w covers blocks max(0, w - 4)..min(w, last); start-up
    windows take the last timesteps (newest at 1000), flush windows the first (oldest at 555.56); after each
    window its oldest block, if at its last step, is final and written at t = 0; every other block is re-noised
    with fresh noise."""
    sig = warp_steps(list(RF)).float()
    levels = sig.flip(0)  # oldest (lowest) first, as the reference orders its window
    noise = NoiseSource(seed, SHAPE)
    cache = _ReferenceSlots()
    x = {}
    out = []
    with torch.no_grad():
        for w in range(blocks + 4):
            start, end = max(0, w - 4), min(blocks - 1, w)
            count = end - start + 1
            if w < blocks:
                x[w] = noise.draw(w, 0)
            ts = levels[-count:] if start == 0 and count < 5 else levels[:count]
            frames = torch.arange(3 * start, 3 * end + 3)
            inp = torch.cat([x[b] for b in range(start, end + 1)], 2)
            lv = ts.repeat_interleave(3)
            v = model(inp, lv * 1000, frames, cache=cache, first_step=True)
            x0 = inp - lv.view(1, 1, -1, 1, 1) * v
            for i, b in enumerate(range(start, end + 1)):
                step = 4 - list(levels).index(ts[i])  # 0 at 1000 ... 4 at 555.56
                block = x0[:, :, 3 * i : 3 * i + 3]
                if step == 4:
                    model(block, torch.zeros(3), torch.arange(3 * b, 3 * b + 3), cache=cache, write=True)
                    out.append(block)
                else:
                    x[b] = (1 - sig[step + 1]) * block + sig[step + 1] * noise.draw(b, step + 1)
    return torch.cat(out, 2)


@pytest.mark.parametrize("blocks", [9, 12])
def test_rolling_forcing_matches_its_reference_context(causal_model, blocks):
    """Our sampler + RollingForcingCache (fast path) == the hand-written loop over the reference's slot rules,
    over start-up, full windows past the 21-frame span (write passes without the sink) and the end flush."""
    ref = _hand_written_rolling_forcing(causal_model, blocks)
    got, _ = _generate(causal_model, RollingForcingCache(2, 3, 21, rope_len=64), rolling_forcing, RF, blocks)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-5


def test_rolling_forcing_context_choices(causal_model):
    """What each forward attended to, by frame: the sink + 1 clean block beside full windows, 2-5 blocks in the
    flush; write passes over the last 21 frames, without the sink once the video is longer than that."""
    cache = RollingForcingCache(2, 3, 21, rope_len=64)
    seen = []
    orig = cache.select

    def spy(layer, query):
        segs = orig(layer, query)
        if layer == 0:
            seen.append((cache.writing, int(cache.current_frames[0]), sorted(f for s in segs for f in s.frames)))
        return segs

    cache.select = spy
    _generate(causal_model, cache, rolling_forcing, RF, 9)
    denoise = [(f0, ctx) for w, f0, ctx in seen if not w]
    writes = {f0: ctx for w, f0, ctx in seen if w}
    sink = [0, 1, 2]
    assert denoise[5] == (3, sink)  # window B1-B5: the sink alone
    assert denoise[6] == (6, sink + [3, 4, 5])  # window B2-B6: sink + one clean block
    assert [len(ctx) - 3 for _, ctx in denoise[9:]] == [6, 9, 12, 15]  # flush: 2, 3, 4, 5 clean blocks
    assert writes[18] == list(range(18))  # block 6 (frames 18-20): the 18 frames before it, sink included
    assert writes[21] == list(range(3, 21)) and writes[24] == list(range(6, 24))  # then no sink
