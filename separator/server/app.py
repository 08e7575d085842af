"""The HTTP layer: one Starlette app that speaks CI's VoiceSeparate API and the COS object calls.

Routing (spec §9.1): the SDK sends ``Host: <bucket>.cos.<region>.myqcloud.com`` even for CI
calls, so the bucket (and region) come from the Host, or for COS calls with a Host that
names none (an IP) from the path, ``/<bucket>/<key>`` (see :func:`path_style`); CI and COS
calls are told apart **by path** — ``/jobs``, ``/template``, ``/asrqueue`` (and the other CI
prefixes) are CI; every other path is an object key.  Every request is authenticated first
(§8) unless the config turns anonymous access on.  Every response carries
``x-cos-request-id``/``x-ci-request-id``; errors have the §7 body.
"""
from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import CIError
from ..request import (
    render_response, render_template, render_template_deleted, render_template_list,
)
from ..storage import validate_bucket
from ..storage.local import BUCKET_RE
from .config import ServerConfig
from .errors import error_response, new_request_id, request_headers
from .objects import ObjectAPI, ObjectMeta
from .service import JobService
from .signature import query_pairs, verify
from .xmlio import parse_xml, to_xml

log = logging.getLogger(__name__)

HOST_RE = re.compile(r"^(?P<bucket>[^.]+)\.(?:cos|ci)\.(?P<region>[a-z0-9-]+)\.myqcloud\.com(?::\d+)?$",
                     re.IGNORECASE)
CI_PREFIXES = ("/jobs", "/template", "/asrqueue", "/queue", "/asrbucket", "/asr_jobs", "/workflow",
               "/inventorytriggerjob", "/jobs_batch")
XML = "application/xml"


def is_ci_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in CI_PREFIXES)


def path_style(path: str) -> tuple[str | None, str]:
    """``/<bucket>/<key>`` → (bucket, ``/<key>``), or (None, path) when the path does not start
    with a bucket name.  A Host without a bucket (an IP) leaves the bucket to the path: the
    SDK's presigned URLs with ``CosConfig(IP=...)`` are ``http://IP:Port/<Key>``, signed over
    ``/<Key>``, so a Key of ``<bucket>/<key>`` gives this form (and verifies as signed)."""
    first, _, rest = path[1:].partition("/")
    return (first, "/" + rest) if BUCKET_RE.match(first) else (None, path)


def bucket_region(host: str, default_region: str) -> tuple[str | None, str]:
    m = HOST_RE.match(host or "")
    if not m:
        return None, default_region
    return m.group("bucket").lower(), m.group("region").lower()


class App:
    def __init__(self, cfg: ServerConfig, service: JobService):
        self.cfg = cfg
        self.service = service
        self.objects = ObjectAPI(service.storage, ObjectMeta(service.store.path), cfg.state_dir,
                                 max_object_bytes=cfg.max_object_bytes)

    # -- entry point ----------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        rid = new_request_id()
        path = request.scope["path"] or "/"
        head = request.method == "HEAD"
        try:
            query = query_pairs(request.scope.get("query_string", b""))
            self.authenticate(request, path, query)
            q = {k: v for k, v in query}
            bucket, region = bucket_region(request.headers.get("host", ""), self.cfg.region)
            if is_ci_path(path):
                resp = await self.ci(request, path, q, bucket, region, rid)
            elif bucket is None:
                bucket, key_path = path_style(path)
                resp = await self.cos(request, key_path, q, bucket)
            else:
                resp = await self.cos(request, path, q, bucket)
        except CIError as err:
            if err.status >= 500:
                log.error("%s %s -> %s %s", request.method, path, err.code, err.message)
            resp = error_response(err, request_id=rid, resource=path, head=head)
        except Exception as err:  # a bug: report it as the protocol's InternalError
            log.exception("%s %s failed", request.method, path)
            resp = error_response(CIError("InternalError", f"internal error: {type(err).__name__}", status=500),
                                  request_id=rid, resource=path, head=head)
        for k, v in request_headers(rid).items():
            resp.headers.setdefault(k, v)
        return resp

    def authenticate(self, request: Request, path: str, query: list[tuple[str, str]]) -> None:
        if self.cfg.anonymous:
            return
        headers = {k.lower(): v for k, v in request.headers.items()}
        verify(method=request.method, path=path, query=query, headers=headers, keys=self.cfg.keys,
               skew=self.cfg.time_skew, resource=path)

    async def read_body(self, request: Request) -> bytes:
        limit = self.cfg.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise CIError("InvalidContent", f"the request body is larger than {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise CIError("InvalidContent", f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def need_bucket(bucket: str | None) -> str:
        if not bucket:
            raise CIError("InvalidHost", "the Host header does not name a bucket "
                          "(<BucketName-APPID>.cos.<Region>.myqcloud.com), nor does the path "
                          "(/<BucketName-APPID>/<key>; with CosConfig(IP=...), presign "
                          "Key='<bucket>/<key>')")
        return validate_bucket(bucket)

    # -- CI ---------------------------------------------------------------------------
    async def ci(self, request: Request, path: str, q: dict[str, str], bucket: str | None,
                 region: str, rid: str) -> Response:
        m, svc = request.method, self.service
        parts = path.strip("/").split("/", 1)
        top, rest = parts[0], (parts[1] if len(parts) > 1 else "")
        if top == "jobs":
            b = self.need_bucket(bucket)
            if m == "POST" and not rest:
                body = await self.read_body(request)
                rec = await run_in_threadpool(svc.submit, b, region, body)
                return Response(render_response([rec]), media_type=XML)
            if m == "GET" and not rest:
                recs, token = await run_in_threadpool(svc.list, b, q)
                return Response(render_response(recs, next_token=token), media_type=XML)
            if m == "GET" and rest:
                recs, missing = await run_in_threadpool(svc.get, b, rest.split(","))
                return Response(render_response(recs, non_exist_ids=missing), media_type=XML)
            if m == "PUT" and rest and "cancel" in q and "/" not in rest:
                await run_in_threadpool(svc.cancel, b, rest)
                return Response(b"", status_code=200)
        elif top == "template":
            b = self.need_bucket(bucket)
            if m == "POST" and not rest:
                body = await self.read_body(request)
                t = await run_in_threadpool(svc.create_template, b, body)
                return Response(render_template(t, request_id=rid), media_type=XML)
            if m == "PUT" and rest:
                body = await self.read_body(request)
                t = await run_in_threadpool(svc.update_template, b, rest, body)
                return Response(render_template(t, request_id=rid), media_type=XML)
            if m == "GET" and not rest:
                ts, total, page, size = await run_in_threadpool(svc.query_templates, b, q)
                return Response(render_template_list(ts, request_id=rid, total_count=total, page_number=page,
                                                     page_size=size), media_type=XML)
            if m == "DELETE" and rest:
                await self.read_body(request)  # the SDK may send a body; ignore it
                await run_in_threadpool(svc.delete_template, b, rest)
                return Response(render_template_deleted(rest, request_id=rid), media_type=XML)
        elif top == "asrqueue":
            b = self.need_bucket(bucket)
            if m == "GET" and not rest:
                return await run_in_threadpool(self.get_queues, b, q, rid)
            if m == "PUT" and rest:
                body = await self.read_body(request)
                doc = parse_xml(body, "Request", limit=self.cfg.max_body_bytes)
                queue = await run_in_threadpool(svc.update_queue, b, rest, doc)
                return Response(to_xml("Response", {"RequestId": rid, "Queue": svc.queue_dict(queue)}),
                                media_type=XML)
        elif top == "asrbucket" and not rest and m in ("POST", "DELETE", "GET"):
            return self.asr_bucket(request, bucket, region, rid)
        raise CIError("InvalidArgument", f"{m} {path} is not supported by the local VoiceSeparate service",
                      status=400)

    def get_queues(self, bucket: str, q: dict[str, str], rid: str) -> Response:
        svc = self.service
        queue = svc.queue_for(bucket)
        ids = [i for i in (q.get("queueIds") or "").split(",") if i]
        state = q.get("state") or "All"
        try:
            page, size = int(q.get("pageNumber") or 1), int(q.get("pageSize") or 10)
        except ValueError:
            raise CIError("InvalidArgument", "pageNumber and pageSize must be integers") from None
        rows = [queue] if (not ids or queue.queue_id in ids) else []
        if state not in ("All", "") and rows and rows[0].state != state:
            rows = []
        shown = rows[(page - 1) * size: page * size] if page >= 1 and size >= 1 else []
        body: dict[str, Any] = {"RequestId": rid, "TotalCount": len(rows), "PageNumber": page,
                                "PageSize": size, "QueueList": [svc.queue_dict(r) for r in shown]}
        missing = [i for i in ids if i != queue.queue_id]
        if missing:
            body["NonExistPIDs"] = missing
        return Response(to_xml("Response", body), media_type=XML)

    def asr_bucket(self, request: Request, bucket: str | None, region: str, rid: str) -> Response:
        """Smart Audio is always on locally: open/close are accepted, query lists nothing."""
        if request.method == "GET":
            return Response(to_xml("Response", {"RequestId": rid, "TotalCount": 0, "PageNumber": 1,
                                                "PageSize": 10}), media_type=XML)
        b = self.need_bucket(bucket)
        return Response(to_xml("Response", {"RequestId": rid, "SpeechBucket": {
            "BucketId": b, "Name": b, "Region": region}}), media_type=XML)

    # -- COS ---------------------------------------------------------------------------
    async def cos(self, request: Request, path: str, q: dict[str, str], bucket: str | None) -> Response:
        b = self.need_bucket(bucket)
        m, obj = request.method, self.objects
        key = path[1:]
        if not key:
            if m == "GET" and "uploads" in q:
                return obj.list_multipart_uploads(b, q)
            if m == "GET":
                return await run_in_threadpool(obj.list_objects, b, q)
            if m == "HEAD":
                return obj.head_bucket(b)
            if m == "PUT":
                return obj.create_bucket(b)
            raise CIError("NotImplemented", f"{m} on a bucket is not supported locally", status=501,
                          resource=b)
        if m == "PUT":
            if "uploadId" in q:
                return await obj.upload_part(request, b, key, q["uploadId"], q.get("partNumber", ""))
            return await obj.put_object(request, b, key)
        if m == "GET":
            if "uploadId" in q:
                return await run_in_threadpool(obj.list_parts, b, key, q["uploadId"])
            return await run_in_threadpool(obj.get_object, request, b, key, q)
        if m == "HEAD":
            return await run_in_threadpool(obj.head_object, b, key)
        if m == "DELETE":
            if "uploadId" in q:
                return await run_in_threadpool(obj.abort, b, key, q["uploadId"])
            return await run_in_threadpool(obj.delete_object, b, key)
        if m == "POST":
            if "uploads" in q:
                return await run_in_threadpool(obj.initiate, request, b, key)
            if "uploadId" in q:
                body = await self.read_body(request)
                return await run_in_threadpool(obj.complete, body, b, key, q["uploadId"], request)
        raise CIError("NotImplemented", f"{m} {path} is not supported locally", status=501, resource=key)


# Starlette lower-cases header names; COS sends these in their usual case and the SDK reads some
# of them case-sensitively from a plain dict (e.g. ``rt['ETag']`` in ``upload_file``).
CANONICAL = {n.lower().encode(): n.encode() for n in (
    "ETag", "Content-Length", "Content-Type", "Content-Range", "Last-Modified", "Accept-Ranges",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Cache-Control", "Expires", "Date",
    "Server")}


class CanonicalHeaders:
    """ASGI middleware restoring the usual capitalisation of standard response headers."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_canonical(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(CANONICAL.get(k, k), v) for k, v in message.get("headers", [])]
            await send(message)

        await self.app(scope, receive, send_canonical)


def create_app(cfg: ServerConfig, *, service: JobService | None = None) -> Starlette:
    """The ASGI app; its lifespan starts the job service (store recovery, workers) and stops it."""
    svc = service or JobService(cfg)
    handler = App(cfg, svc)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        svc.start()
        try:
            yield
        finally:
            svc.stop()

    methods = ["GET", "HEAD", "PUT", "POST", "DELETE"]
    # a bound method, so Starlette wraps it as a request -> response endpoint
    app = Starlette(routes=[Route("/{path:path}", handler.__call__, methods=methods)], lifespan=lifespan,
                    middleware=[Middleware(CanonicalHeaders)])
    app.state.service = svc
    return app
