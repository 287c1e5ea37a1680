"""Who may talk to the live server (an ASGI middleware in front of every route).

- Host: the request's Host header must name this server: its port, and a name that cannot be another site's
  (DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1): localhost, an IP address, the
  ``--host`` given, or this machine's own names when it listens on every interface.
- Origin: when a browser sends one, it must be this server's own (``http://`` + the Host): another site open in
  the same browser cannot drive the run, nor read its streams.
- Token: everything under ``/api/`` (all data and every change) needs the random token of the printed URL, as ``?token=`` or the ``X-Tokentrim-Token`` header, compared in constant time.

A refused request gets a JSON ``{"error": ...}`` with 400 (no Host), 403 (wrong Host, Origin or token) and never
reaches a route.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from urllib.parse import parse_qs

WILDCARDS = {"0.0.0.0", "::", ""}


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def allowed_names(host: str) -> set[str]:
    """Host names (lower case, IPv6 in brackets) a request may use for a server bound to ``host``."""
    names = {"localhost", "127.0.0.1", "[::1]"}
    if host in WILDCARDS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    elif _is_ip(host) and ":" in host:
        names.add(f"[{host.strip('[]').lower()}]")
    else:
        names.add(host.lower())
    return names


def split_host(value: str) -> tuple[str, int | None]:
    """'name:port' -> ('name', port); the port None when absent or not a number."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name += "]"
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = value.rpartition(":") if ":" in value else (value, "", "")
    return name, int(port) if port.isdigit() else None


class Guard:
    """ASGI middleware. Args: app; host and port the server listens on; token; ``any_ip``: accept any IP
    address as Host (a server bound to every interface)."""

    def __init__(self, app, host: str, port: int, token: str, on_request=None):
        self.app, self.port, self.token = app, port, token
        self.names = allowed_names(host)
        self.any_ip = host in WILDCARDS
        self.on_request = on_request  # called once per request (the server attaches its loop there)

    def host_ok(self, value: str | None) -> bool:
        if not value:
            return False
        name, port = split_host(value)
        if (port if port is not None else 80) != self.port:  # a browser leaves out port 80
            return False
        return name in self.names or (self.any_ip and _is_ip(name))

    def problem(self, scope) -> tuple[int, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host")
        if host is None:
            return 400, "no Host header"
        if not self.host_ok(host):
            return 403, "the Host header does not name this server (open the URL tokentrim printed)"
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"http://{host.lower()}":
            return 403, "requests from another origin are refused"
        if not scope["path"].startswith("/api/"):  # the page's files, or 404: no data
            return None
        given = headers.get("x-tokentrim-token") or parse_qs(scope.get("query_string", b"").decode("latin-1")).get(
            "token", [""])[0]
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return 403, "missing or wrong token: open the URL tokentrim printed (it ends in ?token=...)"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.on_request is not None:
            self.on_request()
        problem = self.problem(scope)
        if problem is None:
            return await self.app(scope, receive, send)
        status, message = problem
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
