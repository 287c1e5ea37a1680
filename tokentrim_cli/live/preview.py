"""The page's copy of the video: the frames the run writes, encoded again for playing as they come.

The video file keeps the encoder settings of any run (so a replay makes the same file); its encoder looks ahead
tens of frames before it writes one. The preview is a second ffmpeg (libx264, ``-tune zerolatency``: no
look-ahead, no B-frames) writing a fragmented MP4 to a pipe, one fragment per frame: a frame reaches the page
as soon as the next one is encoded (``frag_every_frame``: a fragment is closed when the next frame arrives), so
the page lags the file by at most the frame that ends a block. A keyframe every two seconds lets a viewer join
mid-run. The fragments go to a :class:`~.feed.Feed`; the init segment (ftyp + moov) is kept for every new
viewer, with the codec string Media Source Extensions need (``avc1.PPCCLL``, from its avcC box).

Frames wait in a bounded queue; when the encoder falls behind, whole batches are dropped (the preview skips,
the file never does) and the writer thread is never held up.
"""

from __future__ import annotations

import queue
import struct
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..output.ffmpeg import ffmpeg_exe
from .feed import Feed


@dataclass(frozen=True)
class Fragment:
    data: bytes  # moof + mdat
    key: bool  # starts with an IDR frame: a viewer may begin here


def codec_string(init: bytes) -> str | None:
    """``avc1.PPCCLL`` from the avcC box of an init segment (profile, constraints, level), None without one."""
    at = init.find(b"avcC")
    if at < 0 or len(init) < at + 8:
        return None
    profile, compat, level = init[at + 5], init[at + 6], init[at + 7]
    return f"avc1.{profile:02x}{compat:02x}{level:02x}"


def is_key(mdat: bytes) -> bool:
    """Whether an mdat's H.264 samples (4-byte length prefixed NAL units) hold an IDR slice (type 5)."""
    at = 8
    while at + 5 <= len(mdat):
        (size,) = struct.unpack(">I", mdat[at:at + 4])
        if mdat[at + 4] & 0x1F == 5:
            return True
        at += 4 + size
    return False


def boxes(stream):
    """(type, bytes) of each top-level MP4 box read from a binary stream, as they complete."""
    buf = bytearray()
    while True:
        chunk = stream.read1(1 << 16)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= 8:
            (size,) = struct.unpack(">I", buf[:4])
            if size < 8 or len(buf) < size:
                break
            yield bytes(buf[4:8]), bytes(buf[:size])
            del buf[:size]


class Preview:
    """Args:
        width, height, fps: the video's.
        feed: where the fragments go.
        on_init: called with the codec string once the init segment is out.
        depth: frame batches that may wait for the encoder.
    """

    def __init__(self, width: int, height: int, fps: int, feed: Feed, on_init=None, depth: int = 16):
        self.feed, self.on_init = feed, on_init
        self.init: bytes | None = None
        self.codec: str | None = None
        self.dropped = 0  # frames the encoder was too slow for
        self.size = (width, height)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        gop = str(max(1, 2 * fps))
        cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
               "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-crf", "23", "-pix_fmt", "yuv420p",
               "-g", gop, "-x264-params", "scenecut=0",
               "-movflags", "+empty_moov+default_base_moof+frag_every_frame", "-flush_packets", "1", "-f", "mp4", "-"]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        self._writer = threading.Thread(target=self._write, name="tokentrim-live-encode", daemon=True)
        self._reader = threading.Thread(target=self._read, name="tokentrim-live-fragments", daemon=True)
        self._writer.start()
        self._reader.start()

    def frames(self, frames: np.ndarray) -> None:
        """Queue uint8 frames (F, H, W, 3); dropped (counted) when the encoder is behind. Never blocks."""
        if len(frames) == 0:
            return
        try:
            self._queue.put_nowait(np.ascontiguousarray(frames))
        except queue.Full:
            self.dropped += len(frames)

    def close(self, timeout: float = 30.0) -> None:
        """Encode what is queued, end the stream and wait for the last fragment."""
        self._queue.put(None)
        self._writer.join(timeout)
        self._reader.join(timeout)
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self.feed.close()

    def _write(self) -> None:
        try:
            while (frames := self._queue.get()) is not None:
                self._proc.stdin.write(memoryview(frames).cast("B"))
                self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the preview ends; the run goes on
        finally:
            try:
                self._proc.stdin.close()
            except OSError:
                pass

    def _read(self) -> None:
        init, moof = b"", None
        for kind, box in boxes(self._proc.stdout):
            if self.init is None and kind in (b"ftyp", b"moov"):
                init += box
                if kind == b"moov":
                    self.init, self.codec = init, codec_string(init)
                    if self.on_init is not None:
                        self.on_init(self.codec)
            elif kind == b"moof":
                moof = box
            elif kind == b"mdat" and moof is not None:
                self.feed.publish(Fragment(moof + box, is_key(box)))
                moof = None
