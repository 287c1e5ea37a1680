"""Typed presets: validation returns frozen sections with every default filled, and gives the YAML back."""

import dataclasses

import pytest

from tokentrim_cli.config.presets import dump, list_presets, load_preset, validate
from tokentrim_cli.config.settings import Cache, Config, Pruning


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_round_trips_through_its_typed_form(name):
    cfg = load_preset(name).config
    assert isinstance(cfg, Config) and isinstance(cfg.cache, Cache)
    again = validate(cfg.as_dict(), "round trip")
    assert again == cfg and dump(again) == dump(cfg)


def test_sections_are_frozen_and_defaults_are_the_schema_s():
    cfg = load_preset("tiny").config
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.video.fps = 30
    assert load_preset("tiny", ["pruning.lambda=3"]).config.pruning == dataclasses.replace(Pruning(enabled=True), lam=3)
    assert cfg.as_dict()["pruning"]["lambda"] == 2.0  # YAML names survive (lambda is a Python keyword)
    assert Cache().compression == (2, 4, 4) and cfg.as_dict()["cache"]["compression"] == [2, 4, 4]
