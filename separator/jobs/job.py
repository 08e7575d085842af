"""One VoiceSeparate job against local storage: a parsed request in, a JobsDetail record out.

``run_job`` never raises for a failed job: every failure becomes ``State=Failed`` with
the protocol's ``Code``/``Message``, exactly what the cloud reports, and nothing is
written.  It is shared by ``separator run`` (CLI), the Python API and the job service's
workers.
"""
from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
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

