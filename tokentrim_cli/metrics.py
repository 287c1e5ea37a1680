"""Offline video metrics over time: how much a video flickers and drifts. Pure numpy on uint8 RGB frames
(F, H, W, 3); matplotlib only inside ``plot_metrics``. Long videos are processed a chunk of frames at a time, so
memory stays bounded.

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

Plug-ins add their own curves (the toy world's attribute errors: ``tokentrim_cli.toy.scoring``): a plug-in's
``series``, ``summary`` and other keys join a result through ``merge_metrics``; ``plot_metrics`` draws every
curve a result has.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any, Iterator

import numpy as np

BINS = 32
WINDOW_S = 5.0
_CHUNK = 32
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def check_frames(frames) -> np.ndarray:
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
    frames = check_frames(frames)
    n = len(frames)
    diffs = np.zeros(max(n - 1, 0), np.float64)
    for a in range(0, n - 1, _CHUNK):
        b = min(a + _CHUNK, n - 1)
        seg = frames[a:b + 1].astype(np.int16)
        diffs[a:b] = np.abs(np.diff(seg, axis=0)).mean(axis=(1, 2, 3), dtype=np.float64)
    return diffs, (1.0 if diffs.size == 0 else float((255.0 - diffs.mean()) / 255.0))


def brightness(frames: np.ndarray) -> np.ndarray:
    """Mean Rec.601 luma per frame (0-255)."""
    frames = check_frames(frames)
    out = np.zeros(len(frames), np.float64)
    for a, c in _chunks(frames):
        out[a:a + len(c)] = _luma(c).mean(axis=(1, 2), dtype=np.float64)
    return out


def saturation(frames: np.ndarray) -> np.ndarray:
    """Mean HSV saturation per frame (0-1)."""
    frames = check_frames(frames)
    out = np.zeros(len(frames), np.float64)
    for a, c in _chunks(frames):
        mx = c.max(axis=-1).astype(np.float32)
        mn = c.min(axis=-1).astype(np.float32)
        s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0)
        out[a:a + len(c)] = s.mean(axis=(1, 2), dtype=np.float64)
    return out


def sharpness(frames: np.ndarray) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian of the luma over interior pixels, per frame (0 if H or W < 3)."""
    frames = check_frames(frames)
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
    frames = check_frames(frames)
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


# --------------------------------------------------------------------------------------------- everything

def nan_mean(a) -> float | None:
    """Mean ignoring NaN (frames where a quantity is undefined); None when nothing is left."""
    a = np.asarray(a, np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else None


def evaluate_video(frames: np.ndarray, fps: float) -> dict:
    """All metrics, JSON-serialisable: ``series`` (per frame, aligned with ``series["time_s"]``: ``flicker_diff``
    is the difference to the previous frame, None for frame 0; ``histogram_distance``, ``brightness``,
    ``saturation``, ``sharpness``), ``summary`` (flicker score, first/last window means and drifts,
    ``histogram_drift``), ``window``. A plug-in's metrics join it through ``merge_metrics``."""
    frames = check_frames(frames)
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
        summary[f"{key}_first"] = nan_mean(curves[key][first])
        summary[f"{key}_last"] = nan_mean(curves[key][last])
        summary[f"{key}_drift"] = summary[f"{key}_last"] - summary[f"{key}_first"]
    summary["histogram_distance_last"] = nan_mean(curves["histogram_distance"][last])
    summary["histogram_drift"] = float(hellinger(hists[last].mean(axis=0), ref))
    return {
        "fps": fps, "frames": int(n), "height": int(h), "width": int(w), "duration_s": n / fps,
        "window": window, "window_frames": int(first.stop - first.start),
        "window_seconds": (first.stop - first.start) / fps, "series": series, "summary": summary,
    }


def merge_metrics(result: dict, extra: dict | None) -> dict:
    """Add a plug-in's metrics (such as ``toy.scoring.toy_metrics``) to an ``evaluate_video`` result, in place,
    and return it: ``extra["series"]`` (curves aligned with ``series["time_s"]``) and ``extra["summary"]`` join
    the result's, every other key joins its top level. ``extra`` None adds nothing."""
    for key, value in (extra or {}).items():
        if key in ("series", "summary"):
            result[key].update(value)
        else:
            result[key] = value
    return result


TITLES = {"flicker_diff": "mean |frame diff| (0-255)", "histogram_distance": "histogram distance to first window",
          "brightness": "brightness (luma)", "saturation": "saturation (HSV)", "sharpness": "sharpness (Laplacian var)"}


def metrics_text(result: dict) -> str:
    """``evaluate``'s JSON, marked (``"tool": "tokentrim", "kind": "metrics"``) so that a later evaluation knows the
    file is its own and may replace it (``write_guard.metrics_json``)."""
    return json.dumps({"tool": "tokentrim", "kind": "metrics", **result}, indent=1, default=float)


def plot_metrics(result: dict, path_png, titles: dict[str, str] | None = None) -> None:
    """Draw every curve of an ``evaluate_video`` result (with what plug-ins merged into it) over time (seconds)
    into one PNG with a few subplots; the first and last windows are shaded. ``titles``: subplot titles of the
    plug-ins' curves (a curve without one is titled by its key)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["series"]
    keys = [k for k in s if k != "time_s"]
    titles = {**TITLES, **(titles or {})}
    cols = 2
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(10, 2.4 * rows), sharex=True, squeeze=False, layout="constrained")
    t = np.asarray(s["time_s"], np.float64)
    fps, n, wf = result["fps"], result["frames"], result.get("window_frames", 0)
    for ax, key in zip(axes.ravel(), keys):
        ax.plot(t, [np.nan if v is None else v for v in s[key]], lw=1)
        if wf:
            ax.axvspan(0, wf / fps, color="tab:green", alpha=0.1)
            ax.axvspan((n - wf) / fps, n / fps, color="tab:red", alpha=0.1)
        ax.set_title(titles.get(key, key), fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds")
    name = Path(result["video"]).name if result.get("video") else result.get("caption") or ""
    facts = (f"{n} frames at {fps:g} fps; flicker score {result['summary']['flicker_score']:.4f}; "
             f"windows: {result['window']}")
    fig.suptitle("\n".join(textwrap.wrap(name, 110) + [facts]), fontsize=9)  # wrapped: a long name is not clipped
    try:  # marked, so that a later evaluation knows the file is its own (write_guard.tokentrim_plot)
        fig.savefig(path_png, dpi=90, format="png", metadata={"Software": "tokentrim evaluate"})
    finally:
        plt.close(fig)
