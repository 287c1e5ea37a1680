"""One video request (:class:`Job`) and its entry point :func:`run_job`, which ``generate`` and every item of
``batch`` go through: it takes the outputs (``output/files.py``), checks an unfinished run's state for
``--resume`` (or clears a stale one) and runs :class:`~.video_run.VideoRun`.

Whatever happens (success, Ctrl-C / SIGTERM, an error, a full disk), every block already generated ends up in a
playable MP4 if the disk allows, and the sidecar records the outcome. A run given its request's settings hash
keeps a resumable state in ``NAME.state/`` (``resume.py``) while it runs; ``Job.resume`` goes on from one: the
cache is rebuilt from its journal, the decoder from its causal state, and the new frames follow
``NAME.partial.mp4`` in the final video (joined without re-encoding).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config.presets import Preset
from ..engine.components import Components
from ..errors import ConfigError
from ..output.display import Display
from ..output.files import RunOutputs
from ..output.video import probe
from ..output.write_guard import Input
from .plan import Plan
from .prompt_schedule import PromptSchedule
from .resume import fingerprint, load_state, peek_state, state_dir
from .outcome import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Result
from .video_run import Resume, VideoRun

__all__ = ["Job", "Result", "run_job", "EXIT_OK", "EXIT_FAILED", "EXIT_INTERRUPTED"]


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
    plan: Plan | None = None  # the request's plan (``prepared`` makes it when None)
    schedule: PromptSchedule | None = None  # its prompts (``prepared`` makes it when None)

    def prepared(self, preset: Preset) -> "Job":
        """This job with its plan and prompt schedule (ConfigError, exit 2: a timeline that does not fit)."""
        cfg, plan = preset.config, self.plan
        if plan is None:
            plan = Plan.for_preset(self.seconds, cfg, image=self.image is not None,
                                   extend=self.extend.latent_frames if self.extend is not None else 0)
        schedule = self.schedule or PromptSchedule.of(self.timeline or self.prompt, cfg, plan)
        return dataclasses.replace(self, plan=plan, schedule=schedule)


def run_job(job: Job, preset: Preset, components: Callable[[], Components], display: Display,
            extra: dict | None = None) -> Result:
    """Raises ConfigError (exit 2, nothing written) when the output cannot be taken: it exists (without
    ``overwrite``), another process writes it, or its folder is not writable."""
    job = job.prepared(preset)
    extra = {**(extra or {}), **_start_fields(job)}
    if job.resume and job.output.is_file() and not state_dir(job.output).exists():
        raise ConfigError(f"nothing to resume: {job.output} is finished (pass --overwrite without --resume to make "
                          "it again)")
    outputs = RunOutputs(job.output, job.overwrite, _inputs(job))
    outputs.open(display.message)
    try:
        resume = _resumable(job, outputs) if job.resume else _clear_state(job, display.message)  # exit 2 or None
        run_id = _fingerprint(job) if job.settings_hash is not None else None
        return VideoRun(job, preset, components, display, extra, outputs, run_id, resume).run()
    finally:
        outputs.close()


def _start_fields(job: Job) -> dict:
    """The sidecar's fields for how the video starts and its timeline."""
    fields = {}
    if job.image is not None:
        fields["image"] = job.image.as_dict()
    if job.extend is not None:
        fields["extend"] = job.extend.as_dict()
    if job.timeline:
        fields.update(timeline=[e.as_dict() for e in job.timeline],
                      switches=[s.as_dict() for s in job.schedule.switches])
    return fields


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


def _resumable(job: Job, outputs: RunOutputs) -> Resume:
    """The state an unfinished run to ``job.output`` left, checked against its partial video."""
    if job.settings_hash is None:
        raise ValueError("a resumed job needs its settings hash")
    folder = state_dir(job.output)
    source = (f"--extend {job.extend.source.path}" if job.extend is not None
              else f"--image {job.image.path}" if job.image is not None else None)
    state = load_state(folder, _fingerprint(job), job.output, source)
    info = probe(outputs.partial_video) if outputs.partial_video.is_file() else {"frames": None}
    frames = info["frames"]
    if frames and _run_of(info.get("comment")) != state.fingerprint:
        raise ConfigError(f"{outputs.partial_video} was not written by the run {folder} holds (its metadata names "
                          f"another run or none); put that run's partial video back, or run without --resume to "
                          f"start {job.output.name} again")
    if not frames or frames < state.frames_written:
        have = f"holds {frames} frames" if frames else "is missing or unreadable"
        raise ConfigError(f"{outputs.partial_video} {have}, but {folder} goes on after frame "
                          f"{state.frames_written}; run without --resume to start {job.output.name} again")
    return Resume(state, reencode=frames > state.frames_written)  # a killed run's video, longer than its state


def _run_of(comment: str | None) -> str | None:
    """The run fingerprint an MP4 comment written by tokentrim names (None: no comment, or not ours)."""
    try:
        meta = json.loads(comment) if comment else None
    except ValueError:
        return None
    return meta.get("run") if isinstance(meta, dict) and meta.get("tool") == "tokentrim" else None
