"""A transformer block run in three pieces, so that the pure tensor work can be compiled or replayed as CUDA graphs
while the KV cache's bookkeeping (Python: selection, layout, staging) runs eagerly between them.

Per block and forward:

    pre   (static shapes)  modulation, norm1, q/k/v projections, q/k norms, RoPE of the current tokens
    mid   (eager)          ``KVCache.attend`` (writes the current rows, returns the context) and attention
    post  (static shapes)  output projection, gated residual, cross-attention, feed-forward

``pre`` and ``post`` only see tensors of the forward's own token count, so their shapes are fixed for a whole run
(one shape per forward size); everything whose size changes with the cache (eviction, TokenTrim's pruning, a
three-partition selection) lives in ``mid``. The arithmetic is diffusers' ``WanTransformerBlock.forward`` with
our attention processors (``attention.py``), op for op: the pieces give the same numbers as the block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from .attention import ForwardState, attend, cross_attend
from .rope import rotate


def _modulation(block, tproj: torch.Tensor, lo: int, hi: int) -> list[torch.Tensor]:
    """The block's (B, n, D) float32 shift / scale / gate tensors ``lo`` to ``hi`` of six (``tproj``: (B, n, 6, D));
    each piece adds only the ones it uses."""
    parts = (block.scale_shift_table[:, lo:hi].unsqueeze(0) + tproj[:, :, lo:hi].float()).chunk(hi - lo, dim=2)
    return [p.squeeze(2) for p in parts]


def pre_attention(block, x: torch.Tensor, tproj: torch.Tensor, freqs: torch.Tensor) -> tuple:
    """Piece 1: (q, q_rot, k, k_rot, v), each (B, n, heads, head_dim), from the block input ``x`` (B, n, D),
    its modulation ``tproj`` (B, n, 6, D) and the current tokens' rotations ``freqs`` (n, head_dim / 2)."""
    shift, scale = _modulation(block, tproj, 0, 2)
    h = (block.norm1(x.float()) * (1 + scale) + shift).type_as(x)
    attn = block.attn1
    q, k, v = _get_qkv_projections(attn, h, None)
    q = attn.norm_q(q).unflatten(2, (attn.heads, -1))
    k = attn.norm_k(k).unflatten(2, (attn.heads, -1))
    v = v.unflatten(2, (attn.heads, -1))
    return q, rotate(q, freqs), k, rotate(k, freqs), v


def mid_attention(state: ForwardState, layer: int, parts: tuple, private: bool) -> torch.Tensor:
    """Piece 2 (eager): the cache's context for ``layer`` and attention; (B, n, D) in q's dtype.

    ``private``: the parts are a graph's static outputs, overwritten by its next replay, so a write pass hands
    the cache copies of the keys and values it may keep (un-rotated, for segments stored loose)."""
    q, q_rot, k, k_rot, v = parts
    if state.cache is None:
        keys, values = k_rot, v
    else:
        if private and state.cache.writing:
            k, v = k.clone(), v.clone()
        keys, values = state.cache.attend(layer, q, k, k_rot, v)
    return attend(q_rot, keys, values, state.mask).flatten(2, 3).type_as(q)


def post_attention(block, x: torch.Tensor, attn_out: torch.Tensor, tproj: torch.Tensor, prompt_k: torch.Tensor,
                   prompt_v: torch.Tensor) -> torch.Tensor:
    """Piece 3: the block's output (B, n, D) from its input ``x``, attention's ``attn_out`` (B, n, D), ``tproj``
    and this layer's prompt K/V (``CausalWan.set_prompt``; passed in, so one compiled graph serves every layer)."""
    gate, c_shift, c_scale, c_gate = _modulation(block, tproj, 2, 6)
    a = block.attn1.to_out[1](block.attn1.to_out[0](attn_out))
    x = (x.float() + a * gate).type_as(x)
    h = block.norm2(x.float()).type_as(x)
    x = x + cross_attend(block.attn2, h, prompt_k, prompt_v)
    h = (block.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
    return (x.float() + block.ffn(h).float() * c_gate).type_as(x)


@dataclass
class CompileSpec:
    """``runtime.compile``: torch.compile's mode, dynamic shapes, backend (inductor; tests use eager)."""

    mode: str = "default"
    dynamic: bool = True
    backend: str = "inductor"

    def wrap(self, fn: Callable) -> Callable:
        mode = None if self.mode == "default" or self.backend != "inductor" else self.mode
        return torch.compile(fn, mode=mode, dynamic=self.dynamic, backend=self.backend)


@dataclass
class CompileStats:
    """The first compiled forward of each shape takes the compile time (synchronised wall seconds)."""

    mode: str
    dynamic: bool
    first_call_seconds: list[float]

    def as_dict(self) -> dict:
        return {"mode": self.mode, "dynamic": self.dynamic,
                "first_call_seconds": [round(s, 3) for s in self.first_call_seconds]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PiecewiseBlocks:
    """Runs a CausalWan's blocks piece by piece: compiled pieces (``compile``), CUDA graphs of them (``graphs``,
    a ``cuda_graphs.BlockGraphs``), or both. Without either it is plain eager (the tests' reference)."""

    def __init__(self, compile: CompileSpec | None = None, graphs=None):
        self.pre, self.post = pre_attention, post_attention
        self.compile_stats = None
        if compile is not None:
            self.pre, self.post = compile.wrap(pre_attention), compile.wrap(post_attention)
            self.compile_stats = CompileStats(compile.mode, compile.dynamic, [])
        self.graphs = graphs
        self._shapes: set[tuple] = set()

    def __call__(self, model, x: torch.Tensor, tproj: torch.Tensor) -> torch.Tensor:
        """The blocks' output for ``x`` (B, n, D); ``model.state`` holds the cache, RoPE and mask."""
        shape = (tuple(x.shape), x.dtype)
        first = self.compile_stats is not None and shape not in self._shapes
        self._shapes.add(shape)
        t0 = time.perf_counter()
        if self.graphs is not None:
            x = self.graphs.run(model, self, x, tproj)
        else:
            x = self.eager(model, x, tproj)
        if first:
            _sync(x.device)
            self.compile_stats.first_call_seconds.append(time.perf_counter() - t0)
        return x

    def eager(self, model, x: torch.Tensor, tproj: torch.Tensor) -> torch.Tensor:
        st = model.state
        for i, block in enumerate(model.transformer.blocks):
            parts = self.pre(block, x, tproj, st.rope)
            x = self.post(block, x, mid_attention(st, i, parts, private=False), tproj, *st.prompt_kv[i])
        return x
