"""``separator models list | pull | verify``: the models this machine has, and getting more."""
from __future__ import annotations

import argparse
import json
import sys


def _rows(model_dir: str | None) -> list[dict]:
    from ..core import registry
    from ..core.demucs.repo import list_installed

    rows = []
    for spec in registry.list_models():
        if spec.family == "spleeter":
            rows.append({"name": spec.name, "family": spec.family, "sources": list(spec.sources),
                         "installed": True, "size_mb": None, "location": spec.weights,
                         "origin": "bundled"})
    rows.extend(m.as_dict() for m in list_installed(model_dir))
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    from ..core.registry import default_model

    rows = _rows(args.model_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    defaults = {default_model(m, args.model_dir) for m in ("AudioAndBackground", "MusicMode")}
    print(f"{'model':26s} {'stems':38s} {'installed':9s} {'MB':>7s}  where")
    for r in rows:
        mark = "*" if r["name"] in defaults and r["installed"] else " "
        size = f"{r['size_mb']:.1f}" if r.get("size_mb") else "-"
        print(f"{mark}{r['name']:25s} {','.join(r['sources']) or '?':38s} "
              f"{'yes' if r['installed'] else 'no':9s} {size:>7s}  {r['location']}")
    print("\n* = used by default (best installed for vocals/background, and for MusicMode)")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from ..core.demucs.repo import pull

    for path in pull(args.name, args.model_dir, progress=sys.stderr.isatty(), force=args.force):
        print(path)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..core.demucs.repo import verify

    checks = verify(args.model_dir, args.names or None)
    for c in checks:
        print(f"{c.status:10s} {c.path.name}  {c.detail}")
    bad = [c for c in checks if not c.ok]
    if not checks:
        print("no Demucs weights installed")
    return 1 if bad else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, download and verify separation models",
                       description="Models: the bundled spleeter-2stems (always installed) and the "
                       "Demucs family, whose weights live in a local model directory "
                       "($SEPARATOR_MODEL_DIR, default ~/.cache/separator/models).")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--model-dir", dest="model_dir", help="model directory (default "
                       "$SEPARATOR_MODEL_DIR or ~/.cache/separator/models)")

    q = msub.add_parser("list", help="every known model: stems, installed or not, size, where from")
    common(q)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list)

    q = msub.add_parser("pull", help="download a model and verify its checksums (needs network)",
                        description="Download NAME's weight files into the model directory and check "
                        "their checksums. Offline it fails at once and says which files to copy where.")
    common(q)
    q.add_argument("name", help="model name, e.g. htdemucs")
    q.add_argument("--force", action="store_true", help="download again even if present")
    q.set_defaults(func=cmd_pull)

    q = msub.add_parser("verify", help="check installed weight files against their checksums",
                        description="Check every installed weight file (or those of NAMES): present, "
                        "complete, and matching the checksum in its name. Exit status 1 if any is not.")
    common(q)
    q.add_argument("names", nargs="*", help="models to check (default: all installed)")
    q.set_defaults(func=cmd_verify)
