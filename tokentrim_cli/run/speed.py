"""Honest speed records: loop FPS (denoise + cache write), decode FPS and end-to-end FPS, kept apart.

A run's first blocks are slower than the rest (``torch.compile`` compiles, cuDNN and the allocator warm up), so the
first ``warmup`` blocks are left out of every rate and their time is stated instead (``warmup_seconds``; with
``runtime.compile`` the compile time is inside it). On a GPU the loop and the decode are timed with CUDA events on
the streams that run them, never by the host clock around asynchronous launches: an event pair is read once the
block is written (by then its work is done, so reading costs no synchronisation).

- loop: each block's generation, from the moment the loop asks for it to the moment it is handed on (the host's
  wait for a full write queue is not in it). Loop FPS = the measured blocks' pixel frames / their loop seconds.
- decode: each block's decode to uint8 frames (on the writer's side stream when the run is on a GPU). Decode FPS =
  the same frames / their decode seconds.
- end to end: wall clock from the last warm-up block being in the file to the last block being in the file, so
  generation, decoding and MP4 encoding overlapping as they do in the run; end-to-end FPS = frames written in that
  time / that time. Loading and prompt encoding are not in any of the three (the sidecar's ``timings`` has them).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch

WARMUP_BLOCKS = 2


class Span:
    """One timed interval: CUDA events on ``device``'s current stream, else the host clock."""

    def __init__(self, device: torch.device | None):
        self.device = device if device is not None and device.type == "cuda" else None
        self.start, self.end = self._mark(), None

    @property
    def cuda(self) -> bool:
        return self.device is not None

    def _mark(self):
        if self.cuda:  # on the stream that runs the work now (the writer's side stream inside its context)
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def stop(self) -> Span:
        self.end = self._mark()
        return self

    @property
    def seconds(self) -> float:
        """The interval (waits for the end event when it has not completed yet)."""
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1000.0
        return self.end - self.start


@dataclass
class SpeedRecord:
    """What the sidecar's ``speed`` holds. Rates are None when no block came after the warm-up."""

    warmup_blocks: int  # blocks left out of every rate (at least one: the rates start when it is in the file)
    warmup_seconds: float  # their loop time (compile time included when runtime.compile is on)
    blocks: int  # blocks measured
    frames: int  # their pixel frames
    loop_seconds: float
    decode_seconds: float
    end_to_end_seconds: float
    loop_fps: float | None
    decode_fps: float | None
    end_to_end_fps: float | None
    timer: str  # "cuda events" or "host clock"
    compile: bool = False

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def line(self) -> str:
        """One line for the display."""
        if not self.blocks:
            return (f"speed: no block after the {self.warmup_blocks} warm-up blocks ({self.warmup_seconds:.2f} s): "
                    f"too short to measure")
        extra = ", compile included" if self.compile else ""
        return (f"speed over blocks {self.warmup_blocks + 1}-{self.warmup_blocks + self.blocks} ({self.frames} "
                f"frames): loop {self.loop_fps:.2f} fps, decode {self.decode_fps:.2f} fps, end to end "
                f"{self.end_to_end_fps:.2f} fps; {self.warmup_blocks} warm-up blocks left out "
                f"({self.warmup_seconds:.2f} s{extra})")


@dataclass
class SpeedMeter:
    """Collects a run's spans; ``loop`` and ``decoder`` wrap what the run already calls."""

    device: torch.device | None = None
    warmup: int = WARMUP_BLOCKS
    compile: bool = False
    loop_spans: dict[int, Span] = field(default_factory=dict)
    decode_spans: dict[int, Span] = field(default_factory=dict)
    written_at: dict[int, tuple[float, int]] = field(default_factory=dict)  # when, and the file's frames then
    order: deque = field(default_factory=deque)  # blocks made and not decoded yet, in order

    def loop(self, blocks: Iterable) -> Iterator:
        """The blocks of ``blocks``, each one's generation timed."""
        it = iter(blocks)
        while True:
            span = Span(self.device)
            try:
                block = next(it)
            except StopIteration:
                return
            self.loop_spans[block.index] = span.stop()
            self.order.append(block.index)
            yield block

    def decoder(self, decoder) -> TimedDecoder:
        """``decoder`` (what the block writer decodes with), each block's decode timed."""
        return TimedDecoder(decoder, self)

    def recorder(self, recorder) -> TimedRecorder:
        """``recorder`` (what the block writer reports written blocks to), told when each block is in the file."""
        return TimedRecorder(recorder, self)

    def written(self, index: int, frames: int) -> None:
        """Block ``index`` is in the file, which now holds ``frames`` frames."""
        self.written_at[index] = (time.perf_counter(), frames)

    def block_seconds(self, index: int) -> dict:
        """Block ``index``'s loop and decode seconds, once it is in the file (its events are done by then)."""
        spans = (("loop_seconds", self.loop_spans.get(index)), ("decode_seconds", self.decode_spans.get(index)))
        return {key: round(span.seconds, 4) for key, span in spans if span is not None}

    def record(self) -> SpeedRecord:
        """The rates over the blocks written after the warm-up ones (at least one block is warm-up)."""
        done = sorted(i for i in self.written_at if i in self.loop_spans)
        warm, measured = done[: max(1, self.warmup)], done[max(1, self.warmup) :]
        first, last = (self.written_at[warm[-1]], self.written_at[measured[-1]]) if measured else ((0.0, 0), (0.0, 0))
        frames, e2e = last[1] - first[1], last[0] - first[0]
        loop = sum(self.loop_spans[i].seconds for i in measured)
        decode = sum(self.decode_spans[i].seconds for i in measured if i in self.decode_spans)
        return SpeedRecord(len(warm), sum(self.loop_spans[i].seconds for i in warm), len(measured), frames, loop,
                           decode, e2e, _rate(frames, loop), _rate(frames, decode), _rate(frames, e2e),
                           "cuda events" if self.device is not None and self.device.type == "cuda" else "host clock",
                           self.compile)


def _rate(frames: int, seconds: float) -> float | None:
    return frames / seconds if frames and seconds > 0 else None


def record_speed(meter: SpeedMeter, sidecar, display, show: bool = True) -> None:
    """The run's rates into the sidecar (``speed``) and, with ``show`` (a run that finished: an unfinished one
    ends with its one closing line), one display line; a timing problem (a GPU gone bad) is recorded as such and
    never costs the outputs."""
    try:
        speed = meter.record()
    except Exception as exc:  # noqa: BLE001
        sidecar.data["speed"] = {"error": f"{type(exc).__name__}: {exc}"}
        return
    sidecar.data["speed"] = speed.as_dict()
    if show:
        display.message(speed.line())


class TimedRecorder:
    """A block writer's recorder whose blocks carry their loop and decode seconds into their record, and whose
    writing times the meter keeps (end to end)."""

    def __init__(self, recorder, meter: SpeedMeter):
        self.inner, self.meter = recorder, meter

    def record(self, written) -> None:
        """Args:
            written: ``output.writer.Written``: the block now in the file and the file's frames after it."""
        self.meter.written(written.block.index, written.frames)
        written.block.record.update(self.meter.block_seconds(written.block.index))
        self.inner.record(written)


class TimedDecoder:
    """A streaming decoder whose ``frames`` (what the block writer calls) is timed per block, in call order."""

    def __init__(self, decoder, meter: SpeedMeter):
        self.inner, self.meter = decoder, meter

    def frames(self, latents: torch.Tensor):
        """The inner decoder's frames; the call is the decode of the oldest block the loop made and the writer
        has not decoded yet (the writer decodes each block once, in order)."""
        span = Span(latents.device if latents.is_cuda else None)
        out = self.inner.frames(latents)
        index = self.meter.order.popleft() if self.meter.order else -1
        self.meter.decode_spans[index] = span.stop()
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)
