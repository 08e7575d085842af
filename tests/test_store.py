"""The SQLite job store: the state machine, priorities, crash/restart recovery, paging, templates."""
from __future__ import annotations

import threading

import pytest

from separator.errors import CIError
from separator.jobs.store import JobStore

B = "test-1250000000"


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def add(store, n, level=0, created=None, queue=None):
    q = queue or store.queue_for(B)
    return store.add_job(job_id=f"j{n:032x}", bucket=B, region="ap-guangzhou", queue_id=q.queue_id,
                         tag="VoiceSeparate", level=level, created=created or 1000.0 + n,
                         input_object="in.wav", request="{}", template=None)


def test_priority_then_fifo(store):
    for n, level in enumerate([0, 0, 2, 1, 2, 0]):
        add(store, n, level)
    order = []
    while (row := store.claim_next("w0")) is not None:
        order.append(int(row.job_id[1:], 16))
        assert row.state == "Running" and row.attempts == 1
    assert order == [2, 4, 3, 0, 1, 5]


def test_paused_queue_is_skipped_and_pause_filter_matches_waiting(store):
    q = store.queue_for(B)
    assert q.queue_id.startswith("p") and len(q.queue_id) == 33
    assert store.queue_for(B).queue_id == q.queue_id  # one per bucket
    add(store, 1)
    store.update_queue(B, q.queue_id, state="Paused")
    assert store.claim_next("w0") is None
    rows, _ = store.list_jobs(B, states=["Pause"], paused_queues=store.paused_queues())
    assert [r.state for r in rows] == ["Submitted"]
    store.update_queue(B, q.queue_id, state="Active")
    assert store.claim_next("w0").job_id == f"j{1:032x}"


def test_finish_only_once_and_only_the_current_attempt(store):
    add(store, 1)
    row = store.claim_next("w0")
    assert not store.finish(row.job_id, attempt=row.attempts + 1, state="Success", code="Success", message="",
                            result={})
    assert store.finish(row.job_id, attempt=row.attempts, state="Success", code="Success", message="", result={})
    assert not store.finish(row.job_id, attempt=row.attempts, state="Failed", code="X", message="", result={})
    assert store.job(row.job_id).state == "Success"


def test_crash_retries_once_then_fails(store):
    add(store, 1)
    row = store.claim_next("w0")
    assert store.requeue(row.job_id, attempt=1, crashed=True, max_attempts=2) == "Submitted"
    row = store.claim_next("w0")
    assert row.attempts == 2
    assert store.requeue(row.job_id, attempt=2, crashed=True, max_attempts=2) == "Failed"
    row = store.job(row.job_id)
    assert row.state == "Failed" and row.code == "InternalError"


def test_recover_runs_interrupted_jobs_again_without_duplicates(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    s = JobStore(path)
    for n in range(3):
        add(s, n)
    running = s.claim_next("w0")
    done = s.claim_next("w0")
    s.finish(done.job_id, attempt=1, state="Success", code="Success", message="", result={"x": 1})
    s.close()
    s2 = JobStore(path)  # "restart"
    assert s2.recover() == [running.job_id]
    states = {r.job_id: r.state for r in s2.list_jobs(B, size=100)[0]}
    assert states == {running.job_id: "Submitted", done.job_id: "Success", f"j{2:032x}": "Submitted"}
    assert s2.job(done.job_id).result_dict == {"x": 1}
    assert s2.claim_next("w0").job_id == running.job_id  # keeps its place
    s2.close()


def test_cancel_rules(store):
    add(store, 1)
    add(store, 2)
    assert store.cancel(B, f"j{1:032x}").state == "Cancel"
    assert store.cancel(B, f"j{1:032x}").state == "Cancel"  # idempotent
    store.claim_next("w0")
    with pytest.raises(CIError) as ei:
        store.cancel(B, f"j{2:032x}")
    assert ei.value.code == "InvalidArgument" and "can not be modified" in ei.value.message
    with pytest.raises(CIError):
        store.cancel("other-1250000000", f"j{2:032x}")


def test_list_paging_order_window_and_states(store):
    for n in range(25):
        add(store, n, created=1000.0 + n)
    seen, token = [], None
    while True:
        rows, token = store.list_jobs(B, size=10, next_token=token, ascending=True)
        seen += [r.created for r in rows]
        if not token:
            break
    assert seen == [1000.0 + n for n in range(25)]
    rows, _ = store.list_jobs(B, size=100, start=1005, end=1009)
    assert [r.created for r in rows] == [1009.0, 1008.0, 1007.0, 1006.0, 1005.0]
    store.cancel(B, f"j{3:032x}")
    rows, _ = store.list_jobs(B, states=["Cancel"])
    assert [r.job_id for r in rows] == [f"j{3:032x}"]
    with pytest.raises(CIError):
        store.list_jobs(B, next_token="zz")


def test_templates(store):
    a = store.add_template(B, name="vocals-mp3", tag="VoiceSeparate", params={"AudioMode": "IsAudio"})
    store.add_template(B, name="music", tag="VoiceSeparate", params={"AudioMode": "MusicMode"})
    assert a.template_id.startswith("t") and len(a.template_id) == 34
    rows, total = store.query_templates(B, name="voc")
    assert total == 1 and rows[0].template_id == a.template_id
    rows, total = store.query_templates(B, page=2, page_size=1)
    assert total == 2 and rows[0].name == "music"
    u = store.update_template(B, a.template_id, name="v2", tag="VoiceSeparate", params={"AudioMode": "IsBackground"})
    assert u.params_dict == {"AudioMode": "IsBackground"} and u.name == "v2"
    store.delete_template(B, a.template_id)
    assert store.template(B, a.template_id) is None
    with pytest.raises(CIError):
        store.delete_template(B, a.template_id)


def test_concurrent_claims_never_hand_out_a_job_twice(store):
    for n in range(60):
        add(store, n)
    got, lock = [], threading.Lock()

    def worker(name):
        while (row := store.claim_next(name)) is not None:
            with lock:
                got.append(row.job_id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 60 and len(set(got)) == 60


def test_add_job_returns_the_row_as_submitted_even_if_claimed_at_once(store, monkeypatch):
    """The scheduler (another thread) may claim a job the moment its insert commits; the row
    add_job returns (and the create response built from it) still says Submitted."""
    store.queue_for(B)
    from separator.storage.database import _Tx
    real_exit = _Tx.__exit__
    claimed: list = []
    once = threading.Event()

    def exit_then_claim(self, exc_type, exc, tb):
        real_exit(self, exc_type, exc, tb)
        if exc_type is None and not once.is_set():
            once.set()               # (claim_next commits through here too)
            t = threading.Thread(target=lambda: claimed.append(store.claim_next("w0")))
            t.start()
            t.join()

    monkeypatch.setattr(_Tx, "__exit__", exit_then_claim)
    row = add(store, 1)
    monkeypatch.undo()
    assert claimed and claimed[0] is not None and claimed[0].state == "Running"
    assert row.state == "Submitted" and row.job_id == claimed[0].job_id
    assert store.job(row.job_id).state == "Running"
