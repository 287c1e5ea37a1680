"""Live runs of the toy preset on the CPU, without a browser: prompts read while the run goes are recorded in the
sidecar's timeline at the block they took effect at, and that sidecar replays the same video bit for bit; a live
run stopped midway resumes with its live changes (prompts, keep going)."""

import json

import numpy as np
import pytest
import torch
from test_cli import run_main
from test_resume import _capture_frames

from tokentrim_cli.live.session import LiveSession
from tokentrim_cli.output.video import read_video

BASE = ["generate", "--preset", "toy", "--seed", "3", "-q"]
ARGS = BASE + ["-p", "a red circle bouncing on a dark blue background"]
PROMPTS = "0.5s cut: a green square sliding on a white background\nkeep blend=2: a yellow ring growing on a black background\n"


def test_prompts_read_while_the_run_goes_are_in_the_sidecar_and_replay_the_same_video(tmp_path, capsys,
                                                                                       monkeypatch):
    frames = _capture_frames(monkeypatch)
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    out = tmp_path / "live.mp4"
    code, _, err = run_main(capsys, *ARGS, "--seconds", "1", "-o", str(out), "--prompts-from",
                            str(tmp_path / "prompts.txt"))
    assert code == 0, err
    side = json.loads(out.with_suffix(".json").read_text())
    timeline, switches = side["timeline"], side["switches"]
    assert [e["prompt"] for e in timeline] == ["a red circle bouncing on a dark blue background",
                                               "a yellow ring growing on a black background",
                                               "a green square sliding on a white background"]
    assert timeline[1]["switch"] == "keep" and timeline[1]["blend"] == 2 and timeline[2]["switch"] == "cut"
    assert [(s["entry"], s["mode"]) for s in switches] == [(1, "keep"), (2, "cut")]
    assert switches[1]["block"] == 3  # 0.5 s: the first block from pixel frame 8 (blocks of 3 frames at 16 fps)
    assert switches[0]["block"] == 1  # the next boundary when it was read: the run had not started
    assert [b["prompt"] for b in side["blocks"][:5]] == [0, 1, 1, 2, 2]
    assert "blend" in side["blocks"][1] and "refused" not in err

    replay = tmp_path / "replay.mp4"
    code, _, err = run_main(capsys, *BASE, "--timeline", str(out.with_suffix(".json")), "--seconds", "1", "-o",
                            str(replay))
    assert code == 0, err
    (_, live), (_, again) = frames
    assert len(live) == len(again) == 16 and all(np.array_equal(a, b) for a, b in zip(live, again))
    assert np.array_equal(read_video(out), read_video(replay))  # the files decode to the same frames too


def test_a_live_run_stopped_midway_resumes_with_its_live_prompts_and_length(tmp_path, capsys, monkeypatch):
    """Stop (as Ctrl-C) after a prompt and a keep going; --resume with the original options goes on with both,
    and the frames equal those of a replay of the final timeline and length."""
    frames = _capture_frames(monkeypatch)
    (tmp_path / "prompts.txt").write_text("0.5s cut: a green square sliding on a white background\n")
    original = LiveSession.block

    def block(self, record):  # in the writer's thread, as a page's requests would come from the server's
        if record["index"] == 0:
            self.control.extend(1.0)
        if record["index"] == 6:
            self.control.stop()
        original(self, record)

    monkeypatch.setattr(LiveSession, "block", block)
    out = tmp_path / "live.mp4"
    code, _, err = run_main(capsys, *ARGS, "--seconds", "1", "-o", str(out), "--prompts-from",
                            str(tmp_path / "prompts.txt"))
    assert code == 130 and "stopped from the live page" in err and "--resume" in err, err
    monkeypatch.setattr(LiveSession, "block", original)
    code, _, err = run_main(capsys, *ARGS, "--seconds", "1", "-o", str(out), "--resume")
    assert code == 0, err
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["plan"]["seconds"] == 2.0 and side["frames"] == 32 and len(side["resumed"]) == 1
    assert [s["block"] for s in side["switches"]] == [3]

    code, _, err = run_main(capsys, *BASE, "--timeline", str(out.with_suffix(".json")), "--seconds", "2", "-o",
                            str(tmp_path / "replay.mp4"))
    assert code == 0, err
    (_, stopped), (_, resumed), (_, replay) = frames
    assert len(stopped) + len(resumed) == len(replay) == 32
    assert all(np.array_equal(a, b) for a, b in zip(stopped + resumed, replay))


@pytest.mark.parametrize("name", ["tiny", "tiny-rolling"])
def test_changes_made_during_the_loop_give_the_blocks_of_the_final_timeline_planned_from_the_start(name):
    """Self Forcing and Rolling Forcing (whose window admits blocks ahead of the ones it finishes): prompts (a
    blend, a cut) and a keep going that arrive while the loop runs give, bit for bit, the blocks of a run given the
    final timeline and length before it started."""
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.engine.components import load_components
    from tokentrim_cli.live.control import LiveControl, Request
    from tokentrim_cli.live.schedule import LiveSchedule
    from tokentrim_cli.run.pipeline import generate_blocks
    from tokentrim_cli.run.plan import Plan
    from tokentrim_cli.run.prompt_schedule import timeline_switches
    from tokentrim_cli.run.timeline import Entry

    cfg = load_preset(name, ["pruning.lambda=0"]).config
    comps = load_components(cfg.model, cfg.runtime)
    control = LiveControl([Entry(0.0, "a red kite")], 3.0, lambda s: Plan.for_preset(s, cfg),
                          lambda found, plan: timeline_switches(found, cfg, plan))
    boundary = control.boundary

    def requests_arrive(block):  # as if a viewer sent them while block - 1 was being made
        boundary(block)
        if block == 1:
            control.submit(Request("a blue kite", "keep", 2))
            control.extend(2.0)
        if block == 4:
            control.submit(Request("a green kite over the sea", "cut"))

    control.boundary = requests_arrive
    live = [(b.index, b.latents.clone(), b.record["regenerations"])
            for b in generate_blocks(comps, cfg, LiveSchedule(control), 4, Plan.for_preset(3.0, cfg))]
    entries, switches = control.schedule()
    assert [(s.block, s.mode, s.blend) for s in switches] == [(2, "keep", 2), (5, "cut", 0)]
    final = Plan.for_preset(5.0, cfg)
    planned = list(generate_blocks(comps, cfg, entries, 4, final))
    assert [i for i, _, _ in live] == [b.index for b in planned] == list(range(final.blocks))
    assert final.blocks == 7 > Plan.for_preset(3.0, cfg).blocks
    for (i, latents, regen), b in zip(live, planned):
        assert torch.equal(latents, b.latents) and regen == b.record["regenerations"], i
