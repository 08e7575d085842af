"""Worker processes and the scheduler that feeds them.

* The scheduler (:class:`WorkerPool`) is the same whatever runs the jobs; a :class:`Dispatcher`
  runs them: :class:`LocalProcesses` (below, the default) or, with ``serve --ray-address``,
  Ray actors (:mod:`separator.jobs.ray_dispatch`), which follow the same rules.
* Each local worker is a ``multiprocessing`` **spawn** process running :func:`worker_main`: it
  imports the engine once and runs one job at a time, so models the engine loads stay
  loaded between jobs.  Separation never runs in the server process.
* The scheduler is one thread in the server process.  It claims the next runnable job from
  the store (:meth:`JobStore.claim_next`: highest JobLevel first, FIFO within a level, paused
  queues skipped), hands it to an idle worker over a pipe, and records the result.
* A worker that dies mid-job (killed, out of memory, segfault) is noticed through its process
  sentinel (a Ray actor: through the lost-actor error of its task); its job goes back to
  ``Submitted`` and runs again, and after ``max_attempts`` crashes it ends ``Failed``
  (``InternalError``).  The worker is respawned and
  the service keeps going.
* While a job runs, its worker reports progress: the engine's ``(frames_done, frames_total)``
  callback goes through a :class:`ProgressReporter` (at most about once a second, and only when
  the whole percentage changed) to the scheduler over the same pipe as results (a Ray actor keeps
  the latest value and the dispatcher asks for it about once a second), and the scheduler stores
  it (:meth:`JobStore.set_progress`).  Reporting never fails or slows a job: errors are logged
  once and swallowed.
* Stopping the pool leaves running jobs ``Running`` in the store; the next start's
  :meth:`JobStore.recover` runs them again from the start (outputs are written atomically, so
  a half-run job leaves nothing behind).
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import inspect
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from ..storage.local import remove_temporaries, temp_owner
from .store import JobRow, JobStore

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# In the worker process
# ---------------------------------------------------------------------------------------------

@dataclass
class TemplateRef:
    """What ``run_job`` needs of a template: ``template_id``, ``name``, ``params``."""
    template_id: str
    name: str
    params: Any


def load_engine(spec: str) -> Callable[..., Any]:
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func or "run_job")


def _die_with_parent() -> None:
    """Linux: get SIGKILLed when the server process dies (no orphaned workers)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _ts(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def record_result(record: Any) -> dict[str, Any]:
    """The JSON-able part of a finished JobRecord that the store keeps."""
    media_result = getattr(record, "media_result", None)
    return {
        "state": record.state,
        "code": getattr(record, "code", "Success") or "Success",
        "message": getattr(record, "message", "") or "",
        "started": _ts(getattr(record, "start_time", None)),
        "ended": _ts(getattr(record, "end_time", None)),
        "media_result": [list(x) for x in media_result] if media_result else None,
        "media_info": getattr(record, "media_info", None),
        "extra": getattr(record, "extra", None),
    }


class ProgressReporter:
    """The engine's ``progress(frames_done, frames_total)`` callback for one job, throttled.

    ``send(percent)`` is called only when the whole percentage (0–99; 100 is reserved for a
    finished job) differs from the last one sent, and at most once per ``interval`` seconds
    (the first change is sent at once).  ``send`` may raise: the error is logged once and
    reporting stops for this job, which carries on untouched.
    """

    def __init__(self, send: Callable[[int], None], *, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, job_id: str = ""):
        self.send = send
        self.interval = float(interval)
        self.clock = clock
        self.job_id = job_id
        self.last = 0              # a job starts at 0 (the store sets it when it is claimed)
        self.last_at: float | None = None
        self.broken = False

    def __call__(self, done: int, total: int) -> None:
        if self.broken:
            return
        try:
            if total <= 0:
                return
            pct = max(0, min(99, int(done * 100 // total)))
            if pct == self.last:
                return
            now = self.clock()
            if self.last_at is not None and now - self.last_at < self.interval:
                return
            self.last, self.last_at = pct, now
            self.send(pct)
        except Exception as err:  # never let progress reporting break or slow the job
            self.broken = True
            log.warning("job %s: progress reporting stopped (%s: %s)", self.job_id,
                        type(err).__name__, err)

    def close(self) -> None:
        """Report nothing more (the job's result is on its way)."""
        self.broken = True


def _accepts_progress(engine: Callable[..., Any]) -> bool:
    """Whether ``engine`` takes a ``progress`` keyword (a custom engine may not)."""
    try:
        params = inspect.signature(engine).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "progress" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def run_payload(payload: dict[str, Any], engine: Callable[..., Any], storage: Any,
                device: str | None, engine_options: dict[str, Any],
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    from ..request.model import JobRequest, VoiceSeparateParams

    req = JobRequest.model_validate_json(payload["request"])
    template = None
    if payload.get("template"):
        t = payload["template"]
        template = TemplateRef(t["template_id"], t["name"], VoiceSeparateParams.model_validate(t["params"]))
    kwargs: dict[str, Any] = {}
    if engine_options:
        kwargs["model_options"] = engine_options
    if progress is not None and _accepts_progress(engine):
        kwargs["progress"] = progress
    record = engine(req, storage, bucket=payload["bucket"], region=payload["region"],
                    job_id=payload["job_id"], queue_id=payload["queue_id"],
                    created=datetime.fromtimestamp(payload["created"], timezone.utc),
                    template=template, model=payload.get("model"), device=device, **kwargs)
    return record_result(record)


def run_safely(payload: dict[str, Any], engine: Callable[..., Any], storage: Any,
               device: str | None, engine_options: dict[str, Any],
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """:func:`run_payload`, with an engine exception turned into a Failed result."""
    try:
        return run_payload(payload, engine, storage, device, engine_options, progress)
    except Exception as err:  # the engine should never raise; if it does, the job fails
        log.error("job %s: engine raised\n%s", payload.get("job_id"), traceback.format_exc())
        return {"state": "Failed", "code": "InternalError",
                "message": f"internal error: {type(err).__name__}: {err}",
                "started": None, "ended": time.time(), "media_result": None, "media_info": None,
                "extra": None}


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def worker_main(conn: Connection, storage_root: str, engine_spec: str, device: str | None,
                engine_options: dict[str, Any], log_level: int = logging.INFO) -> None:
    """Body of a worker process: receive job payloads, run them, send results back."""
    from ..runtime import configure_process

    configure_process()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    # The server stops a busy worker with SIGTERM: unwind (SystemExit), so that the job's open
    # temporaries are removed by their own ``atomic_file`` instead of being left behind.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=log_level, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s")
    from ..storage import LocalStorage

    storage = LocalStorage(storage_root)
    engine = load_engine(engine_spec)
    send_lock = threading.Lock()   # the engine may call progress from another thread
    while True:
        try:
            payload = conn.recv()
        except (EOFError, OSError):
            return
        if payload is None:
            return
        job_id, attempt = payload["job_id"], payload["attempt"]

        def send_progress(pct: int, job_id: str = job_id, attempt: int = attempt) -> None:
            with send_lock:
                conn.send(("progress", job_id, attempt, pct))

        reporter = ProgressReporter(send_progress, job_id=job_id)
        result = run_safely(payload, engine, storage, device, engine_options, reporter)
        reporter.close()  # nothing more after the result
        try:
            with send_lock:
                conn.send((job_id, attempt, result))
        except (BrokenPipeError, OSError):
            return


# ---------------------------------------------------------------------------------------------
# In the server process: where jobs run (the dispatch interface)
# ---------------------------------------------------------------------------------------------

@dataclass
class Finished:
    """The job on ``slot`` ended (the engine's result; Success or Failed)."""
    slot: str
    job_id: str
    attempt: int
    result: dict[str, Any]


@dataclass
class Lost:
    """The worker behind ``slot`` went away (process died, Ray actor or node lost); the job it
    held, if any, did not finish.  ``reason`` completes "… N times" in the job's message.
    ``temp_owner`` names the dead process's temporary files (see
    :func:`separator.storage.local.temp_owner`; None: unknown)."""
    slot: str
    reason: str
    temp_owner: str | None = None


@dataclass
class Progress:
    """The job on ``slot`` (that attempt) reported ``percent`` done (0–99)."""
    slot: str
    job_id: str
    attempt: int
    percent: int


Event = Finished | Lost | Progress


class Dispatcher:
    """Where started jobs run.  The scheduler (:class:`WorkerPool`) owns the store, the order
    (priorities, FIFO, paused queues), retries and notifications; a dispatcher only runs one job
    at a time per slot and reports what happened:

    * :meth:`idle` – slots ready for a job now (may (re)start workers first);
    * :meth:`start` – run ``payload`` on an idle slot;
    * :meth:`poll` – wait up to ``timeout`` s (returning early when ``wake_fd`` is readable or a
      slot became ready) and return :class:`Finished` / :class:`Lost` events, and
      :class:`Progress` of running jobs (optional: a dispatcher may report none).

    Jobs are handed out only to idle slots, so a job waits in the store (where it can be
    cancelled and reordered) until a worker is free to run it.
    """

    kind = "abstract"
    n = 1

    def open(self) -> None:
        raise NotImplementedError

    def close(self, timeout: float) -> None:
        raise NotImplementedError

    def idle(self, stopping: threading.Event) -> list[str]:
        raise NotImplementedError

    def start(self, slot: str, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def poll(self, timeout: float, wake_fd: int) -> list[Event]:
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        return {}

    def describe(self) -> str:
        return self.kind


@dataclass
class _Worker:
    name: str
    process: Any
    conn: Connection
    busy: tuple[str, int] | None = None   # (job_id, attempt)
    since: float = field(default_factory=time.time)
    dead: bool = False


class LocalProcesses(Dispatcher):
    """``n`` spawned worker processes on this machine (see :func:`worker_main`)."""

    kind = "local"

    def __init__(self, *, storage_root: str, workers: int, engine: str, device: str | None,
                 engine_options: dict[str, Any]):
        self.storage_root = storage_root
        self.n = max(1, int(workers))
        self.engine = engine
        self.device = device
        self.engine_options = engine_options
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._spawn_failures = 0

    def describe(self) -> str:
        return f"{self.n} local worker process(es)"

    def open(self) -> None:
        for i in range(self.n):
            self._workers.append(self._spawn(f"w{i}"))

    def close(self, timeout: float) -> None:
        for w in self._workers:
            with contextlib.suppress(Exception):
                if w.busy is None and not w.dead:
                    w.conn.send(None)
        deadline = time.time() + timeout
        for w in self._workers:
            if w.busy is not None:
                w.process.terminate()
            w.process.join(max(0.1, deadline - time.time()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(1)
            with contextlib.suppress(Exception):
                w.conn.close()
        self._workers.clear()

    def pids(self) -> dict[str, int]:
        return {w.name: w.process.pid for w in self._workers}

    def _spawn(self, name: str) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main, name=f"separator-{name}", daemon=True,
            args=(child, self.storage_root, self.engine, self.device, self.engine_options,
                  logging.getLogger().level or logging.INFO))
        proc.start()
        child.close()
        log.info("worker %s started (pid %s)", name, proc.pid)
        return _Worker(name, proc, parent)

    def idle(self, stopping: threading.Event) -> list[str]:
        out = []
        for i, w in enumerate(self._workers):
            if w.dead and not stopping.is_set():      # respawn (backing off if it keeps dying at once)
                if time.time() - w.since < 2:
                    self._spawn_failures += 1
                    time.sleep(min(5.0, 0.2 * self._spawn_failures))
                else:
                    self._spawn_failures = 0
                w = self._workers[i] = self._spawn(w.name)
            if w.busy is None and not w.dead and w.process.is_alive():
                out.append(w.name)
        return out

    def _by_name(self, slot: str) -> _Worker:
        return next(w for w in self._workers if w.name == slot)

    def start(self, slot: str, payload: dict[str, Any]) -> None:
        w = self._by_name(slot)
        try:
            w.conn.send(payload)
        except (BrokenPipeError, OSError):
            pass  # the worker is gone; poll() reports it through its sentinel
        w.busy = (payload["job_id"], payload["attempt"])
        w.since = time.time()

    def poll(self, timeout: float, wake_fd: int) -> list[Event]:
        objs: list[Any] = [wake_fd]
        for w in self._workers:
            if not w.dead:
                objs.extend((w.conn, w.process.sentinel))
        ready = wait(objs, timeout=timeout)
        events: list[Event] = []
        for w in self._workers:
            if w.dead:
                continue
            if w.conn in ready:
                try:
                    while w.conn.poll():
                        msg = w.conn.recv()
                        if len(msg) == 4 and msg[0] == "progress":
                            _, job_id, attempt, pct = msg
                            if w.busy == (job_id, attempt):
                                events.append(Progress(w.name, job_id, attempt, int(pct)))
                            continue
                        job_id, attempt, result = msg
                        w.busy = None
                        events.append(Finished(w.name, job_id, attempt, result))
                except (EOFError, OSError):
                    pass
            if w.process.sentinel in ready or not w.process.is_alive():
                w.process.join(0.1)
                code = w.process.exitcode
                log.warning("worker %s (pid %s) died with exit code %s", w.name, w.process.pid, code)
                with contextlib.suppress(Exception):
                    w.conn.close()
                w.dead, w.busy = True, None
                events.append(Lost(w.name, f"the worker process running this job died (exit code {code})",
                                   temp_owner(w.process.pid)))
        return events


class WorkerPool:
    """The scheduler thread plus a :class:`Dispatcher` (local worker processes by default, or
    Ray actors: :class:`separator.jobs.ray_dispatch.RayActors`).

    The scheduler claims the next runnable job from the store (:meth:`JobStore.claim_next`)
    whenever a slot is idle, records results, and requeues the job of a lost worker (after
    ``max_attempts`` losses it ends ``Failed``/``InternalError``).
    ``on_finished(job_id)`` is called (in the scheduler thread) after a job reached a final
    state; it must not block (the service hands callbacks to their own thread).
    ``model_for(row)`` chooses the model name for a job (None: the engine's default).
    """

    def __init__(self, store: JobStore, *, storage_root: str | Path, workers: int = 1,
                 engine: str = "separator.jobs.job:run_job", device: str | None = None,
                 engine_options: dict[str, Any] | None = None, max_attempts: int = 2,
                 state_dir: str | Path | None = None,
                 on_finished: Callable[[str], None] | None = None,
                 model_for: Callable[[JobRow], str | None] | None = None,
                 dispatcher: Dispatcher | None = None):
        self.store = store
        self.storage_root = Path(storage_root)
        self.dispatcher = dispatcher or LocalProcesses(
            storage_root=str(storage_root), workers=workers, engine=engine, device=device,
            engine_options=dict(engine_options or {}))
        self.max_attempts = max_attempts
        self.state_dir = Path(state_dir) if state_dir else None
        self.on_finished = on_finished or (lambda job_id: None)
        self.model_for = model_for or (lambda row: None)
        self._busy: dict[str, tuple[str, int]] = {}     # slot -> (job_id, attempt)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._thread: threading.Thread | None = None
        self._pids_written: dict[str, int] | None = None

    @property
    def n(self) -> int:
        """How many jobs run at once."""
        return self.dispatcher.n

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self.dispatcher.open()
        log.info("jobs run on %s", self.dispatcher.describe())
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
        self.dispatcher.close(timeout)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def wake(self) -> None:
        """Tell the scheduler that something changed (a job was submitted, a queue resumed)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def pids(self) -> dict[str, int]:
        return self.dispatcher.pids()

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
        for slot in self.dispatcher.idle(self._stop):
            if self._stop.is_set():
                return
            row = self.store.claim_next(slot)
            if row is None:
                return
            payload = {"job_id": row.job_id, "attempt": row.attempts, "bucket": row.bucket,
                       "region": row.region, "queue_id": row.queue_id, "created": row.created,
                       "request": row.request, "template": row.template_dict,
                       "model": self.model_for(row)}
            self._busy[slot] = (row.job_id, row.attempts)
            self.dispatcher.start(slot, payload)
            log.info("job %s (level %s) -> worker %s (attempt %s)", row.job_id, row.level, slot,
                     row.attempts)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._dispatch()
                self._write_pids()
                events = self.dispatcher.poll(1.0, self._wake_r)
                with contextlib.suppress(BlockingIOError, OSError):
                    while os.read(self._wake_r, 4096):
                        pass
                for ev in events:
                    if isinstance(ev, Progress):
                        self._on_progress(ev)
                    elif isinstance(ev, Finished):
                        self._on_result(ev)
                    else:
                        self._on_lost(ev)
            except Exception:  # never let the scheduler die
                log.error("scheduler error\n%s", traceback.format_exc())
                time.sleep(0.5)

    def _on_progress(self, ev: Progress) -> None:
        if self._busy.get(ev.slot) != (ev.job_id, ev.attempt):
            return
        try:  # a failed progress write must not cost the events behind it
            self.store.set_progress(ev.job_id, attempt=ev.attempt, progress=ev.percent)
        except Exception as err:
            log.warning("job %s: could not store progress %s%% (%s)", ev.job_id, ev.percent, err)

    def _on_result(self, ev: Finished) -> None:
        job_id, attempt, result = ev.job_id, ev.attempt, ev.result
        if self._busy.get(ev.slot) == (job_id, attempt):
            del self._busy[ev.slot]
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
                                 message=f"{ev.reason} {self.max_attempts} times")
        log.warning("job %s: its worker %s was lost; job is now %s", job_id, ev.slot, new)
        if new == "Failed":
            self._notify(job_id)
        elif new == "Submitted":
            self.wake()

    def _notify(self, job_id: str) -> None:
        try:
            self.on_finished(job_id)
        except Exception:
            log.error("on_finished(%s) failed\n%s", job_id, traceback.format_exc())


# ---------------------------------------------------------------------------------------------
# A fake engine for tests and load drills (never used unless the config names it)
# ---------------------------------------------------------------------------------------------

def fake_engine(req: Any, storage: Any, *, bucket: str, region: str, job_id: str, queue_id: str,
                created: datetime, template: Any = None, model: str | None = None,
                device: str | None = None, model_options: dict[str, Any] | None = None,
                progress: Callable[[int, int], None] | None = None, **_: Any) -> Any:
    """A stand-in for ``run_job`` that separates nothing: it appends ``<job_id> <pid>`` to
    ``run_log`` (to check no job runs twice), opens a temporary file for each output key, sleeps
    ``delay`` seconds while they are open (as the real engine holds its temporaries while it
    separates), then writes the input's bytes to each and renames them into place, so a job
    succeeds in milliseconds.  Selected with ``engine = "separator.jobs.workers:fake_engine"``
    and ``[engine_options] delay/run_log``; with ``progress_steps = N`` the delay is slept in N
    equal steps, calling ``progress(i, N)`` after each (as the real engine reports frames done).
    A :class:`~separator.errors.CIError` fails the job with its code, as in ``run_job``.
    Tests use it for the 100-job burst and the crash drills; the end-to-end test uses the real engine.
    """
    import hashlib

    from ..errors import CIError
    from ..request import resolve_outputs
    from .job import new_record

    opts = model_options or {}
    record = new_record(req, bucket=bucket, region=region, job_id=job_id, queue_id=queue_id,
                        created=created, template=template)
    record.start_time = datetime.now(timezone.utc)
    if opts.get("run_log"):
        with open(opts["run_log"], "a") as fh:
            fh.write(f"{job_id} {os.getpid()}\n")
    delay, steps = float(opts.get("delay", 0.0)), int(opts.get("progress_steps", 0) or 0)
    params = template.params if template is not None else req.params
    try:
        data = storage.require(bucket, req.input_object).read_bytes()
        keys = list(resolve_outputs(req.output, params.audio_mode, params.audio_config.codec
                                    if params.audio_config else None).values())
        with contextlib.ExitStack() as stack:
            temps = [stack.enter_context(storage.atomic_path(req.output.bucket, key)) for key in keys]
            if steps > 0:
                for i in range(1, steps + 1):
                    time.sleep(delay / steps)
                    if progress is not None:
                        progress(i, steps)
            else:
                time.sleep(delay)
            for tmp in temps:
                tmp.write_bytes(data)
    except CIError as err:
        record.state, record.code, record.message = "Failed", err.code, err.message
    else:
        record.media_result = [(key, hashlib.md5(data).hexdigest()) for key in keys]
        record.state, record.code, record.message = "Success", "Success", ""
    record.end_time = datetime.now(timezone.utc)
    return record
