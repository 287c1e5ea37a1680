"""Checkpoints in the Self Forcing / Rolling Forcing file format load into a model built from config."""

import re

import pytest
import torch

from conftest import TINY_TRANSFORMER, tiny_transformer
from tokentrim_cli.engine.components import build_transformer
from tokentrim_cli.errors import MissingWeights, WeightsError
from tokentrim_cli.config.settings import Weights

_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"),
]


def to_original_name(key: str) -> str:
    """diffusers name -> original Wan name (inverse of diffusers' converter), to fake a training checkpoint."""
    for a, b in _TO_ORIGINAL:
        key = key.replace(a, b)
    key = re.sub(r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation", key)
    key = "head.modulation" if key == "scale_shift_table" else key
    key = re.sub(r"\.norm2\.", ".norm__x.", key).replace(".norm3.", ".norm2.").replace(".norm__x.", ".norm3.")
    return key


def fake_checkpoint(model, fsdp=True):
    sd = {}
    for k, v in model.state_dict().items():
        name = to_original_name(k)
        if fsdp and name.startswith("blocks."):
            name = "_fsdp_wrapped_module." + name
        sd["model." + name] = v.clone()
    return {"generator_ema": sd, "generator": {k: torch.zeros_like(v) for k, v in sd.items()}, "step": torch.tensor(3)}


def test_self_forcing_checkpoint_loads_exactly(tmp_path):
    src = tiny_transformer(seed=9)
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save(fake_checkpoint(src), path)
    spec = Weights(config={**TINY_TRANSFORMER, "patch_size": [1, 2, 2]}, weights=str(path))
    model = build_transformer(spec)
    got, want = model.transformer.state_dict(), src.state_dict()
    assert set(got) == set(want)  # zero missing, zero unexpected
    for k in want:
        assert torch.equal(got[k], want[k]), k  # generator_ema wins over generator
    assert model.transformer.rope.freqs_cos.device.type == "cpu"  # buffers rebuilt, not left on meta


def test_safetensors_in_diffusers_names(tmp_path):
    from safetensors.torch import save_file

    src = tiny_transformer(seed=4)
    path = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = build_transformer(Weights(config=dict(TINY_TRANSFORMER), weights=str(path)))
    assert torch.equal(model.transformer.proj_out.weight, src.proj_out.weight)


def test_wrong_shape_names_first_mismatching_key(tmp_path):
    src = tiny_transformer(seed=1, ffn_dim=48)
    path = tmp_path / "bad.pt"
    torch.save(fake_checkpoint(src), path)
    with pytest.raises(WeightsError, match=r"blocks\.0\.ffn\.net\.0\.proj\.weight has shape \(48, 24\)"):
        build_transformer(Weights(config=dict(TINY_TRANSFORMER), weights=str(path)))


def test_missing_files_say_what_to_run(tmp_path, monkeypatch):
    """The engine names the missing file; the layer that knows the preset adds the command that fetches it."""
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.config.loading import components_loader

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("TOKENTRIM_WEIGHTS_DIR", raising=False)
    hub = "hf://gdhe17/Self-Forcing/checkpoints/self_forcing_dmd.pt"
    with pytest.raises(MissingWeights, match=r"self_forcing_dmd.pt are not on this machine$") as exc:
        build_transformer(Weights(weights=hub))
    assert exc.value.downloadable
    with pytest.raises(MissingWeights, match=r"self_forcing_dmd.pt.*; run: tokentrim download self-forcing$"):
        components_loader(load_preset("self-forcing"), None)
    with pytest.raises(MissingWeights, match="nope.pt does not exist") as exc:
        build_transformer(Weights(weights=str(tmp_path / "nope.pt")))
    assert not exc.value.downloadable


def test_local_weights_dir_override(tmp_path, monkeypatch):
    src = tiny_transformer(seed=2)
    target = tmp_path / "mirror" / "gdhe17" / "Self-Forcing" / "checkpoints"
    target.mkdir(parents=True)
    torch.save(fake_checkpoint(src, fsdp=False), target / "self_forcing_dmd.pt")
    monkeypatch.setenv("TOKENTRIM_WEIGHTS_DIR", str(tmp_path / "mirror"))
    model = build_transformer(Weights(config=dict(TINY_TRANSFORMER),
                                      weights="hf://gdhe17/Self-Forcing/checkpoints/self_forcing_dmd.pt"))
    assert torch.equal(model.transformer.proj_out.bias, src.proj_out.bias)


def test_prompt_embeddings_trimmed_and_zero_padded():
    from transformers import UMT5Config, UMT5EncoderModel

    from tokentrim_cli.engine.text import encode_prompts
    from tokentrim_cli.engine.tokenizer import word_tokenizer

    torch.manual_seed(0)
    enc = UMT5EncoderModel(UMT5Config(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)).eval()
    tok = word_tokenizer()
    out = encode_prompts(tok, enc, ["a red circle", "a blue square bouncing on a dark background"])
    assert out.shape == (2, 512, 32)
    assert out[0, :4].abs().sum() > 0 and out[0, 4:].abs().sum() == 0  # 3 words + </s>
    assert out[1, :9].abs().sum(-1).min() > 0 and out[1, 9:].abs().sum() == 0


@pytest.mark.parametrize("encode_device", [None, "cpu"], ids=["visits", "stays"])
def test_prompts_encode_where_runtime_says_and_land_on_the_run_device(encode_device):
    """The run's device is the meta device here (as CUDA would be, it is not the CPU): by default the encoder
    visits it to encode and goes back (offload); with ``runtime.text_encoder_device: cpu`` it never leaves the
    CPU. The embeddings reach the run's device either way."""
    from transformers import UMT5Config, UMT5EncoderModel

    from tokentrim_cli.engine.components import Components
    from tokentrim_cli.engine.tokenizer import word_tokenizer

    enc = UMT5EncoderModel(UMT5Config(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)).eval()
    visited = []
    to = enc.to
    enc.to = lambda device: visited.append(torch.device(device).type) or to("cpu")  # recorded; stays computable
    comps = Components(model=None, vae=None, text_encoder=enc, tokenizer=word_tokenizer(), device=torch.device("meta"),
                       max_text_length=16, encode_device=torch.device(encode_device) if encode_device else None)
    out = comps.encode(["a red circle"])
    assert out.shape == (1, 16, 32) and out.device.type == "meta"
    assert visited == (["cpu"] if encode_device else ["meta", "cpu"])
