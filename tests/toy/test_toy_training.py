"""The toy model's rollout training samples its context as the toy preset samples a video."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tokentrim_cli.config.presets import load_preset
from tokentrim_cli.engine.guidance import Guided
from tokentrim_cli.engine.schedule import warp_steps
from tokentrim_cli.output.video import probe

from conftest import ROOT
from test_cli import tokentrim
import zygote

TRAINER = ROOT / "training" / "train_toy.py"  # run from a checkout, not shipped in the package
sys.path.insert(0, str(TRAINER.parent))
import train_toy as train  # noqa: E402

BLOCK = train.toy_preset()["block_frames"]


def _euler_without_cache(model, x0, k, sigmas, gen):
    """Reference: each block denoised by guided Euler steps over the whole block-causal window, no KV cache."""
    x0 = x0.clone()
    for m in range(1, k + 1):
        x = torch.randn(x0[:, :, :BLOCK].shape, generator=gen)
        for j, s in enumerate(sigmas):
            ts = torch.cat([torch.zeros(m * BLOCK), torch.full((BLOCK,), float(s) * 1000)])
            v = model(torch.cat([x0[:, :, : m * BLOCK], x], 2), ts, torch.arange((m + 1) * BLOCK), block_frames=BLOCK)
            nxt = float(sigmas[j + 1]) if j + 1 < len(sigmas) else 0.0
            x = x + (nxt - float(s)) * v[:, :, -BLOCK:]
        x0[:, :, m * BLOCK : (m + 1) * BLOCK] = x
    return x0


def test_self_generated_context_continues_the_real_first_block_as_the_sampler_does(causal_model):
    torch.manual_seed(3)
    x0 = torch.randn(2, 16, 4 * BLOCK, 4, 4)  # a batch of two windows: the cache must keep them apart
    cond, uncond = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    sigmas = warp_steps([1000, 750, 500, 250], 3.0)
    got = train.self_generated_context(causal_model, x0, 2, cond, uncond, sigmas, 3.0, 600,
                                       torch.Generator().manual_seed(7), block_frames=BLOCK, solver="euler")

    guided = Guided(causal_model, 3.0, 600)
    guided.set_prompt(cond, uncond)
    with torch.no_grad():
        want = _euler_without_cache(guided, x0, 2, sigmas, torch.Generator().manual_seed(7))

    assert torch.equal(got[:, :, :BLOCK], x0[:, :, :BLOCK]) and torch.equal(got[:, :, 3 * BLOCK :], x0[:, :, 3 * BLOCK :])
    assert (got - want).abs().max() < 1e-4
    assert (got[:, :, BLOCK : 3 * BLOCK] - x0[:, :, BLOCK : 3 * BLOCK]).abs().mean() > 0.1  # really replaced


TINY = ["--clips", "4", "--clip-frames", "12", "--steps", "2", "--batch", "2", "--threads", "1"]


def size(layers: int) -> list[str]:
    return ["--layers", str(layers), "--heads", "2", "--head-dim", "12", "--ffn", "32"]


def test_a_training_run_of_another_size_writes_a_preset_the_cli_generates_from(tmp_path):
    out = tmp_path / "run"
    train.main(["--out", str(out), *TINY, *size(1)])
    cfg = load_preset(str(out / "preset.yaml")).config.as_dict()
    assert cfg["model"]["transformer"]["config"]["num_layers"] == 1
    assert cfg["model"]["transformer"]["weights"] == str((out / "transformer.safetensors").resolve())
    assert cfg["sampler"] == load_preset("toy").config.sampler.as_dict()  # sampled as the toy preset samples

    video = tmp_path / "clip.mp4"
    r = tokentrim("generate", "--preset", str(out / "preset.yaml"), "--prompt",
                  "a red circle bouncing on a dark blue background", "--seconds", "1", "--output", str(video))
    assert r.returncode == 0, r.stderr
    assert probe(video)["frames"] == 16

    with pytest.raises(SystemExit, match="another transformer size than --layers 2"):
        train.main(["--out", str(tmp_path / "next"), "--init", str(out), *TINY, *size(2)])


def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    """--stop-at (like --max-minutes, Ctrl-C or SIGTERM) leaves a training state; --resume goes on from it to
    bit-identical weights, EMA and losses, and refuses arguments that would make it another run."""
    run = [*TINY, "--steps", "4", *size(1), "--ema", "0.9", "--caption-dropout", "0.5", "--rollout", "0.5"]
    train.main(["--out", str(tmp_path / "straight"), *run])
    halves = tmp_path / "halves"
    train.main(["--out", str(halves), *run, "--stop-at", "2"])
    assert (halves / train.STATE_FILE).exists()
    assert json.loads((halves / "training.json").read_text())["finished"] is False
    with pytest.raises(SystemExit, match=r"--lr \(0.001 before\) differ"):
        train.main(["--out", str(halves), *run, "--lr", "0.5", "--resume"])
    train.main(["--out", str(halves), *run, "--resume"])
    assert not (halves / train.STATE_FILE).exists()
    for name in ("transformer.safetensors", "text_encoder.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(halves / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    meta = [json.loads((d / "training.json").read_text()) for d in (tmp_path / "straight", halves)]
    assert meta[0]["loss_every_50"] == meta[1]["loss_every_50"] and meta[1]["steps_done"] == 4 and meta[1]["finished"]
    with pytest.raises(SystemExit, match="does not exist"):
        train.main(["--out", str(halves), *run, "--resume"])


def test_sigterm_ends_a_run_after_its_step_with_its_state_saved(tmp_path):
    """A time limit's or a scheduler's SIGTERM (the lent GPU's calls end that way) loses no training."""
    out = tmp_path / "run"
    proc = zygote.popen([sys.executable, str(TRAINER), "--out", str(out), *TINY,
                         "--steps", "100000", *size(1)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    for line in proc.stdout:  # the first logged step: training is under way
        if "step 0/100000" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert "SIGTERM received: stopping at step" in rest and "--resume" in rest
    meta = json.loads((out / "training.json").read_text())
    assert not meta["finished"] and meta["steps_done"] >= 1
    assert torch.load(out / train.STATE_FILE, weights_only=False)["step"] == meta["steps_done"]


def test_the_trainer_is_not_packaged():
    import re

    # packages are discovered under tokentrim_cli/ only (setup.py); test_packaging.py reads the built wheel
    include = re.search(r"find_packages\(include=\[(.*?)\]\)", (ROOT / "setup.py").read_text()).group(1)
    assert include == '"tokentrim_cli", "tokentrim_cli.*"'
    assert not (ROOT / "tokentrim_cli" / "toy" / "train.py").exists()
