"""The job service's persistent state: jobs, templates and queues in one SQLite file.

stdlib ``sqlite3`` in WAL mode, one connection per thread, every state change in one
short transaction.  The state machine (spec §2.4) is enforced here, in the ``WHERE``
clauses, so that two threads (request handlers, the scheduler) can never move a job
twice:

* ``Submitted → Running``   :meth:`JobStore.claim_next` (highest JobLevel, then FIFO);
* ``Running → Success|Failed`` :meth:`JobStore.finish` (only a Running job of the same attempt);
* ``Running → Submitted``   :meth:`JobStore.requeue` (its worker died) and :meth:`JobStore.recover`
  (the server stopped while it ran: it runs again from the start);
* ``Submitted → Cancel``    :meth:`JobStore.cancel`.

``progress`` (0–100) is the percentage a Running job last reported (:meth:`JobStore.set_progress`,
one cheap UPDATE per throttled worker message); :attr:`JobRow.reported_progress` is what
``JobsDetail.Progress`` shows.  A database made before the column existed gets it on open
(``ALTER TABLE``; old rows read 0).

Times are stored as UNIX seconds (float); the request is stored as the JSON of the parsed
:class:`~separator.request.JobRequest` and the result (MediaResult, MediaInfo, …) as JSON.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import invalid_argument
from ..storage.database import Database
from ..workers.pool import should_retry

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT NOT NULL UNIQUE,
    bucket       TEXT NOT NULL,
    region       TEXT NOT NULL,
    queue_id     TEXT NOT NULL,
    tag          TEXT NOT NULL,
    state        TEXT NOT NULL,
    level        INTEGER NOT NULL DEFAULT 0,
    created      REAL NOT NULL,
    started      REAL,
    ended        REAL,
    input_object TEXT,
    request      TEXT NOT NULL,
    template     TEXT,
    result       TEXT,
    code         TEXT NOT NULL DEFAULT 'Success',
    message      TEXT NOT NULL DEFAULT '',
    attempts     INTEGER NOT NULL DEFAULT 0,
    crashes      INTEGER NOT NULL DEFAULT 0,
    worker       TEXT,
    meta         TEXT NOT NULL DEFAULT '{}',
    progress     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_pick ON jobs(state, level DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_bucket ON jobs(bucket, seq);
CREATE TABLE IF NOT EXISTS templates (
    template_id TEXT PRIMARY KEY,
    bucket      TEXT NOT NULL,
    name        TEXT NOT NULL,
    tag         TEXT NOT NULL,
    category    TEXT NOT NULL DEFAULT 'Custom',
    params      TEXT NOT NULL,
    created     REAL NOT NULL,
    updated     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS queues (
    queue_id TEXT PRIMARY KEY,
    bucket   TEXT NOT NULL UNIQUE,
    name     TEXT NOT NULL,
    state    TEXT NOT NULL DEFAULT 'Active',
    notify   TEXT NOT NULL DEFAULT '{}',
    created  REAL NOT NULL,
    updated  REAL NOT NULL
);
"""



def new_id(prefix: str, hex_len: int) -> str:
    return prefix + secrets.token_hex((hex_len + 1) // 2)[:hex_len]


@dataclass
class JobRow:
    seq: int
    job_id: str
    bucket: str
    region: str
    queue_id: str
    tag: str
    state: str
    level: int
    created: float
    started: float | None
    ended: float | None
    input_object: str | None
    request: str
    template: str | None
    result: str | None
    code: str
    message: str
    attempts: int
    crashes: int
    worker: str | None
    meta: str = "{}"
    progress: int = 0

    @property
    def reported_progress(self) -> int:
        """``JobsDetail.Progress``: 0 while waiting, the last reported percentage while Running
        (never 100 before the job succeeded), 100 once Success, the last known value otherwise."""
        stored = max(0, min(100, int(self.progress or 0)))
        if self.state == "Success":
            return 100
        if self.state == "Submitted":
            return 0
        if self.state in ("Running", "Pause"):
            return min(stored, 99)
        return stored  # Failed, Cancel

    @property
    def meta_dict(self) -> dict[str, Any]:
        return json.loads(self.meta or "{}")

    @property
    def template_dict(self) -> dict[str, Any] | None:
        return json.loads(self.template) if self.template else None

    @property
    def result_dict(self) -> dict[str, Any]:
        return json.loads(self.result) if self.result else {}


@dataclass
class TemplateRow:
    template_id: str
    bucket: str
    name: str
    tag: str
    category: str
    params: str
    created: float
    updated: float

    @property
    def params_dict(self) -> dict[str, Any]:
        return json.loads(self.params)


@dataclass
class QueueRow:
    queue_id: str
    bucket: str
    name: str
    state: str
    notify: str
    created: float
    updated: float

    @property
    def notify_dict(self) -> dict[str, str]:
        return json.loads(self.notify or "{}")


class JobStore:
    """All persistent state of one ``separator serve`` (thread-safe; one connection per thread)."""

    def __init__(self, path: str | Path):
        self.database = Database(path, SCHEMA)
        self.path = self.database.path
        self._migrate()

    # -- plumbing ------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        return self.database.db()

    def _migrate(self) -> None:
        """Bring a database made by an older version up to :data:`SCHEMA` (columns added since)."""
        db = self._db()
        have = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
        if "progress" not in have:
            try:
                db.execute("ALTER TABLE jobs ADD COLUMN progress INTEGER NOT NULL DEFAULT 0")
            except sqlite3.OperationalError as err:  # another process added it meanwhile
                if "duplicate column" not in str(err):
                    raise

    def _tx(self):
        return self.database.tx()

    def close(self) -> None:
        self.database.close()

    # -- jobs ----------------------------------------------------------------
    def add_job(self, *, job_id: str, bucket: str, region: str, queue_id: str, tag: str, level: int,
                created: float, input_object: str | None, request: str,
                template: dict[str, Any] | None, meta: dict[str, Any] | None = None) -> JobRow:
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs(job_id,bucket,region,queue_id,tag,state,level,created,input_object,"
                "request,template,meta) VALUES (?,?,?,?,?,'Submitted',?,?,?,?,?,?)",
                (job_id, bucket, region, queue_id, tag, int(level), created, input_object, request,
                 json.dumps(template) if template else None, json.dumps(meta or {})))
            # read back inside the transaction: the row as submitted, even if the scheduler
            # dispatches it the moment it is committed (the create response says Submitted)
            row = self.job(job_id, db)
        assert row is not None
        return row

    def job(self, job_id: str, db: sqlite3.Connection | None = None) -> JobRow | None:
        r = (db or self._db()).execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return JobRow(**dict(r)) if r else None

    def jobs(self, bucket: str, job_ids: Sequence[str]) -> dict[str, JobRow]:
        out: dict[str, JobRow] = {}
        for jid in job_ids:
            row = self.job(jid)
            if row is not None and row.bucket == bucket:
                out[jid] = row
        return out

    def list_jobs(self, bucket: str, *, tag: str | None = None, queue_id: str | None = None,
                  states: Iterable[str] = (), start: float | None = None, end: float | None = None,
                  ascending: bool = False, size: int = 10, next_token: str | None = None,
                  input_object: str | None = None,
                  paused_queues: Iterable[str] = ()) -> tuple[list[JobRow], str]:
        """One page of a bucket's jobs and the token of the next page ('' on the last page).

        ``states`` may contain ``Pause``: waiting jobs of a paused queue match it (they are
        reported as ``Submitted``; see the server's behaviour notes).
        """
        where, args = ["bucket=?"], [bucket]
        if tag:
            where.append("tag=?")
            args.append(tag)
        if queue_id:
            where.append("queue_id=?")
            args.append(queue_id)
        if input_object:
            where.append("input_object=?")
            args.append(input_object)
        states = [s for s in states if s and s != "All"]
        if states:
            ors = []
            plain = [s for s in states if s != "Pause"]
            if plain:
                ors.append(f"state IN ({','.join('?' * len(plain))})")
                args.extend(plain)
            if "Pause" in states:
                paused = list(paused_queues)
                ors.append("state='Pause'")
                if paused:
                    ors.append(f"(state='Submitted' AND queue_id IN ({','.join('?' * len(paused))}))")
                    args.extend(paused)
            where.append("(" + " OR ".join(ors) + ")")
        if start is not None:
            where.append("created>=?")
            args.append(start)
        if end is not None:
            where.append("created<=?")
            args.append(end)
        if next_token:
            try:
                after = int(next_token, 16)
            except ValueError:
                raise invalid_argument(f"nextToken {next_token!r} is not a token this server issued",
                               "nextToken") from None
            where.append("seq>?" if ascending else "seq<?")
            args.append(after)
        order = "ASC" if ascending else "DESC"
        rows = self._db().execute(
            f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ?",
            (*args, size + 1)).fetchall()
        page = [JobRow(**dict(r)) for r in rows[:size]]
        token = format(page[-1].seq, "x") if len(rows) > size and page else ""
        return page, token

    def claim_next(self, worker: str) -> JobRow | None:
        """Move the next runnable job to Running: highest JobLevel first, FIFO within a level,
        skipping jobs whose queue is paused."""
        with self._tx() as db:
            r = db.execute(
                "SELECT j.job_id FROM jobs j JOIN queues q ON q.queue_id=j.queue_id "
                "WHERE j.state='Submitted' AND q.state='Active' ORDER BY j.level DESC, j.seq ASC LIMIT 1"
            ).fetchone()
            if r is None:
                return None
            db.execute("UPDATE jobs SET state='Running', started=?, attempts=attempts+1, worker=?, "
                       "progress=0 WHERE job_id=? AND state='Submitted'", (time.time(), worker, r["job_id"]))
        return self.job(r["job_id"])

    def finish(self, job_id: str, *, attempt: int, state: str, code: str, message: str,
               result: dict[str, Any] | None, started: float | None = None,
               ended: float | None = None) -> bool:
        """Record a job's end; False (and nothing changed) unless it is Running that attempt."""
        assert state in ("Success", "Failed")
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state=?, code=?, message=?, result=?, started=COALESCE(?, started), "
                "ended=?, worker=NULL, progress=CASE WHEN ?='Success' THEN 100 ELSE progress END "
                "WHERE job_id=? AND state='Running' AND attempts=?",
                (state, code, message, json.dumps(result) if result is not None else None, started,
                 ended or time.time(), state, job_id, attempt))
            return cur.rowcount == 1

    def set_progress(self, job_id: str, *, attempt: int, progress: int) -> bool:
        """Record the percentage a Running job reported (clamped to 0–99: 100 means it
        succeeded, which only :meth:`finish` says).  One UPDATE, no explicit transaction; a
        report for another attempt or a job no longer Running changes nothing (False)."""
        pct = max(0, min(99, int(progress)))
        cur = self._db().execute("UPDATE jobs SET progress=? WHERE job_id=? AND state='Running' "
                                 "AND attempts=?", (pct, job_id, int(attempt)))
        return cur.rowcount == 1

    def requeue(self, job_id: str, *, attempt: int, crashed: bool, max_attempts: int,
                message: str = "") -> str | None:
        """A Running job whose worker went away: back to Submitted, or Failed once it has
        crashed ``max_attempts`` times.  Returns the new state (None if it was not Running)."""
        with self._tx() as db:
            row = db.execute("SELECT crashes FROM jobs WHERE job_id=? AND state='Running' AND attempts=?",
                             (job_id, attempt)).fetchone()
            if row is None:
                return None
            crashes = row["crashes"] + (1 if crashed else 0)
            if not should_retry(crashes, max_attempts):
                db.execute("UPDATE jobs SET state='Failed', code='InternalError', message=?, crashes=?, "
                           "ended=?, worker=NULL WHERE job_id=?",
                           (message or f"the worker running this job died {crashes} times",
                            crashes, time.time(), job_id))
                return "Failed"
            db.execute("UPDATE jobs SET state='Submitted', started=NULL, crashes=?, worker=NULL, "
                       "progress=0 WHERE job_id=?", (crashes, job_id))
            return "Submitted"

    def recover(self) -> list[str]:
        """At start: jobs left Running by a stopped server run again from the start."""
        with self._tx() as db:
            ids = [r["job_id"] for r in db.execute("SELECT job_id FROM jobs WHERE state='Running'")]
            db.execute("UPDATE jobs SET state='Submitted', started=NULL, worker=NULL, progress=0 "
                       "WHERE state='Running'")
        return ids

    def cancel(self, bucket: str, job_id: str) -> JobRow:
        with self._tx() as db:
            r = db.execute("SELECT state FROM jobs WHERE job_id=? AND bucket=?", (job_id, bucket)).fetchone()
            if r is None:
                raise invalid_argument(f"job {job_id} does not exist", job_id)
            if r["state"] == "Cancel":
                pass
            elif r["state"] in ("Submitted", "Pause"):
                db.execute("UPDATE jobs SET state='Cancel', ended=? WHERE job_id=?", (time.time(), job_id))
            else:
                raise invalid_argument("The job provided can not be modified", job_id)
        row = self.job(job_id)
        assert row is not None
        return row

    def count(self, *states: str) -> int:
        q = "SELECT COUNT(*) FROM jobs"
        if states:
            q += f" WHERE state IN ({','.join('?' * len(states))})"
        return self._db().execute(q, states).fetchone()[0]

    # -- templates -----------------------------------------------------------
    def add_template(self, bucket: str, *, name: str, tag: str, params: dict[str, Any]) -> TemplateRow:
        tid, now = new_id("t", 33), time.time()
        with self._tx() as db:
            db.execute("INSERT INTO templates VALUES (?,?,?,?,'Custom',?,?,?)",
                       (tid, bucket, name, tag, json.dumps(params), now, now))
        return self.template(bucket, tid)  # type: ignore[return-value]

    def update_template(self, bucket: str, template_id: str, *, name: str, tag: str,
                        params: dict[str, Any]) -> TemplateRow:
        with self._tx() as db:
            cur = db.execute("UPDATE templates SET name=?, tag=?, params=?, updated=? "
                             "WHERE template_id=? AND bucket=?",
                             (name, tag, json.dumps(params), time.time(), template_id, bucket))
            if cur.rowcount != 1:
                raise invalid_argument(f"template {template_id} does not exist", template_id)
        return self.template(bucket, template_id)  # type: ignore[return-value]

    def template(self, bucket: str, template_id: str) -> TemplateRow | None:
        r = self._db().execute("SELECT * FROM templates WHERE template_id=? AND bucket=?",
                               (template_id, bucket)).fetchone()
        return TemplateRow(**dict(r)) if r else None

    def query_templates(self, bucket: str, *, ids: Sequence[str] = (), name: str = "",
                        tag: str | None = None, category: str | None = None,
                        page: int = 1, page_size: int = 10) -> tuple[list[TemplateRow], int]:
        where, args = ["bucket=?"], [bucket]
        if ids:
            where.append(f"template_id IN ({','.join('?' * len(ids))})")
            args.extend(ids)
        if name:
            where.append("substr(name, 1, ?) = ?")
            args.extend([len(name), name])
        if tag and tag != "All":
            where.append("tag=?")
            args.append(tag)
        if category and category != "All":
            where.append("category=?")
            args.append(category)
        w = " AND ".join(where)
        total = self._db().execute(f"SELECT COUNT(*) FROM templates WHERE {w}", args).fetchone()[0]
        rows = self._db().execute(f"SELECT * FROM templates WHERE {w} ORDER BY created, template_id "
                                  "LIMIT ? OFFSET ?", (*args, page_size, (page - 1) * page_size))
        return [TemplateRow(**dict(r)) for r in rows], total

    def delete_template(self, bucket: str, template_id: str) -> None:
        with self._tx() as db:
            cur = db.execute("DELETE FROM templates WHERE template_id=? AND bucket=?", (template_id, bucket))
            if cur.rowcount != 1:
                raise invalid_argument(f"template {template_id} does not exist", template_id)

    # -- queues --------------------------------------------------------------
    def queue_for(self, bucket: str, *, name: str = "speech-queue",
                  notify: dict[str, str] | None = None) -> QueueRow:
        """The bucket's speech queue, created on first use (one per bucket)."""
        r = self._db().execute("SELECT * FROM queues WHERE bucket=?", (bucket,)).fetchone()
        if r is None:
            now = time.time()
            with self._tx() as db:
                db.execute("INSERT OR IGNORE INTO queues VALUES (?,?,?,'Active',?,?,?)",
                           (new_id("p", 32), bucket, name, json.dumps(notify or {}), now, now))
            r = self._db().execute("SELECT * FROM queues WHERE bucket=?", (bucket,)).fetchone()
        return QueueRow(**dict(r))

    def queue(self, queue_id: str) -> QueueRow | None:
        r = self._db().execute("SELECT * FROM queues WHERE queue_id=?", (queue_id,)).fetchone()
        return QueueRow(**dict(r)) if r else None

    def paused_queues(self) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT queue_id FROM queues WHERE state='Paused'")]

    def update_queue(self, bucket: str, queue_id: str, *, name: str | None = None,
                     state: str | None = None, notify: dict[str, str] | None = None) -> QueueRow:
        with self._tx() as db:
            r = db.execute("SELECT * FROM queues WHERE queue_id=? AND bucket=?", (queue_id, bucket)).fetchone()
            if r is None:
                raise invalid_argument(f"queue {queue_id} does not exist", queue_id)
            db.execute("UPDATE queues SET name=?, state=?, notify=?, updated=? WHERE queue_id=?",
                       (name if name else r["name"], state or r["state"],
                        json.dumps(notify) if notify is not None else r["notify"], time.time(), queue_id))
        q = self.queue(queue_id)
        assert q is not None
        return q
