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


def _session_members(sid: int) -> list[int]:
    """PIDs of the running processes of session ``sid`` (zombies, dead but not yet reaped, do not count).

    The session, not the process group: Ray starts each worker (replicas, the Serve controller, HAProxy's
    manager) in a process group of its own, but all stay in the session `serve run` leads. Linux reads /proc;
    elsewhere the session leader's process group is what can be found.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(sid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [-sid]  # os.kill(-pgid, sig) signals the group
    members = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session ...
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_serve(process: subprocess.Popen, timeout_s: float = 60, kill_after_s: float = 5) -> None:
    """Stop `serve run` and every process of its session (the Ray cluster it started: GCS, raylet, replicas).

    SIGINT to `serve run` first, as Ctrl-C would: it shuts Serve down, then its Ray, and exits. Once it has exited,
    or after ``timeout_s`` seconds, SIGTERM goes to every process of its session still there, and after
    ``kill_after_s`` more seconds SIGKILL. A KeyboardInterrupt while waiting (Ctrl-C pressed again) moves on to
    the next signal at once. Returns when no process of the session is left, so a following start finds the port
    and the CPUs free.
    """
    sid = process.pid  # start_serve made it a session leader

    def exited() -> bool:
        return process.poll() is not None

    def gone() -> bool:
        return exited() and not _session_members(sid)

    for sig, wait_s, done in ((signal.SIGINT, timeout_s, exited), (signal.SIGTERM, kill_after_s, gone),
                              (signal.SIGKILL, 5.0, gone)):
        try:
            if gone():
                break
            if sig == signal.SIGINT:
                process.send_signal(sig)  # only to `serve run`: Ray's own processes block SIGINT
            else:
                for pid in _session_members(sid):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + wait_s
            while not done() and time.monotonic() < deadline:
                time.sleep(0.1)
        except KeyboardInterrupt:
            continue
    process.wait()


def start_shedding_proxy(config: Path | None, cwd: Path, port: int | None = None,
                         upstream: str | None = None) -> subprocess.Popen:
    """Start the shedding proxy (``python -m serve_app.shedding_proxy``, an HAProxy in front of Serve's HTTP port)
    in a session of its own, with ``config`` (``None``: its defaults); ``port`` and ``upstream`` (host:port of
    Serve's HTTP) override the config's. Stop it with :func:`stop_shedding_proxy`."""
    command = [sys.executable, "-m", "serve_app.shedding_proxy"]
    for flag, value in (("--config", config), ("--port", port), ("--upstream", upstream)):
        if value is not None:
            command += [flag, str(value)]
    return subprocess.Popen(command, cwd=cwd, preexec_fn=_default_sigint, start_new_session=True)


def stop_shedding_proxy(process: subprocess.Popen, timeout_s: float = 5) -> None:
    """SIGTERM (HAProxy stops at once, dropping open connections), SIGKILL if it is still there after ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
