"""``separator serve``: the cloud's job API on localhost."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from ..server.main import build_parser

    p = sub.add_parser("serve", help="serve the cloud's VoiceSeparate job API on localhost",
                       description="Serve the VoiceSeparate job, template and queue API and the COS "
                       "object calls the official SDK makes, on a local storage root. Jobs run in "
                       "worker processes; jobs, templates and queues persist in SQLite.")
    build_parser(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..server.main import main

    return main(args)
