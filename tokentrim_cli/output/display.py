"""What the user sees while a run goes: a live rich display on a terminal, one line per block in logs,
JSON lines for machines, or nothing (``--quiet``). Human output goes to stderr; stdout carries only results
(the video path, or the JSON lines), so ``path=$(tokentrim generate ...)`` works.
"""

from __future__ import annotations

import json
import sys
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..inputs import printable


def emit_json(event: str, **data) -> None:
    """One machine-readable event: a JSON object on one stdout line (``--log-format jsonl``)."""
    print(json.dumps({"event": event, **data}, ensure_ascii=False, default=str), flush=True)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _drift(rec: dict) -> str:
    sev, thr = rec.get("severity"), rec.get("threshold")
    if sev is None:
        return "drift -"
    return f"drift {sev:.3f}" + (f" / thr {thr:.3f}" if thr is not None else " (warm-up)")


class Display:
    """Base: keeps the counters every mode shows."""

    def __init__(self):
        self.total_frames = 0
        self.frames_done = 0
        self.regenerations = 0
        self.pruned = 0
        self.t0 = time.perf_counter()
        self.last: dict = {}

    def start(self, info: dict) -> None:
        self.total_frames = info["frames"]
        self.t0 = time.perf_counter()

    def block(self, rec: dict, frames_done: int) -> None:
        self.frames_done = frames_done
        self.regenerations += rec.get("regenerations", 0)
        self.pruned += rec.get("pruned_tokens", 0)
        self.last = rec

    def message(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        """Something the user should know about the result (quiet or not): one line on stderr."""
        print(f"tokentrim: warning: {printable(text)}", file=sys.stderr, flush=True)

    def finish(self, result: dict) -> None:
        pass

    @property
    def fps(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.frames_done / dt if dt > 0 else 0.0

    @property
    def eta(self) -> float | None:
        f = self.fps
        return (self.total_frames - self.frames_done) / f if f > 0 else None


class QuietDisplay(Display):
    def finish(self, result: dict) -> None:
        if result.get("video"):
            print(result["video"], flush=True)


class TextDisplay(Display):
    """One plain line per block: for render-farm logs and pipes."""

    def __init__(self, stream=None):
        super().__init__()
        self.err = stream or sys.stderr

    def message(self, text: str) -> None:
        print(printable(text), file=self.err, flush=True)  # a prompt's control characters never reach the terminal

    def start(self, info: dict) -> None:
        super().start(info)
        self.message(
            f"tokentrim: preset {info['preset']}, seed {info['seed']}, {info['frames']} frames "
            f"({info['latent_frames']} latent, {info['blocks']} blocks) -> {info['video']}"
        )

    def block(self, rec: dict, frames_done: int) -> None:
        super().block(rec, frames_done)
        regen = f" REGENERATED x{rec['regenerations']} (pruned {rec['pruned_tokens']} tokens)" if rec.get("regenerated") else ""
        eta = self.eta
        self.message(
            f"block {rec['index'] + 1}: frames {frames_done}/{self.total_frames}  {self.fps:.2f} fps  "
            f"eta {eta:.0f}s  {_drift(rec)}  cache {_mb(rec['cache_bytes'])}  {rec['seconds']:.2f}s{regen}"
            if eta is not None
            else f"block {rec['index'] + 1}: frames {frames_done}/{self.total_frames}"
        )

    def finish(self, result: dict) -> None:
        if result["status"] != "ok":  # the command's one closing line says what happened and what is kept
            if result.get("video"):
                print(result["video"], flush=True)
            return
        self.message(
            f"tokentrim: {result['status']} - {result.get('frames_written', 0)} frames, "
            f"{self.regenerations} regenerations, {self.pruned} pruned tokens, {result.get('seconds', 0):.1f}s"
            + (f" ({result['error']})" if result.get("error") else "")
        )
        if result.get("video"):
            print(result["video"], flush=True)


class JsonlDisplay(Display):
    """Every event as one JSON object per line on stdout."""

    def start(self, info: dict) -> None:
        super().start(info)
        emit_json("start", **info)

    def block(self, rec: dict, frames_done: int) -> None:
        super().block(rec, frames_done)
        emit_json("block", frames_done=frames_done, total_frames=self.total_frames, fps=round(self.fps, 3), **rec)

    def message(self, text: str) -> None:
        emit_json("message", text=text)

    def warning(self, text: str) -> None:
        super().warning(text)
        emit_json("warning", text=text)

    def finish(self, result: dict) -> None:
        emit_json("done", **result)


class LiveDisplay(Display):
    """A rich live panel: progress, speed, ETA, last drift vs threshold, regenerations, cache size."""

    def __init__(self):
        super().__init__()
        self.console = Console(stderr=True)
        self.info: dict = {}
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def _render(self):
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold cyan")
        t.add_column()
        total = max(self.total_frames, 1)
        width = 30
        filled = int(width * self.frames_done / total)
        bar = "[green]" + "#" * filled + "[/green]" + "-" * (width - filled)
        eta = self.eta
        t.add_row("video", str(self.info.get("video", "")))
        t.add_row("frames", f"{bar} {self.frames_done}/{self.total_frames}")
        t.add_row("speed", f"{self.fps:.2f} frames/s" + (f"   eta {eta:.0f}s" if eta is not None else ""))
        t.add_row("drift", _drift(self.last) if self.last else "-")
        t.add_row("regenerated", f"{self.regenerations} blocks, {self.pruned} tokens pruned")
        t.add_row("kv cache", _mb(self.last.get("cache_bytes", 0)) if self.last else "-")
        return t

    def message(self, text: str) -> None:
        self.console.print(printable(text), markup=False, highlight=False)

    def warning(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]warning:[/yellow] {escape(printable(text))}", markup=True, highlight=False)

    def start(self, info: dict) -> None:
        super().start(info)
        self.info = info
        self.live.start()
        self.live.update(self._render())

    def block(self, rec: dict, frames_done: int) -> None:
        super().block(rec, frames_done)
        self.live.update(self._render())

    def finish(self, result: dict) -> None:
        self.live.update(self._render())
        self.live.stop()
        colour = "green" if result["status"] == "ok" else "yellow"
        if result["status"] == "ok":  # otherwise the command's one closing line says what happened
            self.console.print(f"[{colour}]{result['status']}[/{colour}] {result.get('video') or ''}"
                               + (f"  ({result['error']})" if result.get("error") else ""))
        if result.get("video") and not sys.stdout.isatty():
            print(result["video"], flush=True)


def make_display(quiet: bool = False, log_format: str = "text") -> Display:
    if quiet:
        return QuietDisplay()
    if log_format == "jsonl":
        return JsonlDisplay()
    if sys.stdout.isatty() and sys.stderr.isatty():
        return LiveDisplay()
    return TextDisplay()


def closing_lines(result, state: str) -> list[str]:
    """What an unfinished run (a ``job.Result``) says last on stderr: an interrupted one a single line (what is
    kept, how to go on from ``state``/); a failed one the same, then ``tokentrim: failed: ERROR`` as its last line
    (the sidecar's error)."""
    kept = f"{result.frames_written} frames kept in {result.video.name}" if result.video else "no video kept"
    hint = f"{state}/ goes on after block {result.resumable}: repeat the command with --resume"
    if result.status == "interrupted":
        return [f"tokentrim: interrupted ({result.error}): {kept}"
                + (f"; {hint}" if result.resumable is not None else "")]
    return ([f"tokentrim: {kept}; {hint}"] if result.resumable is not None else []) \
        + [f"tokentrim: {result.status}: {result.error}"]
