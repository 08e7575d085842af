"""Run a batch on a Ray cluster (``separator batch … --ray-address ADDR|auto``).

* One Ray actor per GPU (``num_gpus=1``) when the cluster has GPUs, else one per CPU slot of
  ``cpus_per_worker`` CPUs (default 1; torch uses that many threads in the actor).  Actors are
  spread over the nodes (``SPREAD``) and each loads its model once.
* The driver streams inputs to the actors, one at a time per actor, so it always knows which
  input each actor holds.  Outputs are written by the actors straight to their final paths,
  which must be on storage every node sees (a shared file system), as must the inputs.
  ``separator`` (and its models) must be installed on every node.
* A lost actor (its node died, its process was killed) raises ``RayActorError`` for the input
  it held: the driver puts that input back in the queue, where another actor takes it
  (at most ``max_attempts`` tries, then ``WorkerLost``).  Actors are created with
  ``max_restarts=-1`` so Ray brings a lost one back wherever resources allow; the driver
  uses it again once it answers.  The engine writes each output by an atomic rename and the
  driver alone records completions, so each output ends up written exactly once per completed
  input, and a killed actor leaves only ``.separator-tmp-*`` files, removed at the end of the run.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable

from .local import OnDispatch, OnResult
from .worker import process_item, setup_worker

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


class _SeparatorActor:
    """Holds the loaded model(s) for its life; one input at a time."""

    def __init__(self, device: str | None, threads: int | None):
        setup_worker(threads)
        self.device = device

    def ready(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id(), "pid": os.getpid()}

    def run(self, item) -> dict:
        import ray

        res = process_item(item, self.device)
        res["node"] = ray.get_runtime_context().get_node_id()
        return res


class RayBackend:
    name = "ray"

    def __init__(self, address: str, *, workers: int | None = None, cpus_per_worker: float = 1,
                 device: str | None = None, max_attempts: int = 3, actor_wait_s: float = 300.0):
        self.address = address
        self.requested = workers
        self.cpus_per_worker = cpus_per_worker
        self.device = device
        self.max_attempts = max_attempts
        self.actor_wait_s = actor_wait_s
        self.workers = 0
        self._desc = f"Ray cluster at {address}"
        self._actors = None
        self._owned = False
        self.ray = import_ray()

    def describe(self) -> str:
        return self._desc

    def _connect(self) -> bool:
        ray = self.ray
        if ray.is_initialized():
            return False
        addr = None if self.address in ("", None) else self.address
        ray.init(address=addr, ignore_reinit_error=True, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
        return True

    def prepare(self) -> None:
        """Connect and start the actors (they load their models when the first input comes)."""
        if self._actors is not None:
            return
        ray = self.ray
        self._owned = self._connect()
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
        use_gpu = gpus >= 1 and self.device not in ("cpu",)
        if use_gpu:
            n = self.requested or int(gpus)
            opts = {"num_gpus": 1, "num_cpus": self.cpus_per_worker}
            device = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
        else:
            n = self.requested or max(1, int(cpus // self.cpus_per_worker))
            opts = {"num_cpus": self.cpus_per_worker}
            device = self.device or "cpu"
        self.workers = n
        nodes = len([x for x in ray.nodes() if x.get("Alive")])
        self._desc = (f"{n} Ray actor(s) ({'1 GPU' if use_gpu else f'{self.cpus_per_worker:g} CPU'} each) "
                      f"on a {nodes}-node cluster at {self.address}")
        Actor = ray.remote(max_restarts=-1, max_task_retries=0, **opts)(_SeparatorActor)
        threads = max(1, int(self.cpus_per_worker))
        self._actors = [Actor.options(scheduling_strategy="SPREAD").remote(device, threads) for _ in range(n)]

    def run(self, items: Iterable, on_result: OnResult, on_dispatch: OnDispatch | None = None,
            on_progress=None) -> None:
        """(``on_progress`` is not called: an input's audio counts when it is done.)"""
        ray = self.ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        self.prepare()
        actors, n = self._actors, len(self._actors)

        state = {i: "starting" for i in range(n)}       # starting | idle | busy
        probes = {actors[i].ready.remote(): i for i in range(n)}
        inflight: dict = {}                             # ref -> (actor index, item)
        pending = deque(items)
        attempts: dict[int, int] = {}
        stalled_since: float | None = None

        def lost(i: int, item, err: Exception) -> None:
            k = attempts[item.index] = attempts.get(item.index, 0) + 1
            log.warning("Ray actor %d lost while separating %s (%s); %s", i, item.rel, type(err).__name__,
                        "retrying elsewhere" if k < self.max_attempts else "giving up")
            if k < self.max_attempts:
                pending.appendleft(item)
            else:
                on_result(item, {"index": item.index, "status": "failed", "seconds": 0.0, "attempts": k,
                                 "error": {"code": "WorkerLost", "message":
                                           f"the Ray worker was lost {k} time(s) while separating this input "
                                           f"({type(err).__name__})"}})
            state[i] = "starting"       # Ray restarts it where it can; use it again once it answers
            probes[actors[i].ready.remote()] = i

        try:
            while pending or inflight:
                for i in range(n):
                    if state[i] == "idle" and pending:
                        item = pending.popleft()
                        if on_dispatch:
                            on_dispatch(item)
                        inflight[actors[i].run.remote(item)] = (i, item)
                        state[i] = "busy"
                if not inflight:
                    now = time.monotonic()
                    stalled_since = stalled_since or now
                    if now - stalled_since > self.actor_wait_s:
                        while pending:
                            item = pending.popleft()
                            on_result(item, {"index": item.index, "status": "failed", "seconds": 0.0,
                                             "error": {"code": "WorkerLost", "message":
                                                       f"no Ray actor became available in {self.actor_wait_s:g} s"}})
                        break
                else:
                    stalled_since = None
                refs = list(inflight) + list(probes)
                if not refs:
                    continue
                ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in probes:
                        i = probes.pop(ref)
                        try:
                            info = ray.get(ref)
                            log.info("Ray actor %d ready on node %s (pid %s)", i, info["node"][:12], info["pid"])
                            state[i] = "idle"
                        except RayError as e:
                            log.warning("Ray actor %d not available (%s); probing again", i, type(e).__name__)
                            time.sleep(0.5)
                            probes[actors[i].ready.remote()] = i
                        continue
                    i, item = inflight.pop(ref)
                    try:
                        res = ray.get(ref)
                    except RayTaskError as e:
                        if isinstance(e.cause, RayActorError) or isinstance(e, RayActorError):
                            lost(i, item, e)
                            continue
                        state[i] = "idle"
                        res = {"index": item.index, "status": "failed", "seconds": 0.0,
                               "error": {"code": "InternalError", "message": str(e)[-500:]}}
                    except RayError as e:
                        lost(i, item, e)
                        continue
                    else:
                        state[i] = "idle"
                    if attempts.get(item.index):
                        res["attempts"] = attempts[item.index] + 1
                    on_result(item, res)
        finally:
            for a in actors:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # noqa: BLE001
                    pass
            self._actors = None
            if self._owned:
                ray.shutdown()
