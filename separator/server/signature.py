"""COS request signatures, ``q-sign-algorithm=sha1`` (spec §8).

:func:`sign` produces what ``qcloud_cos.cos_auth.CosS3Auth`` sends; :func:`verify`
checks a received request the way the service does (§8.2), including the
host-without-port fallback for requests the SDK signed with the bare hostname.
Both are pure functions of their arguments, so they are tested without a server.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote

from ..errors import CIError

SIGNED_HEADERS = frozenset({
    "cache-control", "content-disposition", "content-encoding", "content-type", "content-md5",
    "content-length", "expect", "expires", "host", "if-match", "if-modified-since", "if-none-match",
    "if-unmodified-since", "origin", "range", "transfer-encoding", "pic-operations",
})
Q_KEYS = ("q-sign-algorithm", "q-ak", "q-sign-time", "q-key-time", "q-header-list",
          "q-url-param-list", "q-signature")


def _enc(value: str) -> str:
    return quote(value.encode("utf-8"), safe="-_.~")


def _kv(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def string_to_sign(method: str, path: str, params: Mapping[str, str], headers: Mapping[str, str],
                   sign_time: str) -> str:
    """``params``/``headers``: already lower-cased, *encoded* names → encoded values."""
    http_string = f"{method.lower()}\n{path}\n{_kv(params.items())}\n{_kv(headers.items())}\n"
    return f"sha1\n{sign_time}\n{hashlib.sha1(http_string.encode('utf-8')).hexdigest()}\n"


def signature(secret_key: str, key_time: str, to_sign: str) -> str:
    sign_key = hmac.new(secret_key.encode("utf-8"), key_time.encode("utf-8"), hashlib.sha1).hexdigest()
    return hmac.new(sign_key.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha1).hexdigest()


def sign(secret_id: str, secret_key: str, method: str, path: str, params: Mapping[str, str] | None = None,
         headers: Mapping[str, str] | None = None, *, start: int | None = None, expire: int = 10000) -> str:
    """The ``Authorization`` value the SDK sends (``path`` is the decoded key with a leading '/')."""
    start = int(time.time()) - 60 if start is None else start
    key_time = f"{start};{start + 60 + expire}"
    hdrs = {_enc(k).lower(): _enc(v) for k, v in (headers or {}).items()
            if k.lower() in SIGNED_HEADERS or k.lower().startswith(("x-cos-", "x-ci-"))}
    prms = {_enc(k).lower(): _enc(v) for k, v in (params or {}).items()}
    sig = signature(secret_key, key_time, string_to_sign(method, path, prms, hdrs, key_time))
    return (f"q-sign-algorithm=sha1&q-ak={secret_id}&q-sign-time={key_time}&q-key-time={key_time}"
            f"&q-header-list={';'.join(sorted(hdrs))}&q-url-param-list={';'.join(sorted(prms))}"
            f"&q-signature={sig}")


def _deny(code: str, message: str, resource: str) -> CIError:
    return CIError(code, message, status=403, resource=resource)


def parse_authorization(value: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in value.split("&"):
        k, sep, v = part.partition("=")
        if sep:
            fields[k.strip()] = v.strip()
    return fields


def verify(*, method: str, path: str, query: list[tuple[str, str]], headers: Mapping[str, str],
           keys: Mapping[str, str], now: float | None = None, skew: int = 900,
           resource: str | None = None) -> str:
    """Check a request's COS signature; return the SecretId it was signed with.

    ``path`` is the URL-*decoded* request path; ``query`` the decoded query pairs
    (presigned ``q-*`` pairs included); ``headers`` the received headers with
    lower-case names; ``keys`` SecretId → SecretKey.  Raises :class:`CIError` (403)
    with ``AccessDenied``, ``InvalidAccessKeyId``, ``RequestTimeTooSkewed`` or
    ``SignatureDoesNotMatch``.
    """
    res = resource or path
    auth = headers.get("authorization", "")
    if auth:
        fields = parse_authorization(auth)
        params = [(k, v) for k, v in query]
    else:
        fields = {k: v for k, v in query if k in Q_KEYS}
        params = [(k, v) for k, v in query if k not in Q_KEYS]
    if not fields.get("q-signature") and not fields.get("q-ak"):
        raise _deny("AccessDenied", "Access Denied. The request carries no signature.", res)
    missing = [k for k in Q_KEYS if k not in fields]
    if missing:
        raise _deny("AccessDenied", f"Authorization lacks {', '.join(missing)}", res)
    if fields["q-sign-algorithm"].lower() != "sha1":
        raise _deny("AccessDenied", "q-sign-algorithm must be sha1", res)
    secret_key = keys.get(fields["q-ak"])
    if secret_key is None:
        raise _deny("InvalidAccessKeyId", "The access key Id format you provided is invalid or "
                    "does not exist.", res)
    now = time.time() if now is None else now
    for name in ("q-sign-time", "q-key-time"):
        try:
            start_s, end_s = fields[name].split(";")
            start, end = int(start_s), int(end_s)
        except ValueError:
            raise _deny("AccessDenied", f"{name} is not '<start>;<end>'", res) from None
        if now + skew < start:
            raise _deny("RequestTimeTooSkewed", f"{name} starts in the future", res)
        if now > end:
            raise _deny("AccessDenied", f"Request has expired ({name} ended at {end})", res)

    header_names = [h for h in fields["q-header-list"].lower().split(";") if h]
    param_names = {p for p in fields["q-url-param-list"].lower().split(";") if p}
    encoded_headers: dict[str, str] = {}
    for name in header_names:
        if name not in headers:
            raise _deny("SignatureDoesNotMatch", f"signed header {name!r} is missing from the request", res)
        encoded_headers[name] = _enc(headers[name])
    encoded_params: dict[str, str] = {}
    for k, v in params:
        ek = _enc(k).lower()
        if ek in param_names:
            encoded_params[ek] = _enc(v)
    for name in param_names - encoded_params.keys():
        raise _deny("SignatureDoesNotMatch", f"signed parameter {name!r} is missing from the request", res)

    candidates = [encoded_headers]
    host = headers.get("host", "")
    if "host" in encoded_headers and ":" in host and not host.endswith("]"):
        candidates.append({**encoded_headers, "host": _enc(host.rsplit(":", 1)[0])})
    given = fields["q-signature"].lower()
    for hdrs in candidates:
        expected = signature(secret_key, fields["q-key-time"],
                             string_to_sign(method, path, encoded_params, hdrs, fields["q-sign-time"]))
        if hmac.compare_digest(expected, given):
            return fields["q-ak"]
    raise _deny("SignatureDoesNotMatch", "The request signature we calculated does not match the "
                "signature you provided. Check your key and signing method.", res)


def query_pairs(raw_query: bytes | str) -> list[tuple[str, str]]:
    if isinstance(raw_query, bytes):
        raw_query = raw_query.decode("utf-8", "replace")
    return parse_qsl(raw_query, keep_blank_values=True)
