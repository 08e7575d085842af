"""Small XML helpers for the bodies the server itself reads and writes.

Reading uses :mod:`defusedxml` with DTDs, entities and external references forbidden, a size
limit and a depth limit, so a hostile body (billion laughs, XXE, deep nesting) is refused with
400 ``InvalidContent`` (or ``MalformedXML`` for the COS calls) before anything is expanded.
Writing builds an ElementTree from dicts: lists become repeated elements, ``None`` an empty one.
"""
from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as DET

from ..errors import CIError

MAX_DEPTH = 16
XML_DECL = b"<?xml version='1.0' encoding='utf-8' ?>\n"


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else str(tag)


def _tree(el: ET.Element, depth: int, code: str) -> Any:
    if depth > MAX_DEPTH:
        raise CIError(code, f"XML nested deeper than {MAX_DEPTH} levels")
    children = [c for c in el if isinstance(c.tag, str)]
    if not children:
        return (el.text or "").strip()
    out: dict[str, Any] = {}
    for c in children:
        tag, val = _local(c.tag), _tree(c, depth + 1, code)
        if tag in out:
            prev = out[tag]
            out[tag] = (prev if isinstance(prev, list) else [prev]) + [val]
        else:
            out[tag] = val
    return out


def parse_xml(body: bytes, root: str, *, code: str = "InvalidContent", limit: int = 1 << 20) -> dict[str, Any]:
    """The content of ``<root>`` as a dict tree (text leaves, repeated siblings as lists)."""
    if not body or not body.strip():
        raise CIError("MissingContent", "the request body is empty")
    if len(body) > limit:
        raise CIError(code, f"the request body is larger than {limit} bytes")
    try:
        el = DET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        raise CIError(code, f"DTDs, entities and external references are not allowed ({type(e).__name__})") from None
    except (ParseError, ValueError, UnicodeError) as e:
        raise CIError(code, f"the body is not well-formed XML ({e})") from None
    if _local(el.tag) != root:
        raise CIError(code, f"the root element must be <{root}>, got <{_local(el.tag)}>")
    tree = _tree(el, 1, code)
    return tree if isinstance(tree, dict) else {}


def as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


def _build(parent: ET.Element, tag: str, value: Any) -> None:
    if isinstance(value, list):
        for v in value:
            _build(parent, tag, v)
        return
    el = ET.SubElement(parent, tag)
    if isinstance(value, dict):
        for k, v in value.items():
            _build(el, k, v)
    elif value is not None:
        el.text = value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def to_xml(root: str, content: dict[str, Any]) -> bytes:
    el = ET.Element(root)
    for k, v in content.items():
        _build(el, k, v)
    return XML_DECL + ET.tostring(el, encoding="utf-8", xml_declaration=False)
