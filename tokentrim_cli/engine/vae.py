"""Streaming decode (latent blocks in, uint8 RGB frames out) and streaming encode (pixel frames in, latent frames
out), each with its causal state kept across calls.

Wan's VAE decoder is causal in time and carries a feature cache from one latent frame to the next, so decoding
each block with ``vae.decode`` would restart that state and break continuity at every block boundary. Here the
cache is cleared once per video and each latent frame is pushed through the decoder in order, exactly as the
one-shot decode does internally: the very first latent frame yields 1 pixel frame, every later one 4.

The encoder is causal the same way (``AutoencoderKLWan._encode``: the first pixel frame alone, then 4 pixel frames
per latent frame, with the encoder's own feature cache ``_enc_feat_map`` carried from chunk to chunk), so
:class:`StreamingEncoder` pushes a video through it a few frames at a time and gives the same latents as one
``vae.encode`` of the whole video (bit-identical on the tiny Wan VAE, tests/test_extend.py) with memory bounded
by one call's frames. It keeps that cache itself, not in the VAE: ``vae.clear_cache`` (which a decode's first
call runs) cannot wipe it, so a video can be encoded and decoded in turns, chunk by chunk.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution


def streaming_decoder(components):
    """The video's streaming decoder: the fast one when the components carry it (``video.decoder: tiny``), else
    the VAE's. Both take normalised latent blocks and give the same frame count per block."""
    if getattr(components, "fast_decoder", None) is not None:
        from .tiny_decoder import TinyStreamingDecoder

        return TinyStreamingDecoder(components.fast_decoder)
    return StreamingDecoder(components.vae)


class StreamingDecoder:
    """Stateful decoder for one video at a time: ``reset`` at the start, then ``frames`` per block in order.

    Args:
        vae: diffusers' ``AutoencoderKLWan``, or a stateless codec with ``decode`` (the toy world's PatchCodec).
    """

    def __init__(self, vae):
        self.vae = vae
        if isinstance(vae, AutoencoderKLWan):
            self._mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
            self._std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        self._first = True

    def reset(self) -> None:
        """Start a new video: the causal feature cache is cleared."""
        if hasattr(self.vae, "clear_cache"):
            self.vae.clear_cache()
        self._first = True

    def state_dict(self) -> dict:
        """The causal state between two blocks (copies of Wan's feature cache), for a resumable state."""
        feats = getattr(self.vae, "_feat_map", None) if isinstance(self.vae, AutoencoderKLWan) else None
        return {"first": self._first,
                "feat_map": None if feats is None else [f.clone() if torch.is_tensor(f) else f for f in feats]}

    def load_state_dict(self, state: dict) -> None:
        """Go on decoding where the decoder that gave ``state`` stopped.

        Args:
            state: a :meth:`state_dict` of a decoder of the same VAE.
        """
        self.reset()
        self._first = state["first"]
        if state["feat_map"] is not None:
            dev = self.vae.post_quant_conv.weight.device
            self.vae._feat_map = [f.to(dev) if torch.is_tensor(f) else f for f in state["feat_map"]]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode latents that continue the stream.

        Args:
            latents: (B, C, F, h, w) normalised latents, the frames after the last ones decoded.

        Returns:
            (B, 3, F', H, W) pixels in [-1, 1] (F' = 1 + 4 (F - 1) for Wan's first block, else 4 F; F for the toy).
        """
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
        """:meth:`decode`, the first batch item as video frames.

        Args:
            latents: (B, C, F, h, w) normalised latents continuing the stream.

        Returns:
            (F', H, W, 3) uint8.
        """
        px = self.decode(latents)[0].float()
        px = ((px + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return px.permute(1, 2, 3, 0).cpu().numpy()


def encode_image(vae, pixels: torch.Tensor) -> torch.Tensor:
    """One picture (B, 3, 1, H, W) in [-1, 1] -> its normalised latent frame (B, C, 1, H/s, W/s), float32: the
    inverse of :meth:`StreamingDecoder.decode` for a video's first frame (Wan's causal VAE encodes a single frame
    to one latent frame). A stream of one frame: the decoder's feature cache is left alone.

    Args:
        vae: the codec.
        pixels: (B, 3, 1, H, W) in [-1, 1].

    Returns:
        (B, C, 1, H/s, W/s) float32 normalised latents.
    """
    return StreamingEncoder(vae).latents(pixels)


class StreamingEncoder:
    """Stateful encoder for one video at a time: ``reset`` at the start, then ``latents`` per chunk of pixel frames
    in order, of any sizes: frames that do not yet complete a latent frame (the first one alone, then 4 per latent
    frame) wait inside for the next call; those still waiting at the end are never encoded (``pending`` says how
    many). Returns normalised latents (posterior mode, ``(z - latents_mean) / latents_std``) like
    :func:`encode_image`. The toy world's stateless PatchCodec just encodes every frame.

    Args:
        vae: diffusers' ``AutoencoderKLWan``, or a stateless codec with ``encode``.
    """

    def __init__(self, vae):
        self.vae = vae
        self._wan = isinstance(vae, AutoencoderKLWan)
        # pixel frames per latent frame after the first: 4 for Wan2.1 (the constant diffusers' _encode chunks by)
        self.ratio = 2 ** sum(bool(t) for t in vae.config.temperal_downsample) if self._wan else 1
        if self._wan:
            self._mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
            self._std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        self.reset()

    def reset(self) -> None:
        """Start a new video: nothing waits, the feature cache is empty."""
        self._first = True
        self._wait: torch.Tensor | None = None
        if self._wan:  # its own feature cache, as _encode's _enc_feat_map
            self._cache = [None] * self.vae._cached_conv_counts["encoder"]

    @property
    def pending(self) -> int:
        """Pixel frames given that do not complete a latent frame yet."""
        return 0 if self._wait is None else int(self._wait.shape[2])

    @torch.no_grad()
    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encode pixel frames that continue the stream.

        Args:
            pixels: (B, 3, F, H, W) in [-1, 1].

        Returns:
            (B, C, n, H/s, W/s) float32 normalised latents of the latent frames they complete (n may be 0).
        """
        vae = self.vae
        if not self._wan:  # stateless codecs (the toy world's PatchCodec)
            return vae.encode(pixels.to(vae.mean.device)).float()
        dev, dtype = vae.post_quant_conv.weight.device, vae.post_quant_conv.weight.dtype
        x = pixels.to(dev, dtype)
        if self._wait is not None:
            x = torch.cat([self._wait, x], dim=2)
        outs, start = [], 0
        while True:
            size = 1 if self._first else self.ratio
            if x.shape[2] - start < size:
                break
            chunk = x[:, :, start : start + size]
            if vae.config.patch_size is not None:
                from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

                chunk = patchify(chunk, patch_size=vae.config.patch_size)
            outs.append(vae.encoder(chunk, feat_cache=self._cache, feat_idx=[0]))
            self._first, start = False, start + size
        self._wait = x[:, :, start:].clone() if start < x.shape[2] else None
        b, _, _, h, w = x.shape
        s = vae.spatial_compression_ratio
        if not outs:
            return torch.zeros(b, vae.config.z_dim, 0, h // s, w // s)
        z = DiagonalGaussianDistribution(vae.quant_conv(torch.cat(outs, dim=2))).mode().float()
        return (z - self._mean.to(dev)) / self._std.to(dev)
