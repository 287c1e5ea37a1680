"""Decoding and encoding on a worker thread (``output/writer.py``): the same video as the serial path, errors
reported with the partial video kept; ``runtime.compile``; and the unattended GPU check script on the CPU."""

import errno
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_cli import run_main
import zygote
from tokentrim_cli.output.video import probe, read_video

ROOT = Path(__file__).resolve().parents[2]


def _generate(capsys, out, *sets):
    code, _, err = run_main(capsys, "generate", "--prompt", "a red circle", "--seconds", "3", "--seed", "4",
                            "--output", str(out), "--set", "pruning.lambda=0", *[a for s in sets for a in ("--set", s)])
    return code, err


def test_pipelined_writer_gives_the_serial_video(tmp_path, capsys):
    """Same frames in the MP4 (decoded back, byte for byte), same sidecar records, in the same order."""
    serial, pipelined = tmp_path / "serial.mp4", tmp_path / "pipelined.mp4"
    assert _generate(capsys, serial, "runtime.overlap_decode=false")[0] == 0
    assert _generate(capsys, pipelined)[0] == 0
    a, b = read_video(serial), read_video(pipelined)
    assert a.shape == b.shape and a.shape[0] == 48 and np.array_equal(a, b)
    ra, rb = (json.loads(p.with_suffix(".json").read_text())["blocks"] for p in (serial, pipelined))
    strip = lambda recs: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in recs]  # noqa: E731
    assert strip(ra) == strip(rb) and sum(r["regenerations"] for r in ra) > 0


@pytest.mark.parametrize("overlap", [True, False])
def test_a_write_error_fails_the_run_and_keeps_what_was_written(tmp_path, capsys, monkeypatch, overlap):
    """The encoder failing on the third block (a full disk) ends the run with exit 1 and a last line; the blocks
    already in the file stay playable and the sidecar says what happened."""
    import tokentrim_cli.run.video_run as job
    from tokentrim_cli.output.video import Mp4Writer

    class FullDisk(Mp4Writer):
        def write(self, frames):
            if self.frames >= 21:
                raise OSError(errno.ENOSPC, "No space left on device")
            super().write(frames)

    monkeypatch.setattr(job, "Mp4Writer", FullDisk)
    out = tmp_path / "full.mp4"
    code, err = _generate(capsys, out, f"runtime.overlap_decode={str(overlap).lower()}")
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith(f"tokentrim: failed: no space left on device writing {out} (") and \
        last.endswith(" free); free space or choose another --output"), last
    data = json.loads((tmp_path / "full.partial.json").read_text())
    assert data["status"] == "failed" and data["error"] == last[len("tokentrim: failed: "):]
    assert data["frames_written"] == 21 == probe(tmp_path / "full.partial.mp4")["frames"]
    assert [b["frames_written"] for b in data["blocks"]] == [9, 21]


def test_compiled_blocks_give_the_same_latents(causal_model):
    """runtime.compile compiles each transformer block (dynamic shapes; the cache's bookkeeping runs between
    the compiled parts). Checked with the eager backend, which traces the same graphs without a C compiler."""
    from conftest import tiny_transformer
    from tokentrim_cli.engine.cache import RollingCache
    from tokentrim_cli.engine.components import compile_blocks
    from tokentrim_cli.engine.model import CausalWan
    from tokentrim_cli.engine.noise import NoiseSource
    from tokentrim_cli.engine.samplers import BlockSteps, self_forcing
    from tokentrim_cli.engine.schedule import warp_steps

    def run(model):  # one layer (each block compiles alike); 3 blocks: context grows, then the window slides
        torch.manual_seed(1)
        model.set_prompt(torch.randn(1, 16, 32))
        cache = RollingCache(1, window_frames=6, rope_len=64)
        blocks = self_forcing(model, cache, NoiseSource(0, (1, 16, 3, 8, 8)), BlockSteps(3, warp_steps([1000, 500])))
        return torch.cat([b.latents for b in blocks], 2)

    torch._dynamo.reset()
    compiled = compile_blocks(CausalWan(tiny_transformer(num_layers=1)), backend="eager")
    assert (run(compiled) - run(CausalWan(tiny_transformer(num_layers=1)))).abs().max().item() <= 1e-5


def test_gpu_check_runs_unattended_on_the_cpu(tmp_path, monkeypatch, capsys):
    """bench/gpu_check.py --smoke: the script someone runs once on a lent GPU works end to end and writes every
    cell (here with the tiny preset on the CPU). Its orchestration runs in this process; each step's process (the
    loop's worker, the command) is a real one, forked from the tests' zygote."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_check
    monkeypatch.setattr(gpu_check.subprocess, "run", zygote.run)
    out = tmp_path / "gpu_check.json"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--smoke", "--presets", "tiny-rolling", "--seconds", "1",
                                      "--loop-seconds", "2", "--out", str(out)])
    gpu_check.main()
    cell = json.loads(out.read_text())["presets"]["tiny-rolling"]
    assert cell["command"]["mp4_ok"] and cell["command"]["status"] == "ok", cell
    assert cell["loop"]["median_block_s"] > 0 and cell["loop"]["decode_block_s_float32"] > 0, cell
    assert cell["command_cpu_encode"]["mp4_ok"] and "predicted_peak_bytes" in cell["planner_cpu_encode"], cell
    printed = capsys.readouterr().out
    assert "tiny-rolling" in printed and "loop s/blk" in printed

    # a budget spent before the command step: a second call with --resume keeps the loop, runs only the command
    data = json.loads(out.read_text())
    data["presets"]["tiny-rolling"]["command"] = {"error": "skipped: the run's time budget is spent"}
    out.write_text(json.dumps(data))
    steps = []
    monkeypatch.setattr(gpu_check.subprocess, "run", lambda cmd, **kw: steps.append(cmd) or zygote.run(cmd, **kw))
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--resume"])
    gpu_check.main()
    again = json.loads(out.read_text())["presets"]["tiny-rolling"]
    assert again["loop"] == cell["loop"] and again["command"]["status"] == "ok"
    python = [cmd for cmd in steps if cmd[0] == sys.executable]  # (subprocess.run is ffmpeg's too: one module)
    assert len(python) == 1 and "generate" in python[0] and "kept from" in capsys.readouterr().out
