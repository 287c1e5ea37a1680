"""Wan's 3-D rotary position embedding at arbitrary (frame, spatial) positions, and moving keys already rotated.

A head's channels are split into a temporal, a height and a width part (44/42/42 for head_dim 128), each rotated
in interleaved pairs by its own position. The cache stores keys *rotated*; when its layout moves a key to another
temporal position only the temporal channels turn, by the difference of the two positions (rotations compose:
R(p) R(d) = R(p + d)) rather than being rotated again from an un-rotated copy.
"""

from __future__ import annotations

import torch


def rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` by unit complex numbers: one complex multiply in float32, returned
    in x's dtype (one rounding, as the reference implementations do).

    Args:
        x: (B, n, heads, d) queries or keys.
        freqs: (n, d/2) complex rotations (:meth:`Rope.tables`).

    Returns:
        (B, n, heads, d) rotated, in x's dtype.
    """
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * freqs[None, :, None]).flatten(-2).type_as(x)


def positions(t: torch.Tensor, frame_pos: dict[int, int]) -> torch.Tensor:
    """Each token's temporal position, from its frame's.

    Args:
        t: (n,) absolute latent frame index of each token.
        frame_pos: frame -> temporal position, for every frame in ``t``.

    Returns:
        (n,) long positions.
    """
    frames = sorted(frame_pos)
    lut = torch.full((frames[-1] - frames[0] + 1,), -1, dtype=torch.long)
    lut[torch.tensor(frames) - frames[0]] = torch.tensor([frame_pos[f] for f in frames])
    return lut[t - frames[0]]


class Rope:
    """The model's RoPE tables on its device, split into their temporal / height / width parts.

    Args:
        rope: diffusers' ``WanRotaryPosEmbed`` (tables of ``max_seq_len`` positions).
    """

    def __init__(self, rope):
        sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
        self.t_dim = rope.t_dim
        self.cos = [c.float() for c in rope.freqs_cos.split(sizes, dim=1)]
        self.sin = [s.float() for s in rope.freqs_sin.split(sizes, dim=1)]
        self.grid_w = 1  # width of the token grid of the current forward (spatial index -> h, w)

    def to(self, device) -> "Rope":
        """Move the tables to ``device`` (in place); returns self."""
        self.cos = [c.to(device) for c in self.cos]
        self.sin = [s.to(device) for s in self.sin]
        return self

    @property
    def device(self) -> torch.device:
        """Where the tables are."""
        return self.cos[0].device

    def tables(self, t_pos: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        """Complex rotations of tokens at temporal positions and spatial indices (on the grid of width ``grid_w``).

        Args:
            t_pos: (n,) temporal positions, below the table's length.
            hw: (n,) row-major spatial indices.

        Returns:
            (n, head_dim / 2) complex64.
        """
        t_pos, hw = t_pos.to(self.device), hw.to(self.device)
        h, w = hw // self.grid_w, hw % self.grid_w
        cos = torch.cat([self.cos[0][t_pos], self.cos[1][h], self.cos[2][w]], dim=1)
        sin = torch.cat([self.sin[0][t_pos], self.sin[1][h], self.sin[2][w]], dim=1)
        return torch.complex(cos[:, 0::2], sin[:, 1::2])

    def move(self, x: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> None:
        """In place: keys already rotated at temporal positions ``old`` are turned to sit at ``new``.

        Args:
            x: (B, n, heads, d) rotated keys, changed in place.
            old: (n,) the temporal positions they are rotated at.
            new: (n,) the temporal positions they move to.

        Only the temporal channels turn, by new - old (the table's rotation at ``new`` times the conjugate of
        the one at ``old``), so every position stays inside the table. The turn is done in real arithmetic, one
        elementwise op at a time: each token's result is then the same whatever else is moved with it (a
        complex multiply's vectorised and scalar paths round differently, so a pruned segment, fewer tokens,
        would turn to other bits and a resumed run, which replays the pruning before the move, would differ).
        """
        old, new = old.to(self.device), new.to(self.device)
        t = self.t_dim
        cn, sn = self.cos[0][new][:, 0::2], self.sin[0][new][:, 1::2]
        co, so = self.cos[0][old][:, 0::2], self.sin[0][old][:, 1::2]
        c = (cn * co + sn * so)[None, :, None]  # new * conj(old), (1, n, 1, t/2)
        s = (sn * co - cn * so)[None, :, None]
        pairs = x[..., :t].float().unflatten(-1, (-1, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        x[..., :t] = torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2).type_as(x)
