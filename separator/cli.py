"""Command line: ``separator separate | run | models | serve | eval``."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .runtime import switched_off

MODES = ("IsAudio", "IsBackground", "AudioAndBackground", "MusicMode")


def _progress_bar(enabled: bool, label: str):
    """A tqdm bar on a terminal; nothing otherwise. Returns (callback, close)."""
    if not enabled or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=1, unit="s", unit_scale=False, desc=label, leave=False,
               bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}]")

    def update(done: int, total: int, sr: int = 44100) -> None:
        bar.total = total / sr
        bar.n = done / sr
        bar.refresh()

    return update, bar.close


def cmd_separate(args: argparse.Namespace) -> int:
    from .api import separate
    from .errors import CIError

    update, close = _progress_bar(not args.quiet, Path(args.input).name)
    try:
        outputs = separate(args.input, args.output, mode=args.mode, codec=args.codec,
                           bitrate=args.bitrate, samplerate=args.samplerate,
                           channels=args.channels, model=args.model, device=args.device,
                           progress=update, **_model_options(args))
    except CIError as err:
        close()
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return 2
    close()
    for role, path in outputs.items():
        print(f"{role}\t{path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .api import run_request

    body = sys.stdin.buffer.read() if args.request == "-" else Path(args.request).read_bytes()
    record, rendered, ok = run_request(body, args.storage, bucket=args.bucket, region=args.region,
                                       model=args.model, device=args.device,
                                       **_model_options(args))
    sys.stdout.write(rendered.decode("utf-8"))
    sys.stdout.write("\n")
    return 0 if ok else 1


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


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="separation model (see `separator models list`); "
                   "default: the best installed model for the mode")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--shifts", type=int, help="Demucs: random-shift test-time augmentation passes "
                   "(quality up a little, time x N); default 0")
    p.add_argument("--overlap", type=float, help="Demucs: overlap between chunks, 0..0.9 (default 0.25); the bundled "
                   "model's chunks need none (accepted, no effect)")
    p.add_argument("--segment", type=float, help="Demucs: chunk length in seconds "
                   "(at most the model's training segment)")
    p.add_argument("--jobs", type=int, help="Demucs: chunks computed concurrently (default 1)")
    p.add_argument("--batch", type=int, help="chunks (Demucs, default 1 on CPU, 8 on CUDA) or 11.9 s U-Net segments "
                   "(bundled model, default 2) per forward pass: more memory; helps on GPUs")
    p.add_argument("--wiener", action="store_true", help="bundled model: multichannel Wiener "
                   "filter on the vocals (+0.1 dB vocals, +0.1 dB background; ~25 %% more time)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="arithmetic of the network. Bundled model: default auto = bf16 on CPUs with "
                   "native bf16 (AMX/AVX512-BF16: ~1.7x faster, SDR within 0.03 dB), fp16 on CUDA "
                   "(SDR within 0.002 dB), else fp32. "
                   "Demucs: auto = fp32; fp16 / bf16 run it under autocast (bf16 on a CPU is slower). "
                   "fp16 on CUDA only")
    p.add_argument("--model-dir", dest="model_dir",
                   help="directory of Demucs weights (default $SEPARATOR_MODEL_DIR or ~/.cache/separator/models)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="separator",
        description="Separate the human voice from the background (and, in MusicMode, bass and "
                    "drums) locally, speaking Tencent Cloud Infinite's VoiceSeparate protocol.")
    parser.add_argument("--version", action="version", version=f"separator {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("separate", help="separate one audio/video file into encoded stems",
                       description="Separate INPUT (any audio or video ffmpeg reads) and write "
                       "DIR/<input name>/<role>.<ext> for each role the mode produces: vocals, "
                       "background (and bass, drums in MusicMode).")
    p.add_argument("input", help="input audio or video file")
    p.add_argument("-o", "--output", default="separated", metavar="DIR",
                   help="output directory (default: ./separated)")
    p.add_argument("--mode", default="AudioAndBackground", choices=MODES,
                   help="what to write (default AudioAndBackground = vocals + background)")
    p.add_argument("--codec", default="aac", type=str.lower,
                   help="aac (.m4a), mp3, flac, amr or wav (default aac, as the cloud)")
    p.add_argument("--bitrate", type=int, help="kbps, 8..1000 (default: the source's, within the codec's range)")
    p.add_argument("--samplerate", type=int, help="Hz (default 44100; amr 8000)")
    p.add_argument("--channels", type=int, help="output channels (default: the source's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_model_args(p)
    p.set_defaults(func=cmd_separate, quick_exit=True)

    p = sub.add_parser("run", help="run a cloud-format VoiceSeparate request against local storage",
                       description="Run a VoiceSeparate request (XML or JSON, as sent to POST /jobs) "
                       "against local storage ROOT/<bucket>/<key> and print the cloud-format "
                       "response (XML, or JSON for a JSON request). Exit status 1 when the job "
                       "failed or the request was refused.")
    p.add_argument("request", help="REQUEST.xml or REQUEST.json ('-' for stdin)")
    p.add_argument("--storage", required=True, help="storage root: buckets are its subdirectories")
    p.add_argument("--bucket", required=True, help="the bucket the request is sent to (name-APPID)")
    p.add_argument("--region", required=True, help="the region the request is sent to, e.g. ap-guangzhou")
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


def main(argv: list[str] | None = None) -> int:
    rc, _ = _run(argv)
    return rc


def _run(argv: list[str] | None) -> tuple[int, bool]:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args), bool(getattr(args, "quick_exit", False))


def entry() -> None:
    """The ``separator`` command.  ``separate`` and ``run`` end with ``os._exit`` once their
    outputs are written, closed and renamed into place and stdout/stderr/logging are flushed:
    the interpreter's teardown of torch and of a loaded model takes ~0.4 s and does nothing
    a finished one-shot command needs (no atexit work of ours is pending; every ffmpeg child
    has been waited for).  ``SEPARATOR_QUICK_EXIT=0`` exits the ordinary way."""
    rc, quick = _run(None)
    if quick and not switched_off("SEPARATOR_QUICK_EXIT"):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    entry()
