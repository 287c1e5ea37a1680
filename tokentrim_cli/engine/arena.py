"""Where cached keys and values live on the fast path: one preallocated buffer per layer, read as one view.

Layout of every layer's buffer (rows are tokens; all layers share the row numbers):

    [ free | staging | resident segments, oldest first | current | free ]
                     r0                                r1

- Resident segments (full-resolution "recent" blocks) are stored with their keys rotated. A write pass's block
  is adopted where it was computed (the current rows at r1 become the newest resident segment), so writing costs
  no copy; a rolling window drops its oldest segment at r0 for free.
- When the layout moves a resident segment, only its temporal channels are turned by the difference
  (``Rope.move``); below the 1024-frame table and without gaps that never happens.
- Sink and compressed mid segments stay un-rotated in their own tensors (their positions change every block) and
  are copied, rotated, into the staging rows right below r0 when the layer's selection or their positions change:
  once per block, not per forward.
- Attention reads ``[staging | resident | current]`` as one view when it attends to every resident segment (every
  shipped policy but Rolling Forcing's), in the order the plain path concatenates them, so the two give the same
  numbers. Attending to the newest few (Rolling Forcing's denoising windows) joins the staging rows to them with
  one copy; anything else a policy selects is staged too.
- A denoising forward larger than the write passes (Rolling Forcing's 15-frame window) is appended to the view
  rather than held in the buffer, so 30 layers of its rows are never allocated at once.
- The region slides up as blocks arrive; when it reaches the top it moves back down (one copy of the resident
  rows every block or two: a few ms a block at full size), and the buffer grows by an eighth when it must.
"""

from __future__ import annotations

import torch

from .rope import Rope, positions, rotate


class Arena:
    """One cache's buffers on the fast path (module docstring); ``KVCache`` drives it.

    Args:
        num_layers: transformer blocks (one key and one value buffer each, allocated at the first attend).
    """

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.k: list[torch.Tensor] | None = None
        self.v: list[torch.Tensor] | None = None
        self.cap = self.r0 = self.r1 = 0
        self.order: list = []  # resident segments, oldest first, rows contiguous from r0 to r1
        self.token_bytes = 0  # keys + values of one token over all layers and batch items
        self.n_current = 0  # current rows this forward keeps in the buffer (0: appended to the view instead)
        self._write_rows = 0  # current rows of the last write pass
        self._staging_seen = 0  # the most staging rows a layer needed in this forward
        self._staging_room = 0  # staging rows to leave below r0 when the region moves
        self._staged: list[tuple | None] = [None] * num_layers
        self._tables: dict[tuple, torch.Tensor] = {}
        self._rope: Rope | None = None

    # ------------------------------------------------------------------ per forward
    def begin(self, n_current: int, write: bool, rope: Rope) -> None:
        """Make room for this forward's current rows and as much staging as the last forward needed (a layer
        that needs more makes room when it gets there).

        Args:
            n_current: the forward's tokens.
            write: a context pass (its rows become the written segment's).
            rope: the model's rotations.
        """
        if write:
            self._write_rows = n_current
        self.n_current = n_current if n_current <= self._write_rows else 0
        self._staging_room = self._staging_seen
        self._staging_seen = 0
        self._tables = {}
        self._rope = rope
        if self.k is not None and (self.r0 < self._staging_room or self.r1 + self.n_current > self.cap):
            self._relocate(keep_current=False)

    def attend(self, layer: int, segs: list, layout, k_rot: torch.Tensor, v: torch.Tensor):
        """Write the current tokens at r1, stage what the layer needs below r0.

        Args:
            layer: the transformer block.
            segs: the segments it attends to (``KVCache.select``), in time order.
            layout: their positions (``KVCache.layout``).
            k_rot: (B, n, heads, d) current keys, rotated.
            v: (B, n, heads, d) current values.

        Returns:
            (keys, values), each (B, m + n, heads, d), in the plain path's order.
        """
        b, n_cur, rope = k_rot.shape[0], self.n_current, self._rope
        if self.k is None:
            self._allocate(k_rot, v)
        chosen = {id(s) for s in segs if s.arena is self}
        j = len(self.order)
        while j > 0 and id(self.order[j - 1]) in chosen:
            j -= 1
        suffix = self.order[j:]  # the newest resident segments, attended where they are
        K = self.k[layer]
        for seg in suffix:
            want = {f: layout.pos[f] for f in seg.distinct_frames}
            if any(seg.rot[layer][f] != p for f, p in want.items()):
                lo, n = int(seg.rows[0]), seg.num_tokens
                rope.move(K[:, lo : lo + n], positions(seg.t, seg.rot[layer]), layout.tokens(seg))
                seg.rot[layer] = want
        in_suffix = {id(s) for s in suffix}
        staged = [s for s in segs if id(s) not in in_suffix]
        n_stage = sum(s.num_tokens for s in staged)
        self._staging_seen = max(self._staging_seen, n_stage)
        if self.r0 < n_stage:
            self._staging_room = n_stage
            self._relocate(keep_current=True)
        K, V = self.k[layer], self.v[layer]
        lo = self.r0 - n_stage
        key = (lo, tuple((id(s), s.version, tuple(layout.pos[f] for f in s.distinct_frames)) for s in staged))
        if self._staged[layer] != key:
            row = lo
            for seg in staged:
                n = seg.num_tokens
                if seg.arena is self:  # resident but not among the newest attended: copy it, turned to its place
                    src = K[:, seg.rows]
                    rope.move(src, positions(seg.t, seg.rot[layer]), layout.tokens(seg))
                    K[:, row : row + n], V[:, row : row + n] = src, V[:, seg.rows]
                else:
                    K[:, row : row + n] = rotate(seg.unrotated_keys()[layer], self._table(seg, layout))
                    V[:, row : row + n] = seg.values[layer]
                row += n
            self._staged[layer] = key
        if n_cur:
            K[:b, self.r1 : self.r1 + n_cur] = k_rot
            V[:b, self.r1 : self.r1 + n_cur] = v
        start = int(suffix[0].rows[0]) if suffix else self.r1
        hi = self.r1 + n_cur
        if start == self.r0:  # staging, resident and current rows are one block of rows
            keys, values = [K[:b, lo:hi]], [V[:b, lo:hi]]
        else:
            keys, values = [K[:b, lo : self.r0], K[:b, start:hi]], [V[:b, lo : self.r0], V[:b, start:hi]]
        if not n_cur:
            keys, values = keys + [k_rot], values + [v]
        if len(keys) == 1:
            return keys[0], values[0]
        return torch.cat(keys, 1), torch.cat(values, 1)

    # ------------------------------------------------------------------ after a write pass or pruning
    def sync(self, segments: list, written, current_pos: dict[int, int]) -> None:
        """Match the resident set to the policy's segments (see ``KVCache._sync``).

        Args:
            segments: the cache's segments after the policy's change.
            written: the segment the last write pass produced (it adopts its rows), or None.
            current_pos: frame -> position of the last forward's current frames.
        """
        rope = self._rope
        live = {id(s) for s in segments}
        if (written is not None and id(written) in live and self._residable(written, current_pos)
                and written.num_tokens == self.n_current):
            self._adopt(written, current_pos)  # the write pass's rows at r1 already hold it, rotated
        for seg in list(self.order):
            if id(seg) not in live:
                self._drop(seg)
            elif seg.kind != "recent":  # aged into mid / made a sink: kept un-rotated from now on
                keys, values = self.unrotated(seg), self.values(seg)
                self._drop(seg)
                seg.store(keys, values)
        self._compact()
        for seg in segments:
            if not self._residable(seg, current_pos):
                continue
            n = seg.num_tokens  # part of the written block (the rest went to the sink): copy it in, rotated
            if self.r1 + n > self.cap:
                self.n_current = n
                self._relocate(keep_current=False)
            freqs, keys = rope.tables(positions(seg.t, current_pos), seg.hw), seg.unrotated_keys()
            for layer in range(self.num_layers):
                self.k[layer][:, self.r1 : self.r1 + n] = rotate(keys[layer], freqs)
                self.v[layer][:, self.r1 : self.r1 + n] = seg.values[layer]
            self._adopt(seg, current_pos)

    def _residable(self, seg, current_pos: dict[int, int]) -> bool:
        """A loose full-resolution recent segment from this write pass (others stay loose: staged like a sink)."""
        return (seg.arena is None and seg.kind == "recent" and seg.cover is None and self.k is not None
                and set(seg.distinct_frames) <= set(current_pos))

    def _adopt(self, seg, current_pos: dict[int, int]) -> None:
        n = seg.num_tokens
        seg.rows = torch.arange(self.r1, self.r1 + n)
        seg.store(None, None)
        seg.arena = self
        seg.rot = [{f: current_pos[f] for f in seg.distinct_frames} for _ in range(self.num_layers)]
        self.order.append(seg)
        self.r1 += n

    def _drop(self, seg) -> None:
        self.order.remove(seg)
        seg.arena, seg.rows, seg.rot = None, None, None

    def _compact(self) -> None:
        """Close the gaps removals left; removals at either end only move r0 / r1."""
        if not self.order:
            self.r0 = self.r1 = self._staging_room
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
        src = torch.cat([s.rows for s in self.order]).to(self.k[0].device)
        dst = self._staging_room
        for buf in self.k + self.v:
            buf[:, dst : dst + len(src)] = buf.index_select(1, src)
        row = dst
        for seg in self.order:
            seg.rows = torch.arange(row, row + seg.num_tokens)
            row += seg.num_tokens
        self.r0, self.r1 = dst, row
        self._staged = [None] * self.num_layers

    # ------------------------------------------------------------------ reading resident segments back
    def unrotated(self, seg) -> list[torch.Tensor]:
        """Copies of a resident segment's keys, un-rotated (for compression, scoring, detaching).

        Args:
            seg: a segment resident here.

        Returns:
            per layer, (B, n, heads, d).
        """
        out = []
        for layer in range(self.num_layers):
            freqs = self._rope.tables(positions(seg.t, seg.rot[layer]), seg.hw)
            out.append(rotate(self.k[layer][:, seg.rows], freqs.conj()))
        return out

    def values(self, seg) -> list[torch.Tensor]:
        """Per layer, (B, n, heads, d) copies of a resident segment's values."""
        return [self.v[layer][:, seg.rows] for layer in range(self.num_layers)]

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the buffers (0 before the first attend)."""
        return 0 if self.k is None else sum(b.numel() * b.element_size() for b in self.k + self.v)

    # ------------------------------------------------------------------ internals
    def _table(self, seg, layout):
        """A loose segment's rotations at its place in ``layout``, computed once per forward for all layers."""
        key = (id(seg), seg.version, tuple(layout.pos[f] for f in seg.distinct_frames))
        if key not in self._tables:
            self._tables[key] = self._rope.tables(layout.tokens(seg), seg.hw)
        return self._tables[key]

    def _allocate(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.cap = self._grown(self._staging_room + self.n_current)
        self.r0 = self.r1 = self._staging_room
        b, _, h, d = k.shape
        self.k = [k.new_empty(b, self.cap, h, d) for _ in range(self.num_layers)]
        self.v = [v.new_empty(b, self.cap, h, d) for _ in range(self.num_layers)]
        self.token_bytes = 2 * self.num_layers * b * h * d * k.element_size()

    @staticmethod
    def _grown(rows: int) -> int:
        return rows + rows // 8 + 1

    def _relocate(self, keep_current: bool) -> None:
        """Move the resident rows (and, in the middle of a forward, the current rows earlier layers wrote) down
        to leave ``_staging_room`` rows below them and room for the current rows above; grow when too small."""
        n_res = self.r1 - self.r0
        n_keep = n_res + (self.n_current if keep_current else 0)
        need = self._staging_room + n_res + self.n_current
        cap = self._grown(need) if need > self.cap else self.cap
        dst = self._staging_room
        for bufs in (self.k, self.v):
            for i, buf in enumerate(bufs):
                if cap != self.cap:
                    new = buf.new_empty(buf.shape[0], cap, *buf.shape[2:])
                    new[:, dst : dst + n_keep] = buf[:, self.r0 : self.r0 + n_keep]
                    bufs[i] = new
                elif dst != self.r0:
                    buf[:, dst : dst + n_keep] = buf[:, self.r0 : self.r0 + n_keep].clone()
        shift = dst - self.r0
        self.cap, self.r0, self.r1 = cap, dst, self.r1 + shift
        for seg in self.order:
            seg.rows = seg.rows + shift
        self._staged = [None] * self.num_layers
