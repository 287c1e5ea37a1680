"""Classifier-free guidance as a model wrapper, so either sampler gets it without knowing.

The conditional and unconditional branches run as one batch of two, and each keeps its own context: the write
pass stores both branches' K/V in the same cache (batch item 0: prompt, 1: negative prompt), so every cache
policy, selection and pruning applies to both alike. Distilled few-step models (Self Forcing, Rolling Forcing)
are trained without it; a model trained by plain flow matching with caption dropout (the toy model) needs it to
follow its prompt.
"""

from __future__ import annotations

import torch


class Guided:
    """A model with classifier-free guidance: called like it, returns uncond + scale * (cond - uncond).

    Frames below ``min_timestep`` are left unguided (a guidance interval, Kynkaanniemi et al. 2024: late guided
    steps sharpen the difference between the branches into speckle); a forward whose frames are all unguided costs
    one branch, not two.

    Args:
        model: the :class:`~.model.CausalWan` (or anything called like it).
        scale: the guidance scale (> 1).
        min_timestep: frames at a lower timestep (0..1000) are not guided.
    """

    def __init__(self, model, scale: float, min_timestep: float = 0.0):
        self.model, self.scale, self.min_timestep = model, float(scale), float(min_timestep)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def set_prompt(self, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor) -> None:
        """Both branches' prompts, each (1, L, text_dim): batch item 0 the prompt, 1 the negative."""
        self.model.set_prompt(torch.cat([prompt_embeds, negative_embeds]))

    def __call__(self, latents: torch.Tensor, timesteps, frames, **kwargs) -> torch.Tensor:
        unguided = bool((torch.as_tensor(timesteps) < self.min_timestep).all())
        if unguided and not (kwargs.get("write") or kwargs.get("first_step")):
            # the negative branch would weigh 0: run the prompt's alone (the model reads the first batch items of
            # the two-branch cache and prompt K/V). Write passes and a block's first step (when policies choose
            # their context) keep both branches.
            return self.model(latents, timesteps, frames, **kwargs)
        v = self.model(torch.cat([latents, latents]), timesteps, frames, **kwargs)
        cond, uncond = v.chunk(2)
        ts = torch.as_tensor(timesteps, device=v.device).float().reshape(-1, v.shape[2])  # (1 or B, F)
        scale = torch.where(ts >= self.min_timestep, self.scale, 1.0).to(v.dtype)[:, None, :, None, None]
        return uncond + scale * (cond - uncond)
