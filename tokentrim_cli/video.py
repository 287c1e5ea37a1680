"""Streaming MP4 output that never leaves an unplayable file behind.

Frames go to ffmpeg (imageio-ffmpeg's bundled binary, libx264, yuv420p) as they are decoded, into a hidden
temporary file. ``close`` lets ffmpeg finish the file, then stream-copies it to the target name with the run's
metadata in the ``comment`` tag and the index moved to the front (+faststart), and renames it into place. An
interrupted or failed run is closed the same way under ``NAME.partial.mp4``. ffmpeg runs in its own process
group, so a Ctrl-C in the terminal reaches only us and we get to finish the file.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np


def partial_path(path: Path) -> Path:
    return path.with_name(path.stem + ".partial" + path.suffix)


class Mp4Writer:
    def __init__(self, path: Path, width: int, height: int, fps: int, crf: int = 18, preset: str = "medium"):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp.mp4")
        self.frames = 0
        self.size = (width, height)
        self._gen = imageio_ffmpeg.write_frames(
            str(self.tmp),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-crf", str(crf), "-preset", preset],
        )
        self._gen.send(None)

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames of shape (F, H, W, 3)."""
        for frame in frames:
            self._gen.send(np.ascontiguousarray(frame))
            self.frames += 1

    def close(self, comment: str = "", partial: bool = False) -> Path | None:
        """Finish the file; return where it is (None when no frame was written)."""
        gen, self._gen = self._gen, None
        if gen is None:
            return None
        gen.close()
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        target = partial_path(self.path) if partial else self.path
        staged = target.with_name(f".{target.stem}.{os.getpid()}.final.mp4")
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-i", str(self.tmp), "-map", "0", "-c", "copy",
               "-metadata", f"comment={comment}", "-movflags", "+faststart", str(staged)]
        done = subprocess.run(cmd, capture_output=True, start_new_session=True)
        if done.returncode == 0:
            os.replace(staged, target)
            self.tmp.unlink(missing_ok=True)
        else:  # keep the playable file even if the metadata pass failed
            staged.unlink(missing_ok=True)
            os.replace(self.tmp, target)
        return target

    def abort(self) -> None:
        """Drop everything (used when a run fails before its first frame)."""
        self.close()
        self.tmp.unlink(missing_ok=True)


def probe(path: Path) -> dict:
    """Frame count, fps, size and comment of an MP4, read back with the bundled ffmpeg."""
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    out = subprocess.run([exe, "-hide_banner", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"],
                         capture_output=True, text=True).stderr
    info = {"frames": None, "fps": None, "width": None, "height": None, "comment": None}
    for line in out.splitlines():
        s = line.strip()
        if s.startswith("frame="):
            info["frames"] = int(s.split("frame=")[-1].split()[0])
        if s.startswith("comment") and ":" in s and info["comment"] is None:
            info["comment"] = s.split(":", 1)[1].strip()
        if "Video:" in s:
            m = re.search(r"(\d{2,5})x(\d{2,5})", s)
            if m:
                info["width"], info["height"] = int(m.group(1)), int(m.group(2))
            m = re.search(r"([\d.]+) fps", s)
            if m:
                info["fps"] = float(m.group(1))
    return info
