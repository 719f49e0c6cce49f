"""Run `serve run CONFIG` as a child process and stop it cleanly (used by the demo and the benchmarks)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _default_sigint() -> None:
    # A shell starts background commands with SIGINT ignored, and Python then never installs its
    # KeyboardInterrupt handler, so `serve run` would ignore our Ctrl-C. Restore the default first.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_serve(config: Path, env: dict, cwd: Path, quiet: bool = False) -> subprocess.Popen:
    """Start `serve run config` in its own process group (so it and the Ray it starts can be stopped)."""
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen([sys.executable, "-m", "ray.serve.scripts", "run", str(config)], env=env, cwd=cwd,
                            stdout=out, stderr=out, preexec_fn=_default_sigint, start_new_session=True)


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 300) -> dict:
    """Poll ``url`` until it answers 200; raises RuntimeError if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve run exited with code {process.returncode}")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not healthy after {timeout_s} s")


def stop_serve(process: subprocess.Popen, timeout_s: float = 60) -> None:
    """Ctrl-C (`serve run` then shuts Serve and its Ray down); SIGTERM to its process group if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
