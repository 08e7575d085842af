"""Identifiers and timestamps in the cloud's shapes (spec §1.8).

* job ``j`` + 32 hex, queue ``p`` + 32 hex, template ``t`` + 33 hex (lower-case hex, random).
* request ids: URL-safe base64 (no padding) of ``<hex time>_<hex random>_<hex random>_<counter>``,
  the look of CI's ``x-ci-request-id`` (e.g. ``NjQ5ZTFhZTFfOTBmYTUwNjRfNjVmOV8x``).
* times: ``YYYY-MM-DDTHH:MM:SS+0800`` — always rendered in China Standard Time, a fixed +08:00
  offset (Asia/Shanghai has had no DST since 1991), so no tz database is needed.
"""
from __future__ import annotations

import base64
import itertools
import re
import secrets
import time
from datetime import datetime, timedelta, timezone

from ..errors import CIError

CST = timezone(timedelta(hours=8), "CST")

JOB_ID_RE = re.compile(r"^j[0-9a-f]{32}$")
QUEUE_ID_RE = re.compile(r"^p[0-9a-f]{32}$")
TEMPLATE_ID_RE = re.compile(r"^t[0-9a-f]{33}$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+0800$")

_counter = itertools.count(1)


def new_job_id() -> str:
    return "j" + secrets.token_hex(16)


def new_queue_id() -> str:
    return "p" + secrets.token_hex(16)


def new_template_id() -> str:
    return "t" + secrets.token_hex(17)[:33]


def new_request_id() -> str:
    raw = f"{int(time.time()):08x}_{secrets.token_hex(4)}_{secrets.token_hex(2)}_{next(_counter)}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def now() -> datetime:
    """The current time as an aware datetime in +08:00 (seconds precision)."""
    return datetime.now(CST).replace(microsecond=0)


def format_time(dt: datetime | None) -> str:
    """``YYYY-MM-DDTHH:MM:SS+0800``; ``None`` → ``""``.  A naive datetime is taken as UTC."""
    if dt is None:
        return ""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(CST).strftime("%Y-%m-%dT%H:%M:%S+0800")


_PARSE_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?"
    r"(?:(Z)|([+\- ])(\d{2}):?(\d{2}))?$")


def parse_time(s: str, *, field: str = "time") -> datetime:
    """Parse a list-filter time (``2001-01-01T00:00:00+0800``) into an aware datetime.

    Accepts ``+HHMM``, ``+HH:MM``, ``Z`` and no offset (taken as +08:00, the cloud's zone).  A
    space in place of ``+`` (an unencoded ``+`` in a query string) is read as ``+``.
    Raises ``CIError(InvalidArgument)`` naming ``field``.
    """
    m = _PARSE_RE.match(s.strip()) if isinstance(s, str) else None
    if not m:
        raise CIError("InvalidArgument", f"{field} must look like 2001-01-01T00:00:00+0800, got {s!r}",
                      resource=field)
    y, mo, d, h, mi, sec, z, sign, oh, om = m.groups()
    if z:
        tz = timezone.utc
    elif sign:
        off = timedelta(hours=int(oh), minutes=int(om))
        if off >= timedelta(hours=24):
            raise CIError("InvalidArgument", f"{field} has an invalid UTC offset: {s!r}", resource=field)
        tz = timezone(-off if sign == "-" else off)
    else:
        tz = CST
    try:
        return datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec), tzinfo=tz)
    except ValueError as e:
        raise CIError("InvalidArgument", f"{field} is not a valid time ({e}): {s!r}", resource=field) from None
