"""Sink + window policies of two published models: Reward Forcing's EMA sink (evicted frames folded into the sink)
and Infinity-RoPE's block-relative cache (sink, short window, RoPE cut for scene changes)."""

from __future__ import annotations

import torch

from ..config.settings import Cache
from .cache import DEFAULTS, KVCache, Layout, RollingCache, Segment, policy, split_sink


@policy("ema_sink")
class EmaSinkCache(RollingCache):
    """Reward Forcing's EMA sink: a sink plus a rolling window, where the frames the window evicts are folded into
    the sink instead of being dropped (read in JaydenLyh/Reward-Forcing at 4317f5a, ``wan/modules/causal_model.py``,
    ``CausalWanSelfAttention.forward`` and ``incremental_update``; ``configs/reward_forcing.yaml``).

    The rule there, per layer, keys and values alike, both un-rotated: when ``e`` frames leave the window and the
    sink has ``s == e`` frames, sink frame j <- alpha * sink frame j + (1 - alpha) * evicted frame j (alpha 0.999,
    the default of ``compression_alpha``); when e != s, the first min(e, s) sink frames are replaced by the first
    evicted ones. Token i of a frame pairs with token i of the other (same spatial index). Keys are rotated at call
    time with the sink packed right before the window (positions 0.. in the reference), which is the base layout.

    Sink tokens whose evicted partner was pruned by TokenTrim are left as they are (the reference has no pruning).

    Args:
        num_layers, rope_len, arena, positions: as :class:`KVCache`'s.
        window_frames: cached frames besides the sink (Reward Forcing: local_attn_size 9 - sink 3 - block 3 = 3).
        sink_frames: the first frames of the video (3).
        alpha: weight of the current sink in the average (``cache.ema_alpha``).
    """

    def __init__(self, num_layers: int, window_frames: int, sink_frames: int = DEFAULTS.sink_frames,
                 alpha: float = DEFAULTS.ema_alpha, rope_len: int = 1024, arena: bool = True,
                 positions: str = DEFAULTS.positions):
        super().__init__(num_layers, window_frames, sink_frames, rope_len, arena, positions)
        self.alpha = alpha

    @classmethod
    def from_settings(cls, cfg: Cache, num_layers: int, rope_len: int) -> KVCache:
        return cls(num_layers, cfg.window_frames, cfg.sink_frames, cfg.ema_alpha, rope_len, positions=cfg.positions)

    def admit(self, segment: Segment) -> None:
        self.segments.extend(split_sink(segment, self.sink_frames, self.sink_origin))
        recent = [s for s in self.segments if s.kind != "sink"]
        newest = max(int(s.t.max()) for s in recent) if recent else 0
        oldest_kept = newest - self.window_frames + 1
        evicted = [(s, s.t < oldest_kept) for s in recent if bool((s.t < oldest_kept).any())]
        if evicted:
            self._fold(evicted)
        for seg in recent:
            seg.keep(seg.t >= oldest_kept)
        self.segments = [s for s in self.segments if s.num_tokens > 0]

    def _fold(self, evicted: list[tuple[Segment, torch.Tensor]]) -> None:
        """Fold the evicted tokens into the sink segments (see the class docstring)."""
        sink = [s for s in self.segments if s.kind == "sink"]
        if not sink:
            return
        grid = self._grid[0] * self._grid[1]
        t = torch.cat([s.t[m] for s, m in evicted])
        hw = torch.cat([s.hw[m] for s, m in evicted])
        frames = torch.unique(t)
        rank = torch.searchsorted(frames, t)
        sink_count = len({f for s in sink for f in s.distinct_frames})
        blend = len(frames) == sink_count
        lut = torch.full((len(frames) * grid,), -1, dtype=torch.long)
        lut[rank * grid + hw] = torch.arange(len(t))
        unrotated = [s.unrotated_keys() for s, _ in evicted]  # resident segments: un-rotated once each
        keys = [torch.cat([k[layer][:, m.nonzero().squeeze(1).to(k[layer].device)]
                           for k, (_, m) in zip(unrotated, evicted)], 1) for layer in range(self.num_layers)]
        gathered = [s.values for s, _ in evicted]  # resident segments: gathered once each
        values = [torch.cat([v[layer][:, m.nonzero().squeeze(1).to(v[layer].device)]
                             for v, (_, m) in zip(gathered, evicted)], 1) for layer in range(self.num_layers)]
        for seg in sink:
            j = seg.t - self.sink_origin
            idx = torch.where(j < len(frames), lut[(j * grid + seg.hw).clamp(max=len(lut) - 1)], -1)
            hit = (idx >= 0).nonzero().squeeze(1)
            if len(hit) == 0:
                continue
            src = idx[hit]
            seg.store([self._mix(k, ek, hit, src, blend) for k, ek in zip(seg.unrotated_keys(), keys)],
                      [self._mix(v, ev, hit, src, blend) for v, ev in zip(seg.values, values)])
            seg.version += 1  # the arena restages it

    def _mix(self, cur: torch.Tensor, new: torch.Tensor, hit: torch.Tensor, src: torch.Tensor, blend: bool):
        out = cur.clone()
        hit, src = hit.to(cur.device), src.to(cur.device)
        part = new.index_select(1, src)
        if blend:
            part = self.alpha * cur.index_select(1, hit) + (1 - self.alpha) * part
        out[:, hit] = part
        return out


@policy("infinity_rope")
class InfinityRopeCache(RollingCache):
    """Infinity-RoPE's cache (read in yesiltepe-hidir/infinity-rope at 63d7b84, ``wan/modules/causal_model.py``
    ``CausalWanSelfAttention.forward``, ``block_relativistic_rope``, ``rope_cut``; ``pipeline/causal_inference.py``
    ``kv_flush``): a sink plus a rolling window (``local_attn_size`` 6, ``sink_size`` 1: sink 1 + window 2 + the
    3-frame block), keys rotated per call at positions 0, 1, ... over [sink ; window ; current] (block-relative),
    which is the base layout. A prompt change (its KV flush) keeps the sink and the 2 newest frames, which is what the
    window already holds: tokentrim's ``keep`` switch. A scene cut (``rope_cut`` switch) places the cut block, for
    all its forwards, at positions ``cut_position``.. (45: ``transition_from``) while its context keeps 0, 1, ...: a
    jump in RoPE distance for one block; the next block is laid out contiguously again.

    Args:
        num_layers, rope_len, arena, positions: as :class:`KVCache`'s.
        window_frames: cached frames besides the sink (Infinity-RoPE: 2).
        sink_frames: the first frames of the video (1).
        cut_position: where a RoPE cut places the cut block's first frame (45).
    """

    def __init__(self, num_layers: int, window_frames: int | None = DEFAULTS.window_frames,
                 sink_frames: int = DEFAULTS.sink_frames, cut_position: int = 45, rope_len: int = 1024,
                 arena: bool = True, positions: str = DEFAULTS.positions):
        super().__init__(num_layers, window_frames, sink_frames, rope_len, arena, positions)
        self.cut_position = cut_position
        self.cut_frame: int | None = None  # the first frame of the block a scene cut applies to
        self._cutting = False

    def rope_cut(self, next_frame: int) -> None:
        """Lay out the block starting at ``next_frame`` after a RoPE cut; recorded in the journal (replay hook).

        Args:
            next_frame: the absolute latent frame the cut block starts at.
        """
        if self.journal is not None:
            self.journal.add("rope_cut", int(next_frame))
        self.cut_frame = int(next_frame)

    def begin(self, frames, grid, write, first_step=False, rope=None):
        super().begin(frames, grid, write, first_step, rope)
        self._cutting = self.cut_frame is not None and int(self.current_frames[0]) == self.cut_frame
        if self._cutting:
            if self.cut_position + len(frames) > self.rope_len:
                raise ValueError(f"a RoPE cut at position {self.cut_position} does not fit the {self.rope_len}-entry "
                                 "RoPE table")
            _, inverse = torch.unique(self.current_frames, return_inverse=True)
            self._current_pos = inverse + self.cut_position

    def layout(self, segs):
        if not self._cutting:
            return super().layout(segs)
        key = tuple(id(s) for s in segs)
        if key not in self._layouts:
            context = sorted({f for s in segs for f in s.distinct_frames})
            pos = {f: i for i, f in enumerate(context)}
            pos.update(zip(self.current_frames.tolist(), self._current_pos.tolist()))
            self._layouts[key] = Layout(pos, self._current_pos)
        return self._layouts[key]
