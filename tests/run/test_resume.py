"""Exact resume: a run stopped at any block (an error, Ctrl-C / SIGTERM) and resumed from its NAME.state/ gives
the same latents and frames, bit for bit, as the run that was never stopped."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from tokentrim_cli.config.presets import load_preset
from tokentrim_cli.engine.components import load_components
from tokentrim_cli.engine.model import CausalWan
from tokentrim_cli.run.pipeline import Plan, generate_blocks, resume_blocks
from tokentrim_cli.run.state import History, RunState
from tokentrim_cli.run.resume import StateWriter, load_state, state_dir
from tokentrim_cli.run.timeline import parse_prompts
from tokentrim_cli.output.video import Mp4Writer, probe, read_video

from test_cli import ENV, run_main, tokentrim
import zygote

TP = ["cache.policy=three_partition", "cache.sink_frames=3", "cache.recent_frames=3", "cache.mid_capacity=4",
      "cache.mid_top_k=1"]  # mid blocks exceed top-K from the 4th block: the selection is exercised
FORCED = ["pruning.lambda=0"]  # TokenTrim prunes and regenerates on every block after warm-up
TIMELINE = ["a red kite", "2s recache blend=2: a blue ball", "4s cut: a green square"]


def _comps(name, sets):
    cfg = load_preset(name, sets).config
    return cfg, load_components(cfg.model, cfg.runtime)


# ------------------------------------------------------------------------------------------ the loop itself
@pytest.mark.parametrize("name, sets, timeline", [
    ("tiny", FORCED, None),
    ("tiny-rolling", FORCED, None),
    ("tiny", FORCED + TP, None),
    ("tiny-rolling", FORCED + TP, None),
    ("tiny-rolling", FORCED + ["pruning.measure_at=first_step"], None),
    ("tiny", FORCED + ["cache.policy=deep_sink", "cache.sink_frames=3", "cache.recent_frames=3",
                       "cache.budget_frames=2"], None),
    ("tiny", FORCED + ["sampler.context_noise=100", "sampler.solver=euler"], TIMELINE),
    ("tiny-rolling", FORCED + TP, TIMELINE),
    ("tiny", FORCED + ["cache.sink_frames=3", "cache.window_frames=6", "cache.positions=absolute",
                       "model.transformer.config.rope_max_seq_len=20"], None),  # absolute until block 6, then packed
], ids=["self-forcing", "rolling-forcing", "self-forcing-three-partition", "rolling-forcing-three-partition",
        "rolling-first-step", "deep-sink", "timeline-context-noise-euler", "rolling-three-partition-timeline",
        "longlive-absolute-past-the-table"])
def test_resumed_blocks_equal_the_uninterrupted_run_bit_for_bit(tmp_path, name, sets, timeline):
    cfg, comps = _comps(name, sets)
    plan = Plan.for_preset(6.0, cfg)
    entries = parse_prompts(timeline) if timeline else None
    full = list(generate_blocks(comps, cfg, entries or "a red kite", 5, plan, resumable=True))
    assert len(full) == plan.blocks == 9
    if "lambda=0" in " ".join(sets) and not timeline:
        assert sum(b.record["regenerations"] for b in full) > 0  # the forced drift did regenerate
    for k in (1, 4, 7):  # after the first block, mid-run (a switch pending), near the end
        writer = StateWriter(tmp_path / f"s{k}", "fp")
        for b in full[: k + 1]:  # saved block by block, as a run does: the journal goes to disk in pieces
            writer.save(RunState(b.state, {"first": False, "feat_map": None}, 0, History()))
        state = load_state(tmp_path / f"s{k}", "fp", tmp_path / "x.mp4")
        rest = list(resume_blocks(comps, cfg, entries or "a red kite", 5, plan, state.generation))
        assert [b.index for b in rest] == list(range(k + 1, plan.blocks))
        for a, b in zip(full[k + 1:], rest):
            assert torch.equal(a.latents, b.latents), (k, a.index)
            assert a.record["regenerations"] == b.record["regenerations"]


def test_the_replayed_cache_equals_the_one_it_replaces():
    """The keys and values themselves, not only what comes out of them."""
    from tokentrim_cli.engine.journal import replay
    from tokentrim_cli.engine.policies import make_cache
    from tokentrim_cli.run.pipeline import guided_model

    cfg, comps = _comps("tiny", FORCED + TP)
    plan = Plan.for_preset(4.0, cfg)
    blocks = list(generate_blocks(comps, cfg, "a red kite", 5, plan, resumable=True))
    model = guided_model(comps, cfg.sampler)
    original = make_cache(cfg.cache, model.num_layers, model.rope_len)
    replay(blocks[-1].state.journal, model, original)
    again = make_cache(cfg.cache, model.num_layers, model.rope_len)
    replay(blocks[-1].state.journal, model, again)
    assert [s.kind for s in original.segments] == [s.kind for s in again.segments]
    assert "mid" in {s.kind for s in again.segments} and "sink" in {s.kind for s in again.segments}
    for a, b in zip(original.segments, again.segments):
        assert torch.equal(a.t, b.t) and torch.equal(a.hw, b.hw)
        assert all(torch.equal(x, y) for x, y in zip(a.unrotated_keys() + a.values, b.unrotated_keys() + b.values))


# ------------------------------------------------------------------------------------------ the command
def _capture_frames(monkeypatch):
    """Every frame any MP4 writer is given, per writer, in order (the frames before encoding)."""
    runs = []
    original = Mp4Writer.write

    def write(self, frames):
        if not runs or runs[-1][0] is not self:
            runs.append((self, []))
        runs[-1][1].extend(np.array(f) for f in frames)
        return original(self, frames)

    monkeypatch.setattr(Mp4Writer, "write", write)
    return runs


def _stop_at_forward(monkeypatch, n, how):
    """Make the n-th transformer forward raise (``error``) or deliver SIGTERM to this process (``sigterm``)."""
    original = CausalWan.forward
    calls = [0]

    def forward(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            if how == "sigterm":
                signal.raise_signal(signal.SIGTERM)
            else:
                raise RuntimeError("injected failure")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CausalWan, "forward", forward)
    return lambda: monkeypatch.setattr(CausalWan, "forward", original)


@pytest.mark.parametrize("preset, sets, how, code, n", [
    ("tiny", FORCED, "error", 1, 23),  # Self Forcing: 5 forwards a block (4 steps, 1 write) and regenerations
    ("tiny-rolling", FORCED + TP, "sigterm", 130, 12),  # Rolling Forcing: 2 forwards a block (window, write)
    ("tiny", FORCED + TP, "sigterm", 130, 23),
    ("tiny-rolling", FORCED, "error", 1, 12),
])
def test_generate_resume_continues_exactly(tmp_path, monkeypatch, capsys, preset, sets, how, code, n):
    args = ["generate", "-p", "a red kite", "--seconds", "4", "--seed", "7", "--preset", preset, "-q",
            *[x for s in sets for x in ("--set", s)]]
    frames = _capture_frames(monkeypatch)
    twin = tmp_path / "twin.mp4"
    assert run_main(capsys, *args, "-o", str(twin))[0] == 0
    out = tmp_path / "clip.mp4"
    restore = _stop_at_forward(monkeypatch, n, how)  # in the middle of a block, a few blocks in
    rc, _, err = run_main(capsys, *args, "-o", str(out), "--set", "runtime.state_every=0")
    restore()
    assert rc == code, err
    partial = out.with_name("clip.partial.mp4")
    state = json.loads((state_dir(out) / "state.json").read_text())
    assert state["frames_written"] == probe(partial)["frames"] > 0
    assert "--resume" in err  # says how to go on
    prefix = read_video(partial)
    rc, _, err = run_main(capsys, *args, "-o", str(out), "--resume")
    assert rc == 0, err
    assert not state_dir(out).exists() and not partial.exists()
    (_, before), (_, interrupted), (_, resumed) = frames
    assert len(interrupted) == state["frames_written"]
    assert len(interrupted) + len(resumed) == len(before)
    assert all(np.array_equal(a, b) for a, b in zip(before, interrupted + resumed))  # the frames before encoding
    joined = read_video(out)
    assert len(joined) == probe(twin)["frames"] == len(before)
    assert np.array_equal(joined[: len(prefix)], prefix)  # the partial video is copied, not re-encoded
    side, twin_side = json.loads(out.with_suffix(".json").read_text()), json.loads(twin.with_suffix(".json").read_text())
    assert side["status"] == "ok" and side["resumed"] == [{"after_block": state["after_block"],
                                                           "frames": state["frames_written"]}]
    assert [b["index"] for b in side["blocks"]] == list(range(len(twin_side["blocks"])))
    assert [b["severity"] for b in side["blocks"]] == [b["severity"] for b in twin_side["blocks"]]


def test_a_state_from_other_settings_or_nothing_to_resume_is_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "clip.mp4"

    def argv(seed="7", seconds="3", *more):
        return ["generate", "-p", "a red kite", "--seconds", seconds, "--seed", seed, "-q", "-o", str(out), *more]

    rc, _, err = run_main(capsys, *argv(), "--resume")
    assert rc == 2 and "nothing to resume" in err and "without --resume" in err and len(err.strip().splitlines()) == 1
    restore = _stop_at_forward(monkeypatch, 12, "error")
    assert run_main(capsys, *argv())[0] == 1
    restore()
    for other in (argv("8"), argv("7", "4"), argv("7", "3", "--set", "pruning.lambda=3")):
        rc, _, err = run_main(capsys, *other, "--resume")
        assert rc == 2 and "other settings" in err and len(err.strip().splitlines()) == 1, (other, err)
    rc, _, err = run_main(capsys, *[a for a in argv() if a not in ("--seed", "7")], "--resume")
    assert rc == 2 and "--seed" in err
    path = state_dir(out) / "state.pt"  # a state another tokentrim version saved: refused, saying which
    saved = torch.load(path, weights_only=False)
    torch.save({**saved, "version": "0.1.0"}, path)
    rc, _, err = run_main(capsys, *argv(), "--resume")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "saved by tokentrim 0.1.0" in err and "this is 0.2.0" in err and "without --resume" in err
    torch.save(saved, path)
    out.with_name("clip.partial.mp4").unlink()
    rc, _, err = run_main(capsys, *argv(), "--resume")
    assert rc == 2 and "clip.partial.mp4 is missing" in err
    assert state_dir(out).is_dir()  # refusing loses nothing
    assert run_main(capsys, *argv(), "--overwrite")[0] == 0
    rc, _, err = run_main(capsys, *argv(), "--resume")
    assert rc == 2 and "nothing to resume" in err and "is finished" in err


def _args(out):
    return ["generate", "-p", "a red circle bouncing", "--seconds", "2", "--seed", "2", "--preset", "toy",
            "-o", str(out), "--set", "runtime.state_every=2"]


def _signal_after(out, blocks: int, sig) -> int:
    """Run the command in its own process, send ``sig`` once it has reported ``blocks`` blocks; its exit code."""
    proc = zygote.popen([sys.executable, "-m", "tokentrim_cli", *_args(out), "--log-format", "jsonl"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    seen = 0
    for line in proc.stdout:
        if json.loads(line).get("event") == "block":
            seen += 1
            if seen == blocks:
                proc.send_signal(sig)
                if sig == signal.SIGKILL:
                    break
    return proc.wait(timeout=120)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """The uninterrupted run of ``_args`` (made once, in this process, for the tests that stop it)."""
    video = tmp_path_factory.mktemp("twin") / "twin.mp4"
    done = tokentrim(*_args(video)[:-2], "-q")
    assert done.returncode == 0, done.stderr
    return video


def _same_as_twin(out, twin):
    side = json.loads(out.with_suffix(".json").read_text())
    twin_side = json.loads(twin.with_suffix(".json").read_text())
    assert probe(out)["frames"] == probe(twin)["frames"] == 32
    assert [b["severity"] for b in side["blocks"]] == [b["severity"] for b in twin_side["blocks"]]
    assert not state_dir(out).exists()
    return side


def test_sigterm_to_the_command_then_resume(tmp_path, twin):
    """The real thing: a separate process, stopped by SIGTERM after its 3rd block, then resumed (here in the test's
    process: what is tested is the state the stopped process left)."""
    out = tmp_path / "clip.mp4"
    assert _signal_after(out, 3, signal.SIGTERM) == 130
    state = json.loads((state_dir(out) / "state.json").read_text())
    assert state["after_block"] >= 2 and state["frames_written"] == probe(out.with_name("clip.partial.mp4"))["frames"]
    done = tokentrim(*_args(out), "--resume", "-q")
    assert done.returncode == 0, done.stderr
    _same_as_twin(out, twin)


def test_sigkill_then_resume_from_the_last_saved_state(tmp_path, twin):
    """No chance to save at the end: the state of every 2nd block and the killed run's streaming file (kept as
    NAME.partial.mp4) are enough; the frames past that state are generated again, the ones before re-encoded."""
    out = tmp_path / "clip.mp4"
    _signal_after(out, 7, signal.SIGKILL)
    state = json.loads((state_dir(out) / "state.json").read_text())
    assert state["after_block"] in (3, 5, 7)
    done = tokentrim(*_args(out), "--resume")
    assert done.returncode == 0, done.stderr
    assert "cleaned up after a killed run" in done.stderr and "as clip.partial.mp4" in done.stderr
    assert "re-encoded once" in done.stderr
    side = _same_as_twin(out, twin)
    assert side["resumed"] == [{"after_block": state["after_block"], "frames": state["frames_written"],
                                "reencoded": True}]


def test_starting_again_over_a_resumable_run_needs_overwrite(tmp_path, monkeypatch, capsys):
    out = tmp_path / "clip.mp4"
    args = ["generate", "-p", "a red kite", "--seconds", "3", "--seed", "7", "-q", "-o", str(out)]
    restore = _stop_at_forward(monkeypatch, 12, "error")
    assert run_main(capsys, *args)[0] == 1
    restore()
    rc, _, err = run_main(capsys, *args)
    assert rc == 2 and "--resume" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert state_dir(out).is_dir()
    rc, _, err = run_main(capsys, *[a for a in args if a != "-q"], "--seed", "8")  # another request replaces it
    assert rc == 0 and "removed clip.state" in err and not state_dir(out).exists()


def test_batch_resume_goes_on_with_the_interrupted_item(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red kite\na blue ball\na green square\n")
    out = tmp_path / "out"
    args = ["batch", str(prompts), "--out-dir", str(out), "--seconds", "3", "-q"]
    restore = _stop_at_forward(monkeypatch, 40, "sigterm")  # in item 1 (about 25 forwards an item)
    rc, _, err = run_main(capsys, *args)
    restore()
    assert rc == 130, err
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["index"], r["status"]) for r in rows] == [(0, "ok"), (1, "interrupted")]
    stopped = out / rows[1]["output"].replace(".partial.mp4", ".mp4")
    after = json.loads((state_dir(stopped) / "state.json").read_text())["after_block"]
    rc, _, err = run_main(capsys, *args, "--resume")
    assert rc == 0, err
    latest = {r["index"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert [latest[i]["status"] for i in range(3)] == ["ok", "ok", "ok"]
    side = json.loads(stopped.with_suffix(".json").read_text())
    assert side["resumed"][0]["after_block"] == after and len(side["blocks"]) == side["plan"]["blocks"]
    assert probe(stopped)["frames"] == side["frames"] and not state_dir(stopped).exists()


def test_batch_resume_starts_again_an_item_another_version_interrupted(tmp_path, monkeypatch, capsys):
    """An interrupted item whose state another tokentrim version saved is not resumed: it runs again from the
    start (its state removed, with a line saying so); finished items are still skipped."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red kite\na blue ball\n")
    out = tmp_path / "out"
    args = ["batch", str(prompts), "--out-dir", str(out), "--seconds", "2"]
    restore = _stop_at_forward(monkeypatch, 30, "sigterm")  # in item 1
    assert run_main(capsys, *args, "-q")[0] == 130
    restore()
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    stopped = out / rows[1]["output"].replace(".partial.mp4", ".mp4")
    summary = state_dir(stopped) / "state.json"
    from tokentrim_cli.run import resume

    monkeypatch.setattr(resume, "__version__", "0.1.0")  # what 0.1.0 wrote: its version, and so its fingerprint
    old = {"version": "0.1.0", "fingerprint": resume.fingerprint(rows[1]["settings_hash"])}
    monkeypatch.undo()
    summary.write_text(json.dumps({**json.loads(summary.read_text()), **old}))
    rc, _, err = run_main(capsys, *args, "--resume")
    assert rc == 0, err
    assert "skipped, already done" in err and "removed " + state_dir(stopped).name in err
    side = json.loads(stopped.with_suffix(".json").read_text())
    assert side["status"] == "ok" and "resumed" not in side and not state_dir(stopped).exists()


def _twin_stop_resume(capsys, monkeypatch, tmp_path, args, n, how, code, between=lambda out: None):
    """The twin, the same run stopped at forward ``n``, its resume; checks the frames before encoding add up to the
    twin's and returns (the resumed video, the twin, the twin's frames)."""
    frames = _capture_frames(monkeypatch)
    twin, out = tmp_path / "twin.mp4", tmp_path / "clip.mp4"
    assert run_main(capsys, *args, "-o", str(twin))[0] == 0
    restore = _stop_at_forward(monkeypatch, n, how)
    rc, _, err = run_main(capsys, *args, "-o", str(out))
    restore()
    assert rc == code, err
    between(out)
    rc, _, err = run_main(capsys, *args, "-o", str(out), "--resume")
    assert rc == 0, err
    before, interrupted, resumed = [f for w, f in frames if w.path.name != "probe.mp4"]  # not --extend's probe
    assert len(interrupted) > 0 and len(interrupted) + len(resumed) == len(before)
    assert all(np.array_equal(a, b) for a, b in zip(before, interrupted + resumed))
    return out, twin, before


def test_an_interrupted_extension_resumes_exactly(tmp_path, monkeypatch, capsys):
    """--extend with Rolling Forcing on the tiny Wan VAE (the decoder warmed by the input): the resumed run skips
    the input (its context is in the journal, the warm decoder in the state) and gives the twin's frames."""
    from test_extend import _clip

    _clip(tmp_path / "in.mp4", 21, 64, 96)
    args = ["generate", "--extend", str(tmp_path / "in.mp4"), "-p", "a red circle", "--seconds", "3", "--seed", "4",
            "--preset", "tiny-rolling", "-q", *[x for s in FORCED for x in ("--set", s)]]
    out, twin, frames = _twin_stop_resume(capsys, monkeypatch, tmp_path, args, 12, "error", 1)
    assert len(frames) == 48  # the new ones: the input is stream-copied
    assert probe(out)["frames"] == probe(twin)["frames"] == 21 + 48
    assert np.array_equal(read_video(out)[:21], read_video(tmp_path / "in.mp4"))


def test_an_interrupted_run_from_an_image_resumes_exactly(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from test_image import _toy_picture

    Image.fromarray(_toy_picture(64, 96)).save(tmp_path / "first.png")
    other = tmp_path / "other.png"
    Image.fromarray(_toy_picture(64, 96)[::-1].copy()).save(other)
    args = ["generate", "--image", str(tmp_path / "first.png"), "-p", "a red circle", "--seconds", "3", "--seed", "4",
            "-q", *[x for s in FORCED + ["sampler.context_noise=100"] for x in ("--set", s)]]

    def another_picture_is_refused(out):
        changed = [str(other) if a.endswith("first.png") else a for a in args]
        rc, _, err = run_main(capsys, *changed, "-o", str(out), "--resume")
        assert rc == 2 and "other settings" in err  # another picture is another request

    _, _, frames = _twin_stop_resume(capsys, monkeypatch, tmp_path, args, 14, "sigterm", 130,
                                     another_picture_is_refused)
    assert len(frames) == 48


def test_a_state_from_another_device_is_resumed_with_a_warning(tmp_path, monkeypatch, capsys):
    out = tmp_path / "clip.mp4"
    args = ["generate", "-p", "a red kite", "--seconds", "3", "--seed", "7", "-o", str(out)]
    restore = _stop_at_forward(monkeypatch, 12, "error")
    assert run_main(capsys, *args, "-q")[0] == 1
    restore()
    path = state_dir(out) / "state.pt"
    state = torch.load(path, weights_only=False)
    assert state["device"] == f"cpu, torch {torch.__version__}"
    torch.save({**state, "device": "NVIDIA H200, torch 2.13.0"}, path)
    rc, _, err = run_main(capsys, *args, "--resume")
    assert rc == 0 and "was saved on NVIDIA H200" in err and "may differ slightly" in err


def test_a_foreign_partial_video_is_refused(tmp_path, monkeypatch, capsys):
    """Another seed's video put in place of NAME.partial.mp4 is not spliced in: its metadata names another run
    (issue 33, item 6); the run's own partial, put back, resumes."""
    out, other = tmp_path / "clip.mp4", tmp_path / "other.mp4"

    def argv(seed):
        return ["generate", "-p", "a red kite", "--seconds", "3", "--seed", seed, "-q", "--set", "runtime.state_every=0"]

    for target, seed in ((out, "7"), (other, "8")):
        restore = _stop_at_forward(monkeypatch, 12, "error")
        assert run_main(capsys, *argv(seed), "-o", str(target))[0] == 1
        restore()
    partial, foreign = out.with_name("clip.partial.mp4"), other.with_name("other.partial.mp4")
    assert probe(partial)["frames"] == probe(foreign)["frames"] > 0
    own = partial.read_bytes()
    partial.write_bytes(foreign.read_bytes())
    rc, _, err = run_main(capsys, *argv("7"), "-o", str(out), "--resume")
    assert rc == 2 and "was not written by the run" in err and len(err.strip().splitlines()) == 1
    assert partial.read_bytes() == foreign.read_bytes() and state_dir(out).is_dir() and not out.exists()
    partial.write_bytes(own)
    rc, _, err = run_main(capsys, *argv("7"), "-o", str(out), "--resume")
    assert rc == 0, err


def state_blocks(out):
    return json.loads(out.with_name(out.stem + ".partial.json").read_text())["blocks"]


def test_a_resumed_timeline_run_names_no_old_switch_and_counts_every_regeneration(tmp_path, monkeypatch, capsys):
    """After a resume the display does not announce a switch that happened before the stop, and the closing line
    counts the regenerations of the whole video (the restored blocks too), as its sidecar does (issue 33, item 25)."""
    out = tmp_path / "clip.mp4"
    args = ["generate", "-p", "0s: a red kite", "-p", "1s: a blue kite", "--seconds", "4", "--seed", "7", "-o", str(out),
            *[x for s in FORCED for x in ("--set", s)], "--set", "runtime.state_every=0"]
    restore = _stop_at_forward(monkeypatch, 23, "error")  # a few blocks in, past the switch at 1 s
    assert run_main(capsys, *args)[0] == 1
    restore()
    state = json.loads((state_dir(out) / "state.json").read_text())
    assert any(b.get("prompt") == 1 for b in state_blocks(out)[: state["after_block"] + 1])  # switched before
    rc, stdout, err = run_main(capsys, *args, "--resume")
    assert rc == 0, err
    assert "prompt 2/2 from block" not in stdout + err  # announced by the stopped run, before the resume
    side = json.loads(out.with_suffix(".json").read_text())
    total = sum(b.get("regenerations", 0) for b in side["blocks"])
    assert f"{total} regenerations" in stdout + err
