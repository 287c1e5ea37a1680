"""``generate --live`` / ``--prompts-from``: the options checked, the session opened, the replay command."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..errors import ConfigError
from ..run.timeline import Entry
from .control import LiveControl
from .session import LiveSession, Serve


def check_options(live: bool, host: str | None, port: int | None, prompts_from: str | None) -> Serve | None:
    """Where to serve the page (None: no page). ConfigError for --host / --port without --live, a port out of
    range, a --prompts-from file that is not there."""
    if not live and (host is not None or port is not None):
        raise ConfigError("--host and --port go with --live (the page's address), e.g. --live --port 8765")
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"--port must be from 1 to 65535 (0 or none: a free one), got {port}")
    if prompts_from not in (None, "-") and not Path(prompts_from).exists():
        raise ConfigError(f"--prompts-from {prompts_from} does not exist; give a file or pipe, or - for stdin")
    return Serve(host or "127.0.0.1", port or 0) if live else None


def replay_command(sidecar: Path, seconds: float, seed: int, options: list[str]) -> str:
    """The command that makes the same video again from the run's sidecar (its timeline)."""
    words = ["tokentrim", "generate", "--timeline", str(sidecar), "--seconds", repr(float(seconds)).removesuffix(".0"), "--seed", str(seed)]
    return shlex.join(words + options)


def open_for_job(job, cfg, serve: Serve | None, prompts_from: str | None, display) -> LiveSession | None:
    """The started session of a ``generate`` job (None without --live or --prompts-from): its page served, its
    prompts read, before the model loads."""
    from ..output.display import QuietDisplay
    from .schedule import LiveSchedule

    if serve is None and prompts_from is None:
        return None
    control = live_control(job, cfg, job.timeline or [Entry(0.0, job.prompt)], job.seconds)
    say = None if isinstance(display, QuietDisplay) else display.message  # quiet: the URL still shows (stderr)
    job.plan, job.schedule = control.plan, LiveSchedule(control)  # the loop follows the control
    vid = cfg.video
    session = LiveSession(control, job.output.stem, (vid.width, vid.height, vid.fps), serve,
                          _prompt_stream(prompts_from), say)
    session.start()
    return session


def live_control(job, cfg, entries: list[Entry], seconds: float, next_block: int = 0,
                 recache: bool = True) -> LiveControl:
    """A control for ``job``'s run of ``entries`` over ``seconds``."""
    from ..run.plan import Plan
    from ..run.prompt_schedule import timeline_switches

    extend = job.extend.latent_frames if job.extend is not None else 0
    return LiveControl(entries, seconds, lambda s: Plan.for_preset(s, cfg, image=job.image is not None, extend=extend),
                       lambda found, plan: timeline_switches(found, cfg, plan), next_block, recache)


def _prompt_stream(prompts_from: str | None):
    if prompts_from == "-":
        return sys.stdin
    if prompts_from is None:
        return None
    try:
        return open(prompts_from, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"--prompts-from {prompts_from}: cannot read it ({exc.strerror})") from None


REPLAYED = {"--preset", "--set", "--fps", "--threads", "--image", "--extend", "--weights-dir"}


def close_for_job(job, result, argv: list[str], display) -> None:
    """End a job's session (if it has one); after a live run that changed, say how to make the same video again
    (``argv``: the command's options, of which those that shape the video are repeated)."""
    if job.live is None:
        return
    job.live.close(result.as_dict() if result is not None else None)
    if result is None or result.video is None or len(job.live.control.entries) < 2:
        return
    options = [w for i, w in enumerate(argv) if w in REPLAYED or (i and argv[i - 1] in REPLAYED)]
    display.message("live: the same video again: "
                    + replay_command(result.sidecar, job.live.control.seconds, job.seed, options))


def resumed_job(job, preset, state):
    """``job`` with the timeline and length its live state recorded (``state``: a ``run.state.RunState`` whose
    history has ``live``), its plan and schedule made again; ConfigError when they do not read."""
    from dataclasses import replace

    from .control import restored
    from .schedule import LiveSchedule

    entries, seconds = restored(state.history.live, job.seconds)
    job = replace(job, timeline=entries if len(entries) > 1 else None, seconds=seconds, plan=None, schedule=None)
    if job.live is not None:
        job.live.control.restore(entries, seconds, state.generation.loop.next_block,
                                 recache=state.generation.kept is not None)
        job = replace(job, plan=job.live.control.plan, schedule=LiveSchedule(job.live.control))
    return job.prepared(preset)
