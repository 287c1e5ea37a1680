"""The presets of a batch's items: resolved once per (preset, overrides), models loaded once per (model,
runtime) and shared by every item that can use them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..config.presets import Preset, load_preset, looks_like_path
from .manifest import canonical


class Presets:
    """Args:
        default: ``--preset`` (None: the configured default).
        cli_sets: ``--set`` overrides, applied to every item before its own.
        base_dir: the prompts file's folder, where an item's relative preset path is looked up first.
        weights_dir: ``--weights-dir``.
    """

    def __init__(self, default: str | None, cli_sets: list[str], base_dir: Path, weights_dir: str | None):
        self.default, self.cli_sets, self.base_dir, self.weights_dir = default, list(cli_sets), base_dir, weights_dir
        self.device: str | None = None  # cuda:N of this process when distributed on GPUs
        self._presets: dict = {}
        self._loaders: dict = {}

    def ref(self, item_preset: str | None) -> str | None:
        """Item preset paths are looked up next to the prompts file first, then from the working folder."""
        if not item_preset:
            return self.default
        p = Path(item_preset).expanduser()
        if looks_like_path(item_preset) and not p.is_absolute() and (self.base_dir / p).is_file():
            return str(self.base_dir / p)
        return item_preset

    def base(self, ref: str | None) -> Preset:
        key = (ref, None)
        if key not in self._presets:
            self._presets[key] = load_preset(ref, self.cli_sets)
        return self._presets[key]

    def resolve(self, ref: str | None, item_sets: Iterable[str] = ()) -> Preset:
        """Preset for an item: --set, then this process's device, then the item's own overrides."""
        item_sets = list(item_sets)
        base = self.base(ref)
        dev = [f"runtime.device={self.device}"] if self.device and base.config.runtime.device != "cpu" else []
        if not item_sets and not dev:
            return base
        key = (ref, tuple(dev + item_sets))
        if key not in self._presets:
            self._presets[key] = load_preset(ref, self.cli_sets + dev + item_sets)
        return self._presets[key]

    @staticmethod
    def loader_key(preset: Preset) -> tuple:
        cfg = preset.config
        return preset.name, canonical(cfg.model.as_dict()), canonical(cfg.runtime.as_dict())

    def loader(self, preset: Preset) -> Callable:
        from ..config.loading import components_loader

        key = self.loader_key(preset)
        if key not in self._loaders:
            self._loaders[key] = components_loader(preset, self.weights_dir)
        return self._loaders[key]

    def drop_other_loaders(self, keep: tuple | None) -> None:
        for key in [k for k in self._loaders if k != keep]:
            del self._loaders[key]
