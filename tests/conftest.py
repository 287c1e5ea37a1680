import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENTRIM_PRESET"] = "tiny"  # CLI tests run the fast random-weight preset unless they name another
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])


def tiny_transformer(seed=0, **overrides):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TINY_TRANSFORMER, **overrides}).eval()


@pytest.fixture
def causal_model():
    from tokentrim_cli.engine.model import CausalWan

    model = CausalWan(tiny_transformer())
    torch.manual_seed(1)
    model.set_prompt(torch.randn(1, 16, 32))
    return model


@pytest.fixture
def tiny_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(2)
    return AutoencoderKLWan(**TINY_VAE).eval()
