"""What every subcommand shares: the one-line error vocabulary, argument types, and the
model options (``--model``, ``--device``, ``--shifts`` …) in one place."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..protocol import AUDIO_MODES

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A mistake in how a command was called: one line, exit status 2."""


def say(text: str) -> None:
    """One line on stderr, at once."""
    print(text, file=sys.stderr, flush=True)


def os_error(err: OSError) -> str:
    """``OSError`` as a sentence that names the path and says what to do."""
    what = err.strerror or type(err).__name__
    hint = {
        "FileNotFoundError": "check the path",
        "NotADirectoryError": "a part of that path is a file, not a folder; choose another path",
        "IsADirectoryError": "that is a folder; give a file",
        "PermissionError": "choose a place you can write to, or change its permissions",
        "FileExistsError": "remove it or choose another path",
    }.get(type(err).__name__, "")
    where = f": {err.filename}" if err.filename else ""
    return f"{what}{where}" + (f" ({hint})" if hint else "")


def read_file(path: str, what: str) -> bytes:
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


def writable_folder(path: str, what: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written."""
    from ..storage.local import writable_folder_problem

    problem = writable_folder_problem(path)
    if problem:
        raise UsageError(f"cannot write to {what} {path}: {problem}; choose another")


def notes(settings) -> None:
    """What the encoder changed from what was asked (always shown, even with ``-q``)."""
    for note in getattr(settings, "notes", ()):
        say(f"note: {note}")


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake in one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def audio_mode(text: str) -> str:
    """``--mode``: an AudioMode, in any letter case."""
    for mode in AUDIO_MODES:
        if text.strip().lower() == mode.lower():
            return mode
    raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(AUDIO_MODES)}")


def add_mode_arg(p: argparse.ArgumentParser, default: str | None = "AudioAndBackground") -> None:
    p.add_argument("--mode", default=default, type=audio_mode, metavar="MODE",
                   help=f"what to write: {', '.join(AUDIO_MODES)} (any letter case; default "
                   f"{default} = vocals + background)")


def overlap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 0.9:
        raise argparse.ArgumentTypeError(f"{value:g} is outside 0..0.9")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


#: the options :func:`add_model_args` defines that go to the model as keyword arguments
MODEL_OPTIONS = ("shifts", "overlap", "segment", "jobs", "batch", "model_dir", "precision")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="separation model (see `separator models list`); "
                   "default: the best installed model for the mode")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--shifts", type=int, help="Demucs: random-shift test-time augmentation passes "
                   "(quality up a little, time x N); default 0")
    p.add_argument("--overlap", type=overlap, help="Demucs: overlap between chunks, 0..0.9 (default 0.25)")
    p.add_argument("--segment", type=float, help="Demucs: chunk length in seconds "
                   "(at most the model's training segment); bundled model: chunk length (memory only)")
    p.add_argument("--jobs", type=positive_int, help="Demucs: chunks computed concurrently (default 1)")
    p.add_argument("--batch", type=positive_int, help="chunks (Demucs, default 1 on CPU, 8 on CUDA) or "
                   "11.9 s U-Net segments (bundled model, default 2) per forward pass: more memory; helps on GPUs")
    p.add_argument("--wiener", action="store_true", help="bundled model: multichannel Wiener "
                   "filter on the vocals (slightly better SDR, more time; see benchmarks/RESULTS.md)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="arithmetic of the network. Bundled model: default auto = bf16 on CPUs with "
                   "native bf16 (AMX/AVX512-BF16), fp16 on CUDA, else fp32. "
                   "Demucs: auto = fp32; fp16 / bf16 run it under autocast. fp16 on CUDA only")
    p.add_argument("--model-dir", dest="model_dir",
                   help="directory of model weights (default $SEPARATOR_MODEL_DIR or ~/.cache/separator/models)")


def model_options(args: argparse.Namespace) -> dict:
    """The model options given on the command line (only those set)."""
    opts = {name: getattr(args, name) for name in MODEL_OPTIONS if getattr(args, name, None) is not None}
    if getattr(args, "wiener", False):
        opts["wiener"] = True
    return opts
