"""One video from one prompt: blocks -> streaming decoder -> MP4 writer, with sidecar and display events.

Whatever happens (success, Ctrl-C / SIGTERM, an error), the frames already produced end up in a playable MP4
and the sidecar records the outcome. ``generate`` and every item of ``batch`` go through :func:`run_job`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import Preset
from .engine.components import Components
from .engine.vae import StreamingDecoder
from .errors import TokentrimError
from .pipeline import Plan, generate_blocks
from .progress import Display
from .sidecar import Sidecar
from .signals import HeldSignals
from .video import Mp4Writer

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class Job:
    prompt: str
    seconds: float
    seed: int
    output: Path  # target .mp4; the sidecar is the same name with .json


@dataclass
class Result:
    status: str  # ok | interrupted | failed
    video: Path | None
    sidecar: Path
    error: str | None
    frames_written: int
    seconds: float
    exit_code: int

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "video": str(self.video) if self.video else None,
            "sidecar": str(self.sidecar),
            "error": self.error,
            "frames_written": self.frames_written,
            "seconds": round(self.seconds, 3),
        }


def sidecar_path(video: Path) -> Path:
    return Path(video).with_suffix(".json")


class Interrupted(KeyboardInterrupt):
    """Raised from the SIGTERM handler so that termination and Ctrl-C take the same path."""


@contextlib.contextmanager
def terminate_as_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(f"received signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def signals_held():
    """A Ctrl-C / SIGTERM arriving inside the block is re-raised when the block ends: a block's frames reach the
    MP4 whole, with their sidecar record, so ``frames_written`` counts exactly what the file holds (an interrupt
    in the middle of a write once left the sidecar 10 frames short of the video)."""
    with HeldSignals() as held:
        yield
    if held.received:
        signal.raise_signal(held.received)  # now the usual handler runs: KeyboardInterrupt, or Interrupted for SIGTERM


@contextlib.contextmanager
def signals_deferred():
    """Finishing the outputs must not be cut short by a second Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_job(job: Job, preset: Preset, components: Callable[[], Components], display: Display, extra: dict | None = None) -> Result:
    cfg = preset.config
    vid = cfg["video"]
    plan = Plan.for_preset(job.seconds, cfg)
    job.output.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sidecar = Sidecar(
        sidecar_path(job.output),
        preset=preset.name,
        preset_path=str(preset.path),
        prompt=job.prompt,
        seed=job.seed,
        fps=vid["fps"],
        frames=plan.frames,
        seconds_requested=job.seconds,
        plan=plan.as_dict(),
        started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        video=None,
        config=cfg,
        **(extra or {}),
    )
    info = {"preset": preset.name, "seed": job.seed, "video": str(job.output), **plan.as_dict()}
    display.start(info)
    writer = Mp4Writer(job.output, vid["width"], vid["height"], vid["fps"], vid["crf"], vid["preset"])
    status, error, code, written = "ok", None, EXIT_OK, 0
    timings = {}
    try:
        with terminate_as_interrupt():
            comps = components()
            timings["load_seconds"] = round(time.perf_counter() - t0, 3)
            decoder = StreamingDecoder(comps.vae)
            decoder.reset()
            t1 = time.perf_counter()
            for block in generate_blocks(comps, cfg, job.prompt, job.seed, plan):
                frames = decoder.frames(block.latents)
                keep = frames[: max(0, plan.frames - written)]
                with signals_held():  # the block's frames and its sidecar record land together
                    writer.write(keep)
                    written = writer.frames
                    rec = {"index": block.index, "latent_frames": block.frames, **block.record, "frames_written": written}
                    rec["seconds"] = round(rec["seconds"], 4)
                    sidecar.add_batch(rec)
                display.batch(rec, written)
            timings["generate_seconds"] = round(time.perf_counter() - t1, 3)
    except KeyboardInterrupt as exc:
        status, code = "interrupted", EXIT_INTERRUPTED
        error = str(exc) or "interrupted"
    except TokentrimError as exc:
        status, error, code = "failed", str(exc), exc.exit_code
    except torch.OutOfMemoryError as exc:
        status, error, code = "failed", f"out of memory: {str(exc).splitlines()[0]}", EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - recorded, reported on one line, partial output kept
        status, error, code = "failed", f"{type(exc).__name__}: {exc}", EXIT_FAILED
    finally:
        with signals_deferred():
            timings["total_seconds"] = round(time.perf_counter() - t0, 3)
            sidecar.data.update(status=status, error=error, frames_written=written, timings=timings)
            video = writer.close(comment=sidecar.short(), partial=status != "ok")
            sidecar.update(
                video=str(video) if video else None,
                finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            )
            result = Result(status, video, sidecar.path, error, written, time.perf_counter() - t0, code)
            display.finish(result.as_dict())
    return result
