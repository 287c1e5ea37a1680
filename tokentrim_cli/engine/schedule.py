"""Flow-matching noise levels of the few-step autoregressive samplers (shifted, warped step lists)."""

from __future__ import annotations

import torch


def shift_sigma(s: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's timestep shift of noise levels: shift*s / (1 + (shift-1)*s).

    Args:
        s: noise levels in [0, 1], any shape.
        shift: the shift (5.0 for Wan2.1's distilled models).

    Returns:
        the shifted levels, same shape and dtype as ``s``.
    """
    return shift * s / (1 + (shift - 1) * s)


def shifted_sigmas(shift: float = 5.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The shifted table sigma(s) = shift*s / (1 + (shift-1)*s) over s in linspace(1, 0, N+1)[:-1].

    Args:
        shift: the timestep shift.
        num_train_timesteps: N, the training schedule's length.

    Returns:
        (N,) float64, from 1 down.
    """
    return shift_sigma(torch.linspace(1.0, 0.0, num_train_timesteps + 1, dtype=torch.float64)[:-1], shift)


def warp_steps(steps: list[int], shift: float = 5.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Noise levels sigma in (0, 1] for a denoising step list such as [1000, 750, 500, 250].

    A step k is warped by indexing the shifted table at N - k, as Self Forcing and Rolling Forcing do;
    the model's timestep input is 1000 * sigma (1000, 937.5, 833.33, 625.0 for Self Forcing).

    Args:
        steps: decreasing denoising steps in 1..``num_train_timesteps``.
        shift: the timestep shift.
        num_train_timesteps: the training schedule's length.

    Returns:
        (len(steps),) float64 noise levels. Raises ValueError for a step outside the range.
    """
    table = shifted_sigmas(shift, num_train_timesteps)
    idx = []
    for k in steps:
        if not 0 < k <= num_train_timesteps:
            raise ValueError(f"denoising step {k} is outside 1..{num_train_timesteps}")
        idx.append(num_train_timesteps - int(k))
    return table[idx]
