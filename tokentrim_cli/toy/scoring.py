"""Toy-world scoring: does a video still show what its toy-world caption says? A plug-in of the generic video
metrics (``tokentrim_cli.metrics``): ``toy_metrics`` returns the extra curves and summary keys that
``metrics.merge_metrics`` adds to an ``evaluate_video`` result. Pure numpy on uint8 RGB frames (F, H, W, 3).

Toy-world attributes (``attribute_errors``), per frame; every distance is Euclidean in RGB on the 0-255 scale:

- background error: distance between the expected background RGB (the palette colour) and the per-channel
  median of the frame's one-pixel border (the toy world's gradients and stripes keep that median at the
  palette colour).
- object colour error: pixels farther than ``OBJECT_THRESHOLD`` (60) from their row's median colour are
  non-background (a per-row background model, robust to vertical gradients and faint stripes, independent of
  what the caption expects); they are grouped into colour clusters (16 levels per channel, clusters of at least
  ``MIN_CLUSTER_PX`` pixels, cluster colour = mean of its pixels); the error is the distance from the expected
  object RGB to the closest cluster. With no cluster at all the border median stands in (what is seen is
  background), so the error is always a finite number.
- object present: at least max(4, 0.0015 * H * W) non-background pixels within ``PRESENCE_RADIUS`` (50) of the
  expected object RGB.
- object compactness (shape coherence, NaN where the object is not present): the share of those pixels in the
  largest 8-connected component. One solid shape gives 1.0; the same colour scattered as k equal fragments gives
  1/k, which colour error and presence cannot see. Sliding objects wrap around the frame, so for them the frame
  is a torus; a world object partly hidden by the other one can be split too.

Over time (``toy_metrics``) these become the curves ``background_error``, ``object_error`` (mean over objects),
``object_present`` (fraction of objects present) and ``object_compactness`` (mean over the objects present), with
their means over the generic metrics' first and last windows (``<curve>_first`` / ``<curve>_last``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..metrics import check_frames, nan_mean, windows
from . import world

OBJECT_THRESHOLD = 60.0
PRESENCE_RADIUS = 50.0
MIN_CLUSTER_PX = 3

# plot titles of the curves toy_metrics adds (metrics.plot_metrics(..., titles=SERIES_TITLES))
SERIES_TITLES = {"background_error": "background error (RGB)", "object_error": "object colour error (RGB)",
                 "object_present": "objects present (fraction)",
                 "object_compactness": "object compactness (largest piece share)"}


def largest_component_share(masks: np.ndarray, wrap: bool = False) -> np.ndarray:
    """(F, H, W) bool -> (F,) share of each mask's pixels in its largest 8-connected component (NaN if empty).
    ``wrap``: the frame is a torus. Labels spread as the minimum pixel index over neighbours until they settle."""
    masks = np.asarray(masks, bool)
    f, h, w = masks.shape
    none = f * h * w
    lab = np.where(masks, np.arange(none).reshape(f, h, w), none)
    while True:
        edge = ((0, 0), (1, 1), (1, 1))
        pad = np.pad(lab, edge, mode="wrap") if wrap else np.pad(lab, edge, constant_values=none)
        low = lab
        for dy in range(3):
            for dx in range(3):
                low = np.minimum(low, pad[:, dy : dy + h, dx : dx + w])
        low = np.where(masks, low, none)
        if np.array_equal(low, lab):
            break
        lab = low
    sizes = np.bincount(lab[masks], minlength=none)
    largest = np.zeros(f)
    np.maximum.at(largest, np.arange(none) // (h * w), sizes)
    total = masks.sum(axis=(1, 2))
    return np.where(total > 0, largest / np.maximum(total, 1), np.nan)


def _expected(expected) -> tuple[list[np.ndarray], list[list[np.ndarray]], list[str], str]:
    """Expected background RGB, object RGBs (one entry, broadcast over frames, or one per frame) and motion."""
    if isinstance(expected, str):
        expected = world.parse_caption(expected)
    if isinstance(expected, world.ClipSpec):
        expected = expected.caption_attributes()
    if isinstance(expected, world.ParsedCaption):
        expected = expected.as_dict()
    if isinstance(expected, dict):
        expected = [expected]
    if not isinstance(expected, (list, tuple)) or not expected:
        raise ValueError("expected a toy-world caption, ParsedCaption, ClipSpec or render() attributes")
    bgs = [np.asarray(e["background"]["rgb"], np.float64) for e in expected]
    objs = [[np.asarray(o["rgb"], np.float64) for o in e["objects"]] for e in expected]
    labels = [f"{o['colour']} {o['shape']}" for o in expected[0]["objects"]]
    return bgs, objs, labels, expected[0].get("motion", "")


def attribute_errors(frames: np.ndarray, spec_or_caption_attributes) -> dict[str, Any]:
    """Per-frame toy-world attribute errors (see the module docstring for the definitions).

    ``spec_or_caption_attributes``: a caption string, a ``ParsedCaption``, a ``ClipSpec`` or the per-frame
    attribute list from ``world.render`` (one entry, or one per frame). Returns numpy arrays:
    ``background_error`` (F,), ``object_colour_error`` (F, K), ``object_present`` (F, K) bool,
    ``object_compactness`` (F, K) (NaN where absent), and the K object ``labels`` ("red circle")."""
    frames = check_frames(frames)
    n, h, w, _ = frames.shape
    bgs, objs, labels, motion = _expected(spec_or_caption_attributes)
    if len(bgs) not in (1, n):
        raise ValueError(f"got {len(bgs)} attribute entries for {n} frames")
    min_px = max(4, int(0.0015 * h * w))
    border = np.zeros((h, w), bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    bg_err = np.zeros(n)
    obj_err = np.zeros((n, len(labels)))
    present = np.zeros((n, len(labels)), bool)
    compact = np.full((n, len(labels)), np.nan)
    for f in range(n):
        k = f if len(bgs) == n else 0
        img = frames[f].astype(np.float32)
        bg_med = np.median(img[border], axis=0)
        bg_err[f] = np.linalg.norm(bg_med - bgs[k])
        row_bg = np.median(img, axis=1)  # (H, 3): a row is mostly background
        fg = np.linalg.norm(img - row_bg[:, None, :], axis=-1) > OBJECT_THRESHOLD
        pix = img[fg].astype(np.float64)
        centres = np.empty((0, 3))
        if len(pix):
            q = pix.astype(np.int32) // 16
            uniq, inv, counts = np.unique(q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2], return_inverse=True,
                                          return_counts=True)
            sums = np.zeros((len(uniq), 3))
            np.add.at(sums, inv.ravel(), pix)
            keep = counts >= MIN_CLUSTER_PX
            centres = sums[keep] / counts[keep, None]
        if not len(centres):
            centres = bg_med[None].astype(np.float64)
        for j, rgb in enumerate(objs[k]):
            obj_err[f, j] = np.linalg.norm(centres - rgb, axis=-1).min()
            near = fg & (np.linalg.norm(img - np.asarray(rgb, np.float32), axis=-1) <= PRESENCE_RADIUS)
            present[f, j] = int(near.sum()) >= min_px
            if present[f, j]:
                compact[f, j] = largest_component_share(near[None], wrap=motion == "sliding")[0]
    return {"background_error": bg_err, "object_colour_error": obj_err, "object_present": present,
            "object_compactness": compact, "labels": labels}


def toy_metrics(frames: np.ndarray, fps: float, caption=None) -> dict[str, Any]:
    """The toy-world part of a video's metrics, for ``metrics.merge_metrics(evaluate_video(frames, fps), ...)``;
    JSON-serialisable.

    Always ``caption`` (the caption string; None without one or for render() attributes) and ``toy_caption``
    (whether the toy scoring applied), so that every metrics file says so. ``caption`` may be a caption string,
    ParsedCaption, ClipSpec or render() attributes; a string outside the toy grammar (any real prompt) gives
    ``toy_caption: False`` and the parser's reason in ``attributes_skipped``. With a toy-world caption also
    ``series`` (per frame, aligned with the generic ``series["time_s"]``: ``background_error``, ``object_error``,
    ``object_present``, ``object_compactness``, None where undefined), ``summary`` (their means over the first and
    last windows of ``metrics.windows``) and per-object curves in ``objects``."""
    out: dict[str, Any] = {"caption": None, "toy_caption": False}
    if caption is None or caption == "":
        return out
    frames = check_frames(frames)
    if isinstance(caption, world.ClipSpec):
        out["caption"] = world.caption(caption)
    elif isinstance(caption, (str, world.ParsedCaption)):
        out["caption"] = caption if isinstance(caption, str) else world.caption(caption)
    try:
        attrs = attribute_errors(frames, caption)
    except ValueError as e:
        out["attributes_skipped"] = str(e)
        return out
    first, last, _ = windows(len(frames), float(fps))
    out["toy_caption"] = True
    comp = attrs["object_compactness"]
    seen = (~np.isnan(comp)).sum(axis=1)
    per = {"background_error": attrs["background_error"],
           "object_error": attrs["object_colour_error"].mean(axis=1),
           "object_present": attrs["object_present"].mean(axis=1),
           "object_compactness": np.where(seen > 0, np.nansum(comp, axis=1) / np.maximum(seen, 1), np.nan)}
    series, summary = {}, {}
    for key, arr in per.items():
        series[key] = [None if np.isnan(v) else v for v in arr.astype(float).tolist()]
        summary[f"{key}_first"] = nan_mean(arr[first])
        summary[f"{key}_last"] = nan_mean(arr[last])
    out["series"], out["summary"] = series, summary
    out["objects"] = [{"label": lab, "colour_error": attrs["object_colour_error"][:, j].tolist(),
                       "present": attrs["object_present"][:, j].tolist(),
                       "compactness": [None if np.isnan(v) else v for v in comp[:, j].tolist()]}
                      for j, lab in enumerate(attrs["labels"])]
    return out
