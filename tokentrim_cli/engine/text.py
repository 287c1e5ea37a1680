"""Prompt encoding with UMT5, following Wan: 512 tokens, embeddings trimmed to the real length and zero-padded."""

from __future__ import annotations

import torch


def encode_prompts(tokenizer, text_encoder, prompts: list[str], max_length: int = 512) -> torch.Tensor:
    """Return (B, max_length, dim) embeddings; positions past each prompt's length are exactly zero."""
    tok = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    dev = next(text_encoder.parameters()).device
    ids, mask = tok.input_ids.to(dev), tok.attention_mask.to(dev)
    hidden = text_encoder(ids, mask).last_hidden_state
    lengths = mask.gt(0).sum(dim=1)
    out = torch.zeros_like(hidden)
    for i, n in enumerate(lengths.tolist()):
        out[i, :n] = hidden[i, :n]
    return out
