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
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MIXTURE_NAMES = ("mixture", "mix")
ACC_ALIASES = ("accompaniment", "background", "instrumental", "no_vocals", "novocals")
AUDIO_EXT = {".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".aif", ".aiff", ".mp4", ".wma"}


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
    """The model options given on the command line (only those set)."""
    opts: dict = {}
    for name in ("shifts", "overlap", "segment", "jobs", "model_dir"):
        v = getattr(args, name, None)
        if v is not None:
            opts[name] = v
    if getattr(args, "wiener", False):
        opts["wiener"] = True
    for item in getattr(args, "option", None) or []:
        if "=" not in item:
            raise SystemExit(f"separator eval: -O/--option wants KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k.strip().replace("-", "_")] = _value(v.strip())
    return opts


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("data_dir", nargs="?", default=None, metavar="DATA_DIR",
                   help=f"folder of songs with ground-truth stems (default: the development set "
                   f"{DEFAULT_DATA} when present)")
    p.add_argument("--model", default=None, help="model to score (default: spleeter-2stems)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--shifts", type=int, help="Demucs: random-shift test-time augmentation passes")
    p.add_argument("--overlap", type=float, help="overlap between chunks (the model's own unit and default)")
    p.add_argument("--segment", type=float, help="Demucs: chunk length in seconds")
    p.add_argument("--jobs", type=int, help="Demucs: chunks computed concurrently")
    p.add_argument("--model-dir", dest="model_dir", help="directory of Demucs weights")
    p.add_argument("--wiener", action="store_true",
                   help="Wiener-filter post-processing (models that support it: passed as wiener=True)")
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
    return p


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``separator`` sub-command parsers."""
    p = subparsers.add_parser(
        "eval", help="score a model on songs with ground-truth stems (SDR table and medians)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(p)
    p.set_defaults(func=cmd_eval)
    return p


# --------------------------------------------------------------------------- songs
def detect_layout(data_dir: Path) -> str:
    if (data_dir / "sisec2011-music-dev-pyroomacoustics").is_dir() or \
            (data_dir / "waveunet-musdb18-examples").is_dir():
        return "dev"
    return "folders"


def _audio_files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in AUDIO_EXT and not f.name.startswith("."):
            out.setdefault(f.stem.lower(), f)
    return out


def folder_songs(data_dir: Path, sr: int) -> Iterator[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """``(name, mixture, {stem: audio})`` for every ``DATA_DIR/<song>/`` with stems."""
    from .evaluate import decode
    for song in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        files = _audio_files(song)
        mix_key = next((k for k in MIXTURE_NAMES if k in files), None)
        stem_files = {k: v for k, v in files.items() if k != mix_key}
        if not stem_files:
            continue
        stems = {k: decode(v, sr=sr) for k, v in stem_files.items()}
        n = min(len(a) for a in stems.values())
        if mix_key is not None:
            mix = decode(files[mix_key], sr=sr)
            n = min(n, len(mix))
            mix = mix[:n]
        else:
            mix = np.zeros((n, 2), np.float32)
            for a in stems.values():
                mix += a[:n]
        yield song.name, mix, {k: a[:n] for k, a in stems.items()}


def songs_for(data_dir: Path, layout: str, sr: int):
    if layout == "auto":
        layout = detect_layout(data_dir)
    if layout == "dev":
        from .evaluate import dev_songs
        return layout, dev_songs(data_dir)
    return layout, folder_songs(data_dir, sr)


# --------------------------------------------------------------------------- matching stems
def _canon(stem: str) -> str:
    return "accompaniment" if stem in ACC_ALIASES else stem


def match(reference: dict[str, np.ndarray], estimate: dict[str, np.ndarray]
          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Pair ground-truth stems with model sources (see the module doc for ``accompaniment``)."""
    ref = {_canon(k): v for k, v in reference.items()}
    est = {_canon(k): v for k, v in estimate.items()}
    refs, ests = {}, {}
    for stem, audio in ref.items():
        if stem in est:
            refs[stem], ests[stem] = audio, est[stem]
    has_voc = "vocals" in ref and "vocals" in est
    if has_voc and "accompaniment" not in refs:
        rest_ref = [v for k, v in ref.items() if k != "vocals"]
        rest_est = [v for k, v in est.items() if k != "vocals"]
        if rest_ref and rest_est:
            refs["accompaniment"] = rest_ref[0] if len(rest_ref) == 1 else np.sum(rest_ref, axis=0)
            ests["accompaniment"] = rest_est[0] if len(rest_est) == 1 else np.sum(rest_est, axis=0)
    order = [s for s in ("vocals", "accompaniment", "drums", "bass", "other") if s in refs]
    order += sorted(s for s in refs if s not in order)
    return {s: refs[s] for s in order}, {s: ests[s] for s in order}


# --------------------------------------------------------------------------- model loading
def ensure_registered(name: str, model_dir=None) -> None:
    """Make a Demucs model that exists only in the local repo (not in the catalogue) known
    to the registry; a name the registry already knows is left alone."""
    from .core import registry
    from .errors import CIError
    try:
        registry.get_spec(name)
    except CIError:
        try:
            from .core import demucs
        except ImportError:
            return
        for spec in demucs.specs(model_dir, include_local=True):
            if spec.name == name:
                registry.register(spec, demucs.load)
                return


def load(name: str, device: str | None, options: dict):
    """``registry.load_model`` (after :func:`ensure_registered`)."""
    from .core import registry
    from .errors import CIError
    ensure_registered(name, options.get("model_dir"))
    try:
        return registry.load_model(name, device=device, **options)
    except TypeError as exc:   # an option this model family does not take
        raise CIError("InvalidArgument", f"model {name!r} does not take these options "
                      f"{sorted(options)}: {exc}") from None


# --------------------------------------------------------------------------- evaluation
def _stat(rows: list[dict], stem: str, key: str, fn) -> float:
    vals = [r["scores"][stem][key] for r in rows if stem in r["scores"]]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return float(fn(vals)) if vals else float("nan")


def summarise(rows: list[dict], field: str = "scores") -> dict:
    stems: list[str] = []
    for r in rows:
        for s in r.get(field) or {}:
            if s not in stems:
                stems.append(s)
    rr = [{"scores": r[field]} for r in rows if r.get(field)]
    return {
        "median": {s: {k: _stat(rr, s, k, np.median) for k in ("museval", "global")} for s in stems},
        "mean": {s: {k: _stat(rr, s, k, np.mean) for k in ("museval", "global")} for s in stems},
    }


def evaluate_model(model, songs, *, baseline: bool = False, limit: int | None = None,
                   log=None) -> dict:
    """Separate and score every song; returns the JSON-ready report (without header fields)."""
    from .evaluate import score
    rows: list[dict] = []
    sep_total = audio_total = score_total = 0.0
    for i, (name, mix, ref) in enumerate(songs):
        if limit is not None and i >= limit:
            break
        seconds = len(mix) / model.samplerate
        t0 = time.perf_counter()
        est = model.separate(mix)
        t_sep = time.perf_counter() - t0
        refs, ests = match(ref, est)
        if not refs:
            raise SystemExit(f"separator eval: song {name!r}: none of its stems {sorted(ref)} matches "
                             f"the model's sources {list(model.sources)}")
        t1 = time.perf_counter()
        row = {"song": name, "seconds": round(seconds, 3), "separate_s": round(t_sep, 3),
               "scores": score(refs, ests, model.samplerate)}
        if baseline:
            row["baseline"] = score(refs, {s: mix[: len(refs[s])] for s in refs}, model.samplerate)
        score_total += time.perf_counter() - t1
        sep_total += t_sep
        audio_total += seconds
        rows.append(row)
        if log:
            log(row)
    out = {"songs": rows, **summarise(rows)}
    if baseline:
        out["baseline"] = summarise(rows, "baseline")
    out.update({"audio_s": round(audio_total, 3), "separate_s": round(sep_total, 3),
                "score_s": round(score_total, 3),
                "x_realtime": round(audio_total / sep_total, 2) if sep_total else None})
    return out


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
    from .errors import CIError

    data_dir = Path(args.data_dir) if args.data_dir else DEFAULT_DATA
    if not data_dir.is_dir():
        what = "is a file, not a folder" if data_dir.exists() else "not found"
        print(f"error: data folder {data_dir} {what}"
              + ("" if args.data_dir else " (give DATA_DIR)"), file=sys.stderr)
        return 2
    if args.json_out and args.json_out != "-":
        from .storage.local import writable_folder_problem
        problem = writable_folder_problem(Path(args.json_out).absolute().parent)
        if problem or Path(args.json_out).is_dir():
            print(f"error: cannot write --json {args.json_out}: {problem or 'it is a folder'}", file=sys.stderr)
            return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        import museval  # noqa: F401
    except ImportError:
        print("error: scoring needs museval: pip install museval==0.4.1 (the dev extra)", file=sys.stderr)
        return 2
    from .core import registry
    name = args.model or registry.DEFAULT_MODEL
    opts = model_options(args)
    try:
        t0 = time.perf_counter()
        model = load(name, args.device, opts)
        load_s = time.perf_counter() - t0
    except CIError as err:
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return 2
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
        from .storage.local import atomic_file
        with atomic_file(args.json_out) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m separator.eval_cli``), same options as ``separator eval``."""
    import logging
    p = configure_parser(argparse.ArgumentParser(prog="separator eval", description=__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return cmd_eval(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
