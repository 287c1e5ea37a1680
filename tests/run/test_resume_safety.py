"""A resume joins only what it can verify, and a state file is data, never code: exactness past the RoPE table,
foreign partial videos, crafted and damaged state files, a batch item killed mid-run."""

import json
import os

import pytest
import torch

from tokentrim_cli.config.presets import load_preset
from tokentrim_cli.engine.components import load_components
from tokentrim_cli.run.pipeline import Plan, generate_blocks, resume_blocks
from tokentrim_cli.run.state import History, RunState
from tokentrim_cli.run.resume import StateWriter, load_state

from test_cli import run_main

# a RoPE table of 12 latent frames and a window of 6: positions are re-packed (resident keys turned) from block 2;
# pruning.lambda=0 makes TokenTrim prune and regenerate after the moves
PAST_TABLE = ["model.transformer.config.rope_max_seq_len=12", "cache.window_frames=6", "pruning.lambda=0"]


def test_resume_past_the_rope_table_is_bit_exact(tmp_path):
    """The cache's keys are turned in place when the layout moves them past the RoPE table's end; a resumed run
    replays the pruning before that move, on fewer tokens, and must still get the same bits (issue 33 #17)."""
    cfg = load_preset("tiny", PAST_TABLE).config
    comps = load_components(cfg.model, cfg.runtime)
    plan = Plan.for_preset(5.0, cfg)
    full = list(generate_blocks(comps, cfg, "a red kite", 5, plan, resumable=True))
    assert plan.start_frame + plan.blocks * plan.block_frames > 12  # the run goes past the table
    k = 4  # block 4 is pruned and regenerated after the layout moved the cache (checked below)
    assert full[k].record["regenerations"] > 0
    writer = StateWriter(tmp_path / "s", "fp")
    for b in full[: k + 1]:
        writer.save(RunState(b.state, {"first": False, "feat_map": None}, 0, History()))
    rest = list(resume_blocks(comps, cfg, "a red kite", 5, plan, load_state(tmp_path / "s", "fp", tmp_path / "x.mp4").generation))
    assert [b.index for b in rest] == list(range(k + 1, plan.blocks))
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(full[k + 1:], rest))


# ------------------------------------------------------------------------------------------ the state file
def _state_folder(tmp_path):
    """A real state folder (saved by StateWriter from a short tiny run) and its fingerprint."""
    cfg = load_preset("tiny").config
    comps = load_components(cfg.model, cfg.runtime)
    block = next(iter(generate_blocks(comps, cfg, "a red kite", 5, Plan.for_preset(1.0, cfg), resumable=True)))
    folder = tmp_path / "clip.state"
    StateWriter(folder, "fp").save(RunState(block.state, {"first": False, "feat_map": None}, 4, History()))
    return folder


class _Plant:
    """Unpickling it creates a file: proof that loading ran code."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("payload", ["code", "random", "list"])
def test_a_crafted_or_random_state_is_refused_in_one_line_and_never_run(tmp_path, payload):
    """state.pt is loaded as data only: a pickle that would create a file when unpickled creates none, and
    random bytes or another kind of content are 'damaged' in one line (issue 33 #7, #9)."""
    folder = _state_folder(tmp_path)
    planted = tmp_path / "planted"
    if payload == "code":
        torch.save({"format": 1, "x": _Plant(planted)}, folder / "state.pt")
    elif payload == "random":
        (folder / "state.pt").write_bytes(os.urandom(4096))
    else:
        torch.save([1, 2, 3], folder / "state.pt")
    from tokentrim_cli.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        load_state(folder, "fp", tmp_path / "clip.mp4")
    assert not planted.exists()
    assert "damaged" in str(exc.value) and "\n" not in str(exc.value) and len(str(exc.value)) < 300


def test_a_real_state_still_loads_as_data(tmp_path):
    state = load_state(_state_folder(tmp_path), "fp", tmp_path / "clip.mp4")
    assert state.block == 0 and state.frames_written == 4 and state.generation.journal.ops


def test_a_journal_name_outside_the_folder_is_refused(tmp_path):
    folder = _state_folder(tmp_path)
    state = torch.load(folder / "state.pt", weights_only=True)
    state["journal"]["chunks"] = ["../../elsewhere.pt"]
    torch.save(state, folder / "state.pt")
    from tokentrim_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="damaged"):
        load_state(folder, "fp", tmp_path / "clip.mp4")


# ------------------------------------------------------------------------------------------ batch
def test_batch_resume_goes_on_with_an_item_killed_without_a_manifest_line(tmp_path, monkeypatch, capsys):
    """A SIGKILL during an item leaves its state but no manifest line: --resume must go on with it, not refuse
    with 'pass --resume' (issue 33 #18). The kill is stood in for by a SIGTERM whose manifest line is removed."""
    from test_resume import _stop_at_forward

    from tokentrim_cli.run.resume import state_dir

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red kite\n")
    out = tmp_path / "out"
    args = ["batch", str(prompts), "--out-dir", str(out), "--seconds", "2", "-q", "--set", "runtime.state_every=1"]
    restore = _stop_at_forward(monkeypatch, 12, "sigterm")
    rc, _, err = run_main(capsys, *args)
    restore()
    assert rc == 130, err
    (out / "manifest.jsonl").write_text("")  # what a SIGKILL leaves: no line for the item
    video = next(out.glob("*.partial.mp4")).with_name(next(out.glob("*.partial.mp4")).name.replace(".partial", ""))
    assert (state_dir(video) / "state.pt").is_file()
    rc, _, err = run_main(capsys, *args, "--resume")
    assert rc == 0, err
    side = json.loads(video.with_suffix(".json").read_text())
    assert side["status"] == "ok" and side["resumed"] and not state_dir(video).exists()


def test_a_refused_resume_names_the_extend_input_that_changed(tmp_path):
    from tokentrim_cli.errors import ConfigError

    folder = _state_folder(tmp_path)
    with pytest.raises(ConfigError, match="or --extend in.mp4 has changed since"):
        load_state(folder, "another", tmp_path / "clip.mp4", "--extend in.mp4")
