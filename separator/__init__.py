"""separator: a local engine for Tencent Cloud Infinite's VoiceSeparate job.

``separate()`` separates one file; ``run_request()`` runs a cloud-format request against
local storage.  See the README for the command line and the job service.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["CIError", "__version__", "run_request", "separate"]


def __getattr__(name: str):
    # Imported lazily so that `separator --help` does not pay for torch.
    if name in ("separate", "run_request"):
        from . import api
        return getattr(api, name)
    if name == "CIError":
        from .errors import CIError
        return CIError
    raise AttributeError(name)
