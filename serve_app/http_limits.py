"""Bounds on what one HTTP request may cost the ingress before any route runs: an ASGI middleware (no Ray import).

FastAPI measures an upload only once it has parsed and spooled the whole multipart body, and waits for a slow
client as long as it keeps sending. :class:`RequestLimitsMiddleware` sits in front of the routes and, per request:

1. **admission** — at most ``max_in_flight`` requests are handled at once by this ingress replica; one more is
   answered at once ``503 overloaded`` with ``Retry-After``, before its body is read (load shedding keeps the
   accepted requests' latency bounded instead of queueing without limit). Cheap reads (``GET /healthz``, the
   page and its assets, thumbnails) are exempt so health checks and browsing survive an overload.
2. **body size** — a ``Content-Length`` over the path's limit is a ``413`` before the route reads a byte; a chunked
   body is counted as it streams and cut off with ``413`` as soon as it passes the limit (never read to its end).
   A declared body of at most :data:`LINGER_MAX_BYTES` is read and dropped first (for at most
   :data:`LINGER_S`): answering and closing while the client is still sending makes its TCP stack see a reset
   instead of the 413 (the reason for nginx's ``lingering_close``); larger ones are answered at once.
   What the client has sent when it sees the 413 is the limit plus whatever was taken in ahead of this count:
   Ray Serve's direct ingress reads a whole body into memory as fast as it arrives (to notice a client that
   leaves) unless the request carries ``x-request-disconnect-disabled: ?1``, which the shedding proxy
   (:mod:`serve_app.shedding_proxy`) sets on upload paths; then only socket buffers hold more, and Linux
   autotunes a receive buffer up to ``net.ipv4.tcp_rmem``'s maximum (32 MiB on the development machine). So at
   the first request the ingress fixes the receive buffer of its listening socket and of the connections it holds
   to ``receive_buffer_bytes`` (:func:`cap_receive_buffers`; later connections inherit it, and a fixed size turns
   autotuning off, socket(7) ``SO_RCVBUF``). Measured with a 1 GiB chunked upload against the 10 MiB limit:
   16–22 MiB sent before the 413 through the shedding proxy, 19–120 MiB straight to Serve's port
   (benchmarks/RESULTS.md, "Overload").
3. **body time** — the body must arrive within ``body_timeout_s`` plus one second per ``body_min_rate`` bytes
   received (Apache ``mod_reqtimeout``'s ``body=…,MinRate=…`` rule), at most ``body_max_s``; a client that
   drips slower gets ``408`` and the connection is closed.

Errors use the contract's JSON envelope. The limits come from the app args (:class:`RequestLimits`).
"""

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from serve_app.errors import RETRY_AFTER_S

MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers around an upload, bytes
JSON_BODY_LIMIT = 1024 * 1024  # JSON request bodies (text search, more-like-this), bytes
LINGER_MAX_BYTES = 16 * 1024 * 1024  # a too-large declared body up to this size is drained before the 413
LINGER_S = 2.0  # ... for at most this long
RECEIVE_BUFFER_BYTES = 256 * 1024  # SO_RCVBUF of the ingress's sockets (Linux doubles it for bookkeeping)


@dataclass
class RequestLimits:
    """Attributes:
        max_in_flight: requests this ingress replica handles at once (0: no admission limit).
        body_limits: path → largest request body in bytes; ``default_body_limit`` for any other path.
        body_timeout_s: seconds a body may take regardless of its size; ``body_min_rate``: bytes per second
            that earn one more second; ``body_max_s``: the most seconds any body may take.
        exempt_get: path prefixes whose GET (and HEAD) requests, like ``GET /``, the admission limit does not count.
        receive_buffer_bytes: ``SO_RCVBUF`` of the ingress's listening socket and connections (0: the kernel's
            autotuning), bytes.
    """

    max_in_flight: int = 8
    body_limits: dict[str, int] = field(default_factory=dict)
    default_body_limit: int = JSON_BODY_LIMIT
    body_timeout_s: float = 10.0
    body_min_rate: float = 64 * 1024
    body_max_s: float = 120.0
    exempt_get: tuple[str, ...] = ("/healthz", "/static/", "/thumbnails/", "/facets")
    receive_buffer_bytes: int = RECEIVE_BUFFER_BYTES

    @classmethod
    def from_app_args(cls, args) -> "RequestLimits":
        """Limits for the served routes from :class:`serve_app.config.AppArgs`."""
        upload = args.max_upload_bytes + MULTIPART_OVERHEAD
        return cls(max_in_flight=args.max_in_flight, body_timeout_s=args.body_timeout_s,
                   body_limits={"/search/image": upload, "/find_similar": upload,
                                "/search/video": args.max_video_bytes + MULTIPART_OVERHEAD})

    def body_limit(self, path: str) -> int:
        return self.body_limits.get(path.rstrip("/") or "/", self.default_body_limit)

    def is_exempt(self, method: str, path: str) -> bool:
        return method in ("GET", "HEAD") and (path == "/" or path.startswith(self.exempt_get))


async def _send_error(send, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                      close: bool = False) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive, timeout_s: float) -> None:
    """Read and drop the request body until it ends, the client leaves or ``timeout_s`` seconds pass."""
    deadline = time.monotonic() + timeout_s
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            message = await asyncio.wait_for(receive(), remaining)
            if message["type"] != "http.request" or not message.get("more_body"):
                return
    except asyncio.TimeoutError:
        return


def cap_receive_buffers(address: tuple[str, int], size: int) -> int:
    """Set ``SO_RCVBUF`` to ``size`` bytes on this process's TCP sockets bound to ``address``'s port (the server
    address of a request, ``scope["server"]``): the listening socket (connections it accepts later inherit the
    size) and the connections already accepted on it.
    Sockets are found through ``/proc/self/fd`` and set through a duplicate descriptor (the owner's stays open).

    Returns:
        How many sockets were set (0 where ``/proc`` is missing, e.g. not Linux).
    """
    count = 0
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return 0
    for fd in fds:
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if (sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
                    and sock.getsockname()[1] == address[1]):  # by port: a 0.0.0.0 listener too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                count += 1
        except OSError:
            pass
        finally:
            sock.close()
    return count


class RequestLimitsMiddleware:
    """ASGI middleware applying :class:`RequestLimits` (see the module docstring).

    Args:
        app: the ASGI app it wraps.
        limits: a :class:`RequestLimits`, or a callable returning the current one (the Serve ingress sets its
            limits from the app args after the app object exists).
    """

    def __init__(self, app, limits: RequestLimits | Callable[[], RequestLimits] = RequestLimits):
        self.app, self._limits = app, limits
        self.in_flight = 0
        self._buffers_capped = False

    @property
    def limits(self) -> RequestLimits:
        return self._limits if isinstance(self._limits, RequestLimits) else self._limits()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limits, method, path = self.limits, scope["method"], scope["path"]
        if not self._buffers_capped and limits.receive_buffer_bytes and scope.get("server"):
            self._buffers_capped = True
            cap_receive_buffers(scope["server"], limits.receive_buffer_bytes)
        counted = not limits.is_exempt(method, path)
        if counted and limits.max_in_flight and self.in_flight >= limits.max_in_flight:
            return await _send_error(send, 503, "overloaded", f"the service is handling {self.in_flight} requests, "
                                     "its limit; retry shortly", {"Retry-After": str(RETRY_AFTER_S)})
        limit = limits.body_limit(path)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            if int(declared) <= LINGER_MAX_BYTES:
                await _drain(receive, LINGER_S)
            return await _send_error(send, 413, "payload_too_large",
                                     f"request body of {int(declared)} bytes is over the {limit}-byte limit of "
                                     f"{path}", close=True)
        received, started = 0, time.monotonic()
        state = {"response_started": False, "rejected": False}

        async def reject(status: int, code: str, message: str) -> dict:
            # Answer now and tell the app the client left: it stops reading, and whatever it sends is dropped.
            if not state["response_started"]:
                state["response_started"] = True
                await _send_error(send, status, code, message, close=True)
            state["rejected"] = True
            return {"type": "http.disconnect"}

        async def limited_receive():
            nonlocal received
            if state["rejected"]:
                return {"type": "http.disconnect"}
            deadline = started + min(limits.body_max_s, limits.body_timeout_s + received / limits.body_min_rate)
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return await reject(408, "request_timeout", f"the request body arrived too slowly ({received} "
                                    f"bytes in {time.monotonic() - started:.0f} s)")
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    return await reject(413, "payload_too_large",
                                        f"request body is over the {limit}-byte limit of {path}")
            return message

        async def guarded_send(message):
            if state["rejected"]:
                return
            state["response_started"] |= message["type"] == "http.response.start"
            await send(message)

        if counted:
            self.in_flight += 1
        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["rejected"]:  # after a rejection the app only fails at reading what never came
                raise
        finally:
            if counted:
                self.in_flight -= 1
