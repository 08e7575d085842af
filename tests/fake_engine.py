"""A fake engine for the job-service tests and load drills: ``engine = "fake_engine:fake_engine"``
in a server config (``FAKE``).  ``tests/`` is importable in the processes the tests start (the
server, its workers, Ray nodes): conftest.py puts it on ``PYTHONPATH``."""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FAKE = "fake_engine:fake_engine"
GATED = "gated"   # Operation.UserData of a job that runs its progress steps when the test says


def release(gate: str | Path, job_id: str, step: int) -> None:
    """Let the gated job ``job_id`` run its progress steps up to ``step``."""
    tmp = Path(gate) / f"{job_id}.tmp"
    tmp.write_text(str(step))
    tmp.replace(Path(gate) / job_id)


def reached(gate: str | Path, job_id: str) -> int:
    """The last progress step the gated job ``job_id`` has reported (0: none yet)."""
    try:
        return int((Path(gate) / f"{job_id}.at").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _released(gate: Path, job_id: str) -> int:
    try:
        return int((gate / job_id).read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _wait_gate(gate: Path, job_id: str, step: int) -> None:
    deadline = time.monotonic() + 300   # guards a test that never releases it
    while _released(gate, job_id) < step:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: progress step {step} was never released")
        time.sleep(0.01)


def fake_engine(req: Any, storage: Any, *, bucket: str, region: str, job_id: str, queue_id: str,
                created: datetime, template: Any = None, model: str | None = None,
                device: str | None = None, model_options: dict[str, Any] | None = None,
                progress: Callable[[int, int], None] | None = None, **_: Any) -> Any:
    """A stand-in for ``run_job`` that separates nothing: it appends ``<job_id> <pid>`` to
    ``run_log`` (to check no job runs twice), opens a temporary file for each output key, sleeps
    ``delay`` seconds while they are open (as the real engine holds its temporaries while it
    separates), then writes the input's bytes to each and renames them into place, so a job
    succeeds in milliseconds.  Selected with ``engine = "fake_engine:fake_engine"``
    and ``[engine_options] delay/run_log``; with ``progress_steps = N`` the delay is slept in N
    equal steps, calling ``progress(i, N)`` after each (as the real engine reports frames done).
    With ``[engine_options] gate = DIR``, a job whose ``Operation.UserData`` is ``GATED`` runs
    its steps only as the test releases them (:func:`release`) and says how far it got after
    each (:func:`reached`), so that a test waits for events instead of timing the engine.
    A :class:`~separator.errors.CIError` fails the job with its code, as in ``run_job``.
    Tests use it for the 100-job burst and the crash drills; the end-to-end test uses the real engine.
    """
    from separator.errors import CIError
    from separator.jobs.job import new_record
    from separator.request import resolve_outputs

    opts = model_options or {}
    record = new_record(req, bucket=bucket, region=region, job_id=job_id, queue_id=queue_id,
                        created=created, template=template)
    record.start_time = datetime.now(timezone.utc)
    if opts.get("run_log"):
        with open(opts["run_log"], "a") as fh:
            fh.write(f"{job_id} {os.getpid()}\n")
    delay, steps = float(opts.get("delay", 0.0)), int(opts.get("progress_steps", 0) or 0)
    gate = Path(opts["gate"]) if opts.get("gate") and req.operation.user_data == GATED else None
    params = template.params if template is not None else req.params
    try:
        data = storage.require(bucket, req.input_object).read_bytes()
        keys = list(resolve_outputs(req.output, params.audio_mode, params.audio_config.codec
                                    if params.audio_config else None).values())
        with contextlib.ExitStack() as stack:
            temps = [stack.enter_context(storage.atomic_path(req.output.bucket, key)) for key in keys]
            if steps > 0:
                for i in range(1, steps + 1):
                    if gate is not None:
                        _wait_gate(gate, job_id, i)
                    else:
                        time.sleep(delay / steps)
                    if progress is not None:
                        progress(i, steps)
                    if gate is not None:
                        (gate / f"{job_id}.at.tmp").write_text(str(i))
                        (gate / f"{job_id}.at.tmp").replace(gate / f"{job_id}.at")
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
