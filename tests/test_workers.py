"""The worker pool (``separator.workers``) on its own: tasks, progress, a lost worker, the retry
policy and the worker plan.  The service's and the batch's crash drills are in
test_server_e2e.py, test_server_hardening.py, test_batch.py and the Ray tests."""
from __future__ import annotations

import os
import signal
import time

import pytest

from separator.storage.local import temp_owner
from separator.workers import (
    MAX_ATTEMPTS, Finished, InProcessPool, LocalPool, Lost, Progress, WorkerSpec, given_up_message,
    plan_workers, require_device, should_retry,
)


def collect(pool, until, timeout=60.0):
    """Poll ``pool`` until ``until(events)``; every event so far."""
    events = []
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, events
        pool.poll(0.5, events.append)
    return events


def finished(events):
    return {ev.key: ev for ev in events if isinstance(ev, Finished)}


def wait_file(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return path.read_text()


# -- the policy and the plan ----------------------------------------------------------------------

def test_one_retry_policy():
    assert MAX_ATTEMPTS == 2
    assert should_retry(1) and not should_retry(2)                 # a lost task runs at most twice
    assert should_retry(2, 3) and not should_retry(3, 3)
    assert not should_retry(1, 1) and not should_retry(1, 0)     # at least one run
    msg = given_up_message(2, "the Ray actor was lost (RayActorError)", "job")
    assert "this job" in msg and "2 time(s)" in msg and msg.endswith("the Ray actor was lost (RayActorError)")


def test_plan_on_a_machine_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine (or CUDA_VISIBLE_DEVICES=) without a GPU")
    cores = os.cpu_count() or 1
    assert plan_workers(None, None) == [WorkerSpec("cpu", cores)]          # one worker, all cores
    assert plan_workers(3, None) == [WorkerSpec("cpu", max(1, cores // 3))] * 3   # they share them
    assert plan_workers(2, "cuda:1") == [WorkerSpec("cuda:1", max(1, cores // 2))] * 2
    require_device("cpu")
    require_device(None)
    with pytest.raises(ValueError, match="CUDA is not available"):
        require_device("cuda")


# -- local processes ------------------------------------------------------------------------------

@pytest.fixture
def pool_of():
    pools = []

    def make(runner, n=1, **kw):
        pool = LocalPool(f"pool_runners:{runner}", {"root": "/r"}, [WorkerSpec("cpu", 1)] * n, **kw)
        pool.open()
        pools.append(pool)
        return pool
    yield make
    for pool in pools:
        pool.close(5)


def test_local_pool_runs_one_task_at_a_time_per_worker(pool_of):
    pool = pool_of("echo", n=2)
    assert pool.n == 2 and pool.kind == "local" and sorted(pool.pids()) == ["w0", "w1"]
    assert "2 local worker(s) on cpu" in pool.describe()
    todo = list(range(6))
    events = []
    deadline = time.monotonic() + 60
    while len(finished(events)) < 6:
        assert time.monotonic() < deadline, events
        for slot in pool.idle():
            if todo:
                key = todo.pop(0)
                pool.start(slot, key, {"n": key})
        assert pool.idle() == [] or not todo      # a busy slot is not idle
        pool.poll(0.5, events.append)
    done = finished(events)
    assert sorted(done) == list(range(6))
    for key, ev in done.items():
        assert ev.error is None and ev.node is None
        assert ev.result["payload"] == {"n": key}
        assert ev.result["context"] == {"root": "/r", "device": "cpu"}    # the pool's + the worker's
    assert {ev.result["pid"] for ev in done.values()} <= set(pool.pids().values())


def test_a_runner_that_raises_ends_its_task_with_an_error(pool_of):
    pool = pool_of("boom")
    slot, = pool.idle()
    pool.start(slot, "k", 7)
    ev = finished(collect(pool, finished))["k"]
    assert ev.result is None and ev.error == "ValueError: boom 7"
    assert pool.idle() == [slot]                                  # the worker goes on


def test_progress_then_a_lost_worker_then_a_new_one(pool_of, tmp_path):
    pool = pool_of("held")
    slot, = pool.idle()
    pool.start(slot, ("job", 1), {"dir": str(tmp_path), "name": "a"})
    events = collect(pool, lambda evs: any(isinstance(e, Progress) for e in evs))
    assert [(e.slot, e.key, e.value) for e in events if isinstance(e, Progress)] == [(slot, ("job", 1), 1)]
    pid = int(wait_file(tmp_path / "a.started"))
    assert pool.pids() == {slot: pid}
    os.kill(pid, signal.SIGKILL)
    lost = [e for e in collect(pool, lambda evs: any(isinstance(e, Lost) for e in evs)) if isinstance(e, Lost)]
    assert [(e.slot, e.key, e.temp_owner) for e in lost] == [(slot, ("job", 1), temp_owner(pid))]
    assert "exit code -9" in lost[0].reason
    assert pool.idle() == [slot] and pool.pids()[slot] != pid      # started again
    (tmp_path / "b.go").touch()
    pool.start(slot, ("job", 2), {"dir": str(tmp_path), "name": "b"})
    ev = finished(collect(pool, finished))[("job", 2)]
    assert ev.result == {"name": "b", "pid": pool.pids()[slot]}


def test_a_pool_without_respawns_left_is_exhausted(pool_of, tmp_path):
    pool = pool_of("held", max_respawns=0)
    slot, = pool.idle()
    pool.start(slot, 1, {"dir": str(tmp_path), "name": "a"})
    os.kill(int(wait_file(tmp_path / "a.started")), signal.SIGKILL)
    collect(pool, lambda evs: any(isinstance(e, Lost) for e in evs))
    assert pool.idle() == [] and pool.exhausted


def test_close_stops_a_busy_worker(pool_of, tmp_path):
    pool = pool_of("held")
    slot, = pool.idle()
    pool.start(slot, 1, {"dir": str(tmp_path), "name": "a"})
    pid = int(wait_file(tmp_path / "a.started"))
    pool.close(5)
    deadline = time.monotonic() + 30
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the busy worker was not stopped"
        time.sleep(0.05)


# -- in this process -------------------------------------------------------------------------------

def test_in_process_pool_passes_progress_on_while_the_task_runs():
    seen = []

    def on_event(ev):
        seen.append(ev)

    pool = InProcessPool("test_workers:_reporting", {"x": 1}, "cpu")
    pool.open()
    assert pool.idle() == ["main"] and pool.n == 1 and pool.describe() == "in-process on cpu"
    pool.start("main", 3, "payload")
    assert pool.idle() == []
    pool.poll(1.0, on_event)
    assert [type(e).__name__ for e in seen] == ["Progress", "Finished"]     # progress came first
    assert (seen[0].key, seen[0].value) == (3, 0.5)
    assert seen[1].result == {"context": {"x": 1, "device": "cpu"}, "payload": "payload"}
    assert pool.idle() == ["main"]


def _reporting(context, payload, progress):
    progress(0.5)
    return {"context": context, "payload": payload}
