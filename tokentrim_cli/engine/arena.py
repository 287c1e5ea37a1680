"""Where cached keys and values live on the fast path: one preallocated buffer per layer, read as one view.

Layout of every layer's buffer (rows are tokens; all layers share the row numbers):

    [ free | staging | current | resident segments, newest first | free ]
                               r0                                r1

- Resident segments (full-resolution "recent" blocks) are stored with their keys rotated. A write pass's block
  is adopted where it was computed (the current rows just below r0 become the newest resident segment), so
  writing costs no copy; a rolling window drops its oldest segment at r1 for free.
- When the layout moves a resident segment, only its temporal channels are turned by the difference
  (``Rope.move``); below the 1024-frame table and without gaps that never happens.
- Sink and compressed mid segments stay un-rotated in their own tensors (their positions change every block) and
  are copied, rotated, into the staging rows right below the current rows when the layer's selection or their
  positions change: once per block, not per forward.
- Attention reads ``[staging | current | the newest resident segments]`` as one view, so a policy that attends
  to all resident segments (every shipped one), or to the newest few (Rolling Forcing), needs no gather.
  Anything else it selects is staged too.
- The region slides down as blocks arrive; when it reaches row 0 it moves back to the top of the buffer (one
  copy of the resident rows every block or two: a few ms a block at full size), and the buffer grows by an
  eighth when the cache needs more rows.
"""

from __future__ import annotations

import torch

from .rope import Rope, positions, rotate


class Arena:
    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.k: list[torch.Tensor] | None = None
        self.v: list[torch.Tensor] | None = None
        self.cap = self.r0 = self.r1 = 0
        self.order: list = []  # resident segments, newest first, rows contiguous from r0
        self.token_bytes = 0  # keys + values of one token over all layers and batch items
        self.n_current = 0
        self._below = 0  # rows the current forward needs under r0 (current + staging)
        self._staging_seen = 0  # the most staging rows a layer needed in this forward
        self._write_rows = 0  # current rows of the last write pass
        self._staged: list[tuple | None] = [None] * num_layers
        self._tables: dict[tuple, torch.Tensor] = {}
        self._rope: Rope | None = None

    # ------------------------------------------------------------------ per forward
    def begin(self, n_current: int, write: bool, rope: Rope) -> None:
        """Make room for this forward's current rows and as much staging as the last forward needed (a layer
        that needs more makes room when it gets there)."""
        if write:
            self._write_rows = n_current
        # current rows live in the buffer on write passes and on forwards no larger (Self Forcing's steps); a
        # larger denoising window (Rolling Forcing's 15 frames) is appended to the context view instead, so
        # 30 layers of its rows are never held at once
        self.n_current = n_current if n_current <= self._write_rows else 0
        self._below = self.n_current + self._staging_seen
        self._staging_seen = 0
        self._tables = {}
        self._rope = rope
        if self.k is not None and self.r0 < self._below:
            self._relocate(self._below, keep_current=False)

    def attend(self, layer: int, segs: list, layout, k_rot: torch.Tensor, v: torch.Tensor, rope: Rope):
        """Write the current tokens below r0, stage what the layer needs, return the (keys, values) view."""
        b, n_cur = k_rot.shape[0], self.n_current
        if self.k is None:
            self._allocate(k_rot, v)
        K = self.k[layer]
        chosen = {id(s) for s in segs if s.arena is self}
        j = 0
        while j < len(self.order) and id(self.order[j]) in chosen:
            j += 1
        prefix = self.order[:j]
        for seg in prefix:
            want = {f: layout.pos[f] for f in seg.distinct_frames}
            if seg.rot[layer] != want:
                lo, n = int(seg.rows[0]), seg.num_tokens
                rope.move(K[:, lo : lo + n], positions(seg.t, seg.rot[layer]), layout.tokens(seg))
                seg.rot[layer] = want
        in_prefix = {id(s) for s in prefix}
        staged = [s for s in segs if id(s) not in in_prefix]
        n_stage = sum(s.num_tokens for s in staged)
        self._staging_seen = max(self._staging_seen, n_stage)
        if self.r0 - n_cur - n_stage < 0:
            self._relocate(n_cur + n_stage, keep_current=True)
        K, V = self.k[layer], self.v[layer]
        top = self.r0 - n_cur
        lo = top - n_stage
        key = (lo, top, tuple((id(s), s.version, tuple(layout.pos[f] for f in s.distinct_frames)) for s in staged))
        if self._staged[layer] != key:
            row = lo
            for seg in staged:
                n = seg.num_tokens
                new = layout.tokens(seg)
                if seg.arena is self:  # resident but not in the attended prefix: copy it, turned to its place
                    src = K[:, seg.rows]
                    rope.move(src, positions(seg.t, seg.rot[layer]), new)
                    K[:, row : row + n], V[:, row : row + n] = src, V[:, seg.rows]
                else:
                    K[:, row : row + n] = rotate(seg.keys[layer], self._table(seg, layout, new, rope))
                    V[:, row : row + n] = seg.values[layer]
                row += n
            self._staged[layer] = key
        hi = self.r0 + sum(s.num_tokens for s in prefix)
        if not n_cur:
            return torch.cat([K[:b, lo:hi], k_rot], 1), torch.cat([V[:b, lo:hi], v], 1)
        K[:b, top : self.r0] = k_rot
        V[:b, top : self.r0] = v
        return K[:b, lo:hi], V[:b, lo:hi]

    # ------------------------------------------------------------------ after a write pass or pruning
    def sync(self, segments: list, written, current_pos: dict[int, int]) -> None:
        """Match the resident set to the policy's segments (see ``KVCache._sync``)."""
        rope = self._rope
        live = {id(s) for s in segments}
        for seg in list(self.order):
            if id(seg) not in live:
                self._drop(seg)
            elif seg.kind != "recent":  # aged into mid / made a sink: kept un-rotated from now on
                keys, values = self.unrotated(seg), self.values(seg)
                self._drop(seg)
                seg.keys, seg.values = keys, values
        for seg in segments:
            if seg.arena is not None or seg.kind != "recent" or seg.cover is not None:
                continue
            if self.k is None or not set(seg.distinct_frames) <= set(current_pos):
                continue  # not from this write pass: stays loose (staged like a sink)
            if seg is written and seg.num_tokens == self.n_current:
                self._adopt(seg, self.n_current)
            else:  # part of the written block (the rest went to the sink): copy it in, rotated
                n = seg.num_tokens
                if self.r0 < n:
                    self._relocate(n, keep_current=False)
                pos = torch.tensor([current_pos[int(f)] for f in seg.t.tolist()])
                freqs = rope.tables(pos, seg.hw)
                for layer in range(self.num_layers):
                    self.k[layer][:, self.r0 - n : self.r0] = rotate(seg.keys[layer], freqs)
                    self.v[layer][:, self.r0 - n : self.r0] = seg.values[layer]
                self._adopt(seg, n)
            seg.rot = [{f: current_pos[f] for f in seg.distinct_frames} for _ in range(self.num_layers)]
        self._compact()

    def _adopt(self, seg, n: int) -> None:
        self.r0 -= n
        seg.rows = torch.arange(self.r0, self.r0 + n)
        seg.arena, seg.keys, seg.values = self, None, None
        self.order.insert(0, seg)

    def _drop(self, seg) -> None:
        self.order.remove(seg)
        seg.arena, seg.rows, seg.rot = None, None, None

    def _compact(self) -> None:
        """Close the gaps removals left; removals at either end only move r0 / r1."""
        if not self.order:
            self.r0 = self.r1 = self.cap
            return
        start = row = int(self.order[0].rows[0])
        contiguous = True
        for seg in self.order:
            n = seg.num_tokens
            if not torch.equal(seg.rows, torch.arange(row, row + n)):
                contiguous = False
                break
            row += n
        if contiguous:
            self.r0, self.r1 = start, row
            return
        src = torch.cat([s.rows for s in self.order])
        dst = self.cap - len(src)
        idx = src.to(self.k[0].device)
        for buf in self.k + self.v:
            buf[:, dst : self.cap] = buf.index_select(1, idx)
        row = dst
        for seg in self.order:
            seg.rows = torch.arange(row, row + seg.num_tokens)
            row += seg.num_tokens
        self.r0, self.r1 = dst, self.cap
        self._staged = [None] * self.num_layers

    # ------------------------------------------------------------------ reading resident segments back
    def unrotated(self, seg) -> list[torch.Tensor]:
        """Copies of a resident segment's keys, un-rotated (for compression, scoring, detaching)."""
        out = []
        for layer in range(self.num_layers):
            out.append(rotate(self.k[layer][:, seg.rows], self._rope_of(seg, layer).conj()))
        return out

    def values(self, seg) -> list[torch.Tensor]:
        return [self.v[layer][:, seg.rows] for layer in range(self.num_layers)]

    @property
    def allocated_bytes(self) -> int:
        return 0 if self.k is None else sum(b.numel() * b.element_size() for b in self.k + self.v)

    # ------------------------------------------------------------------ internals
    def _rope_of(self, seg, layer):
        return self._rope.tables(positions(seg.t, seg.rot[layer]), seg.hw)

    def _table(self, seg, layout, positions, rope):
        key = (id(seg), seg.version, tuple(layout.pos[f] for f in seg.distinct_frames))
        if key not in self._tables:
            self._tables[key] = rope.tables(positions, seg.hw)
        return self._tables[key]

    def _allocate(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.cap = self._grown(self._below)
        self.r0 = self.r1 = self.cap
        b, _, h, d = k.shape
        self.k = [k.new_empty(b, self.cap, h, d) for _ in range(self.num_layers)]
        self.v = [v.new_empty(b, self.cap, h, d) for _ in range(self.num_layers)]
        self.token_bytes = 2 * self.num_layers * b * h * d * k.element_size()

    @staticmethod
    def _grown(rows: int) -> int:
        return rows + rows // 8 + 1

    def _relocate(self, below: int, keep_current: bool) -> None:
        """Make ``below`` rows free under r0, keeping the resident rows (and, in the middle of a forward, the
        current rows earlier layers wrote); grows the buffers when they are too small."""
        n_res = self.r1 - self.r0
        keep_lo = self.r0 - (self.n_current if keep_current else 0)
        need = n_res + below
        cap = self._grown(need) if need > self.cap else self.cap
        new_r0 = cap - n_res
        shift = new_r0 - self.r0
        for bufs in (self.k, self.v):
            for i, buf in enumerate(bufs):
                if cap != self.cap:
                    new = buf.new_empty(buf.shape[0], cap, *buf.shape[2:])
                    new[:, keep_lo + shift : cap] = buf[:, keep_lo : self.r1]
                    bufs[i] = new
                else:
                    buf[:, keep_lo + shift : cap] = buf[:, keep_lo : self.r1].clone()
        self.cap, self.r0, self.r1 = cap, new_r0, cap
        for seg in self.order:
            seg.rows = seg.rows + shift
        self._staged = [None] * self.num_layers
