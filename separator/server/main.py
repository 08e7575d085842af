"""Command line of ``separator serve`` (also ``python -m separator.server``)."""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ServerConfig


log = logging.getLogger("separator.server")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the ``serve`` options to ``parser`` (a sub-command parser) or a new one."""
    p = parser or argparse.ArgumentParser(prog="separator serve",
                                          description="Serve the VoiceSeparate job API and COS object "
                                                      "calls on a local storage root.")
    p.add_argument("--storage", required=True, help="storage root: <root>/<BucketName-APPID>/<key>")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080; 0 = any free port)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per GPU, else one); with --ray-address, "
                        "the most Ray actors to use")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="run jobs on Ray actors on this cluster ('auto' or HOST:PORT; needs "
                        "pip install 'separator[ray]'): one per GPU, else one per ray_cpus_per_worker "
                        "CPUs. The storage root must be shared by every node at the same path")
    p.add_argument("--config", default=None, help="TOML or YAML file: keys, anonymous, region, models, …")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def setup_logging(log_level: str) -> None:
    # force: ``separator serve`` arrives here with the CLI's logging already set up (WARNING),
    # which would make a plain basicConfig do nothing and --log-level mean nothing
    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)


def prepare_storage(root: Path) -> None:
    """Make the storage root (and its state folder) if missing, and check it can be written:
    a ConfigError now instead of a traceback from deep inside the service later."""
    from .config import ConfigError

    if root.exists() and not root.is_dir():
        raise ConfigError(f"--storage {root}: not a directory")
    try:
        (root / ".separator").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root / ".separator"):
            pass
    except OSError as err:
        raise ConfigError(f"--storage {root}: cannot write there ({err.strerror or err})") from None


def check_models(cfg: ServerConfig, source: str | None) -> None:
    """The ``[models]`` a config pins: an unknown name is a ConfigError; one whose weights are
    not on this machine gets a warning (its jobs would fail) saying how to get them."""
    from .config import ConfigError

    if not cfg.models:
        return
    from ..core import registry
    from ..core.weights import model_dir as weights_dir
    from ..errors import CIError

    model_dir = cfg.engine_options.get("model_dir")
    model_dir = model_dir if isinstance(model_dir, str) else None
    installed = registry.installed_models(model_dir)
    for mode, name in cfg.models.items():
        try:
            spec = registry.get_spec(name, model_dir)
        except CIError as err:
            raise ConfigError(f"{source}: models.{mode}: {err.message}") from None
        if name not in installed and not spec.location:     # a config path names files that exist
            log.warning("model %s (pinned for %s in [models] of %s) is not installed, so %s jobs will "
                        "fail: run `separator models pull %s` (needs network), or copy its files into "
                        "the model directory %s (`separator models list` names them)", name, mode, source, mode,
                        name, weights_dir(model_dir))


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The checked configuration (ConfigError, or RayUnavailable (a RuntimeError) when
    --ray-address is given without the extra)."""
    from .config import build_config

    cfg = build_config(args.storage, config_file=args.config, host=args.host, port=args.port,
                       workers=args.workers, ray_address=getattr(args, "ray_address", None))
    prepare_storage(cfg.storage)
    check_models(cfg, args.config)
    if cfg.ray_address:
        from ..workers.ray import import_ray

        import_ray()  # without the extra: RayUnavailable, reported below with the pip command
    return cfg


def run_server(cfg: ServerConfig, *, log_level: str = "info") -> None:
    """Run until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    import uvicorn

    from .app import create_app

    setup_logging(log_level)
    if cfg.anonymous:
        banner = "!" * 78
        log.warning("%s\n  ANONYMOUS ACCESS IS ON: requests are NOT authenticated; anyone who can reach "
                    "%s:%s can read, write and delete objects and submit jobs.\n%s",
                    banner, cfg.host, cfg.port, banner)
    elif not cfg.keys:
        log.warning("no key pairs are configured ([[keys]] SecretId/SecretKey in --config): "
                    "every request will be refused with 403")
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines", cfg.host)
    app = create_app(cfg)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=log_level, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT after its graceful shutdown
        pass


def serve(argv: Sequence[str] | None = None) -> int:
    """``separator serve [--storage ROOT] [--host H] [--port P] [--workers N] [--ray-address ADDR]
    [--config FILE]``."""
    return main(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))


def main(args: argparse.Namespace) -> int:
    """For a CLI that already parsed the options with :func:`build_parser`.  A configuration
    that cannot be used ends here: one line ``error: …`` on stderr, exit status 2."""
    from .config import ConfigError

    log_level = getattr(args, "log_level", "info")
    setup_logging(log_level)  # before the checks: check_models warns
    try:
        cfg = config_from_args(args)
    except (ConfigError, RuntimeError) as err:  # RuntimeError: RayUnavailable
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_server(cfg, log_level=log_level)
    return 0
