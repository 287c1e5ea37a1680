"""Build the model components a preset names: causal transformer, VAE, text encoder and tokenizer."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from ..errors import WeightsError
from ..config.settings import Codec, Model, Runtime, Transformer, Weights
from . import weights as W
from .levers import apply_levers, check_levers
from .model import CausalWan
from .piecewise import CompileSpec, PiecewiseBlocks
from .text import encode_prompts, prompt_warnings, restore_tied_embedding
from .tokenizer import word_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextlib.contextmanager
def random_init(seed: int, device, dtype: torch.dtype):
    """Seeded random weights drawn where and in the dtype they will run (a fp32 copy first would double the
    memory; a full-size UMT5-XXL initialises in seconds on a GPU, minutes on a CPU).

    Args:
        seed: the seed (``random:SEED``).
        device: where the weights are drawn.
        dtype: their dtype (a CPU run's is float32; an encoder a GPU run keeps on the CPU has the run's).

    Returns:
        a context manager: modules built inside it get these weights.
    """
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def pick_device(name: str = "auto") -> torch.device:
    """The device ``runtime.device`` names (``auto``: the first GPU when there is one, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast parameters to ``dtype`` except the modules diffusers keeps in float32 (norms, time embedder).

    Args:
        model: a diffusers or transformers module, cast in place.
        dtype: the run's dtype.

    Returns:
        the same module.
    """
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, param in model.named_parameters():
        target = torch.float32 if keep.intersection(name.split(".")) else dtype
        if param.dtype != target:
            param.data = param.data.to(target)
    return model


def _merge_lora(spec, weights: dict, weights_dir) -> list[str]:
    """Merge ``model.transformer.lora`` (if any) into ``weights`` (diffusers names); the names replaced."""
    if not getattr(spec, "lora", None):
        return []
    lora_ref = W.resolve(spec.lora, weights_dir)
    if isinstance(lora_ref, int):
        raise WeightsError(f"model.transformer.lora must name a LoRA file, not {spec.lora!r}")
    return W.merge_lora(weights, W.read_lora(lora_ref), spec.lora_scale, str(lora_ref))


def build_transformer(spec: Transformer | Weights, weights_dir=None, device="cpu", dtype=torch.float32) -> CausalWan:
    """The generator: diffusers' Wan transformer with its weights (a LoRA merged), wrapped in :class:`CausalWan`.

    Args:
        spec: the preset's ``model.transformer`` section.
        weights_dir: where local weights and the hub mirror live (None: the default).
        device, dtype: where and how it runs.
    """
    ref = W.resolve(spec.weights, weights_dir)
    config = dict(spec.config)
    if isinstance(ref, int):
        with random_init(ref, device, dtype):
            model = WanTransformer3DModel(**config)
    elif ref.is_dir():
        sub = ref / "transformer" if (ref / "transformer" / "config.json").exists() else ref
        model = WanTransformer3DModel.from_pretrained(sub, torch_dtype=dtype)
    else:
        if not config:
            raise WeightsError(f"{ref} is a bare checkpoint: the preset must give model.transformer.config")
        from accelerate import init_empty_weights

        with init_empty_weights():
            model = WanTransformer3DModel(**config)
        state_dict = W.read_state_dict(ref, getattr(spec, "checkpoint_key", None))
        _merge_lora(spec, state_dict, weights_dir)  # before loading: no second copy of the weights
        W.load_into(model, state_dict, str(ref))
    if not isinstance(ref, Path) or ref.is_dir():  # random or diffusers-folder base: merge into the built model
        params = dict(model.named_parameters())
        merged = {k: p.detach() for k, p in params.items()}
        with torch.no_grad():
            for k in _merge_lora(spec, merged, weights_dir):
                params[k].copy_(merged[k])
    return CausalWan(cast(model.to(device), dtype).eval().requires_grad_(False)).to(device)


def build_vae(spec: Codec, weights_dir=None, device="cpu", dtype=torch.float32):
    """The codec: Wan's ``AutoencoderKLWan`` or the toy world's :class:`~.patch_codec.PatchCodec`.

    Args:
        spec: the preset's ``model.vae`` section.
        weights_dir: where local weights and the hub mirror live (None: the default).
        device, dtype: where and how it runs.
    """
    ref = W.resolve(spec.weights, weights_dir)
    if spec.kind == "patch":
        from .patch_codec import PatchCodec

        codec = PatchCodec(**spec.config)
        if not isinstance(ref, int):
            from safetensors.torch import load_file

            W.load_into(codec, load_file(str(ref)), str(ref))
        return codec.to(device).eval()
    if isinstance(ref, int):
        torch.manual_seed(ref)
        vae = AutoencoderKLWan(**spec.config)
    elif ref.suffix == ".safetensors":
        from safetensors.torch import load_file

        vae = AutoencoderKLWan(**spec.config)
        W.load_into(vae, load_file(str(ref)), str(ref))
    else:
        sub = ref / "vae" if (ref / "vae" / "config.json").exists() else ref
        vae = AutoencoderKLWan.from_pretrained(sub, torch_dtype=dtype)
    return cast(vae.to(device), dtype).eval().requires_grad_(False)


def build_text_encoder(spec: Weights, weights_dir=None, dtype=torch.float32, device="cpu"):
    """The UMT5 encoder; random weights are drawn on ``device``, real ones load on the CPU and visit the device to
    encode.

    Args:
        spec: the preset's ``model.text_encoder`` section.
        weights_dir: where local weights and the hub mirror live (None: the default).
        dtype, device: how and where it encodes.
    """
    from transformers import UMT5Config, UMT5EncoderModel

    ref = W.resolve(spec.weights, weights_dir)
    if isinstance(ref, int):
        with random_init(ref, device, dtype):
            enc = UMT5EncoderModel(UMT5Config(**spec.config))
    elif ref.suffix == ".safetensors":
        from safetensors.torch import load_file

        enc = UMT5EncoderModel(UMT5Config(**spec.config))
        W.load_into(enc, restore_tied_embedding(load_file(str(ref))), str(ref))
    else:
        sub = ref / "text_encoder" if (ref / "text_encoder" / "config.json").exists() else ref
        enc = UMT5EncoderModel.from_pretrained(sub, torch_dtype=dtype)
    return cast(enc, dtype).eval().requires_grad_(False)


def build_tokenizer(spec: str | dict, weights_dir=None):
    """The tokenizer ``model.tokenizer`` names: a weights reference, or ``{kind: words, vocab: [...]}``."""
    if isinstance(spec, dict) and spec.get("kind") == "words":
        return word_tokenizer(spec.get("vocab"))
    from transformers import AutoTokenizer

    ref = W.resolve(spec, weights_dir)
    path = Path(ref)
    sub = path / "tokenizer" if (path / "tokenizer").is_dir() else path
    return AutoTokenizer.from_pretrained(sub)


def compile_blocks(model: CausalWan, backend: str = "inductor", mode: str = "default",
                   dynamic: bool = True) -> CausalWan:
    """``runtime.compile``: torch.compile the pieces every transformer block runs in (``piecewise.py``); the
    cache's bookkeeping and attention run eagerly between them.

    Args:
        model: the generator, changed in place.
        backend: torch.compile's backend.
        mode: torch.compile's mode (``runtime.compile_mode``).
        dynamic: dynamic shapes (``runtime.compile_dynamic``).

    Returns:
        the same model.
    """
    model.piecewise = PiecewiseBlocks(CompileSpec(mode, dynamic, backend))
    return model


@dataclass
class Components:
    """Everything a run needs, loaded once and reused for every prompt of a batch."""

    model: CausalWan
    vae: AutoencoderKLWan
    text_encoder: torch.nn.Module
    tokenizer: object
    device: torch.device
    offload_text_encoder: bool = True
    max_text_length: int = 512
    encode_device: torch.device | None = None  # runtime.text_encoder_device cpu: where prompts encode (None: device)
    fast_decoder: torch.nn.Module | None = None  # video.decoder tiny: TAEHV's decoder (engine/tiny_decoder.py)

    def prompt_warnings(self, prompt: str) -> list[str]:
        """What of ``prompt`` the model will not see (too long, unknown words): for the user and the sidecar."""
        return prompt_warnings(self.tokenizer, prompt, self.max_text_length)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Encode on ``encode_device`` (default: the run's device); with ``offload_text_encoder`` an encoder that
        visited the GPU goes back to the CPU after.

        Args:
            prompts: B prompts.

        Returns:
            (B, max_text_length, text_dim) embeddings on the run's device.
        """
        where = self.encode_device or self.device
        self.text_encoder.to(where)
        try:
            with torch.no_grad():
                return encode_prompts(self.tokenizer, self.text_encoder, prompts, self.max_text_length).to(self.device)
        finally:
            if self.offload_text_encoder and where.type != "cpu":
                self.text_encoder.to("cpu")
                torch.cuda.empty_cache()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or a job scheduler's share), which on
    a shared node is fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_components(model_cfg: Model, runtime: Runtime, weights_dir=None) -> Components:
    """Load everything a run needs, on the device and in the dtype ``runtime`` says (float32 on a CPU).

    Args:
        model_cfg: the preset's ``model`` section.
        runtime: the preset's ``runtime`` section (device, dtype, threads, offload, the speed levers).
        weights_dir: where local weights and the hub mirror live (None: the default).
    """
    torch.set_num_threads(runtime.threads or usable_cpus())
    device = pick_device(runtime.device)
    check_levers(runtime, device)  # before anything large loads
    dtype = DTYPES[runtime.dtype]
    if device.type == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # half precision on CPU is slow and not what the tests pin
    tokenizer = build_tokenizer(model_cfg.tokenizer, weights_dir)
    encode_device = torch.device("cpu") if runtime.text_encoder_device == "cpu" else None
    text_encoder = build_text_encoder(model_cfg.text_encoder, weights_dir, dtype, encode_device or device)
    model = build_transformer(model_cfg.transformer, weights_dir, device, dtype)
    apply_levers(model, runtime)
    vae_dtype = DTYPES[runtime.vae_dtype] if runtime.vae_dtype and device.type != "cpu" else dtype
    vae = build_vae(model_cfg.vae, weights_dir, device, vae_dtype)
    return Components(
        model=model,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        device=device,
        offload_text_encoder=runtime.offload_text_encoder,
        max_text_length=model_cfg.max_text_length,
        encode_device=encode_device,
    )
