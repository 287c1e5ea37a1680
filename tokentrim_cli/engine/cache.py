"""Block-causal KV cache: the one interface between attention processors and cache policies.

Every cached token carries its absolute latent frame index ``t`` and its spatial index ``hw``. Temporal RoPE
positions are not fixed at write time: the cache lays them out for every attention call, so a policy can drop,
prune, compress or re-pack entries freely and a run has no length ceiling.

Position rules (``cache.positions``, shared by every policy; what each reference does: docs/models.md):

- ``packed``: the distinct frames of one attention call get consecutive temporal positions in time order (a dense
  rank), shifted so the current frames sit at their absolute indices while they fit the RoPE table (at its end
  past it). Contiguous frames keep their distances; gaps left by eviction or selection are closed (the sink and
  selected mid blocks sit right before the recent frames), so positions stay bounded at any length.
- ``absolute``: every frame at its absolute latent frame index (the sink keeps the first positions). From the
  first forward whose frames do not fit the table on, the layout is ``packed``; ``fallback_frame`` says where.

Without gaps and inside the table both rules give the absolute frame indices of the reference implementations.

Storage: the fast path (``arena.py``) keeps full-resolution recent segments rotated in one buffer per layer and
reads one view per layer; ``arena=False`` keeps every segment un-rotated and concatenates + rotates per call (the
plain reference the fast path is tested against).

Interface used by the model (per forward): ``begin`` -> per layer ``attend`` -> ``end``; by samplers, the reviewer
(TokenTrim) and the CLI: ``prune``, ``nbytes``, ``num_tokens``, ``frames``; by ``generate --extend``:
``retained_frames``. With a ``journal`` (``journal.py``) every change is recorded so that the cache can be rebuilt
exactly; a policy that decides something outside a write pass records it too (``choice`` / ``restore_choice``;
Deep Forcing's ``trim``, Infinity-RoPE's ``rope_cut``). A policy is a subclass registered with :func:`policy`
that overrides ``from_settings`` (its parameters from the ``cache:`` section), ``admit`` (what happens when a
written block arrives), ``tail_frames`` (what it holds after the sink) and optionally ``select`` (which segments
join attention for a layer; it may look at ``writing`` and ``current_frames``, so a context pass can see another
context than the denoising passes, as in Rolling Forcing's reference).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ..config.settings import Cache
from .arena import Arena
from .rope import Rope, positions, rotate
from .segment import Segment, split_sink  # split_sink: the policies import it from here

POSITIONS = ("packed", "absolute")  # how cached keys are positioned (module docstring)
DEFAULTS = Cache()  # every policy parameter's default is the setting's: constructors read them here
POLICIES: dict[str, type[KVCache]] = {}  # cache.policy -> its class; complete once ``policies.py`` is imported


def policy(name: str) -> Callable[[type[KVCache]], type[KVCache]]:
    """Class decorator: register a cache class as a policy ``cache.policy`` can name (``make_cache``).

    Args:
        name: the policy's name in presets.
    """

    def register(cls: type[KVCache]) -> type[KVCache]:
        POLICIES[name] = cls
        return cls

    return register


class Layout(NamedTuple):
    """Temporal RoPE positions of one attention call."""

    pos: dict[int, int]  # absolute frame index -> position, for context and current frames
    current: torch.Tensor  # (F,) positions of the current frames

    def tokens(self, seg: Segment) -> torch.Tensor:
        """(n,) temporal positions of a segment's n tokens in this call."""
        return positions(seg.t, self.pos)


@policy("full")
class KVCache:
    """Unbounded cache (keeps every block): the base every policy refines.

    Args:
        num_layers: transformer blocks that read and write this cache.
        rope_len: length of the temporal RoPE table; every position handed out stays below it.
        arena: the fast path (rotated keys in preallocated buffers); False for the plain reference path.
        positions: "packed" or "absolute" (the module docstring's position rules).
    """

    sink_frames = 0  # the base keeps no sink; policies with one set theirs

    def __init__(self, num_layers: int, rope_len: int = 1024, arena: bool = True,
                 positions: str = DEFAULTS.positions):
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        self.num_layers = num_layers
        self.rope_len = rope_len
        self.positions = positions
        self.fallback_frame: int | None = None  # absolute: the first frame laid out packed (past the RoPE table)
        self._absolute = False  # this forward's layout is the absolute one
        self.segments: list[Segment] = []
        self.sink_origin = 0  # the sink is the ``sink_frames`` frames from here (moved by a hard cut, see reset)
        self.arena = Arena(num_layers) if arena else None
        self.writing = False
        self.current_frames: torch.Tensor | None = None
        self._grid: tuple[int, int] | None = None
        self._rope: Rope | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None
        self._layouts: dict[tuple[int, ...], Layout] = {}
        self._current_pos: torch.Tensor | None = None
        self.journal = None  # a journal.Journal recording every change (resumable runs), or None

    @classmethod
    def from_settings(cls, cfg: Cache, num_layers: int, rope_len: int) -> KVCache:
        """The policy with its parameters from a preset's ``cache:`` section (fast path).

        Args:
            cfg: the typed ``cache:`` section.
            num_layers: transformer blocks that read and write the cache.
            rope_len: length of the model's temporal RoPE table.
        """
        return cls(num_layers, rope_len, positions=cfg.positions)

    def tail_frames(self, block_frames: int, room: int) -> int:
        """Latent frames after the sink the policy holds once a video is long enough to evict (what continuing a
        video writes as context). The base: everything that fits.

        Args:
            block_frames: latent frames per block.
            room: what an unbounded cache may hold and leave the new part room in the RoPE table.
        """
        return room

    def retained_frames(self, latent_frames: int, block_frames: int,
                        new_frames: int = 0) -> tuple[tuple[int, ...], int]:
        """The latent frames of a video this policy would hold had it generated the video itself: the sink, then
        the last :meth:`tail_frames` (``generate --extend`` writes them as context).

        Args:
            latent_frames: the video's latent frames (L).
            block_frames: latent frames per block.
            new_frames: latent frames to be generated after them (they need room in the RoPE table).

        Returns:
            (the frames in time order, how many of them form the sink).
        """
        room = max(1, self.rope_len - new_frames)
        sink = min(self.sink_frames, latent_frames)
        first_tail = max(sink, latent_frames - max(1, self.tail_frames(block_frames, room)))
        return tuple(range(sink)) + tuple(range(first_tail, latent_frames)), sink

    # ------------------------------------------------------------------ model side
    def begin(self, frames: torch.Tensor, grid: tuple[int, int], write: bool, first_step: bool = False,
              rope: Rope | None = None) -> None:
        """Start one model forward: lay out the current frames' positions.

        Args:
            frames: (F,) absolute latent frame indices of the forward's tokens.
            grid: (h, w) of the latent token grid.
            write: a context pass (its K/V are stored at :meth:`end`).
            first_step: the first denoising forward of a new block, when policies that select context (top-K mid
                blocks, Deep Forcing's budget) score and fix their choice for the block's remaining steps.
            rope: the model's :class:`~.rope.Rope` (None only for bookkeeping without attention).
        """
        self.current_frames = frames.detach().cpu().long()
        self._grid = grid
        self._rope = rope
        self.writing = write
        self._pending = [None] * self.num_layers if write else None
        self._layouts = {}
        distinct, inverse = torch.unique(self.current_frames, return_inverse=True)
        self._absolute = self.positions == "absolute" and int(distinct[-1]) < self.rope_len
        if self._absolute:
            self._current_pos = distinct[inverse]
        else:
            if self.positions == "absolute" and self.fallback_frame is None:
                self.fallback_frame = int(distinct[0])
            start = max(0, min(int(distinct[0]), self.rope_len - len(distinct)))
            self._current_pos = inverse + start
        if self.arena is not None:
            self.arena.begin(len(frames) * grid[0] * grid[1], write, rope)

    def attend(self, layer: int, query: torch.Tensor, k: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor):
        """Keys (rotated) and values ``layer``'s current tokens attend to: [context ; themselves].

        Args:
            layer: the transformer block.
            query: (B, n, heads, d) un-rotated queries (policies score content with them).
            k: (B, n, heads, d) un-rotated keys (a write pass keeps them for segments stored un-rotated).
            k_rot: ``k`` rotated at :attr:`current_positions`.
            v: (B, n, heads, d) values.

        Returns:
            (keys, values), each (B, m + n, heads, d): the m context tokens, then the current ones. Fewer batch
            items than the cache holds read the first ones (Guided's prompt branch alone).
        """
        if self._pending is not None:
            self._pending[layer] = (k, v)
        segs = self.select(layer, query)
        layout = self.layout(segs)
        if self.arena is not None:
            return self.arena.attend(layer, segs, layout, k_rot, v)
        b = k_rot.shape[0]
        keys = [rotate(s.unrotated_keys()[layer][:b], self._rope.tables(layout.tokens(s), s.hw)) for s in segs]
        values = [s.values[layer][:b] for s in segs]
        return torch.cat(keys + [k_rot], 1), torch.cat(values + [v], 1)

    def end(self, completed: bool = True) -> None:
        """Finish the forward; on a completed write pass, hand the new block to the policy (:meth:`admit`).

        Args:
            completed: False for a forward cut short (an interrupt mid-pass): nothing is stored, the cache stays
                as it was and the original error surfaces.
        """
        pending, self._pending = self._pending, None
        if pending is None or not completed:
            return
        if any(p is None for p in pending):
            raise RuntimeError("write pass did not store every layer")
        h, w = self._grid
        n = h * w
        frames = self.current_frames
        seg = Segment(
            t=frames.repeat_interleave(n),
            hw=torch.arange(n).repeat(len(frames)),
            keys=[k.detach() for k, _ in pending],
            values=[v.detach() for _, v in pending],
            frames=tuple(int(f) for f in frames),
        )
        self.admit(seg)
        self._sync(written=seg)

    # ------------------------------------------------------------------ policy hooks
    def admit(self, segment: Segment) -> None:
        """Policy hook: a freshly written block arrives (loose, un-rotated); the policy files, evicts, compresses.
        The base keeps everything.

        Args:
            segment: the block's tokens, kind ``"recent"``.
        """
        self.segments.append(segment)

    def select(self, layer: int, query: torch.Tensor) -> list[Segment]:
        """Policy hook: the segments ``layer`` attends to in this forward.

        Args:
            layer: the transformer block.
            query: (B, n, heads, d) its un-rotated queries (for policies that score context).

        Returns:
            segments of :attr:`segments`, in time order.
        """
        return self.segments

    def choice(self):
        """Replay hook: the context selection a write pass would use now, as plain data (None: this policy chooses
        nothing; the journal records it with every write pass)."""

    def restore_choice(self, choice) -> None:
        """Replay hook: make a recorded selection the selection again, before a replayed write pass.

        Args:
            choice: what :meth:`choice` returned when the pass was recorded.
        """

    # ------------------------------------------------------------------ reviewer / reporting side
    def prune(self, hw_indices: torch.Tensor) -> int:
        """Remove every cached token whose spatial index is in ``hw_indices`` from all prunable (non-sink)
        segments; recorded in the journal.

        Args:
            hw_indices: (k,) row-major spatial indices (TokenTrim's drifting tokens).

        Returns:
            how many tokens were removed.
        """
        hw_indices = torch.as_tensor(hw_indices).long().cpu()
        if self.journal is not None:
            self.journal.add("prune", hw_indices)
        removed = 0
        for seg in self.segments:
            if seg.prunable:
                removed += seg.keep(seg.prune_mask(hw_indices))
        self.segments = [s for s in self.segments if s.num_tokens > 0]
        self._sync()
        return removed

    @property
    def nbytes(self) -> int:
        """Bytes of the cached tokens' keys and values."""
        return sum(s.nbytes for s in self.segments)

    @property
    def allocated_bytes(self) -> int:
        """Bytes the cache holds on its device: its buffers (staging and current rows included) and loose segments."""
        loose = sum(s.nbytes for s in self.segments if s.arena is None)
        return loose + (self.arena.allocated_bytes if self.arena is not None else 0)

    @property
    def num_tokens(self) -> int:
        """Cached tokens (per batch item)."""
        return sum(s.num_tokens for s in self.segments)

    @property
    def frames(self) -> list[int]:
        """Distinct absolute latent frames that have at least one cached token."""
        if not self.segments:
            return []
        return torch.unique(torch.cat([s.t for s in self.segments])).tolist()

    def reset(self, sink_origin: int | None = None) -> None:
        """Drop every cached token; recorded in the journal.

        Args:
            sink_origin: the frames from there on form the new sink (a hard cut); None keeps the sink's origin.
        """
        if self.journal is not None:
            self.journal.add("reset", sink_origin)
        self.segments = []
        if sink_origin is not None:
            self.sink_origin = int(sink_origin)
        self._sync()

    # ------------------------------------------------------------------ positions
    @property
    def current_positions(self) -> torch.Tensor:
        """Temporal RoPE positions of the current frames: their absolute indices while they fit the table
        (either rule); past it, the last positions of the table."""
        return self._current_pos

    def layout(self, segs: list[Segment]) -> Layout:
        """Positions for one attention call over ``segs`` + the current frames (computed once per forward).

        Args:
            segs: the segments the call attends to.

        Returns:
            their :class:`Layout`. Raises ValueError when the frames cannot fit the RoPE table.
        """
        key = tuple(id(s) for s in segs)
        found = self._layouts.get(key)
        if found is not None:
            return found
        context = {f for s in segs for f in s.distinct_frames}
        current = self.current_frames.tolist()
        distinct = sorted(set(context) | set(current))
        if self._absolute and distinct[-1] < self.rope_len:
            found = self._layouts[key] = Layout({f: f for f in distinct}, self._current_pos)
            return found
        rank = {f: i for i, f in enumerate(distinct)}
        shift = int(self._current_pos[0]) - rank[current[0]]
        pos = {f: r + shift for f, r in rank.items()}
        if pos[distinct[0]] < 0 or pos[distinct[-1]] >= self.rope_len:
            raise ValueError(
                f"attention spans {len(distinct)} latent frames but the RoPE table has {self.rope_len} "
                "positions; use a smaller cache window or a model with a longer RoPE table"
            )
        found = self._layouts[key] = Layout(pos, self._current_pos)
        return found

    # ------------------------------------------------------------------ storage
    def _sync(self, written: Segment | None = None) -> None:
        """Bring the arena in line with the policy's segments: full-resolution recent segments resident
        (the just-written block adopts the rows it was written to), the rest loose, removed ones gone."""
        if self.arena is not None:
            pos = dict(zip(self.current_frames.tolist(), self._current_pos.tolist())) if written is not None else {}
            self.arena.sync(self.segments, written, pos)


@policy("rolling")
class RollingCache(KVCache):
    """Self Forcing's rolling window, optionally with an attention sink (LongLive: sink 3 + window 6 cached frames).

    Args:
        num_layers, rope_len, arena, positions: as :class:`KVCache`'s.
        window_frames: most recent latent frames kept (besides the sink); None keeps everything.
        sink_frames: the first frames of the video, kept for the whole run and never pruned.
    """

    def __init__(self, num_layers: int, window_frames: int | None = DEFAULTS.window_frames,
                 sink_frames: int = DEFAULTS.sink_frames, rope_len: int = 1024, arena: bool = True,
                 positions: str = DEFAULTS.positions):
        super().__init__(num_layers, rope_len, arena, positions)
        self.window_frames = window_frames
        self.sink_frames = sink_frames

    @classmethod
    def from_settings(cls, cfg: Cache, num_layers: int, rope_len: int) -> KVCache:
        return cls(num_layers, cfg.window_frames, cfg.sink_frames, rope_len=rope_len, positions=cfg.positions)

    def tail_frames(self, block_frames: int, room: int) -> int:
        """The window (no window: everything that fits)."""
        return self.window_frames if self.window_frames is not None else room

    def admit(self, segment: Segment) -> None:
        self.segments.extend(split_sink(segment, self.sink_frames, self.sink_origin))
        if self.window_frames is None:
            return
        recent = [s for s in self.segments if s.kind != "sink"]
        newest = max(int(s.t.max()) for s in recent) if recent else 0
        oldest_kept = newest - self.window_frames + 1
        for seg in recent:
            seg.keep(seg.t >= oldest_kept)
        self.segments = [s for s in self.segments if s.num_tokens > 0]
