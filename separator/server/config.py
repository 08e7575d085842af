"""``separator serve`` configuration: command-line flags plus an optional TOML/YAML file.

Example (TOML)::

    anonymous = false                 # true: accept unsigned requests (loud warning at start)
    region = "ap-guangzhou"           # used when the Host does not name one
    appid = "1250000000"
    workers = 1
    device = "cpu"                    # or "cuda", "cuda:0"; default: auto
    max_body_bytes = 1048576          # CI XML bodies
    max_object_bytes = 5368709120     # one PUT / one part
    callback_timeout = 5.0            # seconds per attempt
    callback_retries = 3              # attempts after the first one
    time_skew = 900                   # seconds of clock skew tolerated on q-sign-time
    ray_address = "auto"              # run jobs on Ray actors (pip install 'separator[ray]'); see below
    ray_cpus_per_worker = 1           # CPUs per Ray actor when the cluster has no GPU

    [[keys]]
    SecretId = "AKIDexample"
    SecretKey = "secret"

    [models]                          # AudioMode -> model name (default: the engine's choice)
    MusicMode = "htdemucs"

    [queue]
    name = "speech-queue"
    NotifyConfig = { Url = "http://127.0.0.1:9000/cb", ResultFormat = "JSON" }

``ray_address`` (or ``--ray-address``; ``auto`` = the cluster this machine belongs to): jobs run
on Ray actors instead of local worker processes: one per GPU, else one per
``ray_cpus_per_worker`` CPUs, at most ``workers`` when given.  The job store, priorities,
pause/resume, cancel and restart recovery stay in this server.  The storage root must be a
shared file system mounted at the **same path on every Ray node** (the actors read inputs and
write outputs there), and ``separator`` with its models must be installed on every node.
See :mod:`separator.jobs.ray_dispatch`.
"""
from __future__ import annotations

import os
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..request.parse import is_http_url


@dataclass
class ServerConfig:
    storage: Path
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int | None = None
    keys: dict[str, str] = field(default_factory=dict)       # SecretId -> SecretKey
    anonymous: bool = False
    region: str = "ap-guangzhou"
    appid: str | None = None
    queue_name: str = "speech-queue"
    queue_notify: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)     # AudioMode -> model
    device: str | None = None
    max_body_bytes: int = 1 << 20
    max_object_bytes: int = 5 << 30
    callback_timeout: float = 5.0
    callback_retries: int = 3
    callback_backoff: float = 0.5
    time_skew: int = 900
    max_attempts: int = 2            # a job whose worker crashes is run at most this many times
    # "module:function" with run_job's signature; tests point this at a fake fast engine
    engine: str = "separator.jobs.job:run_job"
    engine_options: dict[str, Any] = field(default_factory=dict)
    ray_address: str | None = None   # run jobs on this Ray cluster ("auto", "HOST:PORT"); None: locally
    ray_cpus_per_worker: float = 1.0

    @property
    def state_dir(self) -> Path:
        """Server state beside the buckets (``.separator`` can never be a bucket name)."""
        return Path(self.storage) / ".separator"

    def default_workers(self) -> int:
        if self.workers:
            return max(1, int(self.workers))
        try:  # one per GPU, else one using all cores
            import torch
            if (self.device or "").startswith("cuda") or (self.device is None and torch.cuda.is_available()):
                return max(1, torch.cuda.device_count())
        except Exception:  # noqa: BLE001 - torch missing or broken: CPU
            pass
        return 1


_SIMPLE = {"anonymous": bool, "region": str, "appid": str, "device": str, "workers": int,
           "max_body_bytes": int, "max_object_bytes": int, "callback_timeout": float,
           "callback_retries": int, "callback_backoff": float, "time_skew": int, "engine": str,
           "max_attempts": int, "host": str, "port": int, "ray_address": str,
           "ray_cpus_per_worker": float}


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    text = p.read_bytes()
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml
        data = yaml.safe_load(text) or {}
    else:
        data = tomllib.loads(text.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the configuration must be a table/mapping")
    return data


def build_config(storage: str | os.PathLike[str], *, config_file: str | None = None,
                 **overrides: Any) -> ServerConfig:
    """A :class:`ServerConfig` from a file (if any) and explicit overrides (non-None win)."""
    cfg = ServerConfig(storage=Path(storage).resolve())
    if config_file:
        data = load_file(config_file)
        for name, typ in _SIMPLE.items():
            if name in data and data[name] is not None:
                setattr(cfg, name, typ(data[name]))
        keys = data.get("keys") or []
        if isinstance(keys, dict):
            keys = [keys]
        for pair in keys:
            sid = pair.get("SecretId") or pair.get("secret_id")
            skey = pair.get("SecretKey") or pair.get("secret_key")
            if not sid or not skey:
                raise ValueError(f"{config_file}: every [[keys]] entry needs SecretId and SecretKey")
            cfg.keys[str(sid)] = str(skey)
        cfg.models = {str(k): str(v) for k, v in (data.get("models") or {}).items()}
        queue = data.get("queue") or {}
        cfg.queue_name = str(queue.get("name", cfg.queue_name))
        cfg.queue_notify = {str(k): str(v) for k, v in (queue.get("NotifyConfig") or {}).items()}
        if cfg.queue_notify.get("Url") and not is_http_url(cfg.queue_notify["Url"]):
            raise ValueError(f"{config_file}: [queue] NotifyConfig.Url must be an http(s) URL")
        cfg.engine_options = dict(data.get("engine_options") or {})
    for name, value in overrides.items():
        if value is not None:
            setattr(cfg, name, value)
    return cfg
