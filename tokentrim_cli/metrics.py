"""Offline video metrics over time: how much a video flickers and drifts, and (toy world) whether it still shows
what its caption says. Pure numpy on uint8 frames (F, H, W, 3); matplotlib only for the plot.

- Temporal flicker: VBench's formula, the mean absolute difference between consecutive frames (0-255 scale);
  score = (255 - mean) / 255, 1.0 for a still video.
- Colour-histogram distance to the first 5 s: per channel a 32-bin normalised histogram, Hellinger distance
  sqrt(1 - sum sqrt(p q)) against the mean histogram of the first 5 s, averaged over channels; in [0, 1].
- Brightness (mean Rec.601 luma), saturation (mean HSV saturation, 0-1), sharpness (variance of the 4-neighbour
  discrete Laplacian of the luma).
- First-vs-last drift: last-window mean minus first-window mean of each curve, and the histogram distance between
  the windows. Windows are 5 s; a video shorter than 10 s uses its first and last thirds (``window`` says which).
- Toy-world attributes (``attribute_errors``): per frame, the background colour error is the median RGB distance
  (Euclidean, 0-255) between the border pixels and the expected background image; pixels farther than 60 from the
  expected background are "object" pixels, each assigned to the nearest expected object colour; the object
  colour error is the distance between an object's colour and the median of its pixels; an object is present
  when at least ``min_pixels`` pixels lie within 60 of its colour.
"""

from __future__ import annotations

import math

import numpy as np

BINS = 32
OBJECT_THRESHOLD = 60.0


def _luma(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def temporal_flicker(frames: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-pair mean absolute difference and VBench's score (255 - mean) / 255."""
    if len(frames) < 2:
        return np.zeros(0), 1.0
    f = frames.astype(np.float32)
    diffs = np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))
    return diffs, float((255.0 - diffs.mean()) / 255.0)


def histograms(frames: np.ndarray) -> np.ndarray:
    """(F, 3, BINS) per-channel normalised histograms."""
    idx = (frames.astype(np.int32) * BINS) // 256
    out = np.zeros((len(frames), 3, BINS), dtype=np.float64)
    for c in range(3):
        flat = idx[..., c].reshape(len(frames), -1)
        for i, row in enumerate(flat):
            out[i, c] = np.bincount(row, minlength=BINS)
    return out / out.sum(axis=2, keepdims=True)


def hellinger(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Mean over channels of the Hellinger distance between histograms (..., 3, BINS)."""
    bc = np.sqrt(p * q).sum(axis=-1)
    return np.sqrt(np.clip(1.0 - bc, 0.0, 1.0)).mean(axis=-1)


def saturation(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32)
    mx, mn = f.max(axis=-1), f.min(axis=-1)
    s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return s.mean(axis=(1, 2))


def sharpness(frames: np.ndarray) -> np.ndarray:
    y = _luma(frames)
    lap = y[:, 1:-1, :-2] + y[:, 1:-1, 2:] + y[:, :-2, 1:-1] + y[:, 2:, 1:-1] - 4 * y[:, 1:-1, 1:-1]
    return lap.reshape(len(frames), -1).var(axis=1)


def _windows(n: int, fps: float) -> tuple[slice, slice, str]:
    w = int(round(5 * fps))
    if n >= 2 * w:
        return slice(0, w), slice(n - w, n), "5 s"
    third = max(1, n // 3)
    return slice(0, third), slice(n - third, n), "first/last third (video shorter than 10 s)"


def attribute_errors(frames: np.ndarray, caption, min_pixels: int = 8) -> dict[str, np.ndarray]:
    """Per-frame toy-world attribute errors against a caption (text or a parsed caption)."""
    from .toy import world

    parsed = world.parse_caption(caption) if isinstance(caption, str) else caption
    n, h, w, _ = frames.shape
    bg = world.render_background(parsed.background_kind, parsed.background_colour, h, w).astype(np.float32)
    objs = np.array([world.COLOURS[c] for c, _ in parsed.objects], dtype=np.float32)
    f = frames.astype(np.float32)
    border = np.zeros((h, w), dtype=bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    dist_bg = np.linalg.norm(f - bg, axis=-1)  # (F, H, W)
    bg_err = np.median(dist_bg[:, border], axis=1)
    obj_err = np.full((n, len(objs)), np.nan)
    present = np.zeros((n, len(objs)), dtype=bool)
    dist_obj = np.linalg.norm(f[..., None, :] - objs, axis=-1)  # (F, H, W, K)
    nearest = dist_obj.argmin(axis=-1)
    for i in range(n):
        fg = dist_bg[i] > OBJECT_THRESHOLD
        for k in range(len(objs)):
            present[i, k] = int((dist_obj[i, ..., k] < OBJECT_THRESHOLD).sum()) >= min_pixels
            mine = fg & (nearest[i] == k)
            if mine.any():
                obj_err[i, k] = float(np.linalg.norm(np.median(f[i][mine], axis=0) - objs[k]))
    mean_obj = np.array([np.nan if np.isnan(row).all() else np.nanmean(row) for row in obj_err])
    return {"background_error": bg_err, "object_error": mean_obj, "object_present": present.mean(axis=1)}


def evaluate_video(frames: np.ndarray, fps: float, caption: str | None = None) -> dict:
    """All metrics as per-frame series plus a summary; JSON-serialisable."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected uint8 frames of shape (F, H, W, 3), got {frames.shape}")
    n = len(frames)
    first, last, window = _windows(n, fps)
    hists = histograms(frames)
    ref = hists[first].mean(axis=0)
    diffs, flicker_score = temporal_flicker(frames)
    series = {
        "time_s": (np.arange(n) / fps).tolist(),
        "flicker_diff": [None] + diffs.tolist(),
        "histogram_distance": hellinger(hists, ref[None]).tolist(),
        "brightness": _luma(frames).mean(axis=(1, 2)).tolist(),
        "saturation": saturation(frames).tolist(),
        "sharpness": sharpness(frames).tolist(),
    }
    summary = {"flicker_score": flicker_score, "flicker_mean_abs_diff": float(diffs.mean()) if len(diffs) else 0.0}
    for key in ("brightness", "saturation", "sharpness"):
        arr = np.asarray(series[key])
        summary[f"{key}_drift"] = float(arr[last].mean() - arr[first].mean())
    summary["histogram_drift"] = float(hellinger(hists[last].mean(axis=0), ref))
    toy_caption = None
    if caption:
        try:
            from .toy import world

            toy_caption = world.parse_caption(caption)
        except ValueError:
            toy_caption = None  # not a toy-world caption: no attribute errors
    if toy_caption is not None:
        attrs = attribute_errors(frames, toy_caption)
        for key, arr in attrs.items():
            series[key] = [None if (isinstance(v, float) and math.isnan(v)) else float(v) for v in arr]
            summary[f"{key}_first"] = _nanmean(arr[first])
            summary[f"{key}_last"] = _nanmean(arr[last])
    return {"fps": fps, "frames": n, "window": window, "caption": caption,
            "toy_caption": toy_caption is not None, "series": series, "summary": summary}


def _nanmean(a: np.ndarray) -> float | None:
    a = np.asarray(a, dtype=np.float64)
    return None if np.isnan(a).all() else float(np.nanmean(a))


def plot_metrics(result: dict, path) -> None:
    """Curves over time (seconds) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["series"]
    keys = ["flicker_diff", "histogram_distance", "brightness", "saturation", "sharpness"]
    keys += [k for k in ("background_error", "object_error", "object_present") if k in s]
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 1.7 * len(keys)), sharex=True)
    t = s["time_s"]
    for ax, key in zip(np.atleast_1d(axes), keys):
        ys = [np.nan if v is None else v for v in s[key]]
        ax.plot(t, ys, lw=1)
        ax.set_ylabel(key.replace("_", " "), fontsize=8)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[-1].set_xlabel("seconds")
    fig.suptitle(f"{result.get('video', '')} ({result['frames']} frames at {result['fps']:g} fps)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
