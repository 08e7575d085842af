"""``separator eval``: score a model on a folder of songs with ground-truth stems.

    separator eval [DATA_DIR] [--model NAME] [--device cpu] [--shifts N] [--overlap X]
                   [--segment S] [--wiener] [-O KEY=VALUE ...] [--baseline] [--json OUT.json]

For every song the mixture is separated in memory with the model (the same chunked
``separate_stream`` the engine uses) and each stem is scored against its ground truth
with :func:`separator.evaluate.score`: BSS Eval v4 SDR on 1 s windows (museval,
``win = hop = 1 s``), **median over the frames** (NaN frames -- silent reference -- skipped),
as in SiSEC/MUSDB, and the **global SDR** ``10 log10(sum s^2 / sum (s - s_hat)^2)`` over the
whole song.  It prints a per-song table, then the median and the mean over the songs.

Two folder layouts are understood (``--layout auto`` picks):

* **dev** -- the development set at ``../shared/data`` (the 7 items of
  ``shared/reference/spleeter-reference.md``, built by :func:`separator.evaluate.dev_songs`:
  SiSEC 2011 dev, the Wave-U-Net MUSDB18 examples, NI stems); chosen when DATA_DIR holds
  ``sisec2011-music-dev-pyroomacoustics`` or ``waveunet-musdb18-examples``.
* **folders** -- one folder per song (the MUSDB18-HQ layout)::

      DATA_DIR/<song>/mixture.<ext>      optional: if absent, the mixture is the sum of the stems
      DATA_DIR/<song>/<stem>.<ext>       vocals, accompaniment, drums, bass, other, ... (any
                                         format ffmpeg decodes: wav, flac, mp3, m4a, ...)

  A stem is scored when the model produces a source of that name.  ``accompaniment``
  (also spelled ``background``/``instrumental``/``no_vocals``) is special: its ground truth
  is that file when present, otherwise the sum of every non-vocals stem, and its estimate
  is the model's ``accompaniment`` source, or the sum of the model's non-vocals sources
  (so a 4-stem Demucs model is scored on a vocals/accompaniment folder, and Spleeter on a
  MUSDB folder).  Files are decoded with ffmpeg at the model's rate, stereo float32;
  lengths are cut to the shortest.

``--baseline`` adds the "no separation" score (the mixture used as every estimate): a
model that does not beat it separates nothing.  ``--json`` writes every figure.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from . import options
from .options import UsageError, add_model_args


# --------------------------------------------------------------------------- argument parsing
def _value(text: str):
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def model_options(args: argparse.Namespace) -> dict:
    """The shared model options given on the command line, then every ``-O KEY=VALUE``."""
    opts = options.model_options(args)
    for item in getattr(args, "option", None) or []:
        if "=" not in item:
            raise UsageError(f"-O/--option wants KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k.strip().replace("-", "_")] = _value(v.strip())
    return opts


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``separator`` sub-command parsers."""
    p = subparsers.add_parser(
        "eval", help="score a model on songs with ground-truth stems (SDR table and medians)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", nargs="?", default=None, metavar="DATA_DIR",
                   help="folder of songs with ground-truth stems (default: the development set "
                   "../shared/data beside the repository, when present)")
    add_model_args(p)
    p.add_argument("-O", "--option", action="append", metavar="KEY=VALUE",
                   help="any other model option, e.g. -O full_band=false (repeatable)")
    p.add_argument("--layout", choices=("auto", "dev", "folders"), default="auto",
                   help="dev = the ../shared/data development set; folders = DATA_DIR/<song>/"
                   "{mixture,<stem>}.<ext> (default: auto)")
    p.add_argument("--limit", type=int, help="score only the first N songs")
    p.add_argument("--baseline", action="store_true",
                   help="also score 'no separation' (the mixture as every estimate)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write every figure to OUT as JSON ('-' = stdout)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the medians")
    p.set_defaults(func=cmd_eval)
    return p


# --------------------------------------------------------------------------- printing
def _f(v) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.2f}"


def format_table(report: dict) -> str:
    rows = report["songs"]
    stems = list(report["median"])
    head = ["song", "sec"] + [f"{s} {k}" for s in stems for k in ("museval", "global")] + ["sep s"]
    body = []
    for r in rows:
        sc = r["scores"]
        body.append([r["song"], f"{r['seconds']:.1f}"]
                    + [_f(sc[s][k]) if s in sc else "-" for s in stems for k in ("museval", "global")]
                    + [f"{r['separate_s']:.2f}"])
    for label, key in (("MEDIAN", "median"), ("mean", "mean")):
        body.append([label, ""] + [_f(report[key][s][k]) for s in stems for k in ("museval", "global")] + [""])
    if "baseline" in report:
        body.append(["no separation (median)", ""]
                    + [_f(report["baseline"]["median"].get(s, {}).get(k)) for s in stems
                       for k in ("museval", "global")] + [""])
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [head] + body]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - len(body) + len(rows), "-" * len(lines[0]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- command
def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import DEFAULT_DATA, evaluate_model, load, songs_for

    data_dir = Path(args.data_dir) if args.data_dir else DEFAULT_DATA
    if not data_dir.is_dir():
        what = "is a file, not a folder" if data_dir.exists() else "not found"
        raise UsageError(f"data folder {data_dir} {what}" + ("" if args.data_dir else " (give DATA_DIR)"))
    if args.json_out and args.json_out != "-":
        from ..storage.local import writable_folder_problem
        problem = writable_folder_problem(Path(args.json_out).absolute().parent)
        if problem or Path(args.json_out).is_dir():
            raise UsageError(f"cannot write --json {args.json_out}: {problem or 'it is a folder'}")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        import museval  # noqa: F401
    except ImportError:
        raise UsageError("scoring needs museval: pip install museval==0.4.1 (the dev extra)") from None
    from ..core import registry
    name = args.model or registry.DEFAULT_MODEL
    opts = model_options(args)
    t0 = time.perf_counter()
    model = load(name, args.device, opts)
    load_s = time.perf_counter() - t0
    layout, songs = songs_for(data_dir, args.layout, model.samplerate)
    to_stdout = args.json_out == "-"

    def log(row):
        if not args.quiet and not to_stdout:
            sc = "  ".join(f"{s} {_f(v['museval'])}/{_f(v['global'])}" for s, v in row["scores"].items())
            print(f"  {row['song']}: {sc}  ({row['separate_s']:.1f} s)", file=sys.stderr, flush=True)

    report = evaluate_model(model, songs, baseline=args.baseline, limit=args.limit, log=log)
    if not report["songs"]:
        print(f"error: no songs with ground-truth stems found in {data_dir} (layout {layout})", file=sys.stderr)
        return 1
    report = {"model": name, "device": model.device, "options": opts, "data_dir": str(data_dir),
              "layout": layout, "load_s": round(load_s, 3),
              "metric": "BSS Eval v4 SDR (museval 1 s windows, median over frames) and global SDR, dB",
              **report}
    if to_stdout:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {name} on {model.device}" + (f" {opts}" if opts else "")
          + f"; {len(report['songs'])} songs from {data_dir} ({layout} layout)")
    print("SDR in dB: museval = median of 1 s BSS Eval v4 frames; global = whole song\n")
    table = format_table(report)
    print(table if not args.quiet else "\n".join(table.splitlines()[-3 if "baseline" not in report else -4:]))
    print(f"\nseparation {report['separate_s']:.1f} s for {report['audio_s']:.1f} s of audio "
          f"({report['x_realtime']}x realtime, in memory), scoring {report['score_s']:.1f} s, load {load_s:.1f} s")
    if args.json_out:
        from ..storage.local import atomic_file
        with atomic_file(args.json_out) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0
