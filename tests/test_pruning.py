"""TokenTrim: statistics, detection, pruning through the cache interface, regeneration limits, baseline parity."""

import math

import pytest
import torch

from tokentrim_cli.engine.cache import KVCache, RollingCache
from tokentrim_cli.engine.noise import NoiseSource
from tokentrim_cli.engine.samplers import BlockSteps, Hooks, rolling_forcing, self_forcing
from tokentrim_cli.engine.schedule import warp_steps
from tokentrim_cli.pruning import TokenTrim, latent_summary, threshold

SHAPE = (1, 16, 3, 8, 8)  # 4 x 4 = 16 spatial tokens per latent frame


def batches_with_severities(severities, seed=0):
    """Latent batches whose consecutive summaries differ by exactly ``s`` on every token (drift = s)."""
    torch.manual_seed(seed)
    base = torch.randn(SHAPE)
    step = torch.zeros(SHAPE)
    step[:, 0] = 1.0 / 2  # summary vector = 16 ch x 2 x 2 patch; channel 0 in 4 cells -> norm 1 per unit
    out, offset = [base.clone()], 0.0
    for s in severities:
        offset += s
        out.append(base + offset * step)
    return out


def test_latent_summary_shape_and_mean():
    x = torch.arange(2 * 16 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 16, 3, 8, 8)
    z = latent_summary(x)
    assert z.shape == (16, 64)
    # token 0 = top-left 2x2 patch, averaged over frames and batch items
    want = x[:, :, :, :2, :2].permute(0, 2, 1, 3, 4).reshape(2, 3, 64).mean(dim=(0, 1))
    assert torch.allclose(z[0], want)


def test_thresholds_equal_hand_computation():
    sev = [1.0, 1.2, 0.9, 1.1, 5.0, 1.05]
    ctrl = TokenTrim(p=0.5, lam=2.0, warmup=2, max_regenerations=1)
    cache = KVCache(1)
    records = []
    for i, x in enumerate(batches_with_severities(sev)):
        attempt = 0
        while ctrl.review(i, x, cache, attempt):
            attempt += 1
        records.append(ctrl.accept(i, x))
    # batch 0: nothing to compare; batches 1-2: warm-up (severities 1.0, 1.2 accepted unconditionally)
    assert records[0]["severity"] is None and records[0]["threshold"] is None
    assert [r["verdict"] for r in records[1:3]] == ["warmup", "warmup"]
    assert records[1]["threshold"] is None and records[2]["threshold"] is None

    def hand(vals):
        mu = sum(vals) / len(vals)
        return mu + 2.0 * math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))  # population std

    assert records[3]["threshold"] == pytest.approx(hand([1.0, 1.2])) and records[3]["verdict"] == "below"
    assert records[4]["threshold"] == pytest.approx(hand([1.0, 1.2, 0.9])) and records[4]["verdict"] == "below"
    assert records[5]["threshold"] == pytest.approx(hand([1.0, 1.2, 0.9, 1.1]))
    assert records[5]["verdict"] == "retry_limit" and records[5]["regenerations"] == 1  # 5.0 over: retried, kept
    # the accepted retry's severity (still 5.0: same latents) joins the statistics
    assert records[6]["threshold"] == pytest.approx(hand([1.0, 1.2, 0.9, 1.1, 5.0]))
    assert ctrl.accepted == pytest.approx([1.0, 1.2, 0.9, 1.1, 5.0, 1.05])
    assert threshold([1.0, 3.0], 1.0) == pytest.approx(3.0)


def _field(t, corrupt=None, amount=0.0, seed=0):
    """A smoothly moving latent pattern (steady drift) with optional corruption of some spatial tokens."""
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    ch = torch.arange(16.0).view(16, 1, 1)
    frames = []
    for f in range(3):
        phase = 0.05 * (3 * t + f)
        frames.append(torch.sin(0.7 * xx + 0.3 * yy + ch + phase))
    x = torch.stack(frames, 1).unsqueeze(0)
    if corrupt is not None:
        for tok in corrupt:
            r, c = divmod(tok, 4)
            x[:, :, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] += amount
    return x


def test_detects_corrupted_tokens_and_stays_silent_otherwise():
    ctrl = TokenTrim(p=0.1, lam=2.0, warmup=2)  # ceil(0.1 * 16) = 2 unstable tokens
    cache = KVCache(1)
    for t in range(60):
        assert not ctrl.review(t, _field(t), cache, 0), f"false trigger at batch {t}"
        ctrl.accept(t, _field(t))
    bad = [5, 10]
    x = _field(60, corrupt=bad, amount=3.0)
    assert ctrl.review(60, x, cache, 0)
    rec = ctrl.accept(60, x)
    assert sorted(rec["unstable"]) == bad and rec["severity"] > rec["threshold"]


def test_stationary_noise_rarely_triggers():
    """Pure noise around a fixed picture: severities above mu + 2 sigma are rare (a few percent)."""
    torch.manual_seed(0)
    base = torch.randn(SHAPE)
    ctrl = TokenTrim(p=0.1, lam=2.0, warmup=2, max_regenerations=0)
    cache = KVCache(1)
    verdicts = []
    for t in range(200):
        x = base + 0.1 * torch.randn(SHAPE)
        ctrl.review(t, x, cache, 0)
        verdicts.append(ctrl.accept(t, x)["verdict"])
    assert verdicts.count("below") + verdicts.count("pruned_no_retry") == 197
    assert verdicts.count("pruned_no_retry") <= 10


def _generate(model, cache, controller, sampler=self_forcing, blocks=6, steps=(1000, 750, 500, 250), seed=3):
    noise = NoiseSource(seed, SHAPE)
    out = list(sampler(model, cache, noise, BlockSteps(blocks, warp_steps(list(steps)), 3, 0.0), Hooks(controller)))
    return torch.cat([b.latents for b in out], 2), out


def test_pruned_cache_lacks_exactly_those_positions_and_keeps_sink(causal_model):
    cache = RollingCache(causal_model.num_layers, window_frames=9, sink_frames=3, rope_len=causal_model.rope_len)
    _generate(causal_model, cache, None, blocks=4)
    sink = [s for s in cache.segments if s.kind == "sink"]
    sink_before = [(k.clone(), v.clone()) for k, v in zip(sink[0].unrotated_keys(), sink[0].values)]
    prunable_frames = sorted({int(t) for s in cache.segments if s.prunable for t in s.t})
    tokens_before = cache.num_tokens
    drop = torch.tensor([0, 5, 15])
    removed = cache.prune(drop)
    assert removed == len(drop) * len(prunable_frames) == 3 * 9
    assert cache.num_tokens == tokens_before - removed
    for s in cache.segments:
        if s.prunable:
            assert not torch.isin(s.hw, drop).any()
            for f in set(s.t.tolist()):  # every other position of every prunable frame is still there
                assert sorted(s.hw[s.t == f].tolist()) == [i for i in range(16) if i not in drop.tolist()]
    assert all(torch.equal(a, k) and torch.equal(b, v) for (a, b), k, v in zip(sink_before, sink[0].unrotated_keys(), sink[0].values))
    # attention runs on the reduced cache: the keys handed to the processors are the reduced context + 3 frames
    sizes = []
    orig = cache.attend

    def spy(layer, *args):
        keys, values = orig(layer, *args)
        sizes.append(keys.shape[1])
        return keys, values

    cache.attend = spy
    with torch.no_grad():
        out = causal_model(torch.randn(SHAPE), torch.full((3,), 500.0), torch.arange(12, 15), cache=cache)
    assert torch.isfinite(out).all()
    assert sizes == [3 * 16 + 9 * 13 + 3 * 16] * causal_model.num_layers


class CountingTokenTrim(TokenTrim):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = {}

    def review(self, block, latents, cache, attempt):
        self.calls[block] = self.calls.get(block, 0) + 1
        return super().review(block, latents, cache, attempt)


@pytest.mark.parametrize("max_regen", [1, 2])
def test_at_most_max_regenerations(causal_model, max_regen):
    ctrl = CountingTokenTrim(p=0.1, lam=0.0, warmup=1, max_regenerations=max_regen)
    cache = RollingCache(causal_model.num_layers, window_frames=9, rope_len=causal_model.rope_len)
    _, blocks = _generate(causal_model, cache, ctrl, blocks=8)
    assert max(ctrl.calls.values()) <= max_regen + 1
    assert all(b.record["regenerations"] <= max_regen for b in blocks)
    assert any(b.record["regenerated"] for b in blocks)
    assert sum(b.record["pruned_tokens"] for b in blocks) == ctrl.pruned_total > 0


def test_first_step_rejection_costs_one_forward(causal_model):
    calls = []
    orig = causal_model.forward

    def spy(*a, **kw):
        calls.append(kw.get("write", False))
        return orig(*a, **kw)

    causal_model.forward = spy
    ctrl = TokenTrim(p=0.1, lam=0.0, warmup=1, max_regenerations=1, measure_at="first_step")
    cache = RollingCache(causal_model.num_layers, window_frames=9, rope_len=causal_model.rope_len)
    _, blocks = _generate(causal_model, cache, ctrl, blocks=6)
    regens = sum(b.record["regenerations"] for b in blocks)
    assert regens > 0
    assert calls.count(False) == 6 * 4 + regens  # a rejected candidate cost one denoising step
    assert calls.count(True) == 6


@pytest.mark.parametrize("sampler,steps", [(self_forcing, (1000, 750, 500, 250)), (rolling_forcing, (1000, 800, 600, 400, 200))])
def test_quiet_controller_is_bit_identical_to_baseline(causal_model, sampler, steps):
    def cache():
        return RollingCache(causal_model.num_layers, window_frames=3, sink_frames=3, rope_len=causal_model.rope_len)

    base, _ = _generate(causal_model, cache(), None, sampler, steps=steps)
    quiet, blocks = _generate(causal_model, cache(), TokenTrim(lam=1e9), sampler, steps=steps)
    assert torch.equal(base, quiet)
    assert not any(b.record["regenerated"] for b in blocks)
    loud, blocks = _generate(causal_model, cache(), TokenTrim(lam=0.0, warmup=1), sampler, steps=steps)
    assert any(b.record["regenerated"] for b in blocks) and not torch.equal(base, loud)


def test_generate_sidecar_records_pruning(tmp_path):
    import json

    from test_cli import tokentrim

    def run(name, *sets):
        out = tmp_path / f"{name}.mp4"
        cmd = ["generate", "--prompt", "a red circle", "--seconds", "4", "--seed", "3", "--output", str(out), "--quiet"]
        for s in sets:
            cmd += ["--set", s]
        r = tokentrim(*cmd)
        assert r.returncode == 0, r.stderr
        return json.loads(out.with_suffix(".json").read_text())["blocks"]

    forced = run("forced", "pruning.lambda=0")
    assert sum(b["regenerations"] for b in forced) > 0 and sum(b["pruned_tokens"] for b in forced) > 0
    assert any(b["regenerated"] for b in forced)
    off = run("off", "pruning.enabled=false")
    assert all(b["regenerations"] == 0 and b["pruned_tokens"] == 0 and b["severity"] is None for b in off)
