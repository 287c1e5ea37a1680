"""One live run, the viewers' side: its :class:`~.control.LiveControl`, the page's server, the preview encoder,
the stdin reader, and the feeds they share.

The job (``run/job.py``) touches it in four places: the loop polls ``control`` at each block boundary, the MP4
writer is wrapped by :meth:`LiveSession.tee` (its frames also go to the preview), each written block's record goes
to :meth:`LiveSession.block` (events, and the sidecar's timeline and plan brought up to date), and the command
calls :meth:`LiveSession.close` at the end. Generation never waits for a viewer: every hand-over here is a
bounded, non-blocking one.
"""

from __future__ import annotations

import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from .commands import read_prompts
from .control import LiveControl
from .feed import Feed

EVENTS_KEPT = 4096  # events a viewer may lag behind before it is dropped (it reconnects with a fresh state)
FRAGMENTS_KEPT = 2048  # preview fragments (one per frame) likewise


@dataclass(frozen=True)
class Serve:
    host: str = "127.0.0.1"
    port: int = 0


class Tee:
    """An MP4 writer whose frames also go to ``sink`` (after the file has them). Everything else is the writer's."""

    def __init__(self, writer, sink: Callable):
        self._writer, self._sink = writer, sink

    def write(self, frames) -> None:
        self._writer.write(frames)
        self._sink(frames)

    def __getattr__(self, name):
        return getattr(self._writer, name)


class LiveSession:
    """Args:
        control: the run's control.
        name: the video's name (the exported timeline is NAME.timeline.json).
        video: (width, height, fps) of the frames.
        serve: where the page is served (None: no page, e.g. ``--prompts-from -`` alone).
        prompts: a text stream of live prompts, one per line (None: none).
        say: where one-line notes go (stderr).
    """

    def __init__(self, control: LiveControl, name: str, video: tuple[int, int, int], serve: Serve | None = None,
                 prompts: TextIO | None = None, say: Callable[[str], None] | None = None):
        self.control, self.name, self.size = control, name, video
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.events, self.video = Feed(EVENTS_KEPT), Feed(FRAGMENTS_KEPT)
        self.records: list[dict] = []
        self.status = "starting"
        self.codec: str | None = None
        self.token = secrets.token_urlsafe(18)
        self.preview = None
        self.server = None
        self._prompts = prompts
        self._lock = threading.Lock()
        control.listeners.append(self._publish)
        if serve is not None:
            from .server import Server  # starlette and uvicorn only for a served run

            self.server = Server(self, serve.host, serve.port, self.token)

    @property
    def url(self) -> str | None:
        if self.server is None:
            return None
        host = self.server.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{host}:{self.server.port}/?token={self.token}"

    def start(self) -> None:
        """Serve the page (printing its URL) and read prompts, before the model loads."""
        if self.server is not None:
            from .preview import Preview

            width, height, fps = self.size
            self.preview = Preview(width, height, fps, self.video, on_init=self._video_ready)
            try:
                self.server.start()
            except BaseException:
                self.preview.close(timeout=5)
                raise
            self.say(f"live: watch and steer the run at {self.url}")
        if self._prompts is not None:
            read_prompts(self._prompts, self.control.submit, self.say)
            source = getattr(self._prompts, "name", "<stdin>")
            source = "stdin" if source == "<stdin>" else source
            self.say(f"live: reading prompts from {source}, one per line ('[SECONDSs] [MODE] [blend=N]: PROMPT')")
        self.status = "running"
        self._publish("status", {"status": "running"})

    def tee(self, writer):
        """``writer`` feeding the preview too (itself when nothing is served)."""
        return Tee(writer, self.preview.frames) if self.preview is not None else writer

    def follow_length(self, blocks, seam: int) -> None:
        """Keep ``blocks`` (the job's BlockWriter) trimming the video to the planned length as it grows, from now
        on and for what "keep going" added already (while the model loaded)."""
        self.control.on_plan.append(lambda plan: setattr(blocks, "limit", seam + plan.frames))
        blocks.limit = seam + self.control.state()["frames"]

    def sync(self, sidecar: dict, display) -> None:
        """Before a block's record is written (the writer's thread): ``sidecar`` (its data) gets the timeline and
        plan as they are now ("keep going" makes both longer), the display its new length."""
        state = self.control.state()
        if len(state["timeline"]) > 1 or "timeline" in sidecar:
            sidecar["timeline"], sidecar["switches"] = state["timeline"], state["switches"]
        sidecar["frames"] += state["plan"]["frames"] - sidecar["plan"]["frames"]  # the --extend input's stay
        sidecar["plan"] = state["plan"]
        sidecar["live"] = {"seconds": state["seconds"]}
        display.total_frames = state["plan"]["frames"]

    def block(self, record: dict) -> None:
        """A block's record is in the sidecar: the viewers get it."""
        with self._lock:
            self.records.append(record)
        self._publish("block", record)

    def close(self, result: dict | None) -> None:
        """The run is over: refuse further requests, tell the viewers, finish the preview, stop serving."""
        self.control.finish()
        self.status = (result or {}).get("status", "failed")
        self._publish("done", {"status": self.status, **({"video": result.get("video"), "error": result.get("error"),
                                                          "frames_written": result.get("frames_written")}
                                                         if result else {})})
        if self.preview is not None:
            self.preview.close()
        self.events.close()
        if self.server is not None:
            self.server.stop()

    def snapshot(self) -> dict:
        with self._lock:
            records = list(self.records)
        width, height, fps = self.size
        return {**self.control.state(), "status": self.status, "blocks_done": records, "codec": self.codec,
                "fps": fps, "width": width, "height": height, "name": self.name}

    def _video_ready(self, codec: str | None) -> None:
        self.codec = codec
        self._publish("video", {"codec": codec})

    def _publish(self, event: str, data: dict) -> None:
        self.events.publish((event, data))
