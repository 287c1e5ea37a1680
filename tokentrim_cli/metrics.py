"""Offline video metrics over time: how much a video flickers and drifts, and (toy world) whether it still shows
what its caption says. Pure numpy on uint8 RGB frames (F, H, W, 3); matplotlib only inside ``plot_metrics``.
Long videos are processed a chunk of frames at a time, so memory stays bounded.

Curves (one value per frame, flicker one per consecutive pair):

- Temporal flicker: VBench's temporal-flickering formula, the mean absolute difference between consecutive
  frames on the 0-255 scale; score = (255 - mean over pairs) / 255, exactly 1.0 for a still video.
- Colour-histogram distance to the first window: per channel a ``BINS`` = 32-bin histogram normalised to sum 1;
  the **Hellinger distance** sqrt(1 - sum sqrt(p q)) to the mean histogram of the first window, averaged over
  the three channels; bounded in [0, 1] (0 identical, 1 disjoint).
- Brightness: mean Rec.601 luma Y = 0.299 R + 0.587 G + 0.114 B (0-255).
- Saturation: mean HSV saturation (max - min) / max per pixel, 0 where max = 0 (0-1).
- Sharpness: variance of the 4-neighbour discrete Laplacian of the luma over interior pixels (no padding, so a
  flat frame gives exactly 0).

Windows and drift: the first and last 5 s. A video shorter than 10 s (the windows would overlap) uses its first
and last thirds instead; ``result["window"]`` says which ("5 s" or "first/last third (video shorter than 10 s)")
and ``window_frames`` / ``window_seconds`` give the length. The histogram reference is the first window.
Drift of a curve = mean over the last window - mean over the first window (``<curve>_drift``);
``histogram_drift`` = Hellinger distance between the mean histograms of the two windows.

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
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

BINS = 32
WINDOW_S = 5.0
OBJECT_THRESHOLD = 60.0
PRESENCE_RADIUS = 50.0
MIN_CLUSTER_PX = 3
_CHUNK = 32
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _check(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (0-255), got {frames.dtype}")
    return frames


def _chunks(frames: np.ndarray, size: int = _CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    for a in range(0, len(frames), size):
        yield a, frames[a:a + size]


def _luma(chunk: np.ndarray) -> np.ndarray:
    return chunk.astype(np.float32) @ _LUMA


# --------------------------------------------------------------------------------------------- curves

def temporal_flicker(frames: np.ndarray) -> tuple[np.ndarray, float]:
    """Per consecutive pair the mean absolute difference (0-255), and VBench's score (255 - mean) / 255.
    Fewer than two frames: an empty series and score 1.0."""
    frames = _check(frames)
    n = len(frames)
    diffs = np.zeros(max(n - 1, 0), np.float64)
    for a in range(0, n - 1, _CHUNK):
        b = min(a + _CHUNK, n - 1)
        seg = frames[a:b + 1].astype(np.int16)
        diffs[a:b] = np.abs(np.diff(seg, axis=0)).mean(axis=(1, 2, 3), dtype=np.float64)
    return diffs, (1.0 if diffs.size == 0 else float((255.0 - diffs.mean()) / 255.0))


def brightness(frames: np.ndarray) -> np.ndarray:
    """Mean Rec.601 luma per frame (0-255)."""
    frames = _check(frames)
    out = np.zeros(len(frames), np.float64)
    for a, c in _chunks(frames):
        out[a:a + len(c)] = _luma(c).mean(axis=(1, 2), dtype=np.float64)
    return out


def saturation(frames: np.ndarray) -> np.ndarray:
    """Mean HSV saturation per frame (0-1)."""
    frames = _check(frames)
    out = np.zeros(len(frames), np.float64)
    for a, c in _chunks(frames):
        mx = c.max(axis=-1).astype(np.float32)
        mn = c.min(axis=-1).astype(np.float32)
        s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0)
        out[a:a + len(c)] = s.mean(axis=(1, 2), dtype=np.float64)
    return out


def sharpness(frames: np.ndarray) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian of the luma over interior pixels, per frame (0 if H or W < 3)."""
    frames = _check(frames)
    out = np.zeros(len(frames), np.float64)
    if frames.shape[1] < 3 or frames.shape[2] < 3:
        return out
    for a, c in _chunks(frames):
        y = _luma(c)
        lap = y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:] - 4 * y[:, 1:-1, 1:-1]
        out[a:a + len(c)] = lap.reshape(len(c), -1).astype(np.float64).var(axis=1)
    return out


def histograms(frames: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Per-frame, per-channel normalised histograms over 0-255, shape (F, 3, bins)."""
    frames = _check(frames)
    n, h, w, _ = frames.shape
    out = np.zeros((n, 3, bins), np.float64)
    for a, c in _chunks(frames):
        idx = (c.astype(np.int32) * bins) // 256
        offset = (np.arange(len(c)) * bins)[:, None]
        for ch in range(3):
            flat = idx[..., ch].reshape(len(c), -1) + offset
            counts = np.bincount(flat.ravel(), minlength=len(c) * bins).reshape(len(c), bins)
            out[a:a + len(c), ch] = counts / float(h * w)
    return out


colour_histograms = histograms


def hellinger(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hellinger distance between normalised histograms (..., 3, bins), averaged over the channels; in [0, 1]."""
    bc = np.sqrt(np.asarray(p, np.float64) * np.asarray(q, np.float64)).sum(axis=-1)
    return np.sqrt(np.clip(1.0 - bc, 0.0, 1.0)).mean(axis=-1)


def windows(n: int, fps: float) -> tuple[slice, slice, str]:
    """First and last window: 5 s each, or the first and last thirds when the video is shorter than 10 s."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    w = max(1, int(round(WINDOW_S * fps)))
    if n >= 2 * w:
        return slice(0, w), slice(n - w, n), "5 s"
    third = max(1, n // 3)
    return slice(0, third), slice(max(n - third, 0), n), "first/last third (video shorter than 10 s)"


# --------------------------------------------------------------------------------------------- toy-world attributes

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
    from .toy import world

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
    frames = _check(frames)
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


# --------------------------------------------------------------------------------------------- everything

def _mean(a) -> float | None:
    """Mean ignoring NaN (frames where a quantity is undefined); None when nothing is left."""
    a = np.asarray(a, np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else None


def evaluate_video(frames: np.ndarray, fps: float, caption=None) -> dict:
    """All metrics, JSON-serialisable: ``series`` (per frame, aligned with ``series["time_s"]``: ``flicker_diff``
    is the difference to the previous frame, None for frame 0; ``histogram_distance``, ``brightness``,
    ``saturation``, ``sharpness``; with a toy-world caption also ``background_error``, ``object_error`` (mean
    over objects), ``object_present`` (fraction of objects present) and ``object_compactness`` (mean over the
    objects present, None when none is)), ``summary`` (flicker score, first/last
    window means and drifts, ``histogram_drift``, attribute errors over the first/last windows), ``window``.
    ``caption`` may be a caption string, ParsedCaption, ClipSpec or render() attributes; a string outside the
    toy grammar (any real prompt) gives ``toy_caption: False`` and the parser's reason in ``attributes_skipped``."""
    frames = _check(frames)
    n, h, w, _ = frames.shape
    if n == 0:
        raise ValueError("expected at least one frame")
    fps = float(fps)
    first, last, window = windows(n, fps)
    hists = histograms(frames)
    ref = hists[first].mean(axis=0)
    diffs, score = temporal_flicker(frames)
    curves = {"histogram_distance": hellinger(hists, ref[None]), "brightness": brightness(frames),
              "saturation": saturation(frames), "sharpness": sharpness(frames)}
    series: dict[str, list] = {"time_s": (np.arange(n) / fps).tolist(), "flicker_diff": [None] + diffs.tolist()}
    series.update({k: v.tolist() for k, v in curves.items()})
    flick = np.concatenate([[np.nan], diffs])
    summary: dict[str, Any] = {"flicker_score": score, "flicker_mean_abs_diff": float(diffs.mean()) if len(diffs) else 0.0}
    f_first, f_last = flick[first][~np.isnan(flick[first])], flick[last][~np.isnan(flick[last])]
    summary["flicker_drift"] = float(f_last.mean() - f_first.mean()) if len(f_first) and len(f_last) else None
    for key in ("brightness", "saturation", "sharpness"):
        summary[f"{key}_first"] = _mean(curves[key][first])
        summary[f"{key}_last"] = _mean(curves[key][last])
        summary[f"{key}_drift"] = summary[f"{key}_last"] - summary[f"{key}_first"]
    summary["histogram_distance_last"] = _mean(curves["histogram_distance"][last])
    summary["histogram_drift"] = float(hellinger(hists[last].mean(axis=0), ref))
    result: dict[str, Any] = {
        "fps": fps, "frames": int(n), "height": int(h), "width": int(w), "duration_s": n / fps,
        "window": window, "window_frames": int(first.stop - first.start),
        "window_seconds": (first.stop - first.start) / fps,
        "caption": None, "toy_caption": False, "series": series, "summary": summary,
    }
    if caption is not None and caption != "":
        from .toy import world

        if isinstance(caption, world.ClipSpec):
            result["caption"] = world.caption(caption)
        elif isinstance(caption, (str, world.ParsedCaption)):
            result["caption"] = caption if isinstance(caption, str) else world.caption(caption)
        try:
            attrs = attribute_errors(frames, caption)
        except ValueError as e:
            result["attributes_skipped"] = str(e)
        else:
            result["toy_caption"] = True
            comp = attrs["object_compactness"]
            seen = (~np.isnan(comp)).sum(axis=1)
            per = {"background_error": attrs["background_error"],
                   "object_error": attrs["object_colour_error"].mean(axis=1),
                   "object_present": attrs["object_present"].mean(axis=1),
                   "object_compactness": np.where(seen > 0, np.nansum(comp, axis=1) / np.maximum(seen, 1), np.nan)}
            for key, arr in per.items():
                series[key] = [None if np.isnan(v) else v for v in arr.astype(float).tolist()]
                summary[f"{key}_first"] = _mean(arr[first])
                summary[f"{key}_last"] = _mean(arr[last])
            result["objects"] = [{"label": lab, "colour_error": attrs["object_colour_error"][:, j].tolist(),
                                  "present": attrs["object_present"][:, j].tolist(),
                                  "compactness": [None if np.isnan(v) else v for v in comp[:, j].tolist()]}
                                 for j, lab in enumerate(attrs["labels"])]
    return result


def plot_metrics(result: dict, path_png) -> None:
    """Draw the curves of an ``evaluate_video`` result over time (seconds) into one PNG with a few subplots;
    the first and last windows are shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["series"]
    keys = ["flicker_diff", "histogram_distance", "brightness", "saturation", "sharpness"]
    keys += [k for k in ("background_error", "object_error", "object_present", "object_compactness") if k in s]
    titles = {"flicker_diff": "mean |frame diff| (0-255)", "histogram_distance": "histogram distance to first window",
              "brightness": "brightness (luma)", "saturation": "saturation (HSV)", "sharpness": "sharpness (Laplacian var)",
              "background_error": "background error (RGB)", "object_error": "object colour error (RGB)",
              "object_present": "objects present (fraction)",
              "object_compactness": "object compactness (largest piece share)"}
    cols = 2
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(10, 2.4 * rows), sharex=True, squeeze=False)
    t = np.asarray(s["time_s"], np.float64)
    fps, n, wf = result["fps"], result["frames"], result.get("window_frames", 0)
    for ax, key in zip(axes.ravel(), keys):
        ax.plot(t, [np.nan if v is None else v for v in s[key]], lw=1)
        if wf:
            ax.axvspan(0, wf / fps, color="tab:green", alpha=0.1)
            ax.axvspan((n - wf) / fps, n / fps, color="tab:red", alpha=0.1)
        ax.set_title(titles[key], fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds")
    name = result.get("video") or result.get("caption") or ""
    fig.suptitle(f"{name} ({n} frames at {fps:g} fps; flicker score {result['summary']['flicker_score']:.4f}; "
                 f"windows: {result['window']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path_png, dpi=90)
    plt.close(fig)
