"""TokenTrim (arXiv 2602.00268): drift-aware hard pruning of KV-cache tokens, with regeneration.

After each candidate block (the paper's "batch" of latent frames) the reviewer compares its latent summary with
the previous accepted block's, token by token. When the block's drift severity exceeds an adaptive threshold,
the cache loses every token at the unstable spatial positions (all prunable frames; never the sink) and the
sampler generates the block again. Pruning persists. :class:`TokenTrim` is the samplers' ``Reviewer``.

Choices where the paper is silent, and why:
- Summary E(x): the latent patch vectors (C x patch_h x patch_w values per transformer token, 64 for Wan),
  averaged over the block's frames. Spatial tokens then line up one-to-one with the cache's spatial indices.
- Warm-up counts *measured* blocks: the first block has nothing to compare with, so the first ``warmup``
  blocks that do have a severity are accepted unconditionally. The statistics then hold ``warmup`` values
  before the first test (with warm-up 2, sigma is not trivially zero).
- ``max_regenerations = 0`` still prunes on a trigger (future blocks benefit) but keeps the block.
- Regeneration noise: ``same`` by default, so a regenerated block differs from the rejected one only through
  the pruned context, which is what the method claims to fix, and runs stay reproducible; ``fresh`` draws new
  noise per attempt.
- A severity within 1e-6 (relative) of the threshold counts as below it: when drift is steady, sigma is ~0
  and float rounding alone would otherwise trigger regenerations.
- ``measure_at: first_step`` compares first-step x0 estimates with the previous accepted block's first-step
  estimate (like with like: a one-step estimate is blurrier than a finished block).
- Prompt timelines (``restart``): from the first block made under a new prompt the reviewer starts afresh, as
  at the start of a video: that block is compared with nothing (verdict ``switch``) and a new warm-up follows,
  with statistics of the new prompt's blocks only, so an intended change does not read as drift. Pruning done
  before the switch is not undone by the reviewer; the switch mode decides what survives of the cache.
"""

from __future__ import annotations

import copy
import math

import torch

from .engine.cache import KVCache
from .config.settings import Pruning


def latent_summary(latents: torch.Tensor, patch: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """(B, C, F, H, W) latents -> (N, C*ph*pw) patch vectors averaged over frames (and batch items)."""
    b, c, f, h, w = latents.shape
    ph, pw = patch
    x = latents.float().reshape(b, c, f, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, f, (h // ph) * (w // pw), c * ph * pw)
    return x.mean(dim=(0, 1))


def unstable_tokens(z: torch.Tensor, z_prev: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-token drift, the top ceil(p N) token indices, and the severity (mean drift over them)."""
    drift = (z - z_prev).norm(dim=1)
    k = max(1, math.ceil(p * drift.numel()))
    top = torch.topk(drift, k).indices
    return drift, top, float(drift[top].mean())


def threshold(severities: list[float], lam: float) -> float:
    """mu + lambda * sigma over accepted severities (population statistics)."""
    t = torch.tensor(severities, dtype=torch.float64)
    return float(t.mean() + lam * t.std(unbiased=False))


class TokenTrim:
    def __init__(
        self,
        p: float = 0.1,
        lam: float = 2.0,
        warmup: int = 2,
        max_regenerations: int = 1,
        measure_at: str = "final",
        patch: tuple[int, int] = (2, 2),
    ):
        if measure_at not in ("final", "first_step"):
            raise ValueError("measure_at must be 'final' or 'first_step'")
        self.p, self.lam, self.warmup = p, lam, warmup
        self.max_regenerations = max_regenerations
        self.measure_at = measure_at
        self.patch = patch
        self.accepted: list[float] = []  # severities of accepted blocks, in order
        self._prev: torch.Tensor | None = None
        self._records: dict[int, dict] = {}
        self.pruned_total = 0
        self._restart_at: int | None = None

    def state_dict(self) -> dict:
        """The statistics and pending records, for a resumable state (``load_state_dict`` restores them)."""
        return {"accepted": list(self.accepted), "prev": self._prev, "pruned_total": self.pruned_total,
                "restart_at": self._restart_at, "records": copy.deepcopy(self._records)}

    def load_state_dict(self, state: dict) -> None:
        self.accepted, self._prev = list(state["accepted"]), state["prev"]
        self.pruned_total, self._restart_at = state["pruned_total"], state["restart_at"]
        self._records = copy.deepcopy(state["records"])

    def restart(self, block: int) -> None:
        """A new prompt from ``block`` on: its first review starts a new warm-up (see the module docstring)."""
        self._restart_at = block

    # ------------------------------------------------------------------ the sampler's hooks
    def review(self, block: int, latents: torch.Tensor, cache: KVCache, attempt: int) -> bool:
        z = latent_summary(latents, self.patch)
        rec = self._records.setdefault(
            block, {"severity": None, "threshold": None, "regenerations": 0, "pruned_tokens": 0, "unstable": []}
        )
        rec["regenerations"] = attempt
        if self._restart_at is not None and block >= self._restart_at:
            self._restart_at, self._prev, self.accepted = None, None, []
            self._commit(block, z, None, "switch")
            return False
        if self._prev is None:  # nothing to compare with yet
            self._commit(block, z, None, "first")
            return False
        _, top, severity = unstable_tokens(z, self._prev.to(z.device), self.p)
        rec["severity"] = severity
        if len(self.accepted) < self.warmup:
            self._commit(block, z, severity, "warmup")
            return False
        limit = threshold(self.accepted, self.lam)
        rec["threshold"] = limit
        if severity <= limit + 1e-6 * abs(limit):  # float rounding alone never triggers
            self._commit(block, z, severity, "below")
            return False
        if attempt >= self.max_regenerations and attempt > 0:
            self._commit(block, z, severity, "retry_limit")
            return False
        removed = cache.prune(top)
        rec["pruned_tokens"] += removed
        rec["unstable"] = top.tolist()
        self.pruned_total += removed
        if self.max_regenerations == 0:
            self._commit(block, z, severity, "pruned_no_retry")
            return False
        return True

    def accept(self, block: int, latents: torch.Tensor) -> dict:
        rec = self._records.pop(block, None) or {"severity": None, "threshold": None, "regenerations": 0, "pruned_tokens": 0, "unstable": []}
        rec["regenerated"] = rec["regenerations"] > 0
        return rec

    def _commit(self, block: int, z: torch.Tensor, severity: float | None, verdict: str) -> None:
        self._prev = z.detach()
        if severity is not None:
            self.accepted.append(severity)
        self._records[block]["verdict"] = verdict


def make_reviewer(cfg: Pruning) -> TokenTrim | None:
    """The reviewer a preset's ``pruning:`` section asks for (None when disabled)."""
    if not cfg.enabled:
        return None
    return TokenTrim(p=cfg.p, lam=cfg.lam, warmup=cfg.warmup, max_regenerations=cfg.max_regenerations,
                     measure_at=cfg.measure_at)
