"""Loading a preset's models for a run: every weights reference checked up front (cheap), the models loaded
on first use (expensive) and reused. The engine says which weights are missing; this layer, which knows the
preset, says how to fetch them."""

from __future__ import annotations

from typing import Callable

from .config import Preset
from .engine import weights as W
from .engine.components import Components, load_components
from .errors import MissingWeights
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
    """Check every weights reference resolves now, load on the first call, then reuse."""
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
