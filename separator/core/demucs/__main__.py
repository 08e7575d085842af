"""``python -m separator.core.demucs catalogue > models/demucs.yaml``: regenerate the committed
Demucs catalogue from the installed ``demucs`` package's metadata (see :mod:`.catalogue`)."""
from __future__ import annotations

import sys

from .catalogue import dump_demucs_catalogue


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["catalogue"]:
        print("usage: python -m separator.core.demucs catalogue > models/demucs.yaml", file=sys.stderr)
        return 2
    sys.stdout.write(dump_demucs_catalogue())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
