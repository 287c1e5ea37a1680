"""A resume joins only what it can verify, and a state file is data, never code: exactness past the RoPE table,
foreign partial videos, crafted and damaged state files, a batch item killed mid-run."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from tokentrim_cli.config import load_preset
from tokentrim_cli.engine.components import load_components
from tokentrim_cli.pipeline import Plan, generate_blocks
from tokentrim_cli.resume import StateWriter, load_state

from test_cli import ENV, run_main

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
        writer.save(b.state, {"first": False, "feat_map": None}, 0, {"blocks": [], "resumed": []})
    rest = list(generate_blocks(comps, cfg, "a red kite", 5, plan, resume=load_state(tmp_path / "s", "fp", tmp_path / "x.mp4")))
    assert [b.index for b in rest] == list(range(k + 1, plan.blocks))
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(full[k + 1:], rest))
