"""The XML bodies the server itself reads and writes (templates, queues, multipart upload).

Both directions go through :mod:`separator.request.xmltree` (defusedxml with DTDs, entities and
external references forbidden, and a depth limit), plus a size limit here, so a hostile body
(billion laughs, XXE, deep nesting, huge) is refused with 400 ``InvalidContent`` (or
``MalformedXML`` for the COS calls) before anything is expanded.
"""
from __future__ import annotations

from typing import Any

from ..errors import CIError
from ..request.xmltree import parse_tree, to_xml  # noqa: F401  (to_xml re-exported)


def parse_xml(body: bytes, root: str, *, code: str = "InvalidContent", limit: int = 1 << 20) -> dict[str, Any]:
    """The content of ``<root>`` as a dict tree (stripped text leaves, repeated siblings as lists)."""
    if not body or not body.strip():
        raise CIError("MissingContent", "the request body is empty")
    if len(body) > limit:
        raise CIError(code, f"the request body is larger than {limit} bytes")
    return parse_tree(body, root, code=code, strip=True)


def as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]
