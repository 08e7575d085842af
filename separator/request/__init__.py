"""The VoiceSeparate request/response layer: parse + validate requests, render responses.

See :mod:`.parse` (input side), :mod:`.response` (output side), :mod:`.ids` (ids and times)
and :mod:`.model` (typed models).
"""
from .ids import (
    CST, JOB_ID_RE, QUEUE_ID_RE, TEMPLATE_ID_RE, TIME_RE, format_time, new_job_id, new_queue_id,
    new_request_id, new_template_id, now, parse_time,
)
from .model import (
    AudioConfig, CallBackMqConfig, JobRequest, Operation, OutputSpec, TemplateRequest,
    VoiceSeparateParams,
)
from .parse import (
    MAX_BODY_BYTES, effective_audio_config, merge_template, parse_job_request,
    parse_template_request, resolve_outputs, validate_job_request, validate_template_request,
)
from .response import (
    JobRecord, TemplateRecord, callback_dict, jobs_detail_dict, render_callback, render_error,
    render_response, render_template, render_template_deleted, render_template_list,
)

__all__ = [
    "AudioConfig", "CST", "CallBackMqConfig", "JOB_ID_RE", "JobRecord", "JobRequest",
    "MAX_BODY_BYTES", "Operation", "OutputSpec", "QUEUE_ID_RE", "TEMPLATE_ID_RE", "TIME_RE",
    "TemplateRecord", "TemplateRequest", "VoiceSeparateParams", "callback_dict", "effective_audio_config",
    "format_time", "jobs_detail_dict", "merge_template", "new_job_id", "new_queue_id", "new_request_id",
    "new_template_id", "now", "parse_job_request", "parse_template_request", "parse_time", "render_callback",
    "render_error", "render_response", "render_template", "render_template_deleted", "render_template_list",
    "resolve_outputs", "validate_job_request", "validate_template_request",
]
