"""The resume state: ``OUTPUT/.separator-batch.jsonl``.

One JSON line is appended (and fsynced) by the batch driver each time an input has been
separated and *all* of its outputs are in place::

    {"v": 1, "input": "/abs/in/a/song.mp3", "size": 123, "mtime_ns": 1700000000000000000,
     "key": "<hash of mode, AudioConfig, model, model options and output names>",
     "outputs": {"vocals": {"path": "a/song/vocals.m4a", "size": 4567, "md5": "…"}, …},
     "audio_seconds": 201.3, "model": "spleeter-2stems", "device": "cpu", "time": 1700000000.0}

Output paths are relative to OUTPUT.  A later run skips an input when the last line for its
path and settings key has the same input size and mtime, and every recorded output still exists with
the recorded size (and, with ``verify="md5"``, the default, the recorded MD5).  Anything else
(no line, input changed, other settings, an output missing or altered) separates the input
again.  A line cut short by a crash is ignored; failed inputs are not recorded, so they are
tried again.  The file is rewritten compactly (one line per input and settings) when a run starts with
superseded or broken lines in it.

Only one batch may use an OUTPUT at a time: :class:`OutputLock` holds an exclusive
``flock`` on ``OUTPUT/.separator-batch.lock`` (released by the kernel if the process dies).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import CIError
from ..storage.local import TMP_PREFIX, atomic_file, file_md5

STATE_NAME = ".separator-batch.jsonl"
LOCK_NAME = ".separator-batch.lock"
VERSION = 1


class OutputLock:
    """An exclusive, non-blocking lock on an OUTPUT folder for the life of a batch."""

    def __init__(self, output_root: str | os.PathLike):
        self.path = Path(output_root) / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CIError("InvalidArgument", f"another batch is already writing to {self.path.parent} "
                          f"(it holds {self.path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def sweep_temporaries(output_root: str | os.PathLike) -> int:
    """Remove the engine's temporary files (``.separator-tmp-*``) left under OUTPUT by a killed
    worker.  Call only while holding :class:`OutputLock` and with no worker running."""
    removed = 0
    for dirpath, _dirs, files in os.walk(output_root):
        for name in files:
            if name.startswith(TMP_PREFIX):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def input_identity(path: str | os.PathLike) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


class BatchState:
    def __init__(self, output_root: str | os.PathLike):
        self.root = Path(output_root).absolute()
        self.path = self.root / STATE_NAME
        self.records: dict[str, dict] = {}
        self._stale = 0  # superseded or broken lines

    def load(self) -> "BatchState":
        self.records.clear()
        self._stale = 0
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return self
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                k = _rec_key(rec["input"], rec["key"])
                rec["outputs"]
            except (ValueError, KeyError, TypeError):
                self._stale += 1       # cut short by a crash, or not ours
                continue
            if k in self.records:
                self._stale += 1
            self.records[k] = rec
        if not text.endswith("\n") and text:
            self._stale += 1
        return self

    def compact(self) -> None:
        """Rewrite the file with one line per input when it holds superseded or broken lines."""
        if not self._stale:
            return
        with atomic_file(self.path) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                for rec in self.records.values():
                    fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self._stale = 0

    def output_paths(self) -> set[str]:
        """Real paths of every recorded output (so a SOURCE that contains OUTPUT, or is OUTPUT,
        never takes earlier outputs for inputs)."""
        return {os.path.realpath(self.root / o["path"]) for rec in self.records.values()
                for o in rec["outputs"].values() if isinstance(o, dict) and "path" in o}

    def done(self, item, verify: str = "md5") -> dict | None:
        """The record proving ``item`` complete and intact, else ``None``."""
        rec = self.records.get(_rec_key(item.input, item.key))
        if rec is None:
            return None
        try:
            size, mtime_ns = input_identity(item.input)
        except OSError:
            return None
        if rec.get("size") != size or rec.get("mtime_ns") != mtime_ns:
            return None
        outs = rec.get("outputs") or {}
        want = {r: os.path.relpath(p, self.root) for r, p in item.targets.items()}
        if {r: o.get("path") for r, o in outs.items()} != want:
            return None
        for out in outs.values():
            p = self.root / out["path"]
            try:
                if p.stat().st_size != out.get("size"):
                    return None
            except OSError:
                return None
            if verify == "md5" and file_md5(p) != out.get("md5"):
                return None
        return rec

    def record(self, item, result: dict) -> dict:
        """Append the completion line of ``item`` (``result`` from the worker); fsynced."""
        rec = {"v": VERSION, "input": item.input, "size": item.size, "mtime_ns": item.mtime_ns,
               "key": item.key,
               "outputs": {r: {"path": os.path.relpath(o["path"], self.root), "size": o["size"],
                               "md5": o["md5"]} for r, o in result["outputs"].items()},
               "audio_seconds": result.get("audio_seconds"), "model": result.get("model"),
               "device": result.get("device"), "worker": result.get("worker"), "time": time.time()}
        if result.get("node"):
            rec["node"] = result["node"]
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records[_rec_key(item.input, item.key)] = rec
        return rec


def _rec_key(input_path: str, key: str) -> str:
    """Records are per (input, settings + output names): one input may be separated several
    ways (manifest rows), and each is resumed on its own."""
    return f"{input_path}\0{key}"
