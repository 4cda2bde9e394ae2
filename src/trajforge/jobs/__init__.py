"""Training jobs: a queue in the store, one subprocess per job, events, cancel and recovery.

* :func:`submit` checks a request against its kind of job (:mod:`.kinds`: the backends, options,
  dataset formats and run function of each) and queues a job (``pending``).
* A :class:`JobRunner` (:mod:`.runner`) claims pending jobs from the store and runs each as
  ``python -m trajforge.jobs <id> --db <url>`` (:mod:`.process`), a process of its own; it
  supervises every running job — a dead one is failed ``interrupted``, an orphan adopted — and
  turns a cancel into SIGTERM, then SIGKILL. It also calls the runner hooks (:mod:`.hooks`).
* The job process reports progress as events, heartbeats, polls the store for a cancel, and ends
  its job ``completed``, ``failed`` or ``cancelled``.

Job state and events live in the store, so the CLI, the API and a second server see the same jobs.
"""

from trajforge.jobs import hooks
from trajforge.jobs.kinds import BACKENDS, Kind, backends, kind_of
from trajforge.jobs.queue import cancel, counts, get, submit, submit_benchmark, wire
from trajforge.jobs.runner import GRACE_S, HEARTBEAT_S, INTERRUPTED, JobRunner, heartbeat_every_s

__all__ = [
    "BACKENDS",
    "GRACE_S",
    "HEARTBEAT_S",
    "INTERRUPTED",
    "JobRunner",
    "Kind",
    "backends",
    "cancel",
    "counts",
    "get",
    "heartbeat_every_s",
    "hooks",
    "kind_of",
    "submit",
    "submit_benchmark",
    "wire",
]
