"""Command line: ``separator separate | run | models | batch | eval | serve``.

One module per subcommand, the shared options in :mod:`.options`.  Every command ends the
same way (:func:`_call`): a user's mistake is one line on stderr (``error: …``: what was
wrong, the path, what to do) and exit status 2; a job that failed for another reason exits 1;
Ctrl-C ends the command with ``interrupted`` and exit status 130, after the command removed
what it had started to write (temporary files, folders it created) and ended its ffmpeg
children.  A traceback is printed only with ``--debug`` (or ``-v``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from .. import __version__
from ..runtime import configure_process, switched_off
from . import batch, evaluate, models, run, separate, serve
from .options import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Parser, UsageError, os_error, say


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="separator",
        description="Separate the human voice from the background (and, in MusicMode, bass and "
                    "drums) locally, speaking Tencent Cloud Infinite's VoiceSeparate protocol.")
    parser.add_argument("--version", action="version", version=f"separator {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--debug", action="store_true", help="log everything, and print the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (separate, run, models, batch, evaluate, serve):
        command.add_parser(sub)
    return parser


def _call(args: argparse.Namespace) -> int:
    """Run the command; turn every way it can end into one line and an exit status."""
    from ..errors import CIError

    debug = bool(getattr(args, "debug", False) or getattr(args, "verbose", False))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    except (UsageError, CIError, OSError) as err:
        if debug:
            traceback.print_exc()
        if isinstance(err, CIError):
            say(f"error: {err.message}")
            return EXIT_FAILED if err.status >= 500 else EXIT_USAGE
        say(f"error: {os_error(err) if isinstance(err, OSError) else err}")
        return EXIT_USAGE
    except Exception as err:  # a bug: say so in one line; the traceback is for --debug
        if debug:
            traceback.print_exc()
        say(f"error: internal error ({type(err).__name__}: {err}); run again with --debug "
            "to see where, and please report it")
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    rc, _ = _run(argv)
    return rc


def _run(argv: list[str] | None) -> tuple[int, bool]:
    args = build_parser().parse_args(argv)
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
        say("interrupted")
        rc, quick = EXIT_INTERRUPTED, True
    if quick and not switched_off("SEPARATOR_QUICK_EXIT"):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


__all__ = ["build_parser", "entry", "main"]
