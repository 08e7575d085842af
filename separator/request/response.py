"""Response, error, callback and template bodies (spec §1.8, §2, §4, §6, §7).

Everything is first built as a plain ordered tree — ``dict`` (children in protocol order),
``list`` (a repeated node), ``str`` (text; ``""`` = empty element) — and then written as

* **XML** with the standard library's :mod:`xml.etree.ElementTree` (escaping done by the
  library; characters XML 1.0 forbids are dropped), prefixed with
  ``<?xml version="1.0" encoding="utf-8"?>``.  Lists become repeated sibling elements, which is
  what ``xmltodict.parse`` and the SDK's ``xml_to_dict`` turn back into lists;
* **JSON** with the same names; repeated nodes (``JobsDetail``, ``ObjectName``, ``Md5Info``,
  ``Audio``, ``NonExistJobIds``, ``TemplateList``) are always arrays.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Literal

from ..errors import CIError
from ..protocol import FINISHED_STATES
from .ids import format_time, new_request_id
from .model import TAG, AudioConfig, JobRequest, VoiceSeparateParams
from .xmltree import XML_HEADER, to_xml  # noqa: F401  (re-exported)
from .xmltree import text as _s

Fmt = Literal["xml", "json"]

@dataclass
class JobRecord:
    """One job as the job service keeps it; everything ``jobs_detail_dict`` needs.

    ``request`` is the (template-merged) :class:`JobRequest`, echoed under ``Operation``.
    ``media_result`` is ``[(object_name, md5_hex), …]`` in output order (vocals first);
    its bucket/region default to the request's ``Output``.  ``extra`` holds our extension nodes,
    rendered last under ``Operation`` (e.g. ``{'SeparatorModel': 'htdemucs', 'Device': 'cpu'}``).
    """

    job_id: str
    state: str = "Submitted"
    code: str = "Success"
    message: str = ""
    creation_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    queue_id: str = ""
    input_region: str = ""
    input_bucket: str = ""
    input_object: str = ""
    request: JobRequest | None = None
    template_id: str | None = None
    template_name: str | None = None
    media_info: dict | None = None
    media_result: list[tuple[str, str]] | None = None
    result_bucket: str | None = None
    result_region: str | None = None
    progress: int | None = None
    tag: str = TAG
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TemplateRecord:
    """A stored VoiceSeparate template (spec §4)."""

    template_id: str
    name: str
    bucket_id: str
    params: VoiceSeparateParams
    create_time: datetime | None = None
    update_time: datetime | None = None
    category: str = "Custom"
    tag: str = TAG


# --------------------------------------------------------------------------------------------
# Trees
# --------------------------------------------------------------------------------------------

def _audio_config_dict(cfg: AudioConfig | None) -> dict:
    cfg = cfg or AudioConfig()
    d = {"Codec": _s(cfg.codec), "Samplerate": _s(cfg.samplerate),
         "Bitrate": _s(cfg.bitrate), "Channels": _s(cfg.channels)}
    if cfg.sample_format:                      # our extension: only when the request set it
        d["SampleFormat"] = cfg.sample_format
    return d


def voice_separate_dict(params: VoiceSeparateParams) -> dict:
    """``VoiceSeparate{AudioMode, AudioConfig{Codec, Samplerate, Bitrate, Channels}[, Model]}``."""
    d: dict[str, Any] = {"AudioMode": _s(params.audio_mode), "AudioConfig": _audio_config_dict(params.audio_config)}
    if params.model:
        d["Model"] = params.model
    return d


def _normalise(v: Any) -> Any:
    """Turn a media-layer dict into tree values (str / dict / list), order kept."""
    if isinstance(v, dict):
        return {str(k): _normalise(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    return _s(v)


def _media_result_dict(rec: JobRecord) -> dict:
    out = rec.request.output if rec.request else None
    files = list(rec.media_result or [])
    return {"OutputFile": {
        "Bucket": _s(rec.result_bucket or (out.bucket if out else "")),
        "Region": _s(rec.result_region or (out.region if out else "")),
        "ObjectName": [name for name, _md5 in files],
        "ObjectPrefix": "",
        "Md5Info": [{"Md5": md5, "ObjectName": name} for name, md5 in files],
    }}


def jobs_detail_dict(record: JobRecord) -> dict:
    """One ``JobsDetail`` in the §1.8/§2 node order."""
    rec = record
    req = rec.request
    d: dict[str, Any] = {
        "Code": _s(rec.code), "Message": _s(rec.message), "JobId": rec.job_id, "Tag": _s(rec.tag),
        "State": _s(rec.state),
    }
    if rec.progress is not None:
        d["Progress"] = _s(rec.progress)
    d.update({
        "CreationTime": format_time(rec.creation_time), "StartTime": format_time(rec.start_time),
        "EndTime": format_time(rec.end_time), "QueueId": _s(rec.queue_id),
        "Input": {"Region": _s(rec.input_region), "BucketId": _s(rec.input_bucket),
                  "Object": _s(rec.input_object or (req.input_object if req else ""))},
    })
    op: dict[str, Any] = {}
    if rec.template_id:
        op["TemplateId"] = rec.template_id
        op["TemplateName"] = _s(rec.template_name)
    operation = req.operation if req else None
    if operation is not None and operation.voice_separate is not None:
        op["VoiceSeparate"] = voice_separate_dict(operation.voice_separate)
    if operation is not None and operation.output is not None:
        o = operation.output
        out = {"Region": _s(o.region), "Bucket": _s(o.bucket), "Object": _s(o.object), "AuObject": _s(o.au_object)}
        if o.bass_object:
            out["BassObject"] = o.bass_object
        if o.drum_object:
            out["DrumObject"] = o.drum_object
        op["Output"] = out
    if rec.state in FINISHED_STATES:
        if rec.media_info is not None:
            op["MediaInfo"] = _normalise(rec.media_info)
        if rec.media_result is not None:
            op["MediaResult"] = _media_result_dict(rec)
    op["UserData"] = _s(operation.user_data if operation else None)
    op["JobLevel"] = _s(operation.job_level if operation else 0)
    for k, v in rec.extra.items():
        op[str(k)] = _normalise(v)
    d["Operation"] = op
    return d


def template_dict(t: TemplateRecord) -> dict:
    return {"TemplateId": t.template_id, "Name": t.name, "BucketId": t.bucket_id, "Category": t.category,
            "Tag": t.tag, "UpdateTime": format_time(t.update_time), "CreateTime": format_time(t.create_time),
            "VoiceSeparate": voice_separate_dict(t.params)}


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

def to_json(tree: dict) -> bytes:
    # "replace": a lone surrogate (e.g. surrogateescape-decoded ffmpeg output) becomes "?"
    return json.dumps(tree, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def _render(root_tag: str, tree: dict, fmt: str, keep_empty_lists: Iterable[str] = ()) -> bytes:
    fmt = (fmt or "xml").lower()
    if fmt == "json":
        return to_json({root_tag: tree})
    if fmt == "xml":
        return to_xml(root_tag, tree, keep_empty_lists=keep_empty_lists)
    raise ValueError(f"fmt must be 'xml' or 'json', not {fmt!r}")


# --------------------------------------------------------------------------------------------
# Public renderers
# --------------------------------------------------------------------------------------------

def render_response(records: list[JobRecord], fmt: Fmt = "xml", *, non_exist_ids: Iterable[str] = (),
                    next_token: str | None = None) -> bytes:
    """``<Response><JobsDetail>…</JobsDetail>*[<NonExistJobIds>…]*[<NextToken>…]</Response>``.

    No records → one empty ``<JobsDetail/>`` (the SDK turns it into ``[]``); JSON:
    ``{"Response": {"JobsDetail": [...], ...}}``.  ``next_token`` ``""`` renders an empty
    ``<NextToken/>`` (last page of a list); ``None`` leaves it out.
    """
    tree: dict[str, Any] = {"JobsDetail": [jobs_detail_dict(r) for r in records]}
    ids = list(non_exist_ids)
    if ids:
        tree["NonExistJobIds"] = ids
    if next_token is not None:
        tree["NextToken"] = next_token
    return _render("Response", tree, fmt, keep_empty_lists=("JobsDetail",))


def render_error(err: CIError, *, request_id: str, resource: str | None = None, fmt: Fmt = "xml",
                 trace_id: str | None = None) -> bytes:
    """``<Error><Code/><Message/><Resource/><RequestId/><TraceId/></Error>`` (spec §7).

    All of Code, Message, Resource and RequestId are always present **and non-empty**: the SDK's
    ``digest_xml`` reads ``childNodes[0]`` of each and gives up otherwise.  ``resource``
    (e.g. the request path) wins over ``err.resource`` (the offending node); fallback ``/``.
    """
    tree = {
        "Code": err.code or "InternalError",
        "Message": err.message or err.code or "error",
        "Resource": resource or err.resource or "/",
        "RequestId": request_id or new_request_id(),
        "TraceId": trace_id or request_id or new_request_id(),
    }
    return _render("Error", tree, fmt)


def _callback_order(d: dict) -> dict:
    """The doc callback example's order: alphabetical, except ``Operation.JobLevel`` last."""
    out: dict[str, Any] = {}
    for k in sorted(d):
        v = d[k]
        if k == "Input" and isinstance(v, dict):
            v = {kk: v[kk] for kk in sorted(v)}
        elif k == "Operation" and isinstance(v, dict):
            v = {kk: v[kk] for kk in sorted(v, key=lambda x: (x == "JobLevel", x))}
        out[k] = v
    return out


def callback_dict(record: JobRecord) -> dict:
    return {"EventName": "TaskFinish", "JobsDetail": _callback_order(jobs_detail_dict(record))}


def render_callback(record: JobRecord, fmt: Fmt = "xml") -> bytes:
    """Job-finished callback body (spec §6).

    XML: ``<Response><EventName>TaskFinish</EventName><JobsDetail>…</JobsDetail></Response>``;
    JSON: ``{"EventName":"TaskFinish","JobsDetail":{…}}`` (no ``Response`` wrapper; our choice
    for the UNCONFIRMED JSON layout).  JobsDetail children follow the doc example's order.
    """
    tree = callback_dict(record)
    if (fmt or "xml").lower() == "json":
        return to_json(tree)
    return _render("Response", tree, fmt)


def render_template(template: TemplateRecord, *, request_id: str, fmt: Fmt = "xml") -> bytes:
    """Create/update template response: ``<Response><RequestId/><Template>…</Template></Response>``."""
    return _render("Response", {"RequestId": request_id, "Template": template_dict(template)}, fmt)


def render_template_list(templates: list[TemplateRecord], *, request_id: str, total_count: int,
                         page_number: int, page_size: int, fmt: Fmt = "xml") -> bytes:
    """Query templates response (§4.2); ``TemplateList`` repeated (absent when empty)."""
    tree = {"RequestId": request_id, "TotalCount": str(total_count), "PageNumber": str(page_number),
            "PageSize": str(page_size), "TemplateList": [template_dict(t) for t in templates]}
    return _render("Response", tree, fmt)


def render_template_deleted(template_id: str, *, request_id: str, fmt: Fmt = "xml") -> bytes:
    """Delete template response (§4.3): always a body (the SDK parses it)."""
    return _render("Response", {"RequestId": request_id, "TemplateId": template_id}, fmt)
