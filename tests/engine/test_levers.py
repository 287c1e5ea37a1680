"""The speed levers of ``runtime`` (issue 32): the piecewise block runner, CUDA graphs (their rules, exercised with
graph semantics on the CPU and the meta device), compile, int8 / fp8 quantisation, and their refusals."""

import contextlib
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_transformer
from tokentrim_cli.config.presets import load_preset
from tokentrim_cli.config.settings import Runtime
from tokentrim_cli.engine.attention import ForwardState
from tokentrim_cli.engine.cache import RollingCache
from tokentrim_cli.engine.cuda_graphs import BlockGraphs, EagerCapturer, StaticKey
from tokentrim_cli.engine.levers import apply_levers, check_levers, weight_bytes
from tokentrim_cli.engine.model import CausalWan
from tokentrim_cli.engine.noise import NoiseSource
from tokentrim_cli.engine.piecewise import PiecewiseBlocks
from tokentrim_cli.engine.policies import make_cache
from tokentrim_cli.engine.samplers import BlockSteps, self_forcing
from tokentrim_cli.engine.schedule import warp_steps
from tokentrim_cli.errors import ConfigError

SHAPE = (1, 16, 3, 8, 8)
ROOT = Path(__file__).resolve().parents[2]


def _latents(model, cache, blocks=4, steps=(1000, 500)):
    torch.manual_seed(1)
    model.set_prompt(torch.randn(1, 16, 32))
    out = self_forcing(model, cache, NoiseSource(0, SHAPE), BlockSteps(blocks, warp_steps(list(steps))))
    return torch.cat([b.latents for b in out], 2)


def _graphed(max_shapes=3):
    model = CausalWan(tiny_transformer())
    graphs = BlockGraphs(EagerCapturer(), max_shapes=max_shapes)
    model.piecewise = PiecewiseBlocks(graphs=graphs)
    return model, graphs


def test_pieces_give_the_blocks_numbers():
    """pre / mid / post are diffusers' block forward with our processors, op for op: bit-identical latents."""
    eager = _latents(CausalWan(tiny_transformer()), RollingCache(2, window_frames=6, rope_len=64))
    model = CausalWan(tiny_transformer())
    model.piecewise = PiecewiseBlocks()
    assert torch.equal(_latents(model, RollingCache(2, window_frames=6, rope_len=64)), eager)


@pytest.mark.parametrize("policy", ["sink_window", "three_partition"])
def test_graph_replays_match_eager_while_the_cache_layout_changes(policy):
    """With graph semantics (a replay overwrites the same static outputs), every forward after the first replays,
    through the window filling and eviction starting (sink_window) and a three-partition selection whose sizes
    change as mid blocks are compressed and chosen: the layout lives in the eager middle, so none of that forces
    a fallback, and the latents equal eager ones bit for bit (a write pass's keys are copied out of the graph's
    buffers before the cache keeps them)."""
    from tokentrim_cli.config.settings import Cache

    cfg = Cache(policy=policy, window_frames=6, sink_frames=3, recent_frames=3, mid_capacity=4, mid_top_k=1)
    eager = _latents(CausalWan(tiny_transformer()), make_cache(cfg, 2, 64), blocks=6)
    model, graphs = _graphed()
    assert torch.equal(_latents(model, make_cache(cfg, 2, 64), blocks=6), eager)
    stats = graphs.stats.as_dict()
    assert stats["eager_forwards"] == {"warm-up": 1} and stats["replayed_forwards"] == 6 * 3 - 1
    assert stats["captured_shapes"] == 1 and stats["graphs"] == 2 * 2 and stats["error"] is None


def test_rolling_forcing_with_guidance_replays_its_steady_shapes():
    """Rolling Forcing's windows change size at start-up and in the end flush, and guidance runs a batch of two
    (one when a forward is unguided): each size warms up once, the steady ones (the full window, the write pass)
    are captured and replayed, a shape past the limit stays eager; the latents equal eager's bit for bit."""
    from tokentrim_cli.config.settings import Cache
    from tokentrim_cli.engine.guidance import Guided
    from tokentrim_cli.engine.samplers import rolling_forcing

    def run(model):
        torch.manual_seed(1)
        guided = Guided(model, 3.0, min_timestep=600)
        guided.set_prompt(torch.randn(1, 16, 32), torch.randn(1, 16, 32))
        cache = make_cache(Cache(policy="rolling_forcing", sink_frames=3), 2, 64)
        steps = BlockSteps(7, warp_steps([1000, 750, 500, 250]))
        blocks = rolling_forcing(guided, cache, NoiseSource(0, SHAPE), steps)
        return torch.cat([b.latents for b in blocks], 2)

    eager = run(CausalWan(tiny_transformer()))
    model, graphs = _graphed()
    assert torch.equal(run(model), eager)
    stats = graphs.stats.as_dict()
    assert stats["captured_shapes"] == 3 and stats["replayed_forwards"] > sum(stats["eager_forwards"].values())
    assert set(stats["eager_forwards"]) == {"warm-up", "shape limit"}


def _state(prompt, cache=True):
    return ForwardState(cache=object() if cache else None, prompt_kv=prompt)


def test_fallback_rules():
    """When a forward runs eagerly: a shape's first forward warms up, the second captures and replays; a new
    prompt drops every graph (they read its K/V in place); past ``max_shapes`` shapes stay eager; no cache
    (training's mask) is never graphed."""
    graphs = BlockGraphs(EagerCapturer(), max_shapes=1)
    small, large = StaticKey(1, 64, 32, "float32", "cpu"), StaticKey(1, 192, 32, "float32", "cpu")
    p1, p2 = [], []
    assert graphs.eager_reason(small, _state(p1)) == "warm-up"
    assert graphs.eager_reason(small, _state(p1)) is None  # captured now
    graphs.entries[small] = "captured"
    assert graphs.eager_reason(small, _state(p1)) is None
    assert graphs.eager_reason(large, _state(p1)) == "warm-up"
    assert graphs.eager_reason(large, _state(p1)) == "shape limit"
    assert graphs.eager_reason(small, _state(p1, cache=False)) == "no cache"
    assert graphs.eager_reason(small, _state(p2)) == "prompt switch" and graphs.entries == {}
    assert graphs.eager_reason(small, _state(p2)) is None
    graphs.stats.error = "RuntimeError: capture failed"
    assert graphs.eager_reason(small, _state(p2)) == "capture failed"


def test_static_key_is_the_forward_shape_alone():
    """The key is the blocks' input shape (batch, tokens, width, dtype, device): a forward over a longer cache
    has the same key, a different number of current tokens (Rolling Forcing's window, Guided's branches) not."""
    x = torch.zeros(1, 3 * 16, 32)
    assert StaticKey.of(x) == StaticKey(1, 48, 32, "float32", "cpu")
    assert StaticKey.of(torch.zeros(2, 48, 32)) != StaticKey.of(x) != StaticKey.of(torch.zeros(1, 96, 32))
    assert StaticKey.of(x.double()).dtype == "float64"


def test_a_capture_that_fails_leaves_the_run_eager_and_says_why():
    class Broken(EagerCapturer):
        def capture(self, fn, args):
            raise RuntimeError("operation not permitted when stream is capturing")

    eager = _latents(CausalWan(tiny_transformer()), RollingCache(2, window_frames=6, rope_len=64))
    model = CausalWan(tiny_transformer())
    graphs = BlockGraphs(Broken())
    model.piecewise = PiecewiseBlocks(graphs=graphs)
    assert torch.equal(_latents(model, RollingCache(2, window_frames=6, rope_len=64)), eager)
    stats = graphs.stats.as_dict()
    assert stats["error"] == "RuntimeError: operation not permitted when stream is capturing"
    assert stats["replayed_forwards"] == 0 and stats["eager_forwards"]["capture failed"] == 4 * 3 - 1


def test_prompt_switch_drops_the_graphs_and_warms_up_again():
    model, graphs = _graphed()
    torch.manual_seed(1)
    model.set_prompt(torch.randn(1, 16, 32))
    cache = RollingCache(2, window_frames=6, rope_len=64)
    list(self_forcing(model, cache, NoiseSource(0, SHAPE), BlockSteps(2, warp_steps([1000, 500]))))
    model.set_prompt(torch.randn(1, 16, 32))
    list(self_forcing(model, cache, NoiseSource(1, SHAPE), BlockSteps(2, warp_steps([1000, 500]))))
    assert graphs.stats.eager_forwards == {"warm-up": 1, "prompt switch": 1}
    assert graphs.stats.captured_shapes == 2 and graphs.prompt is model.state.prompt_kv


def test_graph_pieces_run_on_the_meta_device():
    """Up to capture on the meta device, where a CPU tensor meeting a device tensor raises as on CUDA: the static
    buffers, the RoPE copy and the middle's copies all live on the model's device."""
    model = CausalWan(tiny_transformer(num_layers=1)).to("meta")
    model.set_prompt(torch.randn(1, 16, 32))
    graphs = BlockGraphs(EagerCapturer())
    model.piecewise = PiecewiseBlocks(graphs=graphs)
    cache = RollingCache(1, window_frames=6, rope_len=64)
    steps = BlockSteps(3, warp_steps([1000, 500]))
    blocks = list(self_forcing(model, cache, NoiseSource(0, SHAPE, device="meta"), steps))
    assert all(b.latents.device.type == "meta" for b in blocks)
    assert graphs.stats.replayed_forwards == 3 * 3 - 1


def test_compile_settings_reach_torch_compile_and_keep_the_latents(monkeypatch):
    """runtime.compile with compile_mode and compile_dynamic: torch.compile gets them for both pieces, and the
    compiled pieces (the eager backend here: the inductor takes minutes on a fresh CPU; bench/gpu_check.py
    compares it with eager on the GPU) give eager's latents; the first forward's time (the compile) is reported
    apart from the rest."""
    calls = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or real(fn, **{**kw, "mode": None}))
    torch._dynamo.reset()
    eager = _latents(CausalWan(tiny_transformer(num_layers=1)), RollingCache(1, window_frames=6, rope_len=64), 3)
    model = CausalWan(tiny_transformer(num_layers=1))
    runtime = _runtime(compile=True, compile_mode="max-autotune-no-cudagraphs", compile_dynamic=False)
    report = apply_levers(model, runtime, backend="eager")
    assert calls == [{"mode": None, "dynamic": False, "backend": "eager"}] * 2  # a mode is the inductor's
    got = _latents(model, RollingCache(1, window_frames=6, rope_len=64), 3)
    assert (got - eager).abs().max().item() <= 1e-5
    compiled = report.as_dict()["compile"]
    assert compiled["mode"] == "max-autotune-no-cudagraphs" and compiled["dynamic"] is False
    assert len(compiled["first_call_seconds"]) == 1  # one forward shape in this run
    calls.clear()
    apply_levers(CausalWan(tiny_transformer(num_layers=1)), runtime)  # the inductor gets the mode
    assert calls == [{"mode": "max-autotune-no-cudagraphs", "dynamic": False, "backend": "inductor"}] * 2


def _runtime(**kw) -> Runtime:
    return dataclasses.replace(load_preset("tiny").config.runtime, **kw)


def test_int8_weights_shrink_the_transformer_and_keep_the_latents():
    """runtime.quantize=int8 (torchao, weight-only, per-channel scales) on the tiny model: the blocks' linear
    weights take a quarter of their float32 bytes (plus scales), and the latents stay within 0.05 of float32's
    (their spread is ~1; measured: 0.004)."""
    pytest.importorskip("torchao")
    eager = _latents(CausalWan(tiny_transformer()), RollingCache(2, window_frames=6, rope_len=64))
    model = CausalWan(tiny_transformer())
    before = weight_bytes(model.transformer.blocks)
    report = apply_levers(model, _runtime(quantize="int8"))
    after = weight_bytes(model.transformer.blocks)
    assert after < 0.45 * before and report.as_dict()["transformer_weight_bytes"] == weight_bytes(model.transformer)
    diff = (_latents(model, RollingCache(2, window_frames=6, rope_len=64)) - eager).abs().max().item()
    assert 0 < diff <= 0.05


def test_levers_a_device_cannot_run_are_refused_in_one_line(monkeypatch):
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^runtime.cuda_graphs needs a CUDA device and this run is on cpu: set "):
        check_levers(_runtime(cuda_graphs=True), cpu)
    with pytest.raises(ConfigError, match=r"^runtime.quantize=fp8 needs a CUDA GPU of compute capability 8.9 or "
                                          r"newer and this run is on cpu: use runtime.quantize=int8 or none$"):
        check_levers(_runtime(quantize="fp8"), cpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100")
    with pytest.raises(ConfigError, match=r"NVIDIA A100 has 8.6: use runtime.quantize=int8 or none$"):
        check_levers(_runtime(quantize="fp8"), torch.device("cuda"))
    monkeypatch.setitem(sys.modules, "torchao", None)  # not installed
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ConfigError, match=r"pip install 'tokentrim\[quantize\]'"):
        check_levers(_runtime(quantize="int8"), cpu)
    check_levers(_runtime(), cpu)  # every lever off: nothing to refuse


def test_new_runtime_settings_default_off():
    runtime = Runtime()
    assert (runtime.compile, runtime.compile_mode, runtime.compile_dynamic, runtime.cuda_graphs,
            runtime.quantize) == (False, "default", True, False, "none")
    model = CausalWan(tiny_transformer())
    assert apply_levers(model, runtime).as_dict()["cuda_graphs"] is None and model.piecewise is None
    assert SimpleNamespace(**apply_levers(model, runtime).as_dict()).compile is None


def test_lever_bench_measures_what_the_cpu_runs_and_says_why_not_the_rest(tmp_path):
    """bench/levers.py (gpu_check's levers step), in this process on the tiny preset: eager and int8 measured,
    int8 compared with eager on the same seed; the GPU-only levers and compile recorded as skipped with a reason;
    a lever that fails is recorded with its error and the next still runs."""
    pytest.importorskip("torchao")
    sys.path.insert(0, str(ROOT / "bench"))
    import levers as bench

    out, ref = tmp_path / "levers.json", tmp_path / "ref.pt"
    names = ["eager", "cuda_graphs", "compile", "int8"]
    bench.worker(str(ROOT / "presets" / "tiny.yaml"), 1.0, names, str(out), str(ref))
    res = json.loads(out.read_text())
    assert list(res) == names and res["eager"]["speedup_vs_eager"] == 1.0
    assert res["cuda_graphs"]["error"] == "skipped: needs a CUDA GPU"
    assert "skipped on the CPU" in res["compile"]["error"]
    int8 = res["int8"]
    assert 0 < int8["first_block_max_abs_diff"] <= bench.SAME_OUTPUT and int8["same_output"]
    assert int8["transformer_weight_bytes"] < res["eager"]["transformer_weight_bytes"]
    assert (int8["device"], int8["resolution"], int8["block_frames"], int8["dtype"]) == ("cpu", "64x96", 3, "float32")
    bench.LEVERS["broken"] = {"quantize": "fp4"}  # not a lever: fails in the worker, recorded
    try:
        bench.worker(str(ROOT / "presets" / "tiny.yaml"), 1.0, ["broken", "int8"], str(out), str(ref))
    finally:
        del bench.LEVERS["broken"]
    res = json.loads(out.read_text())
    assert res["broken"]["error"] == "ValueError: unknown runtime.quantize 'fp4'"
    assert res["int8"]["median_block_s"] > 0


def _generate(capsys, out, *sets):
    from tokentrim_cli.cli import main

    args = ["generate", "--preset", "tiny", "--prompt", "a red circle", "--seconds", "1", "--seed", "1",
            "--output", str(out)]
    with pytest.raises(SystemExit) as exc:
        main(args + [a for s in sets for a in ("--set", s)])
    return exc.value.code, capsys.readouterr().err


def test_the_sidecar_says_what_the_levers_did(tmp_path, capsys):
    """A user's run with int8 weights: the sidecar's ``levers`` record names them and the transformer's bytes."""
    pytest.importorskip("torchao")
    code, _ = _generate(capsys, tmp_path / "int8.mp4", "runtime.quantize=int8")
    assert code == 0
    levers = json.loads((tmp_path / "int8.json").read_text())["levers"]
    assert levers["quantize"] == "int8" and levers["compile"] is None and levers["cuda_graphs"] is None
    assert 0 < levers["transformer_weight_bytes"] < weight_bytes(load_transformer_of("tiny"))


def load_transformer_of(preset: str) -> torch.nn.Module:
    from tokentrim_cli.engine.components import build_transformer

    return build_transformer(load_preset(preset).config.model.transformer).transformer


def test_cuda_graphs_on_a_cpu_stop_the_command_before_it_writes_anything(tmp_path, capsys):
    code, err = _generate(capsys, tmp_path / "g.mp4", "runtime.cuda_graphs=true")
    assert code == 2 and err.strip().splitlines() == [
        "tokentrim: error: runtime.cuda_graphs needs a CUDA device and this run is on cpu: set "
        "runtime.cuda_graphs=false or run on a GPU"]
    assert list(tmp_path.iterdir()) == []


def test_cuda_capturer_warms_up_on_a_side_stream_then_captures_into_one_pool(monkeypatch):
    """The real capturer up to the CUDA calls (faked here, in the order torch's docs ask): the piece runs once on a
    side stream, the capture waits for it, captures thread-locally into the shared pool, and a replay is the
    graph's; a reset takes a new pool."""
    from tokentrim_cli.engine import cuda_graphs as cg

    calls = []

    class Stream:
        def wait_stream(self, other):
            calls.append(("wait", type(other).__name__))

    class Graph:
        def replay(self):
            calls.append("replay")

    @contextlib.contextmanager
    def graph(g, pool=None, capture_error_mode="global"):
        calls.append(("capture", pool, capture_error_mode))
        yield

    @contextlib.contextmanager
    def stream(s):
        calls.append("side stream")
        yield

    pools = iter(["pool 1", "pool 2"])
    fakes = {"Stream": Stream, "current_stream": Stream, "stream": stream, "graph": graph, "CUDAGraph": Graph,
             "graph_pool_handle": lambda: next(pools)}
    for name, fake in fakes.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    capturer = cg.CudaCapturer()
    piece = capturer.capture(lambda x: calls.append("piece") or x + 1, (torch.zeros(2),))
    piece.replay()
    assert calls == [("wait", "Stream"), "side stream", "piece", ("wait", "Stream"),
                     ("capture", "pool 1", "thread_local"),
                     "piece", "replay"]
    assert torch.equal(piece.outputs, torch.ones(2))
    capturer.reset()
    assert capturer.pool == "pool 2"


def test_lever_bench_starts_a_dead_worker_again_for_the_levers_it_did_not_reach(tmp_path, monkeypatch):
    """A worker that dies in a lever (a CUDA crash takes the process) leaves that lever recorded as not finished;
    a new worker measures the levers after it; one that dies loading is not started again."""
    sys.path.insert(0, str(ROOT / "bench"))
    import levers as bench

    runs = []

    def fake_run(cmd, **kw):
        names = cmd[cmd.index("--worker") + 5:]
        runs.append(names)
        out = Path(cmd[cmd.index("--worker") + 3])
        done = json.loads(out.read_text()) if out.exists() else {}
        if len(runs) == 1:  # eager measured, dies in cuda_graphs
            died = {"error": "started, did not finish (the worker died)"}
            done.update(eager={"median_block_s": 2.0}, cuda_graphs=died)
            out.write_text(json.dumps(done))
            return subprocess.CompletedProcess(cmd, -11, "", "Segmentation fault")
        done.update({n: {"median_block_s": 1.0} for n in names})
        out.write_text(json.dumps(done))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    cell = bench.run_levers(tmp_path / "p.yaml", 1.0, tmp_path, 60, ["eager", "cuda_graphs", "fp8", "int8"])
    assert runs == [["eager", "cuda_graphs", "fp8", "int8"], ["fp8", "int8"]]
    res = cell["levers"]
    assert "did not finish" in res["cuda_graphs"]["error"] and res["int8"]["speedup_vs_eager"] == 2.0
    assert cell["errors"] == ["worker exit -11: Segmentation fault"]

    runs.clear()
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: runs.append(1) or subprocess.CompletedProcess(
        cmd, 1, "", "CUDA out of memory"))
    cell = bench.run_levers(tmp_path / "p.yaml", 1.0, tmp_path, 60, ["eager", "int8"])
    assert runs == [1] and cell["levers"]["int8"]["error"] == "worker exit 1: CUDA out of memory"
