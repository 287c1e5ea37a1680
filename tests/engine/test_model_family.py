"""Causal Forcing and Reward Forcing, each as its authors run it (tiny models, CPU, fp32).

The references here are written from the authors' inference code, not from tokentrim's: a KV cache that keeps
the reference's flat token buffer per layer with its ``global_end_index`` / ``local_end_index`` bookkeeping,
writes the current keys on *every* forward (denoising steps included, as the reference does), evicts, rolls and
folds exactly where the reference does, and rotates keys where the reference does; and a sampling loop written from
``CausalInferencePipeline.inference``. It plugs into the same tiny transformer through the cache interface the
model calls (``begin`` / ``current_positions`` / ``attend`` / ``end``), so only the cache and loop rules differ
between the two sides.

Sources (read for their rules):
- thu-ml/Causal-Forcing at 1fc7bbc: ``inference.py``, ``pipeline/causal_inference.py`` (the first-chunk step list),
  ``wan/modules/causal_model.py`` (Self Forcing's attention: keys rotated at their absolute frame when written, a
  32760-token = 21-frame cache, ``local_attn_size`` -1), ``configs/causal_forcing_dmd_*.yaml``; ``long_video/``
  (TencentARC/RollingForcing's pipeline and attention, unchanged, with 4 steps).
- JaydenLyh/Reward-Forcing at 4317f5a: ``inference.py`` (a flat state dict), ``pipeline/causal_inference.py``,
  ``wan/modules/causal_model.py`` (EMA sink), ``configs/reward_forcing.yaml`` (local_attn_size 9, sink_size 3).
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_TRANSFORMER, tiny_transformer
from test_weights import to_original_name
from tokentrim_cli.config.presets import load_preset
from tokentrim_cli.engine.components import build_transformer
from tokentrim_cli.engine.noise import NoiseSource
from tokentrim_cli.engine.policies import EmaSinkCache, make_cache
from tokentrim_cli.engine.rope import rotate
from tokentrim_cli.engine.samplers import BlockSteps, Hooks, rolling_forcing, self_forcing
from tokentrim_cli.engine.schedule import warp_steps
from tokentrim_cli.engine.switch import switch
from tokentrim_cli.errors import ConfigError
from tokentrim_cli.pruning import TokenTrim

TOL = 1e-4
GRID = (8, 8)  # latent H, W: 4 x 4 = 16 tokens per latent frame on the tiny model


# ---------------------------------------------------------------------- the authors' rules, by hand
def _table():
    """The reference scheduler's timesteps (FlowMatchScheduler, shift 5, 1000 steps, extra_one_step)."""
    s = torch.linspace(1.0, 0.0, 1001, dtype=torch.float64)[:-1]
    return (5.0 * s / (1 + 4.0 * s)).float()


def _warped(steps):
    """``timesteps[1000 - step]`` for a denoising step list (``warp_denoising_step: true``), as sigmas."""
    table = _table()
    return [float(table[1000 - k]) for k in steps]


class FlatBuffers:
    """What both reference caches share: a flat ``k``/``v`` buffer per layer, made at the first write, and keys
    rotated at given latent frames (``n`` tokens a frame)."""

    def _buffers(self, layer, k, tokens):
        if self.layers[layer] is None:
            b, _, h, d = k.shape
            self.layers[layer] = {"k": k.new_zeros(b, tokens, h, d), "v": k.new_zeros(b, tokens, h, d)}
        return self.layers[layer]

    def _rot(self, k, t_pos):
        hw = torch.arange(self.n).repeat(len(t_pos))
        return rotate(k, self.rope.tables(t_pos.repeat_interleave(self.n), hw))


class ReferenceCache(FlatBuffers):
    """One KV-cache dict per layer as the reference keeps it (``k``/``v`` buffers of ``capacity`` frames, global and
    local end indices, in tokens), driven through the model's cache interface.

    ``style="self_forcing"`` (Causal Forcing): keys rotated at their absolute frame when written, attention over
    the last ``max_attention`` tokens; with ``local_attn_size`` -1 there is no eviction and a write past the
    buffer fails (the authors' 21-frame limit). ``style="reward_forcing"``: keys stored un-rotated; when the buffer
    is full the oldest non-sink tokens are evicted, the rest rolled left, and the evicted tokens folded into the
    sink (EMA when as many as the sink, copied otherwise); attention over [sink ; window], rotated at positions
    0, 1, ... (sink first), the query at its place at the end.
    """

    def __init__(self, num_layers, style, local_attn_size=-1, sink_size=0, alpha=0.999):
        self.num_layers, self.style = num_layers, style
        self.local, self.sink, self.alpha = local_attn_size, sink_size, alpha
        self.layers = [None] * num_layers
        self.global_end = self.local_end = 0
        self.scene_cut = False

    def kv_flush(self, scene_cut):
        """Infinity-RoPE's ``kv_flush`` at a prompt boundary: buffer frames 1-2 <- its last 2 frames, local end 3
        frames (the sink frame 0 stays); ``scene_cut`` lays the next block out with ``rope_cut``."""
        n = self.n
        for c in self.layers:
            c["k"][:, n : 3 * n] = c["k"][:, -2 * n :].clone()
            c["v"][:, n : 3 * n] = c["v"][:, -2 * n :].clone()
        self.local_end, self.scene_cut = 3 * n, scene_cut

    # -- the model's side
    def begin(self, frames, grid, write, first_step=False, rope=None):
        self.rope, self.frames = rope, frames.cpu().long()
        self.n = grid[0] * grid[1]
        frames_cap = 21 if self.local == -1 else self.local  # 32760 tokens = 21 frames of 1560
        self.cap, self.max_att = frames_cap * self.n, frames_cap * self.n
        self.sink_t = self.sink * self.n
        new = len(self.frames) * self.n
        self.cur_end = int(self.frames[0]) * self.n + new
        self.evict = (self.local != -1 and self.cur_end > self.global_end and new + self.local_end > self.cap)
        self.n_evicted = new + self.local_end - self.cap if self.evict else 0
        self.new_local_end = self.local_end + self.cur_end - self.global_end - self.n_evicted
        if self.new_local_end > self.cap:
            raise RuntimeError("the reference's KV buffer is full (Self Forcing's 21-frame limit)")
        if self.style == "self_forcing":
            self._q_pos = self.frames
        elif self.style == "infinity_rope":
            frames_att = self.max_att // self.n
            f = len(self.frames)
            start = int(self.frames[0])
            rel = frames_att - f if self.evict or start >= frames_att else start
            self._q_pos = torch.arange(45, 45 + f) if self.scene_cut else torch.arange(rel, rel + f)
        else:
            kv_start = max(self.sink_t, self.new_local_end - self.max_att + self.sink_t)
            q_start = (self.sink_t + (self.new_local_end - kv_start) - new) // self.n
            self._q_pos = torch.arange(q_start, q_start + len(self.frames))
            self.kv_start = kv_start

    @property
    def current_positions(self):
        return self._q_pos

    def attend(self, layer, query, k, k_rot, v):
        c, new = self._buffers(layer, k, self.cap), k.shape[1]
        end = self.new_local_end
        store = self._rot(k, self.frames) if self.style == "self_forcing" else k  # rotated at write, or not
        if self.evict:
            ne, s = self.n_evicted, self.sink_t
            rolled = self.local_end - ne - s
            ek, ev = c["k"][:, s : s + ne].clone(), c["v"][:, s : s + ne].clone()
            c["k"][:, s : s + rolled] = c["k"][:, s + ne : s + ne + rolled].clone()
            c["v"][:, s : s + rolled] = c["v"][:, s + ne : s + ne + rolled].clone()
        c["k"][:, end - new : end], c["v"][:, end - new : end] = store, v
        if self.evict and self.style == "reward_forcing" and ne > 0:
            if ne == self.sink_t:
                c["k"][:, :s] = self.alpha * c["k"][:, :s] + (1 - self.alpha) * ek
                c["v"][:, :s] = self.alpha * c["v"][:, :s] + (1 - self.alpha) * ev
            else:
                m = min(ne, s)
                c["k"][:, :m], c["v"][:, :m] = ek[:, :m], ev[:, :m]
        if self.style == "self_forcing":
            lo = max(0, end - self.max_att)
            return c["k"][:, lo:end], c["v"][:, lo:end]
        if self.style == "infinity_rope":
            lo, n = max(0, end - self.max_att), self.n
            k_for_rope = c["k"][:, lo:end]
            frames = k_for_rope.shape[1] // n
            pos = torch.arange(frames)
            if self.scene_cut:  # rope_cut: the last 3 frames at transition_from (45) on
                pos = torch.cat([torch.arange(frames - 3), torch.arange(45, 48)])
            roped = self._rot(k_for_rope, pos)
            if end - new == 0:  # block 0: the sink frame is stored rotated at position 0
                c["k"][:, :n] = roped[:, :n]
            else:
                roped[:, :n] = k_for_rope[:, :n]
            return roped, c["v"][:, lo:end]
        keys = torch.cat([c["k"][:, : self.sink_t], c["k"][:, self.kv_start : end]], 1)
        values = torch.cat([c["v"][:, : self.sink_t], c["v"][:, self.kv_start : end]], 1)
        return self._rot(keys, torch.arange(keys.shape[1] // self.n)), values

    def end(self, completed=True):
        if completed:
            self.global_end, self.local_end = self.cur_end, self.new_local_end


class RollingForcingReference(FlatBuffers):
    """Rolling Forcing's KV cache as TencentARC/RollingForcing a1477d0 keeps it (``wan/modules/causal_model.py``,
    ``CausalWanSelfAttention.forward`` with a cache; ``pipeline/rolling_forcing_inference.py`` sizes it at 24 frames),
    which Causal Forcing's ``long_video/`` copies unchanged: one buffer per layer, ``block_length`` = 3 frames.

    Every forward writes its first block's keys (rotated at their absolute frame; the video's first block, the
    anchor, un-rotated) at the slot after the last one when the window has moved on (evicting the oldest non-anchor
    block when the buffer is full), else over the same slot. A denoising window attends to [anchor rotated right
    before the working cache ; the clean blocks before the window, at most 21 frames with the anchor and the window ;
    the window]; a write pass attends to the last 21 frames of the buffer (the anchor rotated at 0 when among them);
    the very first block attends to itself only.
    """

    def __init__(self, num_layers):
        self.layers = [None] * num_layers
        self.global_end = self.local_end = 0

    def begin(self, frames, grid, write, first_step=False, rope=None):
        self.rope, self.frames, self.write = rope, frames.cpu().long(), write
        n = self.n = grid[0] * grid[1]
        self.block, self.max_att, cap = 3 * n, 21 * n, 24 * n
        cache_end = int(self.frames[0]) * n + self.block
        self.num_new = cache_end - self.global_end
        self.evict = self.num_new > 0 and self.num_new + self.local_end > cap
        self.n_evicted = self.num_new + self.local_end - cap if self.evict else 0
        self.new_local_end = self.local_end + cache_end - self.global_end - self.n_evicted
        self.cache_end = cache_end

    @property
    def current_positions(self):
        return self.frames

    def attend(self, layer, query, k, k_rot, v):
        c, blk, n = self._buffers(layer, k, 24 * self.n), self.block, self.n
        roped = self._rot(k, self.frames)
        end = self.new_local_end
        start = end - blk
        if self.evict:
            ne = self.n_evicted
            rolled = self.local_end - ne - blk
            c["k"][:, blk : blk + rolled] = c["k"][:, blk + ne : blk + ne + rolled].clone()
            c["v"][:, blk : blk + rolled] = c["v"][:, blk + ne : blk + ne + rolled].clone()
        c["k"][:, start:end] = k[:, :blk] if start == 0 and not self.evict else roped[:, :blk]
        c["v"][:, start:end] = v[:, :blk]
        if start == 0:
            return roped, v
        if self.write:
            lo = max(0, end - self.max_att)
            keys = c["k"][:, lo:end].clone()
            if lo == 0:
                keys[:, :blk] = self._rot(keys[:, :blk], torch.arange(3))
            return keys, c["v"][:, lo:end]
        lo = max(blk, start - (self.max_att - k.shape[1] - blk))
        work_frames = (start - lo) // n
        anchor_pos = torch.arange(3) + int(self.frames[0]) - work_frames - 3
        keys = torch.cat([self._rot(c["k"][:, :blk], anchor_pos), c["k"][:, lo:start], roped], 1)
        return keys, torch.cat([c["v"][:, :blk], c["v"][:, lo:start], v], 1)

    def end(self, completed=True):
        if completed and self.num_new > 0:
            self.global_end, self.local_end = self.cache_end, self.new_local_end


def reference_loop(model, cache, blocks, block_frames, steps, first_steps=None, seed=5, scenes=None, initial=None):
    """``CausalInferencePipeline.inference`` for text-to-video: per block, its step list (the first chunk's own
    list when the config has one), x0 = x_t - sigma v, re-noised with fresh noise at the next level, then a forward
    at t = context_noise (0) over x0 that leaves the clean keys in the cache. ``scenes`` (Infinity-RoPE): block ->
    (prompt embeddings, scene cut): at that block the prompt changes and the cache is flushed. ``initial`` (image to
    video, frame-wise): an encoded first frame, run once at t = 0 before the blocks, which start at frame 1."""
    noise = NoiseSource(seed, (1, 16, block_frames, *GRID))
    out = []
    start = 0
    with torch.no_grad():
        if initial is not None:
            model(initial, torch.zeros(1), torch.arange(1), cache=cache, write=True)
            start = 1
        for i in range(blocks):
            if scenes and i in scenes:
                prompt, cut = scenes[i]
                model.set_prompt(prompt)
                cache.kv_flush(cut)
            elif scenes:
                cache.scene_cut = False
            sig = _warped(first_steps if i == 0 and first_steps else steps)
            frames = torch.arange(start + i * block_frames, start + (i + 1) * block_frames)
            x = noise.draw(i, 0)
            for j, s in enumerate(sig):
                v = model(x, torch.full((block_frames,), s * 1000), frames, cache=cache)
                x0 = x - s * v
                if j + 1 < len(sig):
                    x = (1 - sig[j + 1]) * x0 + sig[j + 1] * noise.draw(i, j + 1)
            model(x0, torch.zeros(block_frames), frames, cache=cache, write=True)
            out.append(x0)
    return out


# what the authors' configs say, written out here (not read from our presets)
AUTHORS = {
    # preset: (block frames, steps, first-chunk steps, reference cache kwargs, blocks)
    "causal-forcing": (3, [1000, 750, 500, 250], None, dict(style="self_forcing"), 7),
    "causal-forcing-framewise": (1, [1000, 750, 500, 250], None, dict(style="self_forcing"), 21),
    "causal-forcing-framewise-2step": (1, [1000, 500], [1000, 750, 500, 250], dict(style="self_forcing"), 21),
    "causal-forcing-framewise-1step": (1, [1000], [1000, 750, 500, 250], dict(style="self_forcing"), 21),
    "reward-forcing": (3, [1000, 750, 500, 250], None,
                       dict(style="reward_forcing", local_attn_size=9, sink_size=3, alpha=0.999), 8),
    "infinity-rope": (3, [1000, 750, 500, 250], None, dict(style="infinity_rope", local_attn_size=6, sink_size=1), 8),
    "infinity-rope-causal-forcing": (3, [1000, 750, 500, 250], None,
                                     dict(style="infinity_rope", local_attn_size=6, sink_size=1), 8),
}


def ours(model, preset, blocks, seed=5, cache=None, first=True, reviewer=None, overrides=(), scenes=None):
    """tokentrim's side: the preset's sampler settings and cache policy (tiny model, RoPE table of 64);
    ``scenes``: block -> (prompt embeddings, switch mode), applied as the pipeline applies a timeline's switches."""
    cfg = load_preset(preset, list(overrides)).config
    samp = cfg.sampler
    cache = cache if cache is not None else make_cache(cfg.cache, model.num_layers, model.rope_len)
    noise = NoiseSource(seed, (1, 16, samp.block_frames, *GRID))
    first_sigmas = warp_steps(samp.first_block_steps, samp.shift) if samp.first_block_steps and first else None
    sampler = self_forcing if samp.kind == "self_forcing" else rolling_forcing

    def before_block(i):
        if i in scenes:
            model.set_prompt(scenes[i][0])
            switch(scenes[i][1], model, cache, None, noise, i * samp.block_frames)

    steps = BlockSteps(blocks, warp_steps(samp.steps, samp.shift), samp.block_frames, samp.context_noise,
                       first_sigmas=first_sigmas)
    hooks = Hooks(reviewer, before_block if scenes else None)
    return [b.latents for b in sampler(model, cache, noise, steps, hooks)]


def reference(model, preset, alpha=None):
    bf, steps, first, kw, blocks = AUTHORS[preset]
    kw = dict(kw, alpha=alpha) if alpha is not None else kw
    return reference_loop(model, ReferenceCache(model.num_layers, **kw), blocks, bf, steps, first)


def block_diffs(a, b):
    assert len(a) == len(b)
    return [(x - y).abs().max().item() for x, y in zip(a, b)]


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("preset", list(AUTHORS))
def test_preset_matches_its_authors_loop_block_for_block(causal_model, preset):
    """Every block within 1e-4 (fp32) of the loop written from the authors' code. Causal Forcing: all 21 latent
    frames the authors generate (7 chunks, 21 frames; the 1/2-step models' 4-step first frame). Reward Forcing:
    8 blocks, so the window evicts five times and each eviction is folded into the sink."""
    blocks = AUTHORS[preset][4]
    diffs = block_diffs(ours(causal_model, preset, blocks), reference(causal_model, preset))
    assert max(diffs) <= TOL, diffs


def test_framewise_image_to_video_matches_its_authors_loop(causal_model):
    """``inference.py --i2v`` (frame-wise models only): the image's latent is frame 0, written at t = 0; then 20
    one-frame blocks, the first of them in the first-chunk steps (2-step model). tokentrim's --image path: one context
    pass for frame 0, then the sampler from frame 1."""
    from tokentrim_cli.engine.samplers import write_block

    image = torch.randn(1, 16, 1, *GRID, generator=torch.Generator().manual_seed(4))
    bf, steps, first, kw, _ = AUTHORS["causal-forcing-framewise-2step"]
    ref = reference_loop(causal_model, ReferenceCache(2, **kw), 20, bf, steps, first, initial=image)
    cfg = load_preset("causal-forcing-framewise-2step").config
    cache = make_cache(cfg.cache, 2, 64)
    noise = NoiseSource(5, (1, 16, 1, *GRID))
    write_block(causal_model, cache, image, torch.arange(1), noise, 2**31, 0)
    got = [b.latents for b in self_forcing(causal_model, cache, noise, BlockSteps(
        20, warp_steps(cfg.sampler.steps), 1, start_frame=1, first_sigmas=warp_steps(cfg.sampler.first_block_steps)))]
    assert max(block_diffs(got, ref)) <= TOL


def test_causal_forcing_reference_stops_at_21_frames(causal_model):
    """The authors' cache holds 21 latent frames (32760 tokens) and never evicts; the presets go on with a rolling
    window of that span, as self-forcing does."""
    with pytest.raises(RuntimeError, match="21-frame limit"):
        reference_loop(causal_model, ReferenceCache(2, style="self_forcing"), 8, 3, [1000])
    assert len(ours(causal_model, "causal-forcing", 8)) == 8


# a mutation changes one rule on our side; the comparison must then fail somewhere
MUTATIONS = {
    "first frame in the regular steps": ("causal-forcing-framewise-2step", dict(first=False), None),
    "chunk-wise span one block short": ("causal-forcing", dict(overrides=["cache.window_frames=15"]), None),
    "frame-wise span one frame short": ("causal-forcing-framewise", dict(overrides=["cache.window_frames=19"]), None),
    "EMA sink off (a plain sink)": ("reward-forcing", dict(overrides=["cache.policy=sink_window"]), 0.9),
    "EMA sink off, the checkpoint's alpha 0.999": ("reward-forcing", dict(overrides=["cache.policy=sink_window"]),
                                                   None),
    "EMA weights swapped": ("reward-forcing", dict(overrides=["cache.ema_alpha=0.1"]), 0.9),
    "LongLive's window (6) instead of 3": ("reward-forcing", dict(overrides=["cache.window_frames=6"]), 0.9),
    "EMA sink at absolute positions": ("reward-forcing", dict(overrides=["cache.positions=absolute"]), 0.9),
    "Infinity-RoPE at absolute positions": ("infinity-rope", dict(overrides=["cache.positions=absolute"]), None),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_a_mutated_rule_fails_the_comparison(causal_model, name):
    """The comparison can fail: one rule changed makes some block differ by more than the tolerance. Most Reward
    Forcing mutations run both sides at alpha 0.9 (the unmutated pair matches there too), where a fold moves the
    sink a lot; at the checkpoint's 0.999 a plain sink is still 1e-3 off by block 7 on this model."""
    preset, kwargs, alpha = MUTATIONS[name]
    kwargs = dict(kwargs)
    blocks = AUTHORS[preset][4]
    overrides = list(kwargs.pop("overrides", []))
    base = [f"cache.ema_alpha={alpha}"] if alpha is not None else []
    ref = reference(causal_model, preset, alpha)
    assert max(block_diffs(ours(causal_model, preset, blocks, overrides=base), ref)) <= TOL
    mutated = ours(causal_model, preset, blocks, overrides=base + overrides, **kwargs)
    assert max(block_diffs(mutated, ref)) > TOL


# ---------------------------------------------------------------------- Infinity-RoPE's prompt changes
def _scenes(cut_mode="rope_cut"):
    """Three prompts: a change at block 3 (a flush) and a scene cut at block 6 ("...[Ns] | ...[Ns#]")."""
    g = torch.Generator().manual_seed(8)
    p2, p3 = torch.randn(1, 16, 32, generator=g), torch.randn(1, 16, 32, generator=g)
    return {3: (p2, False), 6: (p3, True)}, {3: (p2, "keep"), 6: (p3, cut_mode)}


@pytest.mark.parametrize("cut_mode,cut_position,exact", [("rope_cut", 45, True), ("keep", 45, False),
                                                         ("rope_cut", 44, False)],
                         ids=["exact", "mutation: no RoPE cut", "mutation: cut at 44"])
def test_infinity_rope_prompt_changes_match_its_loop(causal_model, cut_mode, cut_position, exact):
    """10 blocks with a prompt change at block 3 (KV flush: tokentrim's keep) and a scene cut at block 6 (the cut
    block at RoPE positions 45-47 for all its forwards, then contiguous again); a missing cut or a cut one position
    off fails."""
    first = causal_model.state.prompt_kv
    ref_scenes, our_scenes = _scenes(cut_mode)
    ref = reference_loop(causal_model, ReferenceCache(2, style="infinity_rope", local_attn_size=6, sink_size=1), 10, 3,
                         [1000, 750, 500, 250], scenes=ref_scenes)
    causal_model.state.prompt_kv = first
    cache = make_cache(load_preset("infinity-rope").config.cache, 2, 64)
    cache.cut_position = cut_position
    got = ours(causal_model, "infinity-rope", 10, cache=cache, scenes=our_scenes)
    diffs = block_diffs(got, ref)
    assert max(diffs[:6]) <= TOL  # up to the cut every variant agrees
    assert (max(diffs) <= TOL) == exact, diffs


def test_rope_cut_needs_the_infinity_rope_policy(causal_model):
    from tokentrim_cli.run.pipeline import Plan, timeline_switches
    from tokentrim_cli.run.timeline import parse_prompts

    cfg = load_preset("self-forcing").config
    plan = Plan.for_preset(6.0, cfg)
    timeline = parse_prompts(["a corgi", "3s rope_cut: a cat"])
    with pytest.raises(ConfigError, match="rope_cut switch needs cache.policy infinity_rope"):
        timeline_switches(timeline, cfg, plan)
    assert [s.mode for s in timeline_switches(timeline, load_preset("infinity-rope").config, plan)] == ["rope_cut"]


def test_rope_cut_fast_path_and_resume(causal_model):
    """The cut block's layout through the fast path equals the plain path; a cache rebuilt from the journal right
    after the cut block (the RoPE cut recorded, then replayed before that block's write) goes on bit for bit."""
    from tokentrim_cli.engine.journal import Journal, replay
    from tokentrim_cli.engine.policies import InfinityRopeCache
    from tokentrim_cli.engine.samplers import LoopState

    first = causal_model.state.prompt_kv
    _, scenes = _scenes()
    runs = []
    for arena in (True, False):
        causal_model.state.prompt_kv = first
        runs.append(ours(causal_model, "infinity-rope", 10, scenes=scenes,
                         cache=InfinityRopeCache(2, 2, 1, rope_len=64, arena=arena)))
    assert max(block_diffs(*runs)) <= 1e-5

    cache = InfinityRopeCache(2, 2, 1, rope_len=64)
    cache.journal = journal = Journal()
    journal.set_prompt(causal_model, torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(9)))
    noise = NoiseSource(5, (1, 16, 3, *GRID))
    sig = warp_steps([1000, 750, 500, 250])

    def before(i):
        if i in scenes:
            journal.set_prompt(causal_model, scenes[i][0])
            switch(scenes[i][1], causal_model, cache, None, noise, 3 * i)

    saved, out = None, []
    for blk in self_forcing(causal_model, cache, noise, BlockSteps(10, sig), Hooks(before_block=before)):
        out.append(blk.latents)
        if blk.index == 6:
            saved = journal.state()
    assert any(op[0] == "rope_cut" for op in saved.ops)
    again = InfinityRopeCache(2, 2, 1, rope_len=64)
    replay(saved, causal_model, again)
    tail = [b.latents for b in self_forcing(causal_model, again, noise, BlockSteps(10, sig), Hooks(state=LoopState(7)))]
    assert all(torch.equal(a, b) for a, b in zip(tail, out[7:]))


# ---------------------------------------------------------------------- Causal Forcing's long-video model
def rolling_forcing_loop(model, blocks, steps, seed=3):
    """Rolling Forcing's ``inference`` with a window of len(steps) blocks (Causal Forcing's long_video runs it with
    4): window w holds blocks max(0, w - W + 1)..min(w, last); start-up windows take the last (noisiest) levels, end
    windows the first; after each window's forward every block not at its last level is re-noised at its next one,
    and the window's first block is run at t = 0 over its prediction (the clean cache update, final or not)."""
    sig = _warped(steps)
    w_len = len(steps)
    levels = sig[::-1]  # clean to noisy, the window's oldest block first
    noise = NoiseSource(seed, (1, 16, 3, *GRID))
    cache = RollingForcingReference(model.num_layers)
    x, out = {}, []
    with torch.no_grad():
        for w in range(blocks + w_len - 1):
            start, end = max(0, w - w_len + 1), min(blocks - 1, w)
            count = end - start + 1
            if w < blocks:
                x[w] = noise.draw(w, 0)
            ts = levels[-count:] if start == 0 and count < w_len else levels[:count]
            inp = torch.cat([x[b] for b in range(start, end + 1)], 2)
            lv = torch.tensor(ts).repeat_interleave(3)
            v = model(inp, lv * 1000, torch.arange(3 * start, 3 * end + 3), cache=cache)
            x0 = inp - lv.view(1, 1, -1, 1, 1) * v
            for i, b in enumerate(range(start, end + 1)):
                step = sig.index(ts[i])
                if step < w_len - 1:
                    x[b] = (1 - sig[step + 1]) * x0[:, :, 3 * i : 3 * i + 3] + sig[step + 1] * noise.draw(b, step + 1)
            model(x0[:, :, :3], torch.zeros(3), torch.arange(3 * start, 3 * start + 3), cache=cache, write=True)
            if sig.index(ts[0]) == w_len - 1:
                out.append(x0[:, :, :3])
    return out


def test_causal_forcing_long_matches_rolling_forcing_with_4_steps(causal_model):
    """causal-forcing-long: 10 blocks with 4-block windows, past the 21-frame span (write passes without the anchor)
    and through the end flush. Mutations: Rolling Forcing's own 5 steps; an 18-frame span. The same reference with 5
    steps matches the rolling-forcing preset over 12 blocks (an independent check of the reference itself)."""
    ref = rolling_forcing_loop(causal_model, 10, [1000, 750, 500, 250])
    got = ours(causal_model, "causal-forcing-long", 10, seed=3)
    assert max(block_diffs(got, ref)) <= TOL
    for mutation in (["sampler.steps=[1000,800,600,400,200]"], ["cache.span_frames=18"]):
        assert max(block_diffs(ours(causal_model, "causal-forcing-long", 10, seed=3, overrides=mutation), ref)) > TOL
    five = rolling_forcing_loop(causal_model, 12, [1000, 800, 600, 400, 200])
    assert max(block_diffs(ours(causal_model, "rolling-forcing", 12, seed=3), five)) <= TOL


# ---------------------------------------------------------------------- the EMA sink policy
@pytest.mark.parametrize("pruning", [False, True], ids=["", "pruning"])
def test_ema_sink_fast_path_equals_plain_path(causal_model, pruning):
    """The folded sink is restaged by the fast path (rotated buffers) exactly as the plain path rebuilds it, with
    and without TokenTrim pruning (pruned window tokens leave their sink partners as they were)."""
    runs = []
    for arena in (True, False):
        cache = EmaSinkCache(2, window_frames=3, sink_frames=3, alpha=0.5, rope_len=64, arena=arena)
        reviewer = TokenTrim(p=0.2, lam=0.0, warmup=1) if pruning else None
        runs.append((torch.cat(ours(causal_model, "reward-forcing", 8, cache=cache, reviewer=reviewer), 2),
                     cache.num_tokens))
    (fast, n_fast), (plain, n_plain) = runs
    assert (fast - plain).abs().max().item() <= 1e-5 and n_fast == n_plain


def test_ema_sink_folds_evicted_frames_into_the_sink(causal_model):
    """After blocks 0-3 with alpha 0.5: the window holds block 3 only and the sink, still frames 0-2, is block 0
    folded with block 1 (evicted after block 2's write), then with block 2 (after block 3's): frame j with frame j,
    token for token. Blocks 0-2 saw the same context as under a plain sink, so a plain-sink run gives their keys."""
    from tokentrim_cli.engine.cache import RollingCache

    cache = EmaSinkCache(2, window_frames=3, sink_frames=3, alpha=0.5, rope_len=64, arena=False)
    plain = RollingCache(2, window_frames=3, sink_frames=3, rope_len=64, arena=False)
    written = {}
    orig = plain.admit
    plain.admit = lambda seg: written.setdefault(seg.frames, [k.clone() for k in seg.unrotated_keys()]) and orig(seg)
    ours(causal_model, "reward-forcing", 4, cache=cache)
    ours(causal_model, "reward-forcing", 4, cache=plain)
    assert [s.frames for s in cache.segments] == [(0, 1, 2), (9, 10, 11)]
    sink = cache.segments[0]
    assert sink.kind == "sink" and sorted(set(sink.t.tolist())) == [0, 1, 2]
    for layer in range(2):
        b0, b1, b2 = (written[f][layer] for f in ((0, 1, 2), (3, 4, 5), (6, 7, 8)))
        assert torch.allclose(sink.unrotated_keys()[layer], 0.5 * (0.5 * b0 + 0.5 * b1) + 0.5 * b2, atol=1e-6)
        assert not torch.allclose(sink.unrotated_keys()[layer], b0, atol=1e-3)


# ---------------------------------------------------------------------- files, download, settings
def _sd(model):
    return {"model." + to_original_name(k): v.clone() for k, v in model.state_dict().items()}


LAYOUTS = {
    # preset: the authors' file layout
    "causal-forcing": lambda sd, decoy: {"generator": sd, "generator_ema": decoy, "critic": {}},
    "causal-forcing-framewise": lambda sd, decoy: {"generator_ema": sd, "generator": decoy, "critic": {}},
    "causal-forcing-framewise-2step": lambda sd, decoy: {"generator_ema": sd, "generator": decoy},
    "causal-forcing-long": lambda sd, decoy: {"generator_ema": {k.replace("model.blocks.", "model._fsdp_wrapped_module."
                                                                          "blocks."): v for k, v in sd.items()},
                                              "generator": decoy},
    "reward-forcing": lambda sd, decoy: sd,  # inference.py: load_state_dict(torch.load(path)), flat
    "infinity-rope": lambda sd, decoy: {"generator_ema": {k.replace("model.blocks.", "model._fsdp_wrapped_module."
                                                                    "blocks."): v for k, v in sd.items()},
                                        "generator": decoy},
}


@pytest.mark.parametrize("preset", list(LAYOUTS))
def test_checkpoint_in_the_authors_layout_loads_exactly(tmp_path, preset):
    """The preset's transformer section reads the entry the authors' inference reads (EMA or not, nested or flat,
    FSDP prefix or not): 0 missing, 0 unexpected keys, every tensor equal."""
    import yaml

    src = tiny_transformer(seed=11)
    sd = _sd(src)
    decoy = {k: torch.zeros_like(v) for k, v in sd.items()}
    path = tmp_path / "ckpt.pt"
    torch.save(LAYOUTS[preset](sd, decoy), path)
    config = yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in TINY_TRANSFORMER.items()},
                            default_flow_style=True, width=10_000).strip()
    cfg = load_preset(preset, [f"model.transformer.config={config}", f"model.transformer.weights={path}"]).config
    got = build_transformer(cfg.model.transformer).transformer.state_dict()
    want = src.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


NEW = ["causal-forcing", "causal-forcing-framewise", "causal-forcing-framewise-2step", "causal-forcing-framewise-1step",
       "causal-forcing-long", "causal-forcing-packed", "reward-forcing", "infinity-rope",
       "infinity-rope-causal-forcing"]
HUB = {
    "causal-forcing": "hf://zhuhz22/Causal-Forcing/chunkwise/causal_forcing.pt",
    "causal-forcing-framewise": "hf://zhuhz22/Causal-Forcing/framewise/causal_forcing.pt",
    "causal-forcing-framewise-2step": "hf://zhuhz22/Causal-Forcing/causal-forcing++/framewise-2step.pt",
    "causal-forcing-framewise-1step": "hf://zhuhz22/Causal-Forcing/causal-forcing++/framewise-1step.pt",
    "causal-forcing-long": "hf://zhuhz22/Causal-Forcing/chunkwise/longvideo.pt",
    "causal-forcing-packed": "hf://zhuhz22/Causal-Forcing/chunkwise/causal_forcing.pt",
    "reward-forcing": "hf://JaydenLu666/Reward-Forcing-T2V-1.3B/rewardforcing.pt",
    "infinity-rope": "hf://SOTAMak1r/Infinite-Forcing/ema_model.pt",
    "infinity-rope-causal-forcing": "hf://zhuhz22/Causal-Forcing/chunkwise/causal_forcing.pt",
}


@pytest.mark.parametrize("preset", NEW)
def test_download_fetches_the_checkpoint_and_the_wan_components(preset, monkeypatch, capsys):
    from tokentrim_cli.config import loading
    from tokentrim_cli.cli import main
    from tokentrim_cli.engine import weights as W

    fetched = []
    monkeypatch.setattr(loading, "check_hub_reachable", lambda: None)
    monkeypatch.setattr(W, "fetch", lambda ref, local_dir=None: fetched.append(ref) or ref)
    with pytest.raises(SystemExit) as exc:
        main(["download", preset])
    capsys.readouterr()
    assert exc.value.code in (0, None)
    assert fetched[0] == HUB[preset]
    assert "hf://Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae" in fetched


def test_presets_state_position_rule_and_license():
    """Write-time rotation (Self Forcing's code: Causal Forcing) is ``absolute``; rotation per call with the sink
    re-aligned (Rolling Forcing, Reward Forcing, Infinity-RoPE) and the three-partition variant are ``packed``. Every
    preset names its checkpoint's license; where no license read grants commercial use of the weights (no license on
    the card, or training code that is academic-only), the preset says not for commercial use."""
    want = {"causal-forcing": ("absolute", True), "causal-forcing-framewise": ("absolute", True),
            "causal-forcing-framewise-2step": ("absolute", True), "causal-forcing-framewise-1step": ("absolute", True),
            "causal-forcing-packed": ("packed", True), "causal-forcing-long": ("packed", False),
            "reward-forcing": ("packed", False), "infinity-rope": ("packed", False),
            "infinity-rope-causal-forcing": ("packed", True)}
    for preset, (positions, commercial) in want.items():
        cfg = load_preset(preset).config
        assert (cfg.cache.positions, cfg.license.commercial) == (positions, commercial), preset
        assert cfg.license.name and cfg.license.source, preset


def test_settings_that_do_not_fit_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"first_block_steps needs sampler.kind self_forcing"):
        load_preset("causal-forcing-long", ["sampler.first_block_steps=[1000,500]"])
    with pytest.raises(ConfigError, match=r"ema_sink needs cache.window_frames"):
        load_preset("reward-forcing", ["cache.window_frames=null"])
    # presets that do not use the new settings keep their settings hash (batch --resume): at their defaults the
    # new fields are not hashed
    from tokentrim_cli.batch.manifest import hashed_fields

    hashed = hashed_fields(load_preset("self-forcing").config.as_dict())
    assert "first_block_steps" not in hashed["sampler"] and "ema_alpha" not in hashed["cache"]
    assert load_preset("causal-forcing-framewise-1step").config.sampler.as_dict()["first_block_steps"] == [
        1000, 750, 500, 250]


# ---------------------------------------------------------------------- resume (the command's loop)
@pytest.mark.parametrize("sets, timeline", [
    (["cache.policy=ema_sink", "cache.sink_frames=3", "cache.window_frames=3", "cache.ema_alpha=0.5",
      "pruning.lambda=0"], None),
    (["sampler.block_frames=1", "sampler.steps=[1000]", "sampler.first_block_steps=[1000,750,500,250]",
      "cache.window_frames=20"], None),
    (["cache.policy=infinity_rope", "cache.sink_frames=1", "cache.window_frames=2", "sampler.switch=keep"],
     ["a red kite", "2s: a blue ball", "4s rope_cut: a green square"]),
], ids=["ema-sink-pruning", "first-block-steps", "infinity-rope-timeline"])
def test_resumed_blocks_equal_the_uninterrupted_run(sets, timeline):
    """``generate --resume`` goes on bit for bit with each new rule: the fold replayed from the journal (with
    TokenTrim pruning on every block), the first block's own steps not reapplied, a RoPE cut recorded and replayed."""
    from tokentrim_cli.engine.components import load_components
    from tokentrim_cli.run.pipeline import Plan, generate_blocks, resume_blocks
    from tokentrim_cli.run.timeline import parse_prompts

    cfg = load_preset("tiny", sets).config
    comps = load_components(cfg.model, cfg.runtime)
    plan = Plan.for_preset(6.0, cfg)
    entries = parse_prompts(timeline) if timeline else None
    full = list(generate_blocks(comps, cfg, entries or "a red kite", 5, plan, resumable=True))
    for k in (1, plan.blocks // 2, plan.blocks - 2):
        rest = list(resume_blocks(comps, cfg, entries or "a red kite", 5, plan, full[k].state))
        assert [b.index for b in rest] == list(range(k + 1, plan.blocks))
        assert all(torch.equal(a.latents, b.latents) for a, b in zip(full[k + 1 :], rest)), k


def test_extend_writes_the_sink_and_the_window_as_context():
    """``generate --extend``: the input's sink frames and the window's last frames, as the policy would hold them
    after generating the input itself (not the whole input, which the window would evict at once)."""
    from tokentrim_cli.run.continuation import context_frames

    for preset, want in (("reward-forcing", ((0, 1, 2, 27, 28, 29), 3)), ("infinity-rope", ((0, 28, 29), 1)),
                         ("causal-forcing-framewise", (tuple(range(10, 30)), 0))):
        cfg = load_preset(preset).config
        assert context_frames(cfg.cache, cfg.sampler.block_frames, 30, 1024, 20) == want, preset
