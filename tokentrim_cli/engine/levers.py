"""The speed levers of ``runtime``, applied to a loaded transformer: quantised weights (``quantize``), compiled
block pieces (``compile``, ``compile_mode``, ``compile_dynamic``) and CUDA graphs (``cuda_graphs``).

Order: quantize first (compile and the graphs then see the quantised layers), then the piecewise block runner
(``piecewise.py``) with whichever of compile and graphs is on. Nothing is on by default: a lever goes on in a
preset only where a GPU run (``bench/gpu_check.py``) shows it faster with the same output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .model import CausalWan
from .piecewise import CompileSpec, PiecewiseBlocks

FP8_MIN_CAPABILITY = (8, 9)  # float8 tensor cores: Ada, Hopper and newer


def check_levers(runtime, device: torch.device) -> None:
    """Refuse, in one line each, a lever this device cannot run (before anything large loads); the device first,
    since installing torchao would not help there."""
    if runtime.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"runtime.cuda_graphs needs a CUDA device and this run is on {device.type}: "
                          "set runtime.cuda_graphs=false or run on a GPU")
    if runtime.quantize == "fp8":
        if device.type != "cuda":
            raise ConfigError(f"runtime.quantize=fp8 needs a CUDA GPU of compute capability 8.9 or newer and this run "
                              f"is on {device.type}: use runtime.quantize=int8 or none")
        cap = torch.cuda.get_device_capability(device)
        if cap < FP8_MIN_CAPABILITY:
            raise ConfigError(f"runtime.quantize=fp8 needs compute capability 8.9 or newer and "
                              f"{torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}: use runtime.quantize=int8 "
                              "or none")
    if runtime.quantize != "none":
        _torchao()


def _torchao():
    try:
        import torchao.quantization as q
    except ImportError:
        raise ConfigError("runtime.quantize needs torchao, which is not installed: pip install 'tokentrim[quantize]' "
                          "(or set runtime.quantize=none)") from None
    return q


def quantize_blocks(model: CausalWan, kind: str) -> None:
    """Quantise the linear layers of the transformer blocks in place (they hold nearly all of its weights):
    ``int8``: int8 weights, one scale per output channel, computed in the activations' dtype; ``fp8``: float8
    weights and activations (scaled per row, activations quantised on the fly). ``none``: nothing."""
    if kind == "none":
        return
    if kind not in ("int8", "fp8"):
        raise ValueError(f"unknown runtime.quantize {kind!r}")
    q = _torchao()
    if kind == "int8":
        config = q.Int8WeightOnlyConfig()
    else:
        config = q.Float8DynamicActivationFloat8WeightConfig(granularity=q.PerRow())
    q.quantize_(model.transformer.blocks, config)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds, through tensor subclasses (torchao's quantised weights keep int8 data plus scales)."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is None or type(t) in (torch.Tensor, torch.nn.Parameter):
        return t.numel() * t.element_size()
    names, _ = t.__tensor_flatten__()
    return sum(tensor_bytes(getattr(t, n)) for n in names)


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers as stored."""
    return sum(tensor_bytes(p) for p in module.parameters()) + sum(tensor_bytes(b) for b in module.buffers())


@dataclass
class LeverReport:
    """What a run's levers did: the sidecar's ``levers`` record."""

    quantize: str
    transformer_bytes: int
    runner: PiecewiseBlocks | None = None

    def as_dict(self) -> dict:
        r = self.runner
        return {"quantize": self.quantize, "transformer_weight_bytes": self.transformer_bytes,
                "compile": r.compile_stats.as_dict() if r is not None and r.compile_stats is not None else None,
                "cuda_graphs": r.graphs.stats.as_dict() if r is not None and r.graphs is not None else None}


def apply_levers(model: CausalWan, runtime, backend: str = "inductor", capturer=None) -> LeverReport:
    """Apply ``runtime``'s levers to ``model`` (checked by :func:`check_levers`); the report is ``model.levers``.

    Args:
        backend: torch.compile's backend (tests: eager, which needs no C compiler).
        capturer: the CUDA-graph capturer (default: real CUDA graphs; tests: ``cuda_graphs.EagerCapturer``).
    """
    quantize_blocks(model, runtime.quantize)
    runner = None
    if runtime.compile or runtime.cuda_graphs:
        spec = CompileSpec(runtime.compile_mode, runtime.compile_dynamic, backend) if runtime.compile else None
        graphs = None
        if runtime.cuda_graphs:
            from .cuda_graphs import BlockGraphs, CudaCapturer

            graphs = BlockGraphs(capturer or CudaCapturer())
        runner = PiecewiseBlocks(spec, graphs)
    model.piecewise = runner
    model.levers = LeverReport(runtime.quantize, weight_bytes(model.transformer), runner)
    return model.levers
