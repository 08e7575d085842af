"""What runs in a batch worker (a local process, a Ray actor, or the driver with
``--workers 0``): separate one :class:`BatchItem`.  :func:`process_item` is the batch's
worker-pool runner (see :mod:`separator.workers`).

The model is loaded by the first item and stays loaded (the registry caches it per process),
so a worker pays for it once.  Every failure is returned as data, never raised: a bad input
(``CIError``: InvalidInput, ModelUnavailable, …) or anything unexpected (``InternalError``).
"""
from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable

from ..errors import CIError

RUNNER = "separator.batch.worker:process_item"


def process_item(context: dict, item, progress: Callable[[float], None] | None = None) -> dict:
    """Separate ``item`` on ``context["device"]``; return a result dict (``status`` ok/failed;
    outputs with size and md5).  ``progress(seconds)`` is told the seconds of audio separated
    so far (the pool passes it on at most about once a second)."""
    from ..jobs.engine import separate_file
    from ..request.model import AudioConfig
    from ..storage.local import file_md5

    device = context.get("device")
    started = time.perf_counter()
    res: dict = {"index": item.index, "worker": f"{socket.gethostname()}:{os.getpid()}",
                 "device": device}

    def on_frames(done: float, _total: float) -> None:
        if progress is not None:
            progress(done)

    try:
        result = separate_file(item.input, item.targets, mode=item.mode,
                               audio_config=AudioConfig(**item.audio_config), model=item.model or None,
                               device=device, progress=on_frames,
                               model_options=item.model_options or None)
        outputs = {}
        for role, path in result.outputs.items():
            outputs[role] = {"path": str(path), "size": os.stat(path).st_size, "md5": file_md5(path)}
        res.update(status="ok", outputs=outputs, audio_seconds=float(result.source.duration or 0.0),
                   model=result.model, device=result.device)
    except CIError as e:
        res.update(status="failed", error={"code": e.code, "message": e.message})
    except Exception as e:  # noqa: BLE001 - reported per input, the batch goes on
        res.update(status="failed", error={"code": "InternalError", "message": f"{type(e).__name__}: {e}"},
                   traceback=traceback.format_exc(limit=8))
    res["seconds"] = time.perf_counter() - started
    return res
