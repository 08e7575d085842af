"""Starting and stopping Ray nodes on loopback for the tests (shared by the batch and the
service tests).  Each node runs ``ray start --block`` in its own process group, so a test
kills exactly its own processes (``ray stop`` would stop every Ray process on the machine)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive_nodes(address: str, env: dict) -> int:
    proc = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, text=True,
                          env=env, timeout=30)
    if proc.returncode != 0:
        return 0
    active = proc.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return len(re.findall(r"node_[0-9a-f]+", active))


def stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # daemons of the group may outlive the `ray start` process itself
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
