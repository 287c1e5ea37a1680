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


def test_every_shape_motion_background_renders_at_64x96():
    import pytest

    for k, (shape, motion, bg) in enumerate([(s, m, b) for s in world.SHAPES for m in world.MOTIONS
                                             for b in world.BACKGROUND_KINDS]):
        if motion == "rotating" and shape not in world.ROTATABLE_SHAPES:
            continue
        text = f"a red {shape} {motion} on a {'' if bg == 'plain' else bg + ' '}white background"
        spec = world.spec_from_caption(text, k)
        frames, attrs = world.render(spec, 30, 64, 96)
        assert frames.shape == (30, 64, 96, 3) and len(attrs) == 30
        o = [a["objects"][0] for a in attrs]
        assert all(a["visible"] and a["area_px"] > 10 for a in o)
        if shape in world.FILLED_SHAPES:
            for f, a in zip(frames, o):
                x, y = int(round(a["x"])) % 96, int(round(a["y"])) % 64
                assert tuple(f[y, x]) == world.COLOURS["red"], (text, a)
        if motion == "rotating":
            assert len({round(a["angle"], 3) for a in o}) > 20
        if motion == "growing":
            sizes = [a["size"] for a in o]
            assert max(sizes) - min(sizes) > 2
        if motion in ("rotating", "growing"):
            assert len({(a["x"], a["y"]) for a in o}) == 1  # in place
        if motion == "sliding":
            assert all(-0.5 <= a["x"] < 95.5 and -0.5 <= a["y"] < 63.5 for a in o)  # wraps around
        if motion == "bouncing" or motion == "growing":
            ex = 3 ** 0.5 / 2 if shape == "triangle" else 1.0  # half width of an upright triangle
            for a in o:  # the whole shape inside the frame
                assert ex * a["size"] - 0.5 <= a["x"] + 1e-6 and a["x"] <= 95.5 - ex * a["size"] + 1e-6
                assert a["size"] - 0.5 <= a["y"] + 1e-6 and a["y"] <= 63.5 - a["size"] + 1e-6
        assert attrs[0]["background"] == {"kind": bg, "colour": "white", "rgb": list(world.COLOURS["white"])}
    with pytest.raises(ValueError):
        world.render(spec, -1)


def test_bouncing_reflects_and_stays_inside():
    spec = world.ClipSpec((world.ObjectSpec("square", "yellow", x=0.5, y=0.5, size=0.1, vx=0.05, vy=0.03),),
                          "bouncing", "gradient", "purple")
    frames, attrs = world.render(spec, 200, 64, 64)
    xs = np.array([a["objects"][0]["x"] for a in attrs])
    assert xs.min() >= 6.4 - 0.5 - 1e-6 and xs.max() <= 63.5 - 6.4 + 1e-6
    assert np.sum(np.diff(np.sign(np.diff(xs))) != 0) >= 4  # turned around several times
    # gradient: light at the top, the palette colour in the middle row, dark at the bottom
    col = frames[0][:, 0].astype(int)
    assert col[0].sum() > col[32].sum() > col[63].sum()


def test_two_objects_and_occlusion():
    import pytest

    spec = world.ClipSpec((world.ObjectSpec("circle", "red", size=0.2), world.ObjectSpec("square", "blue", size=0.1)),
                          "rotating", "plain", "white")
    frames, attrs = world.render(spec, 3, 64, 64)
    red, blue = attrs[0]["objects"]
    assert red["x"] == pytest.approx(blue["x"]) and blue["visible"] and red["visible"] and red["area_px"] < 3.15 * 12.8 ** 2
    assert tuple(frames[0, 32, 32]) == world.COLOURS["blue"]  # the second object is drawn on top
    assert world.caption(spec) == "a red circle and a blue square rotating on a white background"


def test_parse_caption_examples_and_errors():
    import pytest

    p = world.parse_caption("  A Yellow square rotating on a GRADIENT dark-blue background. ")
    assert p == world.ParsedCaption((("yellow", "square"),), "rotating", "gradient", "dark blue")
    p = world.parse_caption("an orange ring and a light green cross sliding on a plain grey background")
    assert p.objects == (("orange", "ring"), ("light green", "cross")) and p.background_kind == "plain"
    assert p.background_colour == "gray"
    for bad, hint in [("a corgi on a beach", "corgi"), ("a red circle bouncing", "end of the caption"),
                      ("a red bouncing on a blue background", "shape"), ("", "empty"),
                      ("a red circle bouncing on a red background", "differ"),
                      ("a red circle and a blue square and a green ring sliding on a white background", "motion"),
                      ("a red circle bouncing on a blue background please", "please")]:
        with pytest.raises(ValueError, match=hint):
            world.parse_caption(bad)
    spec = world.spec_from_caption("a red circle bouncing on a dark blue background", 7)
    assert spec == world.spec_from_caption("a red circle bouncing on a dark blue background", 7)
    assert world.caption(spec) == "a red circle bouncing on a dark blue background"
    assert world.ClipSpec.from_dict(spec.to_dict()) == spec


def test_sampled_specs_obey_the_rules():
    rng = np.random.default_rng(2)
    n_two = 0
    for _ in range(300):
        spec = world.sample_spec(rng, split="any", two_objects_prob=0.5)
        assert world.sample_spec(spec.seed, split="any", two_objects_prob=0.5) == spec  # the seed rebuilds it
        cols = [o.colour for o in spec.objects]
        n_two += len(cols) == 2
        assert len(set(cols)) == len(cols) and spec.background_colour not in cols
        assert all(world.colour_distance(c, spec.background_colour) >= world.MIN_CONTRAST for c in cols)
        if spec.motion == "rotating":
            assert all(o.shape in world.ROTATABLE_SHAPES for o in spec.objects)
    assert 100 < n_two < 200
    assert sorted(set(world.VOCAB)) == world.VOCAB and "dark" in world.VOCAB and "bouncing" in world.VOCAB


def test_every_heldout_sample_has_a_heldout_pair():
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(300):
        spec = world.sample_spec(rng, split="heldout", two_objects_prob=0.5)
        pairs = world.heldout_pairs(spec)
        assert pairs and set(pairs) <= set(world.HELDOUT_SHAPE_PAIRS + world.HELDOUT_BACKGROUND_PAIRS)
        seen |= set(pairs)
    assert seen == set(world.HELDOUT_SHAPE_PAIRS + world.HELDOUT_BACKGROUND_PAIRS)
