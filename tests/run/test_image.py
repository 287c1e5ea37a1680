"""generate --image: the video starts from a picture (fit to the frame, VAE-encoded as latent frame 0, written
to the cache by one context pass, blocks from latent frame 1)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tokentrim_cli.errors import ConfigError
from tokentrim_cli.run.image import fit, load_image
from tokentrim_cli.run.pipeline import Lead, Plan
from tokentrim_cli.run.timeline import Entry

from test_cli import tokentrim


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


def _comps(name, *sets):
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.engine.components import load_components

    preset = load_preset(name, list(sets))
    return preset.config, load_components(preset.config.model, preset.config.runtime)


def _toy_picture(height=64, width=64):
    from tokentrim_cli.toy.world import render, sample_spec

    return render(sample_spec(3), 1, height, width)[0][0]


# --------------------------------------------------------------------------------------------- the picture
def test_fit_covers_the_frame_and_centre_crops():
    wide = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (100, 1, 3)))  # 200x100
    frame, resized, box = fit(wide, 64, 96)
    assert frame.size == (96, 64) and resized == (128, 64) and box == (16, 0, 112, 64)
    tall = Image.new("RGB", (30, 90))
    frame, resized, box = fit(tall, 64, 96)
    assert frame.size == (96, 64) and resized == (96, 288) and box == (0, 112, 96, 176)
    small = Image.new("RGB", (10, 10))
    assert fit(small, 64, 64)[0].size == (64, 64)


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_load_image_reads_common_formats(tmp_path, ext):
    path = tmp_path / f"a.{ext}"
    Image.fromarray(_toy_picture(40, 80)).save(path)
    im = load_image(path, 64, 96)
    assert im.pixels.shape == (64, 96, 3) and im.pixels.dtype == np.uint8 and im.size == (80, 40)
    d = im.as_dict()
    assert d["size"] == [80, 40] and len(d["sha256"]) == 64 and d["crop"]["box"] == [16, 0, 112, 64]
    t = im.tensor()
    assert t.shape == (1, 3, 1, 64, 96) and -1 <= t.min() and t.max() <= 1


def test_load_image_refuses_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_image(tmp_path / "nope.png", 64, 64)
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    with pytest.raises(ConfigError, match="not a readable image"):
        load_image(bad, 64, 64)
    with pytest.raises(ConfigError, match="not a file"):
        load_image(tmp_path, 64, 64)


# --------------------------------------------------------------------------------------------- the plan
def test_plan_counts_the_leading_image_frame():
    plain = Plan.for_seconds(2, 16, 3, 4)
    assert plain.as_dict() == {"seconds": 2.0, "fps": 16, "frames": 32, "latent_frames": 9, "blocks": 3,
                               "block_frames": 3, "temporal_ratio": 4}  # as before --image existed
    img = Plan.for_seconds(2, 16, 3, 4, image=True)
    assert img.start_frame == 1 and img.as_dict()["start_frame"] == 1 and "note" in img.as_dict()
    assert 1 + 4 * img.latent_frames >= img.frames > 1 + 4 * (img.latent_frames - img.block_frames)
    toy = Plan.for_seconds(1, 16, 3, 1, image=True)  # the patch codec: one pixel frame per latent frame
    assert (toy.latent_frames, toy.blocks) == (15, 5) and 1 + toy.latent_frames == toy.frames
    assert Plan.for_seconds(1 / 16, 16, 3, 4, image=True).blocks == 1  # always one block after the image


def test_timeline_switches_snap_after_the_image_frame():
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.run.pipeline import timeline_switches

    cfg = load_preset("tiny", []).config
    tl = [Entry(0.0, "a red circle"), Entry(1.0, "a blue square")]
    plain = timeline_switches(tl, cfg, Plan.for_preset(4, cfg))
    img = timeline_switches(tl, cfg, Plan.for_preset(4, cfg, image=True))
    # block b starts at pixel 1 + 4 * (3 b) with the image, at 1 + 4 * (3 b - 1) without (b > 0); 16 fps
    assert (plain[0].block, plain[0].snapped) == (2, 21 / 16)
    assert (img[0].block, img[0].snapped) == (2, 25 / 16)


# --------------------------------------------------------------------------------------------- the pipeline
def _spy(monkeypatch):
    """Record the cache's frames and the start frame each time the pipeline's sampler starts."""
    from tokentrim_cli.run import pipeline

    seen = []
    for name, real in list(pipeline.SAMPLERS.items()):
        def wrapped(model, cache, noise, steps, *args, _real=real):
            seen.append((list(cache.frames), steps.start_frame))
            yield from _real(model, cache, noise, steps, *args)
        monkeypatch.setitem(pipeline.SAMPLERS, name, wrapped)
    return seen


@pytest.mark.parametrize("preset, sets", [
    ("tiny", ["cache.sink_frames=3"]),
    ("tiny", ["cache.policy=three_partition", "cache.sink_frames=3", "cache.recent_frames=3",
              "cache.mid_capacity=2", "cache.mid_top_k=1"]),
    ("tiny-rolling", []),
])
def test_image_is_one_context_frame_before_the_first_block(monkeypatch, preset, sets):
    from tokentrim_cli.run.pipeline import generate_blocks, image_latents

    cfg, comps = _comps(preset, *sets)
    seen = _spy(monkeypatch)
    plan = Plan.for_preset(2, cfg, image=True)
    lead = image_latents(comps, torch.rand(1, 3, 1, cfg.video.height, cfg.video.width) * 2 - 1)
    assert lead.shape == (1, 16, 1, cfg.video.height // 8, cfg.video.width // 8)
    blocks = list(generate_blocks(comps, cfg, "a red circle", 0, plan, Lead.image(lead)))
    assert seen == [([0], 1)]  # exactly latent frame 0 in the cache; the sampler continues from frame 1
    assert [b.latent_frames for b in blocks] == [[1 + 3 * i + k for k in range(3)] for i in range(plan.blocks)]
    assert blocks[0].record["verdict"] == "first"  # TokenTrim (on in the tiny presets) has nothing to compare yet
    assert all(torch.isfinite(b.latents).all() for b in blocks)


def test_plain_run_is_unchanged(monkeypatch):
    """Without an image the pipeline is the samplers as they were called before --image: no context pass first,
    blocks from frame 0 (and, measured once against the commit before, bit-identical latents)."""
    from tokentrim_cli.run.pipeline import generate_blocks

    cfg, comps = _comps("tiny")
    seen = _spy(monkeypatch)
    plan = Plan.for_preset(2, cfg)
    blocks = list(generate_blocks(comps, cfg, "a red circle", 0, plan))
    assert seen == [([], 0)] and blocks[0].latent_frames == [0, 1, 2]
    monkeypatch.undo()
    again = list(generate_blocks(comps, cfg, "a red circle", 0, plan))
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(blocks, again))


def test_image_with_a_timeline_and_every_switch_mode():
    from tokentrim_cli.run.pipeline import generate_blocks, image_latents

    cfg, comps = _comps("tiny", "pruning.lambda=0", "cache.sink_frames=3")
    plan = Plan.for_preset(4, cfg, image=True)
    lead = image_latents(comps, torch.zeros(1, 3, 1, cfg.video.height, cfg.video.width))
    tl = [Entry(0.0, "a red circle"), Entry(1.0, "a blue square"), Entry(2.0, "a green star", "keep"),
          Entry(3.0, "a yellow moon", "cut")]
    blocks = list(generate_blocks(comps, cfg, tl, 0, plan, Lead.image(lead)))
    # 6 blocks; block b shows from pixel 1 + 12 b, i.e. 0.06, 0.81, 1.56, 2.31, 3.06, 3.81 s
    assert [b.record["prompt"] for b in blocks] == [0, 0, 1, 2, 3, 3]
    assert all(torch.isfinite(b.latents).all() for b in blocks)


def test_tiny_video_starts_with_one_image_frame():
    from tokentrim_cli.run.pipeline import generate_video

    cfg, comps = _comps("tiny")
    img = torch.rand(1, 3, 1, cfg.video.height, cfg.video.width) * 2 - 1
    frames, records = generate_video(comps, cfg, "a red circle", 0, 1, image=img)
    plan = Plan.for_preset(1, cfg, image=True)
    assert frames.shape == (plan.frames, cfg.video.height, cfg.video.width, 3) == (16, 64, 96, 3)
    assert len(records) == plan.blocks


def test_toy_first_frame_is_the_image_through_the_codec():
    """The toy preset's fitted patch codec: the first frame is the picture's round trip (measured ~36 dB)."""
    from tokentrim_cli.run.pipeline import generate_video

    cfg, comps = _comps("toy")
    pic = _toy_picture()
    x = torch.from_numpy(pic).float().div(127.5).sub(1).permute(2, 0, 1)[None, :, None]
    frames, _ = generate_video(comps, cfg, "a red circle bouncing on a plain blue background", 0, 0.25, image=x)
    psnr = _psnr(frames[0], pic)
    print(f"toy codec round trip of the start image: {psnr:.2f} dB")
    assert frames.shape[0] == 4 and psnr > 30


# --------------------------------------------------------------------------------------------- the command
def test_cli_image_writes_a_video_that_starts_with_it(tmp_path):
    from tokentrim_cli.output.video import read_video

    pic = _toy_picture(80, 120)  # fitted: 96x64 resized, centre-cropped to 64x64
    Image.fromarray(pic).save(tmp_path / "img.png")
    out = tmp_path / "v.mp4"
    r = tokentrim("generate", "--image", str(tmp_path / "img.png"), "--prompt", "a red circle", "--seconds", "0.25",
                  "--preset", "toy", "--seed", "0", "-o", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "starts from the image" in r.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["image"]["size"] == [120, 80] and side["image"]["crop"]["box"] == [16, 0, 80, 64]
    assert side["plan"]["start_frame"] == 1 and side["frames_written"] == 4
    first = read_video(out)[0]
    expected = load_image(tmp_path / "img.png", 64, 64).pixels
    psnr = _psnr(first, expected)
    print(f"first MP4 frame vs the fitted image: {psnr:.2f} dB")
    assert psnr > 25  # the codec round trip plus H.264 (crf 18, yuv420)


@pytest.mark.parametrize("make", ["missing", "garbage"])
def test_cli_bad_image_is_one_line_exit_2(tmp_path, make):
    path = tmp_path / "img.png"
    if make == "garbage":
        path.write_bytes(b"\x89PNG not really")
    r = tokentrim("generate", "--image", str(path), "--prompt", "a red circle", "--preset", "tiny",
                  "-o", str(tmp_path / "v.mp4"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--image" in r.stderr
    assert not list(tmp_path.glob("v.*"))


def test_recache_rewrites_the_image_frame_and_context_noise_works(monkeypatch):
    """A recache switch rebuilds the cache from the kept latents, the image's frame 0 among them; with
    context_noise > 0 the image's context pass draws its own noise (key IMAGE_BLOCK)."""
    from tokentrim_cli.run import pipeline
    from tokentrim_cli.run.pipeline import generate_blocks, image_latents

    cfg, comps = _comps("tiny", "pruning.lambda=0", "cache.sink_frames=3", "sampler.context_noise=50")
    after = []
    real = pipeline.switch
    monkeypatch.setattr(pipeline, "switch", lambda mode, model, cache, *a: (real(mode, model, cache, *a),
                                                                            after.append((mode, cache.frames)))[0])
    plan = Plan.for_preset(2, cfg, image=True)
    lead = image_latents(comps, torch.zeros(1, 3, 1, cfg.video.height, cfg.video.width))
    tl = [Entry(0.0, "a red circle"), Entry(1.0, "a blue square")]
    blocks = list(generate_blocks(comps, cfg, tl, 0, plan, Lead.image(lead)))
    assert after == [("recache", list(range(7)))]  # frame 0 (the image) and blocks 0-1 (frames 1-6), rewritten
    assert [b.record["prompt"] for b in blocks] == [0, 0, 1] and all(torch.isfinite(b.latents).all() for b in blocks)
