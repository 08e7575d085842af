"""The job service behind the HTTP layer: submit/query/list/cancel, templates, the speech
queue, and what happens when a job ends (store it, send its callback).

Behaviour choices (the spec leaves them open; also listed in the README):

* **Cancel of a running job** is refused: 400 ``InvalidArgument`` "The job provided can not be
  modified" (also for finished jobs).  Cancelling an already cancelled job succeeds again.
* **Pause**: a paused queue starts no new job; running jobs finish; waiting jobs keep showing
  ``Submitted``, and a list filter ``states=Pause`` matches them (as well as ``Submitted``).
  New jobs may still be submitted to a paused queue.  ``Active`` starts them again in order.
* **Input check at submit**: a missing input object is refused at once with 400
  ``ResourceNotFound`` (the job is not created).
* **QueueId**: optional; when given it must be the bucket's speech queue (else 400
  ``InvalidArgument``).  One queue per bucket, created on first use, Category ``Speeching``.
* **TemplateId**: unknown → 400 ``InvalidArgument``; the template's AudioMode/AudioConfig win
  over inline ones, and the job keeps a snapshot of the template taken at submission.
* **Progress**: ``JobsDetail.Progress`` is 0 while the job waits, the engine's percentage while
  it runs (workers report it about once a second; at most 99), 100 once it succeeded, and the
  last reported value for a failed or cancelled job.  It also appears in the callback body.
* A job whose worker process dies is run again; after ``max_attempts`` (2:
  :data:`separator.workers.MAX_ATTEMPTS`) crashes it is ``Failed`` with ``InternalError``.  With
  ``--ray-address`` the same holds for a lost Ray actor or node, and cancel behaves the same (a
  waiting job is never sent to Ray; a running one cannot be cancelled).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ..errors import invalid_argument
from ..protocol import FINISHED_STATES, JOB_STATES
from ..jobs.callback import CallbackSender, choose_target
from ..jobs.scheduler import JOB_RUNNER, Scheduler
from ..jobs.store import JobRow, JobStore, QueueRow, TemplateRow
from ..request import (
    JobRecord, JobRequest, TemplateRecord, VoiceSeparateParams, merge_template, new_job_id,
    parse_job_request, parse_template_request, parse_time, render_callback,
)
from ..request.parse import is_http_url
from ..storage import LocalStorage
from ..storage.local import remove_temporaries
from ..workers import LocalPool, Pool, plan_workers
from .config import ServerConfig

log = logging.getLogger(__name__)

MAX_QUERY_IDS = 100


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, timezone.utc) if ts is not None else None


def _names_callback_format(body: bytes, fmt: str) -> bool:
    """Whether the (already validated) request sets CallBackFormat itself; if not, the queue's
    NotifyConfig.ResultFormat applies to a queue-level callback."""
    try:
        if fmt == "json":
            import json

            doc = json.loads(body)
            doc = doc.get("Request", doc) if isinstance(doc, dict) else {}
        else:
            from .xmlio import parse_xml

            doc = parse_xml(body, "Request")
        return bool(isinstance(doc, dict) and doc.get("CallBackFormat"))
    except Exception:  # noqa: BLE001
        return False


def log_end(row: JobRow) -> None:
    """The one INFO line of a job that ended: id, state (and code), input, seconds it ran
    (a job that never started: seconds since it was submitted)."""
    ended = row.ended or datetime.now(timezone.utc).timestamp()
    seconds = ended - (row.started or row.created)
    state = row.state if row.state != "Failed" else f"Failed ({row.code})"
    log.info("job %s ended %s: input %s/%s, %.2f s", row.job_id, state, row.bucket, row.input_object,
             seconds)


class JobService:
    def __init__(self, cfg: ServerConfig, *, start_workers: bool = True):
        self.cfg = cfg
        self.storage = LocalStorage(cfg.storage)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(cfg.state_dir / "jobs.sqlite3")
        self.callbacks = CallbackSender(timeout=cfg.callback_timeout, retries=cfg.callback_retries,
                                        backoff=cfg.callback_backoff)
        # where jobs run: local worker processes, or Ray actors (everything else stays here)
        context = {"engine": cfg.engine, "storage_root": str(cfg.storage),
                   "engine_options": dict(cfg.engine_options)}
        pool: Pool
        if cfg.ray_address:
            from ..workers.ray import RayPool

            pool = RayPool(cfg.ray_address, runner=JOB_RUNNER, context=context, device=cfg.device,
                           workers=cfg.workers, cpus_per_worker=cfg.ray_cpus_per_worker,
                           must_see=[str(cfg.storage)])
        else:
            pool = LocalPool(JOB_RUNNER, context, plan_workers(cfg.workers, cfg.device))
        self.scheduler = Scheduler(self.store, pool, storage_root=cfg.storage,
                                   max_attempts=cfg.max_attempts, state_dir=cfg.state_dir,
                                   on_finished=self.job_finished, model_for=self.model_for)
        self._start_workers = start_workers

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        # No worker runs yet and no request is being served: every temporary file under the
        # root is what a killed server, worker or upload left behind.
        swept = remove_temporaries(self.cfg.storage)
        if swept:
            log.warning("removed %d temporary file(s) left by an interrupted run", swept)
        again = self.store.recover()
        if again:
            log.warning("%d job(s) were running when the server stopped; they run again: %s",
                        len(again), ", ".join(again))
        if self._start_workers:
            self.scheduler.start()

    def stop(self) -> None:
        if self._start_workers:
            self.scheduler.stop()
        self.callbacks.close()
        self.store.close()

    # -- records -----------------------------------------------------------------------
    def record(self, row: JobRow) -> JobRecord:
        req = JobRequest.model_validate_json(row.request)
        t = row.template_dict or {}
        res = row.result_dict
        rec = JobRecord(job_id=row.job_id, state=row.state, code=row.code, message=row.message,
                        creation_time=_dt(row.created), start_time=_dt(row.started),
                        end_time=_dt(row.ended), queue_id=row.queue_id, input_region=row.region,
                        input_bucket=row.bucket, input_object=row.input_object or "", request=req,
                        template_id=t.get("template_id"), template_name=t.get("name"),
                        progress=row.reported_progress)
        if row.state in FINISHED_STATES and res:
            if res.get("media_result"):
                rec.media_result = [tuple(x) for x in res["media_result"]]  # type: ignore[misc]
            rec.media_info = res.get("media_info")
            rec.extra = dict(res.get("extra") or {})
        return rec

    def model_for(self, row: JobRow) -> str | None:
        """The model a job runs with: its own ``Model`` node, else the config's model for its mode."""
        t = row.template_dict
        if t:
            params = t["params"]
        else:
            inline = JobRequest.model_validate_json(row.request).params
            params = inline.to_wire() if inline else {}
        if params.get("Model"):
            return None  # run_job uses params.model
        return self.cfg.models.get(params.get("AudioMode") or "") or None

    # -- queue -------------------------------------------------------------------------
    def queue_for(self, bucket: str) -> QueueRow:
        return self.store.queue_for(bucket, name=self.cfg.queue_name, notify=self.cfg.queue_notify)

    # -- jobs --------------------------------------------------------------------------
    def submit(self, bucket: str, region: str, body: bytes) -> JobRecord:
        req, fmt = parse_job_request(body)
        meta = {"callback_format_explicit": _names_callback_format(body, fmt)}
        queue = self.queue_for(bucket)
        if req.queue_id and req.queue_id != queue.queue_id:
            raise invalid_argument(f"QueueId {req.queue_id} is not a queue of bucket {bucket} "
                       f"(its speech queue is {queue.queue_id})", "QueueId")
        template = None
        if req.operation.template_id:
            trow = self.store.template(bucket, req.operation.template_id)
            if trow is None:
                raise invalid_argument(f"TemplateId {req.operation.template_id} does not exist", "Operation.TemplateId")
            req = merge_template(req, VoiceSeparateParams.model_validate(trow.params_dict))
            template = {"template_id": trow.template_id, "name": trow.name,
                        "params": req.operation.voice_separate.to_wire()}
        self.storage.require(bucket, req.input_object)
        self.storage.bucket_path(req.output.bucket)  # validates the output bucket name
        now = datetime.now(timezone.utc).timestamp()
        row = self.store.add_job(job_id=new_job_id(), bucket=bucket, region=region, queue_id=queue.queue_id,
                                 tag=req.tag, level=req.operation.job_level, created=now,
                                 input_object=req.input_object,
                                 request=req.model_dump_json(by_alias=True), template=template, meta=meta)
        log.info("job %s submitted (bucket %s, level %s)", row.job_id, bucket, row.level)
        self.scheduler.wake()
        return self.record(row)

    def get(self, bucket: str, ids: Sequence[str]) -> tuple[list[JobRecord], list[str]]:
        ids = [i.strip() for i in ids if i.strip()]
        if not ids:
            raise invalid_argument("no job id given", "JobId")
        if len(ids) > MAX_QUERY_IDS:
            raise invalid_argument(f"at most {MAX_QUERY_IDS} job ids may be queried at once", "JobId")
        found = self.store.jobs(bucket, ids)
        return [self.record(found[i]) for i in ids if i in found], [i for i in ids if i not in found]

    def list(self, bucket: str, q: dict[str, str]) -> tuple[list[JobRecord], str]:
        tag = q.get("tag", "")
        if tag != "VoiceSeparate":
            raise invalid_argument(f"tag must be VoiceSeparate, got {tag!r}", "tag")
        order = q.get("orderByTime") or "Desc"
        if order not in ("Desc", "Asc"):
            raise invalid_argument("orderByTime must be Desc or Asc", "orderByTime")
        try:
            size = int(q.get("size") or 10)
        except ValueError:
            raise invalid_argument("size must be an integer", "size") from None
        if not 1 <= size <= 100:
            raise invalid_argument("size must be between 1 and 100", "size")
        states = [s.strip() for s in (q.get("states") or "All").split(",") if s.strip()]
        for s in states:
            if s != "All" and s not in JOB_STATES:
                raise invalid_argument(f"states: {s!r} is not one of All, {', '.join(JOB_STATES)}", "states")
        if "All" in states:
            states = []
        start = parse_time(q["startCreationTime"], field="startCreationTime").timestamp() \
            if q.get("startCreationTime") else None
        end = parse_time(q["endCreationTime"], field="endCreationTime").timestamp() \
            if q.get("endCreationTime") else None
        rows, token = self.store.list_jobs(
            bucket, tag=tag, queue_id=q.get("queueId") or None, states=states, start=start, end=end,
            ascending=order == "Asc", size=size, next_token=q.get("nextToken") or None,
            input_object=q.get("inputObject") or None, paused_queues=self.store.paused_queues())
        return [self.record(r) for r in rows], token

    def cancel(self, bucket: str, job_id: str) -> None:
        before = self.store.job(job_id)
        row = self.store.cancel(bucket, job_id)
        if before is not None and before.state != "Cancel":
            log_end(row)

    def job_finished(self, job_id: str) -> None:
        """Called by the scheduler when a job reaches Success/Failed: log it, send its callback."""
        row = self.store.job(job_id)
        if row is None:
            return
        log_end(row)
        req = JobRequest.model_validate_json(row.request)
        queue = self.store.queue(row.queue_id)
        mq = req.callback_mq_config
        target = choose_target(
            callback=req.callback, callback_format=req.callback_format, callback_type=req.callback_type,
            notify=queue.notify_dict if queue else {},
            job_fields_set={"CallBackFormat"} if row.meta_dict.get("callback_format_explicit") else set(),
            mq=f"{mq.mq_region}/{mq.mq_mode}/{mq.mq_name}" if mq else "")
        if target is None:
            return
        record = self.record(row)
        fmt = "json" if target.fmt == "JSON" else "xml"
        self.callbacks.submit(job_id, target, lambda: render_callback(record, fmt))

    # -- templates ---------------------------------------------------------------------
    def template_record(self, row: TemplateRow) -> TemplateRecord:
        return TemplateRecord(template_id=row.template_id, name=row.name, bucket_id=row.bucket,
                              params=VoiceSeparateParams.model_validate(row.params_dict),
                              create_time=_dt(row.created), update_time=_dt(row.updated),
                              category=row.category, tag=row.tag)

    def create_template(self, bucket: str, body: bytes) -> TemplateRecord:
        treq, _ = parse_template_request(body)
        row = self.store.add_template(bucket, name=treq.name or "", tag=treq.tag,
                                      params=treq.params.to_wire())
        return self.template_record(row)

    def update_template(self, bucket: str, template_id: str, body: bytes) -> TemplateRecord:
        treq, _ = parse_template_request(body)
        row = self.store.update_template(bucket, template_id, name=treq.name or "", tag=treq.tag,
                                         params=treq.params.to_wire())
        return self.template_record(row)

    def query_templates(self, bucket: str, q: dict[str, str]) -> tuple[list[TemplateRecord], int, int, int]:
        try:
            page = int(q.get("pageNumber") or 1)
            size = int(q.get("pageSize") or 10)
        except ValueError:
            raise invalid_argument("pageNumber and pageSize must be integers", "pageNumber") from None
        if page < 1 or not 1 <= size <= 100:
            raise invalid_argument("pageNumber must be ≥ 1 and pageSize 1..100", "pageSize")
        ids = [i for i in (q.get("ids") or "").split(",") if i]
        rows, total = self.store.query_templates(bucket, ids=ids, name=q.get("name") or "",
                                                 tag=q.get("tag") or None,
                                                 category=q.get("category") or "Custom",
                                                 page=page, page_size=size)
        return [self.template_record(r) for r in rows], total, page, size

    def delete_template(self, bucket: str, template_id: str) -> None:
        self.store.delete_template(bucket, template_id)

    # -- speech queue --------------------------------------------------------------------
    def queue_dict(self, q: QueueRow) -> dict[str, Any]:
        from ..request import format_time

        n = q.notify_dict
        notify = {"Url": n.get("Url", ""), "Event": n.get("Event", "TaskFinish"),
                  "Type": n.get("Type", "Url"), "State": n.get("State", "On" if n.get("Url") else "Off"),
                  "ResultFormat": n.get("ResultFormat", "XML")}
        for k in ("MqMode", "MqRegion", "MqName"):
            if n.get(k):
                notify[k] = n[k]
        return {"QueueId": q.queue_id, "Name": q.name, "State": q.state, "NotifyConfig": notify,
                "MaxSize": 10000, "MaxConcurrent": max(1, self.scheduler.n),
                "UpdateTime": format_time(_dt(q.updated)), "CreateTime": format_time(_dt(q.created)),
                "Category": "Speeching", "BucketId": q.bucket}

    def update_queue(self, bucket: str, queue_id: str, doc: dict[str, Any]) -> QueueRow:
        state = doc.get("State") or None
        if state is not None and state not in ("Active", "Paused"):
            raise invalid_argument("State must be Active or Paused", "State")
        name = doc.get("Name") or None
        if name is not None and len(name) > 128:
            raise invalid_argument("Name is longer than 128 characters", "Name")
        notify = doc.get("NotifyConfig")
        if notify is not None and not isinstance(notify, dict):
            notify = {}
        if isinstance(notify, dict):
            notify = {k: str(v) for k, v in notify.items() if isinstance(v, str)}
            if notify.get("ResultFormat") and notify["ResultFormat"].upper() not in ("XML", "JSON"):
                raise invalid_argument("NotifyConfig.ResultFormat must be XML or JSON", "NotifyConfig.ResultFormat")
            if notify.get("ResultFormat"):
                notify["ResultFormat"] = notify["ResultFormat"].upper()
            if notify.get("Url") and not is_http_url(notify["Url"]):
                raise invalid_argument(f"NotifyConfig.Url must be an http(s) URL, got {notify['Url'][:80]!r}",
                           "NotifyConfig.Url")
        q = self.store.update_queue(bucket, queue_id, name=name, state=state, notify=notify)
        log.info("queue %s is now %s", queue_id, q.state)
        if q.state == "Active":
            self.scheduler.wake()
        return q
