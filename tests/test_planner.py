"""The memory planner (``tokentrim doctor --preset``): its exact parts against what the real objects hold."""

import pytest
import torch
from conftest import CacheDriver

from tokentrim_cli.config.settings import Cache
from tokentrim_cli.engine.noise import NoiseSource
from tokentrim_cli.engine.policies import make_cache
from tokentrim_cli.engine.samplers import BlockSteps, self_forcing
from tokentrim_cli.engine.schedule import warp_steps
from tokentrim_cli.planner import GPU_SIZES, kv_tokens, levers, predict, under

SHAPE = (1, 16, 3, 8, 8)  # 3-frame blocks of 4 x 4 tokens (CacheDriver's 2 x 2 patches)
TOKEN_BYTES = 2 * 2 * 2 * 12 * 4  # keys and values, 2 layers, 2 heads of 12, float32
# every policy, sized so that sinks split blocks, windows are not whole blocks and every bound is reached
POLICIES = {
    "full": Cache(policy="full"),
    "rolling": Cache(policy="rolling", window_frames=5),
    "sink_window": Cache(policy="sink_window", window_frames=6, sink_frames=4),
    "rolling_forcing": Cache(policy="rolling_forcing", sink_frames=3, span_frames=12),
    "deep_sink": Cache(policy="deep_sink", sink_frames=4, recent_frames=4, budget_frames=3),
    "three_partition": Cache(policy="three_partition", sink_frames=4, recent_frames=4, mid_capacity=3,
                             mid_top_k=2, compression=(2, 3, 3)),
    "ema_sink": Cache(policy="ema_sink", window_frames=4, sink_frames=3),
    "infinity_rope": Cache(policy="infinity_rope", window_frames=2, sink_frames=1),
}


def measured_peak(cfg: Cache, blocks: int) -> int:
    cache = make_cache(cfg, 2, 64)
    peak = 0
    for _ in self_forcing(CacheDriver(), cache, NoiseSource(0, SHAPE), BlockSteps(blocks, warp_steps([1000, 500]))):
        peak = max(peak, cache.nbytes)
    return peak


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize("blocks", [3, 12])
def test_the_kv_cache_prediction_is_what_every_policy_holds(name, blocks):
    """Before the plateau (3 blocks) and on it (12): predicted tokens x bytes per token = the cache's nbytes."""
    assert kv_tokens(POLICIES[name], 3, blocks, (4, 4)) * TOKEN_BYTES == measured_peak(POLICIES[name], blocks)


def test_weights_are_what_the_loaded_models_hold():
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.engine.components import load_components
    from tokentrim_cli.engine.tiny_decoder import TinyDecoder

    cfg = load_preset("tiny", ["video.decoder=tiny"]).config
    comps = load_components(cfg.model, cfg.runtime)

    def held(m):
        return sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])

    pred = predict(cfg, 2.0, device="cpu")
    assert pred.transformer == held(comps.model.transformer)
    assert pred.vae == held(comps.vae) and pred.text_encoder == held(comps.text_encoder)
    assert pred.fast_decoder == held(TinyDecoder())


def test_int8_counts_one_byte_per_linear_weight():
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.planner import _transformer

    cfg = load_preset("self-forcing", architecture=False).config
    model = _transformer(cfg, torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 1_418_996_800  # Wan2.1-T2V-1.3B (the design notes)
    kept = sum(p.numel() for p in model.parameters() if p.dtype == torch.float32)  # norms, time embedder
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    full, int8 = predict(cfg, 10), predict(cfg, 10, quantize="int8")
    assert full.transformer == 2 * 1_418_996_800 + 2 * kept + buffers
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    size = lambda m: m.weight.element_size()
    saved = sum(m.weight.numel() * (size(m) - 1) - m.out_features * size(m) for m in linear)
    assert full.transformer - int8.transformer == saved and 0.5 < int8.transformer / full.transformer < 0.6


def test_the_levers_bring_a_preset_under_a_card_size():
    from tokentrim_cli.config.presets import load_preset

    cfg = load_preset("rolling-forcing", architecture=False).config
    pred = predict(cfg, 60)
    assert [under(cfg, 60, g) == [] for g in GPU_SIZES] == [pred.fits(g) for g in GPU_SIZES]
    small = next(g for g in reversed(GPU_SIZES) if not pred.fits(g) and under(cfg, 60, g))
    sets = under(cfg, 60, small)
    chosen = [lv for lv in levers(cfg) if lv.setting in sets]
    c, q = cfg, None
    for lv in chosen:
        c, q = lv.apply(c), lv.quantize or q
    assert predict(c, 60, quantize=q).fits(small) and not pred.fits(small)
    for line in sets:
        if not line.startswith("runtime.quantize"):  # every other line is a setting the preset accepts
            load_preset("rolling-forcing", [line], architecture=False)


def test_doctor_prints_the_plan_and_keeps_its_old_report(capsys):
    from test_cli import run_main, tokentrim

    r = tokentrim("doctor", "--preset", "self-forcing", "--seconds", "30")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("preset self-forcing, 30 s at 832x480, bfloat16")
    assert "KV cache at its plateau" in r.stdout
    assert [ln.split(":")[0].strip() for ln in lines if " GB:" in ln] == [f"{g} GB" for g in GPU_SIZES]
    assert "preset tiny:" not in r.stdout  # the weights report is doctor without --preset
    code, _, err = run_main(capsys, "doctor", "--preset", "self-forcing", "--seconds", "0")
    assert code == 2 and "--seconds" in err
    assert "preset tiny:" in tokentrim("doctor").stdout


def test_gpu_check_puts_the_prediction_beside_the_measured_peak(tmp_path, capsys, monkeypatch):
    """bench/gpu_check.py's calibration step: per preset, predicted and measured peak and their ratio, and the
    command's speed record read from its sidecar."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "bench"))  # as when it runs as a script: its neighbours import
    spec = importlib.util.spec_from_file_location("gpu_check", root / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    run = gpu_check.Run(tmp_path / "out.json", 60)
    path = root / "presets" / "tiny.yaml"
    run.cell("tiny")["command"] = {"peak_gpu_bytes": 3_000_000}
    speed = {"loop_fps": 12.5, "decode_fps": 300.0, "end_to_end_fps": 11.0, "warmup_seconds": 0.7}
    (tmp_path / "tiny-3s.json").write_text(json.dumps({"speed": speed}))
    gpu_check.calibrate(run, {"tiny": path}, 3.0, tmp_path)
    cell = json.loads((tmp_path / "out.json").read_text())["presets"]["tiny"]
    pred = predict(__import__("tokentrim_cli.config.presets", fromlist=["x"]).load_preset(str(path)).config, 3.0)
    assert cell["planner"]["predicted_peak_bytes"] == pred.peak and cell["planner"]["measured_peak_bytes"] == 3_000_000
    assert cell["planner"]["ratio"] == pytest.approx(3_000_000 / pred.peak) and cell["speed"] == speed
    assert "12.50" in capsys.readouterr().out


def test_guidance_doubles_the_cache_and_the_prediction_follows():
    """With classifier-free guidance both branches' keys and values are cached (batch of two)."""
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.engine.guidance import Guided

    cfg = POLICIES["sink_window"]
    cache = make_cache(cfg, 2, 64)
    peak = 0
    steps = BlockSteps(6, warp_steps([1000, 500]))
    for _ in self_forcing(Guided(CacheDriver(), 3.0), cache, NoiseSource(0, SHAPE), steps):
        peak = max(peak, cache.nbytes)
    assert peak == 2 * kv_tokens(cfg, 3, 6, (4, 4)) * TOKEN_BYTES
    tiny = load_preset("tiny", architecture=False).config
    guided = load_preset("tiny", ["sampler.guidance_scale=3"], architecture=False).config
    assert predict(guided, 4.0).kv_cache == 2 * predict(tiny, 4.0).kv_cache


def test_encoding_on_the_cpu_leaves_the_encoder_off_the_gpu_and_is_the_first_lever():
    """``runtime.text_encoder_device: cpu``: neither phase counts the text encoder, and, costing no quality, it is
    what the planner offers first (for Self Forcing, 60 s: all that 16 GB needs)."""
    from tokentrim_cli.config.presets import load_preset

    cfg = load_preset("self-forcing", architecture=False).config
    on_cpu = load_preset("self-forcing", ["runtime.text_encoder_device=cpu"], architecture=False).config
    gpu, cpu = predict(cfg, 60), predict(on_cpu, 60)
    assert gpu.encode_phase - cpu.encode_phase == gpu.text_encoder + gpu.text_activations > 10 * 2**30
    assert cpu.generate_phase == gpu.generate_phase and cpu.peak == cpu.generate_phase
    assert under(cfg, 60, 16) == ["runtime.text_encoder_device=cpu"] and not gpu.fits(16) and cpu.fits(16)
    assert levers(on_cpu)[0].setting == "video.decoder=tiny"
