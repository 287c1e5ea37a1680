"""CausalWan: diffusers' ``WanTransformer3DModel`` run block by block with a KV cache.

The weights and submodules are diffusers' own; only the forward is ours, because the stock forward starts
RoPE at frame 0, embeds the prompt on every call and attends bidirectionally over everything it is given.
Here a forward takes latent frames at arbitrary absolute indices, one noise level per frame, and a cache to
read (and, on a context pass, to write). Read it next to ``WanTransformer3DModel.forward``: the arithmetic of
the modulation, the blocks and the output head is the same.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel

from .attention import CachedSelfAttention, ForwardState, PromptCrossAttention
from .cache import KVCache
from .rope import Rope


class CausalWan(torch.nn.Module):
    """diffusers' Wan transformer with a block-causal, cached forward (module docstring).

    Args:
        transformer: the loaded ``WanTransformer3DModel``; its attention processors are replaced by ours.
    """

    def __init__(self, transformer: WanTransformer3DModel):
        super().__init__()
        self.transformer = transformer
        self.state = ForwardState()
        for i, block in enumerate(transformer.blocks):
            block.attn1.set_processor(CachedSelfAttention(i, self.state))
            block.attn2.set_processor(PromptCrossAttention(i, self.state))
        self.rope = Rope(transformer.rope).to(self.device)
        self.piecewise = None  # a piecewise.PiecewiseBlocks when runtime.compile or runtime.cuda_graphs is on
        self.levers = None  # levers.LeverReport once levers.apply_levers ran (load_components)

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        """The transformer's diffusers config."""
        return self.transformer.config

    @property
    def num_layers(self) -> int:
        """Transformer blocks (each reads and writes one cache layer)."""
        return len(self.transformer.blocks)

    @property
    def rope_len(self) -> int:
        """Entries of the temporal RoPE table (``rope_max_seq_len``)."""
        return self.transformer.config.rope_max_seq_len

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return self.transformer.proj_out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (the forward casts its input to it)."""
        return self.transformer.proj_out.weight.dtype

    def to(self, *args, **kwargs):
        """``nn.Module.to``, with the RoPE tables following the weights."""
        super().to(*args, **kwargs)
        self.rope.to(self.device)
        return self

    # ------------------------------------------------------------------ prompt
    def set_prompt(self, prompt_embeds: torch.Tensor) -> None:
        """Project the text embeddings and compute every layer's cross-attention K/V once (differentiable when
        the weights require grad, as in toy-model training).

        Args:
            prompt_embeds: (B, L, text_dim) text-encoder states (B = 2 for guidance: prompt, negative).
        """
        t = self.transformer
        ctx = t.condition_embedder.text_embedder(prompt_embeds.to(self.device, self.dtype))
        kv = []
        for block in t.blocks:
            a = block.attn2
            k = a.norm_k(a.to_k(ctx)).unflatten(2, (a.heads, -1))
            v = a.to_v(ctx).unflatten(2, (a.heads, -1))
            kv.append((k, v))
        self.state.prompt_kv = kv

    # ------------------------------------------------------------------ forward
    def _blocks(self, x: torch.Tensor, tproj: torch.Tensor) -> torch.Tensor:
        """The transformer blocks: diffusers' own forward, or ``piecewise`` (the compile and CUDA-graph levers)."""
        if self.piecewise is not None:
            return self.piecewise(self, x, tproj)
        ctx = x.new_zeros(x.shape[0], 0, x.shape[-1])  # cross-attention K/V come from set_prompt
        for block in self.transformer.blocks:
            x = block(x, ctx, tproj, None)
        return x

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        frames: torch.Tensor,
        cache: KVCache | None = None,
        write: bool = False,
        block_frames: int | None = None,
        first_step: bool = False,
    ) -> torch.Tensor:
        """Predict the flow velocity for ``latents``.

        Args:
            latents: (B, C, F, H, W) normalised latents.
            timesteps: (F,) or (B, F) noise level of each latent frame, in [0, 1000].
            frames: (F,) absolute latent frame indices (they set the RoPE positions).
            cache: context to attend to; ``None`` attends only among the given frames.
            write: store these frames' K/V into ``cache`` (the t = 0 context pass).
            block_frames: without a cache, make attention block-causal over blocks of this many frames
                (a full pass equivalent to block-by-block generation; used for training and checks).
            first_step: first denoising forward of a new block (policies fix their context selection here).

        Returns:
            (B, C, F, H, W) velocity, in float32.
        """
        t = self.transformer
        b, _, f, hh, ww = latents.shape
        pt, ph, pw = t.config.patch_size
        gh, gw = hh // ph, ww // pw
        n = gh * gw
        frames = torch.as_tensor(frames).long()
        self.rope.grid_w = gw

        x = t.patch_embedding(latents.to(self.dtype)).flatten(2).transpose(1, 2)

        # one timestep embedding per frame, broadcast over that frame's tokens
        ts = torch.as_tensor(timesteps, device=x.device).float().reshape(-1, f).expand(b, f)
        emb = t.condition_embedder
        temb = emb.time_embedder(emb.timesteps_proj(ts.flatten()).to(emb.time_embedder.linear_1.weight.dtype))
        temb = temb.unflatten(0, (b, f)).type_as(x)
        tproj = emb.time_proj(emb.act_fn(temb)).unflatten(2, (6, -1))
        temb = temb.repeat_interleave(n, dim=1)
        tproj = tproj.repeat_interleave(n, dim=1)

        st = self.state
        st.cache = cache
        if cache is not None:
            cache.begin(frames, (gh, gw), write=write, first_step=first_step, rope=self.rope)
            st.mask, cur_t = None, cache.current_positions  # positions come from the cache's layout
        else:
            st.mask = _block_causal_mask(f, n, block_frames, x.device) if block_frames else None
            cur_t = frames
        completed = False
        try:
            hw = torch.arange(n).repeat(f)
            st.rope = self.rope.tables(cur_t.repeat_interleave(n), hw)
            x = self._blocks(x, tproj)
            completed = True
        finally:
            if cache is not None:
                cache.end(completed)
            st.cache, st.mask = None, None

        shift, scale = (t.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
        x = (t.norm_out(x.float()) * (1 + scale.squeeze(2)) + shift.squeeze(2)).type_as(x)
        x = t.proj_out(x)
        x = x.reshape(b, f // pt, gh, gw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def _block_causal_mask(frames: int, tokens_per_frame: int, block_frames: int, device) -> torch.Tensor:
    block = torch.arange(frames, device=device) // block_frames
    block = block.repeat_interleave(tokens_per_frame)
    return block[:, None] >= block[None, :]
