"""Streaming MP4 output that never leaves an unplayable file behind.

Frames go to ffmpeg (imageio-ffmpeg's bundled binary, libx264, yuv420p) through a pipe as they are decoded, into
a hidden temporary file. ``finish`` lets ffmpeg finish that file; ``publish`` stream-copies it to its final name
with the run's metadata in the ``comment`` tag and the index moved to the front (+faststart); ``salvage`` keeps
the temporary file as it is when that copy cannot be made (a full disk), if it plays. Which name a run ends under
is decided by ``outputs.py``. ffmpeg runs in its own process group, so a Ctrl-C in the terminal reaches only us
and we get to finish the file. Its errors become an OSError naming the video (errno from ffmpeg's message, e.g.
ENOSPC), never lines of its own on our stderr.

A writer with a ``prefix`` (``generate --extend``) publishes that MP4's frames, stream-copied, followed by its own:
:func:`concat_copy` joins H.264 MP4s without re-encoding when their parameter sets match
(:func:`h264_parameter_sets`); ``frames`` then counts the prefix's frames too. ``salvage`` keeps only the
writer's own frames.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import threading
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import imageio_ffmpeg
import numpy as np

from .ffmpeg import ffmpeg_exe

# what ffmpeg prints for each errno it reports (the C library's strerror)
FFMPEG_ERRNO = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES}


def _ffmpeg_error(stderr: str, path: Path, what: str) -> OSError:
    """An OSError for a failed ffmpeg, with the errno its message names (EIO when it names none)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for text, code in FFMPEG_ERRNO.items():
        if text in stderr:
            return OSError(code, os.strerror(code), str(path))
    return OSError(errno.EIO, f"ffmpeg failed {what}: {lines[-1] if lines else 'no message'}", str(path))


def concat_copy(parts: list[Path], target: Path, comment: str | None = None) -> None:
    """Join the video streams of MP4 ``parts`` into ``target`` without re-encoding (ffmpeg's concat demuxer,
    ``-c copy``, +faststart), with ``comment`` as its metadata. The parts must be one codec with the same
    parameters (H.264: the same SPS / PPS, see :func:`h264_parameter_sets`); ffmpeg does not check that."""
    target = Path(target)
    listing = target.with_name(f".{target.stem}.{os.getpid()}.concat.txt")
    lines = ["ffconcat version 1.0"] + ["file '" + str(Path(p).absolute()).replace("'", "'\\''") + "'" for p in parts]
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        cmd = [ffmpeg_exe(), "-y", "-nostdin", "-v", "error", "-f", "concat", "-safe", "0",
               "-i", str(listing), "-map", "0:v:0", "-c", "copy"]
        cmd += ["-metadata", f"comment={comment}"] if comment is not None else []
        cmd += ["-movflags", "+faststart", "-f", "mp4", str(target)]
        done = subprocess.run(cmd, capture_output=True, start_new_session=True)
    finally:
        listing.unlink(missing_ok=True)
    if done.returncode != 0:
        target.unlink(missing_ok=True)
        raise _ffmpeg_error(done.stderr.decode(errors="replace"), target, "joining the videos")


def h264_parameter_sets(path: Path) -> list[bytes] | None:
    """The SPS and PPS NAL units an H.264 MP4 starts with (None when it has none: not H.264, unreadable)."""
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c:v",
           "copy", "-bsf:v", "h264_mp4toannexb", "-frames:v", "1", "-f", "h264", "-"]
    done = subprocess.run(cmd, capture_output=True)
    if done.returncode != 0:
        return None
    units = [u.rstrip(b"\x00") for u in re.split(b"\x00\x00\x01", done.stdout)]
    found = [u for u in units if u and (u[0] & 0x1F) in (7, 8)]
    return found or None


class Mp4Writer:
    """``prefix``: an MP4 of ``prefix_frames`` frames of the same encoding that the video continues (a resumed
    run's partial video, an extended input); the frames written here follow it, and ``publish`` joins the two
    without re-encoding either. ``run``: the resumable run's fingerprint, written into the streaming file's comment
    (a partial video kept after a kill carries it)."""

    def __init__(  # noqa: PLR0913 - the encoder's settings, and the prefix it continues
            self, path: Path, width: int, height: int, fps: int, crf: int = 18, x264_preset: str = "medium",
            prefix: Path | None = None, prefix_frames: int = 0, run: str | None = None):
        self.path = Path(path)
        self.prefix, self.prefix_frames = (Path(prefix) if prefix else None), (prefix_frames if prefix else 0)
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp.mp4")
        self.staged = self.path.with_name(f".{self.path.stem}.{os.getpid()}.final.mp4")
        self.frames = self.prefix_frames  # in the published file: the prefix's, then those written here
        self.size = (width, height)
        cmd = [ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo",
               "-s", f"{width}x{height}", "-pix_fmt", "rgb24", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
               "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-v", "error", "-crf", str(crf), "-preset", x264_preset,
               # fragmented while streaming (a fragment per half second): a file cut short by a full disk or a
               # kill still plays up to its last whole fragment; ``publish`` makes a plain MP4 of it
               "-movflags", "+empty_moov+default_base_moof", "-frag_duration", "500000", "-f", "mp4", str(self.tmp)]
        if run is not None:  # the streaming file names its run: a resume recognises a killed run's video by it
            cmd[-3:-3] = ["-metadata", "comment=" + json.dumps({"tool": "tokentrim", "run": run})]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True)
        self._stderr = bytearray()
        self._drain = threading.Thread(target=self._read_stderr, name="tokentrim-ffmpeg-stderr", daemon=True)
        self._drain.start()
        self._error: OSError | None = None

    def _read_stderr(self) -> None:
        for chunk in iter(lambda: self._proc.stderr.read1(4096), b""):  # as it comes, not 4 KiB at a time
            self._stderr += chunk
            del self._stderr[:-16384]  # the end is what explains a failure

    def _failed(self) -> OSError:
        """ffmpeg stopped taking frames (or said it cannot write): wait for it and turn its message into an
        OSError."""
        try:
            self._proc.stdin.close()  # it may still be reading: let it finish what it can, then exit
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._drain.join(timeout=5)
        self._error = _ffmpeg_error(self._stderr.decode(errors="replace"), self.path, "encoding")
        return self._error

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames of shape (F, H, W, 3)."""
        if self._error is not None:
            raise self._error
        if self._proc.poll() is not None or self._stderr_names_errno():  # stop at once, not a pipe buffer later
            raise self._failed()
        for frame in frames:
            try:
                self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
            except (BrokenPipeError, OSError, ValueError):
                raise self._failed() from None
            self.frames += 1

    def _stderr_names_errno(self) -> bool:
        """ffmpeg said it cannot write its output (a full disk, a read-only folder); it may go on reading frames
        that it then drops, so the run must stop now."""
        return bool(self._stderr) and any(text.encode() in self._stderr for text in FFMPEG_ERRNO)

    @property
    def written(self) -> int:
        """Frames sent to ffmpeg by this writer (the prefix's not included)."""
        return self.frames - self.prefix_frames

    def finish(self) -> bool:
        """Let ffmpeg finish the temporary file; True when it holds a video (False: no frame was written).
        Raises OSError when ffmpeg failed (the file may still be partly playable: see ``salvage``)."""
        if self._proc.returncode is None:
            try:
                self._proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self._proc.wait()
            self._drain.join(timeout=5)
            if self._proc.returncode != 0 and self._error is None:
                self._error = _ffmpeg_error(self._stderr.decode(errors="replace"), self.path, "finishing the video")
        if self.written == 0:  # nothing new to keep, whatever ffmpeg said about an empty input
            return self.prefix is not None
        if self._error is not None:
            raise self._error
        return True

    def publish(self, comment: str, target: Path) -> None:
        """Stream-copy the finished temporary file (after the prefix, if any) to ``target`` with ``comment`` (via a
        hidden staged file)."""
        if self.prefix is not None:
            concat_copy([self.prefix] + ([self.tmp] if self.written else []), self.staged, comment)
            joined = probe(self.staged)["frames"]
            if joined != self.frames:  # ffmpeg's concat drops what follows a damaged part without failing
                self.staged.unlink(missing_ok=True)
                raise OSError(errno.EIO, f"the joined video has {joined} frames, not {self.frames} "
                              f"({self.prefix.name}'s {self.prefix_frames} and {self.written} new)", str(target))
        else:
            cmd = [ffmpeg_exe(), "-y", "-v", "error", "-i", str(self.tmp), "-map", "0", "-c",
                   "copy", "-metadata", f"comment={comment}", "-movflags", "+faststart", "-f", "mp4", str(self.staged)]
            done = subprocess.run(cmd, capture_output=True, start_new_session=True)
            if done.returncode != 0:
                self.staged.unlink(missing_ok=True)
                raise _ffmpeg_error(done.stderr.decode(errors="replace"), target, "copying the video")
        try:
            os.replace(self.staged, target)
        except OSError:
            self.staged.unlink(missing_ok=True)
            raise
        self.tmp.unlink(missing_ok=True)

    def salvage(self, target: Path) -> tuple[Path | None, int]:
        """Keep the temporary file as ``target`` if ffmpeg can read frames back from it, else remove it.
        Returns (where it is or None, frames in it). When ``target`` is the prefix (a resumed run's partial video)
        it is kept as it is and the new frames are lost: it is what a later resume goes on from."""
        if self.prefix is not None and self.prefix == Path(target):
            self.tmp.unlink(missing_ok=True)
            return (self.prefix, self.prefix_frames) if self.prefix.is_file() else (None, 0)
        frames = probe(self.tmp)["frames"] if self.tmp.is_file() else None
        if frames:
            try:
                os.replace(self.tmp, target)
                return Path(target), frames
            except OSError:
                pass
        self.tmp.unlink(missing_ok=True)
        return None, 0

    def discard(self) -> None:
        """Remove whatever temporary file is left (after ``publish`` or ``salvage``, or instead of them)."""
        if self._proc.returncode is None:
            self._proc.kill()
            self._proc.wait()
        self.tmp.unlink(missing_ok=True)
        self.staged.unlink(missing_ok=True)


def read_frames(path: Path) -> Iterator:
    """imageio-ffmpeg's frame reader (its meta dict, then each frame's RGB bytes) with ffmpeg's ``-nostdin``.
    Without it ffmpeg 9 prints "Press [q] to stop" from another thread while it lists the streams; when the two
    interleave, imageio-ffmpeg never finds the stream line and fails after 10 s ("Could not load meta
    information"), which one suite run in about ten did."""
    ffmpeg_exe()  # the one imageio-ffmpeg runs: checked
    return imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", input_params=["-nostdin"])


def iter_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of ``path`` in order: uint8 (H, W, 3), one in memory at a time."""
    gen = read_frames(path)
    try:
        w, h = next(gen)["size"]
        for raw in gen:
            yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
    finally:
        gen.close()


def read_video(path: Path) -> np.ndarray:
    """Every frame of ``path``: uint8 (frames, H, W, 3)."""
    return np.stack(list(iter_frames(path)))


def _unescape_ffmetadata(text: str) -> dict:
    """Global tags of ``ffmpeg -f ffmetadata`` output: key=value lines, '\\' escapes '=', ';', '#', '\\' and the
    newline (a value that goes on over several lines); sections ([STREAM], [CHAPTER]) come after them."""
    tags, key, buf, escaped, in_key = {}, None, [], False, True
    lines = text.split("\n")
    if lines and lines[0].startswith(";FFMETADATA"):
        lines = lines[1:]
    text = "\n".join(lines)
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "=" and in_key:
            key, buf, in_key = "".join(buf), [], False
        elif ch == "\n":
            line = "".join(buf)
            if key is not None:
                tags.setdefault(key, line)
            elif line.startswith("["):
                break
            key, buf, in_key = None, [], True
        else:
            buf.append(ch)
    if key is not None:
        tags.setdefault(key, "".join(buf))
    return tags


def read_metadata(path: Path) -> dict:
    """Every global tag of a media file, complete (ffmpeg's log shortens long values)."""
    exe = ffmpeg_exe()
    out = subprocess.run([exe, "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"], capture_output=True)
    return _unescape_ffmetadata(out.stdout.decode("utf-8", errors="replace")) if out.returncode == 0 else {}


def probe(path: Path) -> dict:
    """Frame count, fps, size and comment of an MP4, read back with the bundled ffmpeg.

    The frames are the video packets its index lists, counted one line each (``framecrc``): ffmpeg 7.0 prints no
    ``frame=`` count for a stream copy, and this count reads the same on every ffmpeg imageio-ffmpeg ships."""
    exe = ffmpeg_exe()
    done = subprocess.run([exe, "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0", "-c", "copy",
                           "-f", "framecrc", "-"], capture_output=True, text=True, errors="replace")
    packets = sum(1 for line in done.stdout.splitlines() if line.strip() and not line.startswith("#"))
    info = {"frames": packets or None, "fps": None, "width": None, "height": None, "comment": None}
    for line in done.stderr.splitlines():
        s = line.strip()
        if "Video:" in s:
            m = re.search(r"(\d{2,5})x(\d{2,5})", s)
            if m:
                info["width"], info["height"] = int(m.group(1)), int(m.group(2))
            m = re.search(r"([\d.]+) fps", s)
            if m:
                info["fps"] = float(m.group(1))
    if info["frames"]:
        info["comment"] = read_metadata(path).get("comment")
    return info
