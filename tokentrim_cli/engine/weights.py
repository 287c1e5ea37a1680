"""Where weights come from, in one place: local paths, hub references, or seeded random initialisation.

A weights reference is one of
  ``random`` or ``random:SEED``      seeded initialisation (tests, benchmarks);
  ``hf://OWNER/REPO[/PATH]``         a file or folder of a Hugging Face repository (used from the local cache or
                                     a local mirror; fetched by ``tokentrim download``, never implicitly);
  ``https://HOST/PATH``               one file on the web (TAEHV's decoder lives on GitHub), used from
                                     ``$TOKENTRIM_WEIGHTS_DIR/HOST/PATH`` or the cache ``~/.cache/tokentrim/weights``;
                                     fetched by ``tokentrim download``, never implicitly;
  ``pkg://PATH``                      a file shipped inside the tokentrim package (the toy model's weights);
  a local path                       a ``.pt``/``.pth``/``.safetensors`` file or a diffusers-format folder.

A transformer may name a LoRA (``model.transformer.lora``), merged into the base weights at load:
W <- W + lora_scale * B @ A (:func:`read_lora`, :func:`merge_lora`).
How the LongLive checkpoint and its LoRA were read: ``docs/models.md``, "LongLive's files".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MissingWeights, WeightsError

WEIGHTS_DIR_ENV = "TOKENTRIM_WEIGHTS_DIR"


@dataclass(frozen=True)
class HubRef:
    """A Hugging Face reference ``hf://OWNER/REPO[/PATH]``."""

    repo: str
    path: str = ""  # file or folder inside the repo; "" = whole repo

    def __str__(self) -> str:
        return f"hf://{self.repo}" + (f"/{self.path}" if self.path else "")


@dataclass(frozen=True)
class UrlRef:
    url: str  # https://HOST/PATH of one file

    @property
    def relpath(self) -> Path:
        """Where the file lives below a weights folder: HOST/PATH."""
        return Path(self.url.split("://", 1)[1].split("?", 1)[0])

    def __str__(self) -> str:
        return self.url


def url_cache() -> Path:
    """Where ``tokentrim download`` puts files named by URL when no folder is given."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tokentrim" / "weights"


def parse_ref(ref: str) -> HubRef | UrlRef | Path | int:
    """Parse a weights reference (module docstring).

    Args:
        ref: the reference as a preset writes it.

    Returns:
        a HubRef for hub references, a UrlRef for https URLs, an int seed for ``random[:SEED]``, a Path otherwise.
    """
    ref = str(ref).strip()
    if ref.startswith("https://"):
        if "/" not in ref[len("https://"):].strip("/"):
            raise WeightsError(f"weights URL {ref!r} must name a file: https://HOST/PATH")
        return UrlRef(ref)
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
    here raise :class:`MissingWeights` with ``downloadable`` set: the command adds how to fetch them.

    Args:
        ref: a weights reference.
        weights_dir: the local mirror (None: ``$TOKENTRIM_WEIGHTS_DIR``, then the hub cache).

    Returns:
        the local file or folder, or the seed of ``random[:SEED]``.
    """
    parsed = parse_ref(ref)
    if isinstance(parsed, int):
        return parsed
    if isinstance(parsed, UrlRef):
        return _resolve_url(parsed, weights_dir or os.environ.get(WEIGHTS_DIR_ENV))
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


def _resolve_url(ref: UrlRef, weights_dir: str | None) -> Path:
    places = ([Path(weights_dir).expanduser()] if weights_dir else []) + [url_cache()]
    for folder in places:
        if (folder / ref.relpath).is_file():
            return folder / ref.relpath
    raise MissingWeights(f"weights {ref} are not on this machine (looked in {', '.join(map(str, places))})",
                         downloadable=True)


def _fetch_url(ref: UrlRef, local_dir: str | None) -> Path:
    """Download one file to LOCAL_DIR/HOST/PATH (or the cache), through a temporary file renamed into place."""
    import shutil
    import urllib.request

    target = (Path(local_dir) if local_dir else url_cache()) / ref.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(ref.url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


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
    """Download a hub reference or a URL (used by ``tokentrim download``).

    Args:
        ref: an ``hf://`` reference or an ``https://`` URL of one file.
        local_dir: where to put it (None: the hub cache; for a URL ``~/.cache/tokentrim/weights``).

    Returns:
        its local path.
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    parsed = parse_ref(ref)
    if isinstance(parsed, UrlRef):
        return _fetch_url(parsed, local_dir)
    if not isinstance(parsed, HubRef):
        raise WeightsError(f"{ref!r} is not a hub reference or URL; nothing to download")
    target_dir = str(Path(local_dir) / parsed.repo) if local_dir else None
    if parsed.path and "." in Path(parsed.path).name:
        return Path(hf_hub_download(parsed.repo, parsed.path, local_dir=target_dir))
    pattern = [f"{parsed.path}/*"] if parsed.path else None
    root = Path(snapshot_download(parsed.repo, allow_patterns=pattern, local_dir=target_dir))
    return root / parsed.path


# ---------------------------------------------------------------------- transformer checkpoints
_CHECKPOINT_KEYS = ("generator_ema", "generator", "model")


def _read_tensors(path: Path, what: str, mmap: bool = False):
    """What a ``.safetensors`` or torch ``.pt`` file holds (tensors only: ``weights_only``); one line if it cannot
    be read."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - turn any unpickling failure into one line
        raise WeightsError(f"cannot read {what} {path}: {exc}") from None


def read_state_dict(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a transformer state dict from a Self Forcing / Rolling Forcing / LongLive ``.pt`` or a ``.safetensors``
    file.

    Training checkpoints nest the weights under ``generator_ema`` (preferred), ``generator`` or ``model`` (``key``:
    that one only; LongLive reads ``generator``), prefix them with ``model.`` and sometimes FSDP's
    ``_fsdp_wrapped_module.``, and use the original Wan key names; the result is a flat dict in diffusers' naming.

    Args:
        path: the checkpoint file.
        key: the top-level key to read (None: the first of the three found).

    Returns:
        diffusers name -> tensor.
    """
    path = Path(path)
    sd = _read_tensors(path, "checkpoint", mmap=True)
    keys = (key,) if key else _CHECKPOINT_KEYS
    if path.suffix != ".safetensors" and isinstance(sd, dict):  # training checkpoints nest the weights
        for k in keys:
            if k in sd and isinstance(sd[k], dict):
                sd = sd[k]
                break
        else:
            if key:
                raise WeightsError(f"{path} has no {key!r} entry (it has: {', '.join(map(str, sd)) or 'nothing'})")
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise WeightsError(f"{path} holds no transformer state dict (looked under {', '.join(keys)})")
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
    """Load a complete state dict into a model built on the meta device (no second copy of the weights).

    Args:
        model: built on the meta device; its parameters are assigned in place.
        state_dict: every parameter and buffer, by name.
        source: the file, for the error naming a missing or unexpected key.
    """
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


# ---------------------------------------------------------------------- LoRA (LongLive)
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")
_LORA_PREFIXES = ("base_model.model.", "model.", "transformer.")  # peft over the Wan model / its wrapper; diffusers


def read_lora(path: Path) -> dict[str, dict]:
    """Read a LoRA file: ``{diffusers module name: {"A": lora_A, "B": lora_B, "key": the file's lora_A key}}``.

    LongLive's ``lora.pt`` is ``torch.save`` of peft's ``get_peft_model_state_dict`` (training checkpoints nest it
    under ``generator_lora``): keys ``base_model.model.blocks.N.self_attn.q.lora_A.weight`` in the original Wan
    names, ``lora_A`` of shape (rank, in) and ``lora_B`` (out, rank). A ``.safetensors`` file, diffusers names
    (``transformer.blocks.N.attn1.to_q...``), an FSDP prefix or peft's adapter name (``lora_A.default.weight``) are
    read too. A key that is not a LoRA matrix, or a matrix without its partner, is a WeightsError naming it.

    Args:
        path: the LoRA file.
    """
    path = Path(path)
    sd = _read_tensors(path, "LoRA file")
    if isinstance(sd, dict) and isinstance(sd.get("generator_lora"), dict):
        sd = sd["generator_lora"]
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise WeightsError(f"{path} holds no LoRA state dict (a mapping of lora_A / lora_B tensors)")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    first_key: dict[str, str] = {}
    for key, tensor in sd.items():
        m = _LORA_KEY.match(key.replace("_fsdp_wrapped_module.", ""))
        if m is None:
            raise WeightsError(f"{path}: key {key} is not a LoRA matrix (expected ...lora_A.weight / ...lora_B.weight)")
        module = m["module"]
        for prefix in _LORA_PREFIXES:
            if module.startswith(prefix):
                module = module[len(prefix) :]
        pairs.setdefault(module, {})[m["part"]] = tensor
        first_key.setdefault(module, key)
    names = {m: m for m in pairs}
    if _uses_original_names({m + ".weight": None for m in pairs}):  # one naming per file, as for the weights
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

        for m in pairs:
            (converted,) = convert_wan_transformer_to_diffusers({m + ".weight": torch.empty(0)})
            names[m] = converted[: -len(".weight")]
    out = {}
    for m, pair in pairs.items():
        for part in ("A", "B"):
            if part not in pair:
                raise WeightsError(f"{path}: {first_key[m]} has no lora_{part} partner")
        out[names[m]] = {"A": pair["A"], "B": pair["B"], "key": first_key[m]}
    return out


def merge_lora(weights: dict[str, torch.Tensor], lora: dict[str, dict], scale: float, source: str) -> list[str]:
    """W <- W + scale * B @ A for every adapted linear layer, in float32, stored back in W's dtype and device (in
    place in the ``weights`` mapping); returns the names replaced. A LoRA module without a matching
    ``<module>.weight``, or shapes that do not fit, is a WeightsError naming the LoRA key.

    Args:
        weights: the transformer's tensors by diffusers name, changed in place.
        lora: from :func:`read_lora`.
        scale: alpha / rank (``model.transformer.lora_scale``).
        source: the LoRA file, for errors.

    Returns:
        the names of the weights replaced.
    """
    for module, pair in lora.items():
        name, key = module + ".weight", pair["key"]
        a, b = pair["A"], pair["B"]
        if name not in weights:
            raise WeightsError(f"{source}: LoRA key {key} matches no transformer weight (looked for {name})")
        w = weights[name]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise WeightsError(f"{source}: LoRA key {key}: lora_B {tuple(b.shape)} @ lora_A {tuple(a.shape)} does not "
                               f"fit {name} {tuple(w.shape)}")
        delta = b.to(w.device, torch.float32) @ a.to(w.device, torch.float32)
        weights[name] = (w.float() + scale * delta).to(w.dtype)
    return [m + ".weight" for m in lora]
