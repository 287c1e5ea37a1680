"""One video from one prompt: blocks -> streaming decoder -> MP4 writer, with sidecar and display events.

Decoding and encoding overlap the generation of the next block (``block_writer.py``; ``runtime.overlap_decode``).
Whatever happens (success, Ctrl-C / SIGTERM, an error, a full disk), every block already generated ends up in a
playable MP4 if the disk allows, and the sidecar records the outcome; which files a run creates and when it may
replace a finished video is ``outputs.py``'s part. ``generate`` and every item of ``batch`` go through
:func:`run_job`.

A run given its request's settings hash keeps a resumable state in ``NAME.state/`` (``resume.py``) while it
runs; ``Job.resume`` goes on from one: the cache is rebuilt from its journal, the decoder from its causal state,
and the new frames follow ``NAME.partial.mp4`` in the final video (joined without re-encoding).
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..output.writer import BlockWriter
from ..config.presets import Preset
from .continuation import source_latents
from ..engine.components import Components
from ..engine.vae import streaming_decoder
from ..errors import ConfigError, TokentrimError
from ..config.notices import run_notices
from ..output.files import RunOutputs, error_text
from .pipeline import Plan, generate_blocks, image_latents, timeline_switches
from ..output.display import Display
from .resume import StateWriter, fingerprint, load_state, peek_state, state_dir
from ..output.sidecar import Sidecar
from ..signals import HeldSignals, pending, raise_pending, terminate_as_interrupt
from ..output.video import Mp4Writer, probe
from ..output.write_guard import Input
from .speed import SpeedMeter

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class Job:
    prompt: str
    seconds: float
    seed: int
    output: Path  # target .mp4; the sidecar is the same name with .json
    overwrite: bool = False  # replace an existing finished output (else refused, exit 2)
    timeline: list | None = None  # timeline.Entry list (its first prompt is ``prompt``); None: one prompt
    image: object | None = None  # image.StartImage the video starts from (``generate --image``); None: from noise
    settings_hash: str | None = None  # the request's (batch.settings_hash); None: no resumable state is kept
    resume: bool = False  # go on from the NAME.state/ an unfinished run to ``output`` left
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
    resumable: int | None = None  # an unfinished run's NAME.state/ goes on after this block (``Job.resume``)

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
    if job.resume and job.output.is_file() and not state_dir(job.output).exists():
        raise ConfigError(f"nothing to resume: {job.output} is finished (pass --overwrite without --resume to make "
                          "it again)")
    outputs = RunOutputs(job.output, job.overwrite, _inputs(job))
    outputs.open(display.message)
    try:
        state = _resumable(job, outputs) if job.resume else _clear_state(job, display.message)  # exit 2 or None
        return _run(job, preset, components, display, extra, plan, outputs, state)
    finally:
        outputs.close()


def _inputs(job: Job) -> list[Input]:
    """The files the job reads, which none of its outputs may replace (``write_guard``)."""
    found = [Input(job.image.path, "the --image file")] if job.image is not None else []
    if job.extend is not None:
        found.append(Input(job.extend.source.path, "the --extend video", video_may_replace=True))
    return found


def _fingerprint(job: Job) -> str:
    start = {"image": job.image.sha256} if job.image is not None else None
    if job.extend is not None:
        start = {"extend": job.extend.source.sha256}
    return fingerprint(job.settings_hash, start)


def _clear_state(job: Job, message: Callable[[str], None]) -> None:
    """A run that starts afresh replaces an unfinished run's state, unless it is this very request's (then
    --resume goes on with it; --overwrite starts again)."""
    folder = state_dir(job.output)
    if not folder.exists():
        return None
    found = peek_state(folder)
    if found and job.settings_hash is not None and found.get("fingerprint") == _fingerprint(job) and not job.overwrite:
        raise ConfigError(f"{folder} holds this run, unfinished (after block {found.get('after_block')}): pass "
                          f"--resume to go on with it, or --overwrite to start again")
    shutil.rmtree(folder, ignore_errors=True)
    if found:
        message(f"tokentrim: removed {folder.name}, an unfinished run's state (this run starts {job.output.name} again)")
    return None


def _resumable(job: Job, outputs: RunOutputs) -> dict:
    """The state an unfinished run to ``job.output`` left, checked against its partial video."""
    if job.settings_hash is None:
        raise ValueError("a resumed job needs its settings hash")
    folder = state_dir(job.output)
    source = (f"--extend {job.extend.source.path}" if job.extend is not None
              else f"--image {job.image.path}" if job.image is not None else None)
    state = load_state(folder, _fingerprint(job), job.output, source)
    info = probe(outputs.partial_video) if outputs.partial_video.is_file() else {"frames": None}
    frames = info["frames"]
    if frames and _run_of(info.get("comment")) != state["fingerprint"]:
        raise ConfigError(f"{outputs.partial_video} was not written by the run {folder} holds (its metadata names "
                          f"another run or none); put that run's partial video back, or run without --resume to "
                          f"start {job.output.name} again")
    if not frames or frames < state["frames_written"]:
        have = f"holds {frames} frames" if frames else "is missing or unreadable"
        raise ConfigError(f"{outputs.partial_video} {have}, but {folder} goes on after frame "
                          f"{state['frames_written']}; run without --resume to start {job.output.name} again")
    state["reencode"] = frames > state["frames_written"]  # a killed run's video, longer than its last state
    return state


def _run_of(comment: str | None) -> str | None:
    """The run fingerprint an MP4 comment written by tokentrim names (None: no comment, or not ours)."""
    try:
        meta = json.loads(comment) if comment else None
    except ValueError:
        return None
    return meta.get("run") if isinstance(meta, dict) and meta.get("tool") == "tokentrim" else None


def _device_label(device) -> str:
    """Where a state was made: the GPU's name or cpu, and the torch version (bit-exact resumes need both)."""
    name = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else "cpu"
    return f"{name}, torch {torch.__version__}"


def _record_speed(meter: SpeedMeter, sidecar: Sidecar, display: Display) -> None:
    """The run's loop, decode and end-to-end rates into the sidecar (``speed``) and one display line."""
    try:
        speed = meter.record()
    except Exception as exc:  # noqa: BLE001 - a timing problem (a GPU gone bad) never costs the outputs
        sidecar.data["speed"] = {"error": f"{type(exc).__name__}: {exc}"}
        return
    sidecar.data["speed"] = speed.as_dict()
    display.message(speed.line())


def _copy_frames(video: Path, count: int, writer: Mp4Writer) -> None:
    """The first ``count`` frames of ``video``, decoded and written again (one more lossy generation)."""
    import imageio.v3 as iio

    for i, frame in enumerate(iio.imiter(video)):
        if i == count:
            break
        writer.write(frame[None])


def _run(job, preset, components, display, extra, plan, outputs: RunOutputs, state: dict | None) -> Result:
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
    notices = run_notices(preset.name, cfg, plan.start_frame + plan.latent_frames - 1)
    for text in notices:  # licence and position fallback: once, before anything loads
        display.warning(text)
    sidecar.data["warnings"] = list(notices)
    if job.image is not None:
        im = job.image
        display.message(f"the video starts from the image {im.path} ({im.size[0]}x{im.size[1]}, resized to "
                        f"{im.resized[0]}x{im.resized[1]} and centre-cropped to {vid.width}x{vid.height})")
    saver = StateWriter(state_dir(job.output), _fingerprint(job)) if job.settings_hash is not None else None
    joined = state is not None and not state["reencode"]
    if state is not None:
        sidecar.data["blocks"][:] = state["blocks"]
        for rec in state["blocks"]:  # the closing line counts the whole video's regenerations, not the new part's
            display.regenerations += rec.get("regenerations", 0)
            display.pruned += rec.get("pruned_tokens", 0)
        sidecar.data["resumed"] = state["resumed"] + [{"after_block": state["block"], "frames": state["frames_written"],
                                                       **({"reencoded": True} if state["reencode"] else {})}]
        display.message(f"resuming {job.output.name} after block {state['block']} ({state['frames_written']} frames "
                        f"in {outputs.partial_video.name}; the cache is rebuilt from "
                        f"{len(state['journal']['ops'])} journal entries)")
        if state["reencode"]:
            display.message(f"{outputs.partial_video.name} (a killed run's) goes on past its last saved state: its "
                            f"first {state['frames_written']} frames are re-encoded once, the rest generated again")
    elif ext is not None:
        display.message(ext.describe(vid))
    if state is not None:
        prefix, prefix_frames = (outputs.partial_video, state["frames_written"]) if joined else (None, 0)
    else:
        prefix, prefix_frames = (ext.source.path, seam) if ext is not None and ext.copied else (None, 0)
    run = _fingerprint(job) if job.settings_hash is not None else None
    if run is not None:
        sidecar.data["run"] = run  # in the video's comment too: --resume recognises its partial video by it
    writer = Mp4Writer(job.output, vid.width, vid.height, vid.fps, vid.crf, vid.preset, prefix, prefix_frames, run)
    status, error, code = "ok", None, EXIT_OK
    timings = {}
    blocks = None
    restored = state["blocks"] if state is not None else []
    shown = [restored[-1].get("prompt", 0) if restored else 0]  # the timeline entry whose prompt was last named
    last = {"block": None, "unsaved": False}  # the last block in the file, and whether the state on disk is older
    writer_device = [None]
    warned = set()
    meter = SpeedMeter(compile=cfg.runtime.compile)  # loop, decode and end-to-end rates (speed.py)

    def warn_once(text: str) -> None:  # a problem that repeats every block is said once
        if text not in warned:
            warned.add(text)
            display.warning(text)

    def save_state(block) -> None:
        if writer_device[0] is not None and writer_device[0].type == "cuda":  # the decoder ran on a side stream,
            torch.cuda.synchronize(writer_device[0])  # the journal's copies are asynchronous
        history = {"blocks": list(sidecar.data["blocks"]), "resumed": sidecar.data.get("resumed", []),
                   "device": _device_label(writer_device[0])}
        saver.save(block.state, decoder.state_dict(), writer.frames, history)
        last["unsaved"] = False

    def written(block, frames):  # a block is in the file: its record goes to the sidecar and the display
        rec = {"index": block.index, "latent_frames": block.frames, **block.record, "frames_written": frames}
        entry = rec.get("prompt")
        if job.timeline and entry is not None and entry != shown[0]:
            shown[0] = entry
            sw = next(s for s in sidecar.data["switches"] if s["entry"] == entry)
            display.message(f"prompt {entry + 1}/{len(job.timeline)} from block {block.index} "
                            f"({sw['snapped']:g} s, {sw['mode']}): {job.timeline[entry].prompt}")
        rec["seconds"] = round(rec["seconds"], 4)
        meter.written(block.index, frames)
        rec.update(meter.block_seconds(block.index))
        sidecar.add_block(rec)
        display.block(rec, frames - seam)  # the display counts the new part's frames (its plan's)
        if block.state is not None:
            last["block"], last["unsaved"] = block, True
            every = cfg.runtime.state_every
            if every and (block.index + 1) % every == 0:
                try:
                    save_state(block)
                except OSError as exc:  # the video matters more than its resumability, but a full disk ends both
                    if exc.errno in DISK_FULL:
                        raise
                    warn_once(f"could not save the resumable state: {error_text(exc, saver.folder)}")

    try:
        with terminate_as_interrupt():
            comps = components()
            raise_pending()  # a Ctrl-C that loading swallowed
            warnings = [w for e in job.timeline or [job] for w in comps.prompt_warnings(e.prompt)]
            for text in warnings:
                display.warning(text)
            sidecar.data["warnings"] = notices + warnings  # written with the first block (or the final record)
            timings["load_seconds"] = round(time.perf_counter() - t0, 3)
            cuda = comps.device.type == "cuda"
            writer_device[0] = meter.device = comps.device
            if cuda:  # the peak while generating (text encoding included), not while loading
                torch.cuda.reset_peak_memory_stats(comps.device)
            decoder = streaming_decoder(comps)
            decoder.reset()
            t1 = time.perf_counter()
            lead = None
            if state is not None:
                here = _device_label(comps.device)
                if state.get("device") != here:  # the same numbers need the same kernels
                    display.warning(f"{state_dir(job.output).name} was saved on {state.get('device')}, this run is "
                                    f"on {here}: the rest may differ slightly from an uninterrupted run's")
                decoder.load_state_dict(state["decoder"])
                if state["reencode"]:
                    _copy_frames(outputs.partial_video, state["frames_written"], writer)
            elif job.image is not None:  # the image's frame first
                lead = image_latents(comps, job.image.tensor())
                writer.write(decoder.frames(lead)[: plan.frames])
            context = None
            if ext is not None and state is None:  # the input streams through the encoder (and the decoder, warming it)
                context = source_latents(comps, ext, decoder, None if ext.copied else writer.write)
            blocks = BlockWriter(meter.decoder(decoder), writer, seam + plan.frames, written,
                                 threaded=cfg.runtime.overlap_decode)
            for block in meter.loop(generate_blocks(comps, cfg, job.prompt, job.seed, plan, job.timeline, lead,
                                                    context, resumable=saver is not None, resume=state)):
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
            written_all = False
            if blocks is not None:
                try:  # every block already generated goes into the file
                    blocks.close()
                    written_all = True
                except Exception as exc:  # noqa: BLE001 - the first error is the one reported
                    if status == "ok":
                        status, error, code = "failed", error_text(exc, job.output), EXIT_FAILED
            if status != "ok" and last["unsaved"] and written_all:  # the decoder is where the last block left it
                try:
                    save_state(last["block"])
                except OSError as exc:  # a full disk is the failure line's to report
                    if not (exc.errno in DISK_FULL and status == "failed"):
                        warn_once(f"could not save the resumable state: {error_text(exc, saver.folder)}")
            timings["total_seconds"] = round(time.perf_counter() - t0, 3)
            _record_speed(meter, sidecar, display)
            sidecar.data.update(status=status, error=error, frames_written=writer.frames, timings=timings,
                                finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            status, error, video = outputs.finish(writer, sidecar, status, error)
            if status == "failed" and code == EXIT_OK:
                code = EXIT_FAILED
            resumable = None
            if saver is not None and (status == "ok" or (state is None and saver.saved_block is None)):
                saver.remove()  # finished, or nothing saved: the folder holds no state to go on from
            elif saver is not None and saver.saved_block is not None and video is not None:
                resumable = saver.saved_block
            result = Result(status, video, sidecar.path, error, sidecar.data["frames_written"],
                            time.perf_counter() - t0, code, held.received, resumable)
            display.finish(result.as_dict())
    return result
