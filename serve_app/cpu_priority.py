"""CPU priority of a serving replica: the nice value of every thread of this process (no Ray import).

Ray starts every worker process at nice 15 (its ``worker_niceness`` system setting, so the raylet and GCS stay
responsive), which makes a replica lose the CPU to any ordinary process on the node: a load generator, a batch
job, a shell. With 64 clients retrying at once on a 2-core machine (through the shedding proxy), the Encoder at
nice 15 got 0.74 of a core and answered 0.36 of its 8-client throughput; at nice 0 (``RAY_worker_niceness=0``,
:mod:`serve_app.serve_env`), 0.94 cores and 0.50 (benchmarks/RESULTS.md, "Overload"). A replica can ask for more with the ``niceness`` app
arg; a value below the one it has needs ``CAP_SYS_NICE`` (root, or ``securityContext.capabilities.add:
[SYS_NICE]`` on Kubernetes), without which the replica keeps its value and logs why.

Linux keeps a nice value per thread and a new thread inherits its creator's (sched(7), setpriority(2)), so every
thread that exists is set here, and the ones created later (the model's intra-op pool) follow.
"""

import logging
import os

logger = logging.getLogger(__name__)


def renice_threads(niceness: int | None) -> int | None:
    """Set the nice value of every thread of this process to ``niceness`` (-20 … 19; ``None``: leave it).

    Returns:
        The calling thread's nice value afterwards (``None`` when ``niceness`` is ``None``). When the change is
        not permitted (``PermissionError``: lowering needs ``CAP_SYS_NICE``), nothing is raised: a warning is
        logged and the threads keep their value.
    """
    if niceness is None:
        return None
    for tid in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except PermissionError:
            logger.warning("could not set nice %d (now %d): lowering a nice value needs CAP_SYS_NICE; the replica "
                           "keeps its priority", niceness, os.getpriority(os.PRIO_PROCESS, 0))
            break
    return os.getpriority(os.PRIO_PROCESS, 0)
