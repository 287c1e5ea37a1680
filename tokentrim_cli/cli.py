"""The ``tokentrim`` command.

Exit codes: 0 ok; 1 runtime failure (partial output kept); 2 usage or configuration error; 130 interrupted.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer

from . import __version__
from .errors import ConfigError, TokentrimError
from .inputs import printable
from .signals import begin_work, pending
from .output.write_guard import check_evaluate, check_generate

app = typer.Typer(
    name="tokentrim",
    help="Long text-to-video with autoregressive Wan2.1 models (Self Forcing, Rolling Forcing), "
    "TokenTrim drift pruning and bounded KV caches.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
presets_app = typer.Typer(help="List and inspect presets.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(presets_app, name="presets")

PRESET_ARG_HELP = "Preset name (see `tokentrim presets list`) or path to a YAML file."
PRESET_HELP = PRESET_ARG_HELP[:-1] + " [default: $TOKENTRIM_PRESET or toy]."
SET_HELP = "Override any preset value, e.g. --set pruning.lambda=1.5 (repeatable)."
WEIGHTS_DIR_HELP = "Local folder mirroring hub repos (OWNER/REPO/PATH); also $TOKENTRIM_WEIGHTS_DIR."
THREADS_HELP = "CPU threads (overrides runtime.threads) [default: the CPUs this process may use]."
LIVE_HELP = ("Serve a local page that plays the video while it is made and takes new prompts, stop and keep going "
             "(prints its URL; docs/live.md).")
PROMPTS_FROM_HELP = ("Read new prompts while the run goes, one per line ('-': stdin): '[SECONDSs] [MODE] [blend=N]: "
                     "PROMPT'; without a time from the next block.")
YES_HELP = "Confirm a video over an hour long (refused otherwise: a typo like 1e5 would run for days)."


def _version(value: bool):
    if value:
        print(f"tokentrim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version.")):
    pass


def default_output(prompt: str, seed: int) -> Path:
    from .batch.names import slugify

    return Path("outputs") / f"{slugify(prompt)}-{seed}.mp4"


def _shortcut_sets(overrides: list[str] | None, fps: int | None = None, threads: int | None = None) -> list[str]:
    """``--set`` plus the options that are shortcuts for preset values, checked by the preset's own rules."""
    from .config.checks import require_setting
    from .config.settings import Runtime, Video

    sets = list(overrides or [])
    if fps is not None:
        require_setting(Video, "fps", fps, "--fps")
        sets.append(f"video.fps={fps}")
    if threads is not None:
        require_setting(Runtime, "threads", threads, "--threads")
        sets.append(f"runtime.threads={threads}")
    return sets


def _load(preset: str | None, overrides: list[str] | None, fps: int | None = None, threads: int | None = None,
          architecture: bool = True):
    from .config.presets import load_preset

    return load_preset(preset, _shortcut_sets(overrides, fps, threads), architecture)


@app.command()
def generate(  # noqa: PLR0913 - a typer command's options are its parameters
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="What the video shows. Repeat it for a "
                                               "timeline: 'a corgi on a beach' '20s: it runs into the waves' "
                                               "'45s cut: sunset' (prefix SECONDSs [recache|keep|cut] [blend=N]:)."),
    timeline: Optional[Path] = typer.Option(None, "--timeline", help="YAML or JSON list of {start, prompt, switch, "
                                            "blend} entries (instead of --prompt)."),
    seconds: float = typer.Option(5.0, "--seconds", "-s", help="Length of the video in seconds."),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed; chosen and printed when omitted."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output .mp4 [default: outputs/SLUG-SEED.mp4]."),
    fps: Optional[int] = typer.Option(None, "--fps", help="Frames per second (overrides video.fps)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help=WEIGHTS_DIR_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output path."),
    log_format: str = typer.Option("text", "--log-format", help="Progress format when not on a terminal: text or jsonl."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output (refused otherwise, exit 2); "
                                   "the old pair is replaced only when the new run finishes ok."),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help=YES_HELP),
    image: Optional[Path] = typer.Option(None, "--image", help="Start from this picture (png, jpg, webp; see README)."),
    extend: Optional[Path] = typer.Option(None, "--extend", help="Continue this MP4 (at the preset's fps): its "
                                          "frames, then --seconds new ones; timeline times count from its end."),
    resume: bool = typer.Option(False, "--resume", help="Go on where a run to --output stopped (same options)."),
    live: bool = typer.Option(False, "--live", help=LIVE_HELP),
    host: Optional[str] = typer.Option(None, "--host", help="With --live: the address [default: 127.0.0.1]."),
    port: Optional[int] = typer.Option(None, "--port", help="With --live: the port [default: a free one]."),
    prompts_from: Optional[str] = typer.Option(None, "--prompts-from", help=PROMPTS_FROM_HELP),
):
    """Generate one video from a text prompt (or a timeline of prompts; --image: starting from a picture;
    --extend: continuing a video), streaming frames into an MP4 with a JSON sidecar."""
    from .config.checks import require_log_format
    from .live.setup import check_options, close_for_job, open_for_job
    from .output.ffmpeg import ffmpeg_exe

    require_log_format(log_format)
    serve = check_options(live, host, port, prompts_from)
    from .run.request import plan_request, prompt_entries, read_inputs

    entries = prompt_entries(prompt, timeline, seconds, seed, yes, resume, image, extend)  # exit 2: no torch yet
    first, entries = entries[0].prompt, (entries if len(entries) > 1 else None)  # one prompt: a plain run
    if output is not None and output.suffix.lower() != ".mp4":
        raise ConfigError(f"--output must end in .mp4, got {output}")
    p = _load(preset, set_, fps, threads, architecture=False)  # diffusers is imported after the input checks
    ffmpeg_exe()  # exit 2: none, or one that cannot write our MP4s
    start, source = read_inputs(p, image, extend)  # exit 2
    # the checks above answer without torch (seconds, not the 6-17 s of importing it first); now the rest
    from .batch import settings_hash
    from .config.loading import components_loader
    from .output.display import closing_lines, make_display
    from .run.job import Job, run_job
    from .run.resume import state_dir
    from .run.timeline import canonical

    begin_work()  # a Ctrl-C during those imports ends it here, before anything is written
    plan, schedule, cont = plan_request(p, entries or first, seconds, start, source)  # exit 2, nothing loaded
    loader = components_loader(p, str(weights_dir) if weights_dir else None)
    display = make_display(quiet, log_format)
    if seed is None:
        seed = secrets.randbelow(2**31)
        display.message(f"seed: {seed} (chosen at random; pass --seed {seed} to reproduce)")
    out = output or default_output(first, seed)
    check_generate(out, overwrite, resume, {timeline: "--timeline", image: "--image", extend: "--extend"})
    shash = settings_hash(p.config.as_dict(), canonical(entries) if entries else first, seconds, seed)
    job = Job(first, seconds, seed, out, overwrite, entries, start, settings_hash=shash, resume=resume, extend=cont,
              plan=plan, schedule=schedule)
    job.live = open_for_job(job, p.config, serve, prompts_from, display)  # None without --live / --prompts-from
    result = None
    try:
        result = run_job(job, p, loader, display)
    finally:
        close_for_job(job, result, sys.argv[2:], display)
    if result.status != "ok" and result.error:
        print("\n".join(closing_lines(result, state_dir(out).name)), file=sys.stderr)
    raise _exit(EXIT_INTERRUPTED if result.held_signal else result.exit_code)  # held: came while finishing


@presets_app.command("list")
def presets_list():
    """List the presets found (checkout, installed package, $TOKENTRIM_PRESETS), each with its checkpoint's license."""
    from .config.presets import list_presets, load_preset
    from .config.notices import license_label

    rows = []
    for name in list_presets():
        try:
            cfg = load_preset(name, architecture=False).config  # the schema only: no diffusers import to list
            rows.append((name, license_label(cfg), " ".join(cfg.description.split())))
        except TokentrimError as exc:
            rows.append((name, "?", f"(invalid: {exc})"))
    wide = [max(len(r[i]) for r in rows) for i in (0, 1)] if rows else [0, 0]
    for name, lic, desc in rows:
        print(f"{name:{wide[0]}s}  {lic:{wide[1]}s}  {desc[:100]}")


@presets_app.command("show")
def presets_show(
    name: str = typer.Argument(..., help=PRESET_ARG_HELP),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
):
    """Print the fully resolved YAML of a preset (defaults filled, extends merged, --set applied)."""
    from .config.presets import dump

    p = _load(name, set_)
    print(f"# preset {p.name} from {p.path}")
    print(dump(p.config), end="")


@app.command()
def download(
    name: str = typer.Argument(..., help=PRESET_ARG_HELP),
    local_dir: Optional[Path] = typer.Option(None, "--local-dir", help="Mirror into this folder instead of the hub cache."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
):
    """Fetch every weights file a preset needs (from the Hugging Face Hub, or a URL) and print where each went.
    --set video.decoder=tiny fetches the fast decoder too."""
    from .config.loading import fetch_all, weights_refs
    from .engine.tiny_decoder import LICENSE as TINY_LICENSE

    p = _load(name, set_)
    print(f"preset {p.name}: checkpoint license {p.config.license.describe()}"
          + (f"; fast decoder TAEHV taew2_1: {TINY_LICENSE}" if p.config.video.decoder == "tiny" else ""))
    refs = weights_refs(p.config.model, p.config.video.decoder)
    hub = [r for r in refs if r.startswith(("hf://", "https://"))]
    if not hub:
        print(f"preset {p.name} needs nothing from the hub (weights: {', '.join(refs)})")
        return
    for ref, path in fetch_all(hub, str(local_dir) if local_dir else None):
        print(f"{ref} -> {path}")


@app.command()
def doctor(weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help=WEIGHTS_DIR_HELP),
           preset: Optional[str] = typer.Option(None, "--preset", help="Predict this preset's peak GPU memory."),
           seconds: float = typer.Option(60.0, "--seconds", "-s", help="Video length for --preset."),
           set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP)):
    """Report torch/CUDA, GPU memory, ffmpeg, and which presets have their weights here; --preset: that preset's
    predicted peak GPU memory, the GPU sizes it fits and the --set lines that bring it under (nothing loads)."""
    if preset is not None:
        from .planner import print_plan

        return print_plan(preset, seconds, set_)
    import imageio_ffmpeg
    import torch

    from .config.presets import list_presets, load_preset
    from .config.loading import missing_weights
    from .config.notices import license_label
    from .output.ffmpeg import ffmpeg_exe

    print(f"tokentrim {__version__}, python {sys.version.split()[0]}, torch {torch.__version__}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            print(f"cuda:{i} {prop.name}, {prop.total_memory / 2**30:.1f} GiB")
    else:
        print("cuda: not available (runs on CPU; only the tiny presets are practical)")
    try:
        print(f"ffmpeg: {ffmpeg_exe()} ({imageio_ffmpeg.get_ffmpeg_version()})")
    except ConfigError as exc:
        print(f"ffmpeg: NOT USABLE: {exc}")
    for name in list_presets():
        try:
            p = load_preset(name)
        except TokentrimError as exc:
            print(f"preset {name}: invalid ({exc})")
            continue
        missing = missing_weights(p, str(weights_dir) if weights_dir else None)
        state = "ready" if not missing else f"missing {len(missing)} (run: tokentrim download {name})"
        print(f"preset {name}: {state}; license: {license_label(p.config)}")


@app.command()
def batch(  # noqa: PLR0913 - a typer command's options are its parameters
    prompts: Path = typer.Argument(..., help="Text file (one prompt per line, # comments) or JSONL "
                                   "(one {\"prompt\": ... or \"timeline\": [...], \"seconds\", \"seed\", \"preset\", "
                                   "\"output\", \"set\"} per line)."),
    out_dir: Path = typer.Option(..., "--out-dir", "-d", help="Folder for the videos, sidecars and manifest.jsonl."),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    seconds: float = typer.Option(5.0, "--seconds", "-s", help="Length of each video unless the item says otherwise."),
    seed: int = typer.Option(0, "--seed", help="Batch seed; items without a seed get one derived from it and their index."),
    resume: bool = typer.Option(False, "--resume", help="Skip items done with the same settings; go on with interrupted ones."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate items whose video exists (without it the batch "
                                   "refuses to start, exit 2, if any item it would run has one; --resume skips "
                                   "finished items first)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Only shard I of N (item k is in shard k mod N), e.g. 0/4."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (one line per item) and load nothing."),
    name_template: str = typer.Option("{index:04d}-{slug}-{seed}", "--name-template",
                                      help="Output name; fields {index} {slug} {seed} {preset}."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help=WEIGHTS_DIR_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output paths (and the summary line)."),
    log_format: str = typer.Option("text", "--log-format", help="Progress format when not on a terminal: text or jsonl."),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Confirm items over an hour long (the batch is refused "
                             "otherwise)."),
):
    """Generate one video per prompt of a file: resumable, shardable, one process per GPU under accelerate launch."""
    from .batch import Options, run_batch

    opts = Options(prompts=prompts, out_dir=out_dir, preset=preset, sets=_shortcut_sets(set_, threads=threads),
                   seconds=seconds, seed=seed, resume=resume, overwrite=overwrite, shard=shard, dry_run=dry_run,
                   name_template=name_template, weights_dir=str(weights_dir) if weights_dir else None, quiet=quiet,
                   log_format=log_format, yes=yes)
    raise _exit(run_batch(opts))


@app.command()
def evaluate(
    video: Path = typer.Argument(..., help="An MP4 to measure."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Caption to check toy-world attributes against "
                                         "[default: the prompt in the video's metadata]."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Metrics JSON [default: VIDEO.metrics.json]; "
                                          "the plot goes next to it as .png."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the JSON path."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a JSON or PNG evaluate did not make."),
):
    """Measure drift over time: flicker, colour-histogram distance to the first 5 s, brightness, saturation,
    sharpness, first-vs-last-5-s drift and, for toy-world captions, attribute errors. Writes JSON and a PNG plot."""
    from .evaluate import measure_file
    from .metrics import metrics_text, plot_metrics
    from .output.files import find_prompt, replace_file
    from .toy.scoring import SERIES_TITLES
    from .output.ffmpeg import ffmpeg_exe
    from .output.video import probe
    from .startup import resume_collection

    resume_collection()
    if not video.is_file():
        raise ConfigError(f"{video} does not exist")
    ffmpeg_exe()
    out = check_evaluate(video, output, overwrite)  # exit 2 before anything is read or written
    info = probe(video)
    if not info["frames"] or not info["fps"]:
        raise ConfigError(f"{video} is not a readable video (ffmpeg found no frames)")
    source = "--prompt" if prompt is not None else None
    if prompt is None:
        prompt, source = find_prompt(video, info.get("comment"))
        if prompt is None:
            print(f"tokentrim: warning: no prompt in the metadata of {video} nor in a sidecar next to it; "
                  "measuring without a caption (pass --prompt)", file=sys.stderr)
    result = measure_file(video, info, prompt, source)
    replace_file(out, lambda tmp: tmp.write_text(metrics_text(result)))
    png = out.with_suffix(".png")
    replace_file(png, lambda tmp: plot_metrics(result, tmp, titles=SERIES_TITLES))
    if quiet:
        print(out)
        return
    summary = result.get("summary", {})
    for key, value in summary.items():
        if isinstance(value, (int, float)):
            print(f"{key:40s} {value:.4f}")
    for k, seg in enumerate(result.get("segments", [])):
        print(f"segment {k + 1}: {seg['start_s']:g}-{seg['end_s']:g} s, {seg['prompt']!r}")
        for key in ("background_error_last", "object_error_last", "object_present_last", "flicker_score"):
            if isinstance(seg["summary"].get(key), (int, float)):
                print(f"  {key:38s} {seg['summary'][key]:.4f}")
    print(f"wrote {out} and {png}")


def _click_errors() -> tuple[tuple, tuple, tuple]:
    """(usage errors, no-args help, aborts) from click and from the copy of click that recent typer vendors
    (``typer._click``), whose classes are not click's: a parse error must be one line whichever raised it."""
    mods = [click.exceptions]
    try:
        from typer._click import exceptions as vendored  # typer >= 0.2x

        mods.append(vendored)
    except ImportError:
        pass
    usage = tuple(m.UsageError for m in mods)
    help_ = tuple(m.NoArgsIsHelpError for m in mods if hasattr(m, "NoArgsIsHelpError"))
    abort = tuple(getattr(m, "Abort", click.exceptions.Abort) for m in mods)
    return usage, help_, abort


USAGE_ERRORS, NO_ARGS_HELP, ABORTS = _click_errors()


def main(argv: list[str] | None = None) -> None:
    """Entry point: every error becomes one line on stderr and a distinct exit code."""
    try:
        code = app(args=argv, prog_name="tokentrim", standalone_mode=False)
    except NO_ARGS_HELP as exc:  # bare `tokentrim` or `tokentrim presets`: the help, as click would show it
        print(exc.format_message(), file=sys.stderr)
        code = 2
    except USAGE_ERRORS as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        message = " ".join(exc.format_message().split())
        print(f"tokentrim: error: {message}{hint}", file=sys.stderr)
        code = 2
    except (*ABORTS, KeyboardInterrupt):
        code = EXIT_INTERRUPTED
    except TokentrimError as exc:
        print(f"tokentrim: error: {printable(str(exc))}", file=sys.stderr)  # no raw control characters
        code = exc.exit_code
    except Exception:  # noqa: BLE001 - an import or a library cut short by Ctrl-C fails in its own way
        if not pending():
            raise
        code = EXIT_INTERRUPTED
    if not code and pending():  # a signal that came during an import, with no safe point after it
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED and not _reported:  # typer turns a Ctrl-C into exit 130 without a word
        print("tokentrim: interrupted", file=sys.stderr)
    sys.exit(code or 0)


EXIT_INTERRUPTED = 130
_reported = False  # a command that ends interrupted says so itself (the job's last line, the batch summary)


def _exit(code: int) -> typer.Exit:
    global _reported
    _reported = _reported or code == EXIT_INTERRUPTED
    return typer.Exit(code)
