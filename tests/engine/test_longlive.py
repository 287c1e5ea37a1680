"""LongLive checkpoints: a base generator ``.pt`` plus a peft LoRA ``.pt``, merged at load (W += scale * B @ A).

The synthetic files follow LongLive v1.0's formats: ``longlive_base.pt`` is a trainer checkpoint with the weights
under ``generator`` (``model.`` + original Wan names), ``lora.pt`` is peft's ``get_peft_model_state_dict`` of the
CausalWanModel (``base_model.model.blocks.N.self_attn.q.lora_A.weight``, every nn.Linear of each attention block:
self_attn / cross_attn q, k, v, o and ffn.0 / ffn.2).
"""

import pytest
import torch

from conftest import TINY_TRANSFORMER, tiny_transformer
from test_weights import to_original_name
from tokentrim_cli.cli import main
from tokentrim_cli.config.presets import load_preset
from tokentrim_cli.engine.components import build_transformer
from tokentrim_cli.errors import WeightsError
from tokentrim_cli.config.settings import Transformer

RANK = 2
LORA_MODULES = [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn.0", "ffn.2"]


def longlive_base(model):
    sd = {"model." + to_original_name(k): v.clone() for k, v in model.state_dict().items()}
    # LongLive's inference reads "generator" (use_ema: false); an EMA entry must not win here
    return {"generator": sd, "generator_ema": {k: torch.zeros_like(v) for k, v in sd.items()}, "critic": {},
            "step": 3000}


def longlive_lora(model, seed=0, nest=False):
    """peft-style LoRA for every adapted Linear, original Wan names; shapes from the model (rank RANK)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    diffusers_sd = model.state_dict()
    for block in range(len(model.blocks)):
        for m in LORA_MODULES:
            name = f"blocks.{block}.{m}"
            w = diffusers_sd[next(k for k in diffusers_sd if to_original_name(k) == name + ".weight")]
            sd[f"base_model.model.{name}.lora_A.weight"] = torch.randn(RANK, w.shape[1], generator=g)
            sd[f"base_model.model.{name}.lora_B.weight"] = torch.randn(w.shape[0], RANK, generator=g)
    return {"generator_lora": sd, "critic_lora": {}, "step": 3000} if nest else sd


def _files(tmp_path, nest=False):
    src = tiny_transformer(seed=7)
    base, lora = tmp_path / "longlive_base.pt", tmp_path / "lora.pt"
    torch.save(longlive_base(src), base)
    lora_sd = longlive_lora(src, nest=nest)
    torch.save(lora_sd, lora)
    return src, base, lora, lora_sd.get("generator_lora", lora_sd)


def _spec(base, lora, scale=1.0):
    return Transformer(config=dict(TINY_TRANSFORMER), weights=str(base), checkpoint_key="generator", lora=str(lora),
                       lora_scale=scale)


@pytest.mark.parametrize("nest", [False, True])
def test_lora_merges_into_every_adapted_linear(tmp_path, nest):
    src, base, lora, lora_sd = _files(tmp_path, nest)
    model = build_transformer(_spec(base, lora, scale=0.5))
    got, want = model.transformer.state_dict(), src.state_dict()
    assert set(got) == set(want)  # zero missing, zero unexpected
    adapted = 0
    for k in want:
        orig = to_original_name(k)
        a = lora_sd.get(f"base_model.model.{orig[: -len('.weight')]}.lora_A.weight")
        if a is None:
            assert torch.equal(got[k], want[k]), k  # untouched, and "generator" won over "generator_ema"
            continue
        b = lora_sd[f"base_model.model.{orig[: -len('.weight')]}.lora_B.weight"]
        assert torch.equal(got[k], want[k] + 0.5 * (b @ a)), k  # exact: the same float32 ops
        adapted += 1
    assert adapted == len(LORA_MODULES) * len(src.blocks) == len(lora_sd) // 2


def test_lora_key_matching_nothing_is_one_line(tmp_path):
    src, base, lora, lora_sd = _files(tmp_path)
    lora_sd["base_model.model.blocks.9.self_attn.q.lora_A.weight"] = torch.zeros(RANK, 24)
    lora_sd["base_model.model.blocks.9.self_attn.q.lora_B.weight"] = torch.zeros(24, RANK)
    torch.save(lora_sd, lora)
    with pytest.raises(WeightsError) as exc:
        build_transformer(_spec(base, lora))
    msg = str(exc.value)
    assert "\n" not in msg and "blocks.9.self_attn.q.lora_A.weight matches no transformer weight" in msg


def test_lora_shape_mismatch_and_stray_key_are_one_line(tmp_path):
    src, base, lora, lora_sd = _files(tmp_path)
    lora_sd["base_model.model.blocks.0.ffn.0.lora_A.weight"] = torch.zeros(RANK, 5)
    torch.save(lora_sd, lora)
    with pytest.raises(WeightsError, match=r"LoRA key base_model\.model\.blocks\.0\.ffn\.0\.lora_A\.weight: .*does "
                                           r"not fit blocks\.0\.ffn\.net\.0\.proj\.weight") as exc:
        build_transformer(_spec(base, lora))
    assert "\n" not in str(exc.value)
    torch.save({"base_model.model.blocks.0.ffn.2.lora_B.weight": torch.zeros(24, RANK)}, lora)
    with pytest.raises(WeightsError, match=r"ffn\.2\.lora_B\.weight has no lora_A partner$"):
        build_transformer(_spec(base, lora))
    torch.save({"base_model.model.blocks.0.ffn.0.weight": torch.zeros(3)}, lora)
    with pytest.raises(WeightsError, match=r"key base_model\.model\.blocks\.0\.ffn\.0\.weight is not a LoRA matrix"):
        build_transformer(_spec(base, lora))


def test_checkpoint_key_that_is_absent_is_one_line(tmp_path):
    src, base, lora, _ = _files(tmp_path)
    torch.save({"model": longlive_base(src)["generator"]}, base)
    with pytest.raises(WeightsError, match=r"has no 'generator' entry \(it has: model\)$"):
        build_transformer(_spec(base, lora))


def test_lora_on_random_weights_merges_too(tmp_path):
    src = tiny_transformer(seed=7)
    lora = tmp_path / "lora.pt"
    torch.save(longlive_lora(src), lora)
    plain = build_transformer(Transformer(config=dict(TINY_TRANSFORMER), weights="random:3")).transformer
    merged = build_transformer(Transformer(config=dict(TINY_TRANSFORMER), weights="random:3", lora=str(lora)))
    q = merged.transformer.blocks[0].attn1.to_q.weight
    assert not torch.equal(q, plain.blocks[0].attn1.to_q.weight)
    assert torch.equal(merged.transformer.proj_out.weight, plain.proj_out.weight)


def test_presets_name_the_lora_and_download_lists_it(capsys, monkeypatch):
    from tokentrim_cli.config import loading
    from tokentrim_cli.engine import weights as W
    from tokentrim_cli.config.loading import weights_refs

    for name in ("longlive", "longlive-packed"):
        cfg = load_preset(name).config
        t = cfg.model.transformer
        assert t.weights == "hf://Efficient-Large-Model/LongLive-1.3B/models/longlive_base.pt"
        assert t.lora == "hf://Efficient-Large-Model/LongLive-1.3B/models/lora.pt" and t.lora_scale == 1.0
        assert t.checkpoint_key == "generator" and t.lora in weights_refs(cfg.model)
    cache = load_preset("longlive").config.cache
    assert (cache.policy, cache.sink_frames, cache.window_frames) == ("rolling", 3, 6)
    packed = load_preset("longlive-packed").config.cache
    assert (packed.policy, packed.sink_frames, packed.recent_frames) == ("three_partition", 3, 6)
    # presets that have no LoRA show it at its default (batch --resume's hash leaves it out then: test_batch.py)
    plain = load_preset("self-forcing").config.model.transformer.as_dict()
    assert (plain["lora"], plain["lora_scale"], plain["checkpoint_key"]) == (None, 1.0, None)

    fetched = []
    monkeypatch.setattr(loading, "check_hub_reachable", lambda: None)
    monkeypatch.setattr(W, "fetch", lambda ref, local_dir=None: fetched.append(ref) or ref)
    with pytest.raises(SystemExit) as exc:
        main(["download", "longlive"])
    assert exc.value.code in (0, None)
    assert fetched[:2] == ["hf://Efficient-Large-Model/LongLive-1.3B/models/longlive_base.pt",
                           "hf://Efficient-Large-Model/LongLive-1.3B/models/lora.pt"]
    capsys.readouterr()


def test_presets_show_and_doctor_list_longlive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["presets", "show", "longlive"])
    out = capsys.readouterr().out
    assert exc.value.code in (0, None)
    assert "lora: hf://Efficient-Large-Model/LongLive-1.3B/models/lora.pt" in out and "window_frames: 6" in out
    with pytest.raises(SystemExit) as exc:
        main(["doctor"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "preset longlive:" in out and "preset longlive-packed:" in out


def test_longlive_preset_loads_through_its_own_transformer_section(tmp_path):
    """The preset's transformer section (checkpoint_key, lora, lora_scale) drives the load; only the files and the
    architecture are swapped for tiny local ones."""
    import yaml

    src, base, lora, lora_sd = _files(tmp_path)
    config = yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in TINY_TRANSFORMER.items()},
                            default_flow_style=True, width=10_000).strip()
    preset = load_preset("longlive", [f"model.transformer.config={config}", f"model.transformer.weights={base}",
                                      f"model.transformer.lora={lora}"])
    model = build_transformer(preset.config.model.transformer)
    a = lora_sd["base_model.model.blocks.1.cross_attn.v.lora_A.weight"]
    b = lora_sd["base_model.model.blocks.1.cross_attn.v.lora_B.weight"]
    assert torch.equal(model.transformer.blocks[1].attn2.to_v.weight, src.blocks[1].attn2.to_v.weight + b @ a)
    assert torch.equal(model.transformer.proj_out.weight, src.proj_out.weight)
