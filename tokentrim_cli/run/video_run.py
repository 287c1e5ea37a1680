"""One video run, in four steps (``VideoRun.run``):

1. prepare the start: the frames already in the output (an ``--extend`` video's or a resumed run's partial
   video, joined without re-encoding, or re-encoded), the decoder's state, and the :class:`~.pipeline.Lead`
   written to the cache before block 0 (a start image's latent frame, an ``--extend`` video's context) or the
   resumed state the generation goes on from;
2. generate the blocks (``pipeline.generate_blocks`` / ``resume_blocks``);
3. write each block: the writer thread decodes and encodes it (``output/writer.py``), then records it in the
   sidecar and the display and saves the resumable state every ``runtime.state_every`` blocks (``recorder.py``);
4. finish: every block already generated goes into the file (whatever stopped the run), the state is saved when
   the run stops early, and the outputs are published (``output/files.py``).

The run's own state (its outcome, timings) is the run's; the writer thread only hands immutable
:class:`~..output.writer.Written` records to the :class:`~.recorder.BlockRecorder`, whose state the run reads only
after the writer has stopped.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config.notices import run_notices
from ..config.presets import Preset
from ..engine.components import Components
from ..engine.vae import streaming_decoder
from ..errors import ConfigError
from ..output.display import Display
from ..output.files import RunOutputs, error_text
from ..output.sidecar import Sidecar
from ..output.video import Mp4Writer
from ..output.writer import BlockWriter
from ..signals import HeldSignals, raise_pending, terminate_as_interrupt
from .continuation import source_latents
from .outcome import EXIT_FAILED, EXIT_OK, Outcome, Result, outcome_of
from .pipeline import Lead, generate_blocks, image_latents, resume_blocks
from .recorder import DISK_FULL, BlockRecorder, StateSaving, device_label
from .speed import SpeedMeter, record_speed
from .resume import StateWriter, state_dir
from .state import RunState


@dataclass(frozen=True)
class Resume:
    """An unfinished run's state to go on from; ``reencode``: its partial video (a killed run's) holds more frames
    than the state counts, so the first ``state.frames_written`` are re-encoded instead of joined."""

    state: RunState
    reencode: bool = False


def copy_frames(video: Path, count: int, writer: Mp4Writer) -> None:
    """The first ``count`` frames of ``video``, decoded and written again (one more lossy generation)."""
    import imageio.v3 as iio

    for i, frame in enumerate(iio.imiter(video)):
        if i == count:
            break
        writer.write(frame[None])


class VideoRun:
    """One video from one job (``job.run_job`` opens the outputs and checks a resume first).

    Args:
        job: the request (``job.Job``, its plan and prompt schedule made).
        preset: the preset it runs.
        components: loads the models (called once, before step 1).
        display: the terminal or JSON progress.
        extra: more sidecar fields (batch, image, extend, timeline).
        outputs: the run's files.
        run_id: the run's fingerprint (None: no resumable state is kept).
        resume: the state to go on from (None: a fresh run).
    """

    def __init__(self, job, preset: Preset, components: Callable[[], Components], display: Display, extra: dict,
                 outputs: RunOutputs, run_id: str | None, resume: Resume | None):
        self.job, self.preset, self.cfg, self.components = job, preset, preset.config, components
        self.display, self.outputs, self.run_id, self.resume = display, outputs, run_id, resume
        self.t0 = time.perf_counter()
        self.seam = job.extend.seam_frame if job.extend is not None else 0  # the input's frames come first
        self.sidecar = self._sidecar(extra)
        self.saver = StateWriter(state_dir(job.output), run_id) if run_id is not None else None
        self.outcome, self.timings = Outcome(), {}
        self.decoder, self.blocks, self.recorder = None, None, None
        self.meter = SpeedMeter(compile=self.cfg.runtime.compile)  # loop, decode and end-to-end rates (speed.py)
        restored = list(resume.state.history.blocks) if resume is not None else []
        self.shown = restored[-1].get("prompt", 0) if restored else 0  # the entry whose prompt was last named

    def run(self) -> Result:
        """The four steps (module docstring); returns the result, whatever happened."""
        self._announce()
        writer = self._mp4_writer()
        try:
            with terminate_as_interrupt():
                comps = self._load()
                lead = self.prepare_start(comps, writer)  # 1
                for block in self.meter.loop(self.generate(comps, lead)):  # 2
                    self.write(block)  # 3
                self._close_blocks()
                self._measure(comps)
        except (KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - recorded, one line, partial output kept
            self.outcome = outcome_of(exc, self.job.output)
        finally:
            result = self.finish(writer)  # 4
        return result

    # ------------------------------------------------------------------ before the models load
    def _sidecar(self, extra: dict) -> Sidecar:
        job, vid, plan = self.job, self.cfg.video, self.job.plan
        try:
            return Sidecar(self.outputs.running_sidecar, preset=self.preset.name, preset_path=str(self.preset.path),
                           prompt=job.prompt, seed=job.seed, fps=vid.fps, frames=self.seam + plan.frames,
                           seconds_requested=job.seconds, plan=plan.as_dict(),
                           started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), video=None,
                           config=self.cfg.as_dict(), **extra)
        except OSError as exc:  # nothing loaded or written yet
            raise ConfigError(error_text(exc, self.outputs.running_sidecar)) from None

    def _announce(self) -> None:
        """The display's first lines and the sidecar's warnings, before anything loads."""
        job, plan, display = self.job, self.job.plan, self.display
        display.start({"preset": self.preset.name, "seed": job.seed, "video": str(job.output), **plan.as_dict(),
                       **({"image": job.image.as_dict()} if job.image is not None else {})})
        self.notices = run_notices(self.preset.name, self.cfg, plan.start_frame + plan.latent_frames - 1)
        for text in self.notices:  # licence and position fallback: once, before anything loads
            display.warning(text)
        self.sidecar.data["warnings"] = list(self.notices)
        if job.image is not None:
            im, vid = job.image, self.cfg.video
            display.message(f"the video starts from the image {im.path} ({im.size[0]}x{im.size[1]}, resized to "
                            f"{im.resized[0]}x{im.resized[1]} and centre-cropped to {vid.width}x{vid.height})")
        if self.resume is not None:
            self._announce_resume()
        elif job.extend is not None:
            display.message(job.extend.describe(self.cfg.video))

    def _announce_resume(self) -> None:
        state, reencode, name = self.resume.state, self.resume.reencode, self.outputs.partial_video.name
        self.sidecar.data["blocks"][:] = state.history.blocks
        for rec in state.history.blocks:  # the closing line counts the whole video's regenerations
            self.display.regenerations += rec.get("regenerations", 0)
            self.display.pruned += rec.get("pruned_tokens", 0)
        self.sidecar.data["resumed"] = list(state.history.resumed) + [
            {"after_block": state.block, "frames": state.frames_written, **({"reencoded": True} if reencode else {})}]
        self.display.message(f"resuming {self.job.output.name} after block {state.block} ({state.frames_written} "
                             f"frames in {name}; the cache is rebuilt from {len(state.generation.journal.ops)} "
                             f"journal entries)")
        if reencode:
            self.display.message(f"{name} (a killed run's) goes on past its last saved state: its first "
                                 f"{state.frames_written} frames are re-encoded once, the rest generated again")

    def _mp4_writer(self) -> Mp4Writer:
        """The video's writer, after the frames already there: a resumed run's partial video (joined) or the
        ``--extend`` video (when stream-copied)."""
        job, vid, resume = self.job, self.cfg.video, self.resume
        if resume is not None:
            joined = not resume.reencode
            prefix, frames = (self.outputs.partial_video, resume.state.frames_written) if joined else (None, 0)
        else:
            ext = job.extend
            prefix, frames = (ext.source.path, self.seam) if ext is not None and ext.copied else (None, 0)
        if self.run_id is not None:
            self.sidecar.data["run"] = self.run_id  # in the video's comment too: --resume recognises it by it
        writer = Mp4Writer(job.output, vid.width, vid.height, vid.fps, vid.crf, vid.x264_preset, prefix, frames,
                           self.run_id)
        return job.live.tee(writer) if job.live is not None else writer  # a live run's frames go to its page too

    # ------------------------------------------------------------------ steps 1-3
    def _load(self) -> Components:
        comps = self.components()
        raise_pending()  # a Ctrl-C that loading swallowed
        self.sidecar.data["levers"] = getattr(comps.model, "levers", None)  # live: counts as of each write
        schedule = self.job.schedule
        warnings = [w for e in schedule.entries for w in comps.prompt_warnings(e.prompt)]
        for text in warnings:
            self.display.warning(text)
        self.sidecar.data["warnings"] = self.notices + warnings  # written with the first block (or the end)
        self.timings["load_seconds"] = round(time.perf_counter() - self.t0, 3)
        if comps.device.type == "cuda":  # the peak while generating (text encoding included), not while loading
            torch.cuda.reset_peak_memory_stats(comps.device)
        self.decoder = streaming_decoder(comps)  # the VAE's, or video.decoder tiny's
        self.decoder.reset()
        self.meter.device = comps.device
        self.t1 = time.perf_counter()
        return comps

    def prepare_start(self, comps: Components, writer: Mp4Writer) -> Lead | None:
        """Step 1: the decoder where the video's frames so far leave it, those frames in the file when they are
        not joined, and the lead (None: from noise, or resumed)."""
        job, resume = self.job, self.resume
        saving = (StateSaving(self.saver, self.cfg.runtime.state_every, self.decoder, comps.device)
                  if self.saver is not None else None)
        self.recorder = BlockRecorder(self.sidecar, self.display, job.schedule, self.seam, self.shown, saving, job.live)
        self.blocks = BlockWriter(self.meter.decoder(self.decoder), writer, self.seam + job.plan.frames,
                                  self.meter.recorder(self.recorder), threaded=self.cfg.runtime.overlap_decode)
        if job.live is not None:  # keep going: the last block is trimmed to the length as it grows
            job.live.follow_length(self.blocks, self.seam)
        if resume is not None:
            here = device_label(comps.device)
            if resume.state.history.device != here:  # the same numbers need the same kernels
                self.display.warning(f"{state_dir(job.output).name} was saved on {resume.state.history.device}, "
                                     f"this run is on {here}: the rest may differ slightly from an uninterrupted "
                                     "run's")
            self.decoder.load_state_dict(resume.state.decoder)
            if resume.reencode:
                copy_frames(self.outputs.partial_video, resume.state.frames_written, writer)
            return None
        if job.image is not None:  # the image's frame first
            lead = Lead.image(image_latents(comps, job.image.tensor()))
            writer.write(self.decoder.frames(lead.latents)[: job.plan.frames])
            return lead
        if job.extend is not None:  # the input streams through the encoder (and the decoder, warming it)
            return source_latents(comps, job.extend, self.decoder, None if job.extend.copied else writer.write)
        return None

    def generate(self, comps: Components, lead: Lead | None):
        """Step 2: the blocks, fresh or after the resumed state."""
        job = self.job
        if self.resume is not None:
            return resume_blocks(comps, self.cfg, job.schedule, job.seed, job.plan, self.resume.state.generation)
        return generate_blocks(comps, self.cfg, job.schedule, job.seed, job.plan, lead,
                               resumable=self.saver is not None)

    def write(self, block) -> None:
        """Step 3: the block to the writer, which decodes, encodes and records it (``recorder.py``)."""
        self.blocks.put(block)
        raise_pending()

    def _close_blocks(self) -> None:
        """Every block queued written and recorded."""
        self.blocks.close()
        self.timings["generate_seconds"] = round(time.perf_counter() - self.t1, 3)

    def _measure(self, comps: Components) -> None:
        if comps.device.type == "cuda":
            self.timings["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(comps.device)

    # ------------------------------------------------------------------ step 4
    def finish(self, writer: Mp4Writer) -> Result:
        """Step 4: every block already generated into the file, the state saved when the run stopped early, the
        outputs published or kept as partial, the result."""
        with HeldSignals() as held:
            written_all = self._flush()
            if self.outcome.status != "ok" and written_all and self.recorder.pending is not None:
                self._save_at_stop()
            self.timings["total_seconds"] = round(time.perf_counter() - self.t0, 3)
            record_speed(self.meter, self.sidecar, self.display, show=self.outcome.status == "ok")
            o = self.outcome
            self.sidecar.data.update(status=o.status, error=o.error, frames_written=writer.frames,
                                     timings=self.timings,
                                     finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            status, error, video = self.outputs.finish(writer, self.sidecar, o.status, o.error)
            code = EXIT_FAILED if status == "failed" and o.code == EXIT_OK else o.code
            result = Result(status, video, self.sidecar.path, error, self.sidecar.data["frames_written"],
                                 time.perf_counter() - self.t0, code, held.received, self._resumable(status, video))
            self.display.finish(result.as_dict())
        return result

    def _flush(self) -> bool:
        """Write every block already generated (True when they all are in the file)."""
        if self.blocks is None:
            return False
        try:
            self.blocks.close()
            return True
        except Exception as exc:  # noqa: BLE001 - the first error is the one reported
            if self.outcome.status == "ok":
                self.outcome = Outcome("failed", error_text(exc, self.job.output), EXIT_FAILED)
            return False

    def _save_at_stop(self) -> None:
        """The run stopped early: the decoder is where the last block left it."""
        try:
            self.recorder.save_pending()
        except OSError as exc:  # a full disk is the failure line's to report
            if not (exc.errno in DISK_FULL and self.outcome.status == "failed"):
                self.recorder.warn_once(f"could not save the resumable state: {error_text(exc, self.saver.folder)}")

    def _resumable(self, status: str, video: Path | None) -> int | None:
        """The block the state on disk goes on after (None: there is none to go on from, and it is removed)."""
        saver = self.saver
        if saver is None:
            return None
        if status == "ok" or (self.resume is None and saver.saved_block is None):
            saver.remove()  # finished, or nothing saved: the folder holds no state to go on from
            return None
        return saver.saved_block if saver.saved_block is not None and video is not None else None

