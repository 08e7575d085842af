"""Typed models of a VoiceSeparate job / template request (spec §1, §4).

The models are frozen pydantic v2 models.  Python attribute names are snake_case; each
field carries the protocol's node name as its alias, so::

    JobRequest.model_validate(wire_dict)          # wire names in (already-typed values)
    req.to_wire()                                 # wire names out, None nodes left out

The *semantic* validation (codec matrix, mode/output rules, bucket and key shapes, …) lives in
:mod:`separator.request.parse` (``validate_job_request``) so that every way in (XML, JSON,
Python API) raises the same :class:`~separator.errors.CIError`.  The models themselves only
check types and normalise case (``Codec`` is stored in lower case, enumerations in the
protocol's canonical spelling).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..protocol import AUDIO_MODES

CALLBACK_FORMATS = ("JSON", "XML")
CALLBACK_TYPES = ("Url", "TDMQ")
MQ_REGIONS = ("sh", "bj", "gz", "cd", "hk")
MQ_MODES = ("Queue", "Topic")
JOB_LEVELS = (0, 1, 2)
TAG = "VoiceSeparate"



def canonical(value: str | None, allowed: tuple[str, ...]) -> str | None:
    """Return the canonical spelling of ``value`` among ``allowed`` (case-insensitive), else ``value``."""
    if value is None:
        return None
    low = value.strip().lower()
    for a in allowed:
        if a.lower() == low:
            return a
    return value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    def to_wire(self) -> dict[str, Any]:
        """The request as a wire-named dict (nodes that are ``None`` are left out)."""
        return self.model_dump(by_alias=True, exclude_none=True)


class AudioConfig(_Model):
    """``AudioConfig``: every child optional (defaults: aac, 44100 Hz — 8000 for amr —, source bitrate/channels).

    ``sample_format`` is **our extension** (``AudioConfig.SampleFormat``: ``s16``, ``s24`` or
    ``f32``, for wav; ``s16`` or ``s24`` for flac); absent, a lossless output keeps the source's
    format where the codec can hold it, else 16-bit.  The cloud's own fields keep their meaning.
    """

    codec: str | None = Field(None, alias="Codec")
    samplerate: int | None = Field(None, alias="Samplerate")
    bitrate: int | None = Field(None, alias="Bitrate")
    channels: int | None = Field(None, alias="Channels")
    sample_format: str | None = Field(None, alias="SampleFormat")

    @field_validator("codec", "sample_format")
    @classmethod
    def _lower(cls, v: str | None) -> str | None:
        return v.strip().lower() if isinstance(v, str) else v


class VoiceSeparateParams(_Model):
    """``Operation.VoiceSeparate`` (and the body of a template).

    ``model`` is **our extension** (``Operation.VoiceSeparate.Model``): it pins a separation
    model by name.  Tencent's service would ignore an unknown node; we honour it.
    """

    audio_mode: str | None = Field(None, alias="AudioMode")
    audio_config: AudioConfig | None = Field(None, alias="AudioConfig")
    model: str | None = Field(None, alias="Model")

    @field_validator("audio_mode")
    @classmethod
    def _mode(cls, v: str | None) -> str | None:
        return canonical(v, AUDIO_MODES)


class OutputSpec(_Model):
    """``Operation.Output``: ``Object`` = background, ``AuObject`` = vocals, ``BassObject``, ``DrumObject``."""

    region: str | None = Field(None, alias="Region")
    bucket: str | None = Field(None, alias="Bucket")
    object: str | None = Field(None, alias="Object")
    au_object: str | None = Field(None, alias="AuObject")
    bass_object: str | None = Field(None, alias="BassObject")
    drum_object: str | None = Field(None, alias="DrumObject")


class Operation(_Model):
    template_id: str | None = Field(None, alias="TemplateId")
    voice_separate: VoiceSeparateParams | None = Field(None, alias="VoiceSeparate")
    output: OutputSpec | None = Field(None, alias="Output")
    user_data: str | None = Field(None, alias="UserData")
    job_level: int = Field(0, alias="JobLevel")


class CallBackMqConfig(_Model):
    mq_region: str | None = Field(None, alias="MqRegion")
    mq_mode: str = Field("Queue", alias="MqMode")
    mq_name: str | None = Field(None, alias="MqName")

    @field_validator("mq_region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        return canonical(v, MQ_REGIONS)

    @field_validator("mq_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        return canonical(v, MQ_MODES) or "Queue"


class JobRequest(_Model):
    """A ``POST /jobs`` body (``<Request>``), spec §1.2."""

    tag: str = Field(TAG, alias="Tag")
    input_object: str | None = Field(None, alias="InputObject")  # wire: Input.Object (see to_wire)
    operation: Operation | None = Field(None, alias="Operation")
    queue_id: str | None = Field(None, alias="QueueId")
    callback: str | None = Field(None, alias="CallBack")
    callback_format: str = Field("XML", alias="CallBackFormat")
    callback_type: str = Field("Url", alias="CallBackType")
    callback_mq_config: CallBackMqConfig | None = Field(None, alias="CallBackMqConfig")

    @field_validator("callback_format")
    @classmethod
    def _fmt(cls, v: str) -> str:
        return canonical(v, CALLBACK_FORMATS) or "XML"

    @field_validator("callback_type")
    @classmethod
    def _type(cls, v: str) -> str:
        return canonical(v, CALLBACK_TYPES) or "Url"

    def to_wire(self) -> dict[str, Any]:
        """The ``<Request>`` content in protocol order with protocol names (``Input.Object`` nested)."""
        d: dict[str, Any] = {"Tag": self.tag}
        if self.input_object is not None:
            d["Input"] = {"Object": self.input_object}
        if self.operation is not None:
            d["Operation"] = self.operation.to_wire()
        for key, val in (("QueueId", self.queue_id), ("CallBack", self.callback),
                         ("CallBackFormat", self.callback_format), ("CallBackType", self.callback_type)):
            if val is not None:
                d[key] = val
        if self.callback_mq_config is not None:
            d["CallBackMqConfig"] = self.callback_mq_config.to_wire()
        return d

    # Convenience accessors -------------------------------------------------
    @property
    def output(self) -> OutputSpec | None:
        return self.operation.output if self.operation else None

    @property
    def params(self) -> VoiceSeparateParams | None:
        return self.operation.voice_separate if self.operation else None


class TemplateRequest(_Model):
    """A ``POST /template`` / ``PUT /template/<id>`` body (spec §4.1)."""

    tag: str = Field(TAG, alias="Tag")
    name: str | None = Field(None, alias="Name")
    audio_mode: str | None = Field(None, alias="AudioMode")
    audio_config: AudioConfig | None = Field(None, alias="AudioConfig")

    @field_validator("audio_mode")
    @classmethod
    def _mode(cls, v: str | None) -> str | None:
        return canonical(v, AUDIO_MODES)

    @property
    def params(self) -> VoiceSeparateParams:
        """The template as the ``VoiceSeparate`` parameters a job would use."""
        return VoiceSeparateParams(audio_mode=self.audio_mode, audio_config=self.audio_config)
