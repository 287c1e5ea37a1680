"""The shipped toy model: its weights load through the preset, and it follows the prompt (CPU, seconds)."""

import sys

import numpy as np
import pytest
import torch

from tokentrim_cli.config.presets import load_preset
from tokentrim_cli.engine.components import load_components
from tokentrim_cli.run.pipeline import generate_video
from tokentrim_cli.toy import world
from tokentrim_cli.toy.scoring import attribute_errors

from conftest import ROOT

sys.path.insert(0, str(ROOT / "training"))  # the trainer is not in the package
import train_toy  # noqa: E402


@pytest.fixture(scope="module")
def toy():
    preset = load_preset("toy", ["pruning.enabled=false"])
    return preset, load_components(preset.config.model, preset.config.runtime)


_VIDEOS: dict = {}  # (prompt, seconds, seed) -> frames: a video two tests read is generated once


def generate(toy, prompt, seconds=2.0, seed=0):
    preset, comps = toy
    key = (prompt, seconds, seed)
    if key not in _VIDEOS:
        _VIDEOS[key] = generate_video(comps, preset.config, prompt, seed, seconds)[0]
    return _VIDEOS[key]


def test_training_builds_and_samples_as_the_preset_and_weights_load(toy):
    preset, comps = toy
    cfg = preset.config.model.as_dict()
    recipe = train_toy.toy_preset()
    args = train_toy.parse_args([], recipe)  # a run with the default sizes trains the preset's architecture
    arch = train_toy.architecture(args, recipe["transformer"])
    assert {**arch, "patch_size": list(arch["patch_size"])} == cfg["transformer"]["config"]
    assert recipe["text_encoder"] == cfg["text_encoder"]["config"] and recipe["codec"] == cfg["vae"]["config"]
    assert recipe["max_text_length"] == cfg["max_text_length"]
    assert cfg["tokenizer"]["vocab"] == world.VOCAB  # the preset's tokenizer knows every caption word
    # rollout training samples its context as the preset samples videos
    sampler = preset.config.sampler.as_dict()
    assert train_toy.rollout_steps(args.rollout_steps, recipe["steps"]) == sampler["steps"]
    assert args.shift == sampler["shift"] and args.rollout_guidance == sampler["guidance_scale"]
    assert (recipe["block_frames"], recipe["solver"], recipe["guidance_min_timestep"]) == (
        sampler["block_frames"], sampler["solver"], sampler["guidance_min_timestep"])
    assert sum(p.numel() for p in comps.model.parameters()) > 1_000_000  # trained weights, not the tiny config
    # the shipped codec reconstructs the world it was fitted on
    px, _ = world.render(world.sample_spec(3), 8, 64, 64)
    x = torch.from_numpy(px).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    rec = comps.vae.decode(comps.vae.encode(x))
    assert 10 * np.log10(4 / float((rec - x).pow(2).mean())) > 30  # dB PSNR


def test_two_second_generation_follows_the_prompt(toy):
    blue = "a red circle bouncing on a dark blue background"
    yellow = "a red circle bouncing on a yellow background"
    vb, vy = generate(toy, blue), generate(toy, yellow)
    assert vb.shape == (32, 64, 64, 3) and vb.std() > 5 and vy.std() > 5  # not a constant picture
    err = {(v, c): float(attribute_errors(frames, c)["background_error"][:16].mean())
           for v, frames in (("blue", vb), ("yellow", vy)) for c in (blue, yellow)}
    # each video's first second is much closer to the background its prompt names than to the other one
    assert err["blue", blue] + 50 < err["blue", yellow]
    assert err["yellow", yellow] + 50 < err["yellow", blue]
    # stated bound: mean background error over the first second below 100 (RGB distance, 0-441)
    assert err["blue", blue] < 100 and err["yellow", yellow] < 100


def test_two_second_generation_draws_the_prompted_object_colour(toy):
    red = "a red circle bouncing on a dark blue background"
    green = "a green square sliding on a dark blue background"
    videos = {"red": generate(toy, red), "green": generate(toy, green)}
    stats = {(v, c): attribute_errors(frames, c) for v, frames in videos.items() for c in (red, green)}
    present = {k: float(a["object_present"][:, 0].mean()) for k, a in stats.items()}
    colour = {k: float(a["object_colour_error"][:, 0].mean()) for k, a in stats.items()}
    # stated bounds: the prompted object's colour is present in at least half of the frames (measured: red 0.97,
    # green 0.66; seeds 1 and 2: red 1.0, green 0.75-0.78), the other prompt's object colour in at most a tenth
    # (measured: 0), and the nearest object-like colour is within 60 RGB units of the prompt's (measured: 43, 52;
    # seeds 1-2: 36-38, 43-52)
    assert present["red", red] >= 0.5 and present["green", green] >= 0.5
    assert present["red", green] <= 0.1 and present["green", red] <= 0.1
    assert colour["red", red] < 60 and colour["green", green] < 60
