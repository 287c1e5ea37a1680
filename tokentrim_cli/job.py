"""One video from one prompt: blocks -> streaming decoder -> MP4 writer, with sidecar and display events.

Decoding and encoding overlap the generation of the next block (``block_writer.py``; ``runtime.overlap_decode``).
Whatever happens (success, Ctrl-C / SIGTERM, an error, a full disk), every block already generated ends up in a
playable MP4 if the disk allows, and the sidecar records the outcome; which files a run creates and when it may
replace a finished video is ``outputs.py``'s part. ``generate`` and every item of ``batch`` go through
:func:`run_job`.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .block_writer import BlockWriter
from .config import Preset
from .continuation import source_latents
from .engine.components import Components
from .engine.vae import StreamingDecoder
from .errors import ConfigError, TokentrimError
from .outputs import RunOutputs, error_text
from .pipeline import Plan, generate_blocks, image_latents, timeline_switches
from .progress import Display
from .sidecar import Sidecar
from .signals import HeldSignals, pending, raise_pending, terminate_as_interrupt
from .video import Mp4Writer

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class Job:
    prompt: str
    seconds: float
    seed: int
    output: Path  # target .mp4; the sidecar is the same name with .json
    overwrite: bool = False  # replace an existing finished output (else refused, exit 2)
    timeline: list | None = None  # timeline.Entry list (its first prompt is ``prompt``); None: one prompt
    image: object | None = None  # image.StartImage the video starts from (``generate --image``); None: from noise
    extend: object | None = None  # continuation.Continuation of the video it continues (``generate --extend``)


@dataclass
class Result:
    status: str  # ok | interrupted | failed
    video: Path | None
    sidecar: Path
    error: str | None
    frames_written: int
    seconds: float
    exit_code: int
    held_signal: int = 0  # a Ctrl-C / SIGTERM that came while the outputs were being finished: the caller's to act on

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "video": str(self.video) if self.video else None,
            "sidecar": str(self.sidecar),
            "error": self.error,
            "frames_written": self.frames_written,
            "seconds": round(self.seconds, 3),
        }


def run_job(job: Job, preset: Preset, components: Callable[[], Components], display: Display, extra: dict | None = None) -> Result:
    """Raises ConfigError (exit 2, nothing written) when the output cannot be taken: it exists (without
    ``overwrite``), another process writes it, or its folder is not writable."""
    plan = Plan.for_preset(job.seconds, preset.config, image=job.image is not None,
                           extend=job.extend.latent_frames if job.extend is not None else 0)
    switches = timeline_switches(job.timeline, preset.config, plan)  # a timeline that does not fit: exit 2
    if job.image is not None:
        extra = {**(extra or {}), "image": job.image.as_dict()}
    if job.extend is not None:
        extra = {**(extra or {}), "extend": job.extend.as_dict()}
    if job.timeline:
        extra = {**(extra or {}), "timeline": [e.as_dict() for e in job.timeline],
                 "switches": [s.as_dict() for s in switches]}
    outputs = RunOutputs(job.output, job.overwrite)
    outputs.open(display.message)
    try:
        return _run(job, preset, components, display, extra, plan, outputs)
    finally:
        outputs.close()


def _run(job, preset, components, display, extra, plan, outputs: RunOutputs) -> Result:
    cfg = preset.config
    vid = cfg.video
    t0 = time.perf_counter()
    ext = job.extend
    seam = ext.seam_frame if ext is not None else 0  # the input's frames come first in the output
    try:
        sidecar = Sidecar(
            outputs.running_sidecar,
            preset=preset.name,
            preset_path=str(preset.path),
            prompt=job.prompt,
            seed=job.seed,
            fps=vid.fps,
            frames=seam + plan.frames,
            seconds_requested=job.seconds,
            plan=plan.as_dict(),
            started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            video=None,
            config=cfg.as_dict(),
            **(extra or {}),
        )
    except OSError as exc:  # nothing loaded or written yet
        raise ConfigError(error_text(exc, outputs.running_sidecar)) from None
    info = {"preset": preset.name, "seed": job.seed, "video": str(job.output), **plan.as_dict(),
            **({"image": job.image.as_dict()} if job.image is not None else {})}
    display.start(info)
    if job.image is not None:
        im = job.image
        display.message(f"the video starts from the image {im.path} ({im.size[0]}x{im.size[1]}, resized to "
                        f"{im.resized[0]}x{im.resized[1]} and centre-cropped to {vid.width}x{vid.height})")
    if ext is not None:
        display.message(ext.describe(vid))
    writer = Mp4Writer(job.output, vid.width, vid.height, vid.fps, vid.crf, vid.preset,
                       prefix=ext.source.path if ext is not None and ext.copied else None, prefix_frames=seam)
    status, error, code = "ok", None, EXIT_OK
    timings = {}
    blocks = None
    shown = [0]  # the timeline entry whose prompt the display last named

    def written(block, frames):  # a block is in the file: its record goes to the sidecar and the display
        rec = {"index": block.index, "latent_frames": block.frames, **block.record, "frames_written": frames}
        entry = rec.get("prompt")
        if job.timeline and entry is not None and entry != shown[0]:
            shown[0] = entry
            sw = next(s for s in sidecar.data["switches"] if s["entry"] == entry)
            display.message(f"prompt {entry + 1}/{len(job.timeline)} from block {block.index} "
                            f"({sw['snapped']:g} s, {sw['mode']}): {job.timeline[entry].prompt}")
        rec["seconds"] = round(rec["seconds"], 4)
        sidecar.add_block(rec)
        display.block(rec, frames - seam)  # the display counts the new part's frames (its plan's)

    try:
        with terminate_as_interrupt():
            comps = components()
            raise_pending()  # a Ctrl-C that loading swallowed
            warnings = [w for e in job.timeline or [job] for w in comps.prompt_warnings(e.prompt)]
            for text in warnings:
                display.warning(text)
            sidecar.data["warnings"] = warnings  # written with the first block (or the final record)
            timings["load_seconds"] = round(time.perf_counter() - t0, 3)
            cuda = comps.device.type == "cuda"
            if cuda:  # the peak while generating (text encoding included), not while loading
                torch.cuda.reset_peak_memory_stats(comps.device)
            decoder = StreamingDecoder(comps.vae)
            decoder.reset()
            t1 = time.perf_counter()
            lead = image_latents(comps, job.image.tensor()) if job.image is not None else None
            if lead is not None:  # the image's frame first (encoded before any decoding: Wan's encode clears it)
                writer.write(decoder.frames(lead)[: plan.frames])
            context = None
            if ext is not None:  # the input streams through the encoder (and the decoder, warming it)
                context = source_latents(comps, ext, decoder, None if ext.copied else writer.write)
            blocks = BlockWriter(decoder, writer, seam + plan.frames, written, threaded=cfg.runtime.overlap_decode)
            for block in generate_blocks(comps, cfg, job.prompt, job.seed, plan, job.timeline, lead, context):
                blocks.put(block)
                raise_pending()
            blocks.close()
            timings["generate_seconds"] = round(time.perf_counter() - t1, 3)
            if cuda:
                timings["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(comps.device)
    except KeyboardInterrupt as exc:
        status, code = "interrupted", EXIT_INTERRUPTED
        error = str(exc) or "interrupted"
    except TokentrimError as exc:
        status, error, code = "failed", str(exc), exc.exit_code
    except torch.OutOfMemoryError as exc:
        status, error, code = "failed", f"out of memory: {str(exc).splitlines()[0]}", EXIT_FAILED
    except OSError as exc:  # a full disk, a read-only or unwritable folder, ffmpeg gone: one line naming the path
        status, error, code = "failed", error_text(exc, job.output), EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - recorded, reported on one line, partial output kept
        if pending():  # a library cut short by Ctrl-C while loading fails in its own way
            status, error, code = "interrupted", f"received signal {pending()}", EXIT_INTERRUPTED
        else:
            status, error, code = "failed", f"{type(exc).__name__}: {exc}", EXIT_FAILED
    finally:
        with HeldSignals() as held:
            if blocks is not None:
                try:  # every block already generated goes into the file
                    blocks.close()
                except Exception as exc:  # noqa: BLE001 - the first error is the one reported
                    if status == "ok":
                        status, error, code = "failed", error_text(exc, job.output), EXIT_FAILED
            timings["total_seconds"] = round(time.perf_counter() - t0, 3)
            sidecar.data.update(status=status, error=error, frames_written=writer.frames, timings=timings,
                                finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            status, error, video = outputs.finish(writer, sidecar, status, error)
            if status == "failed" and code == EXIT_OK:
                code = EXIT_FAILED
            result = Result(status, video, sidecar.path, error, sidecar.data["frames_written"],
                            time.perf_counter() - t0, code, held.received)
            display.finish(result.as_dict())
    return result
