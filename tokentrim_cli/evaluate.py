"""``tokentrim evaluate``'s measurement of one video file: the drift metrics of the whole video and, when its
sidecar or metadata hold a prompt timeline, of each prompt's stretch against its own prompt."""

from __future__ import annotations

from pathlib import Path

from .metrics import evaluate_video, merge_metrics
from .output.files import find_timeline
from .output.video import read_video
from .toy.scoring import toy_metrics


def measure_file(video: Path, info: dict, prompt: str | None, source: str | None) -> dict:
    """Metrics of ``video`` (``info``: its :func:`video.probe`); ``prompt`` captions the toy-world scores (None:
    measured without), ``source`` says where the caption came from (``--prompt`` also turns off the timeline)."""
    frames = read_video(video)
    fps = info["fps"]
    result = merge_metrics(evaluate_video(frames, fps), toy_metrics(frames, fps, prompt))
    result["video"] = str(video)
    result["caption_source"] = source
    timeline = find_timeline(video, info.get("comment")) if source != "--prompt" else None
    if timeline:  # each prompt's stretch measured against its own prompt
        ends = [start for start, _ in timeline[1:]] + [len(frames) / fps]
        result["segments"] = []
        for (start, text), end in zip(timeline, ends):
            part = frames[round(start * fps): round(end * fps)]
            seg = merge_metrics(evaluate_video(part, fps), toy_metrics(part, fps, text))
            result["segments"].append({"prompt": text, "start_s": start, "end_s": end, "frames": len(part),
                                       "toy_caption": seg["toy_caption"], "summary": seg["summary"]})
    return result
