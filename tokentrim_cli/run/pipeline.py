"""prompt -> embeddings -> autoregressive loop -> latent blocks (-> frames, in memory, for tests and benchmarks).
Knows no files and no terminals."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..config.settings import Config, Sampler
from ..engine.components import Components
from ..engine.guidance import Guided
from ..engine.journal import Journal, replay
from ..engine.noise import NoiseSource
from ..engine.policies import make_cache
from ..engine.samplers import SAMPLERS, Block, BlockSteps, Hooks, LoopState, WindowEntry, write_block
from ..engine.schedule import warp_steps
from ..engine.switch import ContextLatents, switch
from ..engine.vae import StreamingDecoder, encode_image
from ..pruning import make_reviewer
from .plan import Plan
from .prompt_schedule import PromptSchedule, timeline_switches
from .state import BlockState, KeptBlock, LoopPosition, off_device

__all__ = ["Plan", "Lead", "generate_blocks", "resume_blocks", "generate_video", "image_latents",
           "timeline_switches", "PromptSchedule"]


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


IMAGE_BLOCK = 2**31  # the noise key of a lead's first write pass (context_noise > 0); blocks are 0, 1, ...
# a lead's write passes are IMAGE_BLOCK, IMAGE_BLOCK + 1, ... (one pass for an image)


@dataclass(frozen=True)
class Lead:
    """Latent frames given before block 0, written to the cache as clean context by write passes at their
    absolute latent frame indices: ``generate --image``'s frame 0 (:meth:`image`), or the frames of an
    ``--extend`` video its cache policy keeps (``continuation.py``: sink + tail, with a gap the cache's layout
    closes).

    Args:
        latents: (B, C, len(latent_frames), h, w), normalised like the blocks'.
        latent_frames: their absolute indices, increasing.
    """

    latents: torch.Tensor
    latent_frames: tuple[int, ...]

    @classmethod
    def image(cls, latents: torch.Tensor) -> "Lead":
        """A start image's lead: its latents (B, C, 1, h, w) (``image_latents``) as latent frame 0."""
        return cls(latents, (0,))

    def passes(self, block_frames: int) -> list[Block]:
        """The write passes, in time order: each run of consecutive frames cut into pieces of ``block_frames``;
        the last run is cut from its end (the newest pass is a whole block, as a generated block's), earlier runs
        (the sink) from their start (as the blocks that made them were)."""
        frames, runs, start = self.latent_frames, [], 0
        for k in range(1, len(frames) + 1):
            if k == len(frames) or frames[k] != frames[k - 1] + 1:
                runs.append((start, k))
                start = k
        pieces = []
        for r, (a, b) in enumerate(runs):
            if r == len(runs) - 1:
                cuts = list(range(b, a, -block_frames))[::-1]
                pieces += list(zip([a] + cuts[:-1], cuts))
            else:
                pieces += [(i, min(i + block_frames, b)) for i in range(a, b, block_frames)]
        return [Block(IMAGE_BLOCK + k, list(frames[a:b]), self.latents[:, :, a:b]) for k, (a, b) in enumerate(pieces)]

    def write(self, model, cache, noise: NoiseSource, block_frames: int, context_noise: float,
              kept: ContextLatents | None) -> None:
        """Write the lead's passes into ``cache`` (each admitted by the policy's rules, as a block would be)."""
        for block in self.passes(block_frames):
            block.latents = block.latents.to(model.device, torch.float32)
            write_block(model, cache, block.latents, torch.tensor(block.latent_frames), noise, block.index,
                        context_noise)
            if kept is not None:
                kept.add(block, cache)

    def check(self, plan: Plan) -> None:
        """ValueError unless ``plan`` was made for this lead (``Plan.for_preset(..., image=True)`` or extend=N)."""
        if not plan.start_frame or max(self.latent_frames) >= plan.start_frame:
            raise ValueError("a lead goes with a plan for one (Plan.for_preset(..., image=True) or extend=N)")


def image_latents(components: Components, pixels: torch.Tensor) -> torch.Tensor:
    """A start image (1, 3, 1, H, W) in [-1, 1] as the video's latent frame 0 (normalised, like the blocks')."""
    return encode_image(components.vae, pixels)


class BlockLoop:
    """One generation: the model, cache, noise, reviewer and prompt schedule of a run, and its loop over blocks.

    Args:
        components: the loaded models.
        cfg: the preset's settings.
        schedule: the prompts (bound here to the model's text encoding).
        seed: the noise seed.
        plan: the request's plan.
        journal: records the cache's history (a resumable run); None: no state is taken.
    """

    def __init__(self, components: Components, cfg: Config, schedule: PromptSchedule, seed: int, plan: Plan,
                 journal: Journal | None):
        samp = self.samp = cfg.sampler
        self.cfg, self.plan, self.schedule, self.journal = cfg, plan, schedule, journal
        self.model = model = guided_model(components, samp)
        schedule.bind(lambda text: encode_prompt(model, components, samp, text))
        scale = components.vae.spatial_compression_ratio
        shape = (1, model.config.in_channels, plan.block_frames, cfg.video.height // scale, cfg.video.width // scale)
        self.noise = NoiseSource(seed, shape, device=model.device, fresh_on_retry=cfg.pruning.noise == "fresh")
        self.cache = make_cache(cfg.cache, model.num_layers, model.rope_len)
        self.reviewer = make_reviewer(cfg.pruning)
        self.kept = ContextLatents() if schedule.recaches else None
        self.loop = LoopState()

    def start(self, lead: Lead | None) -> None:
        """A fresh generation: the first prompt, then the lead's write passes."""
        self.cache.journal = self.journal
        self._use(self.schedule.embeddings(0))
        if lead is not None:
            lead.write(self.model, self.cache, self.noise, self.plan.block_frames, self.samp.context_noise, self.kept)

    def restore(self, state: BlockState) -> None:
        """Go on from ``state``: the cache rebuilt by replaying its journal (the lead included), the sampler's
        position, TokenTrim's statistics and the kept latents as they were."""
        device = self.model.device
        self.journal = replay(state.journal, self.model, self.cache)
        window = [WindowEntry(w.block, w.x.to(device), w.step, w.attempt) for w in state.loop.window]
        self.loop = LoopState(state.loop.next_block, window)
        if self.reviewer is not None:
            self.reviewer.load_state_dict(state.reviewer)
        if self.kept is not None:
            self.kept.blocks = [Block(k.index, list(k.latent_frames), k.latents.to(device)) for k in state.kept]

    def blocks(self) -> Iterator[Block]:
        """The finished blocks, each with its record (and, with a journal, its state)."""
        samp, plan = self.samp, self.plan
        steps = BlockSteps(plan.blocks, warp_steps(samp.steps, samp.shift), plan.block_frames, samp.context_noise,
                           plan.start_frame, samp.solver,
                           warp_steps(samp.first_block_steps, samp.shift) if samp.first_block_steps else None)
        hooks = Hooks(self.reviewer, self._before_block, self.loop)
        started = time.perf_counter()
        for block in SAMPLERS[samp.kind](self.model, self.cache, self.noise, steps, hooks):
            if self.kept is not None:
                self.kept.add(block, self.cache)
            if self.journal is not None:
                block.state = self.snapshot(block.index)
            now = time.perf_counter()
            block.record = self._record(block, now - started)
            started = now
            yield block

    def snapshot(self, block: int) -> BlockState:
        """The state right after ``block``, copied off the device."""
        window = tuple(WindowEntry(w.block, off_device(w.x), w.step, w.attempt) for w in self.loop.window)
        kept = (tuple(KeptBlock(b.index, tuple(b.latent_frames), off_device(b.latents)) for b in self.kept.blocks)
                if self.kept is not None else None)
        reviewer = off_device(self.reviewer.state_dict()) if self.reviewer is not None else None
        return BlockState(block, LoopPosition(self.loop.next_block, window), self.journal.state(), reviewer, kept)

    def _use(self, embeddings: tuple) -> None:
        """Set the prompt (through the journal, when there is one)."""
        if self.journal is not None:
            self.journal.set_prompt(self.model, *embeddings)
        else:
            self.model.set_prompt(*embeddings)

    def _before_block(self, i: int) -> None:
        """The sampler is about to start block ``i``: the prompt it is made under, and a switch's cache treatment
        (``engine/switch.py``) and TokenTrim's new warm-up when one starts there."""
        change = self.schedule.change_before(i)
        if change is None:
            return
        self._use(change.embeddings)
        if change.switch is None:
            return
        switch(change.switch.mode, self.model, self.cache, self.kept, self.noise, self.plan.first_latent_frame(i),
               self.samp.context_noise)
        if self.reviewer is not None:
            self.reviewer.restart(i)

    def _record(self, block: Block, seconds: float) -> dict:
        """The block's record: the reviewer's, with defaults, the prompt entry and blend with a timeline, the
        cache's size and the seconds the block took."""
        record = block.record
        if self.schedule.timeline:
            record["prompt"] = self.schedule.entry_of(block.index)
            weight = self.schedule.blend_of(block.index)
            if weight is not None:
                record["blend"] = round(weight, 4)
        record = {"severity": None, "threshold": None, "regenerated": False, "regenerations": 0, "pruned_tokens": 0,
                  **record}
        record.update(cache_bytes=self.cache.nbytes, cache_tokens=self.cache.num_tokens, seconds=seconds)
        return record


def generate_blocks(components: Components, cfg: Config, prompts: str | list | PromptSchedule, seed: int,
                    plan: Plan, lead: Lead | None = None, resumable: bool = False) -> Iterator[Block]:
    """Yield finished latent blocks for one prompt, a timeline of prompts or a :class:`PromptSchedule`; each
    block's record gains cache size, timing and, with a timeline, ``prompt`` (the index of the entry it was made
    under, for Rolling Forcing the one it entered the window under) and ``blend`` (its weight, inside a blend).

    At a switch (before the sampler first runs the model on the switch block) the new prompt's cross-attention
    is set, the cache is treated by the switch's mode (``engine/switch.py``) and TokenTrim starts a new warm-up
    from that block. Rolling Forcing: the blocks already in the window, partly denoised under the old prompt,
    finish under the new one; the switch block is denoised wholly under it.

    Args:
        prompts: the text, a timeline (snapped to ``plan``) or a schedule.
        lead: latent frames written to the cache before block 0 (:class:`Lead`; ``plan.start_frame`` counts
            them): a start image's frame 0 (not yielded: the caller decodes it first) or an ``--extend`` video's
            context. A recache switch writes it again with the blocks while the cache holds it.
        resumable: every block carries ``state``, a :class:`BlockState` (copied off the device) that
            :func:`resume_blocks` goes on from exactly.
    """
    if lead is not None:
        lead.check(plan)
    elif plan.start_frame:
        raise ValueError("a plan for an image or an --extend video needs its lead")
    loop = BlockLoop(components, cfg, PromptSchedule.of(prompts, cfg, plan), seed, plan,
                     Journal() if resumable else None)
    loop.start(lead)
    yield from loop.blocks()


def resume_blocks(components: Components, cfg: Config, prompts: str | list | PromptSchedule, seed: int,
                  plan: Plan, state: BlockState) -> Iterator[Block]:
    """The blocks after ``state`` (a block's ``state`` from :func:`generate_blocks` with the same arguments), the
    same, bit for bit, as the run that left it; each carries its state in turn."""
    loop = BlockLoop(components, cfg, PromptSchedule.of(prompts, cfg, plan), seed, plan, None)
    loop.restore(state)
    yield from loop.blocks()


def generate_video(components: Components, cfg: Config, prompt: str, seed: int, seconds: float,
                   image: torch.Tensor | None = None) -> tuple[np.ndarray, list[dict]]:
    """A whole video in memory: (F, H, W, 3) uint8 frames trimmed to the plan, and every block's record; ``image``
    (1, 3, 1, H, W) in [-1, 1]: the video starts from it. The command streams blocks to the MP4 instead
    (``video_run.py``); this is for tests and benchmarks."""
    plan = Plan.for_preset(seconds, cfg, image=image is not None)
    lead = Lead.image(image_latents(components, image)) if image is not None else None
    decoder = StreamingDecoder(components.vae)
    decoder.reset()
    frames, records = ([decoder.frames(lead.latents)] if lead is not None else []), []
    for block in generate_blocks(components, cfg, prompt, seed, plan, lead):
        frames.append(decoder.frames(block.latents))
        records.append(block.record)
    return np.concatenate(frames)[: plan.frames], records
