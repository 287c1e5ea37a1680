"""Loading a preset's models for a run: every weights reference checked up front (cheap), the models loaded
on first use (expensive) and reused. The engine says which weights are missing; this layer, which knows the
preset, says how to fetch them (and, for ``download``, fails at once when the hub cannot be reached)."""

from __future__ import annotations

from typing import Callable

from .presets import Preset
from ..engine import weights as W
from ..engine.components import Components, load_components, pick_device
from ..engine.levers import check_levers
from ..errors import MissingWeights, TokentrimError
from .settings import Model


def weights_refs(model: Model) -> list[str]:
    """Every weights reference a preset's ``model`` section names."""
    refs = [model.transformer.weights] + ([model.transformer.lora] if model.transformer.lora else [])
    refs += [model.vae.weights, model.text_encoder.weights]
    return refs + ([model.tokenizer] if isinstance(model.tokenizer, str) else [])


def missing_weights(preset: Preset, weights_dir: str | None) -> list[str]:
    """The references of ``preset`` that are not on this machine (``doctor``)."""
    missing = []
    for ref in weights_refs(preset.config.model):
        try:
            W.resolve(ref, weights_dir)
        except MissingWeights:
            missing.append(ref)
    return missing


def _with_hint(exc: MissingWeights, preset: Preset) -> MissingWeights:
    if not exc.downloadable:
        return exc
    return MissingWeights(f"{exc}; run: tokentrim download {preset.name}", downloadable=True)


def components_loader(preset: Preset, weights_dir: str | None) -> Callable[[], Components]:
    """Check every weights reference resolves and every lever runs on this device now, load on the first call,
    then reuse."""
    check_levers(preset.config.runtime, pick_device(preset.config.runtime.device))
    try:
        for ref in weights_refs(preset.config.model):
            W.resolve(ref, weights_dir)
    except MissingWeights as exc:
        raise _with_hint(exc, preset) from None
    loaded: list[Components] = []

    def load() -> Components:
        if not loaded:
            try:
                loaded.append(load_components(preset.config.model, preset.config.runtime, weights_dir))
            except MissingWeights as exc:  # deleted since the check
                raise _with_hint(exc, preset) from None
        return loaded[0]

    return load


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
