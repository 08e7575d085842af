"""Hashing a file in 1 MiB blocks (MD5 for object ETags/Md5Info, SHA-256 for weight files)."""
from __future__ import annotations

import hashlib
import os


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
