"""prompt -> embeddings -> autoregressive loop -> latent blocks (-> frames, in memory, for tests and benchmarks).
Knows no files and no terminals."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import torch

from ..config.checks import require_seconds
from ..engine.components import Components
from ..engine.guidance import Guided
from ..engine.journal import Journal, replay
from ..engine.noise import NoiseSource
from ..engine.policies import make_cache
from ..engine.samplers import SAMPLERS, Block, LoopState, write_context
from ..engine.schedule import warp_steps
from ..engine.switch import ContextLatents, switch
from ..engine.vae import StreamingDecoder, encode_image
from ..errors import ConfigError
from ..pruning import make_reviewer
from ..config.settings import Config, Sampler
from .timeline import Entry, Switch, blend_weight, prompt_of, snap


@dataclass(frozen=True)
class Plan:
    """How many frames a request becomes: seconds -> pixel frames -> latent frames -> whole blocks.

    ``start_frame`` 1 (``generate --image``): the video starts with a given picture, VAE-encoded as latent frame 0
    (1 pixel frame) and written to the cache as context; the blocks are generated from latent frame 1, so the video
    is 1 + ``temporal_ratio`` x ``latent_frames`` pixel frames before the trim to ``frames``.

    ``continued`` (``generate --extend``, ``start_frame`` N: the input's latent frames): the blocks continue a
    video; ``seconds`` and ``frames`` are the new part's only (time 0 at the seam), every new latent frame is
    ``temporal_ratio`` pixel frames, so the new part is ``temporal_ratio`` x ``latent_frames`` before the trim."""

    seconds: float
    fps: int
    frames: int  # pixel frames asked for; the video is trimmed to this
    latent_frames: int  # generated, a whole number of blocks
    blocks: int
    block_frames: int

    temporal_ratio: int = 4  # pixel frames per latent frame after the first
    start_frame: int = 0  # latent frames given before the first block (1: the --image frame; --extend: the input's)
    continued: bool = False  # the blocks continue a video (--extend): frames and seconds count from the seam

    @classmethod
    def for_seconds(cls, seconds: float, fps: int, block_frames: int, temporal_ratio: int = 4,
                    image: bool = False, extend: int = 0) -> "Plan":
        """``extend``: the latent frames of the video the blocks continue (0: none)."""
        require_seconds(seconds, "seconds")
        if fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps}")
        if image and extend:
            raise ValueError("a plan starts from an image or continues a video, not both")
        frames = max(1, round(seconds * fps))
        if extend:
            latent = math.ceil(frames / temporal_ratio)
        else:
            latent = (0 if image else 1) + math.ceil((frames - 1) / temporal_ratio)
        blocks = max(1, math.ceil(latent / block_frames))
        return cls(float(seconds), fps, frames, blocks * block_frames, blocks, block_frames, temporal_ratio,
                   extend or (1 if image else 0), bool(extend))

    @classmethod
    def for_preset(cls, seconds: float, cfg: Config, image: bool = False, extend: int = 0) -> "Plan":
        return cls.for_seconds(seconds, cfg.video.fps, cfg.sampler.block_frames, cfg.model.vae.temporal_ratio, image,
                               extend)

    def as_dict(self) -> dict:
        d = asdict(self)
        if not self.continued:
            del d["continued"]
        if not self.start_frame:  # a plain run's plan reads as before
            del d["start_frame"]
        elif self.continued:
            d["note"] = (f"the blocks continue the --extend video's {self.start_frame} latent frames (its context "
                         f"is written to the cache first); frames and seconds are the new part's")
        else:
            d["note"] = "the video starts with the image: latent frame 0 (1 pixel frame), written to the cache as " \
                         "context; the blocks are generated from latent frame 1"
        return d


def guided_model(components: Components, samp: Sampler):
    """The transformer, behind classifier-free guidance where the sampler settings ask for it."""
    if samp.guidance_scale > 1:
        return Guided(components.model, samp.guidance_scale, samp.guidance_min_timestep)
    return components.model


def prompted_model(components: Components, samp: Sampler, prompt: str):
    """The transformer set to ``prompt`` (its cross-attention K/V, with the negative prompt's when guided)."""
    model = guided_model(components, samp)
    model.set_prompt(*encode_prompt(model, components, samp, prompt))
    return model


def encode_prompt(model, components: Components, samp: Sampler, prompt: str) -> tuple:
    """(prompt embeddings,) or, when ``model`` is guided, (prompt, negative prompt) embeddings."""
    if isinstance(model, Guided):
        return tuple(components.encode([prompt, samp.negative_prompt]).chunk(2))
    return (components.encode([prompt]),)


def blended(old: tuple, new: tuple, weight: float) -> tuple:
    """The prompt embeddings ``weight`` of the way from ``old`` to ``new`` (linear; the negative prompt stays)."""
    return (torch.lerp(old[0], new[0], weight), *new[1:])


def timeline_switches(timeline: list[Entry] | None, cfg: Config, plan: Plan) -> list[Switch]:
    """The snapped switches of a timeline (ConfigError when it does not fit the video); [] without one."""
    if not timeline or len(timeline) < 2:
        return []
    switches = snap(timeline, plan.seconds, plan.blocks, plan.block_frames, plan.fps, plan.temporal_ratio,
                    cfg.sampler.switch, plan.start_frame, plan.continued)
    if cfg.cache.policy != "infinity_rope" and any(s.mode == "rope_cut" for s in switches):
        raise ConfigError(f"a rope_cut switch needs cache.policy infinity_rope (this preset's is {cfg.cache.policy}); "
                          "use cut, keep or recache")
    return switches


IMAGE_BLOCK = 2**31  # the start image's noise key (its context pass with context_noise > 0); blocks are 0, 1, ...
# the lead's context passes are IMAGE_BLOCK, IMAGE_BLOCK + 1, ... (one pass for an image)


@dataclass(frozen=True)
class Lead:
    """Latent frames given before block 0, written to the cache as clean context by context (write) passes at
    their absolute latent frame indices: ``generate --image``'s frame 0, or the frames of an ``--extend`` video
    its cache policy keeps (``continuation.py``: sink + tail, with a gap the cache's layout closes)."""

    latents: torch.Tensor  # (B, C, len(frames), h, w), normalised like the blocks'
    frames: tuple[int, ...]  # increasing

    def passes(self, block_frames: int) -> list[Block]:
        """The context passes, in time order: each run of consecutive frames cut into pieces of ``block_frames``;
        the last run is cut from its end (the newest pass is a whole block, as a generated block's), earlier runs
        (the sink) from their start (as the blocks that made them were)."""
        runs, start = [], 0
        for k in range(1, len(self.frames) + 1):
            if k == len(self.frames) or self.frames[k] != self.frames[k - 1] + 1:
                runs.append((start, k))
                start = k
        pieces = []
        for r, (a, b) in enumerate(runs):
            if r == len(runs) - 1:
                cuts = list(range(b, a, -block_frames))[::-1]
                pieces += list(zip([a] + cuts[:-1], cuts))
            else:
                pieces += [(i, min(i + block_frames, b)) for i in range(a, b, block_frames)]
        return [Block(IMAGE_BLOCK + k, list(self.frames[a:b]), self.latents[:, :, a:b]) for k, (a, b) in enumerate(pieces)]


def write_lead(model, cache, lead: Lead, noise: NoiseSource, block_frames: int, context_noise: float,
               kept: ContextLatents | None) -> None:
    """Write ``lead``'s context passes into ``cache`` (each admitted by the policy's rules, as a block would be)."""
    for block in lead.passes(block_frames):
        block.latents = block.latents.to(model.device, torch.float32)
        write_context(model, cache, block.latents, torch.tensor(block.frames), noise, block.index, context_noise)
        if kept is not None:
            kept.add(block, cache)


def lead_of(plan: Plan, image: torch.Tensor | None, lead: Lead | None) -> Lead | None:
    """The lead a run starts with (a start image is a lead of frame 0), checked against the plan."""
    if image is not None:
        lead = Lead(image, (0,)) if lead is None else None
        if lead is None:
            raise ValueError("give an image or a lead, not both")
    if (lead is not None) != bool(plan.start_frame) or (lead is not None and max(lead.frames) >= plan.start_frame):
        raise ValueError("an image or a lead goes with a plan for one (Plan.for_preset(..., image=True) or "
                         "extend=N), and back")
    return lead


def image_latents(components: Components, pixels: torch.Tensor) -> torch.Tensor:
    """A start image (1, 3, 1, H, W) in [-1, 1] as the video's latent frame 0 (normalised, like the blocks')."""
    return encode_image(components.vae, pixels)


def generate_blocks(components: Components, cfg: Config, prompt: str, seed: int, plan: Plan,
                    timeline: list[Entry] | None = None, image: torch.Tensor | None = None,
                    lead: Lead | None = None, resumable: bool = False, resume: dict | None = None) -> Iterator[Block]:
    """Yield finished latent blocks for one prompt, or for a timeline of prompts (then ``prompt`` is unused:
    the first entry's is); each block's record gains cache size, timing and, with a timeline, ``prompt`` (the
    index of the entry it was made under, for Rolling Forcing the one it entered the window under).

    At a switch (before the sampler first runs the model on the switch block) the new prompt's cross-attention
    is set, the cache is treated by the switch's mode (``engine/switch.py``) and TokenTrim starts a new warm-up
    from that block. Rolling Forcing: the blocks already in the window, partly denoised under the old prompt,
    finish under the new one; the switch block is denoised wholly under it. A switch with ``blend`` N sets, for
    the switch block and the N - 1 after it, the prompt embeddings k / (N + 1) of the way (k = 1..N) from the old
    prompt's to the new one's (the mode's cache treatment happens once, at the switch block, under the first
    blend), and the new prompt's from the block after; such blocks' records carry ``blend`` (the weight).

    ``image`` (with ``plan.start_frame`` 1; ``image_latents``): latent frame 0, written to the cache by one context
    pass (at ``context_noise``) before block 0, which is generated from latent frame 1; it is not yielded (the
    caller decodes it first). A recache switch rebuilds it with the blocks while the cache holds it. ``lead``
    (instead of ``image``; ``generate --extend``): the latent frames written first, by context passes of
    ``block_frames`` (:class:`Lead`); ``plan.start_frame`` is then the continued video's latent frame count.

    ``resumable``: every block carries ``state``, what it takes to go on exactly from right after it: the cache's
    journal (``engine/journal.py``), the sampler's :class:`LoopState`, the reviewer's statistics, the latents a
    recache would need and the blend in progress (tensors are shared, not copied: save them before the next
    block). ``resume``: such a state; the cache is rebuilt by replaying its journal (the image or lead included)
    and the loop goes on from its next block, giving the same blocks, bit for bit, as the run that left it."""
    lead = lead_of(plan, image, lead) if resume is None else None
    samp = cfg.sampler
    switches = timeline_switches(timeline, cfg, plan)
    if timeline:
        prompt = timeline[0].prompt
    model = guided_model(components, samp)
    scale = components.vae.spatial_compression_ratio
    shape = (1, model.config.in_channels, plan.block_frames, cfg.video.height // scale, cfg.video.width // scale)
    noise = NoiseSource(seed, shape, device=model.device, fresh_on_retry=cfg.pruning.noise == "fresh")
    cache = make_cache(cfg.cache, model.num_layers, model.rope_len)
    reviewer = make_reviewer(cfg.pruning)
    sampler = SAMPLERS[samp.kind]
    sigmas = warp_steps(samp.steps, samp.shift)
    first = {"first_sigmas": warp_steps(samp.first_block_steps, samp.shift)} if samp.first_block_steps else {}
    kept = ContextLatents() if any(s.mode == "recache" for s in switches) else None
    by_block = {s.block: s for s in switches}
    journal = Journal() if resumable or resume is not None else None
    embeds = {"now": None, "blend": {}}  # the embeddings in effect (when blending); block -> (weight, embeddings)
    loop = LoopState()

    def use(embeddings: tuple) -> None:  # every prompt goes through the journal, when there is one
        if journal is not None:
            journal.set_prompt(model, *embeddings)
        else:
            model.set_prompt(*embeddings)

    def use_prompt(text: str) -> None:
        use(encode_prompt(model, components, samp, text))

    if resume is not None:
        journal = replay(resume["journal"], model, cache)
        window = [{**w, "x": w["x"].to(model.device)} for w in resume["loop"]["window"]]
        loop = LoopState(resume["loop"]["next_block"], window)
        if reviewer is not None:
            reviewer.load_state_dict(resume["reviewer"])
        if kept is not None:
            kept.blocks = [Block(i, frames, latents.to(model.device)) for i, frames, latents in resume["kept"]]
        embeds = {"now": resume["embeds"]["now"], "blend": dict(resume["embeds"]["blend"])}
    else:
        cache.journal = journal
        use_prompt(prompt)
        if lead is not None:
            write_lead(model, cache, lead, noise, plan.block_frames, samp.context_noise, kept)

    def snapshot(index: int) -> dict:
        return {"block": index, "journal": journal.state(),
                "loop": {"next_block": loop.next_block, "window": [dict(w) for w in loop.window]},
                "reviewer": reviewer.state_dict() if reviewer is not None else None,
                "kept": [(b.index, b.frames, b.latents) for b in kept.blocks] if kept is not None else None,
                "embeds": {"now": embeds["now"], "blend": dict(embeds["blend"])}}

    def before_block(i: int) -> None:
        s = by_block.get(i)
        if s is None:
            if i in embeds["blend"]:  # inside a blend: only the cross-attention moves on
                use(embeds["blend"].pop(i)[1])
            return
        if s.blend:
            old = embeds["now"] or encode_prompt(model, components, samp, timeline[prompt_of(i - 1, switches)].prompt)
            new = encode_prompt(model, components, samp, timeline[s.entry].prompt)
            steps = {i + k: (k + 1) / (s.blend + 1) for k in range(s.blend + 1)}
            embeds["blend"] = {b: (w, blended(old, new, w) if w < 1 else new) for b, w in steps.items()}
            embeds["now"] = new
            use(embeds["blend"].pop(i)[1])
        else:
            embeds["now"] = None
            use_prompt(timeline[s.entry].prompt)
        switch(s.mode, model, cache, kept, noise, plan.start_frame + i * plan.block_frames, samp.context_noise)
        if reviewer is not None:
            reviewer.restart(i)

    started = time.perf_counter()
    for block in sampler(model, cache, noise, plan.blocks, sigmas, plan.block_frames, samp.context_noise, reviewer,
                         start_frame=plan.start_frame, solver=samp.solver,
                         before_block=before_block if switches else None, state=loop, **first):
        if kept is not None:
            kept.add(block, cache)
        if journal is not None:
            block.state = snapshot(block.index)
        if timeline:
            block.record["prompt"] = prompt_of(block.index, switches)
            weight = blend_weight(block.index, switches)
            if weight is not None:
                block.record["blend"] = round(weight, 4)
        now = time.perf_counter()
        block.record = {
            "severity": None, "threshold": None, "regenerated": False, "regenerations": 0, "pruned_tokens": 0,
            **block.record,
        }
        block.record.update(
            cache_bytes=cache.nbytes,
            cache_tokens=cache.num_tokens,
            seconds=now - started,
        )
        started = now
        yield block


def generate_video(components: Components, cfg: Config, prompt: str, seed: int, seconds: float,
                   image: torch.Tensor | None = None) -> tuple[np.ndarray, list[dict]]:
    """A whole video in memory: (F, H, W, 3) uint8 frames trimmed to the plan, and every block's record; ``image``
    (1, 3, 1, H, W) in [-1, 1]: the video starts from it. The command streams blocks to the MP4 instead (job.py);
    this is for tests and benchmarks."""
    plan = Plan.for_preset(seconds, cfg, image=image is not None)
    lead = image_latents(components, image) if image is not None else None
    decoder = StreamingDecoder(components.vae)
    decoder.reset()
    frames, records = ([decoder.frames(lead)] if lead is not None else []), []
    for block in generate_blocks(components, cfg, prompt, seed, plan, image=lead):
        frames.append(decoder.frames(block.latents))
        records.append(block.record)
    return np.concatenate(frames)[: plan.frames], records
