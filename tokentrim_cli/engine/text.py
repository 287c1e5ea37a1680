"""Prompt encoding with UMT5, following Wan: 512 tokens, embeddings trimmed to the real length and zero-padded."""

from __future__ import annotations

import torch

TIED_EMBEDDING = "encoder.embed_tokens.weight"  # UMT5's encoder embedding, tied to shared.weight


def restore_tied_embedding(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A UMT5 encoder state dict saved without its tied embedding (safetensors keeps one of two shared tensors):
    put ``shared.weight`` back under ``encoder.embed_tokens.weight``, in place; returns the dict."""
    if "shared.weight" in state_dict:
        state_dict.setdefault(TIED_EMBEDDING, state_dict["shared.weight"])
    return state_dict


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
