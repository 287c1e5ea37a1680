"""A segment of a KV cache: the tokens one context pass wrote (or a compressed stand-in), with their frame and
spatial indices, kept loose (un-rotated tensors of its own) or resident in a cache's arena (``arena.py``)."""

from __future__ import annotations

import torch


class Segment:
    """Tokens written by one context pass (one block), or a compressed stand-in for one.

    ``t`` and ``hw`` hold, per token, the absolute latent frame index and the row-major spatial index in the
    latent token grid. :meth:`unrotated_keys` and ``values`` read one un-rotated tensor of shape
    (B, n, heads, head_dim) per layer, whether the segment keeps them itself (loose) or lives in a cache's arena
    (resident, stored rotated: reading its keys un-rotates every layer).

    Args:
        t: (n,) absolute latent frame index of each token.
        hw: (n,) row-major spatial index of each token in the latent token grid.
        keys, values: per layer, (B, n, heads, head_dim) un-rotated keys and values (None for a resident segment).
        kind: ``"sink"`` (never pruned or evicted), ``"recent"`` or ``"mid"`` (compressed).
        frames: the latent frames the segment was written from (or stands for, compressed).
        cover: for compressed tokens, (n, c) spatial indices each one stands for, -1 padded.
    """

    def __init__(self, t, hw, keys=None, values=None, kind: str = "recent", frames=(), cover=None):
        self.t, self.hw = t, hw
        self._keys, self._values = keys, values
        self.kind = kind  # "sink" (never pruned/evicted), "recent", or "mid" (compressed)
        self.frames = tuple(frames)
        self.cover = cover  # compressed tokens: (n, c) spatial indices each one stands for, -1 padded
        self.arena = None  # the Arena holding it while resident
        self.rows: torch.Tensor | None = None  # its rows there
        self.rot: list[dict[int, int]] | None = None  # per layer: frame -> position its stored keys are rotated at
        self.version = 0  # bumped whenever tokens go, so copies of it are rebuilt
        self._distinct: tuple[int, tuple[int, ...]] | None = None

    def unrotated_keys(self) -> list[torch.Tensor]:
        """Per layer, (B, n, heads, head_dim) un-rotated keys: a resident segment's are un-rotated copies, made on
        every call (one RoPE turn per layer), so read them once."""
        return self.arena.unrotated(self) if self.arena is not None else self._keys

    @property
    def values(self) -> list[torch.Tensor]:
        """Per layer, (B, n, heads, head_dim) values."""
        return self.arena.values(self) if self.arena is not None else self._values

    def store(self, keys: list[torch.Tensor] | None, values: list[torch.Tensor] | None) -> None:
        """Hold keys and values itself (loose).

        Args:
            keys, values: per layer, (B, n, heads, head_dim) un-rotated; None, None when an arena takes them.
        """
        self._keys, self._values = keys, values

    @property
    def num_tokens(self) -> int:
        """n, its tokens (per batch item)."""
        return int(self.t.numel())

    @property
    def nbytes(self) -> int:
        """Bytes of its keys and values, every layer and batch item."""
        if self.arena is not None:
            return self.num_tokens * self.arena.token_bytes
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in zip(self._keys, self._values))

    @property
    def distinct_frames(self) -> tuple[int, ...]:
        """The frames its tokens belong to (a compressed segment has one per temporal cell)."""
        if self._distinct is None or self._distinct[0] != self.version:
            self._distinct = (self.version, tuple(torch.unique(self.t).tolist()))
        return self._distinct[1]

    @property
    def prunable(self) -> bool:
        """TokenTrim may prune it (every kind but the sink)."""
        return self.kind != "sink"

    def prune_mask(self, hw_indices: torch.Tensor) -> torch.Tensor:
        """Tokens to keep when ``hw_indices`` are pruned; a compressed token goes when half its cover does.

        Args:
            hw_indices: (k,) spatial indices to prune.

        Returns:
            (n,) bool, True for tokens that stay.
        """
        if self.cover is None:
            return ~torch.isin(self.hw, hw_indices)
        hit = torch.isin(self.cover, hw_indices).sum(1)
        return 2 * hit < (self.cover >= 0).sum(1)

    def keep(self, mask: torch.Tensor) -> int:
        """Keep only tokens where ``mask`` is true.

        Args:
            mask: (n,) bool.

        Returns:
            how many tokens were removed.
        """
        removed = int((~mask).sum())
        if removed:
            idx = mask.nonzero().squeeze(1)
            self.t, self.hw = self.t[idx], self.hw[idx]
            if self.cover is not None:
                self.cover = self.cover[idx]
            if self.arena is not None:  # the arena closes the gaps when the cache syncs
                self.rows = self.rows[idx]
            else:
                didx = idx.to(self._keys[0].device)
                self._keys = [k.index_select(1, didx) for k in self._keys]
                self._values = [v.index_select(1, didx) for v in self._values]
            self.version += 1
        return removed


def split_sink(segment: Segment, sink_frames: int, origin: int = 0) -> list[Segment]:
    """Split a freshly written (loose) block into its sink part and the rest.

    Args:
        segment: the written block.
        sink_frames: frames in the sink.
        origin: the sink's first frame (moved by a hard cut).

    Returns:
        the parts in time order (the segment itself, marked ``"sink"`` when wholly inside it).
    """
    if sink_frames <= 0:
        return [segment]
    in_sink = (segment.t >= origin) & (segment.t < origin + sink_frames)
    if not bool(in_sink.any()):
        return [segment]
    if bool(in_sink.all()):
        segment.kind = "sink"
        return [segment]
    parts = []
    for mask, kind in ((in_sink, "sink"), (~in_sink, segment.kind)):
        idx = mask.nonzero().squeeze(1)
        didx = idx.to(segment.values[0].device)
        parts.append(
            Segment(
                t=segment.t[idx],
                hw=segment.hw[idx],
                keys=[k.index_select(1, didx) for k in segment.unrotated_keys()],
                values=[v.index_select(1, didx) for v in segment.values],
                kind=kind,
                frames=tuple(sorted(set(segment.t[idx].tolist()))),
            )
        )
    return parts
