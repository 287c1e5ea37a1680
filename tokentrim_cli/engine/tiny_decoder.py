"""A fast decoder for Wan 2.1 latents: the decoder half of TAEHV's ``taew2_1`` (``video.decoder: tiny``).

Facts read in madebyollin/taehv (``taehv.py`` and its README at 1f14a56, MIT license, Ollin Boer Bohan); the code
here is tokentrim's own:

- the published weights: ``taew2_1.pth`` and ``safetensors/taew2_1.safetensors`` in that GitHub repository (last
  changed in 0ad83bb8, 2025-11-30; the decoder is the "Fruit Tiramisu" update of 2025-11-03). One flat state dict
  holds the encoder (``encoder.*``) and the decoder (``decoder.N.*``, N the index in a sequential stack); only the
  decoder is read here.
- input: the latents the diffusion model works in (16 channels, no ``latents_mean``/``latents_std`` applied:
  TAEHV decodes exactly what the transformer produces, tokentrim's normalised latents); output RGB in [0, 1].
- the stack: a soft clamp 3 tanh(x / 3), a 3x3 conv 16 -> 256, then three stages of 256, 128 and 64 channels, each
  three memory blocks, a 2x nearest upsample in space, a temporal "grow" (a bias-free 1x1 conv to ``s`` times the
  channels, read as ``s`` consecutive frames; ``s`` = 1, 2, 2 for the three stages) and a bias-free 3x3 conv to
  the next width (the last stage's stays at 64), then a ReLU and a 3x3 conv 64 -> 3.
- a memory block sees its input frame and the previous frame's input at the same block (zeros for the first):
  three 3x3 convs (2C -> C, C -> C, C -> C, ReLUs between) plus the input, then a ReLU.
- temporal upsampling is 4x (two stages of 2), and the first 3 frames of a stream are dropped: T latent frames give
  4T - 3 pixel frames, Wan's VAE's count (1 for the first latent frame, 4 for each later one).

Every operation is causal in time with a one-frame memory per memory block, so a stream decoded block by block (the
memories carried from one block to the next) gives the frames of decoding all latents at once; a block's latent
frames go through the stack one at a time, each one's 4 pixel frames through each layer together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

LICENSE = "MIT (github.com/madebyollin/taehv LICENSE)"
LATENT_CHANNELS = 16
STAGES = ((256, 1), (128, 2), (64, 2))  # (width, temporal growth) per stage
SKIP_FRAMES = 3  # first decoded frames of a stream dropped (temporal upsampling 4x minus 1)
PIXEL_RATIO = 4  # pixel frames per latent frame after the first
SPACE_RATIO = 8  # pixels per latent position


class SoftClamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(x / 3.0)


def conv3(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


class MemoryBlock(nn.Module):
    """Residual block over the current frame and the previous frame's input: (N, C, H, W) each."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(conv3(2 * channels, channels), nn.ReLU(), conv3(channels, channels), nn.ReLU(),
                                  conv3(channels, channels))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], 1)) + x)


class TimeGrow(nn.Module):
    """One frame -> ``stride`` frames: a 1x1 conv to ``stride`` x the channels, split in order."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) -> (N, T * stride, C, H, W)."""
        n, t, c, h, w = x.shape
        y = self.conv(x.reshape(n * t, c, h, w))
        return y.reshape(n, t * self.stride, c, h, w)


def decoder_layers() -> list[nn.Module]:
    """The stack, at the indices the published file's ``decoder.N`` keys name."""
    layers: list[nn.Module] = [SoftClamp(), conv3(LATENT_CHANNELS, STAGES[0][0]), nn.ReLU()]
    for i, (width, grow) in enumerate(STAGES):
        nxt = STAGES[i + 1][0] if i + 1 < len(STAGES) else width
        layers += [MemoryBlock(width) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), TimeGrow(width, grow), conv3(width, nxt, bias=False)]
    return layers + [nn.ReLU(), conv3(STAGES[-1][0], 3)]


@dataclass
class StreamState:
    """Where a stream stands between two blocks: each memory block's last input frame, and frames still to drop."""

    memory: dict[int, torch.Tensor]
    skip: int = SKIP_FRAMES


class TinyDecoder(nn.Module):
    """TAEHV's Wan 2.1 decoder. ``decode`` continues a stream (``state``) with a block of latent frames."""

    def __init__(self):
        super().__init__()
        self.decoder = nn.Sequential(*decoder_layers())

    def decode(self, latents: torch.Tensor, state: StreamState) -> torch.Tensor:
        """Args:
            latents: (N, 16, T, h, w) normalised Wan 2.1 latents that continue the stream.
            state: the stream's state, updated in place.
        Returns (N, 3, F, 8h, 8w) RGB in [0, 1], F = 4T minus the frames the stream still drops. One latent frame
        goes through the stack at a time (memory bounded by its 4 pixel frames)."""
        return torch.cat([self._decode_one(z, state) for z in latents.split(1, dim=2)], dim=2)

    def _decode_one(self, latents: torch.Tensor, state: StreamState) -> torch.Tensor:
        p = next(self.parameters())
        x = latents.to(p.device, p.dtype).permute(0, 2, 1, 3, 4)  # (N, T, C, h, w)
        for index, layer in enumerate(self.decoder):
            x = self._layer(index, layer, x, state)
        drop = min(state.skip, x.shape[1])
        state.skip -= drop
        return x[:, drop:].clamp(0.0, 1.0).permute(0, 2, 1, 3, 4)

    @staticmethod
    def _layer(index: int, layer: nn.Module, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        if isinstance(layer, TimeGrow):
            return layer(x)
        n, t = x.shape[:2]
        flat = x.reshape(n * t, *x.shape[2:])
        if isinstance(layer, MemoryBlock):
            before = state.memory.get(index)
            first = torch.zeros_like(x[:, :1]) if before is None else before[:, None].to(x.dtype)
            past = torch.cat([first, x[:, :-1]], 1).reshape(flat.shape)
            state.memory[index] = x[:, -1].clone()
            out = layer(flat, past)
        else:
            out = layer(flat)
        return out.reshape(n, t, *out.shape[1:])


def decoder_state_dict(sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The ``decoder.*`` entries of a TAEHV file (its encoder's are left out); one line when there are none."""
    out = {k: v for k, v in sd.items() if k.startswith("decoder.")}
    if not out:
        raise WeightsError(f"{source} holds no TAEHV decoder (no decoder.* keys): model.tiny_decoder must name a "
                           "taew2_1 file")
    return out


def read_file(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` or torch ``.pth`` file's tensors (tensors only); one line if it cannot be read."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file becomes one line
        raise WeightsError(f"cannot read the tiny decoder {path}: {exc}") from None
    if not isinstance(sd, dict):
        raise WeightsError(f"{path} holds no state dict (model.tiny_decoder must name a taew2_1 file)")
    return sd


def build_tiny_decoder(ref: Path | int, device="cpu", dtype=torch.float32) -> TinyDecoder:
    """The decoder from a resolved weights reference: a file, or an int seed (random weights, tests)."""
    from . import weights as W

    if isinstance(ref, int):
        torch.manual_seed(ref)
        model = TinyDecoder()
    else:
        with torch.device("meta"):
            model = TinyDecoder()
        sd = decoder_state_dict(read_file(Path(ref)), str(ref))
        W.load_into(model, {k: v.float() for k, v in sd.items()}, str(ref))
    return model.to(device, dtype).eval().requires_grad_(False)


class TinyStreamingDecoder:
    """The streaming decoder's interface (``engine/vae.py`` StreamingDecoder) over a :class:`TinyDecoder`:
    ``reset`` at the start of a video, then ``frames`` per block in order; the same frame count per block."""

    def __init__(self, model: TinyDecoder):
        self.model = model
        self.state = StreamState({})

    def reset(self) -> None:
        self.state = StreamState({})

    def state_dict(self) -> dict:
        """The causal state between two blocks, for a resumable state."""
        return {"tiny": True, "skip": self.state.skip,
                "memory": {i: m.detach().cpu().clone() for i, m in self.state.memory.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Go on decoding where the decoder that gave ``state`` stopped."""
        if not state.get("tiny"):
            raise WeightsError("this resumable state was saved by the full VAE decoder; resume with video.decoder vae")
        dev = next(self.model.parameters()).device
        self.state = StreamState({int(i): m.to(dev) for i, m in state["memory"].items()}, int(state["skip"]))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, F, H, W) that continue the stream -> pixels in [-1, 1]."""
        return self.model.decode(latents, self.state) * 2.0 - 1.0

    @torch.no_grad()
    def frames(self, latents: torch.Tensor) -> np.ndarray:
        """Decode and convert the first batch item to uint8 frames of shape (F, H, W, 3)."""
        px = self.model.decode(latents, self.state)[0].float()
        px = (px * 255.0).round().clamp(0, 255).to(torch.uint8)
        return px.permute(1, 2, 3, 0).cpu().numpy()
