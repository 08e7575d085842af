"""``separator separate INPUT […]``: files in, one encoded file per stem out, with one model."""
from __future__ import annotations

import argparse

from ..codecs import SAMPLE_FORMATS
from ..naming import SEPARATE_TEMPLATE
from .options import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_mode_arg, add_model_args, model_options, notes,
                      say, writable_folder)

DESCRIPTION = f"""\
Separate each INPUT (any audio or video ffmpeg reads; a folder stands for the audio and video
files in it) and write OUTPUT/{SEPARATE_TEMPLATE} for each stem the mode produces:
vocals and background; in MusicMode vocals, bass, drums and "other".

The 2-stem modes' background is everything but the voice. MusicMode's is what is left after
the voice, the bass *and* the drums, so its file is named "other" (the cloud request's Object
node still receives it).

The model is loaded once for all the inputs. For whole catalogues, resumable runs, several
worker processes or a Ray cluster, use `separator batch`.

Outputs of an earlier run at the same paths are replaced (each new file only once all of the
input's files are complete); an output that would be an input is refused, and so are two
inputs that would write the same file. An input with more than two channels (5.1 …) is
separated per channel group and keeps its layout unless --channels asks for 1 or 2 (then each
stem is downmixed).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("separate", help="separate audio/video files into encoded stems",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input files, or folders of them")
    p.add_argument("-o", "--output", default="separated", metavar="DIR",
                   help="output directory (default: ./separated)")
    add_mode_arg(p)
    p.add_argument("--two-stems", dest="two_stems", choices=("vocals",),
                   help="demucs' spelling of --mode AudioAndBackground: vocals and the rest")
    p.add_argument("--codec", default="aac", type=str.lower,
                   help="aac (.m4a), mp3, flac, amr or wav (default aac, as the cloud)")
    p.add_argument("--bitrate", type=int, help="kbps, 8..1000 (default: the source's, within the "
                   "codec's range; a value the encoder cannot write is changed, with a note)")
    p.add_argument("--samplerate", type=int, help="Hz (default 44100; amr 8000)")
    p.add_argument("--channels", type=int, help="output channels (default: the source's)")
    p.add_argument("--sample-format", dest="sample_format", choices=SAMPLE_FORMATS,
                   help="wav: s16, s24 or f32; flac: s16 or s24 (default: the source's where the "
                   "codec can hold it, e.g. 24-bit wav in -> 24-bit wav out, else s16)")
    p.add_argument("--clip-mode", dest="clip_mode", choices=("clamp", "rescale"), default="clamp",
                   help="a stem past full scale in an integer or lossy file: clamp (default) clips "
                   "those samples, keeping the input's level and encoding while separating; rescale "
                   "scales all the stems by one factor so that none clips (they still sum to the "
                   "scaled input), at the cost of a float spool and a second encode when it happens. "
                   "Float wav clips nothing")
    p.add_argument("--filename", default=SEPARATE_TEMPLATE, metavar="TEMPLATE",
                   help=f"output path under DIR (default '{SEPARATE_TEMPLATE}'), with {{model}}, "
                   "{track} (the input's name), {stem}, {ext}, and {role}, {mode}, {input_ext}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    add_model_args(p)
    p.set_defaults(func=run, quick_exit=True)


def run(args: argparse.Namespace) -> int:
    from ..api import media_files, plan_files, resolve_model
    from ..core import registry
    from ..errors import CIError
    from ..jobs.engine import separate_file
    from ..progress import AudioBar, summary

    mode = "AudioAndBackground" if args.two_stems else args.mode
    writable_folder(args.output, "the output folder")
    model, device = resolve_model(mode, args.model, args.device, args.model_dir)
    label = registry.get_spec(model, args.model_dir).name      # a config path's model is named by its file
    inputs = media_files(args.inputs)
    plans = plan_files(inputs, args.output, mode=mode, codec=args.codec, model=label, template=args.filename,
                       bitrate=args.bitrate, samplerate=args.samplerate, channels=args.channels,
                       sample_format=args.sample_format)
    options = model_options(args)
    audio = wall = 0.0
    failed: list[CIError] = []
    for path, targets, cfg in plans:
        bar = AudioBar(f"{path.name} ({label} on {device})", quiet=args.quiet)
        try:
            result = separate_file(path, targets, mode=mode, audio_config=cfg, model=model, device=device,
                                   progress=bar.update, model_options=options, clip_mode=args.clip_mode)
        except CIError as err:
            bar.close()
            if len(plans) == 1:
                raise
            say(f"error: {path}: {err.message}")
            failed.append(err)
            continue
        finally:
            bar.close()
        notes(result.settings)
        if result.scale != 1.0:
            say(f"note: {path.name}: a stem passed full scale; all stems scaled by {result.scale:.3f} "
                "(--clip-mode rescale)")
        for role, out in result.outputs.items():
            print(f"{role}\t{out}", flush=True)
        audio += result.source.duration
        wall += bar.elapsed
        bar.finish(summary(path.name, result.source.duration, bar.elapsed, result.model, result.device))
    if len(plans) > 1 and not args.quiet:
        done = len(plans) - len(failed)
        say(summary(f"{len(plans)} inputs: {done} separated, {len(failed)} failed", audio, wall, model, device))
    if not failed:
        return EXIT_OK
    return EXIT_FAILED if any(err.status >= 500 for err in failed) else EXIT_USAGE
