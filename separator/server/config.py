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
See :mod:`separator.workers.ray`.

The file is checked against :class:`FileConfig` before anything starts: types are strict (a
string is not a bool, so ``anonymous = "false"`` is refused rather than read as true; a float
is not an int), unknown keys are refused by name (also in ``[[keys]]``, ``[queue]``,
``[queue.NotifyConfig]`` and ``[models]``, whose keys are AudioModes), and a bad file raises
:class:`ConfigError`, one line: ``<file>: <what is wrong>``.  ``separator serve`` also checks
that the ``[models]`` names exist and warns about ones whose weights are not installed
(:func:`separator.server.main.check_models`).
"""
from __future__ import annotations

import os
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..protocol import AudioMode
from ..workers.pool import MAX_ATTEMPTS
from ..request.parse import is_http_url


class ConfigError(ValueError):
    """A configuration ``separator serve`` cannot use; ``str()`` is one line saying where
    (the file, or the option) and what is wrong."""


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
    max_attempts: int = MAX_ATTEMPTS  # a job whose worker crashes is run at most this many times
    # "module:function" with run_job's signature; tests point this at a fake fast engine
    engine: str = "separator.jobs.job:run_job"
    engine_options: dict[str, Any] = field(default_factory=dict)
    ray_address: str | None = None   # run jobs on this Ray cluster ("auto", "HOST:PORT"); None: locally
    ray_cpus_per_worker: float = 1.0

    @property
    def state_dir(self) -> Path:
        """Server state beside the buckets (``.separator`` can never be a bucket name)."""
        return Path(self.storage) / ".separator"


# -- the file --------------------------------------------------------------------------------------
# Every field is optional: what the file leaves out keeps ServerConfig's default (or the flag's).

class _Closed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class KeyPair(_Closed):
    secret_id: str = Field(min_length=1, validation_alias=AliasChoices("SecretId", "secret_id"))
    secret_key: str = Field(min_length=1, validation_alias=AliasChoices("SecretKey", "secret_key"))


class NotifySettings(_Closed):
    """``[queue] NotifyConfig``: the speech queue's callback, as ``PUT /asrqueue`` sets it."""
    Url: str | None = None
    Event: str | None = None
    Type: Literal["Url", "TDMQ"] | None = None
    State: Literal["On", "Off"] | None = None
    ResultFormat: Literal["XML", "JSON"] | None = None
    MqMode: str | None = None
    MqRegion: str | None = None
    MqName: str | None = None

    @field_validator("Url")
    @classmethod
    def _http_only(cls, url: str | None) -> str | None:
        if url and not is_http_url(url):
            raise ValueError("must be an http(s) URL")
        return url


class QueueSettings(_Closed):
    name: str | None = Field(None, min_length=1, max_length=128)
    NotifyConfig: NotifySettings | None = None


class FileConfig(_Closed):
    """What a ``--config`` file may hold (see the module docstring)."""
    anonymous: bool | None = None
    region: str | None = Field(None, pattern=r"^[a-z0-9-]+$")
    appid: str | None = Field(None, pattern=r"^[0-9]+$")
    host: str | None = Field(None, min_length=1)
    port: int | None = Field(None, ge=0, le=65535)
    workers: int | None = Field(None, ge=1)
    device: str | None = Field(None, pattern=r"^(cpu|cuda(:[0-9]+)?)$")
    max_body_bytes: int | None = Field(None, ge=1)
    max_object_bytes: int | None = Field(None, ge=1)
    callback_timeout: float | None = Field(None, gt=0)
    callback_retries: int | None = Field(None, ge=0)
    callback_backoff: float | None = Field(None, ge=0)
    time_skew: int | None = Field(None, ge=0)
    max_attempts: int | None = Field(None, ge=1)
    engine: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")
    engine_options: dict[str, Any] | None = None     # passed to the engine as it is
    ray_address: str | None = Field(None, min_length=1)
    ray_cpus_per_worker: float | None = Field(None, gt=0)
    keys: list[KeyPair] | None = None
    models: dict[AudioMode, str] | None = None
    queue: QueueSettings | None = None

    @field_validator("keys", mode="before")
    @classmethod
    def _one_table(cls, keys: Any) -> Any:  # ``[keys]`` (one table) as well as ``[[keys]]``
        return [keys] if isinstance(keys, dict) else keys

    @field_validator("models")
    @classmethod
    def _names(cls, models: dict[str, str] | None) -> dict[str, str] | None:
        for mode, name in (models or {}).items():
            if not name:
                raise ValueError(f"{mode}: the model name is empty")
        return models


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(err: ValidationError) -> str:
    """One line for all of pydantic's complaints: ``where: what`` joined by ``; ``."""
    found = []
    for e in err.errors():
        loc = tuple(e["loc"])
        if loc and loc[-1] == "[key]":          # a dict key, e.g. [models] Karaoke
            allowed = e["msg"].replace("Input should", "it should")
            found.append(f"{_where(loc[:-1])}: unknown key ({allowed})")
        elif e["type"] == "extra_forbidden":
            found.append(f"{_where(loc)}: unknown key")
        elif e["type"] == "missing":
            found.append(f"{_where(loc)}: required")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            found.append(f"{_where(loc)}: {msg} (got {repr(e['input'])[:60]})")
    return "; ".join(found)


def read_file(path: str | os.PathLike[str]) -> FileConfig:
    """The checked content of a TOML or YAML (``.yaml``/``.yml``) config file."""
    p = Path(path)
    kind = "YAML" if p.suffix.lower() in (".yaml", ".yml") else "TOML"
    try:
        text = p.read_bytes()
        if kind == "YAML":
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text.decode("utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror or err})") from None
    except Exception as err:  # TOMLDecodeError, YAMLError, UnicodeDecodeError
        raise ConfigError(f"{path}: not valid {kind}: " + " ".join(str(err).split())) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a table/mapping")
    try:
        return FileConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path}: {_describe(err)}") from None


def build_config(storage: str | os.PathLike[str], *, config_file: str | None = None,
                 **overrides: Any) -> ServerConfig:
    """A :class:`ServerConfig` from a file (if any; :class:`ConfigError` when it is bad) and
    explicit overrides (non-None win)."""
    cfg = ServerConfig(storage=Path(storage).resolve())
    if config_file:
        file = read_file(config_file)
        for name in file.model_fields_set:
            value = getattr(file, name)
            if value is None:
                continue
            if name == "keys":
                cfg.keys = {pair.secret_id: pair.secret_key for pair in value}
            elif name == "models":
                cfg.models = dict(value)
            elif name == "queue":
                cfg.queue_name = value.name or cfg.queue_name
                if value.NotifyConfig is not None:
                    cfg.queue_notify = value.NotifyConfig.model_dump(exclude_none=True)
            elif name == "engine_options":
                cfg.engine_options = dict(value)
            else:
                setattr(cfg, name, value)
    for name, value in overrides.items():
        if value is not None:
            setattr(cfg, name, value)
    return cfg
