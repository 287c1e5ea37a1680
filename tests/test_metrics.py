"""Drift metrics on constructed videos whose answers are known; the toy world's attribute scoring merged in."""

import ast
from pathlib import Path

import numpy as np
import pytest

import tokentrim_cli.metrics as metrics
from tokentrim_cli.metrics import evaluate_video, hellinger, histograms, merge_metrics, temporal_flicker
from tokentrim_cli.toy import world
from tokentrim_cli.toy.scoring import SERIES_TITLES, attribute_errors, largest_component_share, toy_metrics


def evaluate(frames, fps, caption=None):
    """The generic metrics with the toy scoring merged in, as ``tokentrim evaluate`` and bench/drift.py do."""
    return merge_metrics(evaluate_video(frames, fps), toy_metrics(frames, fps, caption))


def test_generic_metrics_do_not_import_the_toy_world():
    names = []
    for node in ast.walk(ast.parse(Path(metrics.__file__).read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += [("." * node.level) + (node.module or "") + "." + a.name for a in node.names]
    assert names and not [n for n in names if "toy" in n], names
    r = evaluate_video(np.zeros((4, 8, 8, 3), np.uint8), fps=4)
    assert "caption" not in r and "toy_caption" not in r


def test_constant_video():
    frames = np.full((40, 16, 16, 3), (90, 120, 200), dtype=np.uint8)
    r = evaluate_video(frames, fps=4)
    s = r["summary"]
    assert s["flicker_score"] == 1.0 and s["flicker_mean_abs_diff"] == 0.0
    assert max(r["series"]["histogram_distance"]) == 0.0 and s["histogram_drift"] == 0.0
    assert s["brightness_drift"] == 0.0 and s["saturation_drift"] == 0.0
    assert max(r["series"]["sharpness"]) == 0.0
    assert r["series"]["brightness"][0] == pytest.approx(0.299 * 90 + 0.587 * 120 + 0.114 * 200, abs=1e-3)
    assert r["window"] == "5 s"


def test_linear_colour_drift():
    n, fps = 64, 4  # 16 s
    level = np.linspace(40, 200, n)
    frames = np.zeros((n, 16, 16, 3), dtype=np.uint8)
    frames[..., 0] = level.round().astype(np.uint8)[:, None, None]
    r = evaluate_video(frames, fps=fps)
    b = np.asarray(r["series"]["brightness"])
    slope = np.polyfit(np.arange(n), b, 1)[0]
    assert slope == pytest.approx(0.299 * (160 / (n - 1)), rel=0.02)
    h = np.asarray(r["series"]["histogram_distance"])
    assert np.all(np.diff(h[20:]) >= -1e-12) and h[10] < h[-1]  # grows as the colour leaves the first 5 s
    assert h[-1] == pytest.approx(1 / 3)  # red histogram fully disjoint, green and blue unchanged
    # first 5 s (20 frames) vs last 5 s: mean red goes up by 160 * (64 - 20) / 63
    assert r["summary"]["brightness_drift"] == pytest.approx(0.299 * 160 * 44 / 63, rel=0.02)
    diffs, score = temporal_flicker(frames)
    assert diffs.mean() == pytest.approx(160 / 63 / 3, abs=0.02) and score < 1.0


def test_hellinger_bounds():
    a = histograms(np.zeros((1, 4, 4, 3), dtype=np.uint8))
    b = histograms(np.full((1, 4, 4, 3), 255, dtype=np.uint8))
    assert hellinger(a, a)[0] == 0.0 and hellinger(a, b)[0] == pytest.approx(1.0)


def test_attribute_errors_on_rendered_world():
    caption = "a red circle bouncing on a dark blue background"
    spec = world.spec_from_caption(caption, 3)
    frames, _ = world.render(spec, 48, 64, 64)
    r = evaluate(frames, fps=16, caption=caption)
    s = r["summary"]
    assert s["background_error_last"] < 5 and s["object_error_last"] < 10 and s["object_present_last"] == 1.0
    wrong = evaluate(frames, fps=16, caption="a red circle bouncing on a white background")["summary"]
    assert wrong["background_error_last"] > 100
    gone = evaluate(frames, fps=16, caption="a green square bouncing on a dark blue background")["summary"]
    assert gone["object_present_last"] == 0.0


def test_non_toy_caption_has_no_attributes():
    frames = np.zeros((5, 16, 16, 3), dtype=np.uint8)
    r = evaluate(frames, fps=16, caption="a corgi on a beach")
    assert not r["toy_caption"] and "background_error" not in r["series"] and r["window"].startswith("first/last")
    assert r["caption"] == "a corgi on a beach" and "attributes_skipped" in r
    assert toy_metrics(frames, 16, None) == toy_metrics(frames, 16, "") == {"caption": None, "toy_caption": False}


def test_constant_video_curves_and_short_windows():
    frames = np.full((9, 12, 12, 3), (90, 120, 200), dtype=np.uint8)
    r = evaluate_video(frames, fps=8)  # ~1 s: thirds instead of 5 s windows
    assert r["window"].startswith("first/last third") and r["window_frames"] == 3
    s = r["summary"]
    assert s["flicker_score"] == 1.0 and s["histogram_drift"] == 0.0 and s["sharpness_drift"] == 0.0
    assert r["series"]["flicker_diff"][0] is None and r["series"]["flicker_diff"][1:] == [0.0] * 8
    assert r["series"]["saturation"][0] == pytest.approx((200 - 90) / 200)
    diffs, score = temporal_flicker(frames)
    assert score == 1.0 and not diffs.any()


def test_sharpness_of_an_edge_and_chunking():
    from tokentrim_cli.metrics import brightness, sharpness

    frames = np.zeros((70, 8, 8, 3), dtype=np.uint8)
    frames[:, :, 4:] = 255
    assert np.all(sharpness(frames) > 1000)
    ramp = np.repeat(np.arange(70, dtype=np.uint8)[:, None, None, None] * 3, 8, 1).repeat(8, 2).repeat(3, 3)
    assert np.allclose(brightness(ramp), np.arange(70) * 3, atol=1e-3)  # > one chunk of frames
    diffs, _ = temporal_flicker(ramp)
    assert np.allclose(diffs, 3.0)


def test_attribute_errors_against_spec_and_render_attributes():
    import json

    for k, text in enumerate(["a yellow triangle and a blue cross sliding on a textured black background",
                              "an orange ring growing on a gradient light green background",
                              "a white diamond rotating on a textured purple background"]):
        spec = world.spec_from_caption(text, k)
        frames, attrs = world.render(spec, 24, 64, 96)
        for expected in (text, spec, attrs):
            a = attribute_errors(frames, expected)
            assert a["background_error"].max() < 5, (text, a["background_error"])
            assert a["object_colour_error"].max() < 5 and a["object_present"].all(), text
        wrong = attribute_errors(frames, text.replace(spec.background_colour + " background", "red background"))
        assert wrong["background_error"].min() > 100
    r = evaluate(frames, fps=8, caption=spec)
    assert r["toy_caption"] and r["caption"] == world.caption(spec) and r["objects"][0]["label"] == "white diamond"
    json.loads(json.dumps(r, allow_nan=False))


def test_plot_and_json(tmp_path):
    import json

    from PIL import Image

    from tokentrim_cli.metrics import plot_metrics

    spec = world.spec_from_caption("a red circle and a blue square bouncing on a gradient white background", 0)
    frames, _ = world.render(spec, 40, 32, 48)
    r = evaluate(frames, fps=4, caption=world.caption(spec))
    json.loads(json.dumps(r, allow_nan=False))
    plot_metrics(r, tmp_path / "m.png", titles=SERIES_TITLES)
    assert (tmp_path / "m.png").stat().st_size > 5000
    r = evaluate(frames, fps=4, caption="a cat")
    assert not r["toy_caption"] and "cat" in r["attributes_skipped"]
    plot_metrics(r, tmp_path / "n.png")
    # the generic plot draws the merged toy curves too: 9 curves in 5 rows against 5 in 3
    assert Image.open(tmp_path / "m.png").size[1] > Image.open(tmp_path / "n.png").size[1]


def test_compactness_of_one_shape_and_of_fragments():
    one = np.zeros((1, 16, 16), bool)
    one[0, 3:9, 4:10] = True
    four = np.zeros((1, 16, 16), bool)
    for y, x in [(1, 1), (1, 9), (9, 1), (9, 9)]:
        four[0, y : y + 3, x : x + 3] = True  # four equal pieces, not touching even diagonally
    four[0, 14, 14] = True  # and a lone pixel, two pixels from the nearest piece
    sizes = largest_component_share(np.concatenate([one, four, np.zeros((1, 16, 16), bool)]))
    assert sizes[0] == 1.0 and sizes[1] == pytest.approx(9 / 37) and np.isnan(sizes[2])
    diag = np.zeros((1, 4, 4), bool)
    diag[0, [0, 1, 2, 3], [0, 1, 2, 3]] = True  # 8-connected through corners
    assert largest_component_share(diag)[0] == 1.0
    edge = np.zeros((1, 8, 8), bool)
    edge[0, 2:5, 0:2] = edge[0, 2:5, 6:8] = True  # one object split by the frame's edge
    assert largest_component_share(edge)[0] == 0.5 and largest_component_share(edge, wrap=True)[0] == 1.0


def test_compactness_of_rendered_world_and_of_a_scattered_object():
    for k, text in enumerate(["a red circle bouncing on a dark blue background",
                              "a white ring growing on a gradient purple background",
                              "a yellow triangle sliding on a textured black background",
                              "a green diamond rotating on a plain gray background"]):
        spec = world.spec_from_caption(text, k)
        frames, attrs = world.render(spec, 96, 64, 64)
        r = evaluate(frames, fps=16, caption=text)
        comp = [v for v in r["series"]["object_compactness"] if v is not None]
        assert len(comp) > 80 and min(comp) > 0.9, (text, min(comp))
        if "sliding" in text:  # it does cross the frame's edge, where only a torus keeps it in one piece
            o = [a["objects"][0] for a in attrs]
            assert any(min(d["x"], 63 - d["x"], d["y"], 63 - d["y"]) < d["size"] / 2 for d in o)
    # the same red pixels cut into 8x8 tiles and scattered over the frame: colour and presence cannot tell
    spec = world.spec_from_caption("a red square bouncing on a dark blue background", 0)
    frames, _ = world.render(spec, 1, 64, 64)
    bg = frames[0].copy()
    bg[:] = world.COLOURS["dark blue"]
    scattered = bg.copy()
    for y, x in [(4, 4), (4, 36), (36, 4), (36, 36)]:
        scattered[y : y + 8, x : x + 8] = world.COLOURS["red"]
    solid = bg.copy()
    solid[20:36, 20:36] = world.COLOURS["red"]
    cap = "a red square bouncing on a dark blue background"
    a = evaluate(np.stack([solid, scattered]), fps=16, caption=cap)["series"]
    assert a["object_present"] == [1.0, 1.0] and a["object_compactness"] == [1.0, 0.25]
