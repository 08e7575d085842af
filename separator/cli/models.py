"""``separator models list | pull | verify``: the models this machine has, and getting more."""
from __future__ import annotations

import argparse
import json
import sys


def _rows(model_dir: str | None) -> list[dict]:
    from ..core import registry
    return [row.as_dict() for row in registry.listings(model_dir)]


USES = (("IsAudio, IsBackground, AudioAndBackground", "AudioAndBackground"), ("MusicMode", "MusicMode"))


def cmd_list(args: argparse.Namespace) -> int:
    from ..core.registry import default_model

    rows = _rows(args.model_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    defaults = {use: default_model(mode, args.model_dir) for use, mode in USES}
    installed = {r["name"] for r in rows if r["installed"]}
    width = max(26, *(len(r["name"]) + 1 for r in rows))
    sw = max(12, *(len(",".join(r["sources"])) for r in rows))
    print(f"{'model':{width}s} {'family':9s} {'stems':{sw}s} {'installed':9s} {'MB':>7s}  where")
    for r in rows:
        mark = "*" if r["name"] in defaults.values() and r["installed"] else " "
        size = f"{r['size_mb']:.1f}" if r.get("size_mb") else "-"
        print(f"{mark}{r['name']:{width - 1}s} {r['family']:9s} {','.join(r['sources']) or '?':{sw}s} "
              f"{'yes' if r['installed'] else 'no':9s} {size:>7s}  {r['location']}")
    print("\n* = used when a job names no model:")
    for use, name in defaults.items():
        note = "" if name in installed else " (not installed: jobs in this mode fail until it is pulled)"
        print(f"  {use}: {name}{note}")
    return 0


def _repo_of(name: str):
    from ..core import registry
    from ..errors import ModelUnavailable

    repos = registry.weight_repos()
    for repo in repos.values():
        if name in repo.catalogue_names():
            return repo
    known = sorted(n for repo in repos.values() for n in repo.catalogue_names())
    raise ModelUnavailable(f"no model {name!r} to download; known models: {', '.join(known)} "
                           "(`separator models list` shows them)")


def cmd_pull(args: argparse.Namespace) -> int:
    repo = _repo_of(args.name)
    for path in repo.pull(args.name, args.model_dir, progress=sys.stderr.isatty(), force=args.force):
        print(path)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..core import registry

    if args.names:
        by_repo: dict = {}
        for name in args.names:
            by_repo.setdefault(_repo_of(name), []).append(name)
        checks = [c for repo, names in by_repo.items() for c in repo.verify(args.model_dir, names)]
    else:
        checks = [c for repo in registry.weight_repos().values() for c in repo.verify(args.model_dir, None)]
    for c in checks:
        print(f"{c.status:10s} {c.path.name}  {c.detail}")
    if not checks:
        print("no downloaded model weights installed (the bundled spleeter-2stems needs none)")
    return 1 if any(not c.ok for c in checks) else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, download and verify separation models",
                       description="Models: the bundled spleeter-2stems (always installed), and the "
                       "Demucs and RoFormer families, whose weights live in a local model directory "
                       "($SEPARATOR_MODEL_DIR, default ~/.cache/separator/models; RoFormer "
                       "checkpoints in its roformer/ folder).")
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
    q.add_argument("name", help="model name, e.g. htdemucs or model_bs_roformer_ep_317_sdr_12.9755")
    q.add_argument("--force", action="store_true", help="download again even if present")
    q.set_defaults(func=cmd_pull)

    q = msub.add_parser("verify", help="check installed weight files against their checksums",
                        description="Check every installed weight file (or those of NAMES): present, "
                        "complete, and matching the checksum in its name. Exit status 1 if any is not.")
    common(q)
    q.add_argument("names", nargs="*", help="models to check (default: all installed)")
    q.set_defaults(func=cmd_verify)
