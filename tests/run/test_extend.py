"""generate --extend: a video is streamed through the VAE's causal encoder, the latent frames its cache policy
would hold are written as context, and generation continues from its end; the output is its frames, then the new
ones (continuation.py, source_video.py)."""

import json
import math

import numpy as np
import pytest
import torch

from tokentrim_cli.run.continuation import context_frames, latent_count, source_latents, extend_plan
from tokentrim_cli.engine.vae import StreamingEncoder
from tokentrim_cli.errors import ConfigError
from tokentrim_cli.run.pipeline import Lead, Plan
from tokentrim_cli.config.settings import Cache
from tokentrim_cli.run.source_video import load_source
from tokentrim_cli.run.timeline import Entry
from tokentrim_cli.output.video import Mp4Writer, probe, read_metadata, read_video

from test_cli import run_main


def _comps(name, *sets):
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.engine.components import load_components

    preset = load_preset(name, list(sets))
    return preset.config, load_components(preset.config.model, preset.config.runtime)


def _clip(path, frames, height=64, width=64, fps=16, seed=3):
    """A toy-world clip written the way the preset's writer writes (libx264 crf 18 veryfast yuv420p)."""
    from tokentrim_cli.toy.world import render, sample_spec

    pixels = render(sample_spec(seed), frames, height, width)[0]
    w = Mp4Writer(path, width, height, fps, 18, "veryfast")
    w.write(pixels)
    w.finish()
    w.publish("{}", path)
    w.discard()
    return read_video(path)  # the frames as decoded


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


# --------------------------------------------------------------------------------------------- the encoder
def test_streaming_encoder_equals_one_shot_encode(tiny_vae):
    """Uneven calls (2, 5, 1, 12, 5 pixel frames) give bit-identical latents to one vae.encode of all 25."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 25, 64, 96) * 2 - 1
    with torch.no_grad():
        z = tiny_vae.encode(x).latent_dist.mode()
    mean = torch.tensor(tiny_vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(tiny_vae.config.latents_std).view(1, -1, 1, 1, 1)
    enc = StreamingEncoder(tiny_vae)
    parts = [enc.latents(x[:, :, a:b]) for a, b in [(0, 2), (2, 7), (7, 8), (8, 20), (20, 25)]]
    assert [p.shape[2] for p in parts] == [1, 1, 0, 3, 2] and enc.pending == 0
    assert torch.equal(torch.cat(parts, 2), (z - mean) / std)
    # a decode in between (which clears the VAE's caches) does not disturb it: it keeps its own
    enc.reset()
    first = enc.latents(x[:, :, :5])
    tiny_vae.clear_cache()
    assert torch.equal(torch.cat([first, enc.latents(x[:, :, 5:])], 2), (z - mean) / std)
    enc.reset()
    assert enc.latents(x[:, :, :4]).shape[2] == 1 and enc.pending == 3  # 3 frames wait for a fourth


def test_latent_counts_and_the_frames_left_out():
    assert latent_count(32, 4) == (8, 3)  # frames 3..31 encoded: 1 + 4 * 7
    assert latent_count(33, 4) == (9, 0) and latent_count(1, 4) == (1, 0) and latent_count(32, 1) == (32, 0)


# --------------------------------------------------------------------------------------------- the context
def test_context_frames_per_policy():
    c = lambda **kw: Cache(**kw)  # noqa: E731
    assert context_frames(c(policy="rolling", window_frames=9), 3, 40, 1024, 6) == (tuple(range(31, 40)), 0)
    assert context_frames(c(policy="sink_window", window_frames=6, sink_frames=3), 3, 40, 1024, 6) == \
        ((0, 1, 2, *range(34, 40)), 3)
    assert context_frames(c(policy="rolling_forcing", sink_frames=3, span_frames=21), 3, 40, 1024, 6) == \
        ((0, 1, 2, *range(22, 40)), 3)
    tp = c(policy="three_partition", sink_frames=3, recent_frames=3, mid_capacity=2)
    assert context_frames(tp, 3, 40, 1024, 6) == ((0, 1, 2, *range(31, 40)), 3)
    assert context_frames(c(policy="deep_sink", sink_frames=2, recent_frames=4, budget_frames=5), 3, 40, 1024, 6) \
        == ((0, 1, *range(31, 40)), 2)
    assert context_frames(c(policy="full"), 3, 40, 1024, 6) == (tuple(range(40)), 0)
    assert context_frames(c(policy="full"), 3, 40, 30, 6) == (tuple(range(16, 40)), 0)  # RoPE room for the new part
    assert context_frames(c(policy="sink_window", window_frames=18, sink_frames=3), 3, 8, 1024, 6) == \
        (tuple(range(8)), 3)  # a short input: all of it, once


def test_lead_passes_are_blocks_at_their_own_frames():
    lead = Lead(torch.arange(12.0).view(1, 1, 12, 1, 1), (0, 1, 2, 31, 32, 33, 34, 35, 36, 37, 38, 39))
    passes = lead.passes(3)
    assert [p.latent_frames for p in passes] == [[0, 1, 2], [31, 32, 33], [34, 35, 36], [37, 38, 39]]
    assert passes[1].latents.flatten().tolist() == [3.0, 4.0, 5.0]
    assert [p.latent_frames for p in Lead(torch.zeros(1, 1, 4, 1, 1), (6, 7, 8, 9)).passes(3)] == [[6], [7, 8, 9]]


def test_plan_and_timeline_count_from_the_seam():
    plan = Plan.for_seconds(1.5, 16, 3, 4, extend=8)
    assert (plan.frames, plan.latent_frames, plan.blocks, plan.start_frame, plan.continued) == (24, 6, 2, 8, True)
    assert plan.as_dict()["continued"] and "note" in plan.as_dict()
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.run.pipeline import timeline_switches

    cfg = load_preset("tiny", []).config
    sw = timeline_switches([Entry(0.0, "a"), Entry(0.5, "b")], cfg, Plan.for_preset(1.5, cfg, extend=8))
    assert (sw[0].block, sw[0].snapped) == (1, 0.75)  # block 1 starts 12 pixel frames after the seam


def _spy(monkeypatch):
    """The cache as the sampler starts: (frames held, {kind: frames}, start_frame)."""
    from tokentrim_cli.run import pipeline

    seen = []
    for name, real in list(pipeline.SAMPLERS.items()):
        def wrapped(model, cache, noise, steps, *args, _real=real):
            kinds = {}
            for s in cache.segments:
                kinds.setdefault(s.kind, set()).update(s.distinct_frames)
            seen.append((list(cache.frames), {k: sorted(v) for k, v in kinds.items()}, steps.start_frame))
            yield from _real(model, cache, noise, steps, *args)
        monkeypatch.setitem(pipeline.SAMPLERS, name, wrapped)
    return seen


@pytest.mark.parametrize("preset, sets", [
    ("tiny", ["cache.policy=sink_window", "cache.sink_frames=3", "cache.window_frames=6"]),
    ("tiny-rolling", ["cache.span_frames=9"]),
    ("tiny", ["cache.policy=three_partition", "cache.sink_frames=3", "cache.recent_frames=3",
              "cache.mid_capacity=1", "cache.mid_top_k=1", "cache.compression=[1,1,1]"]),
])
def test_the_first_block_attends_to_the_encoded_context(tmp_path, monkeypatch, preset, sets):
    from tokentrim_cli.engine.vae import StreamingDecoder
    from tokentrim_cli.run.pipeline import generate_blocks

    cfg, comps = _comps(preset, *sets)
    frames = _clip(tmp_path / "in.mp4", 53, cfg.video.height, cfg.video.width)  # 53 = 1 + 4 * 13: 14 latent frames
    src = load_source(tmp_path / "in.mp4", cfg.video.height, cfg.video.width, cfg.video.fps)
    plan, cont = extend_plan(src, cfg, 1)
    assert cont.latent_frames == plan.start_frame == 14 and cont.skipped == 0
    decoder = StreamingDecoder(comps.vae)
    decoder.reset()
    lead = source_latents(comps, cont, decoder)  # warms the decoder with every input latent frame
    x = torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    whole = StreamingEncoder(comps.vae).latents(x)
    assert torch.equal(lead.latents, whole[:, :, list(cont.context)])  # the kept frames, as one encode gives them
    seen = _spy(monkeypatch)
    blocks = list(generate_blocks(comps, cfg, "a red circle", 0, plan, lead))
    (held, kinds, start), = seen
    assert start == 14 and blocks[0].latent_frames == [14, 15, 16]
    assert kinds["sink"] == [0, 1, 2] == list(cont.context[:3])  # the input's first latent frames
    assert held == list(cont.context)  # sink + tail, the gap between them closed by the layout
    tail = {"sink_window": 6, "rolling_forcing": 9 - 3, "three_partition": 3 + 3}[cfg.cache.policy]
    assert list(cont.context[3:]) == list(range(14 - tail, 14))
    assert all(torch.isfinite(b.latents).all() for b in blocks)
    # the seam in pixels: the warmed decoder continues exactly as one decode of input + new latents would
    new = decoder.frames(blocks[0].latents)
    one = StreamingDecoder(comps.vae)
    one.reset()
    assert one.frames(whole).shape[0] == 53
    assert new.shape[0] == 12 and np.array_equal(new, one.frames(blocks[0].latents))


# --------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def toy_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "in.mp4"
    return path, _clip(path, 24)


def test_cli_extend_copies_the_input_and_appends(toy_clip, tmp_path, capsys):
    src, frames = toy_clip
    out = tmp_path / "v.mp4"
    code, stdout, err = run_main(capsys, "generate", "--extend", str(src), "--prompt",
                                 "a green square sliding on a plain blue background", "--seconds", "0.5",
                                 "--preset", "toy", "--seed", "0", "-o", str(out))
    assert code == 0, err
    assert "stream-copied" in err and "new frames from frame 24" in err
    got = read_video(out)
    assert got.shape[0] == 24 + 8 and probe(out)["frames"] == 32
    assert np.array_equal(got[:24], frames)  # the input's frames, bit for bit (not re-encoded)
    side = json.loads(out.with_suffix(".json").read_text())
    ext = side["extend"]
    assert ext["path"] == str(src) and len(ext["sha256"]) == 64 and ext["frames"] == 24 and ext["fps"] == 16
    assert ext["size"] == [64, 64] and ext["latent_frames"] == 24 and ext["seam_frame"] == 24 and ext["copied"]
    assert ext["context_frames"] == list(range(15, 24))  # toy: rolling window of 9, the patch codec: 1 per frame
    assert side["frames"] == side["frames_written"] == 32 and side["plan"]["frames"] == 8
    assert side["plan"]["start_frame"] == 24 and side["status"] == "ok"
    assert json.loads(read_metadata(out)["comment"])["sidecar"] == "v.json"  # published like any run
    assert not list(tmp_path.glob(".*"))  # no temporary or concat-list files left


def test_cli_extend_fits_and_reencodes_another_size(tmp_path, capsys):
    frames = _clip(tmp_path / "wide.mp4", 10, 48, 96)
    out = tmp_path / "v.mp4"
    code, _, err = run_main(capsys, "generate", "--extend", str(tmp_path / "wide.mp4"), "--prompt", "a red circle",
                            "--seconds", "0.25", "--preset", "toy", "--seed", "0", "-o", str(out))
    assert code == 0, err
    assert "re-encoded" in err and "fitted from 96x48 to 64x64" in err
    side = json.loads(out.with_suffix(".json").read_text())
    assert not side["extend"]["copied"] and "size" in side["extend"]["reencoded"]
    assert side["extend"]["fitted"]["box"] == [32, 0, 96, 64]  # 96x48 -> 128x64, centre 64 columns
    got = read_video(out)
    assert got.shape == (14, 64, 64, 3)
    from PIL import Image

    from tokentrim_cli.run.image import fit

    expected = np.asarray(fit(Image.fromarray(frames[0]), 64, 64)[0])
    assert _psnr(got[0], expected) > 30  # re-encoded once more (crf 18)


def test_cli_extend_rolling_forcing_with_a_timeline(tmp_path, capsys):
    _clip(tmp_path / "in.mp4", 21, 64, 96)  # 1 + 4 * 5: 6 latent frames
    out = tmp_path / "v.mp4"
    code, _, err = run_main(capsys, "generate", "--extend", str(tmp_path / "in.mp4"), "--prompt", "a red circle",
                            "--prompt", "0.75s keep: a blue square", "--seconds", "1.5", "--preset", "tiny-rolling",
                            "--seed", "1", "-o", str(out))
    assert code == 0, err
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["frames_written"] == probe(out)["frames"] == 21 + 24
    assert side["extend"]["context_frames"] == list(range(6)) and side["extend"]["sink_frames"] == 3
    assert side["switches"][0]["block"] == 1 and [b["prompt"] for b in side["blocks"]] == [0, 1]


def test_cli_extend_three_partition(toy_clip, tmp_path, capsys):
    src, frames = toy_clip
    out = tmp_path / "v.mp4"
    code, _, err = run_main(capsys, "generate", "--extend", str(src), "--prompt", "a red circle", "--seconds", "0.5",
                            "--preset", "toy-packed", "--seed", "0", "-o", str(out))
    assert code == 0, err
    side = json.loads(out.with_suffix(".json").read_text())
    # sink 3 + recent 3 (one block) + 8 mid blocks of 3: 30 frames, more than the input has: all 24
    assert side["extend"]["context_frames"] == list(range(24)) and side["extend"]["sink_frames"] == 3
    assert np.array_equal(read_video(out)[:24], frames)


@pytest.mark.parametrize("make, words", [
    ("missing", "does not exist"), ("garbage", "not a readable video"), ("empty", "is empty"),
    ("fps", "is 12 fps but the preset makes 16 fps; pass --fps 12"), ("image", "exclude each other"),
    ("still", "in.png is a single frame (a still image?), not a video to continue; to start from a picture give it "
              "with --image instead"),
])
def test_cli_bad_extend_is_one_line_exit_2(tmp_path, capsys, make, words):
    path = tmp_path / "in.mp4"
    extra = []
    if make == "garbage":
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 20)
    elif make == "empty":
        path.write_bytes(b"")
    elif make == "fps":
        _clip(path, 5, fps=12)
    elif make == "image":
        _clip(path, 5)
        extra = ["--image", str(path)]
    elif make == "still":
        from PIL import Image

        path = tmp_path / "in.png"
        Image.new("RGB", (96, 64), (200, 10, 10)).save(path)
    code, _, err = run_main(capsys, "generate", "--extend", str(path), *extra, "--prompt", "a red circle",
                            "--preset", "tiny", "-o", str(tmp_path / "v.mp4"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert not list(tmp_path.glob("v.*"))


def test_load_source_refuses_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a file"):
        load_source(tmp_path, 64, 64, 16)
