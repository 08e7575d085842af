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
from typing import Any

FAKE = "fake_engine:fake_engine"


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
