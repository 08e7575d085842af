"""``separator separate INPUT``: one file in, one encoded file per stem out."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..codecs import SAMPLE_FORMATS
from .options import EXIT_OK, add_mode_arg, add_model_args, model_options, notes, writable_folder


def add_parser(sub) -> None:
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
    add_mode_arg(p)
    p.add_argument("--codec", default="aac", type=str.lower,
                   help="aac (.m4a), mp3, flac, amr or wav (default aac, as the cloud)")
    p.add_argument("--bitrate", type=int, help="kbps, 8..1000 (default: the source's, within the "
                   "codec's range; a value the encoder cannot write is changed, with a note)")
    p.add_argument("--samplerate", type=int, help="Hz (default 44100; amr 8000)")
    p.add_argument("--channels", type=int, help="output channels (default: the source's)")
    p.add_argument("--sample-format", dest="sample_format", choices=SAMPLE_FORMATS,
                   help="wav: s16, s24 or f32; flac: s16 or s24 (default: the source's where the "
                   "codec can hold it, e.g. 24-bit wav in -> 24-bit wav out, else s16)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    add_model_args(p)
    p.set_defaults(func=run, quick_exit=True)


def run(args: argparse.Namespace) -> int:
    from ..api import plan_outputs, resolve_model
    from ..jobs.engine import separate_file
    from ..progress import AudioBar, summary

    writable_folder(args.output, "the output folder")
    model, device = resolve_model(args.mode, args.model, args.device, args.model_dir)
    name = Path(args.input).name
    bar = AudioBar(f"{name} ({model} on {device})", quiet=args.quiet)
    try:
        targets, cfg = plan_outputs(args.input, args.output, mode=args.mode, codec=args.codec,
                                    bitrate=args.bitrate, samplerate=args.samplerate,
                                    channels=args.channels, sample_format=args.sample_format)
        result = separate_file(args.input, targets, mode=args.mode, audio_config=cfg, model=model,
                               device=device, progress=bar.update, model_options=model_options(args))
    finally:
        bar.close()
    notes(result.settings)
    for role, path in result.outputs.items():
        print(f"{role}\t{path}")
    bar.finish(summary(name, result.source.duration, bar.elapsed, result.model, result.device))
    return EXIT_OK
