"""Worker processes and the scheduler that feeds them.

* Each worker is a ``multiprocessing`` **spawn** process running :func:`worker_main`: it
  imports the engine once and runs one job at a time, so models the engine loads stay
  loaded between jobs.  Separation never runs in the server process.
* The scheduler is one thread in the server process.  It claims the next runnable job from
  the store (:meth:`JobStore.claim_next`: highest JobLevel first, FIFO within a level, paused
  queues skipped), hands it to an idle worker over a pipe, and records the result.
* A worker that dies mid-job (killed, out of memory, segfault) is noticed through its process
  sentinel; its job goes back to ``Submitted`` and runs again, and after
  ``max_attempts`` crashes it ends ``Failed`` (``InternalError``).  The worker is respawned and
  the service keeps going.
* Stopping the pool leaves running jobs ``Running`` in the store; the next start's
  :meth:`JobStore.recover` runs them again from the start (outputs are written atomically, so
  a half-run job leaves nothing behind).
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
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


def run_payload(payload: dict[str, Any], engine: Callable[..., Any], storage: Any,
                device: str | None, engine_options: dict[str, Any]) -> dict[str, Any]:
    from ..request.model import JobRequest, VoiceSeparateParams

    req = JobRequest.model_validate_json(payload["request"])
    template = None
    if payload.get("template"):
        t = payload["template"]
        template = TemplateRef(t["template_id"], t["name"], VoiceSeparateParams.model_validate(t["params"]))
    kwargs: dict[str, Any] = {}
    if engine_options:
        kwargs["model_options"] = engine_options
    record = engine(req, storage, bucket=payload["bucket"], region=payload["region"],
                    job_id=payload["job_id"], queue_id=payload["queue_id"],
                    created=datetime.fromtimestamp(payload["created"], timezone.utc),
                    template=template, model=payload.get("model"), device=device, **kwargs)
    return record_result(record)


def worker_main(conn: Connection, storage_root: str, engine_spec: str, device: str | None,
                engine_options: dict[str, Any], log_level: int = logging.INFO) -> None:
    """Body of a worker process: receive job payloads, run them, send results back."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    logging.basicConfig(level=log_level, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s")
    from ..storage import LocalStorage

    storage = LocalStorage(storage_root)
    engine = load_engine(engine_spec)
    while True:
        try:
            payload = conn.recv()
        except (EOFError, OSError):
            return
        if payload is None:
            return
        try:
            result = run_payload(payload, engine, storage, device, engine_options)
        except Exception as err:  # the engine should never raise; if it does, the job fails
            log.error("job %s: engine raised\n%s", payload.get("job_id"), traceback.format_exc())
            now = time.time()
            result = {"state": "Failed", "code": "InternalError",
                      "message": f"internal error: {type(err).__name__}: {err}",
                      "started": None, "ended": now, "media_result": None, "media_info": None,
                      "extra": None}
        try:
            conn.send((payload["job_id"], payload["attempt"], result))
        except (BrokenPipeError, OSError):
            return


# ---------------------------------------------------------------------------------------------
# In the server process
# ---------------------------------------------------------------------------------------------

@dataclass
class _Worker:
    name: str
    process: Any
    conn: Connection
    busy: tuple[str, int] | None = None   # (job_id, attempt)
    since: float = field(default_factory=time.time)


class WorkerPool:
    """N worker processes plus the scheduler thread.

    ``on_finished(job_id)`` is called (in the scheduler thread) after a job reached a final
    state; it must not block (the service hands callbacks to their own thread).
    ``model_for(row)`` chooses the model name for a job (None: the engine's default).
    """

    def __init__(self, store: JobStore, *, storage_root: str | Path, workers: int = 1,
                 engine: str = "separator.jobs.job:run_job", device: str | None = None,
                 engine_options: dict[str, Any] | None = None, max_attempts: int = 2,
                 state_dir: str | Path | None = None,
                 on_finished: Callable[[str], None] | None = None,
                 model_for: Callable[[JobRow], str | None] | None = None):
        self.store = store
        self.storage_root = str(storage_root)
        self.n = max(1, int(workers))
        self.engine = engine
        self.device = device
        self.engine_options = dict(engine_options or {})
        self.max_attempts = max_attempts
        self.state_dir = Path(state_dir) if state_dir else None
        self.on_finished = on_finished or (lambda job_id: None)
        self.model_for = model_for or (lambda row: None)
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._thread: threading.Thread | None = None
        self._spawn_failures = 0

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.n):
            self._workers.append(self._spawn(f"w{i}"))
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
        for w in self._workers:
            with contextlib.suppress(Exception):
                if w.busy is None:
                    w.conn.send(None)
        deadline = time.time() + timeout
        for w in self._workers:
            if w.busy is not None:
                w.process.terminate()
            w.process.join(max(0.1, deadline - time.time()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(1)
            w.conn.close()
        self._workers.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def wake(self) -> None:
        """Tell the scheduler that something changed (a job was submitted, a queue resumed)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def pids(self) -> dict[str, int]:
        return {w.name: w.process.pid for w in self._workers}

    # -- internals -------------------------------------------------------------
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

    def _write_pids(self) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "workers.json.tmp"
        tmp.write_text(json.dumps(self.pids()))
        os.replace(tmp, self.state_dir / "workers.json")

    def _dispatch(self) -> None:
        for w in self._workers:
            if w.busy is not None or not w.process.is_alive():
                continue
            row = self.store.claim_next(w.name)
            if row is None:
                return
            payload = {"job_id": row.job_id, "attempt": row.attempts, "bucket": row.bucket,
                       "region": row.region, "queue_id": row.queue_id, "created": row.created,
                       "request": row.request, "template": row.template_dict,
                       "model": self.model_for(row)}
            try:
                w.conn.send(payload)
            except (BrokenPipeError, OSError):
                # the worker is gone; the sentinel path below requeues the job
                pass
            w.busy = (row.job_id, row.attempts)
            w.since = time.time()
            log.info("job %s (level %s) -> worker %s (attempt %s)", row.job_id, row.level, w.name,
                     row.attempts)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._dispatch()
                objs: list[Any] = [self._wake_r]
                for w in self._workers:
                    objs.extend((w.conn, w.process.sentinel))
                ready = wait(objs, timeout=1.0)
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError, OSError):
                        while os.read(self._wake_r, 4096):
                            pass
                for i, w in enumerate(list(self._workers)):
                    if w.conn in ready:
                        try:
                            while w.conn.poll():
                                self._on_result(w, w.conn.recv())
                        except (EOFError, OSError):
                            pass
                    if w.process.sentinel in ready or not w.process.is_alive():
                        self._on_death(i, w)
            except Exception:  # never let the scheduler die
                log.error("scheduler error\n%s", traceback.format_exc())
                time.sleep(0.5)

    def _on_result(self, w: _Worker, msg: tuple[str, int, dict[str, Any]]) -> None:
        job_id, attempt, result = msg
        w.busy = None
        state = result["state"] if result["state"] in ("Success", "Failed") else "Failed"
        changed = self.store.finish(job_id, attempt=attempt, state=state, code=result["code"],
                                    message=result["message"], result=result,
                                    started=result.get("started"), ended=result.get("ended"))
        log.info("job %s %s (%s) on worker %s", job_id, state, result["code"], w.name)
        if changed:
            self._notify(job_id)

    def _on_death(self, index: int, w: _Worker) -> None:
        w.process.join(0.1)
        code = w.process.exitcode
        log.warning("worker %s (pid %s) died with exit code %s", w.name, w.process.pid, code)
        if w.busy is not None:
            job_id, attempt = w.busy
            new = self.store.requeue(job_id, attempt=attempt, crashed=True, max_attempts=self.max_attempts,
                                     message=f"the worker process running this job died (exit code {code}) "
                                             f"{self.max_attempts} times")
            log.warning("job %s: worker died; job is now %s", job_id, new)
            if new == "Failed":
                self._notify(job_id)
        with contextlib.suppress(Exception):
            w.conn.close()
        if self._stop.is_set():
            return
        if time.time() - w.since < 2:
            self._spawn_failures += 1
            time.sleep(min(5.0, 0.2 * self._spawn_failures))
        else:
            self._spawn_failures = 0
        self._workers[index] = self._spawn(w.name)
        self._write_pids()

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
                **_: Any) -> Any:
    """A stand-in for ``run_job`` that separates nothing: it sleeps ``delay`` seconds, appends
    ``<job_id> <pid>`` to ``run_log`` (to check no job runs twice) and writes the input's bytes to
    each output key, so a job succeeds in milliseconds.  Selected with
    ``engine = "separator.jobs.workers:fake_engine"`` and ``[engine_options] delay/run_log``.
    Tests use it for the 100-job burst and the crash drills; the end-to-end test uses the real engine.
    """
    from ..request import resolve_outputs
    from .job import new_record

    opts = model_options or {}
    record = new_record(req, bucket=bucket, region=region, job_id=job_id, queue_id=queue_id,
                        created=created, template=template)
    record.start_time = datetime.now(timezone.utc)
    if opts.get("run_log"):
        with open(opts["run_log"], "a") as fh:
            fh.write(f"{job_id} {os.getpid()}\n")
    time.sleep(float(opts.get("delay", 0.0)))
    params = template.params if template is not None else req.params
    written = []
    data = storage.require(bucket, req.input_object).read_bytes()
    for _role, key in resolve_outputs(req.output, params.audio_mode, params.audio_config.codec
                                      if params.audio_config else None).items():
        storage.put_bytes(req.output.bucket, key, data)
        import hashlib
        written.append((key, hashlib.md5(data).hexdigest()))
    record.media_result = written
    record.state, record.code, record.message = "Success", "Success", ""
    record.end_time = datetime.now(timezone.utc)
    return record
