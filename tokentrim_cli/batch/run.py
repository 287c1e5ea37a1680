"""One ``tokentrim batch`` invocation: :class:`BatchRun` checks everything, then runs this process's items
through :func:`tokentrim_cli.run.job.run_job`, one manifest line per finished item."""

from __future__ import annotations

import datetime as _dt
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config.checks import require_log_format, require_seconds, require_seed, seconds_problem
from ..errors import ConfigError, TokentrimError
from ..output.ffmpeg import ffmpeg_exe
from ..output.files import refuse_existing
from ..output.display import emit_json
from ..signals import begin_work, deferred, raise_pending, terminate_as_interrupt
from .manifest import MANIFEST, append_line, read_manifest, settings_hash
from .paths import check_items, done_elsewhere
from .names import DEFAULT_TEMPLATE, assign_names, check_template, item_preset_label
from .presets import Presets
from .prompts import Item, item_seed, raise_problems, read_prompts
from .shards import Processes, detect_processes, parse_shard, select

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class Options:
    """The command line of ``tokentrim batch``."""

    prompts: Path
    out_dir: Path
    preset: str | None = None
    sets: list[str] = field(default_factory=list)
    seconds: float = 5.0
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    shard: str | None = None
    dry_run: bool = False
    name_template: str = DEFAULT_TEMPLATE
    weights_dir: str | None = None
    quiet: bool = False
    log_format: str = "text"
    yes: bool = False  # confirms items over an hour long


class Reporter:
    """Batch-level lines: text on stderr, or JSON events on stdout with --log-format jsonl."""

    def __init__(self, quiet: bool, log_format: str):
        self.quiet, self.jsonl = quiet, log_format == "jsonl" and not quiet

    def event(self, event: str, text: str, **data) -> None:
        if self.jsonl:
            emit_json(event, **data)
        elif not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def error(self, text: str, **data) -> None:
        if self.jsonl:
            emit_json("item_failed", **data)
        print(text, file=sys.stderr, flush=True)


def run_batch(o: Options) -> int:
    """The batch command; returns the exit code. Usage and validation problems raise ConfigError (exit 2)."""
    return BatchRun(o).run()


class BatchRun:
    """Validation happens in the constructor (the whole prompts file, every preset it names, --set, the name
    template), before any model loads; :meth:`run` then does this shard's and this process's share."""

    def __init__(self, o: Options):
        require_log_format(o.log_format)
        require_seconds(o.seconds, confirmed=o.yes)
        require_seed(o.seed)
        self.shard, self.shards = parse_shard(o.shard)
        check_template(o.name_template)
        if o.out_dir.exists() and not o.out_dir.is_dir():
            raise ConfigError(f"--out-dir {o.out_dir} exists and is not a folder")
        self.o = o
        ffmpeg_exe()  # none, or one that cannot write our MP4s: before the prompts file is read
        self.items = read_prompts(o.prompts, o.seconds)
        if not o.yes:
            raise_problems(o.prompts, [(f"line {it.line}", f"seconds {seconds_problem(it.seconds, confirmed=False)}")
                                       for it in self.items if seconds_problem(it.seconds, confirmed=False)])
        self.presets = Presets(o.preset, o.sets, o.prompts.parent, o.weights_dir)
        self.presets.base(o.preset)  # --preset and --set, reported without a line number
        self._check_item_presets()
        self._check_timelines()
        seeds = [it.seed if it.seed is not None else item_seed(o.seed, it.index) for it in self.items]
        for it, seed, name in zip(self.items, seeds, assign_names(self.items, o.name_template, o.preset, seeds)):
            it.seed, it.name = seed, name
        self.manifest = o.out_dir / MANIFEST
        self.report = Reporter(o.quiet, o.log_format)

    def _check_item_presets(self) -> None:
        """Every preset the file names must exist and be valid (with --set applied); their line numbers on error."""
        lines_by_ref: dict[str, list[int]] = {}
        for it in self.items:
            if it.preset:
                lines_by_ref.setdefault(self.presets.ref(it.preset), []).append(it.line)
        problems = []
        for ref, lines in lines_by_ref.items():
            try:
                self.presets.base(ref)
            except ConfigError as exc:
                where = ("line " if len(lines) == 1 else "lines ") + ", ".join(map(str, lines[:10]))
                problems.append((where + (", ..." if len(lines) > 10 else ""), str(exc)))
        raise_problems(self.o.prompts, problems)

    def _check_timelines(self) -> None:
        """Every timeline must fit its item's video (snapped to that preset's blocks); line numbers on error."""
        from ..run.plan import Plan
        from ..run.prompt_schedule import timeline_switches

        problems = []
        for it in self.items:
            if not it.timeline:
                continue
            try:
                cfg = self.presets.resolve(self.presets.ref(it.preset), it.sets).config
            except TokentrimError:
                continue  # the item fails on its own when it runs (its set)
            try:
                timeline_switches(it.timeline, cfg, Plan.for_preset(it.seconds, cfg))
            except ConfigError as exc:
                problems.append((f"line {it.line}", str(exc)))
        raise_problems(self.o.prompts, problems)

    # ------------------------------------------------------------------ running
    def run(self) -> int:
        procs = detect_processes()
        try:
            code = self._run_selected(procs)
        except KeyboardInterrupt:
            procs.close()
            raise
        if code != EXIT_INTERRUPTED:
            procs.wait()  # nobody leaves (and makes the launcher stop the others) before everyone is done
        procs.close()
        return code

    def _where(self, procs: Processes) -> str:
        return f"shard {self.shard}/{self.shards}" + (
            f", process {procs.index}/{procs.count}" if procs.distributed else "")

    def _run_selected(self, procs: Processes) -> int:
        import torch

        o = self.o
        mine = select(self.items, self.shard, self.shards, procs.index, procs.count)
        where = self._where(procs)
        if procs.distributed and torch.cuda.is_available():
            self.presets.device = f"cuda:{procs.local}"
        if o.dry_run:
            self._dry_run(mine, procs)
            return EXIT_OK
        if not mine:
            print(f"tokentrim: nothing to do for {where}: the batch has {len(self.items)} item(s)"
                  f" and none fall in this {'process' if procs.distributed else 'shard'}", file=sys.stderr)
            return EXIT_OK
        # weights of the presets this process uses are checked (cheaply) before anything is generated
        for ref in dict.fromkeys(self.presets.ref(it.preset) for it in mine):
            self.presets.loader(self.presets.resolve(ref))

        done = read_manifest(self.manifest) if o.resume else {}
        check_items(mine, o.out_dir, o.prompts, o.overwrite)  # every path of every item (write_guard)
        refuse_existing([o.out_dir / (it.name + ".mp4") for it in mine if self._would_replace(it, done)],
                        "pass --overwrite to regenerate them, --resume to skip finished items, or another --out-dir")
        begin_work()  # the first write: a signal during a later import is raised after it, not an exit
        o.out_dir.mkdir(parents=True, exist_ok=True)
        counts = {"ok": 0, "failed": 0, "skipped": 0, "interrupted": 0}
        interrupted = False
        t0 = time.perf_counter()
        try:
            with terminate_as_interrupt():
                for pos, it in enumerate(mine):
                    raise_pending()
                    status = self._run_item(it, done, where, f"[{pos + 1}/{len(mine)}]")
                    counts[status] += 1
                    if status == "interrupted":
                        interrupted = True
                        break
        except KeyboardInterrupt:
            interrupted = True
        self._summary(counts, len(mine), interrupted, where, time.perf_counter() - t0)
        if interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if counts["failed"] else EXIT_OK

    def _summary(self, counts: dict, total: int, interrupted: bool, where: str, seconds: float) -> None:
        ok, failed, skipped = counts["ok"], counts["failed"], counts["skipped"]
        left = total - sum(counts.values())
        word = "interrupted" if interrupted else "done"
        summary = (f"tokentrim: batch {word}: {ok} ok, {failed} failed, {skipped} skipped"
                   + (f", {counts['interrupted']} interrupted, {left} not started" if interrupted else "")
                   + f" of {total} item(s) ({where}, {len(self.items)} in the file) in {seconds:.1f}s;"
                   f" manifest: {self.manifest}")
        if self.report.jsonl:
            emit_json("batch_done", status=word, ok=ok, failed=failed, skipped=skipped,
                      interrupted=counts["interrupted"], not_started=left, items=total, manifest=str(self.manifest))
        print(summary, file=sys.stderr, flush=True)

    def _dry_run(self, mine: list[Item], procs: Processes) -> None:
        from ..run.plan import Plan

        o = self.o
        done = read_manifest(self.manifest) if o.resume else {}
        for it in mine:
            row = {"event": "plan", "index": it.index, "line": it.line, "output": it.name + ".mp4", "seed": it.seed,
                   "seconds": it.seconds, "frames": None, "preset": None, "shard": f"{self.shard}/{self.shards}",
                   "process": f"{procs.index}/{procs.count}", "action": "run", "error": None}
            try:
                p = self.presets.resolve(self.presets.ref(it.preset), it.sets)
                row["preset"] = p.name
                row["frames"] = Plan.for_preset(it.seconds, p.config).frames
                if o.resume and self._finished(it, done, settings_hash(p.config.as_dict(), it.hash_prompt, it.seconds,
                                                                       it.seed)):
                    row["action"] = "skip"
                elif self._would_replace(it, done):
                    row["action"], row["error"] = "refuse", "exists; --overwrite regenerates it"
            except TokentrimError as exc:
                row["preset"] = item_preset_label(it.preset, o.preset)
                row["action"], row["error"] = "fail", str(exc)
            if o.log_format == "jsonl":
                emit_json(**row)
            else:
                extra = f"  ERROR: {row['error']}" if row["error"] else ""
                frames = row["frames"] if row["frames"] is not None else "?"
                print(f"{it.index:5d}  {row['output']}  seed {it.seed}  {it.seconds:g}s  {frames} frames  "
                      f"preset {row['preset']}  shard {row['shard']}  process {row['process']}  {row['action']}{extra}",
                      flush=True)
        print(f"tokentrim: dry run: {len(mine)} item(s) for {self._where(procs)}; nothing loaded or written",
              file=sys.stderr)

    def _finished(self, it: Item, done: dict, shash: str) -> bool:
        prev = done.get(it.index)
        return (prev is not None and prev.get("status") == "ok" and prev.get("settings_hash") == shash
                and prev.get("output") == it.name + ".mp4" and (self.o.out_dir / (it.name + ".mp4")).is_file())

    def _would_replace(self, it: Item, done: dict) -> bool:
        """The item's video exists and would be generated again (not skipped by --resume), without --overwrite."""
        o = self.o
        if o.overwrite or not (o.out_dir / (it.name + ".mp4")).exists():
            return False
        if not o.resume:
            return True
        try:
            cfg = self.presets.resolve(self.presets.ref(it.preset), it.sets).config
        except TokentrimError:
            return False  # the item fails before writing anything
        return not self._finished(it, done, settings_hash(cfg.as_dict(), it.hash_prompt, it.seconds, it.seed))

    def _run_item(self, it: Item, done: dict, where: str, counter: str) -> str:
        """Run one item and append its manifest line; returns ok, failed, skipped or interrupted. Nothing an
        item does (but a Ctrl-C) stops the batch."""
        import torch

        o = self.o
        out = o.out_dir / (it.name + ".mp4")
        tag = f"{counter} item {it.index} (line {it.line})"
        t0 = time.perf_counter()
        run = ItemRun()
        try:
            skipped = self._start_item(it, done, where, tag, run)
            if skipped:
                return "skipped"
        except KeyboardInterrupt:
            raise
        except TokentrimError as exc:
            elsewhere = done_elsewhere(exc, out, run.shash) if isinstance(exc, ConfigError) else None
            if elsewhere:  # not this run's to record: the other run's manifest line stays the item's latest
                self.report.event("item_skipped", f"tokentrim: {tag}: skipped, {elsewhere}", index=it.index,
                                  output=str(out))
                return "skipped"
            run.status, run.error = "failed", str(exc)
        except torch.OutOfMemoryError as exc:
            run.status, run.error = "failed", f"out of memory: {str(exc).splitlines()[0] if str(exc) else ''}"
        except Exception as exc:  # noqa: BLE001 - one item's problem never stops the batch
            run.status, run.error = "failed", f"{type(exc).__name__}: {exc}"
        with deferred():
            append_line(self.manifest, self._manifest_record(it, run, where, time.perf_counter() - t0))
        if run.status == "failed":  # an interrupted item is the batch summary's to report, in its one line
            self.report.error(f"tokentrim: {tag} {run.status}: {run.error}", index=it.index, status=run.status,
                              error=run.error)
            self._after_failure(run)
        return run.status

    def _start_item(self, it: Item, done: dict, where: str, tag: str, run: "ItemRun") -> bool:
        """Resolve the item's preset and run it, filling ``run``; True when it is skipped (done already)."""
        from ..output.display import make_display
        from ..run.job import Job, run_job
        from ..run.resume import fingerprint, peek_state, state_dir

        o, presets = self.o, self.presets
        out = o.out_dir / (it.name + ".mp4")
        try:
            run.preset = presets.resolve(presets.ref(it.preset), it.sets)
        except ConfigError as exc:
            if not it.sets:
                raise
            raise ConfigError(f"item set {it.sets}: {exc}") from None
        run.shash = settings_hash(run.preset.config.as_dict(), it.hash_prompt, it.seconds, it.seed)
        if o.resume and self._finished(it, done, run.shash):
            self.report.event("item_skipped", f"tokentrim: {tag}: skipped, already done: {out}", index=it.index,
                              output=str(out))
            return True
        self.report.event("item", f"tokentrim: {tag}: {out.name}", index=it.index, output=str(out), seed=it.seed,
                          seconds=it.seconds, preset=run.preset.name, prompt=it.prompt)
        run.key = presets.loader_key(run.preset)
        loader = presets.loader(run.preset)
        extra = {"batch": {"index": it.index, "line": it.line, "prompts": str(o.prompts), "settings_hash": run.shash,
                           "where": where}}
        # goes on where an unfinished run of this very item stopped: its state says so (the manifest may not:
        # a SIGKILL writes no line), by the fingerprint of the same settings
        found = peek_state(state_dir(out)) if o.resume else None
        resume = bool(found) and found.get("fingerprint") == fingerprint(run.shash)
        run.result = run_job(Job(it.prompt, it.seconds, it.seed, out, o.overwrite, it.timeline,
                                 settings_hash=run.shash, resume=resume), run.preset, loader,
                             make_display(o.quiet, o.log_format), extra)
        run.status, run.error = run.result.status, run.result.error
        return False

    def _manifest_record(self, it: Item, run: "ItemRun", where: str, elapsed: float) -> dict:
        """The item's manifest line."""
        o, presets, result = self.o, self.presets, run.result
        shash = run.shash
        if shash is None:
            shash = settings_hash(None, it.hash_prompt, it.seconds, it.seed, fallback={
                "preset": presets.ref(it.preset), "cli_sets": presets.cli_sets, "sets": it.sets})
        video = result.video if result is not None else None
        return {
            "index": it.index, "line": it.line, "prompt": it.prompt,
            **({"timeline": [e.as_dict() for e in it.timeline]} if it.timeline else {}),
            "output": video.name if video else None,
            "sidecar": result.sidecar.name if result is not None and result.sidecar.exists() else None,
            "seed": it.seed, "status": run.status, "error": run.error, "seconds": it.seconds,
            "settings_hash": shash,
            "preset": run.preset.name if run.preset is not None else item_preset_label(it.preset, o.preset),
            "frames_written": result.frames_written if result is not None else 0,
            "elapsed": round(elapsed, 3),
            "where": where,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def _after_failure(self, run: "ItemRun") -> None:
        """Free memory after a failed item (an out-of-memory one drops the other presets' idle models too)."""
        import torch

        if run.error and run.error.startswith("out of memory"):
            self.presets.drop_other_loaders(run.key)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class ItemRun:
    """What running one batch item gave: its preset and settings hash once resolved, the run's result."""

    preset: object = None
    shash: str | None = None
    key: object = None
    result: object = None
    status: str = "failed"
    error: str | None = None
