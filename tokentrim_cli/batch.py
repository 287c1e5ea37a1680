"""``tokentrim batch``: many videos from a prompts file, resumable, shardable, spread over GPUs and nodes.

Flow: read and validate the whole prompts file (plus --set, --preset, every item's preset, the name template)
before any model loads; give every item a deterministic seed and a unique, filesystem-safe name; keep this
shard's and this process's items; then run each through :func:`tokentrim_cli.job.run_job`, reusing loaded
models, and append one line per finished item to ``OUT_DIR/manifest.jsonl``.

Pure helpers (``read_prompts``, ``item_seed``, ``safe_name``, ``assign_names``, ``select``, ``parse_shard``)
load nothing and are tested directly.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import math
import os
import re
import string
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .cli import components_loader, slugify
from .errors import ConfigError, TokentrimError
from .outputs import refuse_existing

FIELDS = ("prompt", "seconds", "seed", "preset", "output", "set")
TEMPLATE_FIELDS = ("index", "slug", "seed", "preset")
DEFAULT_TEMPLATE = "{index:04d}-{slug}-{seed}"
MANIFEST = "manifest.jsonl"
NAME_LIMIT = 100  # characters before .mp4; leaves room for .partial.mp4 and the hidden temporary names
MAX_ERRORS = 5  # validation problems listed on the one error line
SEED_SPACE = 2**31
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


# ---------------------------------------------------------------------- items
@dataclass
class Item:
    index: int  # position among the kept items of the file, 0-based
    line: int  # 1-based line in the prompts file
    prompt: str
    seconds: float
    seed: int | None  # None: derived from the batch seed (see item_seed)
    preset: str | None = None  # per-item preset name or path (None: --preset)
    output: str | None = None  # per-item name (None: --name-template)
    sets: list[str] = field(default_factory=list)
    name: str = ""  # final file stem, filled by assign_names


def item_seed(batch_seed: int, index: int) -> int:
    """The seed of an item that names none: the first 8 bytes of
    sha256("tokentrim-batch/{batch_seed}/{index}") as a big-endian integer, modulo 2^31."""
    digest = hashlib.sha256(f"tokentrim-batch/{batch_seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_SPACE


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def _positive_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _check_object(obj: dict) -> list[str]:
    """Problems of one JSONL object (empty when fine)."""
    problems = []
    unknown = [k for k in obj if k not in FIELDS]
    for k in unknown:
        problems.append(f"unknown field {k!r} (allowed: {', '.join(FIELDS)})")
    if "prompt" not in obj:
        problems.append("missing field 'prompt'")
    elif not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
        problems.append(f"prompt must be a non-empty string, got {obj['prompt']!r}")
    if "seconds" in obj and not _positive_number(obj["seconds"]):
        problems.append(f"seconds must be a positive number, got {obj['seconds']!r}")
    if "seed" in obj:
        s = obj["seed"]
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
            problems.append(f"seed must be an integer from 0 to 2^63-1, got {s!r}")
    if "preset" in obj and (not isinstance(obj["preset"], str) or not obj["preset"].strip()):
        problems.append(f"preset must be a preset name or path, got {obj['preset']!r}")
    if "output" in obj:
        o = obj["output"]
        if not isinstance(o, str) or not o.strip():
            problems.append(f"output must be a non-empty file name, got {o!r}")
        elif "/" in o or "\\" in o or o.strip() in (".", ".."):
            problems.append(f"output must be a file name without folders, got {o!r}")
    if "set" in obj:
        s = obj["set"]
        if not isinstance(s, list) or not all(isinstance(x, str) for x in s):
            problems.append(f"set must be a list of dotted.key=value strings, got {s!r}")
    return problems


def _is_jsonl(path: Path, lines: list[str]) -> bool:
    if path.suffix.lower() == ".jsonl":
        return True
    kept = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    return bool(kept) and all(ln.startswith("{") for ln in kept)


def _raise_problems(path: Path, problems: list[tuple[str, str]]) -> None:
    """One ConfigError line listing (where, what) pairs, at most MAX_ERRORS of them."""
    if not problems:
        return
    shown = "; ".join(f"{where}: {what}" for where, what in problems[:MAX_ERRORS])
    more = f" (and {len(problems) - MAX_ERRORS} more)" if len(problems) > MAX_ERRORS else ""
    raise ConfigError(f"{path}: {shown}{more}")


def read_prompts(path: Path | str, seconds: float = 5.0) -> list[Item]:
    """Parse a prompts file; every problem of the whole file is raised as one ConfigError line (exit 2).

    Text: one prompt per line. JSONL (``*.jsonl`` or every kept line starting with ``{``): one object per line
    with ``prompt`` and optionally ``seconds``, ``seed``, ``preset``, ``output``, ``set``. In both, blank lines
    and lines starting with ``#`` are skipped; an item's index is its position among the kept lines.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"prompts file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"prompts file {path} is a folder, expected a .txt or .jsonl file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in _decode(path, data).split("\n")]
    jsonl = _is_jsonl(path, lines)
    items: list[Item] = []
    problems: list[tuple[str, str]] = []
    for no, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        index = len(items)  # position among the kept lines
        if not jsonl:
            items.append(Item(index, no, text, float(seconds), None))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append((f"line {no}", f"invalid JSON ({exc.msg} at column {exc.colno})"))
            items.append(Item(index, no, "", float(seconds), None))  # keep indices stable in the error report
            continue
        if not isinstance(obj, dict):
            problems.append((f"line {no}", 'expected a JSON object like {"prompt": "..."}, got ' + type(obj).__name__))
            items.append(Item(index, no, "", float(seconds), None))
            continue
        found = _check_object(obj)
        problems += [(f"line {no}", p) for p in found]
        if found:
            items.append(Item(index, no, "", float(seconds), None))
            continue
        out = obj.get("output")
        if out is not None and out.lower().endswith(".mp4"):
            out = out[:-4]
        items.append(Item(index, no, obj["prompt"].strip(), float(obj.get("seconds", seconds)), obj.get("seed"),
                          obj.get("preset"), out, list(obj.get("set", []))))
    _raise_problems(path, problems)
    if not items:
        raise ConfigError(f"{path}: no prompts found (blank lines and lines starting with # are skipped)")
    return items


# ---------------------------------------------------------------------- names
def check_template(template: str) -> None:
    """Reject unknown or unusable fields now (exit 2) rather than at the first item."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"--name-template {template!r}: {exc}") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            raise ConfigError(f"--name-template {template!r}: unknown field {{{name}}}; allowed: "
                              + ", ".join("{%s}" % f for f in TEMPLATE_FIELDS))
    try:
        template.format(index=0, slug="video", seed=1, preset="tiny")
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ConfigError(f"--name-template {template!r}: {exc}") from None


def safe_name(text: str, limit: int = NAME_LIMIT) -> str:
    """A file stem that is valid on every common filesystem: ASCII letters, digits, '.', '_' and '-' only (path
    separators, spaces, control characters, emoji become '-'), no leading dot or dash, no trailing dot, no
    Windows device name (CON, NUL, COM1, ...), at most ``limit`` characters, never empty."""
    text = unicodedata.normalize("NFKD", text)
    if text.lower().endswith(".mp4"):
        text = text[:-4]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    name = re.sub(r"\.{2,}", ".", name)
    name = re.sub(r"-{2,}", "-", name)
    name = name.strip("._-")
    name = name[:limit].rstrip("._-")
    if name.lower().endswith(".partial"):  # NAME.partial.mp4 is where another item's unfinished video goes
        name = name[: -len(".partial")] + "-partial"
    if not name:
        name = "video"
    if name.split(".")[0].upper() in _RESERVED:
        name = ("_" + name)[:limit]
    return name


def _preset_label(ref: str | None, default: str | None) -> str:
    ref = ref or default or "tiny"
    p = Path(ref)
    return p.stem if p.suffix in (".yaml", ".yml") or "/" in ref or os.sep in ref else ref


def assign_names(items: Sequence[Item], template: str = DEFAULT_TEMPLATE, default_preset: str | None = None,
                 seeds: Sequence[int] | None = None, limit: int = NAME_LIMIT) -> list[str]:
    """Safe, unique (case-insensitively) names for all items, in index order: a repeated name gets -2, -3, ..."""
    taken: set[str] = set()
    names = []
    for k, it in enumerate(items):
        seed = seeds[k] if seeds is not None else it.seed
        if it.output:
            base = safe_name(it.output, limit)
        else:
            base = safe_name(template.format(index=it.index, slug=slugify(it.prompt), seed=seed,
                                             preset=_preset_label(it.preset, default_preset)), limit)
        name, n = base, 1
        while name.lower() in taken:
            n += 1
            suffix = f"-{n}"
            name = base[: limit - len(suffix)].rstrip("._-") + suffix
        taken.add(name.lower())
        names.append(name)
    return names


# ---------------------------------------------------------------------- shards and processes
def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= I < N and N >= 1 (shards are numbered 0..N-1)")
    return i, n


def select(items: Sequence, shard: int = 0, shards: int = 1, process: int = 0, processes: int = 1) -> list:
    """This shard's items (index k belongs to shard k mod N), then this process's share of them (shard-local
    position mod num_processes). Over all shards and processes every item is taken exactly once."""
    mine = [it for k, it in enumerate(items) if k % shards == shard]
    return [it for pos, it in enumerate(mine) if pos % processes == process]


@dataclass
class Processes:
    index: int = 0
    count: int = 1
    local: int = 0
    state: object = None

    @property
    def distributed(self) -> bool:
        return self.count > 1

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def close(self) -> None:
        if self.state is None:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def detect_processes() -> Processes:
    """Process index/count under ``accelerate launch`` (or torchrun); a plain run never touches torch.distributed."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world <= 1:
        return Processes()
    import datetime as _dt

    import torch
    from accelerate import PartialState

    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    # Ranks that finish early wait for the others at the end (so that one rank's exit code 1 does not make the
    # launcher kill ranks that are still working): the timeout must outlast the longest shard.
    state = PartialState(cpu=use_cpu, timeout=_dt.timedelta(days=7))
    if state.num_processes != world:
        raise TokentrimError(f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es); "
                             "launch with `accelerate launch -m tokentrim_cli batch ...` or torchrun")
    return Processes(state.process_index, state.num_processes, max(0, state.local_process_index), state)


# ---------------------------------------------------------------------- manifest
def append_line(path: Path, record: dict) -> None:
    """Append one JSON line atomically: O_APPEND, the whole line in one os.write, under an exclusive flock."""
    data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: O_APPEND alone
            fcntl = None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            written = os.write(fd, data)
            while written < len(data):  # never seen on local or network filesystems, but do not lose a tail
                written += os.write(fd, data[written:])
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_manifest(path: Path) -> dict[int, dict]:
    """Latest entry per item index (lines that do not parse are ignored)."""
    latest: dict[int, dict] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return latest
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("index"), int):
            latest[rec["index"]] = rec
    return latest


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def settings_hash(config: dict | None, prompt: str, seconds: float, seed: int, fallback: dict | None = None) -> str:
    """sha256 (first 16 hex digits) of the resolved config + prompt + seconds + seed. ``cuda:N`` counts as
    ``cuda`` so that resuming on another GPU layout does not redo finished work."""
    cfg = copy.deepcopy(config) if config is not None else {"unresolved": fallback}
    dev = cfg.get("runtime", {}).get("device") if isinstance(cfg.get("runtime"), dict) else None
    if isinstance(dev, str) and re.fullmatch(r"cuda:\d+", dev):
        cfg["runtime"]["device"] = "cuda"
    payload = _canonical({"config": cfg, "prompt": prompt, "seconds": float(seconds), "seed": int(seed)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------- the command
@dataclass
class Options:
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


class Presets:
    """Resolved presets, cached by (preset ref, overrides); loaders cached by (preset name, model, runtime)."""

    def __init__(self, default: str | None, cli_sets: list[str], base_dir: Path, weights_dir: str | None,
                 device: str | None = None):
        self.default, self.cli_sets, self.base_dir, self.weights_dir = default, list(cli_sets), base_dir, weights_dir
        self.device = device  # cuda:N of this process when distributed on GPUs
        self._presets: dict = {}
        self._loaders: dict = {}

    def ref(self, item_preset: str | None) -> str | None:
        """Item preset paths are looked up next to the prompts file first, then from the working folder."""
        if not item_preset:
            return self.default
        p = Path(item_preset).expanduser()
        looks_like_path = p.suffix in (".yaml", ".yml") or "/" in item_preset or os.sep in item_preset
        if looks_like_path and not p.is_absolute() and (self.base_dir / p).is_file():
            return str(self.base_dir / p)
        return item_preset

    def base(self, ref: str | None):
        from .config import load_preset

        key = (ref, None)
        if key not in self._presets:
            self._presets[key] = load_preset(ref, self.cli_sets)
        return self._presets[key]

    def resolve(self, ref: str | None, item_sets: Iterable[str] = ()):
        """Preset for an item: --set, then this process's device, then the item's own overrides."""
        from .config import load_preset

        item_sets = list(item_sets)
        base = self.base(ref)
        dev = [f"runtime.device={self.device}"] if self.device and base.config["runtime"]["device"] != "cpu" else []
        if not item_sets and not dev:
            return base
        key = (ref, tuple(dev + item_sets))
        if key not in self._presets:
            self._presets[key] = load_preset(ref, self.cli_sets + dev + item_sets)
        return self._presets[key]

    @staticmethod
    def loader_key(preset) -> tuple:
        return preset.name, _canonical(preset.config["model"]), _canonical(preset.config["runtime"])

    def loader(self, preset) -> Callable:
        key = self.loader_key(preset)
        if key not in self._loaders:
            self._loaders[key] = components_loader(preset, self.weights_dir)
        return self._loaders[key]

    def drop_other_loaders(self, keep: tuple | None) -> None:
        for key in [k for k in self._loaders if k != keep]:
            del self._loaders[key]


class Reporter:
    """Batch-level lines: text on stderr, or JSON events on stdout with --log-format jsonl."""

    def __init__(self, quiet: bool, log_format: str):
        self.quiet, self.jsonl = quiet, log_format == "jsonl" and not quiet

    def event(self, event: str, text: str, **data) -> None:
        if self.jsonl:
            print(json.dumps({"event": event, **data}, ensure_ascii=False, default=str), flush=True)
        elif not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def error(self, text: str, **data) -> None:
        if self.jsonl:
            self.event("item_failed", text, **data)
        print(text, file=sys.stderr, flush=True)


def _validate_options(o: Options) -> tuple[int, int]:
    if o.log_format not in ("text", "jsonl"):
        raise ConfigError(f"--log-format must be text or jsonl, got {o.log_format!r}")
    if not _positive_number(o.seconds):
        raise ConfigError(f"--seconds must be a positive number, got {o.seconds:g}")
    if not 0 <= o.seed < 2**63:
        raise ConfigError(f"--seed must be between 0 and 2^63-1, got {o.seed}")
    shard = parse_shard(o.shard)
    check_template(o.name_template)
    if o.out_dir.exists() and not o.out_dir.is_dir():
        raise ConfigError(f"--out-dir {o.out_dir} exists and is not a folder")
    return shard


def _check_item_presets(o: Options, items: list[Item], presets: Presets) -> None:
    """Every preset the file names must exist and be valid (with --set applied); their line numbers on error."""
    lines_by_ref: dict[str, list[int]] = {}
    for it in items:
        if it.preset:
            lines_by_ref.setdefault(presets.ref(it.preset), []).append(it.line)
    problems = []
    for ref, lines in lines_by_ref.items():
        try:
            presets.base(ref)
        except ConfigError as exc:
            where = ("line " if len(lines) == 1 else "lines ") + ", ".join(map(str, lines[:10]))
            problems.append((where + (", ..." if len(lines) > 10 else ""), str(exc)))
    _raise_problems(o.prompts, problems)


def run_batch(o: Options) -> int:
    """Run the batch command; returns the exit code. Usage/validation problems raise ConfigError (exit 2)."""
    shard, shards = _validate_options(o)
    items = read_prompts(o.prompts, o.seconds)
    presets = Presets(o.preset, o.sets, o.prompts.parent, o.weights_dir)
    presets.base(o.preset)  # --preset and --set, reported without a line number
    _check_item_presets(o, items, presets)
    seeds = [it.seed if it.seed is not None else item_seed(o.seed, it.index) for it in items]
    for it, seed, name in zip(items, seeds, assign_names(items, o.name_template, o.preset, seeds)):
        it.seed, it.name = seed, name

    procs = detect_processes()
    try:
        code = _run_selected(o, items, presets, procs, shard, shards)
    except KeyboardInterrupt:
        procs.close()
        raise
    if code != EXIT_INTERRUPTED:
        procs.wait()  # nobody leaves (and makes the launcher stop the others) before everyone is done
    procs.close()
    return code


def _run_selected(o: Options, items: list[Item], presets: Presets, procs: Processes, shard: int, shards: int) -> int:
    import torch

    mine = select(items, shard, shards, procs.index, procs.count)
    where = f"shard {shard}/{shards}" + (f", process {procs.index}/{procs.count}" if procs.distributed else "")
    report = Reporter(o.quiet, o.log_format)
    if procs.distributed and torch.cuda.is_available():
        presets.device = f"cuda:{procs.local}"
    manifest = o.out_dir / MANIFEST

    if o.dry_run:
        _dry_run(o, mine, presets, where, shard, shards, procs, manifest)
        return EXIT_OK
    if not mine:
        print(f"tokentrim: nothing to do for {where}: the batch has {len(items)} item(s)"
              f" and none fall in this {'process' if procs.distributed else 'shard'}", file=sys.stderr)
        return EXIT_OK
    # weights of the presets this process uses are checked (cheaply) before anything is generated
    for ref in dict.fromkeys(presets.ref(it.preset) for it in mine):
        presets.loader(presets.resolve(ref))

    from .job import terminate_as_interrupt

    done = read_manifest(manifest) if o.resume else {}
    refuse_existing([o.out_dir / (it.name + ".mp4") for it in mine if _would_replace(o, it, presets, done)],
                    "pass --overwrite to regenerate them, --resume to skip finished items, or another --out-dir")
    o.out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"ok": 0, "failed": 0, "skipped": 0, "interrupted": 0}
    interrupted = False
    t0 = time.perf_counter()
    try:
        with terminate_as_interrupt():
            for pos, it in enumerate(mine):
                status = _run_item(o, it, presets, report, manifest, done, where, pos, len(mine), procs)
                counts[status] += 1
                if status == "interrupted":
                    interrupted = True
                    break
    except KeyboardInterrupt:
        interrupted = True
    ok, failed, skipped = counts["ok"], counts["failed"], counts["skipped"]
    left = len(mine) - sum(counts.values())
    word = "interrupted" if interrupted else "done"
    summary = (f"tokentrim: batch {word}: {ok} ok, {failed} failed, {skipped} skipped"
               + (f", {counts['interrupted']} interrupted, {left} not started" if interrupted else "")
               + f" of {len(mine)} item(s) ({where}, {len(items)} in the file) in {time.perf_counter() - t0:.1f}s;"
               f" manifest: {manifest}")
    if report.jsonl:
        report.event("batch_done", summary, status=word, ok=ok, failed=failed, skipped=skipped,
                     interrupted=counts["interrupted"], not_started=left, items=len(mine), manifest=str(manifest))
    print(summary, file=sys.stderr, flush=True)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if failed else EXIT_OK


def _dry_run(o, mine, presets, where, shard, shards, procs, manifest) -> None:
    from .pipeline import Plan

    done = read_manifest(manifest) if o.resume else {}
    for it in mine:
        row = {"event": "plan", "index": it.index, "line": it.line, "output": it.name + ".mp4", "seed": it.seed,
               "seconds": it.seconds, "frames": None, "preset": None, "shard": f"{shard}/{shards}",
               "process": f"{procs.index}/{procs.count}", "action": "run", "error": None}
        try:
            p = presets.resolve(presets.ref(it.preset), it.sets)
            cfg = p.config
            row["preset"] = p.name
            row["frames"] = Plan.for_seconds(it.seconds, cfg["video"]["fps"], cfg["sampler"]["block_frames"]).frames
            if o.resume and _finished(o, it, done, settings_hash(cfg, it.prompt, it.seconds, it.seed)):
                row["action"] = "skip"
            elif _would_replace(o, it, presets, done):
                row["action"], row["error"] = "refuse", "exists; --overwrite regenerates it"
        except TokentrimError as exc:
            row["preset"] = _preset_label(it.preset, o.preset)
            row["action"], row["error"] = "fail", str(exc)
        if o.log_format == "jsonl":
            print(json.dumps(row, ensure_ascii=False), flush=True)
        else:
            extra = f"  ERROR: {row['error']}" if row["error"] else ""
            frames = row["frames"] if row["frames"] is not None else "?"
            print(f"{it.index:5d}  {row['output']}  seed {it.seed}  {it.seconds:g}s  {frames} frames  "
                  f"preset {row['preset']}  shard {row['shard']}  process {row['process']}  {row['action']}{extra}",
                  flush=True)
    print(f"tokentrim: dry run: {len(mine)} item(s) for {where}; nothing loaded or written", file=sys.stderr)


def _finished(o: Options, it: Item, done: dict, shash: str) -> bool:
    prev = done.get(it.index)
    return (prev is not None and prev.get("status") == "ok" and prev.get("settings_hash") == shash
            and prev.get("output") == it.name + ".mp4" and (o.out_dir / (it.name + ".mp4")).is_file())


def _would_replace(o: Options, it: Item, presets: Presets, done: dict) -> bool:
    """The item's video exists and would be generated again (not skipped by --resume), without --overwrite."""
    if o.overwrite or not (o.out_dir / (it.name + ".mp4")).exists():
        return False
    if not o.resume:
        return True
    try:
        cfg = presets.resolve(presets.ref(it.preset), it.sets).config
    except TokentrimError:
        return False  # the item fails before writing anything
    return not _finished(o, it, done, settings_hash(cfg, it.prompt, it.seconds, it.seed))


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run_item(o: Options, it: Item, presets: Presets, report: Reporter, manifest: Path, done: dict, where: str,
              pos: int, total: int, procs: Processes) -> str:
    import datetime as _dt

    import torch

    from .job import Job, run_job, signals_deferred
    from .progress import make_display

    out = o.out_dir / (it.name + ".mp4")
    tag = f"[{pos + 1}/{total}] item {it.index} (line {it.line})"
    t0 = time.perf_counter()
    preset, shash, result, error, key = None, None, None, None, None
    try:
        try:
            preset = presets.resolve(presets.ref(it.preset), it.sets)
        except ConfigError as exc:
            if not it.sets:
                raise
            raise ConfigError(f"item set {it.sets}: {exc}") from None
        shash = settings_hash(preset.config, it.prompt, it.seconds, it.seed)
        if o.resume and _finished(o, it, done, shash):
            report.event("item_skipped", f"tokentrim: {tag}: skipped, already done: {out}", index=it.index,
                         output=str(out))
            return "skipped"
        report.event("item", f"tokentrim: {tag}: {out.name}", index=it.index, output=str(out), seed=it.seed,
                     seconds=it.seconds, preset=preset.name, prompt=it.prompt)
        key = presets.loader_key(preset)
        loader = presets.loader(preset)
        extra = {"batch": {"index": it.index, "line": it.line, "prompts": str(o.prompts), "settings_hash": shash,
                           "where": where}}
        result = run_job(Job(it.prompt, it.seconds, it.seed, out, o.overwrite), preset, loader,
                         make_display(o.quiet, o.log_format), extra)
        status, error = result.status, result.error
    except KeyboardInterrupt:
        raise
    except TokentrimError as exc:
        status, error = "failed", str(exc)
    except torch.OutOfMemoryError as exc:
        status, error = "failed", f"out of memory: {str(exc).splitlines()[0] if str(exc) else ''}"
    except Exception as exc:  # noqa: BLE001 - one item's problem never stops the batch
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    if shash is None:
        shash = settings_hash(None, it.prompt, it.seconds, it.seed,
                              fallback={"preset": presets.ref(it.preset), "cli_sets": presets.cli_sets, "sets": it.sets})
    video = result.video if result is not None else None
    record = {
        "index": it.index, "line": it.line, "prompt": it.prompt,
        "output": video.name if video else None,
        "sidecar": result.sidecar.name if result is not None and result.sidecar.exists() else None,
        "seed": it.seed, "status": status, "error": error, "seconds": it.seconds,
        "settings_hash": shash,
        "preset": preset.name if preset is not None else _preset_label(it.preset, o.preset),
        "frames_written": result.frames_written if result is not None else 0,
        "elapsed": round(time.perf_counter() - t0, 3),
        "where": where,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with signals_deferred():
        append_line(manifest, record)
    if status != "ok":
        report.error(f"tokentrim: {tag} {status}: {error}", index=it.index, status=status, error=error)
    if status == "failed":
        if error and error.startswith("out of memory"):
            presets.drop_other_loaders(key)  # idle models of other presets go too
        _free_memory()
    return status
