"""Batch separation of whole folders, globs and manifests, on local workers or a Ray cluster.

    from separator.batch import BatchOptions, Defaults, run_batch
    report = run_batch(BatchOptions("music/", "separated/", Defaults(codec="mp3"), workers=2))
    print(report.totals)

See :mod:`.plan` (sources, manifests), :mod:`.naming` (output templates), :mod:`.state`
(resume), :mod:`.runner` (summary, exit statuses), :mod:`.worker` (what a worker runs); the
workers themselves are :mod:`separator.workers`' pools.
"""
from .naming import DEFAULT_TEMPLATE
from .plan import MEDIA_EXTENSIONS, BatchItem, Defaults, Plan, build_plan
from .runner import BatchError, BatchOptions, BatchReport, run_batch

__all__ = ["BatchError", "BatchItem", "BatchOptions", "BatchReport", "DEFAULT_TEMPLATE", "Defaults",
           "MEDIA_EXTENSIONS", "Plan", "build_plan", "run_batch"]
