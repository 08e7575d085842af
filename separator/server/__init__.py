"""``separator serve``: the VoiceSeparate job service and the COS object calls on localhost.

Start it with :func:`separator.server.main.serve` (``argv`` list) or ``python -m separator.server``.
"""
from .config import ServerConfig, build_config

__all__ = ["ServerConfig", "build_config", "serve", "run_server", "build_parser"]


def __getattr__(name: str):  # lazy: importing the package does not import Starlette/uvicorn
    if name in ("serve", "run_server", "build_parser"):
        from . import main
        return getattr(main, name)
    raise AttributeError(name)
