"""Safe XML <-> dict trees: the one XML reader and writer of the project.

Reading uses defusedxml (no DTDs, entities or external references: billion-laughs and XXE
bodies are refused, never expanded) with a nesting limit; repeated siblings become lists,
namespaces are dropped.  Writing uses the standard library's ElementTree and removes the
characters XML 1.0 forbids.  Used by the request layer and by the server's own bodies
(templates, queues, multipart upload).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from xml.etree import ElementTree as ET
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as DET

from ..errors import CIError

XML_HEADER = '<?xml version="1.0" encoding="utf-8"?>\n'
MAX_DEPTH = 16
_XML_BAD = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def local_name(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else str(tag)


def _element_tree(el: ET.Element, depth: int, code: str, strip: bool) -> Any:
    if depth > MAX_DEPTH:
        raise CIError(code, f"XML nested deeper than {MAX_DEPTH} levels")
    children = [c for c in el if isinstance(c.tag, str)]  # skip comments / processing instructions
    if not children:
        text = el.text or ""
        return text.strip() if strip else text
    out: dict[str, Any] = {}
    for c in children:
        tag, val = local_name(c.tag), _element_tree(c, depth + 1, code, strip)
        if tag in out:
            prev = out[tag]
            out[tag] = (prev if isinstance(prev, list) else [prev]) + [val]
        else:
            out[tag] = val
    return out


def parse_tree(data: bytes | str, root: str, *, code: str = "InvalidContent",
               root_code: str | None = None, strip: bool = False) -> dict[str, Any]:
    """The content of the ``<root>`` element of ``data`` as a dict tree (text leaves).

    Malformed XML, a DTD/entity, or nesting deeper than ``MAX_DEPTH`` raise ``CIError(code)``;
    a different root element raises ``CIError(root_code or code)``.
    """
    try:
        el = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        raise CIError(code, "MalformedXML: DTDs, entities and external references are not "
                      f"allowed ({type(e).__name__})") from None
    except (ParseError, ValueError, UnicodeError) as e:
        raise CIError(code, f"MalformedXML: the body is not well-formed XML ({e})") from None
    if local_name(el.tag) != root:
        raise CIError(root_code or code, f"the root element must be <{root}>, got <{local_name(el.tag)}>",
                      resource=local_name(el.tag))
    tree = _element_tree(el, 1, code, strip)
    return tree if isinstance(tree, dict) else {}


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fill(parent: ET.Element, tag: str, value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _fill(parent, tag, item)
        return
    el = ET.SubElement(parent, tag)
    if isinstance(value, dict):
        for k, v in value.items():
            _fill(el, k, v)
    elif value not in (None, ""):
        el.text = _XML_BAD.sub("", text(value))


def to_xml(root_tag: str, tree: dict, *, keep_empty_lists: Iterable[str] = ()) -> bytes:
    """Write ``{child: value}`` under ``<root_tag>`` (lists as repeated elements, ``None`` and
    ``""`` as empty elements); names in ``keep_empty_lists`` render as one empty element when
    their list is empty (``<JobsDetail/>``)."""
    root = ET.Element(root_tag)
    for k, v in tree.items():
        if isinstance(v, list) and not v and k in keep_empty_lists:
            ET.SubElement(root, k)
        else:
            _fill(root, k, v)
    return (XML_HEADER + ET.tostring(root, encoding="unicode")).encode("utf-8")
