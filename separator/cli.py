"""Command line: ``separator separate | run | models | batch | eval | serve``.

Every command ends the same way (:func:`_call`): a user's mistake is one line on stderr
(``error: …``: what was wrong, the path, what to do) and exit status 2; a job that failed
for another reason exits 1; Ctrl-C ends the command with ``interrupted`` and exit status 130,
after the command removed what it had started to write (temporary files, folders it created)
and ended its ffmpeg children.  A traceback is printed only with ``--debug``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from . import __version__
from .runtime import configure_process, switched_off

MODES = ("IsAudio", "IsBackground", "AudioAndBackground", "MusicMode")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A mistake in how a command was called: one line, exit status 2."""


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _os_error(err: OSError) -> str:
    """``OSError`` as a sentence that names the path and says what to do."""
    what = err.strerror or type(err).__name__
    path = err.filename
    hint = {
        "FileNotFoundError": "check the path",
        "NotADirectoryError": "a part of that path is a file, not a folder; choose another path",
        "IsADirectoryError": "that is a folder; give a file",
        "PermissionError": "choose a place you can write to, or change its permissions",
        "FileExistsError": "remove it or choose another path",
    }.get(type(err).__name__, "")
    where = f": {path}" if path else ""
    return f"{what}{where}" + (f" ({hint})" if hint else "")


def _read_file(path: str, what: str) -> bytes:
    """The bytes of a file the user named, or a :class:`UsageError` that says what is wrong."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {path} is a folder; give the path of a file")
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} {path} not found") from None
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {err.strerror}") from None


def _writable_folder(path: str, what: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written."""
    from .storage.local import writable_folder_problem

    problem = writable_folder_problem(path)
    if problem:
        raise UsageError(f"cannot write to {what} {path}: {problem}; choose another")


def _notes(settings) -> None:
    """What the encoder changed from what was asked (always shown, even with ``-q``)."""
    for note in getattr(settings, "notes", ()):
        _say(f"note: {note}")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake in one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def cmd_separate(args: argparse.Namespace) -> int:
    from .api import resolve_model
    from .jobs.engine import separate_file
    from .progress import AudioBar, summary

    _writable_folder(args.output, "the output folder")
    model, device = resolve_model(args.mode, args.model, args.device, args.model_dir)
    name = Path(args.input).name
    bar = AudioBar(f"{name} ({model} on {device})", quiet=args.quiet)
    try:
        from .api import plan_outputs
        targets, cfg = plan_outputs(args.input, args.output, mode=args.mode, codec=args.codec,
                                    bitrate=args.bitrate, samplerate=args.samplerate,
                                    channels=args.channels)
        result = separate_file(args.input, targets, mode=args.mode, audio_config=cfg, model=model,
                               device=device, progress=bar.update, model_options=_model_options(args))
    finally:
        bar.close()
    _notes(result.settings)
    for role, path in result.outputs.items():
        print(f"{role}\t{path}")
    bar.finish(summary(name, result.source.duration, bar.elapsed, result.model, result.device))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from .api import run_request
    from .progress import AudioBar, summary

    body = sys.stdin.buffer.read() if args.request == "-" else _read_file(args.request, "request file")
    root = Path(args.storage)
    if root.exists() and not root.is_dir():
        raise UsageError(f"storage root {args.storage} is a file, not a folder; give the folder "
                         "that holds your buckets (<root>/<bucket>/<key>)")
    bar = AudioBar(f"{Path(args.request).name} ({_job_model(body, args)})", quiet=args.quiet)
    try:
        record, rendered, ok = run_request(body, args.storage, bucket=args.bucket, region=args.region,
                                           model=args.model, device=args.device, progress=bar.update,
                                           **_model_options(args))
    finally:
        bar.close()
    sys.stdout.write(rendered.decode("utf-8"))
    sys.stdout.write("\n")
    sys.stdout.flush()
    if record is not None and ok:
        extra = record.extra or {}
        audio = float((record.media_info or {}).get("Format", {}).get("Duration") or 0.0)
        bar.finish(summary(f"job {record.job_id}", audio, bar.elapsed, extra.get("SeparatorModel"),
                           extra.get("SeparatorDevice")))
    elif record is not None:
        bar.note(f"error: the job failed: {record.code}: {record.message}")
    else:
        bar.note("error: the request was refused (the error body is on stdout)")
    return EXIT_OK if ok else EXIT_FAILED


def _job_model(body: bytes, args: argparse.Namespace) -> str:
    """"<model> on <device>" for the progress bar of a request (its errors come later)."""
    from .api import resolve_model
    from .errors import CIError
    from .request import parse_job_request

    try:
        params = parse_job_request(body)[0].params
        model, device = resolve_model(params.audio_mode, args.model or params.model, args.device,
                                      args.model_dir)
        return f"{model} on {device}"
    except (CIError, AttributeError):
        return "VoiceSeparate job"


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.main import main as serve_main

    return serve_main(args)


def _model_options(args: argparse.Namespace) -> dict:
    opts = {}
    for name in ("shifts", "overlap", "segment", "jobs", "batch", "model_dir", "precision"):
        value = getattr(args, name, None)
        if value is not None:
            opts[name] = value
    if getattr(args, "wiener", False):
        opts["wiener"] = True
    return opts


def _overlap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 0.9:
        raise argparse.ArgumentTypeError(f"{value:g} is outside 0..0.9")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="separation model (see `separator models list`); "
                   "default: the best installed model for the mode")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--shifts", type=int, help="Demucs: random-shift test-time augmentation passes "
                   "(quality up a little, time x N); default 0")
    p.add_argument("--overlap", type=_overlap, help="Demucs: overlap between chunks, 0..0.9 (default 0.25)")
    p.add_argument("--segment", type=float, help="Demucs: chunk length in seconds "
                   "(at most the model's training segment); bundled model: chunk length (memory only)")
    p.add_argument("--jobs", type=_positive_int, help="Demucs: chunks computed concurrently (default 1)")
    p.add_argument("--batch", type=_positive_int, help="chunks (Demucs, default 1 on CPU, 8 on CUDA) or "
                   "11.9 s U-Net segments (bundled model, default 2) per forward pass: more memory; helps on GPUs")
    p.add_argument("--wiener", action="store_true", help="bundled model: multichannel Wiener "
                   "filter on the vocals (slightly better SDR, more time; see benchmarks/RESULTS.md)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="arithmetic of the network. Bundled model: default auto = bf16 on CPUs with "
                   "native bf16 (AMX/AVX512-BF16), fp16 on CUDA, else fp32. "
                   "Demucs: auto = fp32; fp16 / bf16 run it under autocast (bf16 on a CPU is slower). "
                   "fp16 on CUDA only")
    p.add_argument("--model-dir", dest="model_dir",
                   help="directory of Demucs weights (default $SEPARATOR_MODEL_DIR or ~/.cache/separator/models)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="separator",
        description="Separate the human voice from the background (and, in MusicMode, bass and "
                    "drums) locally, speaking Tencent Cloud Infinite's VoiceSeparate protocol.")
    parser.add_argument("--version", action="version", version=f"separator {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--debug", action="store_true", help="log everything, and print the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("separate", help="separate one audio/video file into encoded stems",
                       description="Separate INPUT (any audio or video ffmpeg reads) and write "
                       "DIR/<input name>/<role>.<ext> for each role the mode produces: vocals, "
                       "background (and bass, drums in MusicMode). Outputs of an earlier run at the "
                       "same paths are replaced (each new file only once all are complete); an "
                       "output that would be the input itself is refused. An input with more than "
                       "two channels (5.1 …) is separated per channel group and keeps its layout "
                       "unless --channels asks for 1 or 2 (then each stem is downmixed).")
    p.add_argument("input", help="input audio or video file")
    p.add_argument("-o", "--output", default="separated", metavar="DIR",
                   help="output directory (default: ./separated)")
    p.add_argument("--mode", default="AudioAndBackground", choices=MODES,
                   help="what to write (default AudioAndBackground = vocals + background)")
    p.add_argument("--codec", default="aac", type=str.lower,
                   help="aac (.m4a), mp3, flac, amr or wav (default aac, as the cloud)")
    p.add_argument("--bitrate", type=int, help="kbps, 8..1000 (default: the source's, within the "
                   "codec's range; a value the encoder cannot write is changed, with a note)")
    p.add_argument("--samplerate", type=int, help="Hz (default 44100; amr 8000)")
    p.add_argument("--channels", type=int, help="output channels (default: the source's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    _add_model_args(p)
    p.set_defaults(func=cmd_separate, quick_exit=True)

    p = sub.add_parser("run", help="run a cloud-format VoiceSeparate request against local storage",
                       description="Run a VoiceSeparate request (XML or JSON, as sent to POST /jobs) "
                       "against local storage ROOT/<bucket>/<key> and print the cloud-format "
                       "response (XML, or JSON for a JSON request). The request's Input.Object is "
                       "read from ROOT/<bucket>/<Input.Object>; outputs are written to "
                       "ROOT/<Output.Bucket>/<key>. Exit status 1 when the job failed or the "
                       "request was refused.")
    p.add_argument("request", help="REQUEST.xml or REQUEST.json ('-' for stdin)")
    p.add_argument("--storage", required=True, help="storage root: buckets are its subdirectories")
    p.add_argument("--bucket", required=True, help="the bucket the request is sent to (name-APPID)")
    p.add_argument("--region", required=True, help="the region the request is sent to, e.g. ap-guangzhou")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    _add_model_args(p)
    p.set_defaults(func=cmd_run, quick_exit=True)

    from .models_cli import add_models_parser
    add_models_parser(sub)

    from .batch.cli import add_batch_parser
    add_batch_parser(sub)

    from .eval_cli import add_eval_parser
    add_eval_parser(sub)

    p = sub.add_parser("serve", help="serve the cloud's VoiceSeparate job API on localhost",
                       description="Serve the VoiceSeparate job, template and queue API and the COS "
                       "object calls the official SDK makes, on a local storage root. Jobs run in "
                       "worker processes; jobs, templates and queues persist in SQLite.")
    from .server.main import build_parser as build_serve_parser
    build_serve_parser(p)
    p.set_defaults(func=cmd_serve)
    return parser


def _call(args: argparse.Namespace) -> int:
    """Run the command; turn every way it can end into one line and an exit status."""
    from .errors import CIError

    debug = bool(getattr(args, "debug", False) or getattr(args, "verbose", False))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except (UsageError, CIError, OSError) as err:
        if debug:
            traceback.print_exc()
        if isinstance(err, CIError):
            _say(f"error: {err.message}")
            return EXIT_FAILED if err.status >= 500 else EXIT_USAGE
        _say(f"error: {_os_error(err) if isinstance(err, OSError) else err}")
        return EXIT_USAGE
    except Exception as err:  # a bug: say so in one line; the traceback is for --debug
        if debug:
            traceback.print_exc()
        _say(f"error: internal error ({type(err).__name__}: {err}); run again with --debug "
             "to see where, and please report it")
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    rc, _ = _run(argv)
    return rc


def _run(argv: list[str] | None) -> tuple[int, bool]:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _call(args), bool(getattr(args, "quick_exit", False))


def entry() -> None:
    """The ``separator`` command.  ``separate`` and ``run`` end with ``os._exit`` once their
    outputs are written, closed and renamed into place (or removed, after an error or a
    Ctrl-C) and stdout/stderr/logging are flushed: the interpreter's teardown of torch and of
    a loaded model does nothing a finished one-shot command needs (no atexit work of ours is
    pending; every ffmpeg child has been waited for).  ``SEPARATOR_QUICK_EXIT=0`` exits the
    ordinary way."""
    configure_process()              # before torch is imported (see separator.runtime)
    try:
        rc, quick = _run(None)
    except KeyboardInterrupt:        # while parsing or importing: nothing was written yet
        _say("interrupted")
        rc, quick = EXIT_INTERRUPTED, True
    if quick and not switched_off("SEPARATOR_QUICK_EXIT"):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    entry()
