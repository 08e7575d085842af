"""One VoiceSeparate job against local storage: a parsed request in, a JobsDetail record out.

``run_job`` never raises for a failed job: every failure becomes ``State=Failed`` with
the protocol's ``Code``/``Message``, exactly what the cloud reports, and nothing is
written.  It is shared by ``separator run`` (CLI), the Python API and the job service's
workers, where :func:`run_task` (the service's worker-pool runner) runs one job of the store.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..errors import CIError
from ..media import outputs_media_info
from ..request import (
    JobRecord, JobRequest, merge_template, new_job_id, new_queue_id, resolve_outputs,
)
from ..storage import LocalStorage, file_md5
from .engine import separate_file

log = logging.getLogger(__name__)


def effective_request(req: JobRequest, template: Any | None = None) -> JobRequest:
    """The request with a template applied: its parameters win over inline ones (spec §1.4)."""
    if template is not None:
        return merge_template(req, template.params)
    if req.operation.voice_separate is not None:
        return req
    if req.operation.template_id:
        raise CIError("InvalidArgument",
                      f"TemplateId {req.operation.template_id} needs the job service "
                      "(`separator serve`), which stores templates; give inline "
                      "Operation.VoiceSeparate parameters to run it from the command line",
                      resource="Operation.TemplateId")
    raise CIError("InvalidArgument", "Operation needs TemplateId or VoiceSeparate",
                  resource="Operation")


def new_record(req: JobRequest, *, bucket: str, region: str, job_id: str | None = None,
               queue_id: str | None = None, created: datetime | None = None,
               template: Any | None = None) -> JobRecord:
    """The JobsDetail of a job that has just been submitted."""
    return JobRecord(
        job_id=job_id or new_job_id(), state="Submitted", code="Success", message="",
        creation_time=created or datetime.now(timezone.utc), queue_id=queue_id or new_queue_id(),
        input_region=region, input_bucket=bucket, input_object=req.input_object, request=req,
        template_id=getattr(template, "template_id", None),
        template_name=getattr(template, "name", None))


def run_job(req: JobRequest, storage: LocalStorage, *, bucket: str, region: str,
            job_id: str | None = None, queue_id: str | None = None,
            created: datetime | None = None, template: Any | None = None,
            model: str | None = None, device: str | None = None,
            progress: Callable[[float, float], None] | None = None,
            model_options: dict[str, object] | None = None) -> JobRecord:
    """Run one job to its end and return its final JobsDetail (Success or Failed)."""
    record = new_record(req, bucket=bucket, region=region, job_id=job_id, queue_id=queue_id,
                        created=created, template=template)
    record.state = "Running"
    record.start_time = datetime.now(timezone.utc)
    try:
        req = record.request = effective_request(req, template)
        params, out = req.params, req.output
        codec = params.audio_config.codec if params.audio_config else None
        targets_keys = resolve_outputs(out, params.audio_mode, codec)
        in_path = storage.require(bucket, req.input_object)
        targets = {role: storage.object_path(out.bucket, key, write=True)
                   for role, key in targets_keys.items()}
        storage.bucket_path(out.bucket, create=True)
        result = separate_file(in_path, targets, mode=params.audio_mode,
                               audio_config=params.audio_config, model=model or params.model,
                               device=device, progress=progress, model_options=model_options)
        written = [(targets_keys[role], file_md5(path)) for role, path in result.outputs.items()]
        record.media_result = written
        # Format describes the input; Stream.Audio one entry per output, in MediaResult order
        record.media_info = outputs_media_info(result.outputs.values(), source=result.source)
        record.extra = {"SeparatorModel": result.model, "SeparatorDevice": result.device}
        record.state, record.code, record.message = "Success", "Success", ""
    except CIError as err:
        record.state, record.code, record.message = "Failed", err.code, err.message
    except Exception as err:  # a bug, not the user's fault: report it, never crash the caller
        log.error("job %s failed unexpectedly:\n%s", record.job_id, traceback.format_exc())
        record.state, record.code = "Failed", "InternalError"
        record.message = f"internal error: {type(err).__name__}: {err}"
    record.end_time = datetime.now(timezone.utc)
    return record



# ---------------------------------------------------------------------------------------------
# The job service's runner: one job of the store, in a worker (see separator.workers)
# ---------------------------------------------------------------------------------------------

@dataclass
class TemplateRef:
    """What ``run_job`` needs of a template: ``template_id``, ``name``, ``params``."""
    template_id: str
    name: str
    params: Any


@functools.lru_cache(maxsize=None)
def load_engine(spec: str) -> Callable[..., Any]:
    """The engine ``"module:function"`` (``run_job``'s signature; once per process)."""
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func or "run_job")


@functools.lru_cache(maxsize=None)
def _storage(root: str) -> LocalStorage:
    return LocalStorage(root)


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


def internal_error(message: str) -> dict[str, Any]:
    """The stored result of a job whose engine (or worker) failed with a bug."""
    return {"state": "Failed", "code": "InternalError", "message": f"internal error: {message}",
            "started": None, "ended": time.time(), "media_result": None, "media_info": None,
            "extra": None}


def percent_progress(report: Callable[[int], None]) -> Callable[[float, float], None]:
    """The engine's ``progress(done, total)`` as a whole percentage for ``report``: 0–99
    (100 is reserved for a job that succeeded); an unknown total is not reported."""
    def progress(done: float, total: float) -> None:
        if total > 0:
            report(max(0, min(99, int(done * 100 // total))))
    return progress


def _accepts_progress(engine: Callable[..., Any]) -> bool:
    """Whether ``engine`` takes a ``progress`` keyword (a custom engine may not)."""
    try:
        params = inspect.signature(engine).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "progress" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def run_payload(payload: dict[str, Any], engine: Callable[..., Any], storage: Any,
                device: str | None, engine_options: dict[str, Any],
                progress: Callable[[float, float], None] | None = None) -> dict[str, Any]:
    """Run the job the scheduler sent (``payload``: the store's row) with ``engine``; its result."""
    from ..request.model import VoiceSeparateParams

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
               progress: Callable[[float, float], None] | None = None) -> dict[str, Any]:
    """:func:`run_payload`, with an engine exception turned into a Failed result."""
    try:
        return run_payload(payload, engine, storage, device, engine_options, progress)
    except Exception as err:  # the engine should never raise; if it does, the job fails
        log.error("job %s: engine raised\n%s", payload.get("job_id"), traceback.format_exc())
        return internal_error(f"{type(err).__name__}: {err}")


def run_task(context: dict[str, Any], payload: dict[str, Any],
             progress: Callable[[int], None]) -> dict[str, Any]:
    """The service's worker-pool runner: ``context`` holds ``engine`` (``"module:function"``),
    ``storage_root``, ``engine_options`` and the worker's ``device``; progress is reported as
    a whole percentage."""
    return run_safely(payload, load_engine(context["engine"]), _storage(context["storage_root"]),
                      context.get("device"), context.get("engine_options") or {},
                      percent_progress(progress))
