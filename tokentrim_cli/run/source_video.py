"""The video ``generate --extend`` continues: checked and probed before anything loads, then read frame by frame.

:func:`load_source` decodes the whole file once with the bundled ffmpeg (to count its frames exactly and to refuse
a file ffmpeg cannot read, reports errors in, or whose index lists frames that do not decode: a truncated copy)
and hashes it; nothing is kept in memory. A missing, empty, corrupt, truncated or unreadable file, one that
changes while it is read (still being written), one without a video stream or without frames, and one whose
frame rate is not the preset's, and a single frame at another rate (a still image: that is ``--image``), is a
ConfigError (exit 2) with one line saying what is wrong and what to do, before anything loads.

Frame rate: refused, not resampled, when it differs from ``video.fps`` (by more than 0.001): resampling would
change the input's own frames, and the output's first part is meant to be the input exactly. The message names
``--fps`` (when the input's rate is a whole number) and an ffmpeg command that converts the file.

Size: a frame that is not ``video.width`` x ``video.height`` is fitted like a start image (``image.fit``: resized
to cover, bicubic, centre-cropped); the output then holds the fitted frames, re-encoded (``fitted`` says how).

:meth:`SourceVideo.read` streams the (fitted) frames as uint8 (H, W, 3) arrays through imageio-ffmpeg's reader:
memory holds one frame at a time.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ConfigError
from .image import fit
from ..inputs import clip
from ..output.ffmpeg import ffmpeg_exe
from ..output.video import iter_frames, probe, read_frames


@dataclass(frozen=True)
class SourceVideo:
    path: Path
    sha256: str
    frames: int  # decoded frames (all of them go to the output)
    fps: float
    size: tuple[int, int]  # the file's (width, height)
    codec: str  # e.g. "h264"
    pix_fmt: str  # e.g. "yuv420p"
    target: tuple[int, int]  # (width, height) of the frames read (the preset's)
    fitted: dict | None = None  # how frames were fitted to ``target`` (None: already that size)

    def as_dict(self) -> dict:
        d = {"path": str(self.path), "sha256": self.sha256, "frames": self.frames, "fps": self.fps,
             "size": list(self.size), "codec": self.codec, "pix_fmt": self.pix_fmt}
        if self.fitted:
            d["fitted"] = self.fitted
        return d

    def read(self) -> Iterator[np.ndarray]:
        """Every frame in order, fitted to ``target``: uint8 (H, W, 3), one in memory at a time."""
        frames = iter_frames(self.path)
        try:
            for frame in frames:
                if frame.shape[1::-1] != self.target:  # (W, H)
                    from PIL import Image

                    frame = np.asarray(fit(Image.fromarray(frame), self.target[1], self.target[0])[0], np.uint8)
                yield frame
        finally:
            frames.close()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def count_frames(path: Path) -> tuple[int, str | None]:
    """(frames ffmpeg decodes, its first error line or None: decoding errors count even when ffmpeg exits 0, as
    it does on a file cut short at its end)."""
    exe = ffmpeg_exe()
    done = subprocess.run([exe, "-nostdin", "-v", "error", "-stats", "-i", str(path), "-map", "0:v:0", "-f", "null",
                           "-"], capture_output=True, text=True, errors="replace")
    frames, errors = 0, []
    for line in re.split(r"[\r\n]+", done.stderr):
        s = line.strip()
        if s.startswith("frame="):
            frames = int(s.split("frame=")[1].split()[0])
        elif s:
            errors.append(re.sub(r"^\[[^\]]*\]\s*", "", s))
    return frames, (errors[0] if errors else None)  # any decoding error: a damaged or truncated file


def load_source(path: Path, height: int, width: int, fps: int) -> SourceVideo:
    """Check and probe ``path`` for a preset making ``width`` x ``height`` at ``fps`` (module docstring)."""
    path = Path(path)
    what = f"--extend {path}"
    if not path.exists():
        raise ConfigError(f"{what} does not exist; give the path of an MP4 (or any video ffmpeg reads)")
    if not path.is_file():
        raise ConfigError(f"{what} is not a file; give the path of an MP4 (or any video ffmpeg reads)")
    try:
        if path.stat().st_size == 0:
            raise ConfigError(f"{what} is empty (0 bytes); give a finished video")
        sha = _sha256(path)
    except OSError as exc:
        raise ConfigError(f"{what} cannot be read ({exc.strerror or exc}); check its permissions") from None
    before = _stamp(path)
    frames, error = count_frames(path)
    if error is not None:
        raise ConfigError(f"{what} is not a readable video, damaged or cut short (ffmpeg: "
                          f"{clip(error, 100)[1:-1]}); give a finished, playable video")
    if not frames:
        raise ConfigError(f"{what} has no video frames; give a video with at least one frame")
    listed = probe(path)["frames"]
    if listed != frames:  # the index names frames whose data is not there (a truncated copy)
        raise ConfigError(f"{what} lists {listed} frames but only {frames} decode: it is cut short or damaged; give "
                          "a finished, playable video")
    if _stamp(path) != before:
        raise ConfigError(f"{what} changed while it was read (is it still being written?); wait until it is "
                          "finished, or copy it first")
    gen = read_frames(path)
    try:
        meta = next(gen)
    except (OSError, RuntimeError, StopIteration) as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ConfigError(f"{what} is not a readable video ({first.strip()}); give a finished, playable video") \
            from None
    finally:
        gen.close()
    rate = float(meta.get("fps") or 0)
    if abs(rate - fps) > 1e-3:
        if frames == 1:  # one frame has no rate of its own (ffmpeg reads a PNG as 25 fps)
            raise ConfigError(f"{what} is a single frame (a still image?), not a video to continue; to start from a "
                              f"picture give it with --image instead")
        hint = f"pass --fps {round(rate)} or " if rate and abs(rate - round(rate)) < 1e-3 else ""
        raise ConfigError(f"{what} is {rate:g} fps but the preset makes {fps} fps; {hint}convert it first: "
                          f"ffmpeg -i {path} -r {fps} {path.stem}-{fps}fps.mp4")
    size = tuple(int(v) for v in meta["size"])
    fitted = None
    if size != (width, height):
        from PIL import Image

        _, resized, box = fit(Image.new("RGB", size), height, width)
        fitted = {"resized": list(resized), "box": list(box), "mode": "cover, centre crop"}
    pix_fmt = str(meta.get("pix_fmt") or "").split("(")[0]
    return SourceVideo(path, sha, frames, rate, size, str(meta.get("codec") or ""), pix_fmt, (width, height), fitted)
