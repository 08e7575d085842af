"""The job service's scheduler: the store's jobs onto a worker pool.

* The scheduler is one thread in the server process.  It claims the next runnable job from
  the store (:meth:`JobStore.claim_next`: highest JobLevel first, FIFO within a level, paused
  queues skipped) whenever a slot of its :class:`~separator.workers.Pool` is idle, and records
  what the pool reports.  The pool runs each job in a worker that keeps the engine's models
  loaded between jobs (:func:`separator.jobs.job.run_task`): local worker processes
  (:class:`~separator.workers.LocalPool`, the default) or, with ``serve --ray-address``, Ray
  actors (:class:`~separator.workers.ray.RayPool`).  Separation never runs in the server process.
* A worker that dies mid-job (killed, out of memory, segfault; a lost Ray actor or node) loses
  its job: the lost attempt's temporary files are removed, and the job goes back to
  ``Submitted`` and runs again, until it has lost its worker ``max_attempts`` times
  (:func:`separator.workers.should_retry`); then it ends ``Failed`` (``InternalError``).  The pool
  starts a new worker and the service keeps going.
* While a job runs, its worker reports the engine's progress as a whole percentage (at most about
  once a second, and only when it changed; see :class:`separator.workers.child.Throttle`), and the
  scheduler stores it (:meth:`JobStore.set_progress`).  Reporting never fails or slows a job.
* Stopping the scheduler leaves running jobs ``Running`` in the store; the next start's
  :meth:`JobStore.recover` runs them again from the start (outputs are written atomically, so
  a half-run job leaves nothing behind).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from ..storage.local import remove_temporaries
from ..workers import MAX_ATTEMPTS, Finished, Lost, Pool, Progress, given_up_message
from .job import internal_error
from .store import JobRow, JobStore

log = logging.getLogger(__name__)

JOB_RUNNER = "separator.jobs.job:run_task"
"""The runner of the service's pools (context: ``engine``, ``storage_root``, ``engine_options``)."""


class Scheduler:
    """The scheduler thread over ``pool``.

    It claims the next runnable job from the store (:meth:`JobStore.claim_next`) whenever a
    slot is idle, records results and progress, and requeues the job of a lost worker (after
    ``max_attempts`` losses it ends ``Failed``/``InternalError``).
    ``on_finished(job_id)`` is called (in the scheduler thread) after a job reached a final
    state; it must not block (the service hands callbacks to their own thread).
    ``model_for(row)`` chooses the model name for a job (None: the engine's default).
    The pool's worker pids are kept in ``state_dir/workers.json``.
    """

    def __init__(self, store: JobStore, pool: Pool, *, storage_root: str | Path,
                 max_attempts: int = MAX_ATTEMPTS, state_dir: str | Path | None = None,
                 on_finished: Callable[[str], None] | None = None,
                 model_for: Callable[[JobRow], str | None] | None = None):
        self.store = store
        self.pool = pool
        self.storage_root = Path(storage_root)
        self.max_attempts = max_attempts
        self.state_dir = Path(state_dir) if state_dir else None
        self.on_finished = on_finished or (lambda job_id: None)
        self.model_for = model_for or (lambda row: None)
        self._busy: dict[str, tuple[str, int]] = {}     # slot -> (job_id, attempt): the task key
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._thread: threading.Thread | None = None
        self._pids_written: dict[str, int] | None = None

    @property
    def n(self) -> int:
        """How many jobs run at once."""
        return self.pool.n

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self.pool.open()
        log.info("jobs run on %s", self.pool.describe())
        self._write_pids()
        self._thread = threading.Thread(target=self._run, name="separator-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scheduling and the workers.  Jobs still running stay ``Running`` in the store
        and run again from the start on the next :meth:`JobStore.recover`."""
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self.pool.close(timeout)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def wake(self) -> None:
        """Tell the scheduler that something changed (a job was submitted, a queue resumed)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def pids(self) -> dict[str, int]:
        return self.pool.pids()

    # -- internals -------------------------------------------------------------
    def _write_pids(self) -> None:
        if self.state_dir is None:
            return
        pids = self.pids()
        if pids == self._pids_written:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "workers.json.tmp"
        tmp.write_text(json.dumps(pids))
        os.replace(tmp, self.state_dir / "workers.json")
        self._pids_written = pids

    def _dispatch(self) -> None:
        for slot in self.pool.idle(respawn=not self._stop.is_set()):
            if self._stop.is_set():
                return
            row = self.store.claim_next(slot)
            if row is None:
                return
            payload = {"job_id": row.job_id, "attempt": row.attempts, "bucket": row.bucket,
                       "region": row.region, "queue_id": row.queue_id, "created": row.created,
                       "request": row.request, "template": row.template_dict,
                       "model": self.model_for(row)}
            key = (row.job_id, row.attempts)
            self._busy[slot] = key
            self.pool.start(slot, key, payload)
            log.info("job %s (level %s) -> worker %s (attempt %s)", row.job_id, row.level, slot,
                     row.attempts)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._dispatch()
                self._write_pids()
                self.pool.poll(1.0, self._on_event, self._wake_r)
                with contextlib.suppress(BlockingIOError, OSError):
                    while os.read(self._wake_r, 4096):
                        pass
            except Exception:  # never let the scheduler die
                log.error("scheduler error\n%s", traceback.format_exc())
                time.sleep(0.5)

    def _on_event(self, ev: Finished | Lost | Progress) -> None:
        if isinstance(ev, Progress):
            self._on_progress(ev)
        elif isinstance(ev, Finished):
            self._on_result(ev)
        else:
            self._on_lost(ev)

    def _on_progress(self, ev: Progress) -> None:
        if self._busy.get(ev.slot) != ev.key:
            return
        job_id, attempt = ev.key
        try:  # a failed progress write must not cost the events behind it
            self.store.set_progress(job_id, attempt=attempt, progress=int(ev.value))
        except Exception as err:
            log.warning("job %s: could not store progress %s%% (%s)", job_id, ev.value, err)

    def _on_result(self, ev: Finished) -> None:
        job_id, attempt = ev.key
        if self._busy.get(ev.slot) == ev.key:
            del self._busy[ev.slot]
        result = ev.result if ev.error is None else internal_error(ev.error)
        state = result["state"] if result["state"] in ("Success", "Failed") else "Failed"
        changed = self.store.finish(job_id, attempt=attempt, state=state, code=result["code"],
                                    message=result["message"], result=result,
                                    started=result.get("started"), ended=result.get("ended"))
        log.debug("job %s %s (%s) on worker %s", job_id, state, result["code"], ev.slot)
        if changed:
            self._notify(job_id)

    def _on_lost(self, ev: Lost) -> None:
        busy = self._busy.pop(ev.slot, None)
        if busy is None:
            return
        job_id, attempt = busy
        # Its process is gone, so its temporaries are garbage; remove them before the job runs
        # again or fails (by owner: other jobs' temporaries under the same root stay).  This
        # walks the storage root, which only a crash makes the scheduler do.
        if ev.temp_owner:
            removed = remove_temporaries(self.storage_root, ev.temp_owner)
            if removed:
                log.info("job %s: removed %d temporary file(s) of its lost worker", job_id, removed)
        new = self.store.requeue(job_id, attempt=attempt, crashed=True, max_attempts=self.max_attempts,
                                 message=given_up_message(self.max_attempts, ev.reason, "job"))
        log.warning("job %s: its worker %s was lost (%s); job is now %s", job_id, ev.slot, ev.reason, new)
        if new == "Failed":
            self._notify(job_id)
        elif new == "Submitted":
            self.wake()

    def _notify(self, job_id: str) -> None:
        try:
            self.on_finished(job_id)
        except Exception:
            log.error("on_finished(%s) failed\n%s", job_id, traceback.format_exc())
