"""Batch separation of whole folders, globs and manifests, on local workers or a Ray cluster.

    from separator.batch import BatchOptions, Defaults, run_batch
    report = run_batch(BatchOptions("music/", "separated/", Defaults(codec="mp3"), workers=2))
    print(report.totals)

See :mod:`.plan` (sources, manifests), :mod:`separator.naming` (output templates), :mod:`.state`
(resume), :mod:`.runner` (summary, exit statuses), :mod:`.worker` (what a worker runs); the
workers themselves are :mod:`separator.workers`' pools.
"""
import importlib

#: name -> the module that defines it (imported on first use: the command line's help needs
#: none of them, and importing the runner brings in the whole request layer)
_NAMES = {"MEDIA_EXTENSIONS": "plan", "BatchItem": "plan", "Defaults": "plan",
          "Plan": "plan", "build_plan": "plan", "BatchError": "runner", "BatchOptions": "runner",
          "BatchReport": "runner", "run_batch": "runner"}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
