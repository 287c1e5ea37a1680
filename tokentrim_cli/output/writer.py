"""Decoding and MP4 encoding of finished blocks, overlapped with the generation of the next ones.

The loop hands each finished latent block to :class:`BlockWriter`; a worker thread decodes it (on a side CUDA
stream when the model runs on a GPU), trims it to the frames asked for and sends it to the MP4 writer, strictly in
order, then hands a :class:`Written` record to the recorder (``run/recorder.py``: sidecar record, display line,
resumable state), on the worker thread, so nothing is in the file that is not recorded. At most ``depth`` blocks
wait, so memory stays bounded. Only the main thread receives signals, so a Ctrl-C never cuts a block's write in
half; ``close`` writes every block already generated before it returns. ``threaded=False`` does the same inline
(the serial path the pipelined one is tested against).
"""

from __future__ import annotations

import queue
import signal
import threading
from dataclasses import dataclass
from typing import Protocol

import torch

from ..engine.samplers import Block
from ..engine.vae import StreamingDecoder
from ..signals import HeldSignals
from .video import Mp4Writer

_DONE = object()


@dataclass(frozen=True)
class Written:
    """A block now in the file, and the pixel frames in the file after it."""

    block: Block
    frames: int


class Recorder(Protocol):
    def record(self, written: Written) -> None:
        """Called, in order, on the writer's thread, once each block is in the file."""


class BlockWriter:
    """Args:
        decoder: the video's streaming decoder (reset already).
        writer: the MP4 writer.
        frames_limit: pixel frames the video keeps; the rest of the last block is dropped.
        recorder: told of each block once it is in the file.
        threaded: decode and encode on a worker thread.
        depth: blocks that may wait for the worker.
    """

    def __init__(self, decoder: StreamingDecoder, writer: Mp4Writer, frames_limit: int, recorder: Recorder,
                 threaded: bool = True, depth: int = 2):
        self.decoder, self.writer, self.limit, self.recorder = decoder, writer, frames_limit, recorder
        self.error: BaseException | None = None
        self._thread = None
        if threaded:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._work, name="tokentrim-writer", daemon=True)
            self._stream = None
            self._thread.start()

    def put(self, block: Block) -> None:
        """Queue a finished block (or write it now, unthreaded). Raises the worker's error, if it had one.

        A Ctrl-C / SIGTERM arriving meanwhile is held until the block is queued (or written), then raised."""
        self._raise()
        event = None
        if self._thread is not None and block.latents.is_cuda:  # the worker's stream waits for the latents
            event = torch.cuda.Event()
            event.record()
        with HeldSignals() as held:
            if self._thread is None:
                self._write(block)
            else:
                self._queue.put((block, event))
        if held.received:
            signal.raise_signal(held.received)

    def close(self) -> None:
        """Write everything queued, stop the worker, and raise its error if it had one."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put((_DONE, None))
            self._thread.join()
        self._raise()

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            block, event = self._queue.get()
            if block is _DONE:
                return
            if self.error is not None:
                continue  # keep draining so the producer never blocks on a dead worker
            try:
                if event is not None:
                    if self._stream is None:
                        self._stream = torch.cuda.Stream(block.latents.device)
                    with torch.cuda.stream(self._stream):
                        self._stream.wait_event(event)
                        block.latents.record_stream(self._stream)
                        self._write(block)
                else:
                    self._write(block)
            except BaseException as exc:  # noqa: BLE001 - handed to the producer, which reports it
                self.error = exc

    def _write(self, block: Block) -> None:
        frames = self.decoder.frames(block.latents)
        self.writer.write(frames[: max(0, self.limit - self.writer.frames)])
        self.recorder.record(Written(block, self.writer.frames))

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
