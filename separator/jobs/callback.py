"""Job callbacks (spec §6): POST the finished JobsDetail to the job's ``CallBack`` URL (or the
queue's ``NotifyConfig.Url``), in XML (default) or JSON.

Delivery runs on a small thread pool owned by :class:`CallbackSender`, never on a worker or a
request handler.  Each delivery is one POST with a short timeout; a non-2xx answer or a
connection error is retried a few times with exponential back-off, then given up (logged).  A
dead endpoint never changes the job.  ``CallBackType=TDMQ`` is logged as not delivered locally.

Choices where the spec is UNCONFIRMED: ``Content-Type: application/xml`` or ``application/json``;
no signature headers; any 2xx counts as delivered; retries = ``retries`` after the first attempt,
sleeping ``backoff * 2**n`` seconds between attempts.
"""
from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..request.parse import is_http_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallbackTarget:
    url: str | None
    fmt: str = "XML"            # "XML" or "JSON"
    type: str = "Url"           # "Url" or "TDMQ"
    mq: str = ""                # description of the TDMQ target (for the log)


def choose_target(*, callback: str | None, callback_format: str | None, callback_type: str | None,
                  notify: dict[str, str] | None, job_fields_set: set[str] | None = None,
                  mq: str = "") -> CallbackTarget | None:
    """Where (and how) a finished job is reported, or None for nowhere.

    Job-level ``CallBack``/``CallBackFormat``/``CallBackType`` override the queue's
    ``NotifyConfig`` (spec §1.2); ``CallBack=no`` disables the queue's callback for the job.
    The queue's callback is used only while its ``State`` is ``On`` (default On when a Url is set)
    and its ``Event`` includes ``TaskFinish`` (default).
    """
    notify = notify or {}
    if callback == "no":
        return None
    if callback_type == "TDMQ":
        return CallbackTarget(None, callback_format or "XML", "TDMQ", mq)
    if callback:
        return CallbackTarget(callback, callback_format or "XML", "Url")
    url = notify.get("Url")
    if not url or notify.get("State", "On") != "On":
        return None
    if "TaskFinish" not in notify.get("Event", "TaskFinish"):
        return None
    fmt = notify.get("ResultFormat") or "XML"
    if job_fields_set and "CallBackFormat" in job_fields_set and callback_format:
        fmt = callback_format
    if notify.get("Type", "Url") == "TDMQ":
        return CallbackTarget(None, fmt, "TDMQ", notify.get("MqName", ""))
    return CallbackTarget(url, fmt, "Url")


class CallbackSender:
    def __init__(self, *, timeout: float = 5.0, retries: int = 3, backoff: float = 0.5,
                 threads: int = 4):
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="separator-callback")
        self._closed = threading.Event()

    def submit(self, job_id: str, target: CallbackTarget, body_factory: Callable[[], bytes]) -> None:
        """Queue one delivery; ``body_factory`` renders the body in the sender thread."""
        if target.type == "TDMQ":
            log.warning("job %s: CallBackType=TDMQ (%s) is not delivered locally", job_id,
                        target.mq or "no MqName")
            return
        if self._closed.is_set() or not target.url:
            return
        self._pool.submit(self._deliver, job_id, target, body_factory)

    def _deliver(self, job_id: str, target: CallbackTarget, body_factory: Callable[[], bytes]) -> bool:
        try:
            body = body_factory()
        except Exception:
            log.exception("job %s: cannot render the callback body", job_id)
            return False
        if not target.url or not is_http_url(target.url):
            # validated where URLs come in; this guards one stored before that check existed
            log.error("job %s: callback URL %r is not an http(s) URL; not sent", job_id, target.url)
            return False
        ctype = "application/json" if target.fmt == "JSON" else "application/xml"
        for attempt in range(self.retries + 1):
            if self._closed.is_set():
                return False
            try:
                req = urllib.request.Request(target.url, data=body, method="POST",
                                             headers={"Content-Type": ctype,
                                                      "User-Agent": "separator-callback"})
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (http/https only)
                    if 200 <= resp.status < 300:
                        log.info("job %s: callback delivered to %s (%s)", job_id, target.url, resp.status)
                        return True
                    why = f"HTTP {resp.status}"
            except urllib.error.HTTPError as err:
                why = f"HTTP {err.code}"
            except Exception as err:  # connection refused, timeout, bad URL …
                why = f"{type(err).__name__}: {err}"
            log.warning("job %s: callback to %s failed (%s), attempt %d/%d", job_id, target.url, why,
                        attempt + 1, self.retries + 1)
            if attempt < self.retries:
                time.sleep(self.backoff * (2 ** attempt))
        log.error("job %s: callback to %s given up", job_id, target.url)
        return False

    def close(self, wait: bool = False) -> None:
        self._closed.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)
