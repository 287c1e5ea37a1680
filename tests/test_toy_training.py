"""The toy model's rollout training samples its context exactly as the engine samples a video."""

import torch

from tokentrim_cli.engine.guidance import Guided
from tokentrim_cli.engine.samplers import self_forcing
from tokentrim_cli.engine.schedule import warp_steps
from tokentrim_cli.pipeline import make_cache
from tokentrim_cli.toy.train import BLOCK, self_generated_context


class _Noise:
    """The sampler's noise for block i is the i-th draw of the training generator."""

    def __init__(self, draws):
        self.draws = draws

    def draw(self, block, step, attempt=0, frames=None):
        assert step == 0 and attempt == 0  # the Euler solver draws once per block
        return self.draws[block]


def test_self_generated_context_is_the_engines_continuation_of_the_real_first_block(causal_model):
    torch.manual_seed(3)
    x0 = torch.randn(1, 16, 4 * BLOCK, 4, 4)
    cond, uncond = torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    sigmas = warp_steps([1000, 750, 500, 250], 3.0)
    got = self_generated_context(causal_model, x0, 2, cond, uncond, sigmas, 3.0, 600, torch.Generator().manual_seed(7))

    gen = torch.Generator().manual_seed(7)
    noise = _Noise([torch.randn(1, 16, BLOCK, 4, 4, generator=gen) for _ in range(2)])
    guided = Guided(causal_model, 3.0, 600)
    guided.set_prompt(cond, uncond)
    cache = make_cache({"policy": "rolling", "window_frames": 9, "sink_frames": 0}, causal_model.num_layers,
                       causal_model.rope_len)
    with torch.no_grad():
        guided(x0[:, :, :BLOCK], torch.zeros(BLOCK), torch.arange(BLOCK), cache=cache, write=True)
    blocks = [b.latents for b in self_forcing(guided, cache, noise, 2, sigmas, BLOCK, start_frame=BLOCK, solver="euler")]

    assert torch.equal(got[:, :, :BLOCK], x0[:, :, :BLOCK]) and torch.equal(got[:, :, 3 * BLOCK :], x0[:, :, 3 * BLOCK :])
    assert (got[:, :, BLOCK : 3 * BLOCK] - torch.cat(blocks, 2)).abs().max() < 1e-4
    assert (got[:, :, BLOCK : 3 * BLOCK] - x0[:, :, BLOCK : 3 * BLOCK]).abs().mean() > 0.1  # really replaced
