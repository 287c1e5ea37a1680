"""The toy model's rollout training samples its context as the toy preset samples a video."""

import torch

from tokentrim_cli.engine.guidance import Guided
from tokentrim_cli.engine.schedule import warp_steps
from tokentrim_cli.toy.train import BLOCK, self_generated_context


def _euler_without_cache(model, x0, k, sigmas, gen):
    """Reference: each block denoised by guided Euler steps over the whole block-causal window, no KV cache."""
    x0 = x0.clone()
    for m in range(1, k + 1):
        x = torch.randn(x0[:, :, :BLOCK].shape, generator=gen)
        for j, s in enumerate(sigmas):
            ts = torch.cat([torch.zeros(m * BLOCK), torch.full((BLOCK,), float(s) * 1000)])
            v = model(torch.cat([x0[:, :, : m * BLOCK], x], 2), ts, torch.arange((m + 1) * BLOCK), block_frames=BLOCK)
            nxt = float(sigmas[j + 1]) if j + 1 < len(sigmas) else 0.0
            x = x + (nxt - float(s)) * v[:, :, -BLOCK:]
        x0[:, :, m * BLOCK : (m + 1) * BLOCK] = x
    return x0


def test_self_generated_context_continues_the_real_first_block_as_the_sampler_does(causal_model):
    torch.manual_seed(3)
    x0 = torch.randn(2, 16, 4 * BLOCK, 4, 4)  # a batch of two windows: the cache must keep them apart
    cond, uncond = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    sigmas = warp_steps([1000, 750, 500, 250], 3.0)
    got = self_generated_context(causal_model, x0, 2, cond, uncond, sigmas, 3.0, 600, torch.Generator().manual_seed(7))

    guided = Guided(causal_model, 3.0, 600)
    guided.set_prompt(cond, uncond)
    with torch.no_grad():
        want = _euler_without_cache(guided, x0, 2, sigmas, torch.Generator().manual_seed(7))

    assert torch.equal(got[:, :, :BLOCK], x0[:, :, :BLOCK]) and torch.equal(got[:, :, 3 * BLOCK :], x0[:, :, 3 * BLOCK :])
    assert (got - want).abs().max() < 1e-4
    assert (got[:, :, BLOCK : 3 * BLOCK] - x0[:, :, BLOCK : 3 * BLOCK]).abs().mean() > 0.1  # really replaced
