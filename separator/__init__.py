"""separator: a local engine for Tencent Cloud Infinite's VoiceSeparate job.

    from separator import Separator
    stems = Separator().separate("song.mp3")       # stems["vocals"], stems["background"], stems.samplerate

:class:`Separator` separates files, bytes and arrays in memory and into files;
:func:`separate` separates one file into files; :func:`run_request` runs a cloud-format
request against local storage.  See the README for the command line and the job service.
Importing the package loads nothing heavy: torch comes with the first of these names used.
"""
from importlib import import_module as _import_module

__version__ = "0.1.0"

#: the public names, and the module each lives in
_PUBLIC = {"Separator": "api", "Stems": "api", "separate": "api", "run_request": "api", "CIError": "errors"}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(_import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})
