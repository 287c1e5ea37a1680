"""What a resume verifies its partial video by: coarse thumbnails of the last frames a run wrote.

A run's writer keeps, for its last ``KEEP`` frames, a ``GRID`` x ``GRID`` block-mean thumbnail of each (uint8,
computed from the frames before encoding); the resumable state saves them with the index of the first. A resume
decodes the same frames of ``NAME.partial.mp4`` (ffmpeg, area-scaled to the same grid) and refuses the partial
when they differ by more than ``TOLERANCE`` levels on average: a foreign video put in its place (another seed's,
another run's) is not joined. Lossy H.264 (yuv420p) at the presets' crf moves a thumbnail by 1-3 levels.
"""

from __future__ import annotations

import subprocess
from collections import deque
from pathlib import Path

import numpy as np

GRID = 16
KEEP = 16
TOLERANCE = 4.5  # mean absolute difference, in 8-bit levels, the thumbnails may have after encoding (pure noise
# at crf 18: 2.9; another seed's video of the tiny preset, whose pictures are alike: 7.9)


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """(GRID, GRID, 3) uint8 block means of a (H, W, 3) uint8 frame (H, W multiples of GRID)."""
    h, w, _ = frame.shape
    cells = frame.reshape(GRID, h // GRID, GRID, w // GRID, 3).astype(np.float32)
    return np.rint(cells.mean(axis=(1, 3))).astype(np.uint8)


class Thumbnails:
    """The last KEEP frames' thumbnails, by frame index."""

    def __init__(self):
        self._last: deque = deque(maxlen=KEEP)

    def add(self, index: int, frame: np.ndarray) -> None:
        if frame.shape[0] % GRID == 0 and frame.shape[1] % GRID == 0:
            self._last.append((index, thumbnail(frame)))

    def state(self) -> dict | None:
        """{"first": frame index, "thumbs": (n, GRID, GRID, 3) uint8} of the last contiguous frames, or None."""
        if not self._last:
            return None
        return {"first": self._last[0][0], "thumbs": np.stack([t for _, t in self._last])}


def decoded_thumbnails(video: Path, first: int, count: int) -> np.ndarray | None:
    """Thumbnails of frames ``first`` .. ``first + count - 1`` of ``video``, None if unreadable."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(video), "-map", "0:v:0", "-vf",
           f"select=between(n\\,{first}\\,{first + count - 1}),scale={GRID}:{GRID}:flags=area", "-fps_mode",
           "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    done = subprocess.run(cmd, capture_output=True)
    n = len(done.stdout) // (GRID * GRID * 3)
    if done.returncode != 0 or n < count:
        return None
    return np.frombuffer(done.stdout[: count * GRID * GRID * 3], np.uint8).reshape(count, GRID, GRID, 3)


def partial_problem(video: Path, check: dict | None) -> str | None:
    """Why ``video``'s frames are not those a state recorded (None: they are, or the state recorded none)."""
    if not check:
        return None
    thumbs = np.asarray(check["thumbs"])
    got = decoded_thumbnails(video, int(check["first"]), len(thumbs))
    if got is None:
        return f"its frames {check['first']} to {int(check['first']) + len(thumbs) - 1} cannot be read"
    diff = np.abs(got.astype(np.float32) - thumbs.astype(np.float32)).mean(axis=(1, 2, 3))
    if diff.mean() > TOLERANCE:
        return (f"its frames {check['first']} to {int(check['first']) + len(thumbs) - 1} are off by "
                f"{diff.mean():.1f} levels on average from those the state recorded: it is another video")
    return None
