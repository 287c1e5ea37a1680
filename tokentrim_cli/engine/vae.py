"""Streaming decode: latent blocks in, uint8 RGB frames out, with the causal decoder state kept across blocks.

Wan's VAE decoder is causal in time and carries a feature cache from one latent frame to the next, so decoding
each block with ``vae.decode`` would restart that state and break continuity at every block boundary. Here the
cache is cleared once per video and each latent frame is pushed through the decoder in order, exactly as the
one-shot decode does internally: the very first latent frame yields 1 pixel frame, every later one 4.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKLWan


class StreamingDecoder:
    """Stateful decoder for one video at a time: ``reset`` at the start, then ``frames`` per block in order."""

    def __init__(self, vae):
        self.vae = vae
        if isinstance(vae, AutoencoderKLWan):
            self._mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
            self._std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        self._first = True

    def reset(self) -> None:
        if hasattr(self.vae, "clear_cache"):
            self.vae.clear_cache()
        self._first = True

    def state_dict(self) -> dict:
        """The causal state between two blocks (copies of Wan's feature cache), for a resumable state."""
        feats = getattr(self.vae, "_feat_map", None) if isinstance(self.vae, AutoencoderKLWan) else None
        return {"first": self._first,
                "feat_map": None if feats is None else [f.clone() if torch.is_tensor(f) else f for f in feats]}

    def load_state_dict(self, state: dict) -> None:
        """Go on decoding where the decoder that gave ``state`` stopped."""
        self.reset()
        self._first = state["first"]
        if state["feat_map"] is not None:
            dev = self.vae.post_quant_conv.weight.device
            self.vae._feat_map = [f.to(dev) if torch.is_tensor(f) else f for f in state["feat_map"]]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode normalised latents (B, C, F, H, W) that continue the stream; return pixels in [-1, 1]."""
        vae = self.vae
        if not isinstance(vae, AutoencoderKLWan):  # stateless codecs (the toy world's PatchCodec)
            return vae.decode(latents.to(vae.mean.device))
        if self._first:
            vae.clear_cache()
        dev, dtype = vae.post_quant_conv.weight.device, vae.post_quant_conv.weight.dtype
        z = latents.to(dev, torch.float32) * self._std.to(dev) + self._mean.to(dev)
        x = vae.post_quant_conv(z.to(dtype))
        outs = []
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            outs.append(vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=self._first))
            self._first = False
        return torch.cat(outs, dim=2).clamp(-1.0, 1.0)

    def frames(self, latents: torch.Tensor) -> np.ndarray:
        """Decode and convert the first batch item to uint8 frames of shape (F, H, W, 3)."""
        px = self.decode(latents)[0].float()
        px = ((px + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return px.permute(1, 2, 3, 0).cpu().numpy()


@torch.no_grad()
def encode_image(vae, pixels: torch.Tensor) -> torch.Tensor:
    """One picture (B, 3, 1, H, W) in [-1, 1] -> its normalised latent frame (B, C, 1, H/s, W/s), float32: the
    inverse of :meth:`StreamingDecoder.decode` for a video's first frame (Wan's causal VAE encodes a single frame
    to one latent frame; the latent is the posterior mean, normalised with latents_mean / latents_std). Call it
    before a video's decoding starts: Wan's encode clears the VAE's feature caches, the decoder's included."""
    if not isinstance(vae, AutoencoderKLWan):  # stateless codecs (the toy world's PatchCodec)
        return vae.encode(pixels.to(vae.mean.device)).float()
    dev, dtype = vae.post_quant_conv.weight.device, vae.post_quant_conv.weight.dtype
    z = vae.encode(pixels.to(dev, dtype)).latent_dist.mode().float()
    mean = torch.tensor(vae.config.latents_mean, device=dev).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=dev).view(1, -1, 1, 1, 1)
    return (z - mean) / std
