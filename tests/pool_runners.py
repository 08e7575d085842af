"""Runners for the worker-pool tests (``"pool_runners:<name>"``): ``runner(context, payload,
progress) -> result``, run inside the pools' workers."""
from __future__ import annotations

import os
import time
from pathlib import Path


def echo(context, payload, progress):
    return {"payload": payload, "context": context, "pid": os.getpid()}


def boom(context, payload, progress):
    raise ValueError(f"boom {payload}")


def held(context, payload, progress):
    """Say it started (``<dir>/<name>.started`` holding the pid), report ``progress(1)``, then
    wait for ``<dir>/<name>.go`` (a generous deadline guards a test that never sends it)."""
    folder = Path(payload["dir"])
    tmp = folder / f"{payload['name']}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(folder / f"{payload['name']}.started")
    progress(1)
    deadline = time.monotonic() + 120
    while not (folder / f"{payload['name']}.go").exists():
        assert time.monotonic() < deadline, "never released"
        time.sleep(0.01)
    return {"name": payload["name"], "pid": os.getpid()}
