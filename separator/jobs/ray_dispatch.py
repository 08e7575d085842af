"""Job-service workers on a Ray cluster (``separator serve --ray-address ADDR|auto``).

The server keeps everything it has without Ray: the SQLite job store, priorities (JobLevel,
FIFO within a level), pause/resume, cancel, callbacks and restart recovery all stay in the
server process (:class:`separator.jobs.workers.WorkerPool`).  Only *where a started job runs*
changes: instead of local worker processes, a pool of Ray actors.

* One actor per GPU when the cluster has GPUs (unless ``device = "cpu"``), else one per
  ``ray_cpus_per_worker`` CPUs (default 1; torch uses that many threads in the actor), counted
  from the cluster's resources when the server starts, and at most ``workers`` when that is
  given.  Concurrency = the number of actors.  Actors are spread over the nodes (``SPREAD``);
  each imports the engine once and keeps its models loaded between jobs.
* A job is handed to an actor only when that actor is idle, so waiting jobs stay in the store:
  they keep their order, a paused queue starts nothing, and cancelling a ``Submitted`` job means
  it is never sent to Ray.  A running job cannot be cancelled (the service refuses it, as
  without Ray).
* Every actor calls the same engine function (``run_job``, or the configured ``engine``) on the
  **same storage root path**, which must therefore be a shared file system mounted at the same
  path on every node (and ``separator``, its models and ffmpeg installed on every node).  An
  actor whose node cannot see the storage root is not used (an error is logged).
* A lost actor (its process killed, its node gone) fails its task with a Ray actor error: the
  job goes back to ``Submitted`` and runs again on the next free actor; after ``max_attempts``
  (2) losses it ends ``Failed`` with ``InternalError``, exactly like a crashed local worker.
  Actors are created with ``max_restarts=-1`` so Ray brings a lost one back where resources
  allow; it is used again once it answers.  How soon a dead *node* is noticed is Ray's health
  check (about 30 s by default).
* Progress: an actor keeps the percentage its running job last reported (a threaded actor,
  ``max_concurrency=2``, so that :meth:`_JobActor.progress` answers while ``run`` works) and the
  dispatcher asks each busy actor for it about once a second; a failed ask is ignored.
* The actors belong to the server (not detached): stopping or killing the server ends them.
  Jobs that were running stay ``Running`` in the store and run again on the next start.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time
from pathlib import Path
from typing import Any

from ..batch.ray_backend import INSTALL_HINT, RayUnavailable, import_ray  # noqa: F401 - one message for both
from .workers import (
    Dispatcher, Event, Finished, Lost, Progress, ProgressReporter, load_engine, run_safely,
)

log = logging.getLogger(__name__)

class _JobActor:
    """One slot: holds the engine (and the models it loads) for its life; one job at a time."""

    def __init__(self, storage_root: str, engine_spec: str, device: str | None,
                 engine_options: dict[str, Any], threads: int | None, log_level: int):
        logging.basicConfig(level=log_level, format="%(asctime)s ray-worker[%(process)d] %(levelname)s %(message)s")
        from ..runtime import configure_process

        if threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        configure_process()
        from ..storage import LocalStorage

        self.storage_root = storage_root
        self.storage = LocalStorage(storage_root)
        self.engine = load_engine(engine_spec)
        self.device = device
        self.engine_options = engine_options
        self.threads = threads
        self._threads_set = False
        self._progress: tuple[str, int, int] | None = None   # (job_id, attempt, percent)

    def ready(self) -> dict[str, Any]:
        import ray

        from ..storage.local import temp_owner

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "temp_owner": temp_owner(), "storage": Path(self.storage_root).is_dir()}

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.threads and not self._threads_set:
            self._threads_set = True
            try:  # torch is imported by the real engine anyway; the fake one does not need it
                import torch

                torch.set_num_threads(max(1, int(self.threads)))
            except Exception:  # noqa: BLE001
                pass
        job_id, attempt = payload["job_id"], payload["attempt"]
        self._progress = (job_id, attempt, 0)

        def keep(pct: int) -> None:
            self._progress = (job_id, attempt, pct)

        # no time throttle here: keeping the value is free; the dispatcher asks once a second
        reporter = ProgressReporter(keep, interval=0.0, job_id=job_id)
        try:
            return run_safely(payload, self.engine, self.storage, self.device, self.engine_options,
                              reporter)
        finally:
            reporter.close()
            self._progress = None

    def progress(self) -> tuple[str, int, int] | None:
        """The running job's latest ``(job_id, attempt, percent)`` (None when idle)."""
        return self._progress


class RayActors(Dispatcher):
    """A :class:`~separator.jobs.workers.Dispatcher` over Ray actors (slots ``r0``, ``r1``, …)."""

    kind = "ray"

    def __init__(self, address: str, *, storage_root: str, engine: str, device: str | None,
                 engine_options: dict[str, Any], workers: int | None = None,
                 cpus_per_worker: float = 1.0):
        self.ray = import_ray()
        self.address = address
        self.storage_root = storage_root
        self.engine = engine
        self.device = device
        self.engine_options = dict(engine_options)
        self.requested = workers
        self.cpus_per_worker = float(cpus_per_worker)
        self.n = max(1, int(workers or 1))
        self._desc = f"Ray cluster at {address}"
        self._owned = False
        self._actor_cls: Any = None
        self._actor_device: str | None = device
        self._actors: dict[str, Any] = {}
        self._state: dict[str, str] = {}       # starting | idle | busy | unusable
        self._info: dict[str, dict[str, Any]] = {}
        self._probes: dict[Any, str] = {}       # ready() ref -> slot
        self._inflight: dict[Any, tuple[str, str, int]] = {}   # run() ref -> (slot, job_id, attempt)
        self._retry_at: dict[str, float] = {}   # slot -> when to create it again
        self._asks: dict[Any, str] = {}          # progress() ref -> slot
        self._asked_at: dict[str, float] = {}    # slot -> when its progress was last asked for
        self._reported: dict[str, tuple[str, int, int]] = {}   # slot -> last progress passed on
        self.progress_interval = 1.0

    def describe(self) -> str:
        return self._desc

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            addr = None if self.address in ("", None) else self.address
            try:
                ray.init(address=addr, log_to_driver=False, logging_level=logging.WARNING,
                         configure_logging=False)
            except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, …
                raise RuntimeError(f"could not connect to the Ray cluster at {self.address}: {e}") from e
            self._owned = True
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
        use_gpu = gpus >= 1 and self.device != "cpu"
        if use_gpu:
            n = int(gpus)
            opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": self.cpus_per_worker}
            self._actor_device = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
        else:
            n = max(1, int(cpus // self.cpus_per_worker))
            opts = {"num_cpus": self.cpus_per_worker}
            self._actor_device = self.device or "cpu"
        if self.requested:
            n = min(n, max(1, int(self.requested)))
        self.n = n
        nodes = len([x for x in ray.nodes() if x.get("Alive")])
        self._desc = (f"{n} Ray actor(s) ({'1 GPU' if use_gpu else f'{self.cpus_per_worker:g} CPU'} each) "
                      f"on a {nodes}-node cluster at {self.address}")
        self._actor_cls = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=2,
                                     **opts)(_JobActor)
        for i in range(n):
            self._create(f"r{i}")

    def _create(self, slot: str) -> None:
        threads = max(1, int(self.cpus_per_worker))
        actor = self._actor_cls.options(scheduling_strategy="SPREAD").remote(
            self.storage_root, self.engine, self._actor_device, self.engine_options, threads,
            logging.getLogger().level or logging.INFO)
        self._actors[slot] = actor
        self._state[slot] = "starting"
        self._info.pop(slot, None)
        self._probes[actor.ready.remote()] = slot

    def close(self, timeout: float) -> None:
        ray = self.ray
        for actor in self._actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self._actors.clear()
        self._probes.clear()
        self._inflight.clear()
        self._asks.clear()
        if self._owned:
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001
                pass
            self._owned = False

    def pids(self) -> dict[str, int]:
        """Actor process ids (on their own nodes)."""
        return {slot: info["pid"] for slot, info in sorted(self._info.items())}

    # -- the dispatch interface ------------------------------------------------------------
    def idle(self, stopping: threading.Event) -> list[str]:
        now = time.monotonic()
        for slot, at in list(self._retry_at.items()):
            if now >= at and not stopping.is_set():
                del self._retry_at[slot]
                self._create(slot)
        return [s for s in sorted(self._state) if self._state[s] == "idle"]

    def start(self, slot: str, payload: dict[str, Any]) -> None:
        ref = self._actors[slot].run.remote(payload)
        self._inflight[ref] = (slot, payload["job_id"], payload["attempt"])
        self._state[slot] = "busy"

    def poll(self, timeout: float, wake_fd: int) -> list[Event]:
        ray = self.ray
        deadline = time.monotonic() + timeout
        events: list[Event] = []
        while True:
            self._ask_progress()
            refs = list(self._inflight) + list(self._probes) + list(self._asks)
            remaining = max(0.0, deadline - time.monotonic())
            if not refs:
                if self._retry_at:
                    remaining = min(remaining, max(0.0, min(self._retry_at.values()) - time.monotonic()))
                select.select([wake_fd], [], [], remaining)
                return events
            ready, _ = ray.wait(refs, num_returns=1, timeout=min(0.1, remaining))
            changed = False
            for ref in ready:
                changed = True
                if ref in self._probes:
                    self._on_probe(self._probes.pop(ref), ref)
                elif ref in self._asks:
                    ev = self._on_progress(self._asks.pop(ref), ref)
                    if ev is not None:
                        events.append(ev)
                else:
                    ev = self._on_done(ref)
                    if ev is not None:
                        events.append(ev)
            if changed or select.select([wake_fd], [], [], 0)[0] or time.monotonic() >= deadline:
                return events

    # -- internals ------------------------------------------------------------------------
    def _ask_progress(self) -> None:
        """Ask each busy actor (with no question pending) for its job's progress, about once
        per ``progress_interval``."""
        now = time.monotonic()
        pending = set(self._asks.values())
        for slot, _job_id, _attempt in list(self._inflight.values()):
            last = self._asked_at.get(slot, float("-inf"))
            if slot in pending or now - last < self.progress_interval:
                continue
            try:
                self._asks[self._actors[slot].progress.remote()] = slot
            except Exception:  # noqa: BLE001 - progress is best effort
                pass
            self._asked_at[slot] = now

    def _on_progress(self, slot: str, ref: Any) -> Event | None:
        try:
            got = self.ray.get(ref)
        except Exception:  # noqa: BLE001 - a lost actor is reported by its run() task
            return None
        if not got:
            return None
        job_id, attempt, pct = got
        current = {(s, j, a) for s, j, a in self._inflight.values()}
        stale = (slot, job_id, attempt) not in current
        if pct <= 0 or stale or self._reported.get(slot) == (job_id, attempt, pct):
            return None
        self._reported[slot] = (job_id, attempt, pct)
        return Progress(slot, job_id, attempt, int(pct))

    def _on_probe(self, slot: str, ref: Any) -> None:
        from ray.exceptions import RayError

        if self._actors.get(slot) is None:
            return
        try:
            info = self.ray.get(ref)
        except RayError as e:
            log.warning("Ray actor %s is not available (%s); creating it again", slot, type(e).__name__)
            try:
                self.ray.kill(self._actors[slot], no_restart=True)
            except Exception:  # noqa: BLE001
                pass
            self._state[slot] = "starting"
            self._retry_at[slot] = time.monotonic() + 1.0
            return
        if not info.get("storage"):
            log.error("Ray actor %s on node %s cannot see the storage root %s (it must be on a file "
                      "system shared by every node, at the same path); this actor is not used",
                      slot, info["node"][:12], self.storage_root)
            self._state[slot] = "unusable"
            if all(s == "unusable" for s in self._state.values()):
                log.error("no Ray actor can see the storage root: jobs wait in the queue")
            return
        self._info[slot] = info
        self._state[slot] = "idle"
        log.info("Ray actor %s ready on node %s (pid %s)", slot, info["node"][:12], info["pid"])

    def _on_done(self, ref: Any) -> Event | None:
        from ray.exceptions import RayActorError, RayError, RayTaskError

        slot, job_id, attempt = self._inflight.pop(ref)
        try:
            result = self.ray.get(ref)
        except RayTaskError as e:
            if not isinstance(e.cause, RayActorError):  # run() returns failures as data; not expected
                self._state[slot] = "idle"
                return Finished(slot, job_id, attempt, {
                    "state": "Failed", "code": "InternalError", "message": f"internal error: {str(e)[-500:]}",
                    "started": None, "ended": time.time(), "media_result": None, "media_info": None,
                    "extra": None})
            return self._lost(slot, e)
        except RayError as e:   # RayActorError (actor/node died), WorkerCrashedError, OutOfMemoryError, …
            return self._lost(slot, e)
        self._state[slot] = "idle"
        return Finished(slot, job_id, attempt, result)

    def _lost(self, slot: str, err: Exception) -> Lost:
        info = self._info.pop(slot, {})
        log.warning("Ray actor %s (pid %s) was lost while running a job (%s); Ray restarts it where it can",
                    slot, info.get("pid"), type(err).__name__)
        self._state[slot] = "starting"
        self._probes[self._actors[slot].ready.remote()] = slot
        return Lost(slot, f"the Ray actor running this job was lost ({type(err).__name__})",
                    info.get("temp_owner"))
