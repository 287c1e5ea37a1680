"""Speed records (``speed.py``): loop, decode and end-to-end rates kept apart, warm-up blocks left out and stated."""

import json
from types import SimpleNamespace

import pytest

from tokentrim_cli.run import speed
from tokentrim_cli.run.speed import SpeedMeter


class Clock:
    """A host clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(speed.time, "perf_counter", c)
    return c


def run(clock, loop_times, decode_time=0.5, frames_per_block=12, warmup=2):
    """Blocks made in ``loop_times`` seconds each, decoded in ``decode_time``, written one after the other."""
    meter = SpeedMeter(warmup=warmup)
    decoder = meter.decoder(SimpleNamespace(frames=lambda latents: clock.__setattr__("now", clock.now + decode_time)))

    def blocks():
        for i, t in enumerate(loop_times):
            clock.now += t
            yield SimpleNamespace(index=i, latents=SimpleNamespace(is_cuda=False))

    total = 0
    for block in meter.loop(blocks()):
        decoder.frames(block.latents)
        total += frames_per_block
        meter.written(block.index, total)
    return meter


def test_warm_up_blocks_are_left_out_and_stated(clock):
    meter = run(clock, [30.0, 5.0, 2.0, 2.0, 2.0, 2.0])  # a compile in the first block, a slow second one
    rec = meter.record()
    assert (rec.warmup_blocks, rec.warmup_seconds, rec.blocks, rec.frames) == (2, 35.0, 4, 48)
    assert rec.loop_fps == pytest.approx(48 / 8.0) and rec.decode_fps == pytest.approx(48 / 2.0)
    # end to end: generation and decoding one after the other here (no overlap): 4 x 2.5 s
    assert rec.end_to_end_fps == pytest.approx(48 / 10.0)
    assert meter.block_seconds(3) == {"loop_seconds": 2.0, "decode_seconds": 0.5}
    assert "loop 6.00 fps, decode 24.00 fps, end to end 4.80 fps" in rec.line() and "2 warm-up blocks" in rec.line()


def test_a_run_no_longer_than_its_warm_up_has_no_rates(clock):
    rec = run(clock, [3.0, 1.0]).record()
    assert rec.blocks == 0 and rec.loop_fps is rec.decode_fps is rec.end_to_end_fps is None
    assert "too short to measure" in rec.line()


def test_the_command_records_and_shows_the_three_rates(tmp_path):
    from test_cli import tokentrim

    out = tmp_path / "clip.mp4"
    r = tokentrim("generate", "-p", "a red circle", "--seconds", "3", "--seed", "2", "--output", str(out))
    assert r.returncode == 0, r.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    rec = side["speed"]
    assert rec["warmup_blocks"] == 2 and rec["blocks"] == len(side["blocks"]) - 2 and rec["timer"] == "host clock"
    assert rec["frames"] == side["frames_written"] - side["blocks"][1]["frames_written"]
    assert all(rec[k] > 0 for k in ("loop_fps", "decode_fps", "end_to_end_fps"))
    assert all({"loop_seconds", "decode_seconds"} <= set(b) for b in side["blocks"])
    assert "speed over blocks 3-" in r.stderr and "warm-up blocks left out" in r.stderr
