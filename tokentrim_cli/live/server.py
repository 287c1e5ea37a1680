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


class Routes:
    """The route handlers of one :class:`~.session.LiveSession`."""

    def __init__(self, session):
        self.session = session
        self.files = page_files()

    async def page(self, request: HttpRequest) -> Response:
        path = request.url.path
        return Response(self.files[path], media_type=PAGE[path][1], headers=HEADERS)

    async def state(self, request: HttpRequest) -> Response:
        return JSONResponse(self.session.snapshot(), headers=HEADERS)

    async def timeline(self, request: HttpRequest) -> Response:
        data = json.dumps(self.session.control.state()["timeline"], indent=1, ensure_ascii=False) + "\n"
        name = f"{self.session.name}.timeline.json"
        return Response(data, media_type="application/json",
                        headers={**HEADERS, "Content-Disposition": f'attachment; filename="{name}"'})

    async def events(self, request: HttpRequest) -> Response:
        feed = self.session.events
        cursor = feed.end
        first = _sse("state", self.session.snapshot())
        stream = follow(feed, cursor, lambda item: _sse(*item))
        return StreamingResponse(_chain(first, stream), media_type="text/event-stream", headers=HEADERS)

    async def video(self, request: HttpRequest) -> Response:
        preview = self.session.preview
        if preview is None or preview.init is None:
            return _error(409, "no video yet: the first block is still being made (watch /api/events for 'video')")
        feed = self.session.video
        start, items = feed.start_items()
        keys = [start + k for k, f in enumerate(items) if f.key]  # a viewer starts at the latest keyframe
        stream = follow(feed, keys[-1] if keys else start, lambda fragment: fragment.data)
        return StreamingResponse(_chain(preview.init, stream), media_type="video/mp4", headers=HEADERS)

    async def prompt(self, request: HttpRequest) -> Response:
        data = await read_json(request)
        unknown = sorted(set(data) - {"prompt", "mode", "blend", "start"})
        if unknown:
            raise BadRequest(400, f"unknown field {unknown[0][:40]!r} (allowed: prompt, mode, blend, start)")
        mode, blend = parse_mode(data.get("mode") if isinstance(data.get("mode"), str) else
                                 _bad("mode", data.get("mode")))
        req = Request(data.get("prompt", ""), mode, data.get("blend", blend), data.get("start"))
        accepted = await asyncio.to_thread(self.session.control.submit, req)
        return JSONResponse(accepted.as_dict(), status_code=202, headers=HEADERS)

    async def extend(self, request: HttpRequest) -> Response:
        data = await read_json(request)
        if set(data) - {"seconds"}:
            raise BadRequest(400, "keep going takes one field, seconds")
        got = await asyncio.to_thread(self.session.control.extend, data.get("seconds"))
        return JSONResponse(got, status_code=202, headers=HEADERS)

    async def stop(self, request: HttpRequest) -> Response:
        await read_json(request)
        self.session.control.stop()
        return JSONResponse({"stopping": True}, status_code=202, headers=HEADERS)


async def follow(feed, cursor: int, encode):
    """The feed's items from ``cursor`` on, encoded, as they come; ends when the feed closes or the viewer has
    fallen too far behind (the page reconnects)."""
    while True:
        try:
            items, cursor = feed.since(cursor)
        except Behind:
            return
        for item in items:
            yield encode(item)
        if feed.closed and cursor >= feed.end:
            return
        await feed.wait(cursor)


async def _chain(first: bytes, rest):
    yield first
    async for chunk in rest:
        yield chunk


async def _refused(request: HttpRequest, exc: Exception) -> Response:
    return _error(getattr(exc, "status", 400), str(exc))


async def _not_found(request: HttpRequest, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    return _error(status, "no such page" if status == 404 else "method not allowed")


def build_app(session) -> Starlette:
    """The routes, for a :class:`~.session.LiveSession` (without the guard)."""
    r = Routes(session)
    routes = [Route(path, r.page, methods=["GET"]) for path in PAGE] + [
        Route("/api/state", r.state, methods=["GET"]), Route("/api/events", r.events, methods=["GET"]),
        Route("/api/video", r.video, methods=["GET"]), Route("/api/timeline", r.timeline, methods=["GET"]),
        Route("/api/prompt", r.prompt, methods=["POST"]), Route("/api/extend", r.extend, methods=["POST"]),
        Route("/api/stop", r.stop, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={LiveError: _refused, BadRequest: _refused,
                                                         404: _not_found, 405: _not_found})


def _bad(field: str, value):
    if value is None:
        return
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
