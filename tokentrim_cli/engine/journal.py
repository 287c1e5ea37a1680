"""A KV cache's history, kept so that the cache can be rebuilt exactly (``generate --resume``).

Why not store the keys and values: at 480x832 a Rolling Forcing context of 21 latent frames is about 6 GB in bf16,
while the latents that made one block's keys and values are 0.6 MB. Every change to a cache is either a write
pass, a pure function of its input latents, the prompt in effect and what the cache held, or a decision
taken outside one: TokenTrim's pruning, a prompt switch's reset or RoPE cut (Infinity-RoPE), Deep Forcing's
token-budget trim, and the mid blocks a three-partition cache had selected when a write pass ran. The journal
records these in order, each with what it takes to make it again; :func:`replay` into a new cache of the same
policy, with the same model, rebuilds the cache bit for bit (the same inputs, shapes and kernels give the same numbers). An emptied cache ends the
history, so the journal drops everything before the last reset but the prompt in effect.

A cache records itself when it has a journal (``cache.journal``); prompts are recorded by the caller through
:meth:`Journal.set_prompt`. Knows no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import KVCache


@dataclass(frozen=True)
class JournalState:
    """A journal's history at one moment: ``ops`` in order, each ("prompt", *embeddings), ("write", x, timesteps,
    frames, choice), ("prune", ...), ("reset", ...), ("trim", ...) or ("rope_cut", ...), tensors on the CPU;
    ``epoch`` counts the cuts of the history (resets)."""

    ops: tuple
    epoch: int


class Journal:
    def __init__(self):
        self.ops: list[tuple] = []
        self.epoch = 0  # bumped when the history is cut (a reset), so a saver knows to write it anew
        self._prompt: tuple | None = None

    def add(self, *op) -> None:
        if op[0] == "reset":
            self.ops = [self._prompt] if self._prompt is not None else []
            self.epoch += 1
        self.ops.append(op)

    def set_prompt(self, model, *embeds) -> None:
        """Set the model's prompt (its cross-attention) and record the embeddings."""
        self._prompt = ("prompt", *(e.detach().cpu() for e in embeds))
        self.add(*self._prompt)
        model.set_prompt(*embeds)

    def state(self) -> JournalState:
        """The history so far (its entries are never changed in place, so this shares them)."""
        return JournalState(tuple(self.ops), self.epoch)


def write_pass(model, cache: KVCache, x: torch.Tensor, timesteps: torch.Tensor, frames: torch.Tensor,
               kept: torch.Tensor | None = None) -> None:
    """One write pass (a forward that writes ``x``'s keys and values to ``cache``), recorded when the cache keeps
    a journal: ``x`` (B, C, F, h, w) at ``timesteps`` (F,) and latent frame indices ``frames`` (F,).

    The journal keeps ``x`` on the CPU in the model's dtype: the forward casts to it first thing, so nothing of
    the pass is lost and a bf16 state is half the size; the journal holds no device memory. From a GPU the copy
    is asynchronous (synchronise before reading it); on the CPU it is a copy too, since a view would keep (and
    save) its whole base. ``kept``: that copy already (a replay records the entry it replays)."""
    if cache.journal is not None:
        if kept is None:
            kept = x.detach().to(model.dtype)
            kept = kept.to("cpu", non_blocking=True) if kept.is_cuda else kept.clone()
        cache.journal.add("write", kept, timesteps.cpu(), frames.cpu(), cache.choice())
    model(x, timesteps, frames, cache=cache, write=True)


@torch.no_grad()
def replay(state: JournalState, model, cache: KVCache) -> Journal:
    """Rebuild ``cache`` (new, of the run's policy) from a journal's ``state()``; return the journal that now
    records it (equal to the one replayed, so a resumed run can be resumed again)."""
    journal = Journal()
    cache.journal = journal
    for kind, *args in state.ops:
        if kind == "prompt":
            journal.set_prompt(model, *args)
        elif kind == "write":
            x, timesteps, frames, choice = args
            cache.restore_choice(choice)
            write_pass(model, cache, x.to(model.device), timesteps, frames, kept=x)
        elif kind == "prune":
            cache.prune(args[0])
        elif kind == "reset":
            cache.reset(*args)
        elif kind == "trim":
            cache.trim(args[0])
        elif kind == "rope_cut":
            cache.rope_cut(args[0])
        else:
            raise ValueError(f"unknown journal entry {kind!r}")
    journal.epoch = state.epoch  # the replayed resets bumped it
    return journal
