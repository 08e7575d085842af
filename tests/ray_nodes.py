"""Starting and stopping Ray nodes on loopback for the tests (shared by the batch and the
service tests).  Each node runs ``ray start --block`` in its own process group, so a test
kills exactly its own processes (``ray stop`` would stop every Ray process on the machine)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def two_node_cluster() -> Iterator[dict]:
    """A head and a second node (1 CPU each) on 127.0.0.1; yields address, head, node2, env,
    temp.  Health checks are tightened so a killed node is noticed within a few seconds."""
    temp = Path(tempfile.mkdtemp(prefix="sepray-", dir="/tmp"))   # short: Ray's socket paths
    port, client_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0",
               # notice a dead node within a few seconds (defaults: about 30 s)
               RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
               RAY_health_check_initial_delay_ms="1000", RAY_health_check_timeout_ms="1000")
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    logs = []
    procs: list[subprocess.Popen] = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        log = open(temp / f"{name}.log", "wb")
        logs.append(log)
        p = subprocess.Popen([RAY, "start", *args, *common], stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        procs.append(p)
        return p

    try:
        head = start(["--head", f"--port={port}", f"--ray-client-server-port={client_port}",
                      "--include-dashboard=false", f"--temp-dir={temp / 'ray'}"], "head")
        deadline = time.monotonic() + 60
        while alive_nodes(address, env) < 1:
            assert head.poll() is None and time.monotonic() < deadline, (temp / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        node2 = start([f"--address={address}"], "node2")
        while alive_nodes(address, env) < 2:
            assert node2.poll() is None and time.monotonic() < deadline, (temp / "node2.log").read_text()[-3000:]
            time.sleep(0.5)
        yield {"address": address, "head": head, "node2": node2, "env": env, "temp": temp}
    finally:
        for p in reversed(procs):
            stop(p)
        for log in logs:
            log.close()
        shutil.rmtree(temp, ignore_errors=True)
