"""The engine reproduces the reference autoregressive generation exactly (tiny models, CPU, fp32)."""

import copy

import pytest
import torch

from conftest import tiny_transformer
from tokentrim_cli.engine.cache import KVCache, RollingCache
from tokentrim_cli.engine.guidance import Guided
from tokentrim_cli.engine.model import CausalWan
from tokentrim_cli.engine.noise import NoiseSource
from tokentrim_cli.engine.samplers import BlockSteps, rolling_forcing, self_forcing
from tokentrim_cli.engine.schedule import warp_steps


@pytest.mark.parametrize("offset", [0, 7])
def test_cached_blocks_equal_block_causal_full_pass(causal_model, offset):
    torch.manual_seed(3)
    x = torch.randn(1, 16, 12, 8, 8)
    ts = torch.rand(12) * 1000
    frames = torch.arange(offset, offset + 12)
    with torch.no_grad():
        full = causal_model(x, ts, frames, block_frames=3)
        cache = KVCache(causal_model.num_layers, causal_model.rope_len)
        parts = [
            causal_model(x[:, :, i : i + 3], ts[i : i + 3], frames[i : i + 3], cache=cache, write=True)
            for i in range(0, 12, 3)
        ]
    assert (full - torch.cat(parts, 2)).abs().max().item() <= 1e-5
    assert cache.frames == list(range(offset, offset + 12))


def test_forward_matches_diffusers_stock_forward():
    stock = tiny_transformer()
    model = CausalWan(copy.deepcopy(stock))
    torch.manual_seed(4)
    prompt = torch.randn(1, 16, 32)
    model.set_prompt(prompt)
    x = torch.randn(1, 16, 5, 8, 8)
    with torch.no_grad():
        ref = stock(x, timestep=torch.tensor([640.0]), encoder_hidden_states=prompt).sample
        ours = model(x, torch.full((5,), 640.0), torch.arange(5))
    assert (ref - ours).abs().max().item() <= 1e-5


def test_timestep_tables_match_reference():
    sf = (warp_steps([1000, 750, 500, 250], shift=5.0) * 1000).tolist()
    rf = (warp_steps([1000, 800, 600, 400, 200], shift=5.0) * 1000).tolist()
    assert sf == pytest.approx([1000, 937.5, 833.33, 625.0], abs=0.01)
    assert rf == pytest.approx([1000, 952.38, 882.35, 769.23, 555.56], abs=0.01)


def _run(sampler, model, seed, blocks=3, cache=None, steps=(1000, 750, 500, 250), solver="renoise"):
    cache = cache or KVCache(model.num_layers, model.rope_len)
    noise = NoiseSource(seed, (1, 16, 3, 8, 8))
    out = list(sampler(model, cache, noise, BlockSteps(blocks, warp_steps(list(steps)), solver=solver)))
    return torch.cat([b.latents for b in out], 2), out


@pytest.mark.parametrize("sampler,steps", [(self_forcing, (1000, 750, 500, 250)), (rolling_forcing, (1000, 800, 600, 400, 200))])
def test_fixed_seed_is_bit_identical(causal_model, sampler, steps):
    a, blocks = _run(sampler, causal_model, 11, steps=steps)
    b, _ = _run(sampler, causal_model, 11, steps=steps)
    c, _ = _run(sampler, causal_model, 12, steps=steps)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert [blk.index for blk in blocks] == [0, 1, 2]
    assert [blk.latent_frames for blk in blocks] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def _renoise_step(x, v, s, s_next, draw):
    """The references' step: x0 = x - sigma v, re-noised with fresh noise (x0 itself after the last step)."""
    x0 = x - s * v
    return x0 if s_next == 0 else (1 - s_next) * x0 + s_next * draw()


def _euler_step(x, v, s, s_next, draw):
    """The flow-matching ODE step, written in its own form: x + (sigma_next - sigma) v."""
    return x + (s_next - s) * v


def _hand_written_self_forcing(velocity, write, step, blocks, seed=5):
    """Self Forcing spelled out: per 3-frame block, 4 steps reading the context, then a t=0 write of the result."""
    sig = warp_steps([1000, 750, 500, 250]).float()
    noise = NoiseSource(seed, (1, 16, 3, 8, 8))
    outs = []
    with torch.no_grad():
        for i in range(blocks):
            fr = torch.arange(3 * i, 3 * i + 3)
            x = noise.draw(i, 0)
            for j, s in enumerate(sig):
                v = velocity(x, torch.full((3,), float(s) * 1000), fr)
                x = step(x, v, s, sig[j + 1] if j + 1 < len(sig) else 0, lambda: noise.draw(i, j + 1))
            write(x, fr)
            outs.append(x)
    return torch.cat(outs, 2)


def _cached(model):
    """velocity and write functions of one model reading and writing one cache."""
    cache = KVCache(model.num_layers, model.rope_len)
    return (lambda x, ts, fr: model(x, ts, fr, cache=cache),
            lambda x, fr: model(x, torch.zeros(3), fr, cache=cache, write=True))


def test_self_forcing_matches_hand_written_reference(causal_model):
    """One Self Forcing block by hand: 4 steps reading the cache, fresh re-noising, then a t=0 write."""
    got, _ = _run(self_forcing, causal_model, 5, blocks=2)
    assert torch.equal(got, _hand_written_self_forcing(*_cached(causal_model), _renoise_step, blocks=2))


def test_euler_solver_is_the_flow_matching_ode_step(causal_model):
    """solver=euler: x_next = x + (sigma_next - sigma) v from the block's first noise only, then x0 at the last
    level; a flow-matching model's samples depend on that first noise, not on fresh draws."""
    got, _ = _run(self_forcing, causal_model, 5, blocks=2, solver="euler")
    ref = _hand_written_self_forcing(*_cached(causal_model), _euler_step, blocks=2)
    assert (got - ref).abs().max().item() < 1e-5
    renoised, _ = _run(self_forcing, causal_model, 5, blocks=2)
    assert (got - renoised).abs().max().item() > 1e-2


@pytest.mark.parametrize("sampler", [self_forcing, rolling_forcing])
def test_euler_solver_draws_only_each_blocks_first_noise(causal_model, sampler, monkeypatch):
    draws = []
    orig = NoiseSource.draw
    monkeypatch.setattr(NoiseSource, "draw", lambda self, block, step, *a, **k: draws.append(step) or orig(self, block, step, *a, **k))
    a, _ = _run(sampler, causal_model, 3, blocks=4, solver="euler", steps=(1000, 800, 600, 400, 200))
    assert set(draws) == {0}
    b, _ = _run(sampler, causal_model, 3, blocks=4, solver="euler", steps=(1000, 800, 600, 400, 200))
    assert torch.equal(a, b)


@pytest.mark.parametrize("solver,min_timestep", [("renoise", 0), ("euler", 0), ("euler", 900)])
def test_guidance_combines_two_branches_each_with_its_own_context(causal_model, solver, min_timestep, monkeypatch):
    """Guided self forcing equals a hand-written loop with two models' worth of state: the prompt and the
    negative prompt each read and write their own cache, and v = v_neg + s (v_prompt - v_neg), or v_prompt
    below the guidance interval. Those unguided steps run the prompt's branch alone."""
    torch.manual_seed(4)
    pos, neg = torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    guided = Guided(causal_model, 3.0, min_timestep)
    guided.set_prompt(pos, neg)
    batches = []
    forward = CausalWan.forward
    monkeypatch.setattr(CausalWan, "forward",
                        lambda self, x, *a, **k: batches.append(x.shape[0]) or forward(self, x, *a, **k))
    got, _ = _run(self_forcing, guided, 5, blocks=3, solver=solver)
    monkeypatch.undo()
    # per block: 4 steps (t = 1000, 937.5, 833, 625), then the write pass; 900 leaves the last two unguided
    assert batches == ([2, 2, 2, 2, 2] if min_timestep == 0 else [2, 2, 1, 1, 2]) * 3
    pos_v, pos_write = _cached(causal_model)
    neg_v, neg_write = _cached(causal_model)

    def velocity(x, ts, fr):
        causal_model.set_prompt(neg)
        vn = neg_v(x, ts, fr)
        causal_model.set_prompt(pos)
        vp = pos_v(x, ts, fr)
        return vn + 3.0 * (vp - vn) if float(ts[0]) >= min_timestep else vp

    def write(x, fr):
        for prompt, branch in ((pos, pos_write), (neg, neg_write)):
            causal_model.set_prompt(prompt)
            branch(x, fr)

    step = _renoise_step if solver == "renoise" else _euler_step
    assert (got - _hand_written_self_forcing(velocity, write, step, blocks=3)).abs().max().item() < 1e-4


def test_guidance_interval_leaves_low_noise_frames_unguided(causal_model):
    torch.manual_seed(6)
    pos, neg, x = torch.randn(1, 16, 32), torch.randn(1, 16, 32), torch.randn(1, 16, 6, 8, 8)
    ts, frames = torch.tensor([900.0] * 3 + [100.0] * 3), torch.arange(6)
    guided = Guided(causal_model, 4.0, min_timestep=500)
    guided.set_prompt(pos, neg)
    with torch.no_grad():
        got = guided(x, ts, frames)
        causal_model.set_prompt(pos)
        vp = causal_model(x, ts, frames)
        causal_model.set_prompt(neg)
        vn = causal_model(x, ts, frames)
    assert (got[:, :, :3] - (vn + 4.0 * (vp - vn))[:, :, :3]).abs().max().item() < 1e-4
    assert (got[:, :, 3:] - vp[:, :, 3:]).abs().max().item() < 1e-4


def test_rolling_forcing_window_schedule(causal_model):
    """Each forward carries the window's blocks at staggered levels, oldest lowest; one write per emitted block."""
    calls = []
    orig = causal_model.forward

    def spy(x, ts, frames, cache=None, write=False, **kw):
        calls.append((torch.as_tensor(ts)[::3].round().tolist(), torch.as_tensor(frames).tolist()[::3], write))
        return orig(x, ts, frames, cache=cache, write=write, **kw)

    causal_model.forward = spy
    _run(rolling_forcing, causal_model, 0, blocks=6, steps=(1000, 800, 600, 400, 200))
    reads = [c for c in calls if not c[2]]
    writes = [c for c in calls if c[2]]
    assert len(reads) == 6 + 4  # num_blocks + steps - 1 windows
    assert reads[0][0] == [1000]
    assert reads[4][0] == [556, 769, 882, 952, 1000]  # full window: oldest block at the lowest level
    assert reads[4][1] == [0, 3, 6, 9, 12]
    assert reads[-1][0] == [556]  # flush: last block alone at its final level
    assert [w[1] for w in writes] == [[0], [3], [6], [9], [12], [15]]
    assert all(w[0] == [0] for w in writes)


def test_rolling_window_with_sink_bounds_cache(causal_model):
    cache = RollingCache(causal_model.num_layers, window_frames=6, sink_frames=3, rope_len=causal_model.rope_len)
    _run(self_forcing, causal_model, 0, blocks=8, cache=cache)
    assert cache.frames == [0, 1, 2, 18, 19, 20, 21, 22, 23]
    assert [s.kind for s in cache.segments][0] == "sink"


def test_streaming_decode_equals_one_shot(tiny_vae):
    from tokentrim_cli.engine.vae import StreamingDecoder

    torch.manual_seed(6)
    z = torch.randn(1, 16, 7, 8, 8)
    dec = StreamingDecoder(tiny_vae)
    dec.reset()
    parts = [dec.decode(z[:, :, :1]), dec.decode(z[:, :, 1:4]), dec.decode(z[:, :, 4:7])]
    assert [p.shape[2] for p in parts] == [1, 12, 12]
    mean = torch.tensor(tiny_vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(tiny_vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        ref = tiny_vae.decode(z * std + mean).sample
    stream = torch.cat(parts, 2)
    assert stream.shape[2] == 1 + 4 * 6  # a causal codec: 1 frame, then 4 per latent frame
    assert torch.equal(stream, ref)
    # decoding block by block with plain vae.decode is not the same thing
    with torch.no_grad():
        naive = torch.cat([tiny_vae.decode(z[:, :, i : i + 3] * std + mean).sample for i in (1, 4)], 2)
    assert naive.shape[2] == 18  # each chunk restarts the causal state: 1 + 4 + 4 frames instead of 12


def test_patch_codec_round_trip_and_streaming():
    from tokentrim_cli.engine.patch_codec import PatchCodec
    from tokentrim_cli.engine.vae import StreamingDecoder

    torch.manual_seed(7)
    # a world of flat colours: two-colour frames with a moving square
    px = torch.full((1, 3, 6, 32, 32), -0.6)
    px[:, 0] = 0.4
    for f in range(6):
        px[:, :, f, 4 + 2 * f : 14 + 2 * f, 8:18] = torch.tensor([0.9, -0.9, 0.1]).view(1, 3, 1, 1)
    codec = PatchCodec(patch=4, channels=16).fit(px[0].permute(1, 0, 2, 3))
    z = codec.encode(px)
    assert z.shape == (1, 16, 6, 8, 8) and codec.temporal_compression_ratio == 1
    assert (codec.decode(z) - px).abs().max() < 1e-4  # this world is exactly representable
    glob = PatchCodec(patch=4, channels=16).fit(px[0].permute(1, 0, 2, 3), scale="global")
    zg = glob.encode(px)  # one scale for all channels (latent MSE is pixel MSE), unit RMS on its fitting frames
    assert torch.all(glob.scale == glob.scale[0]) and float(zg.pow(2).mean()) == pytest.approx(1.0, abs=1e-4)
    assert (glob.decode(zg) - px).abs().max() < 1e-4
    dec = StreamingDecoder(codec)
    dec.reset()
    stream = torch.cat([dec.decode(z[:, :, :3]), dec.decode(z[:, :, 3:])], 2)
    assert torch.equal(stream, codec.decode(z))


def test_interrupted_write_pass_raises_the_interrupt_and_stores_nothing(causal_model):
    """Ctrl-C or SIGTERM mid-forward must surface as the interrupt (exit 130, partial video), not as a cache error,
    and leave the cache as it was."""
    cache = KVCache(causal_model.num_layers, causal_model.rope_len)
    x = torch.randn(1, 16, 3, 8, 8)
    with torch.no_grad():
        causal_model(x, torch.zeros(3), torch.arange(3), cache=cache, write=True)

        def interrupt(*_):
            raise KeyboardInterrupt

        hook = causal_model.transformer.blocks[1].register_forward_hook(interrupt)
        with pytest.raises(KeyboardInterrupt):
            causal_model(x, torch.zeros(3), torch.arange(3, 6), cache=cache, write=True)
        hook.remove()
        assert cache.frames == [0, 1, 2]
        causal_model(x, torch.zeros(3), torch.arange(3, 6), cache=cache, write=True)
    assert cache.frames == [0, 1, 2, 3, 4, 5]
