"""The worker pool on a Ray cluster (``--ray-address ADDR|auto`` of ``serve`` and ``batch``).

* One actor per GPU when the cluster has GPUs (unless the device is ``cpu``), else one per
  ``cpus_per_worker`` CPUs (default 1; torch uses that many threads in the actor), counted from
  the cluster's resources when the pool opens, and at most ``workers`` when that is given.
  Actors are spread over the nodes (``SPREAD``); each loads the runner once and keeps the models
  it loads.
* A task is handed to an actor only when that actor is idle (it answered its readiness probe
  and holds no task), so waiting tasks stay with the caller.
* Every actor runs on the **same paths** as the caller (the service's storage root, a batch's
  inputs and OUTPUT), which must therefore be on a file system shared by every node at the same
  path, and ``separator`` (with its models and ffmpeg) must be installed on every node.  An actor
  that cannot see one of ``must_see`` is not used (an error is logged).
* A lost actor (its process killed, its node gone) fails its task with a Ray actor error:
  :class:`~separator.workers.pool.Lost`.  Actors are created with ``max_restarts=-1`` so Ray
  brings a lost one back where resources allow; it is used again once it answers.  How soon a
  dead *node* is noticed is Ray's health check (about 30 s by default).
* Progress: an actor keeps the value its running task last reported (a threaded actor,
  ``max_concurrency=2``, so that :meth:`_Actor.progress` answers while ``run`` works) and the
  pool asks each busy actor for it about once a second; a failed ask is ignored.
* The actors belong to the caller (not detached): closing the pool or killing the caller ends
  them.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from .pool import Event, Finished, Lost, OnEvent, Pool, Progress, _wait_fd

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'separator[ray]'"


class RayUnavailable(RuntimeError):
    pass


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable(f"--ray-address needs Ray, which is not installed ({e.name or e}); "
                             f"install the extra: {INSTALL_HINT}") from None
    return ray


class _Actor:
    """One slot: loads the runner once and keeps what it loads (models) for its life; one task
    at a time."""

    def __init__(self, runner: str, context: dict[str, Any], device: str | None, threads: int | None,
                 log_level: int, must_see: list[str]):
        logging.basicConfig(level=log_level, format="%(asctime)s ray-worker[%(process)d] %(levelname)s %(message)s")
        from .child import load_runner, setup_process

        setup_process(threads, local=False)
        self.run_task = load_runner(runner)
        self.context = {**context, "device": device}
        self.must_see = must_see
        self._progress: tuple[Hashable, Any] | None = None   # (key, value) of the running task

    def ready(self) -> dict[str, Any]:
        import ray

        from ..storage.local import temp_owner

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "temp_owner": temp_owner(), "missing": [p for p in self.must_see if not Path(p).is_dir()]}

    def run(self, key: Hashable, payload: Any) -> tuple[Any, str | None]:
        from .child import Throttle, run_one

        self._progress = None

        def keep(value: Any) -> None:
            self._progress = (key, value)

        # no time throttle here: keeping the value is free; the pool asks once a second
        reporter = Throttle(keep, interval=0.0, name=str(key))
        try:
            return run_one(self.run_task, self.context, payload, reporter)
        finally:
            reporter.close()
            self._progress = None

    def progress(self) -> tuple[Hashable, Any] | None:
        """The running task's latest ``(key, value)`` (None: idle, or nothing reported yet)."""
        return self._progress


class RayPool(Pool):
    """A :class:`~separator.workers.pool.Pool` of Ray actors (slots ``r0``, ``r1`` …)."""

    kind = "ray"

    def __init__(self, address: str | None, *, runner: str, context: dict[str, Any], device: str | None = None,
                 workers: int | None = None, cpus_per_worker: float = 1.0, must_see: list[str] | None = None):
        self.ray = import_ray()
        self.address = address
        self.runner = runner
        self.context = dict(context)
        self.device = device
        self.requested = workers
        self.cpus_per_worker = float(cpus_per_worker)
        self.must_see = [str(p) for p in must_see or []]
        self.n = 0                              # known once open
        self._desc = f"Ray cluster at {address}"
        self._owned = False
        self._actor_cls: Any = None
        self._actor_device: str | None = device
        self._actors: dict[str, Any] = {}
        self._state: dict[str, str] = {}       # starting | idle | busy | unusable
        self._info: dict[str, dict[str, Any]] = {}
        self._probes: dict[Any, str] = {}       # ready() ref -> slot
        self._inflight: dict[Any, tuple[str, Hashable]] = {}   # run() ref -> (slot, key)
        self._retry_at: dict[str, float] = {}   # slot -> when to create it again
        self._asks: dict[Any, str] = {}          # progress() ref -> slot
        self._asked_at: dict[str, float] = {}    # slot -> when its progress was last asked for
        self._reported: dict[str, tuple[Hashable, Any]] = {}   # slot -> last progress passed on
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
                                     **opts)(_Actor)
        for i in range(n):
            self._create(f"r{i}")

    def _create(self, slot: str) -> None:
        threads = max(1, int(self.cpus_per_worker))
        actor = self._actor_cls.options(scheduling_strategy="SPREAD").remote(
            self.runner, self.context, self._actor_device, threads,
            logging.getLogger().level or logging.INFO, self.must_see)
        self._actors[slot] = actor
        self._state[slot] = "starting"
        self._info.pop(slot, None)
        self._probes[actor.ready.remote()] = slot

    def close(self, timeout: float = 5.0) -> None:
        ray = self.ray
        for actor in self._actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self._actors.clear()
        self._state.clear()
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
        return {slot: info["pid"] for slot, info in sorted(self._info.items())}

    # -- the pool interface ----------------------------------------------------------------
    def idle(self, respawn: bool = True) -> list[str]:
        now = time.monotonic()
        for slot, at in list(self._retry_at.items()):
            if now >= at and respawn:
                del self._retry_at[slot]
                self._create(slot)
        return [s for s in sorted(self._state) if self._state[s] == "idle"]

    def start(self, slot: str, key: Hashable, payload: Any) -> None:
        ref = self._actors[slot].run.remote(key, payload)
        self._inflight[ref] = (slot, key)
        self._state[slot] = "busy"

    def poll(self, timeout: float, on_event: OnEvent, wake_fd: int | None = None) -> None:
        ray = self.ray
        deadline = time.monotonic() + timeout
        while True:
            self._ask_progress()
            refs = list(self._inflight) + list(self._probes) + list(self._asks)
            remaining = max(0.0, deadline - time.monotonic())
            if not refs:
                if self._retry_at:
                    remaining = min(remaining, max(0.0, min(self._retry_at.values()) - time.monotonic()))
                _wait_fd(wake_fd, remaining)
                return
            ready, _ = ray.wait(refs, num_returns=1, timeout=min(0.1, remaining))
            changed = False
            for ref in ready:
                changed = True
                if ref in self._probes:
                    self._on_probe(self._probes.pop(ref), ref)
                    continue
                ev = self._on_progress(self._asks.pop(ref), ref) if ref in self._asks else self._on_done(ref)
                if ev is not None:
                    on_event(ev)
            if changed or time.monotonic() >= deadline:
                return
            if wake_fd is not None and _readable(wake_fd):
                return

    # -- internals ------------------------------------------------------------------------
    def _ask_progress(self) -> None:
        """Ask each busy actor (with no question pending) for its task's progress, about once
        per ``progress_interval``."""
        now = time.monotonic()
        pending = set(self._asks.values())
        for slot, _key in list(self._inflight.values()):
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
        key, value = got
        running = (slot, key) in set(self._inflight.values())
        if not running or self._reported.get(slot) == (key, value):
            return None
        self._reported[slot] = (key, value)
        return Progress(slot, key, value)

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
        if info.get("missing"):
            log.error("Ray actor %s on node %s cannot see %s (it must be on a file system shared by "
                      "every node, at the same path); this actor is not used",
                      slot, info["node"][:12], ", ".join(info["missing"]))
            self._state[slot] = "unusable"
            if all(s == "unusable" for s in self._state.values()):
                log.error("no Ray actor can see %s: nothing can run", ", ".join(info["missing"]))
            return
        self._info[slot] = info
        self._state[slot] = "idle"
        log.info("Ray actor %s ready on node %s (pid %s)", slot, info["node"][:12], info["pid"])

    def _on_done(self, ref: Any) -> Event:
        from ray.exceptions import RayActorError, RayError, RayTaskError

        slot, key = self._inflight.pop(ref)
        self._reported.pop(slot, None)
        node = self._info.get(slot, {}).get("node")
        try:
            result, error = self.ray.get(ref)
        except RayTaskError as e:
            if not isinstance(e.cause, RayActorError):  # run() returns errors as data; not expected
                self._state[slot] = "idle"
                return Finished(slot, key, None, str(e)[-500:], node)
            return self._lost(slot, key, e)
        except RayError as e:   # RayActorError (actor/node died), WorkerCrashedError, OutOfMemoryError, …
            return self._lost(slot, key, e)
        self._state[slot] = "idle"
        return Finished(slot, key, result, error, node)

    def _lost(self, slot: str, key: Hashable, err: Exception) -> Lost:
        info = self._info.pop(slot, {})
        log.warning("Ray actor %s (pid %s) was lost while running a task (%s); Ray restarts it where it can",
                    slot, info.get("pid"), type(err).__name__)
        self._state[slot] = "starting"
        self._probes[self._actors[slot].ready.remote()] = slot
        return Lost(slot, key, f"the Ray actor was lost ({type(err).__name__})", info.get("temp_owner"))


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


__all__ = ["INSTALL_HINT", "RayPool", "RayUnavailable", "import_ray"]
