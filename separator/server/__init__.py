"""``separator serve``: the VoiceSeparate job service and the COS object calls on localhost.

Start it with :func:`separator.server.main.serve` (``argv`` list) or ``python -m separator.server``.
"""
__all__ = ["ServerConfig", "build_config", "serve", "run_server", "build_parser"]


def __getattr__(name: str):  # lazy: importing the package imports neither pydantic nor Starlette
    if name in ("ServerConfig", "build_config"):
        from . import config
        return getattr(config, name)
    if name in ("serve", "run_server", "build_parser"):
        from . import main
        return getattr(main, name)
    raise AttributeError(name)
