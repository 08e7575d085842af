"""Run a batch: plan → skip what is done → separate the rest on local workers or Ray →
record each completion → write the summary.

Exit status (:attr:`BatchReport.exit_status`, also the CLI's):

* ``0`` every input is separated (now or by an earlier run); ignored files do not count;
* ``1`` at least one input failed (bad media, invalid manifest row, output conflict, lost worker);
  the others were separated and the summary lists the failures;
* ``2`` the batch could not start (SOURCE not found, invalid settings or template, OUTPUT locked
  by another batch, Ray missing or unreachable) — raised as :class:`BatchError` by :func:`run_batch`;
* ``130`` interrupted (Ctrl-C / SIGTERM): finished inputs are recorded, the rest are ``pending``
  in the summary, and the next run picks up from there.

Summary (``OUTPUT/batch-summary.jsonl`` unless ``summary`` is given), written when the run ends,
one JSON object per line: one per input ::

    {"input": "/abs/in/a/song.mp3", "rel": "a/song.mp3", "status": "ok",
     "outputs": {"vocals": "/abs/out/a/song/vocals.m4a", ...}, "seconds": 4.2, "audio_seconds": 201.3,
     "error": null, "attempts": 1, "worker": "host:pid", "model": "spleeter-2stems"}

``status`` is ``ok`` (separated now), ``skipped`` (done by an earlier run and verified),
``failed`` (``error`` = ``{"code", "message"}``), ``ignored`` (a file of a non-media extension in a
SOURCE folder) or ``pending`` (not reached: interrupted).  The last line holds the totals::

    {"totals": true, "inputs": 12, "ok": 9, "skipped": 1, "failed": 2, "ignored": 3, "pending": 0,
     "audio_seconds": 1830.4, "wall_seconds": 71.2, "audio_hours_per_hour": 25.7,
     "backend": "local", "workers": 2, "exit_status": 1}
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CIError
from ..progress import AudioBar, clock, summary
from ..storage.local import atomic_file
from ..workers import (
    MAX_ATTEMPTS, Event, Finished, InProcessPool, LocalPool, Pool, Progress, given_up_message,
    plan_workers, require_device, should_retry,
)
from .plan import BatchItem, Defaults, Plan, build_plan
from .state import BatchState, OutputLock, input_identity, sweep_temporaries
from .worker import RUNNER

log = logging.getLogger(__name__)

SUMMARY_NAME = "batch-summary.jsonl"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
WORKER_WAIT_S = 300.0   # inputs wait this long for a worker (a Ray actor starting) before they fail


class BatchError(Exception):
    """The batch could not start (exit status 2)."""


@dataclass
class BatchOptions:
    source: str
    output: str
    defaults: Defaults = field(default_factory=Defaults)
    workers: int | None = None          # None: one per GPU, else 1; 0: in-process
    device: str | None = None
    ray_address: str | None = None
    ray_cpus_per_worker: float = 1.0
    summary: str | None = None
    verify: str = "md5"                 # md5 | size
    force: bool = False                 # separate everything again, ignoring the state
    all_files: bool = False
    progress: str = "auto"              # auto | bar | log | none
    max_attempts: int | None = None     # None: separator.workers.MAX_ATTEMPTS


@dataclass
class BatchReport:
    rows: list[dict]
    totals: dict
    summary_path: Path
    exit_status: int


# ------------------------------------------------------------------------------------------------
# progress
# ------------------------------------------------------------------------------------------------

class _Progress:
    """Progress in seconds of audio: a bar on a terminal (named after the models and the
    workers, with an ETA), or one log line per finished input; then the summary line.

    The inputs' lengths are probed on a background thread as the batch runs, so the total
    grows while the first inputs are separated; running inputs count as far as their workers
    report (about once a second)."""

    def __init__(self, mode: str, items: list[BatchItem], label: str):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.total = len(items)
        self.done = 0
        self.failed = 0
        self.audio = 0.0                       # seconds of the inputs separated now
        self.lengths: dict[int, float] = {}    # probed so far
        self.running: dict[int, float] = {}    # seconds done of inputs being separated
        self.finished = 0.0                    # seconds of the inputs finished (any status)
        self.started = time.perf_counter()
        self.bar = AudioBar(label, always=True) if mode == "bar" and items else None
        self._stop = threading.Event()
        if items and mode != "none":
            threading.Thread(target=self._probe_lengths, args=(items,), name="batch-lengths",
                             daemon=True).start()

    def _probe_lengths(self, items: list[BatchItem]) -> None:
        from ..media import probe

        for item in items:
            if self._stop.is_set():
                return
            try:
                seconds = float(probe(item.input).duration or 0.0)
            except Exception:  # noqa: BLE001 - a bad input fails in its worker, with its message
                seconds = 0.0
            self.lengths[item.index] = seconds
            if self.bar is not None:
                self.bar.grow(seconds)

    def _position(self) -> float:
        return self.finished + sum(self.running.values())

    def rate(self) -> float:
        wall = time.perf_counter() - self.started
        return self.audio / wall if wall > 0 else 0.0   # audio seconds per second = h/h

    def say(self, text: str) -> None:
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.note(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def progress(self, item: BatchItem, seconds: float) -> None:
        self.running[item.index] = seconds
        if self.bar is not None:
            self.bar.update(self._position())

    def update(self, row: dict, item: BatchItem) -> None:
        self.done += 1
        self.running.pop(item.index, None)
        self.finished += self.lengths.get(item.index) or row.get("audio_seconds") or 0.0
        if row["status"] == "ok":
            self.audio += row.get("audio_seconds") or 0.0
        if row["status"] == "failed":
            self.failed += 1
        if self.bar is not None:
            self.bar.update(self._position())
            if row["status"] == "failed":
                self.say(f"failed: {row['rel']}: {row['error']['code']}: {row['error']['message']}")
        elif self.mode == "log":
            if row["status"] == "ok":
                what = f"ok {row['rel']} ({row.get('audio_seconds') or 0:.1f} s audio in {row['seconds']:.1f} s)"
            else:
                what = f"failed {row['rel']}: {row['error']['code']}: {row['error']['message']}"
            known = sum(self.lengths.values())
            left = known - self._position() if len(self.lengths) == self.total else None
            eta = left / self.rate() if left is not None and self.rate() > 0 else None
            self.say(f"[{self.done}/{self.total}] {what}; {self.rate():.1f} audio h/h, ETA {clock(eta)}")

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------

def _pool(opts: BatchOptions) -> Pool:
    """The worker pool of a batch (not opened yet); ValueError/RayUnavailable when it cannot be."""
    if opts.ray_address:
        from ..workers.ray import RayPool

        return RayPool(opts.ray_address, runner=RUNNER, context={}, device=opts.device,
                       workers=opts.workers or None, cpus_per_worker=opts.ray_cpus_per_worker)
    require_device(opts.device)
    if opts.workers == 0:
        return InProcessPool(RUNNER, {}, opts.device)
    specs = plan_workers(opts.workers, opts.device)
    # a batch gives up on workers that keep dying: then the inputs left fail (WorkerLost)
    return LocalPool(RUNNER, {}, specs, max_respawns=3 * len(specs) + 3)


def _lost_result(item: BatchItem, message: str, attempts: int | None = None) -> dict:
    res = {"index": item.index, "status": "failed", "seconds": 0.0,
           "error": {"code": "WorkerLost", "message": message}}
    if attempts:
        res["attempts"] = attempts
    return res


def _separate(pool: Pool, items: list[BatchItem], on_result, on_dispatch, on_progress, *,
              max_attempts: int, wait_s: float = WORKER_WAIT_S) -> None:
    """Separate ``items`` on ``pool`` (open): idle slots take the next input; a finished one is
    ``on_result``; an input whose worker was lost goes to the front of the queue again, or fails
    (``WorkerLost``) once the retry policy gives it up.  When no worker is left (or none has been
    available for ``wait_s`` seconds) the inputs still waiting fail."""
    pending = deque(items)
    running: dict[str, BatchItem] = {}     # slot -> its input
    losses: dict[int, int] = {}            # input index -> lost workers
    waiting_since: float | None = None

    def on_event(ev: Event) -> None:
        item = running.get(ev.slot)
        if item is None or ev.key != item.index:
            return
        if isinstance(ev, Progress):
            on_progress(item, ev.value)
            return
        del running[ev.slot]
        n = losses.get(item.index, 0)
        if isinstance(ev, Finished):
            res = ev.result if ev.error is None else {
                "index": item.index, "status": "failed", "seconds": 0.0,
                "error": {"code": "InternalError", "message": ev.error}}
            if ev.node:
                res["node"] = ev.node
            if n:
                res["attempts"] = n + 1
            on_result(item, res)
            return
        n = losses[item.index] = n + 1
        again = should_retry(n, max_attempts)
        log.warning("worker %s was lost while separating %s (%s); %s", ev.slot, item.rel, ev.reason,
                    "retrying elsewhere" if again else "giving up")
        if again:
            pending.appendleft(item)
        else:
            on_result(item, _lost_result(item, given_up_message(n, ev.reason, "input"), n))

    def fail_pending(message: str) -> None:
        while pending:
            item = pending.popleft()
            on_result(item, _lost_result(item, message))

    while pending or running:
        if pending:
            for slot in pool.idle():
                if not pending:
                    break
                item = running[slot] = pending.popleft()
                on_dispatch(item)
                pool.start(slot, item.index, item)
        if pending and not running:       # nothing runs and nothing can start now
            if pool.exhausted:
                fail_pending("every worker died; none left to run this input")
                break
            now = time.monotonic()
            waiting_since = waiting_since or now
            if now - waiting_since > wait_s:
                fail_pending(f"no worker became available in {wait_s:g} s")
                break
        else:
            waiting_since = None
        pool.poll(1.0, on_event)


def _failed_row(item: BatchItem, code: str, message: str) -> dict:
    return {"input": item.input, "rel": item.rel, "status": "failed", "outputs": {}, "seconds": 0.0,
            "audio_seconds": None, "error": {"code": code, "message": message}, "attempts": 0}


def run_batch(opts: BatchOptions) -> BatchReport:
    """Run a batch; return its report (see the module doc for rows, totals and exit statuses).

    Raises :class:`BatchError` when the batch cannot start.
    """
    started = time.perf_counter()
    out = Path(opts.output).absolute()
    summary_path = Path(opts.summary).absolute() if opts.summary else out / SUMMARY_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BatchError(f"cannot create OUTPUT {out}: {e.strerror}") from None
    try:
        lock = OutputLock(out).__enter__()
    except CIError as e:
        raise BatchError(e.message) from None
    try:
        try:
            earlier = BatchState(out).load().output_paths() | {os.path.realpath(summary_path)}
            plan: Plan = build_plan(opts.source, out, opts.defaults, all_files=opts.all_files, exclude=earlier)
        except CIError as e:
            raise BatchError(e.message) from None
        try:
            pool = _pool(opts)
        except Exception as e:  # RayUnavailable, bad device …
            raise BatchError(str(e)) from None
        return _run(plan, opts, pool, out, summary_path, started)
    finally:
        lock.__exit__(None, None, None)


def _run(plan: Plan, opts: BatchOptions, pool: Pool, out: Path, summary_path: Path, started: float) -> BatchReport:
    swept = sweep_temporaries(out)
    if swept:
        log.info("removed %d temporary file(s) left by an interrupted run", swept)
    state = BatchState(out).load()
    state.compact()

    rows: dict[int, dict] = {}
    todo: list[BatchItem] = []
    for item in plan.items:
        if item.error is not None:
            rows[item.index] = _failed_row(item, *item.error)
            continue
        rec = None if opts.force else state.done(item, opts.verify)
        if rec is not None:
            rows[item.index] = {"input": item.input, "rel": item.rel, "status": "skipped",
                                "outputs": dict(item.targets), "seconds": 0.0,
                                "audio_seconds": rec.get("audio_seconds"), "error": None, "attempts": 0,
                                "model": rec.get("model")}
        else:
            todo.append(item)

    models = sorted({item.model for item in todo}) or [opts.defaults.model or "?"]
    progress = _Progress(opts.progress, todo, f"batch ({', '.join(models)}; {pool.describe()})")
    n_skip = sum(1 for r in rows.values() if r["status"] == "skipped")
    n_bad = sum(1 for r in rows.values() if r["status"] == "failed")
    progress.say(f"batch: {len(plan.items)} input(s) in {plan.source}: {len(todo)} to separate, "
                 f"{n_skip} already done, {n_bad} invalid, {len(plan.ignored)} ignored -> {out}")
    for r in rows.values():
        if r["status"] == "failed":
            progress.say(f"failed: {r['rel']}: {r['error']['code']}: {r['error']['message']}")

    def on_dispatch(item: BatchItem) -> None:
        try:
            item.size, item.mtime_ns = input_identity(item.input)
        except OSError:
            item.size, item.mtime_ns = -1, -1

    def on_result(item: BatchItem, res: dict) -> None:
        row = {"input": item.input, "rel": item.rel, "status": res["status"], "outputs": {},
               "seconds": round(float(res.get("seconds") or 0.0), 3),
               "audio_seconds": res.get("audio_seconds"), "error": res.get("error"),
               "attempts": int(res.get("attempts") or 1), "worker": res.get("worker"),
               "model": res.get("model")}
        if res.get("node"):
            row["node"] = res["node"]
        # the row before the record: a Ctrl-C that lands while the record is written (fsync)
        # must not report a finished input as pending
        rows[item.index] = row
        if res["status"] == "ok":
            row["outputs"] = {r: o["path"] for r, o in res["outputs"].items()}
            try:
                state.record(item, res)
            except OSError as e:
                row.update(status="failed", error={"code": "InternalError",
                                                   "message": f"cannot record completion: {e}"})
        progress.update(row, item)

    interrupted = False
    prev_term = None
    if todo:
        def _term(signum, frame):  # SIGTERM behaves like Ctrl-C: clean stop, summary written
            raise KeyboardInterrupt
        try:
            prev_term = signal.signal(signal.SIGTERM, _term)
        except ValueError:  # not the main thread
            prev_term = None
        cannot_start = None
        try:
            try:
                pool.open()
            except Exception as e:  # noqa: BLE001 - e.g. the Ray cluster cannot be reached
                cannot_start = f"cannot start the workers on {pool.describe()}: {type(e).__name__}: {e}"
            else:
                progress.say(f"running on {pool.describe()}")
                _separate(pool, todo, on_result, on_dispatch, progress.progress,
                          max_attempts=opts.max_attempts or MAX_ATTEMPTS)
        except KeyboardInterrupt:
            interrupted = True
            progress.say("interrupted: finished inputs are recorded; run the same command again to go on")
        finally:
            pool.close()
            progress.close()
            if prev_term is not None:
                signal.signal(signal.SIGTERM, prev_term)
        if cannot_start:
            raise BatchError(cannot_start)
        sweep_temporaries(out)

    for item in todo:
        if item.index not in rows:
            rows[item.index] = {"input": item.input, "rel": item.rel, "status": "pending", "outputs": {},
                                "seconds": 0.0, "audio_seconds": None, "error": None, "attempts": 0}
    ordered = [rows[i.index] for i in plan.items]
    ordered += [{"input": str(Path(plan.source).absolute() / p) if plan.kind == "folder" else p, "rel": p,
                 "status": "ignored", "outputs": {}, "seconds": 0.0, "audio_seconds": None,
                 "error": None, "reason": "not a media file extension (see --all-files)"}
                for p in plan.ignored]
    count = {s: sum(1 for r in ordered if r["status"] == s)
             for s in ("ok", "skipped", "failed", "ignored", "pending")}
    wall = time.perf_counter() - started
    audio = sum(r.get("audio_seconds") or 0.0 for r in ordered if r["status"] == "ok")
    exit_status = EXIT_INTERRUPTED if interrupted else EXIT_FAILED if count["failed"] else EXIT_OK
    totals = {"totals": True, "inputs": len(plan.items), **count, "audio_seconds": round(audio, 3),
              "wall_seconds": round(wall, 3), "audio_hours_per_hour": round(audio / wall, 2) if wall else 0.0,
              "backend": pool.kind, "workers": pool.n,
              "exit_status": exit_status}
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(summary_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in ordered + [totals]:
                fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    progress.say(f"done: {count['ok']} separated, {count['skipped']} skipped, {count['failed']} failed, "
                 f"{count['ignored']} ignored, {count['pending']} pending; "
                 + summary("audio", audio, wall).split(": ", 1)[1] + f"; summary: {summary_path}")
    if count["failed"]:
        progress.say("failed inputs:")
        for r in ordered:
            if r["status"] == "failed":
                progress.say(f"  {r['rel']}: {r['error']['code']}: {r['error']['message']}")
    return BatchReport(ordered, totals, summary_path, exit_status)
