"""Prompt encoding with UMT5, following Wan: 512 tokens, embeddings trimmed to the real length and zero-padded."""

from __future__ import annotations

import torch

TIED_EMBEDDING = "encoder.embed_tokens.weight"  # UMT5's encoder embedding, tied to shared.weight


def restore_tied_embedding(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A UMT5 encoder state dict saved without its tied embedding (safetensors keeps one of two shared tensors):
    put ``shared.weight`` back under ``encoder.embed_tokens.weight``.

    Args:
        state_dict: the encoder's tensors by name, changed in place.

    Returns:
        the same dict.
    """
    if "shared.weight" in state_dict:
        state_dict.setdefault(TIED_EMBEDDING, state_dict["shared.weight"])
    return state_dict


def encode_prompts(tokenizer, text_encoder, prompts: list[str], max_length: int = 512) -> torch.Tensor:
    """Encode prompts as Wan does: padded to ``max_length``, positions past each prompt's length exactly zero.

    Args:
        tokenizer: UMT5's (or the word-level) tokenizer.
        text_encoder: the UMT5 encoder.
        prompts: B prompts.
        max_length: tokens per prompt.

    Returns:
        (B, max_length, dim) float embeddings on the encoder's device.
    """
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


def prompt_warnings(tokenizer, prompt: str, max_length: int = 512) -> list[str]:
    """What the text encoder will not see of ``prompt``: tokens past ``max_length`` and words outside the
    vocabulary (a word-level tokenizer maps them to <unk>; UMT5's sentencepiece rarely does).

    Args:
        tokenizer: the run's tokenizer.
        prompt: one prompt.
        max_length: tokens the encoder reads.

    Returns:
        one sentence per problem (empty: the encoder sees it all).
    """
    fast = getattr(tokenizer, "is_fast", False)  # offsets need a fast (Rust) tokenizer
    tok = tokenizer(prompt, add_special_tokens=True, truncation=False, return_offsets_mapping=fast, verbose=False)
    ids = tok["input_ids"]
    offsets = tok["offset_mapping"] if fast else [(0, 0)] * len(ids)
    found = []
    if len(ids) > max_length:
        kept = prompt[: offsets[max_length - 2][1]].split()[-3:] if max_length >= 2 and fast else []
        after = f" after \"{' '.join(kept)}\"" if kept else ""
        found.append(f"the prompt is {len(ids)} tokens; the text encoder reads the first {max_length}, so the text"
                     f"{after} is ignored")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        words = list(dict.fromkeys(prompt[a:b] for i, (a, b) in zip(ids, offsets) if i == unk and b > a))
        if words:
            found.append(f"{len(words)} word(s) outside the model's vocabulary are ignored: {', '.join(words[:10])}"
                         + (" ..." if len(words) > 10 else ""))
    return found
