"""The Python API.

    import separator
    outputs = separator.separate("song.mp3", "out/", mode="AudioAndBackground", codec="mp3")
    print(outputs["vocals"], outputs["background"])

and, for cloud-format requests against a local storage root::

    record, body, ok = separator.run_request(xml_bytes, "storage/", bucket="test-1234567890",
                                             region="ap-guangzhou")
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .codecs import DEFAULT_CODEC, get_codec
from .errors import CIError
from .jobs.engine import separate_file
from .jobs.job import run_job
from .protocol import roles_for_mode
from .request import AudioConfig, JobRecord, new_request_id, parse_job_request, render_error, render_response
from .request.parse import check_audio_config
from .storage import LocalStorage


def resolve_model(mode: str, model: str | None = None, device: str | None = None,
                  model_dir: str | None = None) -> tuple[str, str]:
    """The model and device a separation will use: ``model`` or the best installed one for
    ``mode``; ``device`` or CUDA when available, else the CPU (``CIError`` when unknown)."""
    from .core import registry

    name = model or registry.default_model(mode, model_dir)
    registry.get_spec(name, model_dir)
    return name, registry.resolve_device(device)


def plan_outputs(input: str | Path, output_dir: str | Path, *, mode: str = "AudioAndBackground",
                 codec: str = DEFAULT_CODEC, bitrate: int | None = None, samplerate: int | None = None,
                 channels: int | None = None, sample_format: str | None = None
                 ) -> tuple[dict[str, Path], AudioConfig]:
    """``{role: output_dir/<input name>/<role>.<ext>}`` and the AudioConfig, checked by the
    cloud's rules (``CIError`` InvalidArgument otherwise)."""
    roles = roles_for_mode(mode)
    cfg = AudioConfig(codec=codec, samplerate=samplerate, bitrate=bitrate, channels=channels,
                      sample_format=sample_format)
    try:
        ext = get_codec(codec).ext
    except KeyError:
        raise CIError("InvalidArgument", f"codec {codec!r} is not one of aac, mp3, flac, amr, wav") from None
    check_audio_config(cfg, mode, "AudioConfig")
    folder = Path(output_dir) / Path(input).stem
    return {role: folder / f"{role}.{ext}" for role in roles}, cfg


def separate(input: str | Path, output_dir: str | Path = "separated", *,
             mode: str = "AudioAndBackground", codec: str = DEFAULT_CODEC,
             bitrate: int | None = None, samplerate: int | None = None, channels: int | None = None,
             model: str | None = None, device: str | None = None,
             progress: Callable[[float, float], None] | None = None, **model_options) -> dict[str, Path]:
    """Separate one file; return ``{role: path}`` for each role the mode produces.

    Files go to ``output_dir/<input name>/<role>.<ext>`` (roles: vocals, background, bass,
    drums); outputs of an earlier run there are replaced, the input itself never.  The
    AudioConfig rules are the cloud's (``CIError`` InvalidArgument otherwise).
    ``progress(done, total)`` is called with seconds of audio.
    """
    targets, cfg = plan_outputs(input, output_dir, mode=mode, codec=codec, bitrate=bitrate,
                                samplerate=samplerate, channels=channels)
    result = separate_file(input, targets, mode=mode, audio_config=cfg, model=model, device=device,
                           progress=progress, model_options=model_options)
    return dict(result.outputs)


def run_request(body: bytes | str, storage_root: str | Path, *, bucket: str, region: str,
                model: str | None = None, device: str | None = None,
                progress: Callable[[float, float], None] | None = None,
                **model_options) -> tuple[JobRecord | None, bytes, bool]:
    """Run a VoiceSeparate request (XML or JSON) sent to ``bucket`` in ``region``.

    Returns ``(record, rendered response, ok)``: a refused request gives no record and the
    protocol's ``<Error>`` body; a job that ran gives its ``<Response><JobsDetail>``, with
    ``ok`` false when it failed.
    """
    fmt = "json" if isinstance(body, (bytes, str)) and body.strip()[:1] in ("{", b"{") else "xml"
    try:
        req, fmt = parse_job_request(body)
        storage = LocalStorage(storage_root)
        storage.bucket_path(bucket)  # validates the bucket name
    except CIError as err:
        return None, render_error(err, request_id=new_request_id(), resource=err.resource or "/jobs",
                                  fmt=fmt), False
    record = run_job(req, storage, bucket=bucket, region=region, model=model, device=device,
                     progress=progress, model_options=model_options or None)
    return record, render_response([record], fmt), record.state == "Success"
