"""Parse and validate VoiceSeparate job / template requests (spec §1, §4).

Pipeline::

    bytes/str --_load--> tree (dict of str | dict | list) --_build--> JobRequest --validate_job_request--> JobRequest

* XML is parsed with :mod:`defusedxml.ElementTree` (DTDs, entity declarations and external
  references are refused, so nothing is ever expanded or fetched); the ``<?xml …?>`` header
  the SDK sends (``xmltodict.unparse``) is accepted, and no Content-Type is needed.
* JSON uses the same node names: ``{"Request": {...}}`` or the inner object directly.  Numbers
  may be JSON numbers or strings.
* Bodies larger than :data:`MAX_BODY_BYTES` (1 MiB) or nested deeper than :data:`MAX_DEPTH`
  are refused with ``InvalidContent`` before (or while) parsing.
* Every rule violation is a :class:`~separator.errors.CIError` with the cloud's code
  (``MissingContent``, ``InvalidContent``, ``InvalidArgument``), a message that names the node
  (``Operation.Output.Bucket``…) and the allowed values, and ``resource`` = that node path.

Behaviour choices where the spec is UNCONFIRMED (listed again in the README):

* Leaf text is stripped of surrounding whitespace (``UserData`` is kept verbatim); an empty
  leaf is the same as an absent one.  Unknown nodes are ignored (like the cloud).
* Enumerated values (``Codec``, ``AudioMode``, ``CallBackFormat``, ``CallBackType``,
  ``MqRegion``, ``MqMode``) are matched case-insensitively and stored in canonical case;
  ``Tag`` must be exactly ``VoiceSeparate``.
* Mode → needed output nodes: ``IsAudio`` needs ``AuObject``; ``IsBackground`` needs ``Object``;
  ``AudioAndBackground`` needs both; ``MusicMode`` needs only the general rule (``Object`` or
  ``AuObject``) and writes whichever of the four nodes are named.  Nodes a mode does not
  produce are ignored.  Two produced outputs with the same key are refused.
* ``Codec`` absent → ``aac``; the Samplerate/Channels checks then apply to aac.
  ``amr`` without ``Samplerate`` → 8000 Hz (its only legal rate; see :func:`effective_audio_config`).
* In ``MusicMode`` ``Samplerate``/``Bitrate``/``Channels`` are ignored: they must still be
  integers (type check) but are not checked against the codec.
* When ``TemplateId`` is given the template's AudioMode/AudioConfig win (§1.4) and the inline
  ``VoiceSeparate`` is only type-checked; :func:`merge_template` validates the result.  Our
  ``Model`` extension node is kept from the inline params when the template has none.
* ``UserData``: printable ASCII only, at most 1024 characters.  Bucket ``name-APPID`` (≤ 50
  characters), keys ≤ 850 UTF-8 bytes.
"""
from __future__ import annotations

import json
import re
from typing import Any, Literal, Union
from urllib.parse import urlsplit

from ..codecs import (
    ALL_SAMPLERATES, BITRATE_RANGE_KBPS, CODECS, DEFAULT_CODEC, MUSIC_MODE_CODECS, SAMPLE_FORMATS,
    get_codec,
)
from ..errors import CIError, invalid_argument
from ..protocol import MODE_NEEDS, MODE_ROLES, ROLE_NODES, ROLES
from .xmltree import MAX_DEPTH, parse_tree
from .model import (
    AUDIO_MODES, CALLBACK_FORMATS, CALLBACK_TYPES, JOB_LEVELS, MQ_MODES, MQ_REGIONS, TAG,
    AudioConfig, CallBackMqConfig, JobRequest, Operation, OutputSpec, TemplateRequest,
    VoiceSeparateParams,
)

MAX_BODY_BYTES = 1 << 20
MAX_USERDATA = 1024
MAX_KEY_BYTES = 850
MAX_BUCKET_LEN = 50
MAX_TEMPLATE_NAME = 64

Fmt = Literal["xml", "json"]

BUCKET_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?-[0-9]+$")
REGION_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)+$")
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TEMPLATE_NAME_RE = re.compile(r"^[\u4e00-\u9fffA-Za-z0-9_*-]+$")
INT_RE = re.compile(r"^[0-9]{1,12}$")

#: (role, OutputSpec attribute, node), in result order
ROLE_FIELDS = tuple((role, {"AuObject": "au_object", "Object": "object", "BassObject": "bass_object",
                            "DrumObject": "drum_object"}[ROLE_NODES[role]], ROLE_NODES[role]) for role in ROLES)


def _show(value: object, limit: int = 80) -> str:
    """``repr`` of a user value for an error message, cut to ``limit`` characters."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


# --------------------------------------------------------------------------------------------
# Loading: bytes -> tree
# --------------------------------------------------------------------------------------------

def _detect(raw: bytes) -> Fmt:
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json" if head.startswith(b"{") else "xml"


def _load(body: bytes | str | None, fmt: Fmt | None, root: str) -> tuple[dict, Fmt]:
    """Parse ``body`` safely into a tree of the ``root`` element's content."""
    if body is None:
        raise CIError("MissingContent", "the request body is empty")
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if len(raw) > MAX_BODY_BYTES:
        raise CIError("InvalidContent", f"the request body is {len(raw)} bytes; at most {MAX_BODY_BYTES} are accepted")
    if not raw.strip(b"\xef\xbb\xbf \t\r\n"):
        raise CIError("MissingContent", "the request body is empty")
    if fmt is None:
        fmt = _detect(raw)
    fmt = fmt.lower()  # type: ignore[assignment]
    if fmt == "json":
        return _load_json(raw, root), "json"
    if fmt == "xml":
        return _load_xml(body if isinstance(body, str) else raw, root), "xml"
    raise ValueError(f"fmt must be 'xml' or 'json', not {_show(fmt)}")


def _load_xml(data: bytes | str, root: str) -> dict:
    return parse_tree(data, root, code="InvalidContent", root_code="InvalidArgument")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _load_json(raw: bytes, root: str) -> dict:
    try:
        text = raw.decode("utf-8-sig")
        doc = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise CIError("InvalidContent", "malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeError) as e:
        raise CIError("InvalidContent", f"malformed JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CIError("InvalidContent", "the JSON body must be an object")
    if isinstance(doc.get(root), dict) and "Tag" not in doc:
        doc = doc[root]
    _check_depth(doc, 1)
    return doc


def _check_depth(v: Any, depth: int) -> None:
    """Depth limit, and every string must be valid Unicode (no lone surrogates from ``\\ud800``)."""
    if depth > MAX_DEPTH:
        raise CIError("InvalidContent", f"JSON nested deeper than {MAX_DEPTH} levels")
    if isinstance(v, dict):
        for x in v.values():
            _check_depth(x, depth + 1)
    elif isinstance(v, list):
        for x in v:
            _check_depth(x, depth + 1)
    elif isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise CIError("InvalidContent", "malformed JSON: a string holds an unpaired surrogate escape") from None


# --------------------------------------------------------------------------------------------
# Tree access with node paths
# --------------------------------------------------------------------------------------------

class _Node:
    def __init__(self, data: dict, path: str):
        self.data = data
        self.path = path

    def _p(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def text(self, name: str, *, strip: bool = True) -> str | None:
        """A leaf's text; ``None`` when absent or empty."""
        p = self._p(name)
        v = self.data.get(name)
        if v is None:
            return None
        if isinstance(v, list):
            raise invalid_argument(f"{p} may be given only once", resource=p)
        if isinstance(v, bool) or isinstance(v, dict):
            if isinstance(v, dict) and not v:
                return None
            raise invalid_argument(f"{p} must be a text value", resource=p)
        if isinstance(v, (int, float)):
            v = str(v)
        if not isinstance(v, str):
            raise invalid_argument(f"{p} must be a text value", resource=p)
        if strip:
            v = v.strip()
        return v if v != "" else None

    def child(self, name: str) -> "_Node | None":
        """A container; ``None`` when absent or empty (``<Output/>``)."""
        p = self._p(name)
        v = self.data.get(name)
        if v is None or v == "" or (isinstance(v, str) and not v.strip()):
            return None
        if isinstance(v, list):
            raise invalid_argument(f"{p} may be given only once", resource=p)
        if not isinstance(v, dict):
            raise invalid_argument(f"{p} must be a container node (it has child nodes), not a value", resource=p)
        return _Node(v, p)

    def int(self, name: str, hint: str = "an integer") -> int | None:
        s = self.text(name)
        if s is None:
            return None
        if not INT_RE.match(s):
            p = self._p(name)
            raise invalid_argument(f"{p} must be {hint}, got {_show(s)}", resource=p)
        return int(s)


# --------------------------------------------------------------------------------------------
# Building typed models from the tree (type conversion only)
# --------------------------------------------------------------------------------------------

def _build_audio_config(n: _Node | None) -> AudioConfig | None:
    if n is None:
        return None
    return AudioConfig(
        codec=n.text("Codec"),
        samplerate=n.int("Samplerate", "an integer sample rate in Hz"),
        bitrate=n.int("Bitrate", f"an integer bitrate in kbps ({BITRATE_RANGE_KBPS[0]}..{BITRATE_RANGE_KBPS[1]})"),
        channels=n.int("Channels", "an integer channel count"),
        sample_format=n.text("SampleFormat"),
    )


def _build_params(n: _Node | None) -> VoiceSeparateParams | None:
    if n is None:
        return None
    return VoiceSeparateParams(audio_mode=n.text("AudioMode"),
                               audio_config=_build_audio_config(n.child("AudioConfig")),
                               model=n.text("Model"))


def _build_job_request(root: _Node) -> JobRequest:
    inp = root.child("Input")
    op = root.child("Operation")
    operation = None
    if op is not None:
        out = op.child("Output")
        output = None
        if out is not None:
            output = OutputSpec(region=out.text("Region"), bucket=out.text("Bucket"), object=out.text("Object"),
                                au_object=out.text("AuObject"), bass_object=out.text("BassObject"),
                                drum_object=out.text("DrumObject"))
        level = op.int("JobLevel", "0, 1 or 2")
        operation = Operation(template_id=op.text("TemplateId"),
                              voice_separate=_build_params(op.child("VoiceSeparate")),
                              output=output,
                              user_data=op.text("UserData", strip=False),
                              job_level=0 if level is None else level)
    mq = root.child("CallBackMqConfig")
    mq_cfg = None
    if mq is not None:
        mq_cfg = CallBackMqConfig(mq_region=mq.text("MqRegion"), mq_mode=mq.text("MqMode") or "Queue",
                                  mq_name=mq.text("MqName"))
    return JobRequest(
        tag=root.text("Tag") or "",
        input_object=inp.text("Object") if inp is not None else None,
        operation=operation,
        queue_id=root.text("QueueId"),
        callback=root.text("CallBack"),
        callback_format=root.text("CallBackFormat") or "XML",
        callback_type=root.text("CallBackType") or "Url",
        callback_mq_config=mq_cfg,
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def _allowed(values) -> str:
    return ", ".join(str(v) for v in values)


def check_object_key(key: str | None, path: str) -> None:
    """Object keys: non-empty, ≤ 850 UTF-8 bytes, no leading ``/``, no ``..`` segment, no control chars."""
    if key is None or key == "":
        raise invalid_argument(f"{path} is required and must not be empty", resource=path)
    if key.startswith("/"):
        raise invalid_argument(f"{path} must not start with '/': {_show(key)}", resource=path)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise invalid_argument(f"{path} must not contain control characters", resource=path)
    if ".." in key.replace("\\", "/").split("/"):
        raise invalid_argument(f"{path} must not contain a '..' path segment: {_show(key)}", resource=path)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise invalid_argument(f"{path} is longer than {MAX_KEY_BYTES} bytes", resource=path)


def check_bucket(bucket: str | None, path: str) -> None:
    if not bucket:
        raise invalid_argument(f"{path} is required", resource=path)
    if len(bucket) > MAX_BUCKET_LEN or not BUCKET_RE.match(bucket):
        raise invalid_argument(f"{path} must look like 'name-APPID' (name: lower-case letters, digits and '-'; "
                   f"APPID: digits; at most {MAX_BUCKET_LEN} characters), got {_show(bucket)}", resource=path)


def check_region(region: str | None, path: str) -> None:
    if not region:
        raise invalid_argument(f"{path} is required", resource=path)
    if len(region) > 64 or not REGION_RE.match(region):
        raise invalid_argument(f"{path} must be a region name such as 'ap-chongqing', got {_show(region)}", resource=path)


def check_audio_config(cfg: AudioConfig | None, mode: str | None, path: str) -> None:
    """The §1.6 matrix.  ``path`` is the AudioConfig node path."""
    cfg = cfg or AudioConfig()
    name = cfg.codec or DEFAULT_CODEC
    if name not in CODECS:
        raise invalid_argument(f"{path}.Codec {_show(cfg.codec)} is not supported; allowed: {_allowed(CODECS)}",
                   resource=f"{path}.Codec")
    codec = get_codec(name)
    if cfg.sample_format is not None and cfg.sample_format not in codec.sample_formats:
        allowed = (f"allowed for {name}: {_allowed(codec.sample_formats)}" if codec.sample_formats
                   else f"it applies to wav ({_allowed(SAMPLE_FORMATS)}) and flac (s16, s24) only")
        raise invalid_argument(f"{path}.SampleFormat {_show(cfg.sample_format)} is not supported; {allowed}",
                               resource=f"{path}.SampleFormat")
    if mode == "MusicMode":
        if name not in MUSIC_MODE_CODECS:
            raise invalid_argument(f"{path}.Codec {_show(name)} is not allowed with AudioMode MusicMode; allowed: "
                       f"{_allowed(MUSIC_MODE_CODECS)}", resource=f"{path}.Codec")
        return  # Samplerate / Bitrate / Channels are ignored in MusicMode
    if cfg.samplerate is not None:
        if cfg.samplerate not in ALL_SAMPLERATES:
            raise invalid_argument(f"{path}.Samplerate {cfg.samplerate} is not supported; allowed: {_allowed(ALL_SAMPLERATES)}",
                       resource=f"{path}.Samplerate")
        if cfg.samplerate not in codec.samplerates:
            raise invalid_argument(f"{path}.Samplerate {cfg.samplerate} is not allowed for codec {name}; allowed: "
                       f"{_allowed(codec.samplerates)}", resource=f"{path}.Samplerate")
    if cfg.bitrate is not None:
        lo, hi = BITRATE_RANGE_KBPS
        if not lo <= cfg.bitrate <= hi:
            raise invalid_argument(f"{path}.Bitrate {cfg.bitrate} is out of range; allowed: an integer in [{lo}, {hi}] kbps",
                       resource=f"{path}.Bitrate")
    if cfg.channels is not None and cfg.channels not in codec.channels:
        raise invalid_argument(f"{path}.Channels {cfg.channels} is not allowed for codec {name}; allowed: "
                   f"{_allowed(codec.channels)}", resource=f"{path}.Channels")


def check_params(params: VoiceSeparateParams | None, path: str) -> None:
    """AudioMode (required), Model (our extension) and AudioConfig.  ``path`` "" = top level (templates)."""
    def at(n: str) -> str:
        return f"{path}.{n}" if path else n
    if params is None:
        raise invalid_argument(f"{path} is required", resource=path)
    if not params.audio_mode:
        raise invalid_argument(f"{at('AudioMode')} is required; allowed: {_allowed(AUDIO_MODES)}", resource=at("AudioMode"))
    if params.audio_mode not in AUDIO_MODES:
        raise invalid_argument(f"{at('AudioMode')} {_show(params.audio_mode)} is not supported; allowed: {_allowed(AUDIO_MODES)}",
                   resource=at("AudioMode"))
    _check_model(params.model, at("Model"))
    check_audio_config(params.audio_config, params.audio_mode, at("AudioConfig"))


def _check_model(model: str | None, path: str) -> None:
    if model is not None and not MODEL_RE.match(model):
        raise invalid_argument(f"{path} must be a model name (letters, digits, '_', '.', '-'; at most 64), got {_show(model)}",
                   resource=path)


def check_outputs(output: OutputSpec | None, mode: str | None, path: str = "Operation.Output") -> None:
    """Output nodes: Region/Bucket, key shapes, Object-or-AuObject, and what ``mode`` needs."""
    if output is None:
        raise invalid_argument(f"{path} is required", resource=path)
    check_region(output.region, f"{path}.Region")
    check_bucket(output.bucket, f"{path}.Bucket")
    if not output.object and not output.au_object:
        raise invalid_argument(f"{path}.Object and {path}.AuObject must not both be empty", resource=f"{path}.Object")
    for _role, attr, node in ROLE_FIELDS:
        key = getattr(output, attr)
        if key is not None:
            check_object_key(key, f"{path}.{node}")
    if mode is None:
        return
    for node in MODE_NEEDS.get(mode, ()):
        attr = next(a for _r, a, n in ROLE_FIELDS if n == node)
        if not getattr(output, attr):
            raise invalid_argument(f"{path}.{node} is required when AudioMode is {mode}", resource=f"{path}.{node}")
    seen: dict[str, str] = {}
    for role, attr, node in ROLE_FIELDS:
        key = getattr(output, attr)
        if role in MODE_ROLES[mode] and key:
            if key in seen:
                raise invalid_argument(f"{path}.{node} and {path}.{seen[key]} name the same object {_show(key)}",
                           resource=f"{path}.{node}")
            seen[key] = node


def check_tag(tag: str | None) -> None:
    if tag != TAG:
        raise invalid_argument(f"Tag must be {_show(TAG)}, got {_show(tag)}" if tag else "Tag is required (VoiceSeparate)",
                   resource="Tag")


def validate_job_request(req: JobRequest) -> JobRequest:
    """Check every §1 rule; raise :class:`CIError` on the first violation, else return ``req``."""
    check_tag(req.tag)
    if not req.input_object:
        raise invalid_argument("Input.Object is required", resource="Input.Object")
    check_object_key(req.input_object, "Input.Object")
    op = req.operation
    if op is None:
        raise invalid_argument("Operation is required", resource="Operation")
    if op.template_id is None and op.voice_separate is None:
        raise invalid_argument("one of Operation.TemplateId or Operation.VoiceSeparate is required",
                   resource="Operation.TemplateId")
    if op.template_id is not None and not ID_RE.match(op.template_id):
        raise invalid_argument(f"Operation.TemplateId is not a valid template id: {_show(op.template_id)}",
                   resource="Operation.TemplateId")
    mode = None
    if op.template_id is None:
        check_params(op.voice_separate, "Operation.VoiceSeparate")
        mode = op.voice_separate.audio_mode  # type: ignore[union-attr]
    elif op.voice_separate is not None:
        _check_model(op.voice_separate.model, "Operation.VoiceSeparate.Model")
    check_outputs(op.output, mode)
    if op.user_data is not None:
        if len(op.user_data) > MAX_USERDATA:
            raise invalid_argument(f"Operation.UserData is longer than {MAX_USERDATA} characters", resource="Operation.UserData")
        if any(not (0x20 <= ord(c) <= 0x7E) for c in op.user_data):
            raise invalid_argument("Operation.UserData must be printable ASCII", resource="Operation.UserData")
    if op.job_level not in JOB_LEVELS:
        raise invalid_argument(f"Operation.JobLevel {op.job_level} is not supported; allowed: {_allowed(JOB_LEVELS)}",
                   resource="Operation.JobLevel")
    if req.queue_id is not None and not ID_RE.match(req.queue_id):
        raise invalid_argument(f"QueueId is not a valid queue id: {_show(req.queue_id)}", resource="QueueId")
    if req.callback_format not in CALLBACK_FORMATS:
        raise invalid_argument(f"CallBackFormat {_show(req.callback_format)} is not supported; allowed: {_allowed(CALLBACK_FORMATS)}",
                   resource="CallBackFormat")
    if req.callback_type not in CALLBACK_TYPES:
        raise invalid_argument(f"CallBackType {_show(req.callback_type)} is not supported; allowed: {_allowed(CALLBACK_TYPES)}",
                   resource="CallBackType")
    if req.callback_type == "TDMQ":
        mq = req.callback_mq_config
        if mq is None:
            raise invalid_argument("CallBackMqConfig is required when CallBackType is TDMQ", resource="CallBackMqConfig")
        if mq.mq_region not in MQ_REGIONS:
            raise invalid_argument(f"CallBackMqConfig.MqRegion {_show(mq.mq_region)} is not supported; allowed: {_allowed(MQ_REGIONS)}",
                       resource="CallBackMqConfig.MqRegion")
        if mq.mq_mode not in MQ_MODES:
            raise invalid_argument(f"CallBackMqConfig.MqMode {_show(mq.mq_mode)} is not supported; allowed: {_allowed(MQ_MODES)}",
                       resource="CallBackMqConfig.MqMode")
        if not mq.mq_name:
            raise invalid_argument("CallBackMqConfig.MqName is required when CallBackType is TDMQ",
                       resource="CallBackMqConfig.MqName")
    elif req.callback is not None and req.callback != "no":
        _check_url(req.callback, "CallBack")
    return req


def is_http_url(url: str) -> bool:
    """Whether ``url`` is an absolute http(s) URL with a host, without spaces or control
    characters: the only kind a callback may be sent to (``file:``, ``ftp:``, … would make the
    server open a local path or dial another protocol)."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(
            ord(c) < 0x21 or ord(c) == 0x7F for c in url)
    except ValueError:
        return False


def _check_url(url: str, path: str) -> None:
    if not is_http_url(url):
        raise invalid_argument(f"{path} must be an http(s) URL or 'no', got {_show(url)}", resource=path)


def validate_template_request(req: TemplateRequest) -> TemplateRequest:
    check_tag(req.tag)
    if not req.name:
        raise invalid_argument("Name is required", resource="Name")
    if len(req.name) > MAX_TEMPLATE_NAME or not TEMPLATE_NAME_RE.match(req.name):
        raise invalid_argument(f"Name must be at most {MAX_TEMPLATE_NAME} Chinese characters, letters, digits, '_', '-' or '*', "
                   f"got {_show(req.name)}", resource="Name")
    check_params(req.params, "")
    return req


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

def parse_job_request(body: bytes | str, fmt: Fmt | None = None) -> tuple[JobRequest, Fmt]:
    """Parse and validate a ``POST /jobs`` body.  Returns ``(request, fmt)`` (``fmt`` as detected).

    ``fmt=None`` autodetects: JSON when the body starts with ``{`` (after whitespace / BOM).
    Raises :class:`CIError` (``MissingContent``, ``InvalidContent`` or ``InvalidArgument``).
    """
    tree, fmt = _load(body, fmt, "Request")
    return validate_job_request(_build_job_request(_Node(tree, ""))), fmt


def parse_template_request(body: bytes | str, fmt: Fmt | None = None) -> tuple[TemplateRequest, Fmt]:
    """Parse and validate a ``POST /template`` / ``PUT /template/<id>`` body (spec §4.1).

    ``AudioConfig`` may be omitted (all its children are optional anyway).
    """
    tree, fmt = _load(body, fmt, "Request")
    root = _Node(tree, "")
    req = TemplateRequest(tag=root.text("Tag") or "", name=root.text("Name"), audio_mode=root.text("AudioMode"),
                          audio_config=_build_audio_config(root.child("AudioConfig")))
    return validate_template_request(req), fmt


def resolve_outputs(req_or_output: Union[JobRequest, Operation, OutputSpec], audio_mode: str | None = None,
                    codec: str | None = None) -> dict[str, str]:
    """Role → output key with ``${ext}`` substituted, for the roles ``audio_mode`` produces.

    Roles: ``vocals`` ← AuObject, ``background`` ← Object, ``bass`` ← BassObject,
    ``drums`` ← DrumObject; ordered vocals, background, bass, drums.  ``IsAudio`` → vocals;
    ``IsBackground`` → background; ``AudioAndBackground`` → both; ``MusicMode`` → whichever of the
    four are named.  ``audio_mode``/``codec`` default to the request's own params (codec: aac).
    """
    params = None
    if isinstance(req_or_output, JobRequest):
        output, params = req_or_output.output, req_or_output.params
    elif isinstance(req_or_output, Operation):
        output, params = req_or_output.output, req_or_output.voice_separate
    else:
        output = req_or_output
    if output is None:
        raise invalid_argument("Operation.Output is required", resource="Operation.Output")
    mode = audio_mode or (params.audio_mode if params else None)
    if mode not in MODE_ROLES:
        raise invalid_argument(f"AudioMode {_show(mode)} is not supported; allowed: {_allowed(AUDIO_MODES)}",
                   resource="Operation.VoiceSeparate.AudioMode")
    if codec is None and params is not None and params.audio_config is not None:
        codec = params.audio_config.codec
    ext = get_codec(codec or DEFAULT_CODEC).ext
    out: dict[str, str] = {}
    for role, attr, _node in ROLE_FIELDS:
        key = getattr(output, attr)
        if role in MODE_ROLES[mode] and key:
            out[role] = key.replace("${ext}", ext)
    return out


def merge_template(request: JobRequest, template_params: Union[VoiceSeparateParams, TemplateRequest]) -> JobRequest:
    """Apply a template (spec §1.4: the template's AudioMode/AudioConfig win over inline ones).

    The inline ``Model`` (our extension) is kept when the template pins none.  The merged
    request is validated (mode/outputs/codec matrix) and returned; the original is unchanged.
    """
    tp = template_params.params if isinstance(template_params, TemplateRequest) else template_params
    inline = request.params
    merged = VoiceSeparateParams(audio_mode=tp.audio_mode, audio_config=tp.audio_config,
                                 model=tp.model or (inline.model if inline else None))
    op = request.operation or Operation()
    new = request.model_copy(update={"operation": op.model_copy(update={"voice_separate": merged})})
    check_params(merged, "Operation.VoiceSeparate")
    check_outputs(new.output, merged.audio_mode)
    return new


def effective_audio_config(params: VoiceSeparateParams | AudioConfig | None, audio_mode: str | None = None) -> AudioConfig:
    """The AudioConfig with the protocol defaults filled in.

    Codec → ``aac``; Samplerate → 44100 (``amr``: 8000, its only legal rate — our choice for the
    UNCONFIRMED amr-vs-44100 case); Channels → the single allowed value for codecs that have one
    (amr: 1), else ``None`` = the source's; Bitrate → ``None`` = the source's / encoder default.
    In MusicMode Samplerate/Bitrate/Channels are ignored (defaults used).
    """
    if isinstance(params, VoiceSeparateParams):
        audio_mode = audio_mode or params.audio_mode
        cfg = params.audio_config or AudioConfig()
    else:
        cfg = params or AudioConfig()
    codec = get_codec(cfg.codec or DEFAULT_CODEC)
    if audio_mode == "MusicMode":
        cfg = AudioConfig(codec=codec.name, sample_format=cfg.sample_format)
    channels = cfg.channels
    if channels is None and len(codec.channels) == 1:
        channels = codec.channels[0]
    return AudioConfig(codec=codec.name, samplerate=cfg.samplerate or codec.default_samplerate,
                       bitrate=cfg.bitrate, channels=channels, sample_format=cfg.sample_format)
