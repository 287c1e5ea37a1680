"""The live page's HTTP server: starlette routes behind :class:`~.guard.Guard`, run by uvicorn on a thread.

Routes (all but the page's three files need the token; see ``guard.py``):

    GET  /  /live.js  /live.css    the page (package data, served from memory: no file system paths, no listing)
    GET  /api/state                the run now: timeline, plan, block records, status, video codec
    GET  /api/events               server-sent events: ``state`` first, then ``block``, ``timeline``, ``video``,
                                   ``stopping``, ``done``, ``message``
    GET  /api/video                the preview as one fragmented MP4 stream: init segment, then fragments from
                                   the latest keyframe on
    GET  /api/timeline             the timeline so far, as a file ``generate --timeline`` reads
    POST /api/prompt               {"prompt", "mode": "recache|keep|cut [blend=N]", "blend", "start"} -> 202
    POST /api/extend               {"seconds"} -> 202 ("keep going")
    POST /api/stop                 {} -> 202 (as Ctrl-C, at the next block boundary)

A request body is JSON of at most ``MAX_BODY`` bytes. A refused request changes nothing and gets a JSON
``{"error": ...}``: 400 bad input, 409 too late (after the end, the run over), 413 too large, 415 not JSON.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import ConfigError
from .commands import parse_mode
from .control import LiveError, Request
from .feed import Behind
from .guard import Guard

MAX_BODY = 16 * 1024
PAGE = {"/": ("index.html", "text/html; charset=utf-8"), "/live.js": ("live.js", "text/javascript; charset=utf-8"),
        "/live.css": ("live.css", "text/css; charset=utf-8")}
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY",
           "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
                                      "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"}


def page_files() -> dict[str, bytes]:
    """The page's files, read once from the package."""
    folder = resources.files("tokentrim_cli.live") / "page"
    return {route: (folder / name).read_bytes() for route, (name, _) in PAGE.items()}


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_json(request: HttpRequest) -> dict:
    """The body as a JSON object (BadRequest 413 past MAX_BODY, 415 when not JSON, 400 when not an object)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise BadRequest(413, f"the body is larger than {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(413, f"the body is larger than {MAX_BODY} bytes")
    if not request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        raise BadRequest(415, "send the body as JSON (Content-Type: application/json)")
    try:
        data = json.loads(bytes(body) or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return data


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


def _sse(event: str, data) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n".encode()


def build_app(session) -> Starlette:
    """The routes, for a :class:`~.session.LiveSession` (without the guard)."""
    files = page_files()

    async def page(request: HttpRequest) -> Response:
        path = request.url.path
        return Response(files[path], media_type=PAGE[path][1], headers=HEADERS)

    async def state(request: HttpRequest) -> Response:
        return JSONResponse(session.snapshot(), headers=HEADERS)

    async def timeline(request: HttpRequest) -> Response:
        data = json.dumps(session.control.state()["timeline"], indent=1, ensure_ascii=False) + "\n"
        name = f"{session.name}.timeline.json"
        return Response(data, media_type="application/json",
                        headers={**HEADERS, "Content-Disposition": f'attachment; filename="{name}"'})

    async def events(request: HttpRequest) -> Response:
        feed = session.events
        cursor = feed.end
        first = session.snapshot()

        async def stream():
            nonlocal cursor
            yield _sse("state", first)
            while True:
                try:
                    items, cursor = feed.since(cursor)
                except Behind:
                    return  # too slow: the page reconnects and starts from a fresh state
                for event, data in items:
                    yield _sse(event, data)
                if feed.closed and cursor >= feed.end:
                    return
                await feed.wait(cursor)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=HEADERS)

    async def video(request: HttpRequest) -> Response:
        preview = session.preview
        if preview is None or preview.init is None:
            return _error(409, "no video yet: the first block is still being made (watch /api/events for 'video')")
        feed = session.video
        start, items = feed.start_items()
        keys = [start + k for k, f in enumerate(items) if f.key]
        cursor = keys[-1] if keys else start

        async def stream():
            nonlocal cursor
            yield preview.init
            while True:
                try:
                    items, cursor = feed.since(cursor)
                except Behind:
                    return
                for fragment in items:
                    yield fragment.data
                if feed.closed and cursor >= feed.end:
                    return
                await feed.wait(cursor)

        return StreamingResponse(stream(), media_type="video/mp4", headers=HEADERS)

    async def prompt(request: HttpRequest) -> Response:
        data = await read_json(request)
        unknown = sorted(set(data) - {"prompt", "mode", "blend", "start"})
        if unknown:
            raise BadRequest(400, f"unknown field {unknown[0][:40]!r} (allowed: prompt, mode, blend, start)")
        mode, blend = parse_mode(data.get("mode") if isinstance(data.get("mode"), str) else
                                 _bad("mode", data.get("mode")))
        blend = data.get("blend", blend)
        req = Request(data.get("prompt", ""), mode, blend, data.get("start"))
        accepted = await asyncio.to_thread(session.control.submit, req)
        return JSONResponse(accepted.as_dict(), status_code=202, headers=HEADERS)

    async def extend(request: HttpRequest) -> Response:
        data = await read_json(request)
        if set(data) - {"seconds"}:
            raise BadRequest(400, "keep going takes one field, seconds")
        return JSONResponse(await asyncio.to_thread(session.control.extend, data.get("seconds")), status_code=202,
                            headers=HEADERS)

    async def stop(request: HttpRequest) -> Response:
        await read_json(request)
        session.control.stop()
        return JSONResponse({"stopping": True}, status_code=202, headers=HEADERS)

    async def refused(request: HttpRequest, exc: Exception) -> Response:
        return _error(getattr(exc, "status", 400), str(exc))

    async def not_found(request: HttpRequest, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return _error(status, "no such page" if status == 404 else "method not allowed")

    routes = [Route(path, page, methods=["GET"]) for path in PAGE] + [
        Route("/api/state", state, methods=["GET"]), Route("/api/events", events, methods=["GET"]),
        Route("/api/video", video, methods=["GET"]), Route("/api/timeline", timeline, methods=["GET"]),
        Route("/api/prompt", prompt, methods=["POST"]), Route("/api/extend", extend, methods=["POST"]),
        Route("/api/stop", stop, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={LiveError: refused, BadRequest: refused,
                                                         404: not_found, 405: not_found})


def _bad(field: str, value):
    if value is None:
        return None
    raise LiveError(400, f"{field} must be a string like 'keep' or 'cut blend=3', got {str(value)[:40]}")


class Server:
    """uvicorn serving ``app`` on a daemon thread, on a socket bound here (port 0: a free one)."""

    def __init__(self, session, host: str, port: int, token: str):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); pick another "
                              "--port, or leave it out for a free one") from None
        self.host, self.port = host, self.sock.getsockname()[1]
        self.loop: asyncio.AbstractEventLoop | None = None
        app = Guard(build_app(session), host, self.port, token, on_request=self._attach(session))
        config = uvicorn.Config(app, log_level="error", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=2, ws="none")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="tokentrim-live-server", daemon=True)

    def _attach(self, session):
        def attach() -> None:
            if self.loop is None:
                self.loop = asyncio.get_running_loop()
                session.events.attach(self.loop)
                session.video.attach(self.loop)
        return attach

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the live server did not start on {self.host}:{self.port}")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
