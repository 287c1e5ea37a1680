"""Position rules (``cache.positions``): ``absolute`` keeps every cached key at its own latent frame (LongLive, Self
Forcing), ``packed`` closes the gaps eviction leaves (Rolling Forcing, three-partition). Tiny model, CPU, fp32."""

import pytest
import torch

from tokentrim_cli.config.presets import load_preset
from tokentrim_cli.engine.cache import RollingCache
from tokentrim_cli.engine.noise import NoiseSource
from tokentrim_cli.engine.policies import make_cache
from tokentrim_cli.engine.samplers import BlockSteps, self_forcing
from tokentrim_cli.engine.schedule import warp_steps
from tokentrim_cli.errors import ConfigError
from tokentrim_cli.config.settings import Cache

SHAPE = (1, 16, 3, 8, 8)
STEPS = (1000, 500)


def _run(model, cache, blocks, seed=3):
    out = self_forcing(model, cache, NoiseSource(seed, SHAPE), BlockSteps(blocks, warp_steps(list(STEPS)), 3))
    return torch.cat([b.latents for b in out], 2)


def _spy_positions(cache):
    """Per write pass, by its first frame: {frame: temporal position} of its layout (context and current frames)."""
    seen = {}
    layout = cache.layout

    def spy(segs):
        found = layout(segs)
        if cache.writing:
            seen[int(cache.current_frames[0])] = dict(found.pos)
        return found

    cache.layout = spy
    return seen


@pytest.mark.parametrize("rope_len", [64, 12], ids=["inside the table", "past the table"])
def test_gap_free_window_gives_the_same_video_either_way(causal_model, rope_len):
    """Self Forcing's rolling window has no gaps: both rules give the same positions, so the same video, bit for
    bit, inside the RoPE table and past it (where absolute falls back to packed)."""
    videos = [_run(causal_model, RollingCache(2, window_frames=6, rope_len=rope_len, positions=p), 8)
              for p in ("absolute", "packed")]
    assert torch.equal(videos[0], videos[1])


def test_absolute_keeps_the_sink_at_its_own_frames(causal_model):
    """Sink 3 + window 6 (LongLive's shape): once the window has evicted frames, absolute keeps the sink at
    positions 0-2 and the window at its frames; packed moves the sink right before the window."""
    got = {}
    for rule in ("absolute", "packed"):
        cache = RollingCache(2, window_frames=6, sink_frames=3, rope_len=64, positions=rule)
        seen = _spy_positions(cache)
        got[rule] = (_run(causal_model, cache, 6), seen[15])  # block 5: frames 15-17 over sink 0-2 + window 9-14
    absolute, packed = got["absolute"][1], got["packed"][1]
    assert absolute == {f: f for f in [0, 1, 2] + list(range(9, 18))}
    assert packed == {**{f: f + 6 for f in (0, 1, 2)}, **{f: f for f in range(9, 18)}}
    assert (got["absolute"][0] - got["packed"][0]).abs().max().item() > 1e-3  # a different video


@pytest.mark.parametrize("arena", [True, False], ids=["fast path", "plain path"])
def test_absolute_falls_back_to_packed_past_the_table(causal_model, arena):
    """RoPE table of 24 positions: frames 0-23 are laid out absolute, the forwards from frame 24 on packed (the
    current frames at the table's end, the sink right before the window); ``fallback_frame`` says where."""
    cache = RollingCache(2, window_frames=6, sink_frames=3, rope_len=24, arena=arena, positions="absolute")
    seen = _spy_positions(cache)
    _run(causal_model, cache, 12)
    assert cache.fallback_frame == 24
    assert seen[21] == {f: f for f in [0, 1, 2] + list(range(15, 24))}  # block 7: frames 21-23, still absolute
    assert seen[24] == {**{f: f + 12 for f in (0, 1, 2)}, **{f: f - 3 for f in range(18, 27)}}  # block 8: packed
    assert max(max(p.values()) for p in seen.values()) == 23


def test_fast_path_equals_plain_path_with_absolute_positions(causal_model):
    """Rotated buffers == un-rotated segments rotated per call, across the first eviction and the fallback."""
    videos = [_run(causal_model, RollingCache(2, window_frames=6, sink_frames=3, rope_len=24, arena=a,
                                              positions="absolute"), 12) for a in (True, False)]
    assert (videos[0] - videos[1]).abs().max().item() <= 1e-5


def test_presets_name_their_position_rule():
    rules = {name: load_preset(name).config.cache.positions for name in
             ("self-forcing", "longlive", "rolling-forcing", "self-forcing-packed", "rolling-forcing-packed",
              "longlive-packed", "tiny")}
    assert rules == {"self-forcing": "absolute", "longlive": "absolute", "rolling-forcing": "packed",
                     "self-forcing-packed": "packed", "rolling-forcing-packed": "packed",
                     "longlive-packed": "packed", "tiny": "packed"}
    for policy in ("full", "rolling", "rolling_forcing", "deep_sink", "three_partition"):
        assert make_cache(Cache(policy=policy, positions="absolute"), 2, 64).positions == "absolute"
    with pytest.raises(ConfigError, match=r"cache\.positions must be packed .* or absolute .*, got 'relative'$"):
        load_preset("tiny", ["cache.positions=relative"])


def test_gpu_check_runs_every_real_preset_and_both_rules(tmp_path):
    """bench/gpu_check.py's default list is every preset that downloads a checkpoint (presets added later join
    it), absolute ones included; its smoke run has an absolute-position tiny preset that validates."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("gpu_check", root / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    real = gpu_check.real_presets()
    assert {"self-forcing", "rolling-forcing", "longlive", "longlive-packed"} <= set(real)
    assert real[:4] == list(gpu_check.FIRST)  # what the targets name is measured first: 15 do not fit one call
    assert not {"tiny", "toy"} & set(real)
    assert {load_preset(n).config.cache.positions for n in real} == {"absolute", "packed"}
    smoke = gpu_check.random_preset("tiny-absolute", tmp_path, smoke=True)
    assert gpu_check.describe(smoke)["positions"] == "absolute" and "tiny-absolute" in gpu_check.SMOKE
