"""The worker pool: processes that keep their models loaded and run one task at a time each.

Both the job service (:class:`separator.jobs.scheduler.Scheduler`) and ``separator batch``
(:func:`separator.batch.runner.run_batch`) drive a :class:`Pool`; the pool only runs tasks and
says what happened, the caller owns the order, the retries (with :func:`should_retry`) and the
results.

* A **task** is a key (hashable; the caller's name for it) and a picklable payload.  It runs in
  a worker as ``runner(context, payload, progress) -> result`` (see :mod:`.child`), where the
  runner is a ``"module:function"`` loaded once per worker, and ``context`` is the pool's
  (fixed for its life: storage root, engine options …) plus the worker's ``device``.
* :meth:`Pool.idle` lists the slots that can take a task now, :meth:`Pool.start` hands one a
  task, and :meth:`Pool.poll` waits and reports :class:`Finished`, :class:`Lost` and
  :class:`Progress` events.  A task is handed out only to an idle slot, so waiting tasks stay
  with the caller (the job store, the batch's queue), where they can be reordered or cancelled.
* Pools: :class:`LocalPool` (spawned processes on this machine), :class:`InProcessPool` (the
  caller's own process, for ``batch --workers 0``) and :class:`separator.workers.ray.RayPool`
  (Ray actors).  :func:`plan_workers` chooses the local workers and their devices.
* A worker that dies (killed, out of memory, a crash in native code; a lost Ray actor or node)
  is a :class:`Lost` event for the task it held; the pool starts a new worker.  Whether the
  task runs again is :func:`should_retry`'s call: at most :data:`MAX_ATTEMPTS` runs in all.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import select
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from ..storage.local import temp_owner

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The retry policy (one for the service and the batch)
# ---------------------------------------------------------------------------------------------

MAX_ATTEMPTS = 2
"""How many times a task may lose its worker before it is given up (so it runs at most twice).

A lost worker is a one-off (a killed process, a lost node: one retry covers it) or the input's
own doing (it runs out of memory, it crashes a decoder): then every retry is lost again and
costs as long as the first try.  The service and local batch workers always used 2; batch on Ray
used 3, which only added a third loss to such inputs."""


def should_retry(losses: int, max_attempts: int = MAX_ATTEMPTS) -> bool:
    """After a task's ``losses``-th lost worker: run it again (True), or give it up (False)."""
    return losses < max(1, int(max_attempts))


def given_up_message(losses: int, reason: str, what: str = "task") -> str:
    """The error message of a task given up after ``losses`` lost workers, the last one lost
    for ``reason`` (a :attr:`Lost.reason`); ``what`` names the task ("job", "input")."""
    return f"the worker running this {what} was lost {losses} time(s), the last time because {reason}"


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------

@dataclass
class Finished:
    """The task ``key`` on ``slot`` ended: the runner returned ``result``, or raised, and then
    ``result`` is None and ``error`` says what (``"TypeError: …"``; a runner should return its
    failures as data, so this is a bug).  ``node``: the Ray node it ran on (None: this machine)."""
    slot: str
    key: Hashable
    result: Any
    error: str | None = None
    node: str | None = None


@dataclass
class Lost:
    """The worker behind ``slot`` went away (process died, Ray actor or node lost).  ``key`` is
    the task it held, which did not finish (None: it was idle).  ``reason`` says what happened
    ("the worker process … died (exit code -9)").  ``temp_owner`` names the dead process's
    temporary files (:func:`separator.storage.local.temp_owner`; None: unknown)."""
    slot: str
    key: Hashable | None
    reason: str
    temp_owner: str | None = None


@dataclass
class Progress:
    """The task ``key`` on ``slot`` reported ``value`` (what the runner passed to ``progress``:
    a percentage for a job, seconds of audio for a batch input)."""
    slot: str
    key: Hashable
    value: Any


Event = Finished | Lost | Progress
OnEvent = Callable[[Event], None]


class Pool:
    """Where tasks run: ``n`` slots, one task at a time each.

    * :meth:`open` starts the workers, :meth:`close` stops them (a running task is abandoned:
      its worker is stopped);
    * :meth:`idle` – slots ready for a task now (with ``respawn``, lost workers are started
      again first);
    * :meth:`start` – run task ``key``/``payload`` on an idle slot;
    * :meth:`poll` – wait up to ``timeout`` s (returning early when an event came, or
      ``wake_fd`` is readable) and pass each event to ``on_event``.
    """

    kind = "abstract"
    n = 1

    def open(self) -> None:
        raise NotImplementedError

    def close(self, timeout: float = 5.0) -> None:
        raise NotImplementedError

    def idle(self, respawn: bool = True) -> list[str]:
        raise NotImplementedError

    def start(self, slot: str, key: Hashable, payload: Any) -> None:
        raise NotImplementedError

    def poll(self, timeout: float, on_event: OnEvent, wake_fd: int | None = None) -> None:
        raise NotImplementedError

    @property
    def exhausted(self) -> bool:
        """No worker is left and none will be started (see ``LocalPool(max_respawns=)``)."""
        return False

    def pids(self) -> dict[str, int]:
        """Worker process ids by slot (a Ray actor's: on its own node)."""
        return {}

    def describe(self) -> str:
        return self.kind


def _wait_fd(fd: int | None, timeout: float) -> None:
    if fd is None:
        time.sleep(max(0.0, timeout))
    else:
        select.select([fd], [], [], max(0.0, timeout))


# ---------------------------------------------------------------------------------------------
# The plan: which local workers, on which devices
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerSpec:
    device: str | None
    threads: int | None


def require_device(device: str | None) -> None:
    """ValueError when ``device`` names CUDA and this machine has none."""
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} was requested but CUDA is not available on this machine")


def plan_workers(workers: int | None, device: str | None) -> list[WorkerSpec]:
    """Default: one worker per GPU, each pinned to its device; else one CPU worker using all
    cores.  ``workers=N`` CPU workers share the cores (``cores // N`` torch threads each); with
    GPUs, N workers go round-robin over them.  An explicit device (``cpu``, ``cuda:1``) is used
    by every worker."""
    import torch

    cores = os.cpu_count() or 1
    ngpu = 0
    if device in (None, "", "cuda") and torch.cuda.is_available():
        ngpu = torch.cuda.device_count()
    if ngpu:
        n = workers or ngpu
        return [WorkerSpec(f"cuda:{i % ngpu}", max(1, cores // n)) for i in range(n)]
    n = max(1, workers or 1)
    return [WorkerSpec(device or "cpu", max(1, cores // n)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Local processes
# ---------------------------------------------------------------------------------------------

@dataclass
class _Worker:
    slot: str
    spec: WorkerSpec
    process: Any
    conn: Connection
    busy: bool = False
    key: Hashable | None = None
    since: float = field(default_factory=time.time)
    dead: bool = False


class LocalPool(Pool):
    """One spawned process per :class:`WorkerSpec` (slots ``w0``, ``w1`` …), each running
    :func:`separator.workers.child.process_main`: it loads ``runner`` once and runs the tasks
    it is handed over a pipe, one at a time.

    A dead worker is noticed through its process sentinel, reported as :class:`Lost` and
    started again by the next :meth:`idle` (after a back-off when it keeps dying right after
    it started; at most ``max_respawns`` times in all when that is given).  Workers die with
    this process (``PR_SET_PDEATHSIG`` on Linux, and a parent check whenever they report
    progress or wait for a task), so ``kill -9`` of the caller leaves none running.
    """

    kind = "local"

    def __init__(self, runner: str, context: dict[str, Any], specs: list[WorkerSpec], *,
                 max_respawns: int | None = None):
        self.runner = runner
        self.context = dict(context)
        self.specs = list(specs) or [WorkerSpec(None, None)]
        self.n = len(self.specs)
        self.max_respawns = max_respawns
        self._respawns = 0
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._quick_deaths = 0

    def describe(self) -> str:
        devs = sorted({s.device or "auto" for s in self.specs})
        threads = self.specs[0].threads
        return (f"{self.n} local worker(s) on {', '.join(devs)}"
                + (f", {threads} thread(s) each" if threads else ""))

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> None:
        for i, spec in enumerate(self.specs):
            self._workers.append(self._spawn(f"w{i}", spec))

    def close(self, timeout: float = 5.0) -> None:
        for w in self._workers:   # an idle worker exits when told; a busy one is stopped
            with contextlib.suppress(Exception):
                if not w.busy and not w.dead:
                    w.conn.send(None)
        deadline = time.time() + timeout
        for w in self._workers:
            if w.busy and w.process.is_alive():
                w.process.terminate()   # SIGTERM: it unwinds, so its open temporaries go
            w.process.join(max(0.1, deadline - time.time()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(1)
            with contextlib.suppress(Exception):
                w.conn.close()
        self._workers.clear()

    def pids(self) -> dict[str, int]:
        return {w.slot: w.process.pid for w in self._workers}

    @property
    def exhausted(self) -> bool:
        return (self.max_respawns is not None and self._respawns >= self.max_respawns
                and all(w.dead for w in self._workers))

    def _spawn(self, slot: str, spec: WorkerSpec) -> _Worker:
        from .child import process_main

        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=process_main, name=f"separator-{slot}", daemon=True,
            args=(child, self.runner, self.context, spec.device, spec.threads,
                  logging.getLogger().level or logging.INFO, os.getpid()))
        proc.start()
        child.close()
        log.info("worker %s started (pid %s, %s)", slot, proc.pid, spec.device or "auto")
        return _Worker(slot, spec, proc, parent)

    # -- the pool interface ----------------------------------------------------------------
    def idle(self, respawn: bool = True) -> list[str]:
        out = []
        for i, w in enumerate(self._workers):
            if w.dead and respawn and (self.max_respawns is None or self._respawns < self.max_respawns):
                if time.time() - w.since < 2:    # it died right after it started: back off
                    self._quick_deaths += 1
                    time.sleep(min(5.0, 0.2 * self._quick_deaths))
                else:
                    self._quick_deaths = 0
                self._respawns += 1
                w = self._workers[i] = self._spawn(w.slot, w.spec)
            if not w.busy and not w.dead and w.process.is_alive():
                out.append(w.slot)
        return out

    def start(self, slot: str, key: Hashable, payload: Any) -> None:
        w = next(w for w in self._workers if w.slot == slot)
        try:
            w.conn.send((key, payload))
        except (BrokenPipeError, OSError):
            pass  # the worker is gone; poll() reports it through its sentinel
        w.busy, w.key, w.since = True, key, time.time()

    def poll(self, timeout: float, on_event: OnEvent, wake_fd: int | None = None) -> None:
        objs: list[Any] = [] if wake_fd is None else [wake_fd]
        for w in self._workers:
            if not w.dead:
                objs.extend((w.conn, w.process.sentinel))
        if len(objs) == (0 if wake_fd is None else 1):
            _wait_fd(wake_fd, timeout)
            return
        ready = wait(objs, timeout=timeout)
        for w in self._workers:
            if w.dead:
                continue
            if w.conn in ready:
                self._receive(w, on_event)
            if w.process.sentinel in ready or not w.process.is_alive():
                self._receive(w, on_event)   # what it sent before it died
                w.process.join(0.1)
                code = w.process.exitcode
                log.warning("worker %s (pid %s) died with exit code %s", w.slot, w.process.pid, code)
                with contextlib.suppress(Exception):
                    w.conn.close()
                key = w.key if w.busy else None
                w.dead, w.busy, w.key = True, False, None
                on_event(Lost(w.slot, key, f"the worker process (pid {w.process.pid}) died "
                              f"(exit code {code})", temp_owner(w.process.pid)))

    def _receive(self, w: _Worker, on_event: OnEvent) -> None:
        try:
            while not w.dead and w.conn.poll():
                kind, key, *rest = w.conn.recv()
                if not w.busy or key != w.key:
                    continue   # a stale message (cannot happen: one task at a time)
                if kind == "progress":
                    on_event(Progress(w.slot, key, rest[0]))
                else:
                    w.busy, w.key = False, None
                    on_event(Finished(w.slot, key, rest[0], rest[1]))
        except (EOFError, OSError):
            pass


# ---------------------------------------------------------------------------------------------
# In the caller's process (``batch --workers 0``: debugging, tiny batches)
# ---------------------------------------------------------------------------------------------

class InProcessPool(Pool):
    """One slot (``main``) that runs its task in this process, inside :meth:`poll` (progress
    events are passed on while it runs).  Nothing process-wide is set up: the caller is the
    entry point and did that."""

    kind = "inprocess"

    def __init__(self, runner: str, context: dict[str, Any], device: str | None = None):
        self.runner = runner
        self.context = {**context, "device": device}
        self.device = device
        self._run: Callable[..., Any] | None = None
        self._task: tuple[Hashable, Any] | None = None

    def describe(self) -> str:
        return f"in-process on {self.device or 'auto'}"

    def open(self) -> None:
        from .child import load_runner

        self._run = load_runner(self.runner)

    def close(self, timeout: float = 5.0) -> None:
        self._task = None

    def idle(self, respawn: bool = True) -> list[str]:
        return [] if self._task is not None else ["main"]

    def start(self, slot: str, key: Hashable, payload: Any) -> None:
        self._task = (key, payload)

    def poll(self, timeout: float, on_event: OnEvent, wake_fd: int | None = None) -> None:
        from .child import Throttle, run_one

        if self._task is None:
            _wait_fd(wake_fd, timeout)
            return
        if self._run is None:
            self.open()
        key, payload = self._task
        reporter = Throttle(lambda value: on_event(Progress("main", key, value)), interval=1.0)
        try:
            result, error = run_one(self._run, self.context, payload, reporter)
        finally:
            reporter.close()
            self._task = None
        on_event(Finished("main", key, result, error))
