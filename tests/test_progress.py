"""``JobsDetail.Progress``: what workers report while a job runs, how the store keeps it, and what
the service shows (query, list, callback), plus the migration of a database made before the
``progress`` column existed.

The HTTP tests run the server with the **fake fast engine** (``tests/fake_engine.py``, chosen in
the config) and ``progress_steps``: it calls the engine's ``progress(i, steps)`` after each step, as
the real engine reports frames done.  A *gated* job runs its steps only as the test releases them,
so each test waits for what it needs (a step reached, a value in the store), never for a time.
The official SDK (``cos-python-sdk-v5``) is the client.
"""
from __future__ import annotations

import importlib.util
import json
import sqlite3
import threading
import time
from datetime import datetime, timezone
from http.server import ThreadingHTTPServer

import pytest
from fake_engine import FAKE, GATED, fake_engine, reached, release

from separator.jobs.job import percent_progress, run_payload
from separator.jobs.store import SCHEMA, JobStore
from separator.workers.child import Throttle

pytest.importorskip("qcloud_cos")

from separator.request import parse_job_request  # noqa: E402
from separator.server.testing import BUCKET, REGION, ServerProcess, write_config  # noqa: E402
from test_server_api import _Sink, canary, job_body, wait_jobs  # noqa: E402

B = BUCKET


# -- the worker side: throttling ---------------------------------------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_reporter_sends_only_changed_percentages_at_most_once_per_interval():
    clock, sent = _Clock(), []
    rep = percent_progress(Throttle(sent.append, interval=1.0, clock=clock))
    rep(0, 1000)                      # 0 %: what the store already says
    rep(5, 1000)                      # still 0 %
    rep(10, 1000)                     # 1 %: the first change goes at once
    assert sent == [1]
    for t, done in ((0.3, 200), (0.6, 500), (0.99, 900)):   # changes within the second: held back
        clock.t = 100.0 + t
        rep(done, 1000)
    assert sent == [1]
    clock.t = 101.0
    rep(900, 1000)                    # a second later: the current value
    assert sent == [1, 90]
    clock.t = 105.0
    rep(900, 1000)                    # same percentage: nothing, however long it has been
    rep(0, 0)                         # unknown total: ignored
    assert sent == [1, 90]
    clock.t = 107.0
    rep(1000, 1000)                   # 100 % is reserved for a finished job: 99
    clock.t = 109.0
    rep(1500, 1000)                   # past the end: still 99, not sent again
    assert sent[-1] == 99 and sent.count(99) == 1
    assert all(0 <= p <= 99 for p in sent)


def test_reporter_swallows_errors_and_stops_reporting():
    calls = []

    def broken(pct):
        calls.append(pct)
        raise BrokenPipeError("scheduler went away")

    rep = percent_progress(Throttle(broken, interval=0.0))
    for i in range(1, 11):
        rep(i, 10)                    # never raises
    assert calls == [10]              # one try, then reporting stops for this job


def _payload(tmp_path, **opts):
    from separator.storage import LocalStorage

    storage = LocalStorage(tmp_path / "storage")
    storage.bucket_path(B, create=True)
    storage.put_bytes(B, "in/song.wav", b"RIFF-not-really-audio" * 10)
    req, _ = parse_job_request(json.dumps(job_body()).encode())
    payload = {"job_id": "j" + "1" * 32, "attempt": 1, "bucket": B, "region": REGION,
               "queue_id": "p" + "2" * 32, "created": time.time(),
               "request": req.model_dump_json(by_alias=True), "template": None, "model": None}
    return payload, storage


def test_fake_engine_reports_steps_through_run_payload_and_failures_do_not_matter(tmp_path):
    payload, storage = _payload(tmp_path)
    sent = []
    result = run_payload(payload, fake_engine, storage, None, {"delay": 0.05, "progress_steps": 5},
                         percent_progress(Throttle(sent.append, interval=0.0)))
    assert result["state"] == "Success"
    assert sent == [20, 40, 60, 80, 99]

    def boom(_pct):
        raise OSError("pipe closed")

    result = run_payload(payload, fake_engine, storage, None, {"delay": 0.02, "progress_steps": 2},
                         percent_progress(Throttle(boom, interval=0.0)))
    assert result["state"] == "Success"


def test_engine_without_a_progress_parameter_still_runs(tmp_path):
    payload, storage = _payload(tmp_path)

    def strict_engine(req, storage, *, bucket, region, job_id, queue_id, created, template=None,
                      model=None, device=None, model_options=None):
        return fake_engine(req, storage, bucket=bucket, region=region, job_id=job_id,
                           queue_id=queue_id, created=created, template=template,
                           model_options=model_options)

    result = run_payload(payload, strict_engine, storage, None, {},
                         percent_progress(Throttle(lambda p: None)))
    assert result["state"] == "Success"


# -- the store ------------------------------------------------------------------------------------

def _add(store, n, queue):
    return store.add_job(job_id=f"j{n:032x}", bucket=B, region=REGION, queue_id=queue.queue_id,
                         tag="VoiceSeparate", level=0, created=1000.0 + n, input_object="in.wav",
                         request="{}", template=None)


def test_store_progress_rules(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    q = store.queue_for(B)
    a = _add(store, 1, q)
    assert a.progress == 0 and a.reported_progress == 0
    assert not store.set_progress(a.job_id, attempt=1, progress=50)      # not Running yet
    row = store.claim_next("w0")
    assert row.job_id == a.job_id and row.attempts == 1
    assert store.set_progress(a.job_id, attempt=1, progress=42)
    assert store.job(a.job_id).reported_progress == 42
    assert store.set_progress(a.job_id, attempt=1, progress=100)         # clamped: not done yet
    assert store.job(a.job_id).progress == 99
    assert not store.set_progress(a.job_id, attempt=2, progress=10)      # another attempt
    assert store.requeue(a.job_id, attempt=1, crashed=True, max_attempts=2) == "Submitted"
    assert store.job(a.job_id).reported_progress == 0                    # runs again from the start
    store.claim_next("w0")
    store.set_progress(a.job_id, attempt=2, progress=30)
    assert store.finish(a.job_id, attempt=2, state="Success", code="Success", message="", result={})
    assert store.job(a.job_id).progress == 100 and store.job(a.job_id).reported_progress == 100
    assert not store.set_progress(a.job_id, attempt=2, progress=5)       # finished: unchanged
    b = _add(store, 2, q)
    store.claim_next("w0")
    store.set_progress(b.job_id, attempt=1, progress=37)
    store.finish(b.job_id, attempt=1, state="Failed", code="InternalError", message="x", result={})
    assert store.job(b.job_id).reported_progress == 37                   # the last known value
    c = _add(store, 3, q)
    store.cancel(B, c.job_id)
    assert store.job(c.job_id).reported_progress == 0
    d = _add(store, 4, q)
    store.claim_next("w0")
    store.set_progress(d.job_id, attempt=1, progress=64)
    assert store.recover() == [d.job_id]
    assert store.job(d.job_id).reported_progress == 0
    store.close()


OLD_SCHEMA = SCHEMA.replace(",\n    progress     INTEGER NOT NULL DEFAULT 0", "")


def test_old_database_without_the_column_is_migrated(tmp_path):
    assert OLD_SCHEMA != SCHEMA and "progress" not in OLD_SCHEMA
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO queues VALUES ('p1', ?, 'speech-queue', 'Active', '{}', 1, 1)", (B,))
    for jid, state in (("jold-success", "Success"), ("jold-running", "Running"),
                       ("jold-failed", "Failed"), ("jold-waiting", "Submitted")):
        db.execute("INSERT INTO jobs(job_id,bucket,region,queue_id,tag,state,created,request,attempts) "
                   "VALUES (?,?,?,?,'VoiceSeparate',?,1000,'{}',1)", (jid, B, REGION, "p1", state))
    db.commit()
    db.close()
    store = JobStore(path)
    cols = [r[1] for r in store._db().execute("PRAGMA table_info(jobs)")]
    assert cols[-1] == "progress"
    got = {j: store.job(j).reported_progress for j in ("jold-success", "jold-running", "jold-failed",
                                                       "jold-waiting")}
    assert got == {"jold-success": 100, "jold-running": 0, "jold-failed": 0, "jold-waiting": 0}
    assert store.set_progress("jold-running", attempt=1, progress=12)
    store.close()
    again = JobStore(path)                     # opening a migrated database changes nothing
    assert again.job("jold-running").reported_progress == 12
    rows, _ = again.list_jobs(B, size=10)
    assert len(rows) == 4
    again.close()


# -- over HTTP ------------------------------------------------------------------------------------

STEPS = 40   # a gated job's progress steps (2.5 % each); the worker sends about one value a second


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    base = tmp_path_factory.mktemp("progress")
    root = base / "storage"
    root.mkdir()
    gate = base / "gate"
    gate.mkdir()
    cfg = write_config(base / "server.toml", engine=FAKE,
                       engine_options={"delay": 0.0, "progress_steps": STEPS, "gate": str(gate)},
                       callback_timeout=2.0, callback_retries=1, callback_backoff=0.1)
    server = ServerProcess(root, cfg, workers=1).start()
    client = server.client()
    client.put_object(Bucket=B, Body=b"RIFF-not-really-audio" * 10, Key="in/song.wav")
    yield {"server": server, "client": client, "root": root, "gate": gate}
    server.stop()


class _ProgressSink(_Sink):
    got: list = []


def _listed(client, job_id, states):
    r = client.ci_list_media_jobs(Bucket=B, Tag="VoiceSeparate", States=states, Size=100)
    return next(d for d in r.get("JobsDetail", []) if d["JobId"] == job_id)


def _wait_for(cond, timeout=60.0, what="", required=True):
    """``cond()`` once it is true; after ``timeout`` s a failure (or None when not ``required``)."""
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            assert not required, f"timed out waiting for {what}"
            return None
        time.sleep(0.02)
    return value


def _poll(c, job_id, seen, until, timeout=60.0, what="", required=True):
    """Query the job until ``until(detail)``; every (State, Progress) seen goes to ``seen``."""
    def check():
        d = c.ci_get_media_jobs(Bucket=B, JobIDs=job_id)["JobsDetail"][0]
        seen.append((d["State"], int(d["Progress"])))
        return d if until(d) else None
    return _wait_for(check, timeout, what or f"job {job_id}", required)


def _step_until_moved(c, gate, job_id, step, seen):
    """Release a gated job's steps one at a time (each once the engine reached the previous one)
    until its stored Progress moves past the last value seen; the step it took."""
    last = seen[-1][1]
    while True:
        step += 1
        assert step < STEPS, f"the progress never moved: {seen}"
        release(gate, job_id, step)
        _wait_for(lambda: reached(gate, job_id) >= step, what=f"step {step}")
        # a short look: a value the worker held back (throttled) shows after a later step
        if _poll(c, job_id, seen, lambda d: int(d["Progress"]) > last, timeout=0.25, required=False):
            return step


def test_running_job_reports_increasing_progress_then_100(srv):
    c, gate = srv["client"], srv["gate"]
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _ProgressSink)
    _ProgressSink.got = []
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{sink.server_address[1]}/cb"
        created = c.ci_create_media_jobs(Bucket=B, Jobs=job_body(CallBack=url, CallBackFormat="JSON",
                                                                 UserData=GATED),
                                         Lst={})["JobsDetail"][0]
        job_id = created["JobId"]
        assert created["State"] == "Submitted" and created["Progress"] == "0"
        seen = []
        _poll(c, job_id, seen, lambda d: d["State"] == "Running", what="the job to start")
        step = _step_until_moved(c, gate, job_id, 0, seen)
        listed = int(_listed(c, job_id, "Running")["Progress"])   # the list shows it too
        _step_until_moved(c, gate, job_id, step, seen)
        release(gate, job_id, STEPS)
        _poll(c, job_id, seen, lambda d: d["State"] in ("Success", "Failed"), what="the job to end")
        assert seen[-1] == ("Success", 100), seen
        running = [p for s, p in seen if s == "Running"]
        assert running == sorted(running), seen                      # never goes back
        assert all(0 <= p <= 99 for p in running), seen              # 100 only once it succeeded
        between = sorted({p for p in running if 0 < p < 100})
        assert len(between) >= 2, seen                               # it moved while running
        assert len(between) <= 8, seen                               # throttled: not one per step
        assert listed is not None and 0 < listed < 100
        assert _listed(c, job_id, "Success")["Progress"] == "100"
        _wait_for(lambda: _ProgressSink.got, timeout=10, what="the callback")
        doc = json.loads(_ProgressSink.got[0][2])
        assert doc["JobsDetail"]["JobId"] == job_id and doc["JobsDetail"]["Progress"] == "100"
    finally:
        sink.shutdown()


def test_waiting_job_reports_0(srv):
    c = srv["client"]
    q = c.ci_get_asr_queue(Bucket=B)["QueueList"][0]
    c.ci_update_asr_queue(Bucket=B, QueueId=q["QueueId"], Request={"State": "Paused"})
    try:
        created = c.ci_create_media_jobs(Bucket=B, Jobs=job_body(), Lst={})["JobsDetail"][0]
        job_id = created["JobId"]
        assert created["Progress"] == "0"
        canary(c)                                # a later job ran: this one was passed over
        d = c.ci_get_media_jobs(Bucket=B, JobIDs=job_id)["JobsDetail"][0]
        assert d["State"] == "Submitted" and d["Progress"] == "0"
        assert _listed(c, job_id, "Submitted")["Progress"] == "0"
        c.ci_cancel_jobs(Bucket=B, JobID=job_id)
        d = c.ci_get_media_jobs(Bucket=B, JobIDs=job_id)["JobsDetail"][0]
        assert d["State"] == "Cancel" and d["Progress"] == "0"
    finally:
        c.ci_update_asr_queue(Bucket=B, QueueId=q["QueueId"], Request={"State": "Active"})


def test_database_of_the_previous_version_is_migrated_and_served(tmp_path):
    root = tmp_path / "storage"
    root.mkdir()
    cfg = write_config(tmp_path / "server.toml", engine=FAKE,
                       engine_options={"delay": 0.3, "progress_steps": 3})
    with ServerProcess(root, cfg) as server:
        c = server.client()
        c.put_object(Bucket=B, Body=b"audio" * 100, Key="in/song.wav")
        old = c.ci_create_media_jobs(Bucket=B, Jobs=job_body(), Lst={})["JobsDetail"][0]["JobId"]
        assert wait_jobs(c, [old])[old]["State"] == "Success"
    db_path = root / ".separator" / "jobs.sqlite3"
    db = sqlite3.connect(db_path)              # what the previous version left: no progress column
    db.execute("ALTER TABLE jobs DROP COLUMN progress")
    db.commit()
    assert "progress" not in [r[1] for r in db.execute("PRAGMA table_info(jobs)")]
    db.close()
    with ServerProcess(root, cfg) as server:
        c = server.client()
        d = wait_jobs(c, [old])[old]
        assert d["State"] == "Success" and d["Progress"] == "100"
        assert d["Operation"]["MediaResult"]["OutputFile"]["ObjectName"]
        listed = c.ci_list_media_jobs(Bucket=B, Tag="VoiceSeparate", Size=10)["JobsDetail"]
        assert [x["Progress"] for x in listed if x["JobId"] == old] == ["100"]
        new = c.ci_create_media_jobs(Bucket=B, Jobs=job_body(), Lst={})["JobsDetail"][0]["JobId"]
        assert wait_jobs(c, [new])[new]["Progress"] == "100"
    db = sqlite3.connect(db_path)
    assert "progress" in [r[1] for r in db.execute("PRAGMA table_info(jobs)")]
    db.close()


def test_record_progress_is_never_100_before_success():
    """The rendering rule in one place: JobRow.reported_progress per state."""
    from separator.jobs.store import JobRow

    def row(state, progress):
        return JobRow(seq=1, job_id="j", bucket=B, region=REGION, queue_id="p", tag="VoiceSeparate",
                      state=state, level=0, created=datetime.now(timezone.utc).timestamp(),
                      started=None, ended=None, input_object=None, request="{}", template=None,
                      result=None, code="Success", message="", attempts=1, crashes=0, worker=None,
                      progress=progress)

    assert row("Submitted", 55).reported_progress == 0
    assert row("Running", 100).reported_progress == 99
    assert row("Running", 63).reported_progress == 63
    assert row("Success", 0).reported_progress == 100
    assert row("Failed", 71).reported_progress == 71
    assert row("Cancel", 0).reported_progress == 0


# -- on Ray actors ----------------------------------------------------------------------------------

HAVE_RAY = importlib.util.find_spec("ray") is not None


@pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'separator[ray]')")
def test_progress_from_a_ray_actor(tmp_path):
    """With ``--ray-address`` the pool asks the busy actor about once a second."""
    from ray_nodes import two_node_cluster

    root = tmp_path / "storage"
    root.mkdir()
    gate = tmp_path / "gate"
    gate.mkdir()
    with two_node_cluster() as cluster:
        cfg = write_config(tmp_path / "server.toml", engine=FAKE,
                           engine_options={"delay": 0.0, "progress_steps": STEPS, "gate": str(gate)},
                           ray_address=cluster["address"])
        with ServerProcess(root, cfg, workers=1, log=tmp_path / "server.log") as server:
            c = server.client()
            c.put_object(Bucket=B, Body=b"audio" * 100, Key="in/song.wav")
            job_id = c.ci_create_media_jobs(Bucket=B, Jobs=job_body(UserData=GATED),
                                            Lst={})["JobsDetail"][0]["JobId"]
            seen = []
            _poll(c, job_id, seen, lambda d: d["State"] == "Running", timeout=90, what="the job to start")
            _step_until_moved(c, gate, job_id, 0, seen)
            release(gate, job_id, STEPS)
            _poll(c, job_id, seen, lambda d: d["State"] in ("Success", "Failed"), what="the job to end")
            assert seen[-1] == ("Success", 100), seen
            running = [p for s, p in seen if s == "Running"]
            assert running == sorted(running) and all(p <= 99 for p in running), seen
            assert any(0 < p < 100 for p in running), seen
        assert "Ray actor(s)" in (tmp_path / "server.log").read_text()
