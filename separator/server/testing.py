"""Helpers to run ``separator serve`` in a child process for tests and demos (loopback only)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SECRET_ID = "AKIDlocaltest0000000000000000000000"
SECRET_KEY = "localtestsecretkey0000000000000000"
BUCKET = "test-1250000000"
REGION = "ap-guangzhou"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def write_config(path: Path, *, keys: dict[str, str] | None = None, engine_options: dict[str, Any] | None = None,
                 queue_notify: dict[str, str] | None = None, **settings: Any) -> Path:
    keys = {SECRET_ID: SECRET_KEY} if keys is None else keys
    lines = [f"{k} = {_toml_value(v)}" for k, v in settings.items() if v is not None]
    for sid, skey in keys.items():
        lines += ["[[keys]]", f"SecretId = {_toml_value(sid)}", f"SecretKey = {_toml_value(skey)}"]
    if engine_options:
        lines.append("[engine_options]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in engine_options.items()]
    if queue_notify:
        lines.append("[queue.NotifyConfig]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in queue_notify.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class ServerProcess:
    """``python -m separator.server`` on 127.0.0.1:<free port>; ``stop(kill=True)`` is a SIGKILL."""

    def __init__(self, storage: Path, config: Path, *, workers: int = 1, log: Path | None = None,
                 command: list[str] | None = None):
        self.storage = Path(storage)
        self.config = Path(config)
        self.workers = workers
        # what starts it: ``python -m separator.server`` unless a test goes through the CLI
        # (e.g. ``[sys.executable, "-m", "separator", "serve", "--log-level", "info"]``)
        self.command = command or [sys.executable, "-m", "separator.server"]
        self.port = free_port()
        self.log = log or (self.storage.parent / f"server-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> ServerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._logfh = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [*self.command, "--storage", str(self.storage), "--port", str(self.port),
             "--workers", str(self.workers), "--config", str(self.config)],
            stdout=self._logfh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"server did not start:\n{self.log.read_text()[-4000:]}")

    def worker_pids(self) -> dict[str, int]:
        try:
            return json.loads((self.storage / ".separator" / "workers.json").read_text())
        except (OSError, ValueError):
            return {}

    def stop(self, *, kill: bool = False, timeout: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                # the server and its workers (workers also die with their parent: PR_SET_PDEATHSIG)
                with_pids = list(self.worker_pids().values())
                self.proc.send_signal(signal.SIGKILL)
                for pid in with_pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            else:
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logfh.close()
        self.proc = None

    def client(self, *, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY, region: str = REGION,
               retry: int = 0, **kw: Any):
        from qcloud_cos import CosConfig, CosS3Client

        conf = CosConfig(Region=region, SecretId=secret_id, SecretKey=secret_key, Scheme="http",
                         IP="127.0.0.1", Port=self.port, **kw)
        return CosS3Client(conf, retry=retry)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
