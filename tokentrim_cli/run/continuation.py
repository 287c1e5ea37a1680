"""Continuing a video (``generate --extend``): its latent frames, which of them become context, the decoder's
warm-up, and whether its frames are copied into the output or re-encoded.

Encoding: the whole input streams through the VAE's causal encoder (``StreamingEncoder``, 16 pixel frames per
call, so memory holds one chunk and the kept latent frames, never the video). Wan's encoder takes 1 + 4k pixel
frames (the first alone, then 4 per latent frame); when the input's count is not of that form, its *first*
(N - 1) mod 4 frames are left out of the encoding (they are still in the output), so the last latent frame ends
exactly at the input's last frame and the continuation follows it without a gap. The toy patch codec encodes
every frame (one latent frame each).

Context (the input's latent frames L): what the cache policy would hold after generating them itself, as the
policy answers it (``KVCache.retained_frames``): its sink (the first ``cache.sink_frames`` latent frames, for every
policy but ``full``) and the last frames that fill its attention span (``tail_frames`` of each policy class in
``engine/cache.py``, ``engine/policies.py``, ``engine/sink_policies.py``). These are written by write passes of
``block_frames`` (``pipeline.Lead``) at their true absolute indices, the
sink first; the cache's layout closes the gap between sink and tail, and the blocks are generated from latent
frame L. Rolling Forcing's sink is its first block: the input's first frames.

Seam in pixels: as each latent frame is encoded it is also pushed through the streaming decoder and its pixels
thrown away, so the decoder's causal state at the seam is exactly the one one decode of input + continuation
would reach: the first new latent frame gives 4 pixel frames that follow the input's last one. (Warming with a
tail only is not exact: on the tiny random-weight Wan VAE, a 12-of-13-frame tail still left the next block's
pixels 2.2 levels off on average, 42 at most.) The patch codec is stateless: nothing to warm.

Output: the input's frames are stream-copied (``video.concat_copy``), not re-encoded, when it is H.264 yuv420p at
the preset's size and fps and its SPS / PPS equal those of the preset's encoder (a one-frame probe encode); else
they are re-encoded through the writer first (said in the display and the sidecar's ``extend.reencoded``). Audio
is not carried over.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..engine.components import Components
from ..engine.policies import make_cache
from ..engine.vae import StreamingDecoder, StreamingEncoder
from ..errors import TokentrimError
from .pipeline import Lead
from .plan import Plan
from ..config.settings import Cache, Config, Video
from .source_video import SourceVideo
from ..output.video import Mp4Writer, h264_parameter_sets

CHUNK_PIXELS = 16  # pixel frames per encoder call: memory holds this many frames (plus up to 3 waiting)


def latent_count(frames: int, temporal_ratio: int) -> tuple[int, int]:
    """(latent frames of a video of ``frames`` pixel frames, leading pixel frames left out of the encoding)."""
    if temporal_ratio == 1:
        return frames, 0
    skipped = (frames - 1) % temporal_ratio
    return 1 + (frames - 1) // temporal_ratio, skipped


def context_frames(cache: Cache, block_frames: int, latent_frames: int, rope_len: int,
                   new_frames: int) -> tuple[tuple[int, ...], int]:
    """(the input's latent frames written as context, how many of them are the sink): what the preset's policy
    says it would hold (``KVCache.retained_frames``) with ``new_frames`` latent frames still to fit the RoPE table."""
    policy = make_cache(cache, num_layers=1, rope_len=rope_len)  # no buffer is allocated before a forward
    return policy.retained_frames(latent_frames, block_frames, new_frames)


def copy_problem(source: SourceVideo, vid: Video) -> str | None:
    """Why the input's frames cannot be stream-copied into the output (None: they can)."""
    if source.fitted:
        return f"its size {source.size[0]}x{source.size[1]} is not the preset's {vid.width}x{vid.height}"
    if source.codec != "h264" or source.pix_fmt != "yuv420p":
        return f"it is {source.codec or 'an unknown codec'} {source.pix_fmt}, not h264 yuv420p"
    with tempfile.TemporaryDirectory(prefix="tokentrim-probe-") as tmp:
        probe = Mp4Writer(Path(tmp) / "probe.mp4", vid.width, vid.height, vid.fps, vid.crf, vid.x264_preset)
        try:
            probe.write(np.zeros((1, vid.height, vid.width, 3), np.uint8))
            probe.finish()
            ours = h264_parameter_sets(probe.tmp)
        finally:
            probe.discard()
    if ours is None or h264_parameter_sets(source.path) != ours:
        return "its H.264 parameters (SPS / PPS) differ from the preset's encoder's (crf, preset, profile)"
    return None


@dataclass(frozen=True)
class Continuation:
    source: SourceVideo
    latent_frames: int  # the input's, L: the blocks start there
    skipped: int  # leading pixel frames left out of the encoding
    context: tuple[int, ...]  # latent frames written as context
    sink: int  # the first ``sink`` of them are the policy's sink
    reencoded: str | None  # why the input's frames are re-encoded (None: stream-copied)

    @property
    def copied(self) -> bool:
        return self.reencoded is None

    @property
    def seam_frame(self) -> int:
        """The output's first new pixel frame (every input frame comes first)."""
        return self.source.frames

    def as_dict(self) -> dict:
        d = {**self.source.as_dict(), "latent_frames": self.latent_frames,
             "encoded_frames": [self.skipped, self.source.frames - 1], "context_frames": list(self.context),
             "sink_frames": self.sink, "seam_frame": self.seam_frame, "copied": self.copied}
        if self.reencoded:
            d["reencoded"] = self.reencoded
        return d

    def describe(self, vid: Video) -> str:
        src = self.source
        fit = (f", fitted from {src.size[0]}x{src.size[1]} to {vid.width}x{vid.height} (cover, centre crop)"
               if src.fitted else "")
        how = "stream-copied" if self.copied else f"re-encoded ({self.reencoded})"
        return (f"extending {src.path} ({src.frames} frames at {src.fps:g} fps{fit}): {self.latent_frames} latent "
                f"frames, {len(self.context)} of them context; its frames are {how}; new frames from frame "
                f"{self.seam_frame}")


def plan_continuation(source: SourceVideo, cfg: Config, plan: Plan) -> Continuation:
    """Everything about the continuation that is known before the models load (and the copy check), for the
    ``plan`` of its new part (``Plan.for_preset(..., extend=L)``, L the input's latent frames)."""
    _, skipped = latent_count(source.frames, plan.temporal_ratio)
    rope_len = int(cfg.model.transformer.config.get("rope_max_seq_len", 1024))
    context, sink = context_frames(cfg.cache, plan.block_frames, plan.start_frame, rope_len, plan.latent_frames)
    return Continuation(source, plan.start_frame, skipped, context, sink, copy_problem(source, cfg.video))


def source_latents(components: Components, cont: Continuation, decoder: StreamingDecoder | None = None,
                   on_frame: Callable[[np.ndarray], None] | None = None) -> Lead:
    """Stream the input through the encoder (and ``decoder``, reset already, to warm it); every input frame goes to
    ``on_frame`` (F=1, H, W, 3) when given (the writer, when re-encoding). Returns the context frames as a Lead."""
    encoder = StreamingEncoder(components.vae)
    keep, kept, done = set(cont.context), {}, [0]
    warm = decoder is not None and hasattr(components.vae, "clear_cache")  # a stateless codec has nothing to warm

    def push(frames: list[np.ndarray]) -> None:
        x = torch.from_numpy(np.stack(frames)).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)[None]
        with torch.no_grad():
            z = encoder.latents(x)
        for j in range(z.shape[2]):
            if done[0] + j in keep:
                kept[done[0] + j] = z[:, :, j : j + 1].cpu()
        done[0] += z.shape[2]
        if warm and z.shape[2]:
            decoder.decode(z)

    chunk, read = [], 0
    for frame in cont.source.read():
        if on_frame is not None:
            on_frame(frame[None])
        if read >= cont.skipped:
            chunk.append(frame)
        read += 1
        if len(chunk) == CHUNK_PIXELS:
            push(chunk)
            chunk = []
    if chunk:
        push(chunk)
    if read != cont.source.frames or done[0] != cont.latent_frames:
        raise TokentrimError(f"--extend {cont.source.path}: read {read} frames ({done[0]} latent frames), but "
                             f"counted {cont.source.frames} before loading; is the file changing?")
    return Lead(torch.cat([kept[i] for i in cont.context], dim=2), cont.context)


def extend_plan(source: SourceVideo, cfg: Config, seconds: float):
    """(the Plan of the new part, the Continuation) for continuing ``source`` by ``seconds``."""
    latent, _ = latent_count(source.frames, cfg.model.vae.temporal_ratio)
    plan = Plan.for_preset(seconds, cfg, extend=latent)
    return plan, plan_continuation(source, cfg, plan)
