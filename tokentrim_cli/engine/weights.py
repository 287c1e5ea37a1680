"""Where weights come from, in one place: local paths, hub references, or seeded random initialisation.

A weights reference is one of
  ``random`` or ``random:SEED``      seeded initialisation (tests, benchmarks);
  ``hf://OWNER/REPO[/PATH]``         a file or folder of a Hugging Face repository (used from the local cache or
                                     a local mirror; fetched by ``tokentrim download``, never implicitly);
  ``pkg://PATH``                      a file shipped inside the tokentrim package (the toy model's weights);
  a local path                       a ``.pt``/``.pth``/``.safetensors`` file or a diffusers-format folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MissingWeights, WeightsError

WEIGHTS_DIR_ENV = "TOKENTRIM_WEIGHTS_DIR"


@dataclass(frozen=True)
class HubRef:
    repo: str
    path: str = ""  # file or folder inside the repo; "" = whole repo

    def __str__(self) -> str:
        return f"hf://{self.repo}" + (f"/{self.path}" if self.path else "")


def parse_ref(ref: str) -> HubRef | Path | int:
    """HubRef for hub references, an int seed for ``random[:SEED]``, a Path otherwise."""
    ref = str(ref).strip()
    if ref == "random":
        return 0
    if ref.startswith("random:"):
        return int(ref.split(":", 1)[1])
    if ref.startswith("pkg://"):
        return Path(__file__).resolve().parents[1] / ref[len("pkg://") :]
    if ref.startswith("hf://"):
        parts = ref[5:].strip("/").split("/")
        if len(parts) < 2:
            raise WeightsError(f"hub reference {ref!r} must look like hf://OWNER/REPO[/PATH]")
        return HubRef("/".join(parts[:2]), "/".join(parts[2:]))
    return Path(os.path.expanduser(ref))


def resolve(ref: str, weights_dir: str | None = None) -> Path | int:
    """Turn a reference into a local path (or a seed), without downloading anything. Hub weights that are not
    here raise :class:`MissingWeights` with ``downloadable`` set: the command adds how to fetch them."""
    parsed = parse_ref(ref)
    if isinstance(parsed, int):
        return parsed
    if isinstance(parsed, Path):
        if not parsed.exists():
            hint = "reinstall tokentrim or run: make toy-model" if ref.startswith("pkg://") else "check the path in the preset or --set"
            raise MissingWeights(f"weights file {parsed} does not exist: {hint}")
        return parsed
    weights_dir = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        local = Path(weights_dir).expanduser() / parsed.repo / parsed.path
        if local.exists():
            return local
    found = _from_hub_cache(parsed)
    if found is not None:
        return found
    where = f" (also looked in {Path(weights_dir) / parsed.repo / parsed.path})" if weights_dir else ""
    raise MissingWeights(f"weights {parsed} are not on this machine{where}", downloadable=True)


def _from_hub_cache(ref: HubRef) -> Path | None:
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    if ref.path and "." in Path(ref.path).name:
        hit = try_to_load_from_cache(ref.repo, ref.path)
        return Path(hit) if isinstance(hit, str) else None
    try:
        pattern = [f"{ref.path}/*"] if ref.path else None
        root = Path(snapshot_download(ref.repo, allow_patterns=pattern, local_files_only=True))
    except Exception:
        return None
    target = root / ref.path
    return target if target.exists() and any(target.iterdir()) else None


def fetch(ref: str, local_dir: str | None = None) -> Path:
    """Download a hub reference (used by ``tokentrim download``); return its local path."""
    from huggingface_hub import hf_hub_download, snapshot_download

    parsed = parse_ref(ref)
    if not isinstance(parsed, HubRef):
        raise WeightsError(f"{ref!r} is not a hub reference; nothing to download")
    target_dir = str(Path(local_dir) / parsed.repo) if local_dir else None
    if parsed.path and "." in Path(parsed.path).name:
        return Path(hf_hub_download(parsed.repo, parsed.path, local_dir=target_dir))
    pattern = [f"{parsed.path}/*"] if parsed.path else None
    root = Path(snapshot_download(parsed.repo, allow_patterns=pattern, local_dir=target_dir))
    return root / parsed.path


# ---------------------------------------------------------------------- transformer checkpoints
_CHECKPOINT_KEYS = ("generator_ema", "generator", "model")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a transformer state dict from a Self Forcing / Rolling Forcing ``.pt`` or a ``.safetensors`` file.

    Training checkpoints nest the weights under ``generator_ema`` (preferred), ``generator`` or ``model``, prefix
    them with ``model.`` and sometimes FSDP's ``_fsdp_wrapped_module.``, and use the original Wan key names;
    the result is a flat dict in diffusers' naming.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - turn any unpickling failure into one line
            raise WeightsError(f"cannot read checkpoint {path}: {exc}") from None
        if isinstance(sd, dict):
            for key in _CHECKPOINT_KEYS:
                if key in sd and isinstance(sd[key], dict):
                    sd = sd[key]
                    break
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise WeightsError(f"{path} holds no transformer state dict (looked under {', '.join(_CHECKPOINT_KEYS)})")
    clean = {}
    for k, v in sd.items():
        k = k.replace("_fsdp_wrapped_module.", "")
        if k.startswith("model."):
            k = k[len("model.") :]
        clean[k] = v
    if _uses_original_names(clean):
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

        clean = convert_wan_transformer_to_diffusers(dict(clean))
    return clean


def _uses_original_names(sd: dict) -> bool:
    return any(".self_attn." in k or k.startswith("head.head") or k.startswith("time_embedding.") for k in sd)


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load a complete state dict into a model built on the meta device (no second copy of the weights)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise WeightsError(f"{source} does not fit the model config: keys " + ", ".join(parts))
    for k, ref in expected.items():
        if tuple(state_dict[k].shape) != tuple(ref.shape):
            raise WeightsError(
                f"{source}: tensor {k} has shape {tuple(state_dict[k].shape)} but the model config expects "
                f"{tuple(ref.shape)}; the preset's architecture config does not match this checkpoint"
            )
    model.load_state_dict(state_dict, strict=True, assign=True)
