"""What runs inside a worker (a spawned process or a Ray actor).

* :func:`setup_process` once, first thing: the separating process's settings
  (:func:`separator.runtime.configure_process`), torch threads, and for a local process: die
  with the parent (``PR_SET_PDEATHSIG`` on Linux), ignore SIGINT (the parent decides when
  workers stop) and turn SIGTERM into a clean exit (``SystemExit``: the task's open temporaries
  are removed by their own ``atomic_file`` on the way out).
* :func:`load_runner` once: a runner is ``"module:function"``, called as
  ``runner(context, payload, progress) -> result`` for each task.  It should return failures as
  data; if it raises, the task ends with an error (:func:`run_one`).  ``progress(value)`` may
  be called as often as the runner likes: a :class:`Throttle` passes on changed values at most
  about once a second, and never fails or slows the task.
* :func:`process_main` is a local worker's body: tasks come over a pipe, one at a time, and
  their progress and results go back over it.  A worker whose parent is gone stops
  (:class:`Orphaned`) the next time its task reports progress, or when it waits for a task.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

Runner = Callable[[dict, Any, Callable[[Any], None]], Any]


class Orphaned(BaseException):
    """The process that started this worker is gone: stop before writing anything more.
    (A BaseException, so that no runner's ``except Exception`` turns it into a failed task.)"""


class Throttle:
    """A task's ``progress(value)``, throttled: ``send(value)`` only when ``value`` differs from
    the last one sent (initially ``initial``: a task starts at 0), and at most once per
    ``interval`` seconds (the first change goes at once).  ``send`` may raise: the error is
    logged once and reporting stops for this task, which carries on untouched."""

    def __init__(self, send: Callable[[Any], None], *, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, initial: Any = 0, name: str = ""):
        self.send = send
        self.interval = float(interval)
        self.clock = clock
        self.name = name
        self.last = initial
        self.last_at: float | None = None
        self.broken = False

    def __call__(self, value: Any) -> None:
        if self.broken or value == self.last:
            return
        try:
            now = self.clock()
            if self.last_at is not None and now - self.last_at < self.interval:
                return
            self.last, self.last_at = value, now
            self.send(value)
        except Exception as err:  # never let progress reporting break or slow the task
            self.broken = True
            log.warning("task %s: progress reporting stopped (%s: %s)", self.name, type(err).__name__, err)

    def close(self) -> None:
        """Report nothing more (the task's result is on its way)."""
        self.broken = True


def load_runner(spec: str) -> Runner:
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def run_one(run: Runner, context: dict, payload: Any, progress: Callable[[Any], None]) -> tuple[Any, str | None]:
    """``(result, None)``, or ``(None, "Type: message")`` when the runner raised."""
    try:
        return run(context, payload, progress), None
    except Exception as err:  # a runner returns failures as data; this is a bug: report it
        log.error("a task raised\n%s", traceback.format_exc())
        return None, f"{type(err).__name__}: {err}"


def _die_with_parent() -> None:
    """Linux: get SIGKILLed when the parent process dies (no orphaned workers)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def setup_process(threads: int | None, *, local: bool) -> None:
    """Once per worker, before anything imports torch (see the module doc)."""
    from ..runtime import configure_process

    configure_process()
    if local:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if threads:   # torch's intra-op threads (every thread of the worker uses that many)
        import torch

        torch.set_num_threads(max(1, int(threads)))
        with contextlib.suppress(RuntimeError):   # already set / parallel work started
            torch.set_num_interop_threads(1)


def process_main(conn: Connection, runner: str, context: dict, device: str | None,
                 threads: int | None, log_level: int, parent_pid: int) -> None:
    """Body of a local worker process: receive ``(key, payload)`` tasks (None: stop), run them,
    send back ``("progress", key, value)`` and ``("done", key, result, error)``."""
    setup_process(threads, local=True)
    logging.basicConfig(level=log_level, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s")
    run = load_runner(runner)
    context = {**context, "device": device}
    send_lock = threading.Lock()   # the runner may report progress from another thread

    def send(msg: tuple) -> None:
        with send_lock:
            conn.send(msg)

    try:
        while True:
            try:
                task = conn.recv()
            except (EOFError, OSError):
                return   # the parent is gone (or closed the pipe)
            if task is None:
                return
            key, payload = task
            reporter = Throttle(lambda value, key=key: send(("progress", key, value)), name=str(key))

            def progress(value: Any, reporter: Throttle = reporter) -> None:
                if os.getppid() != parent_pid:
                    raise Orphaned("the process that started this worker exited")
                reporter(value)

            result, error = run_one(run, context, payload, progress)
            reporter.close()   # nothing more after the result
            try:
                send(("done", key, result, error))
            except (BrokenPipeError, OSError):
                return
    except Orphaned:
        return
