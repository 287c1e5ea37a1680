"""A ``generate`` request from its options: the checks that need nothing loaded, the inputs read, and the plan and
prompt schedule made once (each raises ConfigError, exit 2, before anything loads). Imports torch only in
:func:`plan_request`."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def prompt_entries(prompt, timeline, seconds, seed, yes, resume, image, extend) -> list:
    """``generate``'s prompts as timeline entries, after the checks that need nothing loaded (exit 2)."""
    from ..config.checks import require_seconds, require_seed
    from .timeline import load_file, parse_prompts

    require_seconds(seconds, confirmed=yes)
    if seed is not None:
        require_seed(seed)
    elif resume:
        raise ConfigError("--resume needs the interrupted run's --seed (it printed it when it started)")
    if timeline is not None and prompt:
        raise ConfigError("--timeline and --prompt exclude each other: put every prompt in the timeline file")
    if image is not None and extend is not None:
        raise ConfigError("--image and --extend exclude each other: a continued video starts from its own frames")
    if timeline is None and not prompt:
        raise ConfigError("give --prompt (or --timeline FILE), e.g. --prompt 'a red kite over a beach'")
    if timeline is None and len(prompt) == 1 and not prompt[0].strip():
        raise ConfigError("--prompt is empty; describe the video, e.g. --prompt 'a red kite over a beach'")
    return load_file(timeline) if timeline is not None else parse_prompts(prompt)


def read_inputs(p, image: Path | None, extend: Path | None) -> tuple:
    """(the start image, the video to continue), read and fitted to the preset's frame (exit 2 when unreadable)."""
    from .image import load_image
    from .source_video import load_source

    vid = p.config.video
    start = load_image(image, vid.height, vid.width) if image is not None else None
    source = load_source(extend, vid.height, vid.width, vid.fps) if extend is not None else None
    return start, source


def plan_request(p, prompts, seconds: float, start, source) -> tuple:
    """(plan, prompt schedule, continuation) of a ``generate`` request, made once; exit 2 for a video that cannot
    be continued or a timeline that does not fit, before anything loads."""
    from ..config.presets import check_architecture
    from .continuation import extend_plan
    from .plan import Plan
    from .prompt_schedule import PromptSchedule

    check_architecture(p)
    plan, cont = Plan.for_preset(seconds, p.config, image=start is not None), None
    if source is not None:
        plan, cont = extend_plan(source, p.config, seconds)
    return plan, PromptSchedule.of(prompts, p.config, plan), cont
