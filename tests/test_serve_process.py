"""stop_serve ends `serve run` and everything it started, even what ignores Ctrl-C and SIGTERM (no Ray here).

Stand-ins for `serve run` in their own session, as start_serve makes it: a parent, and a child in a process group
of its own (as Ray starts each worker) that ignores SIGINT and SIGTERM.
"""

import subprocess
import sys
import textwrap
import time

from batch_jobs.serve_process import _session_members, stop_serve

CHILD = "import os, signal, time; os.setpgrp(); signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def _start(on_sigint: str) -> tuple[subprocess.Popen, int]:
    parent = textwrap.dedent(f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGINT, {on_sigint})
        child = subprocess.Popen([sys.executable, "-c", {CHILD!r}])
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    child_pid = int(process.stdout.readline())
    return process, child_pid


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_hung_serve_run_and_a_stubborn_worker_are_killed_within_the_bounds():
    process, child = _start("signal.SIG_IGN")  # Ctrl-C does nothing; the child ignores SIGTERM too
    assert {process.pid, child} <= set(_session_members(process.pid))
    start = time.monotonic()
    stop_serve(process, timeout_s=0.5, kill_after_s=0.5)
    elapsed = time.monotonic() - start
    assert process.returncode is not None
    assert not _running(child) and _session_members(process.pid) == []
    assert 1.0 <= elapsed < 4.0, elapsed  # SIGINT 0.5 s, SIGTERM 0.5 s, then SIGKILL ends both at once


def test_serve_run_that_exits_on_ctrl_c_takes_its_session_with_it():
    # The parent exits on SIGINT at once, like `serve run` after its shutdown, but leaves a child behind.
    process, child = _start("lambda *_: sys.exit(0)")
    start = time.monotonic()
    stop_serve(process, timeout_s=30, kill_after_s=0.5)
    assert process.returncode == 0
    assert not _running(child) and _session_members(process.pid) == []
    assert time.monotonic() - start < 4.0  # the leftover gets SIGTERM when the parent exits, not after 30 s
