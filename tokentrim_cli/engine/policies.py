"""Bounded cache policies beyond the plain rolling window: Rolling Forcing's reference context, three-partition
(PackForcing), deep sink (Deep Forcing), and the factory that builds the policy a preset names (Reward Forcing's EMA
sink and Infinity-RoPE's cache live in ``sink_policies.py``).

Rolling Forcing (TencentARC/RollingForcing, read for its rules): one attention call spans at most
``span_frames`` (21) latent frames. A denoising window attends to the sink (the first block, re-aligned right
before the rest) plus as many of the newest clean frames as the span leaves room for: one block beside a full
5-block window, then 2, 3, 4 and 5 blocks as the window shrinks while the last blocks are flushed. A context
(write) pass attends to the newest ``span_frames`` cached frames including itself, sink or not: once the video
is longer than the span, that is the last 18 clean frames and no sink.

Three-partition (arXiv 2603.25730): sink frames at full resolution, never evicted, compressed or pruned; recent
frames at full resolution; blocks that age out of recent are compressed (training-free pooling here; the paper's
compressor is trained and unpublished) and kept up to ``mid_capacity`` blocks. At the first denoising step of
each block, every mid block is scored by query-key affinity and only the top ``mid_top_k`` join attention for
that block's steps. Positions are re-packed by the base cache's layout (``positions: packed``: sink and selected
mid blocks sit right before the recent frames), so memory and positions stay bounded at any length.

Granularity: a written block (one context pass) leaves "recent" as a whole once none of its frames is among the
last ``recent_frames``; recent therefore holds between ``recent_frames`` and ``recent_frames + block - 1``
frames. Each aged-out block becomes one mid block.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from ..config.settings import Cache
from .cache import DEFAULTS, POLICIES, KVCache, RollingCache, Segment, policy, split_sink
from .sink_policies import EmaSinkCache, InfinityRopeCache  # noqa: F401  (registers them; imported from here)


class Compressor(Protocol):
    """What a three-partition cache turns an aged-out block into."""

    def __call__(self, segment: Segment, grid: tuple[int, int]) -> Segment:
        """Return a smaller stand-in for ``segment`` (kind "mid"), with ``t``/``hw``/``cover`` filled."""


class PoolingCompressor:
    """Average keys and values over (time, height, width) cells: [2, 4, 4] turns 3 x 30 x 52 tokens into 2 x 8 x 13.

    Keys are cached un-rotated, so pooled keys are rotated at the cell's representative position (its first
    frame, its centre token) like any other key.

    Args:
        factors: the cell's size in (frames, token rows, token columns) (``cache.compression``).
    """

    def __init__(self, factors: tuple[int, int, int] = DEFAULTS.compression):
        self.ft, self.fh, self.fw = (int(f) for f in factors)

    def __call__(self, seg: Segment, grid: tuple[int, int]) -> Segment:
        gh, gw = grid
        ch_n, cw_n = math.ceil(gh / self.fh), math.ceil(gw / self.fw)
        t0 = int(seg.t.min())
        h, w = seg.hw // gw, seg.hw % gw
        cell = (((seg.t - t0) // self.ft) * ch_n + h // self.fh) * cw_n + w // self.fw
        cells, inverse = torch.unique(cell, return_inverse=True)
        counts = torch.bincount(inverse, minlength=len(cells)).float()
        ct, rest = cells // (ch_n * cw_n), cells % (ch_n * cw_n)
        ch, cw = rest // cw_n, rest % cw_n
        t = t0 + ct * self.ft
        hw = (ch * self.fh + self.fh // 2).clamp(max=gh - 1) * gw + (cw * self.fw + self.fw // 2).clamp(max=gw - 1)
        dh, dw = torch.meshgrid(torch.arange(self.fh), torch.arange(self.fw), indexing="ij")
        ph, pw = ch[:, None] * self.fh + dh.flatten(), cw[:, None] * self.fw + dw.flatten()
        cover = torch.where((ph < gh) & (pw < gw), ph * gw + pw, torch.full_like(ph, -1))

        def pool(x):
            idx = inverse.to(x.device)
            out = x.new_zeros(x.shape[0], len(cells), *x.shape[2:], dtype=torch.float32)
            out.index_add_(1, idx, x.float())
            return (out / counts.to(x.device).view(1, -1, 1, 1)).to(x.dtype)

        return Segment(
            t=t,
            hw=hw,
            keys=[pool(k) for k in seg.unrotated_keys()],
            values=[pool(v) for v in seg.values],
            kind="mid",
            frames=seg.frames,
            cover=cover,
        )


def half_heads(query: torch.Tensor) -> torch.Tensor:
    """Every other head: the half of the heads that scores context.

    Args:
        query: (B, n, heads, d).

    Returns:
        (heads / 2,) long head indices on the query's device.
    """
    return torch.arange(0, query.shape[2], 2, device=query.device)


def query_summary(query: torch.Tensor, samples: int, heads: torch.Tensor) -> torch.Tensor:
    """Sum of a uniform subsample of the (un-rotated) queries over the chosen heads.

    Args:
        query: (B, n, heads, d) un-rotated queries.
        samples: queries to sample (all when fewer).
        heads: (h,) the heads to keep.

    Returns:
        (B, h, d) float32.
    """
    n = query.shape[1]
    idx = torch.linspace(0, n - 1, min(samples, n)).round().long().to(query.device)
    return query.index_select(1, idx).index_select(2, heads).float().sum(1)


def affinity(summary: torch.Tensor, keys: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """Summed scaled dot products of the sampled queries (their ``query_summary``) with ``keys``.

    Both are un-rotated (content affinity, independent of where re-packing will put the block);
    sum_i sum_j q_i . k_j = (sum_i q_i) . (sum_j k_j), per head and batch item.

    Args:
        summary: (B, h, d) from :func:`query_summary`.
        keys: (B, n, heads, d) one layer's un-rotated keys of a block.
        heads: (h,) the heads ``summary`` was taken over.

    Returns:
        a float32 scalar.
    """
    k = keys.index_select(2, heads).float()
    return (summary * k.sum(1)).sum() / math.sqrt(summary.shape[-1])


def aged_out(recent: list[Segment], recent_frames: int) -> list[Segment]:
    """Recent segments none of whose frames is among the last ``recent_frames``.

    Args:
        recent: the full-resolution recent segments.
        recent_frames: frames that count as recent.
    """
    if not recent:
        return []
    newest = max(int(s.t.max()) for s in recent)
    return [s for s in recent if int(s.t.max()) <= newest - recent_frames]


@policy("three_partition")
class ThreePartitionCache(KVCache):
    """Three partitions (module docstring): a sink, recent frames, and compressed mid blocks of which the top K join
    attention.

    Args:
        num_layers, rope_len, arena, positions: as :class:`KVCache`'s.
        sink_frames: the first frames of the video, never evicted, compressed or pruned.
        recent_frames: the newest frames kept at full resolution (whole blocks: up to ``block - 1`` more).
        mid_capacity: compressed blocks kept (0: aged-out blocks are dropped).
        mid_top_k: mid blocks that join attention, chosen per block by query-key affinity.
        compressor: turns an aged-out block into its mid stand-in (default: pooling by the settings' factors).
        selection: ``"per_layer"`` (each layer picks its own top K) or ``"shared"`` (layer 0's pick for all).
        query_samples: queries sampled to score the mid blocks.
    """

    def __init__(  # noqa: PLR0913 - one keyword per setting of the policy (from_settings fills them)
        self,
        num_layers: int,
        sink_frames: int = DEFAULTS.sink_frames,
        recent_frames: int = DEFAULTS.recent_frames,
        mid_capacity: int = DEFAULTS.mid_capacity,
        mid_top_k: int = DEFAULTS.mid_top_k,
        compressor: Compressor | None = None,
        selection: str = DEFAULTS.selection,
        query_samples: int = DEFAULTS.query_samples,
        rope_len: int = 1024,
        arena: bool = True,
        positions: str = DEFAULTS.positions,
    ):
        super().__init__(num_layers, rope_len, arena, positions)
        if selection not in ("shared", "per_layer"):
            raise ValueError("selection must be 'shared' or 'per_layer'")
        self.sink_frames, self.recent_frames = sink_frames, recent_frames
        self.mid_capacity, self.mid_top_k = mid_capacity, mid_top_k
        self.compressor = compressor or PoolingCompressor()
        self.selection, self.query_samples = selection, query_samples
        self._chosen: dict[int, list[Segment]] = {}  # selection per layer (or key 0 when shared) for this block

    @classmethod
    def from_settings(cls, cfg: Cache, num_layers: int, rope_len: int) -> KVCache:
        return cls(num_layers, sink_frames=cfg.sink_frames, recent_frames=cfg.recent_frames,
                   mid_capacity=cfg.mid_capacity, mid_top_k=cfg.mid_top_k, compressor=PoolingCompressor(cfg.compression),
                   selection=cfg.selection, query_samples=cfg.query_samples, rope_len=rope_len,
                   positions=cfg.positions)

    def tail_frames(self, block_frames: int, room: int) -> int:
        """Recent frames rounded up to whole blocks, plus ``mid_capacity`` blocks (compressed as they age out)."""
        return block_frames * (math.ceil(self.recent_frames / block_frames) + self.mid_capacity)

    @property
    def sink(self) -> list[Segment]:
        """The sink's segments."""
        return [s for s in self.segments if s.kind == "sink"]

    @property
    def mid(self) -> list[Segment]:
        """The compressed mid blocks, oldest first."""
        return [s for s in self.segments if s.kind == "mid"]

    @property
    def recent(self) -> list[Segment]:
        """The full-resolution recent blocks."""
        return [s for s in self.segments if s.kind == "recent"]

    def begin(self, frames, grid, write, first_step=False, rope=None):
        super().begin(frames, grid, write, first_step, rope)
        if first_step:
            self._chosen = {}

    def admit(self, segment: Segment) -> None:
        self.segments.extend(split_sink(segment, self.sink_frames, self.sink_origin))
        for seg in aged_out(self.recent, self.recent_frames):
            i = self.segments.index(seg)
            if self.mid_capacity > 0:
                self.segments[i] = self.compressor(seg, self._grid)
            else:
                del self.segments[i]
        mid = self.mid
        for old in mid[: max(0, len(mid) - self.mid_capacity)]:
            self.segments.remove(old)

    def select(self, layer: int, query: torch.Tensor) -> list[Segment]:
        mid = self.mid
        if len(mid) <= self.mid_top_k:
            return self.segments
        key = 0 if self.selection == "shared" else layer
        if key not in self._chosen:  # scored at a block's first step, reused for its later steps
            self._chosen[key] = self._score(layer, query, mid)
        chosen = {id(s) for s in self._chosen[key]}
        return [s for s in self.segments if s.kind != "mid" or id(s) in chosen]

    def choice(self) -> dict[int, list[tuple]] | None:
        """The mid blocks chosen for this block (by their frames), per layer (or key 0 when shared)."""
        live = {id(s) for s in self.segments}
        return {k: [s.frames for s in chosen if id(s) in live] for k, chosen in self._chosen.items()}

    def restore_choice(self, choice) -> None:
        by_frames = {s.frames: s for s in self.mid}
        self._chosen = {k: [by_frames[f] for f in frames] for k, frames in (choice or {}).items()}

    def _score(self, layer: int, query: torch.Tensor, mid: list[Segment]) -> list[Segment]:
        heads = half_heads(query)
        summary = query_summary(query, self.query_samples, heads)  # once, not once per mid block
        scores = torch.stack([affinity(summary, s.unrotated_keys()[layer], heads) for s in mid])
        top = torch.topk(scores, self.mid_top_k).indices.tolist()
        return [mid[i] for i in sorted(top)]


@policy("rolling_forcing")
class RollingForcingCache(KVCache):
    """Rolling Forcing's reference context (see the module docstring); keeps the sink and the clean frames the
    next write pass needs (``span_frames`` minus one block).

    Args:
        num_layers, rope_len, arena, positions: as :class:`KVCache`'s.
        sink_frames: the first frames of the video (Rolling Forcing: its first block), never evicted or pruned.
        span_frames: the most latent frames one attention call spans, current frames included (21).
    """

    def __init__(self, num_layers: int, sink_frames: int = DEFAULTS.sink_frames,
                 span_frames: int = DEFAULTS.span_frames, rope_len: int = 1024, arena: bool = True,
                 positions: str = DEFAULTS.positions):
        super().__init__(num_layers, rope_len, arena, positions)
        self.sink_frames, self.span_frames = sink_frames, span_frames

    @classmethod
    def from_settings(cls, cfg: Cache, num_layers: int, rope_len: int) -> KVCache:
        return cls(num_layers, cfg.sink_frames, cfg.span_frames, rope_len, positions=cfg.positions)

    def tail_frames(self, block_frames: int, room: int) -> int:
        """The span less the block being written."""
        return self.span_frames - block_frames

    def admit(self, segment: Segment) -> None:
        self.segments.extend(split_sink(segment, self.sink_frames, self.sink_origin))
        block = len(segment.frames)
        oldest_kept = max(segment.frames) + 1 + block - self.span_frames  # the next write pass's first context frame
        for seg in self.segments:
            if seg.kind != "sink":
                seg.keep(seg.t >= oldest_kept)
        self.segments = [s for s in self.segments if s.num_tokens > 0]

    def select(self, layer: int, query: torch.Tensor) -> list[Segment]:
        current = self.current_frames
        if self.writing:
            first = int(current.min()) + len(current) - self.span_frames
            return [s for s in self.segments if s.distinct_frames[-1] >= first]
        sink = [s for s in self.segments if s.kind == "sink"]
        room = self.span_frames - len(current) - sum(len(s.distinct_frames) for s in sink)
        clean = []
        for seg in reversed([s for s in self.segments if s.kind != "sink"]):  # newest first
            room -= len(seg.distinct_frames)
            if room < 0:
                break
            clean.insert(0, seg)
        return sink + clean


@policy("deep_sink")
class DeepSinkCache(RollingCache):
    """Deep Forcing style: a deep sink (~10 frames) plus recent frames, and a token budget in between.

    Frames leaving the recent window are kept token by token up to ``budget_frames`` frames' worth of tokens,
    chosen by importance (query-key affinity with the current block's queries, scored at a block's first step);
    the rest are dropped. Positions are re-aligned by the shared layout (the sink sits right before the rest).

    Args:
        num_layers, rope_len, arena, positions: as :class:`KVCache`'s.
        sink_frames: the first frames of the video, never evicted or pruned.
        recent_frames: the newest frames kept whole (whole blocks).
        budget_frames: older frames' worth of tokens kept, the most important ones.
        query_samples: queries sampled to score the older tokens.
    """

    def __init__(self, num_layers: int, sink_frames: int = DEFAULTS.sink_frames,
                 recent_frames: int = DEFAULTS.recent_frames, budget_frames: int = DEFAULTS.budget_frames,
                 query_samples: int = DEFAULTS.query_samples, rope_len: int = 1024, arena: bool = True,
                 positions: str = DEFAULTS.positions):
        super().__init__(num_layers, window_frames=None, sink_frames=sink_frames, rope_len=rope_len, arena=arena,
                         positions=positions)
        self.recent_frames, self.budget_frames, self.query_samples = recent_frames, budget_frames, query_samples

    @classmethod
    def from_settings(cls, cfg: Cache, num_layers: int, rope_len: int) -> KVCache:
        return cls(num_layers, cfg.sink_frames, cfg.recent_frames, cfg.budget_frames, cfg.query_samples, rope_len,
                   positions=cfg.positions)

    def tail_frames(self, block_frames: int, room: int) -> int:
        """Recent frames plus the budget's frames in full (the budget trims them at the next block's first step)."""
        return self.recent_frames + self.budget_frames

    def admit(self, segment: Segment) -> None:
        self.segments.extend(split_sink(segment, self.sink_frames, self.sink_origin))
        for seg in aged_out([s for s in self.segments if s.kind == "recent"], self.recent_frames):
            seg.kind = "mid"

    def begin(self, frames, grid, write, first_step=False, rope=None):
        super().begin(frames, grid, write, first_step, rope)
        self._first = first_step

    def select(self, layer: int, query: torch.Tensor) -> list[Segment]:
        if self._first and layer == 0:
            self._trim(query)
        return self.segments

    def _trim(self, query: torch.Tensor) -> None:
        mid = [s for s in self.segments if s.kind == "mid"]
        h, w = self._grid
        budget = self.budget_frames * h * w
        total = sum(s.num_tokens for s in mid)
        if total <= budget:
            return
        heads = half_heads(query)
        qsum = query_summary(query, self.query_samples, heads)  # (B, h', d)
        scores = torch.cat([(s.unrotated_keys()[0].index_select(2, heads).float() * qsum[:, None]).sum((0, 2, 3)).cpu() for s in mid])
        keep = torch.zeros(total, dtype=torch.bool)
        keep[torch.topk(scores, budget).indices] = True
        self.trim(keep)

    def trim(self, keep: torch.Tensor) -> None:
        """Keep the mid tokens where ``keep`` is true; recorded in the journal, and its replay hook.

        Args:
            keep: (n,) bool over every mid segment's tokens, in segment order.
        """
        if self.journal is not None:
            self.journal.add("trim", keep)
        mid = [s for s in self.segments if s.kind == "mid"]
        start = 0
        for s in mid:
            n = s.num_tokens  # before keep() shrinks it: the next segment's mask starts after all of this one's
            s.keep(keep[start : start + n])
            start += n
        self.segments = [s for s in self.segments if s.num_tokens > 0]


def make_cache(cfg: Cache, num_layers: int, rope_len: int) -> KVCache:
    """The KV-cache policy a preset's ``cache:`` section names (``POLICIES``), built from that section.

    Args:
        cfg: the typed ``cache:`` section (``policy`` and the parameters that policy reads).
        num_layers: transformer blocks that read and write the cache.
        rope_len: length of the model's temporal RoPE table.
    """
    cls = POLICIES.get(cfg.policy_name)
    if cls is None:
        raise ValueError(f"unknown cache policy {cfg.policy!r}")
    return cls.from_settings(cfg, num_layers, rope_len)
