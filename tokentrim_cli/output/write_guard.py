"""Every path a command will write, decided in one place and checked before anything loads.

The rule: tokentrim writes only files it created or was told to replace (``--overwrite``). A command lists its
:class:`Target` s (``run_targets`` for a video run, ``evaluate_targets`` for ``evaluate``) and the files it reads
(:class:`Input`), and :func:`check` refuses with one line (ConfigError, exit 2), before anything is written:

- a target that is one of the command's inputs (the sidecar of ``-o script.mp4`` is ``--timeline script.json``;
  a batch item named like its prompts file; ``evaluate v.mp4 -o v.mp4``): always, --overwrite cannot help;
- a target that is a folder where a file goes (or a file where a folder goes), a device (``/dev/full``), a FIFO, or
  a symbolic link where a folder goes: always, the message says to move it or choose another name;
- a target whose folder cannot be made or written (a file in the way, read-only, no permission): always;
- a target that exists and is not tokentrim's own (``owned``: a sidecar with ``"tool": "tokentrim"``, a state folder
  with its marker file, ...), unless ``--overwrite`` says so; a state folder tokentrim did not make is never removed.

Writers never write through a symbolic link: files are replaced by rename (the link goes, its target stays).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import ConfigError

STATE_MARKER = ".tokentrim-state"  # in every NAME.state/ tokentrim makes; a folder without it is not ours
_LEGACY_STATE = re.compile(r"state\.pt|state\.json|journal-\d+-\d+\.pt|\..+\.tmp")


OTHER = "choose another --output"


class PathRefused(ConfigError):
    """A path the command would write is refused (see the module docstring); nothing has been written."""


@dataclass(frozen=True)
class Input:
    """A file the command reads, which nothing it writes may replace. ``role``: how the user named it
    (``--timeline file``, ``the prompts file``, ``the video``)."""

    path: Path
    role: str
    video_may_replace: bool = False  # with --overwrite, the finished video may take its place (``--extend x.mp4
    # -o x.mp4``: the input is read to the end before the finished video is renamed over it)


@dataclass(frozen=True)
class Target:
    """One path a command writes. ``folder``: a folder (NAME.state/) rather than a file; ``owned(path)``: True when
    what is there now is tokentrim's own and may be replaced without --overwrite."""

    path: Path
    role: str
    owned: Callable[[Path], bool] = lambda p: False
    folder: bool = False
    renamed: bool = True  # replaced by a rename (a link there goes, its target stays); False: opened in place


def sidecar_path(video: Path) -> Path:
    """NAME.mp4 -> NAME.json"""
    return Path(video).with_suffix(".json")


def partial_path(path: Path) -> Path:
    """NAME.mp4 -> NAME.partial.mp4 (and NAME.json -> NAME.partial.json)."""
    path = Path(path)
    return path.with_name(path.stem + ".partial" + path.suffix)


# ---------------------------------------------------------------------------------------------- recognisers
def tokentrim_json(path: Path, kind: str | None = None) -> bool:
    """A JSON object tokentrim wrote: ``"tool": "tokentrim"`` (and ``"kind": kind`` when given)."""
    try:
        if Path(path).stat().st_size > 64 * 2**20:
            return False
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == "tokentrim" and (kind is None or data.get("kind") == kind)


def metrics_json(path: Path) -> bool:
    """``evaluate``'s JSON: marked since this version; older ones are known by their keys."""
    if tokentrim_json(path, "metrics"):
        return True
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).stat().st_size < 64 * 2**20 else None
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "tool" not in data and {"summary", "caption_source", "video"} <= set(data)


PLOT_SOFTWARE = "tokentrim evaluate"


def tokentrim_plot(path: Path) -> bool:
    """A PNG ``evaluate`` drew (its ``Software`` text chunk)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return str(getattr(im, "text", {}).get("Software", "")).startswith(PLOT_SOFTWARE)
    except Exception:  # noqa: BLE001 - not a picture PIL reads: not ours
        return False


def tokentrim_state(folder: Path) -> bool:
    """A NAME.state/ folder tokentrim made: it has the marker, or (made before the marker existed) holds nothing
    but state files and has a ``state.json`` or ``state.pt``."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / STATE_MARKER).is_file():
        return True
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return bool({"state.pt", "state.json"} & set(names)) and all(_LEGACY_STATE.fullmatch(n) for n in names)


def mark_state(folder: Path) -> None:
    """Make ``folder`` (a NAME.state/) with its marker, so that later runs know it is tokentrim's."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / STATE_MARKER
    if not marker.is_file():
        marker.write_text("tokentrim: a resumable run's state; removed when the run finishes\n", encoding="utf-8")


def tokentrim_lock(path: Path) -> bool:
    """A lock file tokentrim left: a small regular file holding a PID (or nothing)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 32:
            return False
        return re.fullmatch(rb"\d*\s*", Path(path).read_bytes()) is not None
    except OSError:
        return False


def tokentrim_video(path: Path) -> bool:
    """An MP4 whose metadata says tokentrim made it."""
    from .video import probe

    try:
        comment = probe(path).get("comment")
        data = json.loads(comment) if comment else None
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == "tokentrim"


# ---------------------------------------------------------------------------------------------- target lists
def run_targets(video: Path, state: bool = True) -> list[Target]:
    """What a run to ``video`` (NAME.mp4) may write: the finished pair, the unfinished pair, the state folder and
    the lock (the hidden temporaries carry the PID and are never anybody else's)."""
    video = Path(video)
    side, part_side = sidecar_path(video), partial_path(sidecar_path(video))
    part_video = partial_path(video)

    def partial_owned(p: Path) -> bool:  # the partial of an earlier attempt: named by its record, or marked
        return tokentrim_json(part_side) or tokentrim_video(p)

    targets = [Target(video, "the video"),
               Target(side, "the sidecar", tokentrim_json),
               Target(part_video, "the unfinished video", partial_owned),
               Target(part_side, "the unfinished sidecar", tokentrim_json),
               Target(video.with_name(f".{video.stem}.lock"), "the lock", tokentrim_lock, renamed=False)]
    if state:
        targets.append(Target(video.with_name(video.stem + ".state"), "the state folder", tokentrim_state, True))
    return targets


def evaluate_targets(metrics: Path) -> list[Target]:
    """``evaluate``'s JSON and its plot (the same name with .png). A plot is ``evaluate``'s when it says so or when
    the JSON beside it is (a second evaluation replaces both)."""
    metrics = Path(metrics)
    return [Target(metrics, "the metrics JSON", metrics_json),
            Target(metrics.with_suffix(".png"), "the plot", lambda p: tokentrim_plot(p) or metrics_json(metrics))]


# ---------------------------------------------------------------------------------------------- the check
def _same(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def _folder_problem(path: Path, other: str) -> str | None:
    """Why no file can be made at ``path``: a parent that is a file, or a folder that cannot be written."""
    parent = Path(os.path.abspath(path)).parent
    for folder in (parent, *parent.parents):
        if not os.path.lexists(folder):
            continue
        if not folder.is_dir():
            return f"cannot make the folder {parent}: {folder} is a file; {other}"
        try:
            if os.statvfs(folder).f_flag & os.ST_RDONLY:
                return f"read-only file system writing {path}; {other}"
        except OSError:
            pass
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"permission denied writing {path}; {other}"
        return None
    return None


def problem(target: Target, overwrite: bool, inputs: Iterable[Input] = (),
            other: str = OTHER) -> tuple[str, bool] | None:
    """(why ``target`` cannot be written, whether --overwrite would get past it), or None when it can be."""
    path = target.path
    for given in inputs:
        if given.path is not None and _same(path, given.path):
            if given.video_may_replace and target.role == "the video":
                continue  # it exists: replaced only with --overwrite, below
            return f"{target.role} {path} would replace {given.role}; {other}", False
    if not os.path.lexists(path):
        why = _folder_problem(path, other)
        return (why, False) if why else None
    st = os.lstat(path)
    if target.folder:
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            what = "a link" if stat.S_ISLNK(st.st_mode) else "not a folder"
            return f"{path} ({target.role}) is {what}; move it away or {other}", False
        if not target.owned(path):
            return (f"{path} is a folder tokentrim did not make (no {STATE_MARKER} in it); it is where "
                    f"{target.role} goes: move it away or {other}"), False
        return None
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a folder, not a file; it is where {target.role} goes: {other}", False
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        return f"{path} is not a regular file; {other}", False
    if stat.S_ISLNK(st.st_mode) and not target.renamed:
        return f"{path} ({target.role}) is a link; move it away or {other}", False
    why = _folder_problem(path, other)
    if why:
        return why, False
    if overwrite or (not stat.S_ISLNK(st.st_mode) and target.owned(path)):
        return None
    made = "" if target.role == "the video" else f" and tokentrim did not make it (it is where {target.role} goes)"
    return f"{path} exists{made}; pass --overwrite to replace it or {other}", True


def check(targets: Iterable[Target], overwrite: bool, inputs: Iterable[Input] = (), where: str = "",
          other: str = OTHER) -> None:
    """Raise :class:`PathRefused` (one line) for the first target that cannot be written (see the module
    docstring); ``where`` prefixes the line (a batch item's line number); ``other`` says how to name
    another path."""
    inputs = list(inputs)
    for target in targets:
        found = problem(target, overwrite, inputs, other)
        if found:
            raise PathRefused(where + found[0])


def check_generate(out: Path, overwrite: bool, resume: bool, inputs: dict) -> None:
    """Every path a run to ``out`` writes, before anything loads: none may be one of the run's input files
    ({path or None: option}); with --resume a finished video is the run's own refusal to make."""
    given = [Input(path, f"the {option} file", option == "--extend") for path, option in inputs.items()
             if path is not None]
    check([t for t in run_targets(out) if not (resume and t.path == out)], overwrite, given)


def check_evaluate(video: Path, output: Path | None, overwrite: bool) -> Path:
    """``evaluate``'s JSON (``output`` or VIDEO.metrics.json, returned) and plot may replace neither the video nor
    its sidecar (whatever --overwrite says), nor a file an earlier evaluation did not make (without --overwrite)."""
    out = Path(output) if output is not None else Path(video).with_suffix(".metrics.json")
    if out.suffix.lower() != ".json":
        raise ConfigError(f"--output must end in .json (the plot goes next to it as .png), got {out}")
    inputs = [Input(video, "the video being measured")]
    if sidecar_path(video).is_file():
        inputs.append(Input(sidecar_path(video), "the video's sidecar"))
    check(evaluate_targets(out), overwrite, inputs)
    return out
