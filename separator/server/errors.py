"""Error responses in the shape the SDK parses (spec §7).

``<Error><Code/><Message/><Resource/><RequestId/><TraceId/></Error>`` with ``Content-Type:
application/xml``; the SDK only understands the body when Code, Message, Resource and
RequestId are all present, so Resource is always filled (the request path when the error has
none).  Every response also carries ``x-cos-request-id`` and ``x-ci-request-id``; a HEAD
response has no body but keeps the headers (``object_exists()`` needs them on a 404).
"""
from __future__ import annotations

import base64
import secrets

from starlette.responses import Response

from ..errors import CIError


def new_request_id() -> str:
    try:
        from ..request.ids import new_request_id as rid
        return rid()
    except Exception:  # noqa: BLE001 - fallback with the same look
        return base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")


def request_headers(request_id: str) -> dict[str, str]:
    return {"x-cos-request-id": request_id, "x-ci-request-id": request_id,
            "x-cos-trace-id": request_id}


def error_body(err: CIError, *, request_id: str, resource: str) -> bytes:
    """The §7 body; Resource is the error's node/key when it names one, else the request path."""
    from ..request import render_error

    return render_error(err, request_id=request_id, resource=err.resource or resource)


def error_response(err: CIError, *, request_id: str, resource: str, head: bool = False) -> Response:
    headers = request_headers(request_id)
    if head:
        # no body, but Content-Length 0 and the ids the SDK reads from headers
        return Response(b"", status_code=err.status, headers=headers, media_type="application/xml")
    return Response(error_body(err, request_id=request_id, resource=resource), status_code=err.status,
                    headers=headers, media_type="application/xml")


def not_found_key(key: str) -> CIError:
    return CIError("NoSuchKey", "The specified key does not exist.", status=404, resource=key)
