"""Attention processors that turn diffusers' bidirectional Wan blocks into a block-causal, KV-cached model.

diffusers calls a processor with no per-call kwargs, so per-forward state (the cache, the current tokens'
RoPE, an optional mask) lives in a :class:`ForwardState` that the model fills before running its blocks and
that every processor holds a reference to. The current tokens are rotated once; the cache hands back the
context already rotated, with the current keys/values in place after it (``KVCache.attend``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from .cache import KVCache
from .rope import rotate


@dataclass
class ForwardState:
    """What the attention processors of one forward share: the cache, the current rotations, the prompt's K/V."""

    cache: KVCache | None = None
    rope: torch.Tensor | None = None  # current tokens' rotations, complex (n, head_dim / 2)
    mask: torch.Tensor | None = None  # (n_query, n_key) bool, True = may attend; only without a cache
    prompt_kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention.

    Args:
        q: (B, n_query, heads, d) queries.
        k, v: (B, n_key, heads, d) keys and values.
        mask: (n_query, n_key) bool, True where a query may attend (None: everywhere).

    Returns:
        (B, n_query, heads, d).
    """
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


class CachedSelfAttention:
    """``attn1`` processor: current tokens attend to [cached context ; themselves]; write passes store K/V.

    Args:
        layer: the block's index (its cache layer).
        state: the model's :class:`ForwardState`, shared by every processor.
    """

    def __init__(self, layer: int, state: ForwardState):
        self.layer = layer
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        st = self.state
        q, k, v = _get_qkv_projections(attn, hidden_states, None)
        q = attn.norm_q(q).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(k).unflatten(2, (attn.heads, -1))
        v = v.unflatten(2, (attn.heads, -1))

        freqs = st.rope
        k_rot = rotate(k, freqs)
        if st.cache is None:
            keys, values = k_rot, v
        else:
            keys, values = st.cache.attend(self.layer, q, k, k_rot, v)
        out = attend(rotate(q, freqs), keys, values, st.mask).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


class PromptCrossAttention:
    """``attn2`` processor: text keys/values are computed once per prompt (``CausalWan.set_prompt``).

    Args:
        layer: the block's index (its prompt K/V).
        state: the model's :class:`ForwardState`, shared by every processor.
    """

    def __init__(self, layer: int, state: ForwardState):
        self.layer = layer
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        k, v = self.state.prompt_kv[self.layer]
        return cross_attend(attn, hidden_states, k, v)


def cross_attend(attn, hidden_states: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``attn2``'s output for ``hidden_states`` (B, n, D) over one layer's prompt K/V (P, L, heads, head_dim)."""
    q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
    b = q.shape[0]
    if k.shape[0] > b:  # Guided's prompt branch alone: the first of its two prompts
        k, v = k[:b], v[:b]
    elif k.shape[0] < b:  # one prompt for a batch
        k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
    out = attend(q, k, v).flatten(2, 3).type_as(q)
    return attn.to_out[1](attn.to_out[0](out))
