"""The toy world: deterministic, its attributes match its pixels, captions round-trip, held-out pairs held out."""

import numpy as np

from tokentrim_cli.toy import world


def test_deterministic():
    a, attrs_a = world.render(world.sample_spec(5), 20, 64, 64)
    b, attrs_b = world.render(world.sample_spec(5), 20, 64, 64)
    c, _ = world.render(world.sample_spec(6), 20, 64, 64)
    assert np.array_equal(a, b) and attrs_a == attrs_b and not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == (20, 64, 64, 3)


def test_attributes_match_pixels():
    spec = world.spec_from_caption("a red circle bouncing on a dark blue background", 1)
    frames, attrs = world.render(spec, 60, 64, 64)
    positions = []
    for f, a in zip(frames, attrs):
        obj = a["objects"][0]
        x, y = int(round(obj["x"])), int(round(obj["y"]))
        assert tuple(f[y, x]) == world.COLOURS["red"]  # filled shape: its centre has its colour
        assert obj["visible"] and 0 <= x < 64 and 0 <= y < 64
        positions.append((x, y))
        # a pixel far from the object shows the plain background colour
        far = (0, 0) if x > 32 and y > 32 else (63, 63)
        assert tuple(f[far[1], far[0]]) == world.COLOURS["dark blue"]
        assert a["background"]["colour"] == "dark blue"
    assert len(set(positions)) > 10  # it moves


def test_captions_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        spec = world.sample_spec(rng, split="any")
        text = world.caption(spec)
        assert world.parse_caption(text) == spec.caption_attributes()
        assert all(w in world.VOCAB for w in text.split())


def test_heldout_pairs():
    rng = np.random.default_rng(1)
    for _ in range(500):
        assert not world.heldout_pairs(world.sample_spec(rng, split="train"))
    for _ in range(50):
        assert world.heldout_pairs(world.sample_spec(rng, split="heldout"))
