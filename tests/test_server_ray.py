"""`separator serve --ray-address` on a real Ray cluster on this machine (loopback only).

A head and a second node (1 CPU each) are started with ``ray start --block``, each in its own
process group so the test kills exactly its own processes (as in ``test_batch_ray.py``).  Servers
are started in child processes pointing at that cluster; the official SDK is the client.

* one actor (``--workers 1``): jobs of different JobLevels run in priority order, each exactly
  once, on the Ray actor (not in a local worker); a waiting job is cancelled and never runs; a
  running job cannot be cancelled;
* two actors: jobs spread over both; an actor killed mid-job is retried elsewhere and the job
  still succeeds once; a job whose actor is lost twice ends Failed/InternalError;
* a server killed mid-job: on restart the job runs again (once more) on Ray;
* the real engine (bundled model) on a 2 s clip, end to end through a Ray actor.

The fake fast engine (``tests/fake_engine.py``) appends ``<job_id> <pid>`` to a
run log, which is how "exactly once" and "on which actor" are checked.  Without Ray installed
only the last test runs: ``--ray-address`` must then fail at once with the install hint.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_engine import FAKE
from ray_nodes import two_node_cluster

pytest.importorskip("qcloud_cos")
from qcloud_cos.cos_exception import CosServiceError  # noqa: E402

from separator.server.testing import BUCKET, REGION, ServerProcess, write_config  # noqa: E402

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'separator[ray]')")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CLIP = DATA / "mirdata-test-resources" / "ikala" / "Wavfile" / "10161_chorus.wav"


# -- the cluster (as in test_batch_ray.py, but one per module) ------------------------------------

@pytest.fixture(scope="module")
def cluster():
    with two_node_cluster() as c:
        yield c


# -- helpers ------------------------------------------------------------------------------------

def _server(tmp_path: Path, address: str, *, workers: int, engine: str | None = FAKE, delay: float = 0.0):
    root = tmp_path / "storage"
    root.mkdir()
    run_log = tmp_path / "runs.log"
    settings = {"ray_address": address}
    if engine:
        settings["engine"] = engine
    cfg = write_config(tmp_path / "server.toml", engine_options={"delay": delay, "run_log": str(run_log)}
                       if engine == FAKE else None, **settings)
    return ServerProcess(root, cfg, workers=workers, log=tmp_path / "server.log"), run_log


def _runs(run_log: Path) -> list[tuple[str, int]]:
    if not run_log.exists():
        return []
    return [(a, int(b)) for a, b in (line.split() for line in run_log.read_text().splitlines() if line.strip())]


def _job(input_key="in/clip.wav", level: int | None = None) -> dict:
    op = {"VoiceSeparate": {"AudioMode": "AudioAndBackground", "AudioConfig": {"Codec": "mp3"}},
          "Output": {"Region": REGION, "Bucket": BUCKET, "Object": "out/bg-${ext}.mp3", "AuObject": "out/voc.${ext}"}}
    if level is not None:
        op["JobLevel"] = str(level)
    return {"Tag": "VoiceSeparate", "Input": {"Object": input_key}, "Operation": op}


def _submit(c, **kw) -> str:
    d = c.ci_create_media_jobs(Bucket=BUCKET, Jobs=_job(**kw), Lst={})["JobsDetail"][0]
    assert d["State"] == "Submitted"
    return d["JobId"]


def _wait_jobs(c, ids, states=("Success", "Failed", "Cancel"), timeout=60.0) -> dict[str, dict]:
    deadline = time.time() + timeout
    while True:
        out = {d["JobId"]: d for d in c.ci_get_media_jobs(Bucket=BUCKET, JobIDs=",".join(ids))["JobsDetail"]}
        if all(out[j]["State"] in states for j in ids):
            return out
        if time.time() > deadline:
            raise TimeoutError({j: out[j]["State"] for j in ids})
        time.sleep(0.1)


def _wait(cond, timeout=30.0, what=""):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- tests --------------------------------------------------------------------------------------

@needs_ray
def test_one_actor_priorities_cancel_exactly_once(cluster, tmp_path):
    server, run_log = _server(tmp_path, cluster["address"], workers=1, delay=0.6)
    with server:
        c = server.client()
        c.put_object(Bucket=BUCKET, Body=b"RIFF-not-really-audio" * 10, Key="in/clip.wav")
        q = c.ci_get_asr_queue(Bucket=BUCKET)["QueueList"][0]
        assert q["MaxConcurrent"] == "1" or q["MaxConcurrent"] == 1       # concurrency = actors
        c.ci_update_asr_queue(Bucket=BUCKET, QueueId=q["QueueId"], Request={"State": "Paused"})
        levels = [0, 0, 2, 1, 2, 1]
        ids = [_submit(c, level=lv) for lv in levels]
        assert c.ci_cancel_jobs(Bucket=BUCKET, JobID=ids[1]) == ""        # a waiting job: cancelled
        time.sleep(0.3)
        assert _runs(run_log) == []                                       # paused: nothing sent to Ray
        c.ci_update_asr_queue(Bucket=BUCKET, QueueId=q["QueueId"], Request={"State": "Active"})
        _wait(lambda: len(_runs(run_log)) >= 1, what="the first job to start")
        # a running job cannot be cancelled (as without Ray)
        running = _runs(run_log)[0][0]
        with pytest.raises(CosServiceError) as ei:
            c.ci_cancel_jobs(Bucket=BUCKET, JobID=running)
        assert ei.value.get_status_code() == 400 and ei.value.get_error_code() == "InvalidArgument"
        done = _wait_jobs(c, ids)
        assert done[ids[1]]["State"] == "Cancel"
        assert all(done[j]["State"] == "Success" for j in ids if j != ids[1]), done
        runs = _runs(run_log)
        # level 2 (FIFO), then 1 (FIFO), then 0; the cancelled one never ran; each exactly once
        assert [j for j, _ in runs] == [ids[2], ids[4], ids[3], ids[5], ids[0]]
        # they ran in the one Ray actor, not in the server or a local worker process
        pids = {p for _, p in runs}
        actor_pids = server.worker_pids()
        assert list(actor_pids) == ["r0"] and pids == {actor_pids["r0"]}
        assert server.proc.pid not in pids
        out = c.get_object(Bucket=BUCKET, Key="out/voc.mp3")["Body"].get_raw_stream().read()
        assert out == b"RIFF-not-really-audio" * 10
    assert "Ray actor(s)" in (tmp_path / "server.log").read_text()


@needs_ray
def test_two_actors_lost_actor_retried_then_failed(cluster, tmp_path):
    server, run_log = _server(tmp_path, cluster["address"], workers=2, delay=1.5)
    with server:
        c = server.client()
        c.put_object(Bucket=BUCKET, Body=b"audio" * 100, Key="in/clip.wav")
        _wait(lambda: len(server.worker_pids()) == 2, what="two actors")
        ids = [_submit(c) for _ in range(4)]
        _wait(lambda: len({p for _, p in _runs(run_log)}) == 2, what="both actors running a job")
        victim, pid = _runs(run_log)[-1]                  # the latest start: surely still running
        assert _wait_jobs(c, [victim], states=("Running",))[victim]["State"] == "Running"
        os.kill(pid, signal.SIGKILL)                      # the actor is lost mid-job
        done = _wait_jobs(c, ids, timeout=60)
        assert all(d["State"] == "Success" for d in done.values()), done
        runs = [j for j, _ in _runs(run_log)]
        assert runs.count(victim) == 2                    # retried once, elsewhere or on the restarted actor
        assert all(runs.count(j) == 1 for j in ids if j != victim)
        assert len({p for _, p in _runs(run_log)}) >= 2

        # lost twice: Failed with InternalError, and the service goes on
        doomed = _submit(c)
        for attempt in (1, 2):
            _wait(lambda: [j for j, _ in _runs(run_log)].count(doomed) == attempt, what=f"attempt {attempt}")
            os.kill(next(p for j, p in reversed(_runs(run_log)) if j == doomed), signal.SIGKILL)
        d = _wait_jobs(c, [doomed], timeout=60)[doomed]
        assert d["State"] == "Failed" and d["Code"] == "InternalError", d
        assert "Ray actor" in d["Message"]
        ok = _submit(c)
        assert _wait_jobs(c, [ok], timeout=60)[ok]["State"] == "Success"


@needs_ray
def test_restart_recovery_with_ray(cluster, tmp_path):
    server, run_log = _server(tmp_path, cluster["address"], workers=1, delay=1.5)
    server.start()
    try:
        c = server.client()
        c.put_object(Bucket=BUCKET, Body=b"audio" * 100, Key="in/clip.wav")
        running, queued = _submit(c), _submit(c)
        _wait(lambda: [j for j, _ in _runs(run_log)] == [running], what="the first job to start")
    finally:
        server.stop(kill=True)   # SIGKILL: the server (and its actor) get no chance to clean up
    server.start()
    try:
        c = server.client()
        done = _wait_jobs(c, [running, queued], timeout=60)
        assert all(d["State"] == "Success" for d in done.values()), done
        runs = [j for j, _ in _runs(run_log)]
        assert runs.count(running) == 2 and runs.count(queued) == 1   # ran again from the start
    finally:
        server.stop()


@needs_ray
def test_real_engine_on_a_ray_actor(cluster, tmp_path):
    if CLIP.is_file():
        clip = CLIP
    elif shutil.which("ffmpeg"):
        clip = tmp_path / "clip.wav"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=2",
                        "-ac", "2", "-ar", "44100", str(clip)], check=True)
    else:
        pytest.skip("no test clip and no ffmpeg to make one")
    server, _ = _server(tmp_path, cluster["address"], workers=1, engine=None)
    with server:
        c = server.client()
        c.upload_file(Bucket=BUCKET, Key="in/clip.wav", LocalFilePath=str(clip))
        job = _submit(c)
        d = _wait_jobs(c, [job], timeout=120)[job]
        assert d["State"] == "Success", d
        files = d["Operation"]["MediaResult"]["OutputFile"]
        assert files["ObjectName"] == ["out/voc.mp3", "out/bg-mp3.mp3"]
        for key in files["ObjectName"]:
            dst = tmp_path / Path(key).name
            c.download_file(Bucket=BUCKET, Key=key, DestFilePath=str(dst))
            probe = json.loads(subprocess.run(
                ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(dst)],
                check=True, capture_output=True, text=True).stdout)
            assert probe["streams"][0]["codec_name"] == "mp3"
            assert abs(float(probe["format"]["duration"]) - 2.0) < 0.2


def test_ray_address_without_ray_fails_at_start(tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\", name='ray')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(REPO)]))
    (tmp_path / "storage").mkdir()
    proc = subprocess.run([sys.executable, "-m", "separator.server", "--storage", str(tmp_path / "storage"),
                           "--port", "0", "--ray-address", "auto"], capture_output=True, text=True, env=env,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "pip install 'separator[ray]'" in proc.stderr and "--ray-address" in proc.stderr
