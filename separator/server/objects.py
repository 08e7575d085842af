"""The COS object calls the SDK needs (spec §9.4), on :class:`~separator.storage.LocalStorage`.

put / get (single byte ranges → 206 + Content-Range) / head / delete / list (``ListBucketResult``,
keys URL-encoded when ``encoding-type=url``) and multipart upload (initiate, upload part,
complete, abort, list parts; ``ListMultipartUploads`` lists nothing, so the SDK never tries to
resume and always starts a fresh upload).

Every object path goes through ``LocalStorage.object_path`` (key validation + containment);
parts live under ``<root>/.separator/multipart/<uploadId>/`` with validated upload ids.  Bodies
are streamed to a temporary file and renamed into place only when complete, so an interrupted
upload never leaves a partial object.  ETags are the hex MD5 of the object, kept by :class:`ObjectMeta`.
"""
from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import CIError
from ..storage.database import Database
from ..storage import LocalStorage, file_md5
from ..storage.local import TMP_PREFIX, atomic_file
from .errors import not_found_key
from .xmlio import as_list, parse_xml, to_xml

UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
CHUNK = 1 << 20
MAX_PARTS = 10000


OBJECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    bucket       TEXT NOT NULL,
    key          TEXT NOT NULL,
    size         INTEGER NOT NULL,
    mtime        REAL NOT NULL,
    md5          TEXT NOT NULL,
    content_type TEXT,
    meta         TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (bucket, key)
);
"""


@dataclass
class ObjectRow:
    bucket: str
    key: str
    size: int
    mtime: float
    md5: str
    content_type: str | None
    meta: str


class ObjectMeta:
    """What an object has beside its bytes: its Content-Type and ``x-cos-meta-*`` headers, and
    its MD5 (the ETag), kept while the file's size and mtime stay the same.  In the service's
    database (``objects`` table), beside the job store's tables."""

    def __init__(self, path: str | Path):
        self.database = Database(path, OBJECTS_SCHEMA)

    def get(self, bucket: str, key: str) -> ObjectRow | None:
        r = self.database.db().execute("SELECT * FROM objects WHERE bucket=? AND key=?", (bucket, key)).fetchone()
        return ObjectRow(**dict(r)) if r else None

    def put(self, row: ObjectRow) -> None:
        with self.database.tx() as db:
            db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?,?,?)",
                       (row.bucket, row.key, row.size, row.mtime, row.md5, row.content_type, row.meta))

    def delete(self, bucket: str, key: str) -> None:
        with self.database.tx() as db:
            db.execute("DELETE FROM objects WHERE bucket=? AND key=?", (bucket, key))


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


class ObjectAPI:
    def __init__(self, storage: LocalStorage, meta: ObjectMeta, state_dir: Path, *, max_object_bytes: int):
        self.storage = storage
        self.meta = meta
        self.multipart_dir = state_dir / "multipart"
        self.max_object_bytes = max_object_bytes

    # -- helpers ------------------------------------------------------------------
    async def _receive_to(self, request: Request, tmp: Path) -> tuple[str, int]:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                if int(length) > self.max_object_bytes:
                    raise CIError("EntityTooLarge", f"the object is larger than {self.max_object_bytes} bytes",
                                  status=400)
            except ValueError:
                raise CIError("InvalidArgument", "Content-Length is not a number") from None
        md5, size = hashlib.md5(), 0
        with open(tmp, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_object_bytes:
                    raise CIError("EntityTooLarge", f"the object is larger than {self.max_object_bytes} bytes")
                md5.update(chunk)
                fh.write(chunk)
        if length is not None and int(length) != size:
            raise CIError("IncompleteBody", "the body is shorter than Content-Length")
        given = request.headers.get("content-md5")
        if given:
            try:
                want = base64.b64decode(given, validate=True)
            except (binascii.Error, ValueError):
                raise CIError("InvalidDigest", "Content-MD5 is not base64") from None
            if want != md5.digest():
                raise CIError("BadDigest", "the Content-MD5 you specified did not match what we received")
        return md5.hexdigest(), size

    def etag_of(self, bucket: str, key: str, path: Path) -> tuple[str, ObjectRow]:
        st = path.stat()
        row = self.meta.get(bucket, key)
        if row is None or row.size != st.st_size or abs(row.mtime - st.st_mtime) > 1e-6:
            row = ObjectRow(bucket, key, st.st_size, st.st_mtime, file_md5(path),
                            row.content_type if row else None, row.meta if row else "{}")
            self.meta.put(row)
        return row.md5, row

    def _remember(self, bucket: str, key: str, md5: str, request: Request | None) -> None:
        path = self.storage.object_path(bucket, key)
        st = path.stat()
        ctype, meta = None, {}
        if request is not None:
            ctype = request.headers.get("content-type")
            meta = {k: v for k, v in request.headers.items() if k.lower().startswith("x-cos-meta-")}
        self.meta.put(ObjectRow(bucket, key, st.st_size, st.st_mtime, md5, ctype, json.dumps(meta)))

    # -- bucket level -------------------------------------------------------------
    def _existing_bucket(self, bucket: str) -> None:
        if not self.storage.bucket_path(bucket).is_dir():
            raise CIError("NoSuchBucket", "The specified bucket does not exist.", status=404, resource=bucket)

    def head_bucket(self, bucket: str) -> Response:
        self._existing_bucket(bucket)
        return Response(b"", status_code=200)

    def create_bucket(self, bucket: str) -> Response:
        self.storage.bucket_path(bucket, create=True)
        return Response(b"", status_code=200)

    def list_objects(self, bucket: str, q: dict[str, str]) -> Response:
        self._existing_bucket(bucket)
        prefix, delimiter, marker = q.get("prefix", ""), q.get("delimiter", ""), q.get("marker", "")
        try:
            max_keys = int(q.get("max-keys") or 1000)
        except ValueError:
            raise CIError("InvalidArgument", "max-keys must be an integer", resource="max-keys") from None
        max_keys = max(0, min(max_keys, 1000))
        enc = q.get("encoding-type", "")
        if enc not in ("", "url"):
            raise CIError("InvalidArgument", "encoding-type must be url", resource="encoding-type")
        e = (lambda s: quote(s, safe="/")) if enc == "url" else (lambda s: s)
        contents, prefixes, seen_prefixes = [], [], set()
        truncated, next_marker, count = False, "", 0
        for obj in self.storage.list(bucket, prefix):
            if marker and obj.key <= marker:
                continue
            if delimiter:
                rest = obj.key[len(prefix):]
                idx = rest.find(delimiter)
                if idx >= 0:
                    cp = prefix + rest[:idx + len(delimiter)]
                    if cp in seen_prefixes:
                        continue
                    if marker and cp <= marker:
                        continue
                    if count >= max_keys:
                        truncated = True
                        break
                    seen_prefixes.add(cp)
                    prefixes.append({"Prefix": e(cp)})
                    next_marker, count = cp, count + 1
                    continue
            if count >= max_keys:
                truncated = True
                break
            etag, _ = self.etag_of(bucket, obj.key, obj.path)
            contents.append({"Key": e(obj.key), "LastModified": _iso(obj.mtime), "ETag": f'"{etag}"',
                             "Size": obj.size, "Owner": {"ID": bucket.rsplit("-", 1)[-1],
                                                         "DisplayName": bucket.rsplit("-", 1)[-1]},
                             "StorageClass": "STANDARD"})
            next_marker, count = obj.key, count + 1
        body: dict = {"Name": bucket}
        if enc:
            body["EncodingType"] = enc
        body.update({"Prefix": e(prefix), "Marker": e(marker), "MaxKeys": max_keys, "Delimiter": e(delimiter),
                     "IsTruncated": "true" if truncated else "false"})
        if truncated:
            body["NextMarker"] = e(next_marker)
        body["Contents"] = contents
        body["CommonPrefixes"] = prefixes
        return Response(to_xml("ListBucketResult", body), media_type="application/xml")

    def list_multipart_uploads(self, bucket: str, q: dict[str, str]) -> Response:
        body = {"Bucket": bucket, "EncodingType": q.get("encoding-type") or None,
                "KeyMarker": None, "UploadIdMarker": None, "NextKeyMarker": None,
                "NextUploadIdMarker": None, "MaxUploads": q.get("max-uploads") or 1000,
                "IsTruncated": "false", "Prefix": quote(q.get("prefix", ""), safe="/"), "Delimiter": None}
        return Response(to_xml("ListMultipartUploadsResult", body), media_type="application/xml")

    # -- objects ------------------------------------------------------------------
    async def put_object(self, request: Request, bucket: str, key: str) -> Response:
        if request.headers.get("x-cos-copy-source"):
            raise CIError("NotImplemented", "PUT Object - Copy is not supported by the local server",
                          status=501, resource=key)
        if key.endswith("/"):
            return await self.put_folder(request, bucket, key)
        final = self.storage.object_path(bucket, key, write=True)
        self.storage.bucket_path(bucket, create=True)
        with atomic_file(final) as tmp:
            md5, _ = await self._receive_to(request, tmp)
        self._remember(bucket, key, md5, request)
        return Response(b"", status_code=200, headers={"ETag": f'"{md5}"'})

    async def put_folder(self, request: Request, bucket: str, key: str) -> Response:
        """A folder marker ``dir/``: an empty object (see ``storage.FOLDER_MARKER``)."""
        empty = CIError("InvalidArgument", f"{key!r} ends with '/': a folder marker must be empty",
                        resource=key)
        if request.headers.get("content-length", "0") != "0":
            raise empty
        async for chunk in request.stream():
            if chunk:
                raise empty
        self.storage.bucket_path(bucket, create=True)
        self.storage.make_folder(bucket, key)
        md5 = hashlib.md5(b"").hexdigest()
        self._remember(bucket, key, md5, request)
        return Response(b"", status_code=200, headers={"ETag": f'"{md5}"'})

    def _object_headers(self, bucket: str, key: str, path: Path) -> tuple[dict[str, str], os.stat_result]:
        etag, row = self.etag_of(bucket, key, path)
        st = path.stat()
        headers = {"ETag": f'"{etag}"', "Last-Modified": _http_date(st.st_mtime), "Accept-Ranges": "bytes",
                   "Content-Type": row.content_type or "application/octet-stream",
                   "x-cos-storage-class": "STANDARD"}
        headers.update(json.loads(row.meta or "{}"))
        return headers, st

    def _existing(self, bucket: str, key: str) -> Path:
        path = self.storage.object_path(bucket, key)
        if not path.is_file():
            raise not_found_key(key)
        return path

    def head_object(self, bucket: str, key: str) -> Response:
        path = self._existing(bucket, key)
        headers, st = self._object_headers(bucket, key, path)
        headers["Content-Length"] = str(st.st_size)
        return Response(b"", status_code=200, headers=headers)

    def get_object(self, request: Request, bucket: str, key: str, q: dict[str, str]) -> Response:
        path = self._existing(bucket, key)
        headers, st = self._object_headers(bucket, key, path)
        size = st.st_size
        for param, header in (("response-content-type", "Content-Type"),
                              ("response-content-disposition", "Content-Disposition"),
                              ("response-content-encoding", "Content-Encoding"),
                              ("response-content-language", "Content-Language"),
                              ("response-cache-control", "Cache-Control"),
                              ("response-expires", "Expires")):
            if q.get(param):
                headers[header] = _header_value(q[param], param)
        start, end, status = 0, size - 1, 200
        span = parse_range(request.headers["range"], size) if request.headers.get("range") else None
        if span is not None:
            (start, end), status = span, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        return StreamingResponse(_read_file(path, start, length), status_code=status, headers=headers)

    def delete_object(self, bucket: str, key: str) -> Response:
        self.storage.delete(bucket, key)
        self.meta.delete(bucket, key)
        return Response(b"", status_code=204)

    # -- multipart ----------------------------------------------------------------
    def _upload_dir(self, upload_id: str, bucket: str, key: str) -> Path:
        if not UPLOAD_ID_RE.match(upload_id or ""):
            raise CIError("NoSuchUpload", "The specified upload does not exist.", status=404, resource=key)
        d = self.multipart_dir / upload_id
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            raise CIError("NoSuchUpload", "The specified upload does not exist.", status=404, resource=key) from None
        if meta.get("bucket") != bucket or meta.get("key") != key:
            raise CIError("NoSuchUpload", "The upload does not belong to this object.", status=404, resource=key)
        return d

    def initiate(self, request: Request, bucket: str, key: str) -> Response:
        self.storage.object_path(bucket, key, write=True)  # refuse a bad key now, not at the end
        upload_id = os.urandom(16).hex()
        d = self.multipart_dir / upload_id
        d.mkdir(parents=True)
        (d / "meta.json").write_text(json.dumps({"bucket": bucket, "key": key, "initiated": time.time(),
                                                 "content_type": request.headers.get("content-type")}))
        return Response(to_xml("InitiateMultipartUploadResult",
                               {"Bucket": bucket, "Key": key, "UploadId": upload_id}),
                        media_type="application/xml")

    async def upload_part(self, request: Request, bucket: str, key: str, upload_id: str,
                          part_number: str) -> Response:
        d = self._upload_dir(upload_id, bucket, key)
        try:
            n = int(part_number)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_PARTS:
            raise CIError("InvalidArgument", f"partNumber must be 1..{MAX_PARTS}", resource=key)
        with atomic_file(d / f"{n:05d}.part") as tmp:
            md5, _ = await self._receive_to(request, tmp)
        (d / f"{n:05d}.etag").write_text(md5)
        return Response(b"", status_code=200, headers={"ETag": f'"{md5}"'})

    def list_parts(self, bucket: str, key: str, upload_id: str) -> Response:
        d = self._upload_dir(upload_id, bucket, key)
        parts = []
        for p in sorted(d.glob("*.part")):
            if p.name.startswith(TMP_PREFIX):
                continue
            st = p.stat()
            parts.append({"PartNumber": int(p.stem), "LastModified": _iso(st.st_mtime),
                          "ETag": f'"{(d / (p.stem + ".etag")).read_text()}"', "Size": st.st_size})
        return Response(to_xml("ListPartsResult", {"Bucket": bucket, "Key": key, "UploadId": upload_id,
                                                   "IsTruncated": "false", "Part": parts}),
                        media_type="application/xml")

    def complete(self, body: bytes, bucket: str, key: str, upload_id: str, request: Request) -> Response:
        d = self._upload_dir(upload_id, bucket, key)
        doc = parse_xml(body, "CompleteMultipartUpload", code="MalformedXML")
        parts = as_list(doc.get("Part"))
        if not parts:
            raise CIError("MalformedXML", "CompleteMultipartUpload lists no Part", resource=key)
        numbers: list[int] = []
        for part in parts:
            try:
                n = int(part["PartNumber"])
                etag = str(part.get("ETag", "")).strip().strip('"')
            except (KeyError, TypeError, ValueError):
                raise CIError("MalformedXML", "every Part needs a numeric PartNumber", resource=key) from None
            if numbers and n <= numbers[-1]:
                raise CIError("InvalidPartOrder", "parts must be listed in ascending order", resource=key)
            stored = d / f"{n:05d}.etag"
            if not stored.is_file() or (etag and stored.read_text() != etag):
                raise CIError("InvalidPart", f"part {n} was not uploaded or its ETag does not match",
                              resource=key)
            numbers.append(n)
        final = self.storage.object_path(bucket, key, write=True)
        self.storage.bucket_path(bucket, create=True)
        md5 = hashlib.md5()
        with atomic_file(final) as tmp, open(tmp, "wb") as out:
            for n in numbers:
                with open(d / f"{n:05d}.part", "rb") as fh:
                    for chunk in iter(lambda: fh.read(CHUNK), b""):
                        md5.update(chunk)
                        out.write(chunk)
        meta = json.loads((d / "meta.json").read_text())
        shutil.rmtree(d, ignore_errors=True)
        st = final.stat()
        self.meta.put(ObjectRow(bucket, key, st.st_size, st.st_mtime, md5.hexdigest(),
                                             meta.get("content_type"), "{}"))
        host = request.headers.get("host", "")
        return Response(to_xml("CompleteMultipartUploadResult",
                               {"Location": f"{host}/{quote(key)}", "Bucket": bucket, "Key": key,
                                "ETag": f'"{md5.hexdigest()}"'}), media_type="application/xml")

    def abort(self, bucket: str, key: str, upload_id: str) -> Response:
        d = self._upload_dir(upload_id, bucket, key)
        shutil.rmtree(d, ignore_errors=True)
        return Response(b"", status_code=204)


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` → inclusive (start, end); 416 InvalidRange otherwise.
    Several ranges (``bytes=0-1,5-6``) → None: the whole object is sent, as RFC 7233 allows."""
    if "," in value:
        return None
    bad = CIError("InvalidRange", "The requested range is not satisfiable", status=416)
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if not m or (not m.group(1) and not m.group(2)):
        raise bad
    a, b = m.group(1), m.group(2)
    if not a:
        n = int(b)
        if n == 0 or size == 0:
            raise bad
        return max(0, size - n), size - 1
    start = int(a)
    end = min(int(b), size - 1) if b else size - 1
    if start >= size or (b and int(b) < start):
        raise bad
    return start, end


def _header_value(value: str, param: str) -> str:
    """A response header value the client chose: a control character would end the header
    (CR/LF: a header of the client's own) or break the response, so it is refused; other
    characters travel as their UTF-8 bytes (Starlette sends header strings as Latin-1)."""
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise CIError("InvalidArgument", f"{param} contains control characters", resource=param)
    return value.encode("utf-8").decode("latin-1")


def _read_file(path: Path, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(start)
        left = length
        while left > 0:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk


