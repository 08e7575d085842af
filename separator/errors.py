"""Errors in the cloud's vocabulary.

Every failure a user can cause is raised as :class:`CIError` with one of the
error codes of the VoiceSeparate protocol (spec §7).  The CLI, the Python API
and the HTTP service all turn it into the protocol's error body or a
``State=Failed`` JobsDetail; nothing else leaks out.
"""
from __future__ import annotations


class CIError(Exception):
    """A protocol-level error: ``Code`` + ``Message`` (+ HTTP status)."""

    def __init__(self, code: str, message: str, *, status: int = 400, resource: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.resource = resource


def invalid_argument(message: str, resource: str | None = None) -> CIError:
    """The protocol's ``InvalidArgument`` (400): a value the request got wrong; ``resource``
    names the node (``Operation.Output.Bucket``) or option."""
    return CIError("InvalidArgument", message, status=400, resource=resource)


class InputError(CIError):
    """The input object cannot be used (missing, not media, no audio stream, truncated)."""

    def __init__(self, message: str, code: str = "InvalidInput"):
        super().__init__(code, message, status=400)


class ModelUnavailable(CIError):
    """A model the job needs is not installed / cannot be loaded."""

    def __init__(self, message: str):
        super().__init__("ModelUnavailable", message, status=400)
