"""End to end: the real separation engine behind ``separator serve``, restarts, and crashed workers.

``test_real_engine_end_to_end`` runs the bundled model on a 2 s clip and checks the outputs with
ffprobe.  The restart and crash drills use the **fake fast engine**
(``tests/fake_engine.py``, chosen in the server config) with a delay, so that a job
is reliably "running" when the server or its worker is killed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fake_engine import FAKE

pytest.importorskip("qcloud_cos")

from separator.server.testing import BUCKET, REGION, ServerProcess, write_config  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIP = DATA / "mirdata-test-resources" / "ikala" / "Wavfile" / "10161_chorus.wav"


def wait_jobs(client, ids, states=("Success", "Failed", "Cancel"), timeout=90.0):
    deadline = time.time() + timeout
    while True:
        r = client.ci_get_media_jobs(Bucket=BUCKET, JobIDs=",".join(ids))
        out = {d["JobId"]: d for d in r["JobsDetail"]}
        if all(out[j]["State"] in states for j in ids):
            return out
        if time.time() > deadline:
            raise TimeoutError({j: out[j]["State"] for j in ids})
        time.sleep(0.2)


def job(input_key="in/clip.wav", **op):
    return {"Tag": "VoiceSeparate", "Input": {"Object": input_key},
            "Operation": {"VoiceSeparate": {"AudioMode": "AudioAndBackground", "AudioConfig": {"Codec": "mp3"}},
                          "Output": {"Region": REGION, "Bucket": BUCKET, "Object": "out/bg.${ext}",
                                     "AuObject": "out/vocals.${ext}"}, **op}}


def submit(client, body) -> str:
    return client.ci_create_media_jobs(Bucket=BUCKET, Jobs=body, Lst={})["JobsDetail"][0]["JobId"]


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
                          str(path)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.fixture
def clip(tmp_path) -> Path:
    if CLIP.is_file():
        return CLIP
    if not shutil.which("ffmpeg"):
        pytest.skip("no test clip and no ffmpeg to make one")
    out = tmp_path / "clip.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=2",
                    "-ac", "2", "-ar", "44100", str(out)], check=True)
    return out


def test_real_engine_end_to_end(tmp_path, clip):
    root = tmp_path / "storage"
    root.mkdir()
    cfg = write_config(tmp_path / "server.toml")
    with ServerProcess(root, cfg) as server:
        c = server.client()
        c.upload_file(Bucket=BUCKET, Key="in/clip.wav", LocalFilePath=str(clip))
        t = c.ci_create_template(Bucket=BUCKET, Template={"Tag": "VoiceSeparate", "Name": "vocals-aac",
                                                          "AudioMode": "IsAudio",
                                                          "AudioConfig": {"Codec": "aac", "Channels": "1"}})
        tid = t["Template"]["TemplateId"]
        inline = submit(c, job())
        by_template = submit(c, job(TemplateId=tid,
                                    Output={"Region": REGION, "Bucket": BUCKET, "AuObject": "tpl/vocals.${ext}",
                                            "Object": "tpl/unused.${ext}"}))
        # the server answers while a job runs
        t0 = time.time()
        c.list_objects(Bucket=BUCKET, Prefix="in/")
        assert time.time() - t0 < 2
        done = wait_jobs(c, [inline, by_template], timeout=120)
        for d in done.values():
            assert d["State"] == "Success", d
        files = done[inline]["Operation"]["MediaResult"]["OutputFile"]
        assert files["ObjectName"] == ["out/vocals.mp3", "out/bg.mp3"]
        for info in files["Md5Info"]:
            dst = tmp_path / Path(info["ObjectName"]).name
            c.download_file(Bucket=BUCKET, Key=info["ObjectName"], DestFilePath=str(dst))
            assert hashlib.md5(dst.read_bytes()).hexdigest() == info["Md5"]
            probe = ffprobe(dst)
            assert probe["streams"][0]["codec_name"] == "mp3"
            assert abs(float(probe["format"]["duration"]) - 2.0) < 0.2
        files = done[by_template]["Operation"]["MediaResult"]["OutputFile"]
        assert files["ObjectName"] == "tpl/vocals.m4a"
        dst = tmp_path / "tpl.m4a"
        c.download_file(Bucket=BUCKET, Key="tpl/vocals.m4a", DestFilePath=str(dst))
        stream = ffprobe(dst)["streams"][0]
        assert stream["codec_name"] == "aac" and stream["channels"] == 1
        assert not c.object_exists(Bucket=BUCKET, Key="tpl/unused.m4a")  # IsAudio writes only AuObject


def _fake(tmp_path, delay):
    root = tmp_path / "storage"
    root.mkdir(exist_ok=True)
    log = tmp_path / "runs.log"
    cfg = write_config(tmp_path / "server.toml", engine=FAKE,
                       engine_options={"delay": delay, "run_log": str(log)})
    return root, cfg, log


def _runs(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def _wait(cond, timeout=30.0):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise TimeoutError
        time.sleep(0.05)


def test_restart_with_queued_and_running_jobs(tmp_path):
    root, cfg, log = _fake(tmp_path, delay=1.5)
    server = ServerProcess(root, cfg).start()
    try:
        c = server.client()
        c.put_object(Bucket=BUCKET, Body=b"audio" * 100, Key="in/clip.wav")
        finished = submit(c, job())
        wait_jobs(c, [finished])
        running, queued1, queued2 = (submit(c, job()) for _ in range(3))
        _wait(lambda: running in _runs(log))
        assert wait_jobs(c, [running], states=("Running",))[running]["State"] == "Running"
    finally:
        server.stop(kill=True)  # SIGKILL: no chance to clean up
    server = ServerProcess(root, cfg).start()
    try:
        c = server.client()
        ids = [finished, running, queued1, queued2]
        done = wait_jobs(c, ids, timeout=60)
        assert all(d["State"] == "Success" for d in done.values())
        assert done[finished]["Operation"]["MediaResult"]["OutputFile"]["ObjectName"]  # still served
        runs = _runs(log)
        assert runs.count(finished) == 1 and runs.count(queued1) == 1 and runs.count(queued2) == 1
        assert runs.count(running) == 2  # ran again from the start
        listed = c.ci_list_media_jobs(Bucket=BUCKET, Tag="VoiceSeparate", Size=100)["JobsDetail"]
        assert sorted(d["JobId"] for d in listed) == sorted(ids)  # nothing duplicated
        assert not [p for p in root.rglob("*") if p.name.startswith(".separator-tmp-")]  # nothing half-written
    finally:
        server.stop()


def test_killed_worker_retries_once_then_fails_and_service_goes_on(tmp_path):
    root, cfg, log = _fake(tmp_path, delay=3.0)
    with ServerProcess(root, cfg) as server:
        c = server.client()
        c.put_object(Bucket=BUCKET, Body=b"audio" * 100, Key="in/clip.wav")
        doomed = submit(c, job())
        for attempt in (1, 2):
            _wait(lambda: _runs(log).count(doomed) == attempt)
            pid = server.worker_pids()["w0"]
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: server.worker_pids().get("w0") not in (None, pid))  # respawned
        d = wait_jobs(c, [doomed])[doomed]
        assert d["State"] == "Failed" and d["Code"] == "InternalError"
        ok = submit(c, job())
        assert wait_jobs(c, [ok])[ok]["State"] == "Success"
