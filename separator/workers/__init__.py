"""Worker pools: where the job service's jobs and a batch's inputs are separated.

:mod:`.pool` (the interface, events, retry policy, the local plan, :class:`LocalPool`,
:class:`InProcessPool`), :mod:`.child` (what runs inside a worker) and :mod:`.ray`
(:class:`~separator.workers.ray.RayPool`; imports Ray only when one is made).
"""
from .pool import (
    MAX_ATTEMPTS, Event, Finished, InProcessPool, LocalPool, Lost, Pool, Progress, WorkerSpec,
    given_up_message, plan_workers, require_device, should_retry,
)

__all__ = ["MAX_ATTEMPTS", "Event", "Finished", "InProcessPool", "LocalPool", "Lost", "Pool", "Progress",
           "WorkerSpec", "given_up_message", "plan_workers", "require_device", "should_retry"]
