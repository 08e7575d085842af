"""``separator run REQUEST``: a cloud-format VoiceSeparate request against local storage."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import EXIT_FAILED, EXIT_OK, UsageError, add_model_args, model_options, read_file


def add_parser(sub) -> None:
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
    add_model_args(p)
    p.set_defaults(func=run, quick_exit=True)


def _job_model(body: bytes, args: argparse.Namespace) -> str:
    """"<model> on <device>" for the progress bar of a request (its errors come later)."""
    from ..api import resolve_model
    from ..errors import CIError
    from ..request import parse_job_request

    try:
        params = parse_job_request(body)[0].params
        model, device = resolve_model(params.audio_mode, args.model or params.model, args.device,
                                      args.model_dir)
        return f"{model} on {device}"
    except (CIError, AttributeError):
        return "VoiceSeparate job"


def run(args: argparse.Namespace) -> int:
    from ..api import run_request
    from ..progress import AudioBar, summary

    body = sys.stdin.buffer.read() if args.request == "-" else read_file(args.request, "request file")
    root = Path(args.storage)
    if root.exists() and not root.is_dir():
        raise UsageError(f"storage root {args.storage} is a file, not a folder; give the folder "
                         "that holds your buckets (<root>/<bucket>/<key>)")
    bar = AudioBar(f"{Path(args.request).name} ({_job_model(body, args)})", quiet=args.quiet)
    try:
        record, rendered, ok = run_request(body, args.storage, bucket=args.bucket, region=args.region,
                                           model=args.model, device=args.device, progress=bar.update,
                                           **model_options(args))
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
