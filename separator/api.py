"""The Python API.

    from separator import Separator
    sep = Separator()                                  # the best installed model, on CPU or CUDA
    stems = sep.separate("song.mp3")                   # or bytes, a binary file, an array + samplerate=
    stems["vocals"], stems["background"], stems.samplerate   # float32 (channels, frames), the input's rate
    sep.separate_files(["a.mp3", "b.mp3"], "out/", codec="flac")   # files, as the command line names them

``separate(input, output_dir, …)`` (one file to files, ``output_dir/<name>/<role>.<ext>``) and
``run_request(body, storage_root, …)`` (a cloud-format request against local storage) are the
earlier one-call forms, kept as they were.  Every error a caller can cause is a
:class:`~separator.errors.CIError` with the protocol's code and a message that says what was
expected.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np

from .codecs import DEFAULT_CODEC, get_codec
from .core.base import LoadedModel
from .errors import CIError, invalid_argument
from .jobs.engine import ArrayInput, FileInput, separate_audio, separate_file
from .jobs.job import run_job
from .naming import SEPARATE_TEMPLATE, check_template, render
from .protocol import audio_mode, roles_for_mode
from .request import AudioConfig, JobRecord, new_request_id, parse_job_request, render_error, render_response
from .request.parse import check_audio_config
from .storage import LocalStorage

#: ``progress(done, total)``: seconds of audio separated so far, and in all
Progress = Callable[[float, float], None]
#: what :meth:`Separator.separate` takes (and a torch tensor, like a numpy array)
Audio = Union[str, os.PathLike, bytes, BinaryIO, np.ndarray]
MAX_CHANNELS = 16


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
                 channels: int | None = None, sample_format: str | None = None,
                 template: str = "{track}/{role}.{ext}", model: str = "") -> tuple[dict[str, Path], AudioConfig]:
    """``{role: output_dir/<template>}`` for the roles ``mode`` writes, and the AudioConfig,
    checked by the cloud's rules (``CIError`` InvalidArgument otherwise)."""
    roles = roles_for_mode(mode)
    cfg = AudioConfig(codec=codec, samplerate=samplerate, bitrate=bitrate, channels=channels,
                      sample_format=sample_format)
    try:
        ext = get_codec(codec).ext
    except KeyError:
        raise invalid_argument(f"codec {codec!r} is not one of aac, mp3, flac, amr, wav") from None
    check_audio_config(cfg, mode, "AudioConfig")
    check_template(template, roles)
    name = Path(input).stem
    return {role: Path(output_dir) / render(template, name=name, role=role, ext=ext, model=model,
                                            mode=mode, input_ext=Path(input).suffix[1:])
            for role in roles}, cfg


def media_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The inputs as files: a folder stands for the audio and video files directly in it
    (by extension, sorted; hidden files left out).  A path that does not exist is kept, for
    the engine to report."""
    from .batch.plan import MEDIA_EXTENSIONS

    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.suffix[1:].lower() in MEDIA_EXTENSIONS)
            if not found:
                raise invalid_argument(f"folder {p} holds no audio or video file (by extension)")
            out.extend(found)
        else:
            out.append(p)
    return out


def plan_files(inputs: Sequence[Path], output_dir: str | Path, *, mode: str, codec: str,
               model: str, template: str = SEPARATE_TEMPLATE, **audio_config: Any
               ) -> list[tuple[Path, dict[str, Path], AudioConfig]]:
    """Every input's outputs, checked before any work: no two inputs may write one file, and
    no output may be one of the inputs (``CIError`` InvalidArgument saying which)."""
    plans = [(p, *plan_outputs(p, output_dir, mode=mode, codec=codec, template=template, model=model,
                               **audio_config)) for p in inputs]
    real_inputs = {os.path.realpath(p): p for p in inputs}
    owner: dict[str, Path] = {}
    for path, targets, _cfg in plans:
        for role, target in targets.items():
            real = os.path.realpath(target)
            if real in real_inputs:
                raise invalid_argument(f"the {role} output of {path} would be {target}, which is an "
                                       "input; write the outputs to another folder")
            if real in owner and owner[real] != path:
                raise invalid_argument(f"{owner[real]} and {path} would both write {target}: give "
                                       "--filename a placeholder that tells them apart (e.g. "
                                       "{input_ext}), separate them in two runs, or use `separator "
                                       "batch`, which keeps their folders")
            owner[real] = path
    return plans


class Stems(Mapping[str, np.ndarray]):
    """A separation in memory: ``stems["vocals"]`` … float32 arrays of shape (channels,
    frames) at :attr:`samplerate`, the input's rate and channel count."""

    def __init__(self, roles: Mapping[str, np.ndarray], samplerate: int, *, model: str, device: str,
                 mode: str, seconds: float) -> None:
        self._roles = dict(roles)
        #: samples per second (the input's)
        self.samplerate = int(samplerate)
        #: the model that separated it, and the device it ran on
        self.model, self.device = model, device
        #: the AudioMode whose roles these are
        self.mode = mode
        #: wall-clock seconds the separation took
        self.seconds = seconds

    def __getitem__(self, role: str) -> np.ndarray:
        return self._roles[role]

    def __iter__(self) -> Iterator[str]:
        return iter(self._roles)

    def __len__(self) -> int:
        return len(self._roles)

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        first = next(iter(self._roles.values()))
        return first.shape[1] / self.samplerate

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {v.shape}" for k, v in self._roles.items())
        return f"Stems({shapes}, samplerate={self.samplerate}, model={self.model!r})"


def _as_frames(audio: Any, samplerate: int | None) -> tuple[np.ndarray, int]:
    """A user's array (numpy or torch, (channels, frames) or (frames,)) as float32 (frames, channels)."""
    if samplerate is None or isinstance(samplerate, bool) or not isinstance(samplerate, (int, np.integer)) \
            or samplerate <= 0:
        raise invalid_argument(f"an array needs samplerate= (samples per second, a positive integer), "
                               f"got {samplerate!r}", resource="samplerate")
    if type(audio).__module__.startswith("torch"):
        audio = audio.detach().to("cpu").float().numpy()
    arr = np.asarray(audio)
    if arr.dtype.kind != "f":
        raise invalid_argument(f"expected a float array of samples in [-1, 1] (float32 or float64), got "
                               f"dtype {arr.dtype}" + (" (divide int16 PCM by 32768)" if arr.dtype.kind in "iu" else ""),
                               resource="audio")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise invalid_argument(f"expected an array of shape (channels, frames) or (frames,), got shape "
                               f"{arr.shape}", resource="audio")
    if arr.shape[0] > MAX_CHANNELS:
        raise invalid_argument(f"expected (channels, frames), got shape {arr.shape}: {arr.shape[0]} channels? "
                               "If the frames come first, pass array.T", resource="audio")
    return np.ascontiguousarray(arr.T, dtype=np.float32), int(samplerate)


class Separator:
    """Separation with one model, loaded once, for many calls.

    ``model`` names it (``separator models list``); without one, each AudioMode uses the best
    installed model for it (the bundled one for the voice modes until a better one is
    installed).  ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (default: CUDA when available).
    ``precision``: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see ``separator separate --help``).
    Other keyword arguments are model options (``shifts``, ``overlap``, ``segment``, ``batch``
    …, as on the command line).  Calls stream through the same chunked core as the command
    line, so memory stays bounded on long inputs (apart from the result itself).
    """

    def __init__(self, model: str | None = None, *, device: str | None = None,
                 precision: str | None = None, mode: str = "AudioAndBackground",
                 model_dir: str | None = None, **model_options: Any) -> None:
        self.model = model
        self.device = device
        self.mode = audio_mode(mode, resource="mode")
        self.options = {k: v for k, v in dict(model_options, precision=precision, model_dir=model_dir).items()
                        if v is not None}
        self._loaded: dict[str, LoadedModel] = {}
        self.loaded(self.mode)

    def loaded(self, mode: str | None = None) -> LoadedModel:
        """The model ``mode`` uses, loaded (once per Separator)."""
        from .core import registry

        mode = audio_mode(mode or self.mode, resource="mode")
        name = self.model or registry.default_model(mode, self.options.get("model_dir"))
        if name not in self._loaded:
            self._loaded[name] = registry.load_model(name, device=self.device, **self.options)
        return self._loaded[name]

    def separate(self, audio: Audio, samplerate: int | None = None, *, mode: str | None = None,
                 layout: str | None = None, progress: Progress | None = None) -> Stems:
        """Separate ``audio``: a path, bytes or a binary file object of any media ffmpeg reads,
        or an array (numpy or torch; (channels, frames) or (frames,); float samples) with its
        ``samplerate``.  ``layout`` names an array's channels past two (ffmpeg's names, e.g.
        ``5.1``).  Returns the roles of ``mode`` (the Separator's by default) at the input's
        rate and channel count.  ``progress(done, total)`` counts seconds of audio."""
        mode = audio_mode(mode or self.mode, resource="mode")
        model = self.loaded(mode)
        with _input(audio, samplerate, layout) as inp:
            result = separate_audio(inp, mode=mode, model=model, progress=progress)
        return Stems({r: a.T for r, a in result.roles.items()}, result.samplerate, model=result.model,
                     device=result.device, mode=mode, seconds=result.seconds)

    def separate_files(self, inputs: str | os.PathLike | Iterable[str | os.PathLike],
                       output_dir: str | os.PathLike = "separated", *, mode: str | None = None,
                       codec: str = DEFAULT_CODEC, bitrate: int | None = None,
                       samplerate: int | None = None, channels: int | None = None,
                       sample_format: str | None = None, clip_mode: str = "clamp",
                       filename: str = SEPARATE_TEMPLATE, progress: Progress | None = None
                       ) -> list[dict[str, Path]]:
        """Separate files (a folder stands for the media files in it) into encoded files named
        as the command line names them (``filename``: ``{model}/{track}/{stem}.{ext}`` under
        ``output_dir``).  Every input's outputs are checked before the first is separated;
        returns ``{role: path}`` per input, in order."""
        mode = audio_mode(mode or self.mode, resource="mode")
        model = self.loaded(mode)
        inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        plans = plan_files(media_files(inputs), output_dir, mode=mode, codec=codec, model=model.spec.name,
                           template=filename, bitrate=bitrate, samplerate=samplerate, channels=channels,
                           sample_format=sample_format)
        return [dict(separate_file(path, targets, mode=mode, audio_config=cfg, model=model,
                                   progress=progress, clip_mode=clip_mode).outputs)
                for path, targets, cfg in plans]


class _input:
    """``audio`` as an engine input; bytes and file objects go through a temporary file that
    is removed afterwards (ffprobe and ffmpeg read files)."""

    def __init__(self, audio: Any, samplerate: int | None, layout: str | None) -> None:
        self.audio, self.samplerate, self.layout = audio, samplerate, layout
        self.tmp: str | None = None

    def __enter__(self) -> FileInput | ArrayInput:
        a = self.audio
        if isinstance(a, (str, os.PathLike)):
            self._no_rate("a file")
            return FileInput(a)
        if isinstance(a, (bytes, bytearray, memoryview)) or hasattr(a, "read"):
            self._no_rate("encoded media")
            fd, self.tmp = tempfile.mkstemp(prefix="separator-input-")
            with os.fdopen(fd, "wb") as fh:
                if hasattr(a, "read"):
                    shutil.copyfileobj(a, fh, 1 << 20)
                else:
                    fh.write(a)
            return FileInput(self.tmp)
        if isinstance(a, np.ndarray) or type(a).__module__.startswith("torch"):
            frames, rate = _as_frames(a, self.samplerate)
            return ArrayInput(frames, rate, self.layout)
        raise invalid_argument(f"cannot separate a {type(a).__name__}: give a path, bytes, a binary file "
                               "object, or an array of samples with samplerate=", resource="audio")

    def _no_rate(self, what: str) -> None:
        if self.samplerate is not None:
            raise invalid_argument(f"samplerate= applies to arrays; {what} says its own rate",
                                   resource="samplerate")

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            os.unlink(self.tmp)


def separate(input: str | Path, output_dir: str | Path = "separated", *,
             mode: str = "AudioAndBackground", codec: str = DEFAULT_CODEC,
             bitrate: int | None = None, samplerate: int | None = None, channels: int | None = None,
             model: str | None = None, device: str | None = None,
             progress: Progress | None = None, **model_options) -> dict[str, Path]:
    """Separate one file; return ``{role: path}`` for each role the mode produces.

    Files go to ``output_dir/<input name>/<role>.<ext>`` (roles: vocals, background, bass,
    drums); outputs of an earlier run there are replaced, the input itself never.  The
    AudioConfig rules are the cloud's (``CIError`` InvalidArgument otherwise).
    ``progress(done, total)`` is called with seconds of audio.  (:class:`Separator` keeps its
    model loaded across calls and names files after the model.)
    """
    targets, cfg = plan_outputs(input, output_dir, mode=mode, codec=codec, bitrate=bitrate,
                                samplerate=samplerate, channels=channels)
    result = separate_file(input, targets, mode=mode, audio_config=cfg, model=model, device=device,
                           progress=progress, model_options=model_options)
    return dict(result.outputs)


def run_request(body: bytes | str, storage_root: str | Path, *, bucket: str, region: str,
                model: str | None = None, device: str | None = None,
                progress: Progress | None = None,
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


__all__ = ["Separator", "Stems", "run_request", "separate"]
