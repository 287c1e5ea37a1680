"""Build the model components a preset names: causal transformer, VAE, text encoder and tokenizer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from ..errors import WeightsError
from . import weights as W
from .model import CausalWan
from .text import encode_prompts, restore_tied_embedding
from .tokenizer import word_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextlib.contextmanager
def random_init(seed: int, device, dtype: torch.dtype):
    """Seeded random weights drawn where and in the dtype they will run (a fp32 copy first would double the
    memory; a full-size UMT5-XXL initialises in seconds on a GPU, minutes on a CPU). On a CPU: float32."""
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype if torch.device(device).type != "cpu" else torch.float32)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast parameters to ``dtype`` except the modules diffusers keeps in float32 (norms, time embedder)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, param in model.named_parameters():
        target = torch.float32 if keep.intersection(name.split(".")) else dtype
        if param.dtype != target:
            param.data = param.data.to(target)
    return model


def build_transformer(spec: dict, weights_dir=None, preset="PRESET", device="cpu", dtype=torch.float32) -> CausalWan:
    ref = W.resolve(spec["weights"], weights_dir, preset)
    config = dict(spec.get("config") or {})
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
        W.load_into(model, W.read_state_dict(ref), str(ref))
    return CausalWan(cast(model.to(device), dtype).eval().requires_grad_(False)).to(device)


def build_vae(spec: dict, weights_dir=None, preset="PRESET", device="cpu", dtype=torch.float32):
    ref = W.resolve(spec["weights"], weights_dir, preset)
    if spec.get("kind") == "patch":
        from .patch_codec import PatchCodec

        codec = PatchCodec(**(spec.get("config") or {}))
        if not isinstance(ref, int):
            from safetensors.torch import load_file

            W.load_into(codec, load_file(str(ref)), str(ref))
        return codec.to(device).eval()
    if isinstance(ref, int):
        torch.manual_seed(ref)
        vae = AutoencoderKLWan(**(spec.get("config") or {}))
    elif ref.suffix == ".safetensors":
        from safetensors.torch import load_file

        vae = AutoencoderKLWan(**(spec.get("config") or {}))
        W.load_into(vae, load_file(str(ref)), str(ref))
    else:
        sub = ref / "vae" if (ref / "vae" / "config.json").exists() else ref
        vae = AutoencoderKLWan.from_pretrained(sub, torch_dtype=dtype)
    return cast(vae.to(device), dtype).eval().requires_grad_(False)


def build_text_encoder(spec: dict, weights_dir=None, preset="PRESET", dtype=torch.float32, device="cpu"):
    """The UMT5 encoder; random weights are drawn on ``device``, real ones load on the CPU and visit the device to
    encode."""
    from transformers import UMT5Config, UMT5EncoderModel

    ref = W.resolve(spec["weights"], weights_dir, preset)
    if isinstance(ref, int):
        with random_init(ref, device, dtype):
            enc = UMT5EncoderModel(UMT5Config(**(spec.get("config") or {})))
    elif ref.suffix == ".safetensors":
        from safetensors.torch import load_file

        enc = UMT5EncoderModel(UMT5Config(**(spec.get("config") or {})))
        W.load_into(enc, restore_tied_embedding(load_file(str(ref))), str(ref))
    else:
        sub = ref / "text_encoder" if (ref / "text_encoder" / "config.json").exists() else ref
        enc = UMT5EncoderModel.from_pretrained(sub, torch_dtype=dtype)
    return cast(enc, dtype).eval().requires_grad_(False)


def build_tokenizer(spec, weights_dir=None, preset="PRESET"):
    if isinstance(spec, dict) and spec.get("kind") == "words":
        return word_tokenizer(spec.get("vocab"))
    from transformers import AutoTokenizer

    ref = W.resolve(spec if isinstance(spec, str) else spec["weights"], weights_dir, preset)
    path = Path(ref)
    sub = path / "tokenizer" if (path / "tokenizer").is_dir() else path
    return AutoTokenizer.from_pretrained(sub)


def compile_blocks(model: CausalWan, backend: str = "inductor") -> CausalWan:
    """torch.compile each transformer block in place (``runtime.compile``). Shapes vary with the context length,
    so dynamic shapes; the cache's bookkeeping inside attention runs eagerly between the compiled parts."""
    for block in model.transformer.blocks:
        block.compile(dynamic=True, backend=backend)
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

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Encode on the run's device; with ``offload_text_encoder`` the encoder goes back to the CPU after."""
        self.text_encoder.to(self.device)
        try:
            with torch.no_grad():
                return encode_prompts(self.tokenizer, self.text_encoder, prompts, self.max_text_length)
        finally:
            if self.offload_text_encoder and self.device.type != "cpu":
                self.text_encoder.to("cpu")
                torch.cuda.empty_cache()


def load_components(model_cfg: dict, runtime: dict, weights_dir=None, preset="PRESET") -> Components:
    device = pick_device(runtime.get("device", "auto"))
    dtype = DTYPES[runtime.get("dtype", "float32")]
    if device.type == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # half precision on CPU is slow and not what the tests pin
    tokenizer = build_tokenizer(model_cfg["tokenizer"], weights_dir, preset)
    text_encoder = build_text_encoder(model_cfg["text_encoder"], weights_dir, preset, dtype, device)
    model = build_transformer(model_cfg["transformer"], weights_dir, preset, device, dtype)
    if runtime.get("compile"):
        compile_blocks(model)
    vae_dtype = DTYPES[runtime["vae_dtype"]] if runtime.get("vae_dtype") and device.type != "cpu" else dtype
    vae = build_vae(model_cfg["vae"], weights_dir, preset, device, vae_dtype)
    return Components(
        model=model,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        device=device,
        offload_text_encoder=runtime.get("offload_text_encoder", True),
        max_text_length=model_cfg.get("max_text_length", 512),
    )
