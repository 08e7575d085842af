"""What runs in a worker (a local process or a Ray actor): separate one :class:`BatchItem`.

The model is loaded by the first item and stays loaded (the registry caches it per process),
so a worker pays for it once.  Every failure is returned as data, never raised: a bad input
(``CIError``: InvalidInput, ModelUnavailable, …) or anything unexpected (``InternalError``).
"""
from __future__ import annotations

import os
import signal
import socket
import time
import traceback

from ..errors import CIError


def setup_worker(threads: int | None = None, *, die_with_parent: bool = False) -> None:
    """Per-process setup: the separating process's settings (:mod:`separator.runtime`), torch
    intra-op threads, and (local workers) die when the driver dies."""
    from ..runtime import configure_process

    configure_process()
    if die_with_parent:
        _set_pdeathsig()
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set / parallel work started
            pass


def _set_pdeathsig() -> None:
    """Linux: SIGKILL this process when its parent exits (so ``kill -9`` of the driver cannot
    leave workers writing).  Elsewhere the progress check in :func:`process_item` does it."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Orphaned(Exception):
    """The driver is gone: stop before writing anything."""


def process_item(item, device: str | None = None, *, parent_pid: int | None = None,
                 on_progress=None) -> dict:
    """Separate ``item``; return a result dict (``status`` ok/failed; outputs with size and md5).
    ``on_progress(seconds)`` is told the seconds of audio separated so far (at most once a second)."""
    from ..jobs.engine import separate_file
    from ..request.model import AudioConfig
    from ..storage.local import file_md5

    started = time.perf_counter()
    res: dict = {"index": item.index, "worker": f"{socket.gethostname()}:{os.getpid()}",
                 "device": device}

    last = [0.0]

    def progress(done: float, _total: float) -> None:
        if parent_pid is not None and os.getppid() != parent_pid:
            raise Orphaned("the batch driver exited")
        now = time.monotonic()
        if on_progress is not None and now - last[0] >= 1.0:
            last[0] = now
            on_progress(done)

    try:
        result = separate_file(item.input, item.targets, mode=item.mode,
                               audio_config=AudioConfig(**item.audio_config), model=item.model or None,
                               device=device, progress=progress,
                               model_options=item.model_options or None)
        outputs = {}
        for role, path in result.outputs.items():
            outputs[role] = {"path": str(path), "size": os.stat(path).st_size, "md5": file_md5(path)}
        res.update(status="ok", outputs=outputs, audio_seconds=float(result.source.duration or 0.0),
                   model=result.model, device=result.device)
    except CIError as e:
        res.update(status="failed", error={"code": e.code, "message": e.message})
    except Orphaned:
        raise
    except Exception as e:  # noqa: BLE001 - reported per input, the batch goes on
        res.update(status="failed", error={"code": "InternalError", "message": f"{type(e).__name__}: {e}"},
                   traceback=traceback.format_exc(limit=8))
    res["seconds"] = time.perf_counter() - started
    return res
