"""Which ffmpeg encodes and reads videos, and whether it can: :func:`ffmpeg_exe` is the one place the commands ask.

imageio-ffmpeg picks it: ``IMAGEIO_FFMPEG_EXE`` if set (not checked by imageio-ffmpeg), else its own binary (ffmpeg
7.0 or newer from the versions pyproject allows), else a system one. A missing or broken one would surface as a
traceback after the model has loaded, and an old one writes wrong files: ffmpeg 4.2's stream copy of our streaming
(fragmented) MP4 drops the last frame's duration, so a 16-frame video at 16 fps reads back as 0.94 s at 17.07 fps
and ``--extend`` / ``--resume`` refuse it. ffmpeg 5.1, 7.0 and 9.0 write it right. So the commands check first, in
one line, before anything loads.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess

import imageio_ffmpeg

from ..errors import ConfigError

OLDEST = 5  # the oldest major version accepted (4.2 writes MP4s one frame short; 5.1 and newer checked right)


def ffmpeg_exe() -> str:
    """The ffmpeg to run; ConfigError (one line, what to do) when there is none, it does not run, or it is older
    than ffmpeg 5. Checked once per executable and process (a ``-version`` call, tens of milliseconds)."""
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        raise ConfigError("no ffmpeg found (imageio-ffmpeg has no binary for this platform); install ffmpeg 5 or "
                          "newer, or set IMAGEIO_FFMPEG_EXE to one") from None
    return _checked(exe)


@functools.cache
def _checked(exe: str) -> str:
    where = f"{exe} (from IMAGEIO_FFMPEG_EXE)" if os.environ.get("IMAGEIO_FFMPEG_EXE") == exe else exe
    fix = ("unset IMAGEIO_FFMPEG_EXE to use imageio-ffmpeg's own, or point it at ffmpeg 5 or newer"
           if os.environ.get("IMAGEIO_FFMPEG_EXE") else "pip install -U imageio-ffmpeg")
    try:
        done = subprocess.run([exe, "-version"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise ConfigError(f"ffmpeg {where} does not run ({exc.strerror or exc}); {fix}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"ffmpeg {where} gave no answer to `-version` in 30 s; {fix}") from None
    first = done.stdout.decode(errors="replace").split("\n", 1)[0]
    if done.returncode != 0 or "version" not in first:
        raise ConfigError(f"{where} is not a working ffmpeg (`-version` exit {done.returncode}); {fix}")
    major = major_version(first)
    if major is not None and major < OLDEST:
        raise ConfigError(f"ffmpeg {first.split('version', 1)[1].split()[0]} at {where} is too old: its MP4s read "
                          f"back one frame short; {fix}")
    return exe


def major_version(line: str) -> int | None:
    """The major version in ``ffmpeg -version``'s first line: "ffmpeg version 4.2.2-static ...", "... n9.0.2-17-g..."
    or "... 5.1.9-0+deb12u1"; None for a build from git ("N-109876-g...") or anything else unknown."""
    m = re.search(r"version n?(\d+)\.\d+", line)
    return int(m.group(1)) if m else None
