"""What a batch does: find the inputs (folder, glob, single file or manifest) and turn each into a
:class:`BatchItem` with its settings and output paths.

Sources
=======

* **A folder**: walked recursively; hidden files and folders (``.name``), the OUTPUT folder
  (when it lies inside SOURCE) and every output an earlier run recorded are left out.  Files whose extension is in
  :data:`MEDIA_EXTENSIONS` are separated; the others are listed in the summary as ``ignored``
  (``--all-files`` sends every file to ffprobe instead, which then rejects what it cannot read).
  ``{rel_dir}`` is the file's folder relative to SOURCE.
* **A glob** (SOURCE holds ``*``, ``?`` or ``[`` and is not an existing path): ``**`` matches
  folders recursively; ``{rel_dir}`` is relative to the pattern's leading wildcard-free folder.
* **A single media file**: a batch of one.
* **A manifest** (``.csv``, ``.jsonl`` or ``.ndjson``), one input per row.  CSV has a header row;
  JSONL has one JSON object per line (blank lines and lines starting with ``#`` are skipped).
  Columns / keys, all optional but ``input``:

  ``input``       the input path; relative paths are relative to the manifest's folder
  ``output``      this row's output name template (see :mod:`separator.batch.naming`)
  ``mode``, ``codec``, ``samplerate``, ``bitrate``, ``channels``, ``model``
                  per-row settings; each one given overrides the command line's
  ``request``     a cloud-format VoiceSeparate request document (the ``POST /jobs`` body):
                  inline XML or JSON text, a JSON object (JSONL), or the path of a ``.xml`` /
                  ``.json`` file.  Its ``Operation.VoiceSeparate`` gives mode, AudioConfig and
                  Model, and its ``Operation.Output`` keys (``Object``, ``AuObject``,
                  ``BassObject``, ``DrumObject``, ``${ext}`` substituted) name the outputs,
                  written under OUTPUT; ``Input.Object`` is the input (relative to the
                  manifest's folder) unless ``input`` is given.  The command line's settings
                  do not apply to such a row.  ``Bucket``/``Region`` must be valid (the request
                  is validated as the service would) but are otherwise unused;
                  ``TemplateId`` is not supported (no template store in a batch).

  A JSONL line that is itself a request document (it has a ``Tag`` or ``Request`` key) is
  the same as ``{"request": <that line>}``.  ``{rel_dir}`` is the input's folder relative to the
  manifest's folder (``''`` when the input lies elsewhere).

A row or file whose settings are invalid, or whose outputs collide with another input's, is
reported as failed (``InvalidArgument`` / ``OutputConflict``) without running.
"""
from __future__ import annotations

import csv
import glob as globmod
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..codecs import DEFAULT_CODEC, get_codec
from ..errors import CIError
from ..request.model import AudioConfig
from ..naming import DEFAULT_TEMPLATE, check_template, render

#: Extensions treated as media when SOURCE is a folder (lower case, without the dot).
MEDIA_EXTENSIONS = frozenset("""
    mp3 mp2 wav wave w64 flac ogg oga opus spx m4a m4b aac adts alac wma aif aiff aifc amr awb
    ape wv mka ac3 eac3 dts mpc caf au snd tta ra rm voc
    mp4 m4v mov mkv webm avi wmv asf flv f4v mpg mpeg mpe vob ts mts m2ts 3gp 3g2 ogv mxf dv
""".split())

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
MANIFEST_KEYS = ("input", "output", "mode", "codec", "samplerate", "bitrate", "channels", "model",
                 "request")
GLOB_CHARS = "*?["


@dataclass
class Defaults:
    """The command line's settings (each manifest row may override them)."""
    mode: str = "AudioAndBackground"
    codec: str | None = None
    samplerate: int | None = None
    bitrate: int | None = None
    channels: int | None = None
    model: str | None = None
    template: str = DEFAULT_TEMPLATE
    model_options: dict = field(default_factory=dict)


@dataclass
class BatchItem:
    """One input of a batch: everything a worker needs (plain data, picklable)."""
    index: int
    input: str                          # absolute path (or the manifest's text for a bad row)
    rel: str                            # how the input is shown (relative to SOURCE)
    mode: str = "AudioAndBackground"
    audio_config: dict = field(default_factory=dict)
    model: str = ""
    model_options: dict = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)   # role -> absolute output path
    key: str = ""                       # hash of the settings and output names (resume check)
    size: int = -1
    mtime_ns: int = -1
    error: tuple[str, str] | None = None  # found while planning: (code, message)


@dataclass
class Plan:
    items: list[BatchItem]
    ignored: list[str]                  # files left out by extension (shown relative to SOURCE)
    source: str
    kind: str                           # folder | glob | file | manifest


# ------------------------------------------------------------------------------------------------
# discovery
# ------------------------------------------------------------------------------------------------

def _hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(root: Path, output_root: Path, all_files: bool,
          exclude: frozenset[str] = frozenset()) -> tuple[list[Path], list[Path]]:
    found, ignored = [], []
    out_real = os.path.realpath(output_root)
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _hidden(d)
                         and os.path.realpath(os.path.join(dirpath, d)) != out_real)
        for name in sorted(files):
            if _hidden(name):
                continue
            p = Path(dirpath) / name
            if exclude and os.path.realpath(p) in exclude:
                continue
            ext = p.suffix[1:].lower()
            (found if all_files or ext in MEDIA_EXTENSIONS else ignored).append(p)
    return found, ignored


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts:
        if any(c in part for c in GLOB_CHARS):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _rel_dir(path: Path, base: Path) -> str:
    try:
        rel = path.resolve().parent.relative_to(base.resolve())
    except ValueError:
        return ""
    s = rel.as_posix()
    return "" if s == "." else s


def _rel(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def is_manifest(source: str | os.PathLike) -> bool:
    p = Path(source)
    return p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES


# ------------------------------------------------------------------------------------------------
# manifests
# ------------------------------------------------------------------------------------------------

def _read_manifest(path: Path) -> list[tuple[int, dict]]:
    """``[(line number, row dict)]``; raises CIError for an unreadable manifest."""
    text = path.read_text(encoding="utf-8-sig")
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        header = [f.strip().lower() for f in reader.fieldnames or ()]
        if "input" not in header and "request" not in header:
            raise CIError("InvalidArgument", f"manifest {path}: the CSV header must name an 'input' "
                          f"(or 'request') column; columns: {', '.join(MANIFEST_KEYS)}")
        for row in reader:
            clean = {(k or "").strip().lower(): (v.strip() if isinstance(v, str) else v)
                     for k, v in row.items() if k is not None}
            clean = {k: v for k, v in clean.items() if v not in (None, "")}
            if clean:
                rows.append((reader.line_num, clean))
        return rows
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            obj = json.loads(s)
        except ValueError as e:
            rows.append((n, {"_error": f"line {n} is not JSON: {e}"}))
            continue
        if not isinstance(obj, dict):
            rows.append((n, {"_error": f"line {n} is not a JSON object"}))
            continue
        if "Request" in obj or "Tag" in obj:
            obj = {"request": obj}
        rows.append((n, {str(k).lower(): v for k, v in obj.items() if v not in (None, "")}))
    return rows


def _request_body(value, base: Path) -> bytes:
    if isinstance(value, dict):
        return json.dumps(value).encode("utf-8")
    if not isinstance(value, str):
        raise CIError("InvalidArgument", "request must be a request document or the path of one")
    s = value.strip()
    if s.startswith("<") or s.startswith("{"):
        return s.encode("utf-8")
    p = Path(s) if os.path.isabs(s) else base / s
    try:
        return p.read_bytes()
    except OSError as e:
        raise CIError("InvalidArgument", f"request file {s!r} cannot be read: {e.strerror}") from None


def _int(row: dict, key: str) -> int | None:
    v = row.get(key)
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        raise CIError("InvalidArgument", f"{key} must be an integer, got {v!r}") from None


# ------------------------------------------------------------------------------------------------
# building items
# ------------------------------------------------------------------------------------------------

def _settings_key(mode: str, cfg: dict, model: str, model_options: dict, targets: dict, output_root: Path) -> str:
    doc = {"mode": mode, "audio_config": cfg, "model": model,
           "model_options": {k: model_options[k] for k in sorted(model_options)},
           "outputs": {r: os.path.relpath(p, output_root) for r, p in sorted(targets.items())}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_settings(mode: str, cfg: AudioConfig, model: str | None,
                    model_dir: str | None = None) -> tuple[tuple[str, ...], str, str, str]:
    """Validate; return (roles, ext, the model as given or the default, its name for {model})."""
    from ..core import registry
    from ..protocol import roles_for_mode
    from ..request.parse import check_audio_config

    roles = roles_for_mode(mode)
    try:
        ext = get_codec(cfg.codec or DEFAULT_CODEC).ext
    except KeyError:
        raise CIError("InvalidArgument", f"codec {cfg.codec!r} is not one of aac, mp3, flac, amr, wav") from None
    check_audio_config(cfg, mode, "AudioConfig")
    name = model or registry.default_model(mode, model_dir)
    return roles, ext, name, registry.get_spec(name, model_dir).name


def _cfg_dict(cfg: AudioConfig) -> dict:
    return {k: v for k, v in cfg.model_dump().items() if v is not None}


def _make_item(index: int, path: Path, rel: str, rel_dir: str, output_root: Path, d: Defaults, *,
               row: dict | None = None, request_targets: dict | None = None) -> BatchItem:
    row = row or {}
    mode = row.get("mode") or d.mode
    cfg = AudioConfig(codec=row.get("codec") or d.codec,
                      samplerate=_int(row, "samplerate") if "samplerate" in row else d.samplerate,
                      bitrate=_int(row, "bitrate") if "bitrate" in row else d.bitrate,
                      channels=_int(row, "channels") if "channels" in row else d.channels)
    roles, ext, model, label = _check_settings(mode, cfg, row.get("model") or d.model, d.model_options.get("model_dir"))
    if request_targets is not None:
        targets = {r: str(output_root / k) for r, k in request_targets.items()}
    else:
        template = check_template(row.get("output") or d.template, roles)
        targets = {r: str(output_root / render(template, rel_dir=rel_dir, name=path.stem,
                                               input_ext=path.suffix[1:], role=r, ext=ext,
                                               model=label, mode=mode))
                   for r in roles}
    cfg_d = _cfg_dict(cfg)
    return BatchItem(index=index, input=str(path), rel=rel, mode=mode, audio_config=cfg_d, model=model,
                     model_options=dict(d.model_options), targets=targets,
                     key=_settings_key(mode, cfg_d, model, d.model_options, targets, output_root))


def _row_item(index: int, lineno: int, row: dict, base: Path, output_root: Path, d: Defaults) -> BatchItem:
    if "_error" in row:
        raise CIError("InvalidArgument", row["_error"])
    unknown = sorted(set(row) - set(MANIFEST_KEYS))
    if unknown:
        raise CIError("InvalidArgument", f"unknown manifest column(s) {', '.join(unknown)}; "
                      f"allowed: {', '.join(MANIFEST_KEYS)}")
    request_targets = None
    if "request" in row:
        from ..request import parse_job_request, resolve_outputs

        req, _fmt = parse_job_request(_request_body(row["request"], base))
        params = req.params
        if params is None or req.operation.template_id is not None:  # type: ignore[union-attr]
            raise CIError("InvalidArgument", "Operation.TemplateId is not supported in a batch manifest: "
                          "give Operation.VoiceSeparate inline")
        ac = params.audio_config or AudioConfig()
        row = {"input": row.get("input") or req.input_object, "mode": params.audio_mode,
               "codec": ac.codec, "samplerate": ac.samplerate, "bitrate": ac.bitrate,
               "channels": ac.channels, "model": params.model}
        row = {k: v for k, v in row.items() if v is not None}
        # the request's settings are complete: the command line's do not apply
        d = Defaults(mode=row["mode"], model_options=d.model_options)
        request_targets = resolve_outputs(req)
    if not row.get("input"):
        raise CIError("InvalidArgument", f"row at line {lineno} has no input")
    p = Path(str(row["input"]))
    path = p if p.is_absolute() else base / p
    return _make_item(index, path.absolute(), _rel(path, base) if not p.is_absolute() else str(p),
                      _rel_dir(path, base), output_root, d, row=row, request_targets=request_targets)


def build_plan(source: str | os.PathLike, output_root: str | os.PathLike, defaults: Defaults | None = None,
               *, all_files: bool = False, exclude: set[str] | frozenset[str] = frozenset()) -> Plan:
    """Find the inputs of ``source`` and plan each one's outputs under ``output_root``.

    ``exclude``: real paths never taken as inputs of a folder or glob (earlier outputs).

    Raises ``CIError(InvalidArgument)`` when SOURCE names nothing usable or the command line's
    settings are invalid; per-input problems become items with ``error`` set.
    """
    d = defaults or Defaults()
    output_root = Path(output_root).absolute()
    src = Path(source)
    items: list[BatchItem] = []
    ignored: list[str] = []

    # Validate the command line's own settings once, so that a bad --codec is a usage error.
    _check_settings(d.mode, AudioConfig(codec=d.codec, samplerate=d.samplerate, bitrate=d.bitrate,
                                        channels=d.channels), d.model, d.model_options.get("model_dir"))
    from ..protocol import roles_for_mode
    check_template(d.template, roles_for_mode(d.mode))

    def add(path: Path, rel: str, rel_dir: str) -> None:
        idx = len(items)
        try:
            items.append(_make_item(idx, path.absolute(), rel, rel_dir, output_root, d))
        except CIError as e:
            items.append(BatchItem(idx, str(path.absolute()), rel, error=(e.code, e.message)))

    if src.is_dir():
        kind = "folder"
        found, left = _walk(src, output_root, all_files, frozenset(exclude))
        for p in found:
            add(p, _rel(p, src), _rel_dir(p, src))
        ignored = [_rel(p, src) for p in left]
    elif is_manifest(src):
        kind = "manifest"
        base = src.parent.absolute()
        try:
            rows = _read_manifest(src)
        except (OSError, UnicodeError, csv.Error) as e:
            raise CIError("InvalidArgument", f"manifest {src} cannot be read: {e}") from None
        for lineno, row in rows:
            idx = len(items)
            try:
                items.append(_row_item(idx, lineno, row, base, output_root, d))
            except CIError as e:
                shown = str(row.get("input") or f"{src.name}:{lineno}")
                items.append(BatchItem(idx, shown, shown, error=(e.code, e.message)))
    elif src.is_file():
        kind = "file"
        add(src, src.name, "")
    elif any(c in str(source) for c in GLOB_CHARS):
        kind = "glob"
        base = _glob_base(str(source))
        for s in sorted(globmod.glob(str(source), recursive=True)):
            p = Path(s)
            if p.is_file() and not any(_hidden(part) for part in p.parts[len(base.parts):]) \
                    and os.path.realpath(p) not in exclude:
                add(p, _rel(p, base), _rel_dir(p, base))
    else:
        raise CIError("InvalidArgument", f"SOURCE {str(source)!r} is not a folder, a file, a manifest "
                      "or a glob that matches anything")
    _mark_conflicts(items)
    return Plan(items, ignored, str(source), kind)


def _mark_conflicts(items: list[BatchItem]) -> None:
    """Two inputs writing one output, or an output overwriting an input: the later one fails."""
    inputs = {os.path.realpath(it.input) for it in items if it.error is None}
    owner: dict[str, BatchItem] = {}
    for it in items:
        if it.error is not None:
            continue
        for role, path in it.targets.items():
            real = os.path.realpath(path)
            if real in inputs:
                it.error = ("OutputConflict", f"the {role} output {path} would overwrite an input")
                break
            other = owner.get(real)
            if other is not None:
                it.error = ("OutputConflict", f"the {role} output {path} is also an output of "
                            f"{other.rel}; use {{input_ext}} or a per-row output template")
                break
        if it.error is None:
            for path in it.targets.values():
                owner[os.path.realpath(path)] = it
