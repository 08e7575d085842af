"""Local workers: N processes (``multiprocessing`` spawn), each with its model loaded once.

The driver hands one item at a time to each idle worker (so it always knows which input a
worker holds) and collects results from a shared queue.  A worker that dies (killed, out of
memory, a crash in native code) is replaced; the input it held is tried again (at most
``max_attempts`` times in all, then reported as ``WorkerLost``).  Workers die with the driver
(``PR_SET_PDEATHSIG`` on Linux, plus a parent check between chunks), so ``kill -9`` of the batch
leaves no worker writing.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .worker import Orphaned, process_item, setup_worker

log = logging.getLogger(__name__)

OnResult = Callable[[object, dict], None]
OnDispatch = Callable[[object], None]
OnProgress = Callable[[object, float], None]   # (item, seconds of audio separated so far)


@dataclass(frozen=True)
class WorkerSpec:
    device: str | None
    threads: int | None


def plan_workers(workers: int | None, device: str | None) -> list[WorkerSpec]:
    """Default: one worker per GPU, each pinned to its device; else one CPU worker using all
    cores.  ``workers=N`` CPU workers share the cores (``cores // N`` torch threads each); with
    GPUs, N workers go round-robin over them."""
    import torch

    cores = os.cpu_count() or 1
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was requested but CUDA is not available on this machine")
    ngpu = 0
    if device in (None, "", "cuda") and torch.cuda.is_available():
        ngpu = torch.cuda.device_count()
    if ngpu:
        n = workers or ngpu
        return [WorkerSpec(f"cuda:{i % ngpu}", max(1, cores // n)) for i in range(n)]
    n = max(1, workers or 1)
    return [WorkerSpec(device or "cpu", max(1, cores // n)) for _ in range(n)]


def _worker_main(wid: int, spec: WorkerSpec, task_q, result_q, parent_pid: int) -> None:
    try:
        setup_worker(spec.threads, die_with_parent=True)
        while True:
            try:
                item = task_q.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent_pid:
                    return
                continue
            if item is None:
                return

            def progress(seconds: float, index: int = item.index) -> None:
                result_q.put(("progress", wid, index, seconds))

            result_q.put(("result", wid, process_item(item, spec.device, parent_pid=parent_pid,
                                                      on_progress=progress)))
    except (KeyboardInterrupt, Orphaned):
        pass


class _Slot:
    def __init__(self, wid: int, spec: WorkerSpec, proc, task_q):
        self.wid, self.spec, self.proc, self.task_q = wid, spec, proc, task_q
        self.item = None


class LocalBackend:
    name = "local"

    def __init__(self, specs: list[WorkerSpec], *, max_attempts: int = 2):
        self.specs = specs
        self.max_attempts = max_attempts

    @property
    def workers(self) -> int:
        return len(self.specs)

    def describe(self) -> str:
        devs = sorted({s.device or "auto" for s in self.specs})
        return f"{len(self.specs)} local worker(s) on {', '.join(devs)}, {self.specs[0].threads} thread(s) each"

    def run(self, items: Iterable, on_result: OnResult, on_dispatch: OnDispatch | None = None,
            on_progress: OnProgress | None = None) -> None:
        ctx = mp.get_context("spawn")
        result_q = ctx.Queue()
        me = os.getpid()
        next_wid = 0
        slots: dict[int, _Slot] = {}
        respawns_left = 3 * len(self.specs) + 3
        pending = deque(items)
        attempts: dict[int, int] = {}

        def spawn(spec: WorkerSpec) -> None:
            nonlocal next_wid
            task_q = ctx.Queue()
            proc = ctx.Process(target=_worker_main, args=(next_wid, spec, task_q, result_q, me),
                               name=f"separator-batch-{next_wid}", daemon=True)
            proc.start()
            slots[next_wid] = _Slot(next_wid, spec, proc, task_q)
            next_wid += 1

        def deliver(msg: tuple) -> None:
            kind, wid = msg[0], msg[1]
            slot = slots.get(wid)
            if slot is None or slot.item is None:
                return
            if kind == "progress":
                if on_progress is not None and slot.item.index == msg[2]:
                    on_progress(slot.item, msg[3])
                return
            item, slot.item = slot.item, None
            on_result(item, msg[2])

        def drain() -> bool:
            got = False
            while True:
                try:
                    msg = result_q.get_nowait()
                except queue.Empty:
                    return got
                deliver(msg)
                got = True

        def reap() -> None:
            nonlocal respawns_left
            for wid, slot in list(slots.items()):
                if slot.proc.is_alive():
                    continue
                drain()
                del slots[wid]
                if slot.item is not None:
                    item = slot.item
                    n = attempts[item.index] = attempts.get(item.index, 0) + 1
                    log.warning("worker %s (pid %s) died (exit %s) while separating %s", wid, slot.proc.pid,
                                slot.proc.exitcode, item.rel)
                    if n < self.max_attempts:
                        pending.appendleft(item)
                    else:
                        on_result(item, {"index": item.index, "status": "failed", "seconds": 0.0,
                                         "error": {"code": "WorkerLost", "message":
                                                   f"the worker died {n} time(s) while separating this input "
                                                   f"(last exit status {slot.proc.exitcode})"}})
                if respawns_left > 0 and (pending or any(s.item for s in slots.values())):
                    respawns_left -= 1
                    spawn(slot.spec)

        for spec in self.specs:
            spawn(spec)
        try:
            while pending or any(s.item is not None for s in slots.values()):
                for slot in slots.values():
                    if slot.item is None and pending and slot.proc.is_alive():
                        slot.item = pending.popleft()
                        if on_dispatch:
                            on_dispatch(slot.item)
                        slot.task_q.put(slot.item)
                try:
                    deliver(result_q.get(timeout=0.5))
                except queue.Empty:
                    pass
                reap()
                if not slots and pending:
                    while pending:
                        item = pending.popleft()
                        on_result(item, {"index": item.index, "status": "failed", "seconds": 0.0,
                                         "error": {"code": "WorkerLost",
                                                   "message": "every worker died; none left to run this input"}})
        finally:
            for slot in slots.values():
                try:
                    slot.task_q.put(None)
                except (OSError, ValueError):
                    pass
            for slot in slots.values():
                slot.proc.join(timeout=5 if slot.item is None else 0.1)
                if slot.proc.is_alive():
                    slot.proc.terminate()
                    slot.proc.join(timeout=5)
                if slot.proc.is_alive():
                    slot.proc.kill()
            result_q.close()


class InProcessBackend:
    """``--workers 0``: separate in the driver process itself (debugging, tiny batches)."""
    name = "inprocess"
    workers = 1

    def __init__(self, device: str | None = None):
        self.device = device

    def describe(self) -> str:
        return f"in-process on {self.device or 'auto'}"

    def run(self, items: Iterable, on_result: OnResult, on_dispatch: OnDispatch | None = None,
            on_progress: OnProgress | None = None) -> None:
        for item in items:
            if on_dispatch:
                on_dispatch(item)
            report = None if on_progress is None else (lambda s, item=item: on_progress(item, s))
            on_result(item, process_item(item, self.device, on_progress=report))
