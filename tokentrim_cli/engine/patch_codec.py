"""A linear patch codec: the toy world's stand-in for the Wan VAE, fitted in closed form.

Each p x p RGB patch (3 p^2 values) is projected on the top principal components of patches from the world, and
the coefficients are scaled: with p = 4 and 16 components a 64x64 frame becomes a 16 x 16 x 16 latent, the layout
the transformer and TokenTrim expect (16 channels, 2x2-patch tokens). ``scale="channel"`` (the shipped codec) gives
every component unit variance; ``"global"`` divides all by one common RMS, so latent MSE is pixel MSE (why the
shipped codec is per channel, and why not a small Wan VAE: docs/toy_model.md). It is fitted in seconds, is
deterministic, has no temporal compression (one latent frame per pixel frame) and no state, so streaming decode is
trivially exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PatchCodec(torch.nn.Module):
    """The toy world's codec (module docstring); identity until :meth:`fit` or a loaded state dict.

    Args:
        patch: p, the patch side in pixels (the spatial compression).
        channels: C, principal components kept (latent channels).
    """

    def __init__(self, patch: int = 4, channels: int = 16):
        super().__init__()
        self.patch, self.channels = patch, channels
        dim = 3 * patch * patch
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.eye(dim)[:, :channels].clone())
        self.register_buffer("scale", torch.ones(channels))

    spatial_compression_ratio = property(lambda self: self.patch)
    temporal_compression_ratio = 1

    @torch.no_grad()
    def fit(self, pixels: torch.Tensor, scale: str = "channel") -> "PatchCodec":
        """Fit the projection in closed form (PCA of the patches).

        Args:
            pixels: (N, 3, H, W) in [-1, 1], H and W multiples of p.
            scale: ``"channel"`` or ``"global"`` (module docstring).

        Returns:
            self.
        """
        if scale not in ("channel", "global"):
            raise ValueError(f"scale must be 'channel' or 'global', got {scale!r}")
        d = F.pixel_unshuffle(pixels.float(), self.patch).permute(0, 2, 3, 1).reshape(-1, 3 * self.patch**2).double()
        mean = d.mean(0)
        cov = (d - mean).T @ (d - mean) / len(d)
        _, vecs = torch.linalg.eigh(cov)
        basis = vecs[:, -self.channels :].flip(1)
        basis = basis * torch.sign(basis.sum(0, keepdim=True) + 1e-12)  # deterministic signs
        z = (d - mean) @ basis
        self.mean.copy_(mean.float())
        self.basis.copy_(basis.float())
        if scale == "channel":
            self.scale.copy_(z.std(0).clamp_min(1e-6).float())
        else:
            self.scale.fill_(float(z.pow(2).mean().sqrt().clamp_min(1e-6)))
        return self

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encode every pixel frame to one latent frame.

        Args:
            pixels: (B, 3, F, H, W) in [-1, 1].

        Returns:
            (B, C, F, H/p, W/p) normalised latents.
        """
        b, _, f, h, w = pixels.shape
        x = pixels.permute(0, 2, 1, 3, 4).reshape(b * f, 3, h, w).float()
        d = F.pixel_unshuffle(x, self.patch).permute(0, 2, 3, 1)
        z = ((d - self.mean) @ self.basis) / self.scale
        return z.reshape(b, f, h // self.patch, w // self.patch, -1).permute(0, 4, 1, 2, 3)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode` (within the kept components).

        Args:
            latents: (B, C, F, h, w).

        Returns:
            (B, 3, F, h p, w p) pixels clamped to [-1, 1].
        """
        b, _, f, h, w = latents.shape
        z = latents.float().permute(0, 2, 3, 4, 1).reshape(b * f, h, w, -1)
        d = (z * self.scale) @ self.basis.T + self.mean
        x = F.pixel_shuffle(d.permute(0, 3, 1, 2), self.patch)
        return x.reshape(b, f, 3, h * self.patch, w * self.patch).permute(0, 2, 1, 3, 4).clamp(-1, 1)
