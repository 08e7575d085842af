"""``python -m separator.batch SOURCE OUTPUT …``: the same as ``separator batch SOURCE OUTPUT …``."""
import sys

from ..cli import main

argv = sys.argv[1:]
flags = [a for a in argv if a in ("-v", "--verbose", "--debug")]
rest = [a for a in argv if a not in flags]
sys.exit(main([*flags, "batch", *(rest[1:] if rest[:1] == ["batch"] else rest)]))
