"""The files of one run, handled as a transaction.

Why: a run can be killed, interrupted, hit a full disk or race another run to the same name, and none of that may
damage a finished video or leave a record that lies about it. So a run to ``DIR/NAME.mp4`` works under names of
its own, holds a lock for its whole life, and only a run that finished ok replaces the finished pair:

    .NAME.lock              flock (LOCK_EX|LOCK_NB) held by the run, PID inside; removed at the end (a kill leaves it,
                            unlocked: the kernel drops the lock)
    NAME.partial.json       the sidecar while running, rewritten atomically (via .NAME.partial.json.PID.tmp)
    .NAME.PID.tmp.mp4       ffmpeg's streaming output
    .NAME.PID.final.mp4     the stream copy with the metadata, renamed into place at the end
    ok:         NAME.mp4 then NAME.json replace the old pair; NAME.partial.* of earlier attempts are removed
    otherwise:  NAME.partial.mp4 (only if playable) + NAME.partial.json; NAME.mp4 / NAME.json are left alone

Temporary files of NAME whose owner no longer holds the lock are leftovers of a killed run: the next run to NAME
removes them and says so. A full disk or an unwritable folder ends the run with one line naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, TokentrimError
from .video import probe
from .write_guard import check, partial_path, run_targets, sidecar_path  # noqa: F401 - the names live here too

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

_DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n // scale} {unit}"
    return f"{n} bytes"


def free_space(path: Path) -> int | None:
    p = Path(path).absolute()
    for folder in (p, *p.parents):
        if folder.is_dir():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def disk_error(exc: BaseException, path: Path | str | None = None) -> str | None:
    """One line for a full disk / read-only / permission problem (None for any other error)."""
    if not isinstance(exc, OSError) or exc.errno not in _DISK_ERRORS:
        return None
    where = exc.filename or path
    text = _DISK_ERRORS[exc.errno] + (f" writing {where}" if where else "")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_space(Path(where)) if where else None
        return text + (f" ({_size(free)} free)" if free is not None else "") + "; free space or choose another --output"
    return text + "; choose another --output"


def error_text(exc: BaseException, path: Path | str | None = None) -> str:
    return disk_error(exc, path) or f"{type(exc).__name__}: {exc}"


def replace_file(path: Path, write: Callable[[Path], None]) -> None:
    """Make ``path`` by ``write(temporary)`` in its folder and a rename (never through a link at ``path``). A full
    disk, a read-only folder and the like become one line (TokentrimError, exit 1) and leave nothing behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TokentrimError(error_text(exc, path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def refuse_existing(videos: list[Path],
                    hint: str = "pass --overwrite to replace it or choose another --output") -> None:
    """ConfigError (exit 2) when any of ``videos`` exists: nothing is replaced without --overwrite."""
    found = [v for v in videos if Path(v).exists()]
    if len(found) == 1:
        raise ConfigError(f"{found[0]} exists; {hint}")
    if found:
        names = ", ".join(v.name for v in found[:5]) + (f" (and {len(found) - 5} more)" if len(found) > 5 else "")
        raise ConfigError(f"{len(found)} outputs exist in {found[0].parent}: {names}; {hint}")


class OutputBusy(ConfigError):
    """Another process holds the output's lock."""


class OutputLock:
    """``fcntl.flock`` on ``.NAME.lock`` for the whole run; the kernel releases it when the process dies."""

    def __init__(self, path: Path):
        self.path, self.fd = Path(path), None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self, video: Path) -> None:
        if fcntl is None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # no locks here (some NFS)
                    os.close(fd)
                    return
                if not isinstance(exc, BlockingIOError):
                    os.close(fd)
                    raise
                pid = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                who = f"process {pid}" if pid.isdigit() else "another process"
                raise OutputBusy(f"{video} is being written by {who} (lock {self.path}); wait for it to finish "
                                 "or choose another --output") from None
            try:  # the holder may have removed the file between our open and our lock: lock the new one
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:  # the lock holds without the PID (a full disk is reported by the sidecar's first write)
            pass

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked, so nobody locks the file we remove
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _playable(path: Path) -> bool:
    return bool(probe(path)["frames"])


@dataclass
class Verdict:
    """How a run ended, as its files are finished: the first disk error turns an ok run into a failed one."""

    status: str
    error: str | None

    def fail(self, exc: BaseException, path) -> None:
        if self.status == "ok":
            self.status = "failed"
        if self.error is None:
            self.error = error_text(exc, path)


class RunOutputs:
    """The files of one run to ``video`` (see the module docstring)."""

    def __init__(self, video: Path, overwrite: bool = False, inputs: tuple = ()):
        self.video = Path(video)
        self.inputs = tuple(inputs)  # write_guard.Input: files of the request that nothing here may replace
        self.name = self.video.stem
        self.sidecar = sidecar_path(self.video)
        self.partial_video = partial_path(self.video)
        self.partial_sidecar = partial_path(self.sidecar)
        self.running_sidecar = self.partial_sidecar
        self.overwrite = overwrite
        self.lock = OutputLock(self.video.with_name(f".{self.name}.lock"))

    # ------------------------------------------------------------------ before anything loads
    def open(self, message: Callable[[str], None]) -> None:
        """Refuse, lock, clean. Raises ConfigError (exit 2) with one line; nothing is written then."""
        if self.name.lower().endswith(".partial"):
            raise ConfigError(f"--output {self.video}: NAME.partial.mp4 is where an unfinished run's video goes; "
                              "choose another name")
        check(run_targets(self.video), self.overwrite, self.inputs)  # every path, before anything is written
        try:
            self.video.parent.mkdir(parents=True, exist_ok=True)
            self.lock.acquire(self.video)
        except OSError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(error_text(exc, self.video.parent)) from None
        try:
            if not self.overwrite:  # it may have been finished by a run that held the lock until just now
                refuse_existing([self.video])
            if self.lock.held:  # without a lock, another run's temporaries cannot be told from a dead one's
                self._clean_stale(message)
        except BaseException:
            self.close()
            raise

    def _clean_stale(self, message: Callable[[str], None]) -> None:
        n = re.escape(self.name)
        temp = re.compile(rf"\.{n}(\.partial)?\.(\d+)\.(tmp|final)\.mp4|\.{n}(\.partial)?\.json\.(\d+)\.tmp")
        removed, pids, kept = [], set(), None
        try:
            names = sorted(os.listdir(self.video.parent), key=lambda e: _mtime(self.video.parent / e), reverse=True)
        except OSError:
            names = []
        for entry in names:  # newest first
            m = temp.fullmatch(entry)
            if m:
                pids.add(m.group(2) or m.group(5))
                path = self.video.parent / entry
                if kept is None and not m.group(1) and m.group(3) == "tmp" and _playable(path):
                    try:  # a killed run's streaming file plays up to its last fragment: keep it as its partial video
                        os.replace(path, self.partial_video)
                        kept = f"kept {entry} as {self.partial_video.name}"
                        continue
                    except OSError:
                        pass
                path.unlink(missing_ok=True)
                removed.append(entry)
        said = []
        for side in (self.sidecar, self.partial_sidecar):
            try:
                if json.loads(side.read_text(encoding="utf-8")).get("status") == "running":
                    said.append(side.name)
            except (OSError, ValueError, AttributeError):
                pass
        if self.sidecar.name in said:  # an older layout's record of a killed run, describing no video
            self.sidecar.unlink(missing_ok=True)
            removed.append(self.sidecar.name)
        if removed or said or kept:
            who = f" (PID {', '.join(sorted(pids))})" if pids else ""
            text = f"tokentrim: cleaned up after a killed run to {self.video.name}{who}: "
            text += "; ".join(([kept] if kept else []) + ([f"removed {', '.join(removed)}"] if removed else [])) \
                or "nothing to remove"
            text += f"; {', '.join(said)} said running" if said else ""
            message(text)

    # ------------------------------------------------------------------ at the end
    def finish(self, writer, sidecar, status: str, error: str | None) -> tuple[str, str | None, Path | None]:
        """Finish the video and the sidecar under their final names; returns (status, error, video). Disk errors
        turn an ok run into a failed one (the first error is the one reported); no temporary file stays."""
        verdict = Verdict(status, error)
        try:
            playable = writer.finish()
        except OSError as exc:
            verdict.fail(exc, writer.tmp)
            playable = False
        if verdict.status == "ok" and self._publish(writer, sidecar, playable, verdict):
            return "ok", None, self.video
        video = self._publish_partial(writer, sidecar, playable, verdict)
        self._write_partial_sidecar(sidecar, verdict)
        return verdict.status, verdict.error, video

    def _publish(self, writer, sidecar, playable: bool, verdict: "Verdict") -> bool:
        """The finished pair under its final names (True), or the error in ``verdict`` (False)."""
        try:
            if not playable:
                raise OSError(errno.EIO, "the encoder produced no video", str(writer.tmp))
            sidecar.path = self.sidecar
            sidecar.data.update(status="ok", video=str(self.video))
            staged = sidecar.stage()
            try:
                writer.publish(sidecar.short(), self.video)
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
            os.replace(staged, self.sidecar)
        except OSError as exc:
            verdict.fail(exc, getattr(exc, "filename", None))
            return False
        for stale in (self.partial_video, self.partial_sidecar):
            stale.unlink(missing_ok=True)
        writer.discard()
        return True

    def _publish_partial(self, writer, sidecar, playable: bool, verdict: "Verdict") -> Path | None:
        """What was encoded, as ``NAME.partial.mp4`` (or salvaged, or nothing); the sidecar keeps the records of
        the blocks in it."""
        sidecar.path = self.partial_sidecar
        sidecar.data.update(status=verdict.status, error=verdict.error, video=None)
        video, in_video = None, writer.frames  # frames of the partial video, counted as the block records count
        if writer.frames:
            try:
                if not playable:
                    raise OSError(errno.EIO, "the encoder did not finish the file", str(writer.tmp))
                writer.publish(sidecar.short(), self.partial_video)
                video = self.partial_video
            except OSError as exc:
                verdict.fail(exc, getattr(exc, "filename", None))
                video, frames = writer.salvage(self.partial_video)  # playable without its metadata, or nothing
                sidecar.data["frames_written"] = frames
                in_video = frames + (writer.prefix_frames if writer.prefix is not None and video != writer.prefix
                                     else 0)  # a salvaged file holds the writer's own frames only
        writer.discard()
        if video is None:
            self.partial_video.unlink(missing_ok=True)  # an earlier attempt's: it would not match this sidecar
        _keep_blocks_in(sidecar, in_video if video is not None else 0)
        sidecar.data.update(status=verdict.status, error=verdict.error, video=str(video) if video else None)
        return video

    def _write_partial_sidecar(self, sidecar, verdict: "Verdict") -> None:
        try:
            sidecar.write()
        except OSError as exc:  # if it stays `running`, the next run to NAME says so and cleans up
            verdict.fail(exc, sidecar.path)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                sidecar.data["error"] = verdict.error
                sidecar.write_in_place()

    def close(self) -> None:
        self.lock.release()


def _keep_blocks_in(sidecar, limit: int) -> None:
    """An unfinished run's record lists only the blocks whose frames are in its partial video (``limit`` frames,
    counted as the records count them): frames sent to the encoder that never reached the disk (a full disk) are
    not described as written."""
    blocks = sidecar.data.get("blocks")
    if isinstance(blocks, list):
        blocks[:] = [b for b in blocks if (b.get("frames_written") or 0) <= limit]


def _metadata(video: Path, comment: str | None) -> tuple[dict | None, dict | None, Path | None]:
    """(the MP4 comment's JSON, the sidecar that names this video, its path): the one the metadata names,
    NAME.json or NAME.partial.json; None for what is not there."""
    video = Path(video)
    meta = None
    if comment:
        try:
            meta = json.loads(comment)
        except ValueError:
            meta = None
    meta = meta if isinstance(meta, dict) else None
    names = [meta.get("sidecar")] if meta and isinstance(meta.get("sidecar"), str) else []
    for name in dict.fromkeys(names + [sidecar_path(video).name, partial_path(sidecar_path(video)).name]):
        side = video.with_name(Path(name).name)
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("video") and Path(data["video"]).name == video.name:
            return meta, data, side
    return meta, None, None


def find_prompt(video: Path, comment: str | None) -> tuple[str | None, str | None]:
    """The prompt of a video and where it came from: its metadata, else a sidecar that names this video;
    (None, None) when there is none."""
    meta, data, side = _metadata(video, comment)
    if meta and isinstance(meta.get("prompt"), str) and meta["prompt"].strip():
        return meta["prompt"], "metadata"
    if data and isinstance(data.get("prompt"), str):
        return data["prompt"], f"sidecar {side}"
    return None, None


def find_timeline(video: Path, comment: str | None) -> list[tuple[float, str]] | None:
    """The (start seconds, prompt) of each prompt of a timeline video (None for a one-prompt video): the
    sidecar's switches, snapped to blocks, else the metadata's requested times."""
    meta, data, _ = _metadata(video, comment)
    if data and isinstance(data.get("timeline"), list) and len(data["timeline"]) > 1:
        starts = {s["entry"]: s["snapped"] for s in data.get("switches", [])}
        return [(0.0 if k == 0 else float(starts.get(k, e["start"])), e["prompt"])
                for k, e in enumerate(data["timeline"])]
    if meta and isinstance(meta.get("timeline"), list) and len(meta["timeline"]) > 1:
        return [(float(start), prompt) for start, prompt in meta["timeline"]]
    return None
