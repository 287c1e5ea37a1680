"""Block-causal KV cache: the one interface between attention processors and cache policies.

Keys are cached *un-rotated*, each token with its absolute latent frame index ``t`` and spatial index ``hw``.
RoPE is applied at attention time from positions the cache lays out, so a policy can drop, prune, compress or
re-pack entries freely and a run has no length ceiling.

Position layout (shared by every policy): the distinct frame indices that take part in one attention call get
consecutive temporal positions in time order (a dense rank), shifted to the absolute frame index when that fits
in the RoPE table. Contiguous frames therefore keep their distances (recent and current frames never move
relative to each other), while gaps left by eviction or selection are closed: sink and selected mid blocks end
up packed right before the recent frames. For a run without gaps that fits the table, positions equal the
absolute frame indices of the reference implementations, so outputs match them exactly.

Interface used by the model (per forward): ``begin`` -> per layer ``context`` (+ ``store`` on write passes)
-> ``end``. Interface used by samplers, the pruning controller and the CLI: ``prune``, ``nbytes``,
``num_tokens``, ``frames``. Policies subclass :class:`KVCache` and override ``admit`` (what happens when a
written block arrives) and optionally ``select`` (which segments join attention for a layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


@dataclass(eq=False)  # identity semantics: segments are compared by object, never by tensor contents
class Segment:
    """Tokens written by one context pass (one block), or a compressed stand-in for one.

    ``t`` and ``hw`` hold, per token, the absolute latent frame index and the row-major spatial index in the
    latent token grid. ``keys``/``values`` hold one tensor of shape (B, n, heads, head_dim) per layer.
    """

    t: torch.Tensor
    hw: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    kind: str = "recent"  # "sink" (never pruned/evicted), "recent", or "mid" (compressed)
    frames: tuple[int, ...] = field(default=())
    cover: torch.Tensor | None = None  # compressed tokens: (n, c) spatial indices each one stands for, -1 padded

    @property
    def num_tokens(self) -> int:
        return int(self.t.numel())

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in zip(self.keys, self.values))

    @property
    def prunable(self) -> bool:
        return self.kind != "sink"

    def prune_mask(self, hw_indices: torch.Tensor) -> torch.Tensor:
        """Tokens to keep when ``hw_indices`` are pruned; a compressed token goes when half its cover does."""
        if self.cover is None:
            return ~torch.isin(self.hw, hw_indices)
        hit = torch.isin(self.cover, hw_indices).sum(1)
        return 2 * hit < (self.cover >= 0).sum(1)

    def keep(self, mask: torch.Tensor) -> int:
        """Keep only tokens where ``mask`` is true; return how many were removed."""
        removed = int((~mask).sum())
        if removed:
            idx = mask.nonzero().squeeze(1)
            self.t, self.hw = self.t[idx], self.hw[idx]
            if self.cover is not None:
                self.cover = self.cover[idx]
            dev = self.keys[0].device
            idx = idx.to(dev)
            self.keys = [k.index_select(1, idx) for k in self.keys]
            self.values = [v.index_select(1, idx) for v in self.values]
        return removed


class Context(NamedTuple):
    """What one self-attention layer attends to besides the current tokens."""

    keys: torch.Tensor  # (B, n, heads, head_dim), un-rotated
    values: torch.Tensor
    t_pos: torch.Tensor  # (n,) temporal RoPE positions of the context tokens
    hw: torch.Tensor  # (n,) spatial indices of the context tokens
    current_t_pos: torch.Tensor  # (F,) temporal RoPE positions of the current frames


class KVCache:
    """Unbounded cache (keeps every block): the base every policy refines.

    Args:
        num_layers: transformer blocks that read and write this cache.
        rope_len: length of the temporal RoPE table; every position handed out stays below it.
    """

    def __init__(self, num_layers: int, rope_len: int = 1024):
        self.num_layers = num_layers
        self.rope_len = rope_len
        self.segments: list[Segment] = []
        self._frames: torch.Tensor | None = None
        self._grid: tuple[int, int] | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None
        self._plans: dict[tuple[int, ...], Context] = {}
        self.step_in_block = 0

    # ------------------------------------------------------------------ model side
    def begin(self, frames: torch.Tensor, grid: tuple[int, int], write: bool, first_step: bool = False) -> None:
        """Start one model forward over the latent frames ``frames`` (absolute indices) on an (h, w) token grid.

        ``first_step`` marks the first denoising forward of a new block, when policies that select context
        (top-K mid blocks) score and fix their choice for the block's remaining steps.
        """
        self._frames = frames.detach().cpu().long()
        self._grid = grid
        self._pending = [None] * self.num_layers if write else None
        self._plans = {}
        self.step_in_block = 0 if first_step else self.step_in_block + 1

    def context(self, layer: int, query: torch.Tensor) -> Context:
        """Keys/values/positions the current tokens of ``layer`` attend to (before themselves)."""
        segs = self.select(layer, query)
        key = tuple(id(s) for s in segs)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._layout(segs)
            self._plans[key] = plan
        if not segs:
            empty = query.new_zeros(query.shape[0], 0, query.shape[2], query.shape[3])
            return Context(empty, empty, plan.t_pos, plan.hw, plan.current_t_pos)
        keys = torch.cat([s.keys[layer] for s in segs], 1) if len(segs) > 1 else segs[0].keys[layer]
        values = torch.cat([s.values[layer] for s in segs], 1) if len(segs) > 1 else segs[0].values[layer]
        return Context(keys, values, plan.t_pos, plan.hw, plan.current_t_pos)

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Record the current tokens' un-rotated keys/values of ``layer`` during a write (context) pass."""
        if self._pending is not None:
            self._pending[layer] = (keys, values)

    def end(self, completed: bool = True) -> None:
        """Finish the forward; on a completed write pass, hand the new block to the policy. A forward cut short
        (an interrupt mid-pass) stores nothing, so the cache stays as it was and the original error surfaces."""
        pending, self._pending = self._pending, None
        if pending is None or not completed:
            return
        if any(p is None for p in pending):
            raise RuntimeError("write pass did not store every layer")
        frames = self._frames
        h, w = self._grid
        n = h * w
        t = frames.repeat_interleave(n)
        hw = torch.arange(n).repeat(len(frames))
        seg = Segment(
            t=t,
            hw=hw,
            keys=[k.detach() for k, _ in pending],
            values=[v.detach() for _, v in pending],
            frames=tuple(int(f) for f in frames),
        )
        self.admit(seg)

    # ------------------------------------------------------------------ policy hooks
    def admit(self, segment: Segment) -> None:
        """Policy hook: a freshly written block arrives. The base keeps everything."""
        self.segments.append(segment)

    def select(self, layer: int, query: torch.Tensor) -> list[Segment]:
        """Policy hook: segments (in time order) that ``layer`` attends to in this forward."""
        return self.segments

    # ------------------------------------------------------------------ controller / reporting side
    def prune(self, hw_indices: torch.Tensor) -> int:
        """Remove every cached token whose spatial index is in ``hw_indices`` from all prunable segments."""
        hw_indices = torch.as_tensor(hw_indices).long().cpu()
        removed = 0
        for seg in self.segments:
            if seg.prunable:
                removed += seg.keep(seg.prune_mask(hw_indices))
        self.segments = [s for s in self.segments if s.num_tokens > 0]
        return removed

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.segments)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.segments)

    @property
    def frames(self) -> list[int]:
        """Distinct absolute latent frames that have at least one cached token."""
        if not self.segments:
            return []
        return torch.unique(torch.cat([s.t for s in self.segments])).tolist()

    def reset(self) -> None:
        self.segments = []

    # ------------------------------------------------------------------ positions
    @property
    def current_positions(self) -> torch.Tensor:
        """Temporal RoPE positions of the current frames: their absolute indices while they fit the table."""
        frames = self._frames
        distinct, inverse = torch.unique(frames, return_inverse=True)
        start = max(0, min(int(distinct[0]), self.rope_len - len(distinct)))
        return inverse + start

    def _layout(self, segs: list[Segment]) -> Context:
        frames = self._frames
        cur = self.current_positions
        ctx_t = torch.cat([s.t for s in segs]) if segs else torch.zeros(0, dtype=torch.long)
        ctx_hw = torch.cat([s.hw for s in segs]) if segs else torch.zeros(0, dtype=torch.long)
        distinct, inverse = torch.unique(torch.cat([ctx_t, frames]), return_inverse=True)
        first_current = inverse[len(ctx_t)]
        pos = inverse - first_current + cur[0]
        if len(pos) and (int(pos.min()) < 0 or int(pos.max()) >= self.rope_len):
            raise ValueError(
                f"attention spans {len(distinct)} latent frames but the RoPE table has {self.rope_len} "
                "positions; use a smaller cache window or a model with a longer RoPE table"
            )
        return Context(None, None, pos[: len(ctx_t)], ctx_hw, pos[len(ctx_t) :])


class RollingCache(KVCache):
    """Self Forcing's rolling window, optionally with an attention sink (LongLive: sink 3 + window 9).

    Args:
        window_frames: most recent latent frames kept (besides the sink); None keeps everything.
        sink_frames: the first frames of the video, kept for the whole run and never pruned.
    """

    def __init__(self, num_layers: int, window_frames: int | None = None, sink_frames: int = 0, rope_len: int = 1024):
        super().__init__(num_layers, rope_len)
        self.window_frames = window_frames
        self.sink_frames = sink_frames

    def admit(self, segment: Segment) -> None:
        for part in split_sink(segment, self.sink_frames):
            self.segments.append(part)
        if self.window_frames is None:
            return
        recent = [s for s in self.segments if s.kind != "sink"]
        newest = max(int(s.t.max()) for s in recent) if recent else 0
        oldest_kept = newest - self.window_frames + 1
        for seg in recent:
            seg.keep(seg.t >= oldest_kept)
        self.segments = [s for s in self.segments if s.num_tokens > 0]


def split_sink(segment: Segment, sink_frames: int) -> list[Segment]:
    """Split a written block into its sink part (frames < ``sink_frames``) and the rest."""
    if sink_frames <= 0 or int(segment.t.min()) >= sink_frames:
        return [segment]
    in_sink = segment.t < sink_frames
    parts = []
    for mask, kind in ((in_sink, "sink"), (~in_sink, segment.kind)):
        if bool(mask.any()):
            idx = mask.nonzero().squeeze(1)
            didx = idx.to(segment.keys[0].device)
            parts.append(
                Segment(
                    t=segment.t[idx],
                    hw=segment.hw[idx],
                    keys=[k.index_select(1, didx) for k in segment.keys],
                    values=[v.index_select(1, didx) for v in segment.values],
                    kind=kind,
                    frames=tuple(sorted(set(segment.t[idx].tolist()))),
                )
            )
    return parts
