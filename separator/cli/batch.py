"""``separator batch SOURCE OUTPUT``: the command line of :mod:`separator.batch`."""
from __future__ import annotations

import argparse
import sys

from ..naming import DEFAULT_TEMPLATE
from .options import EXIT_USAGE, add_mode_arg, add_model_args, model_options

DESCRIPTION = f"""\
Separate every input of SOURCE and write the outputs under OUTPUT.

SOURCE is a folder (searched recursively for audio/video files by extension; hidden files and
OUTPUT are left out), a glob ('music/**/*.flac', quoted), a single file, or a manifest (.csv with
a header row, or .jsonl): one input per row, with optional per-row columns output (a naming
template), mode, codec, samplerate, bitrate, channels, model, or request (a cloud-format
VoiceSeparate request document, inline or a file path, whose Output keys name the outputs).

Outputs are named by --name-template (default '{DEFAULT_TEMPLATE}'), relative to OUTPUT, with
{{rel_dir}} (the input's folder relative to SOURCE), {{name}} or {{track}} (input file name without
extension), {{input_ext}}, {{stem}} (vocals, background; in MusicMode vocals, other, bass, drums),
{{role}} (the protocol's: vocals, background, bass, drums), {{ext}} (the codec's extension: m4a for
aac), {{model}} and {{mode}}.

Resumable: OUTPUT/.separator-batch.jsonl records each finished input with its outputs' sizes
and MD5s; running the same command again skips inputs whose outputs are complete and verified,
and separates the rest. Outputs are written atomically, so an interrupted run (Ctrl-C, kill -9)
leaves no partial file. Bad inputs are reported and skipped; the batch goes on.

A summary, one JSON line per input plus a totals line, is written to OUTPUT/batch-summary.jsonl
(or --summary).  Exit status: 0 all inputs separated or already done; 1 some inputs failed (see the
summary); 2 the batch could not start; 130 interrupted.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("batch", help="separate a folder, glob or manifest of files (resumable; "
                              "local workers or a Ray cluster)", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="folder, glob, media file or manifest (.csv/.jsonl)")
    p.add_argument("output", metavar="OUTPUT", help="output folder (created if needed)")
    add_mode_arg(p)
    p.add_argument("--codec", type=str.lower, help="aac (.m4a, default), mp3, flac, amr or wav")
    p.add_argument("--bitrate", type=int, help="kbps, 8..1000 (default: the source's, within the codec's range)")
    p.add_argument("--samplerate", type=int, help="Hz (default 44100; amr 8000)")
    p.add_argument("--channels", type=int, help="output channels (default: the source's)")
    p.add_argument("--name-template", "--template", dest="template", default=DEFAULT_TEMPLATE,
                   metavar="TEMPLATE", help=f"output path under OUTPUT (default '{DEFAULT_TEMPLATE}')")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local: N worker processes (default one per GPU, each pinned to it, else 1 CPU "
                   "worker using all cores; N CPU workers share the cores; 0 = in this process). "
                   "Ray: N actors (default one per GPU, else one per --ray-cpus-per-worker CPUs)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="run on a Ray cluster ('auto' or HOST:PORT); needs pip install 'separator[ray]'; "
                   "inputs and OUTPUT must be on storage every node sees")
    p.add_argument("--ray-cpus-per-worker", type=float, default=1.0, metavar="N",
                   help="CPUs per Ray actor on a CPU cluster (default 1)")
    p.add_argument("--summary", metavar="PATH", help="summary JSONL (default OUTPUT/batch-summary.jsonl)")
    p.add_argument("--verify", choices=("md5", "size"), default="md5",
                   help="how a resumed run checks earlier outputs (default md5)")
    p.add_argument("--force", action="store_true", help="separate every input again, ignoring earlier runs")
    p.add_argument("--all-files", action="store_true",
                   help="in a SOURCE folder, try every file, not only media extensions")
    p.add_argument("--progress", choices=("auto", "bar", "log", "none"), default="auto",
                   help="progress bar (terminal), log lines, or nothing (default auto)")
    p.add_argument("-q", "--quiet", action="store_true", help="same as --progress none")
    add_model_args(p)
    p.set_defaults(func=cmd_batch)
    return p


def cmd_batch(args: argparse.Namespace) -> int:
    from ..batch.plan import Defaults
    from ..batch.runner import BatchError, BatchOptions, run_batch

    defaults = Defaults(mode=args.mode, codec=args.codec, samplerate=args.samplerate, bitrate=args.bitrate,
                        channels=args.channels, model=args.model, template=args.template,
                        model_options=model_options(args))
    opts = BatchOptions(source=args.source, output=args.output, defaults=defaults, workers=args.workers,
                        device=args.device, ray_address=args.ray_address,
                        ray_cpus_per_worker=args.ray_cpus_per_worker, summary=args.summary,
                        verify=args.verify, force=args.force, all_files=args.all_files,
                        progress="none" if args.quiet else args.progress)
    if args.workers is not None and args.workers < 0:
        print("error: --workers must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = run_batch(opts)
    except BatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return report.exit_status
