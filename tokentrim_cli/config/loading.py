"""Loading a preset's models for a run: every weights reference checked up front (cheap), the models loaded
on first use (expensive) and reused. The engine says which weights are missing; this layer, which knows the
preset, says how to fetch them (and, for ``download``, fails at once when the hub cannot be reached)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from .presets import Preset
from ..engine import weights as W
from ..engine.components import Components, load_components, pick_device
from ..engine.levers import check_levers
from ..errors import MissingWeights, TokentrimError
from .settings import Model


def weights_refs(model: Model, decoder: str = "vae") -> list[str]:
    """Every weights reference a preset's ``model`` section names (the fast decoder's only with ``video.decoder``
    ``tiny``: pass it as ``decoder``)."""
    refs = [model.transformer.weights] + ([model.transformer.lora] if model.transformer.lora else [])
    refs += [model.vae.weights, model.text_encoder.weights] + ([model.tiny_decoder] if decoder == "tiny" else [])
    return refs + ([model.tokenizer] if isinstance(model.tokenizer, str) else [])


def missing_weights(preset: Preset, weights_dir: str | None) -> list[str]:
    """The references of ``preset`` that are not on this machine (``doctor``)."""
    missing = []
    for ref in weights_refs(preset.config.model, preset.config.video.decoder):
        try:
            W.resolve(ref, weights_dir)
        except MissingWeights:
            missing.append(ref)
    return missing


def _with_hint(exc: MissingWeights, preset: Preset) -> MissingWeights:
    if not exc.downloadable:
        return exc
    extra = " --set video.decoder=tiny" if preset.config.video.decoder == "tiny" else ""
    return MissingWeights(f"{exc}; run: tokentrim download {preset.name}{extra}", downloadable=True)


def components_loader(preset: Preset, weights_dir: str | None) -> Callable[[], Components]:
    """Check every weights reference resolves and every lever runs on this device now, load on the first call,
    then reuse."""
    check_levers(preset.config.runtime, pick_device(preset.config.runtime.device))
    try:
        for ref in weights_refs(preset.config.model, preset.config.video.decoder):
            W.resolve(ref, weights_dir)
    except MissingWeights as exc:
        raise _with_hint(exc, preset) from None
    loaded: list[Components] = []

    def load() -> Components:
        if not loaded:
            try:
                loaded.append(_with_decoder(load_components(preset.config.model, preset.config.runtime, weights_dir),
                                            preset, weights_dir))
            except MissingWeights as exc:  # deleted since the check
                raise _with_hint(exc, preset) from None
        return loaded[0]

    return load


def _with_decoder(comps: Components, preset: Preset, weights_dir: str | None) -> Components:
    """With ``video.decoder: tiny``, the fast decoder joins the components (``engine/tiny_decoder.py``), in the
    VAE's dtype on the run's device."""
    if preset.config.video.decoder == "tiny":
        from ..engine.tiny_decoder import build_tiny_decoder

        dtype = next(comps.vae.parameters()).dtype
        ref = W.resolve(preset.config.model.tiny_decoder, weights_dir)
        comps.fast_decoder = build_tiny_decoder(ref, comps.device, dtype)
    return comps


def fetch_all(refs: list[str], local_dir: str | None) -> Iterator[tuple[str, Path]]:
    """Download each hub reference or URL (``tokentrim download``), yielding (ref, local path); the hub's
    reachability is checked once first, and a failure is one actionable line."""
    if any(r.startswith("hf://") for r in refs):
        check_hub_reachable()
    for ref in refs:
        try:
            path = W.fetch(ref, local_dir)
        except TokentrimError:
            raise
        except Exception as exc:  # noqa: BLE001 - network / auth problems become one actionable line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TokentrimError(f"could not download {ref}: {first}. Check the network and HF_TOKEN, or copy the "
                                 "files into a folder and pass --weights-dir") from None
        yield ref, path


def check_hub_reachable() -> None:
    """Fail in one line now when the hub's name does not resolve (offline), instead of after the hub client's
    five retries (30 s of log lines). Behind a proxy the proxy resolves it, so there is nothing to check here."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise TokentrimError("HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it, or copy the files into "
                             "a folder and pass --weights-dir")
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise TokentrimError(f"cannot reach {host} ({exc.strerror or exc}): check the network (or HF_ENDPOINT / "
                             "HTTPS_PROXY), or copy the files into a folder and pass --weights-dir") from None
