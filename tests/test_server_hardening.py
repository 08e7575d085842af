"""Hardening of the job service (issue 14, items 10–17), over real signed HTTP and the official SDK.

Most tests share one server running the **fake fast engine** (``tests/fake_engine.py``:
it copies the input to each output key, holding the outputs' temporary files open while it
sleeps ``delay`` seconds, as the real engine holds them while it separates).  The temp-file,
logging and configuration drills start their own servers.  Nothing here sleeps for a fixed
time: every wait polls a condition with a deadline.
"""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from fake_engine import FAKE

pytest.importorskip("qcloud_cos")
from qcloud_cos.cos_exception import CosServiceError  # noqa: E402

from separator.server.signature import sign  # noqa: E402
from separator.server.testing import (  # noqa: E402
    BUCKET, REGION, SECRET_ID, SECRET_KEY, ServerProcess, write_config,
)
from separator.storage.local import TMP_PREFIX  # noqa: E402

HOST = f"{BUCKET}.cos.{REGION}.myqcloud.com"


def wait_for(cond, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def wait_jobs(client, ids, states=("Success", "Failed", "Cancel"), timeout=60.0) -> dict[str, dict]:
    def done():
        r = client.ci_get_media_jobs(Bucket=BUCKET, JobIDs=",".join(ids))
        out = {d["JobId"]: d for d in r["JobsDetail"]}
        return out if all(out[j]["State"] in states for j in ids) else None
    return wait_for(done, timeout, f"jobs {ids} in {states}")


def job_body(out_dir="out", **op):
    return {"Tag": "VoiceSeparate", "Input": {"Object": "in/song.wav"},
            "Operation": {"VoiceSeparate": {"AudioMode": "AudioAndBackground", "AudioConfig": {"Codec": "mp3"}},
                          "Output": {"Region": REGION, "Bucket": BUCKET, "Object": f"{out_dir}/bg.${{ext}}",
                                     "AuObject": f"{out_dir}/vocals.${{ext}}"}, **op}}


def submit(client, body) -> str:
    return client.ci_create_media_jobs(Bucket=BUCKET, Jobs=body, Lst={})["JobsDetail"][0]["JobId"]


def temps(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob(f"{TMP_PREFIX}*")} if folder.exists() else set()


def raw(port, method, path, *, body=b"", headers=None, query=None, host=HOST):
    """A hand-signed request; ``query`` holds decoded values (encoded here for the wire)."""
    hdrs = {"Host": host, "Content-Length": str(len(body)), **(headers or {})}
    query = query or {}
    target = quote(path) + ("?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items())
                            if query else "")
    hdrs["Authorization"] = sign(SECRET_ID, SECRET_KEY, method, path, query, dict(hdrs))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, target, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening")
    root = base / "storage"
    root.mkdir()
    cfg = write_config(base / "server.toml", engine=FAKE, engine_options={"delay": 0.0})
    server = ServerProcess(root, cfg, workers=1).start()
    client = server.client()
    client.put_object(Bucket=BUCKET, Body=b"RIFF-not-really-audio" * 10, Key="in/song.wav")
    yield {"server": server, "client": client, "root": root, "port": server.port}
    server.stop()


# -- 10: temporary files ---------------------------------------------------------------------------

def _fake_server(tmp_path, *, delay, workers=1, run_log=None):
    root = tmp_path / "storage"
    root.mkdir(exist_ok=True)
    opts = {"delay": delay, **({"run_log": str(run_log)} if run_log else {})}
    cfg = write_config(tmp_path / "server.toml", engine=FAKE, engine_options=opts)
    return ServerProcess(root, cfg, workers=workers)


def _runs(log: Path) -> list[tuple[str, int]]:
    if not log.exists():
        return []
    return [(j, int(p)) for j, p in (line.split() for line in log.read_text().splitlines())]


def test_lost_worker_temps_go_on_requeue_and_on_fail_and_other_jobs_keep_theirs(tmp_path):
    run_log = tmp_path / "runs.log"
    server = _fake_server(tmp_path, delay=120, workers=2, run_log=run_log).start()
    bucket = server.storage / BUCKET
    try:
        c = server.client()
        c.put_object(Bucket=BUCKET, Body=b"audio" * 100, Key="in/song.wav")
        doomed = submit(c, job_body("doomed"))
        bystander = submit(c, job_body("bystander"))
        theirs = wait_for(lambda: len(temps(bucket / "bystander")) == 2 and temps(bucket / "bystander"),
                          what="bystander temps")
        for attempt in (1, 2):
            first = wait_for(lambda: len(temps(bucket / "doomed")) == 2 and temps(bucket / "doomed"),
                             what=f"doomed temps, attempt {attempt}")
            pid = [p for j, p in _runs(run_log) if j == doomed][-1]
            os.kill(pid, signal.SIGKILL)
            if attempt == 1:  # requeued: runs again on a respawned worker
                wait_for(lambda: [j for j, _ in _runs(run_log)].count(doomed) == 2, what="second attempt")
            else:
                d = wait_jobs(c, [doomed])[doomed]
                assert d["State"] == "Failed" and d["Code"] == "InternalError"
            assert not first & temps(bucket / "doomed"), "the lost attempt's temporaries stayed"
        assert not temps(bucket / "doomed")
        assert temps(bucket / "bystander") == theirs  # a concurrent job's temporaries are untouched
        assert wait_jobs(c, [bystander], states=("Running",))[bystander]["State"] == "Running"
    finally:
        server.stop(kill=True)


def test_restart_sweeps_temps_left_by_a_killed_server(tmp_path):
    server = _fake_server(tmp_path, delay=120).start()
    root = server.storage
    try:
        c = server.client()
        c.put_object(Bucket=BUCKET, Body=b"audio" * 100, Key="in/song.wav")
        submit(c, job_body("out"))
        left = wait_for(lambda: len(temps(root / BUCKET / "out")) == 2 and temps(root / BUCKET / "out"))
        upload = c.create_multipart_upload(Bucket=BUCKET, Key="big.bin")["UploadId"]
    finally:
        server.stop(kill=True)
    # what a killed PUT and a killed part upload leave behind
    (root / BUCKET / "in" / f"{TMP_PREFIX}999999-abc.wav").write_bytes(b"partial")
    part = root / ".separator" / "multipart" / upload / f"{TMP_PREFIX}999999-abc.part"
    part.write_bytes(b"partial")
    assert left <= temps(root / BUCKET / "out")
    server = ServerProcess(root, server.config).start()
    try:
        assert not left & temps(root / BUCKET / "out")
        assert not temps(root / BUCKET / "in") and not part.exists()
        assert (part.parent / "meta.json").exists()  # the upload itself is still there
    finally:
        server.stop(kill=True)


def test_sigterm_leaves_no_temps(tmp_path):
    server = _fake_server(tmp_path, delay=120).start()
    root = server.storage
    try:
        c = server.client()
        c.put_object(Bucket=BUCKET, Body=b"audio" * 100, Key="in/song.wav")
        submit(c, job_body("out"))
        wait_for(lambda: len(temps(root / BUCKET / "out")) == 2)
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)  # uvicorn shuts down gracefully, then re-raises the signal
        assert not temps(root)
    finally:
        server.stop(kill=True)


# -- 11: keys that clash with folders --------------------------------------------------------------

def test_key_folder_clashes_answer_like_cos_or_4xx(env):
    c, port = env["client"], env["port"]
    c.put_object(Bucket=BUCKET, Body=b"a", Key="c/a.txt")
    c.delete_object(Bucket=BUCKET, Key="c")                 # COS: 204, and c/a.txt stays
    assert c.object_exists(Bucket=BUCKET, Key="c/a.txt")
    for key in ("c", "c/a.txt/b"):
        with pytest.raises(CosServiceError) as ei:
            c.put_object(Bucket=BUCKET, Body=b"x", Key=key)
        assert ei.value.get_status_code() == 400 and ei.value.get_error_code() == "InvalidArgument", key
        assert "folder" in ei.value.get_error_msg()
    for key in ("c", "c/a.txt/b"):
        with pytest.raises(CosServiceError) as ei:
            c.get_object(Bucket=BUCKET, Key=key)
        assert ei.value.get_status_code() == 404 and ei.value.get_error_code() == "NoSuchKey"
        assert not c.object_exists(Bucket=BUCKET, Key=key)
    c.delete_object(Bucket=BUCKET, Key="c/a.txt/b")
    # multipart uploads: refused at the start when the key clashes, and at completion when a
    # folder of that name appeared meanwhile
    for key in ("c", "c/a.txt/b"):
        status, _, body = raw(port, "POST", f"/{key}", query={"uploads": ""})
        assert status == 400 and b"<Code>InvalidArgument</Code>" in body, key
    upload = c.create_multipart_upload(Bucket=BUCKET, Key="m")["UploadId"]
    etag = c.upload_part(Bucket=BUCKET, Key="m", Body=b"x" * 10, PartNumber=1, UploadId=upload)["ETag"]
    c.put_object(Bucket=BUCKET, Body=b"x", Key="m/inside.txt")
    with pytest.raises(CosServiceError) as ei:
        c.complete_multipart_upload(Bucket=BUCKET, Key="m", UploadId=upload,
                                    MultipartUpload={"Part": [{"PartNumber": 1, "ETag": etag}]})
    assert ei.value.get_status_code() == 400 and ei.value.get_error_code() == "InvalidArgument"
    assert c.get_object(Bucket=BUCKET, Key="c/a.txt")["Body"].get_raw_stream().read() == b"a"
    # once the folder's last object is gone, its name is free for an object (as in COS)
    c.delete_object(Bucket=BUCKET, Key="c/a.txt")
    c.put_object(Bucket=BUCKET, Body=b"now an object", Key="c")
    assert c.get_object(Bucket=BUCKET, Key="c")["Body"].get_raw_stream().read() == b"now an object"
    c.delete_object(Bucket=BUCKET, Key="c")


def test_job_whose_output_clashes_with_a_folder_fails_with_invalid_argument(env):
    c = env["client"]
    c.put_object(Bucket=BUCKET, Body=b"x", Key="clash/bg.mp3/inside.txt")
    jid = submit(c, job_body("clash"))
    d = wait_jobs(c, [jid])[jid]
    assert d["State"] == "Failed" and d["Code"] == "InvalidArgument", d
    assert "clash/bg.mp3" in d["Message"]


def test_run_job_output_clash_is_invalid_argument_before_separating(tmp_path, synth):
    from separator.jobs.job import run_job
    from separator.request import parse_job_request
    from separator.request.xmltree import to_xml
    from separator.storage import LocalStorage

    storage = LocalStorage(tmp_path)
    storage.put_bytes(BUCKET, "in/song.wav", synth("stereo_wav").read_bytes())
    storage.put_bytes(BUCKET, "out/bg.mp3/x.txt", b"x")       # out/bg.mp3 is a folder
    req, _ = parse_job_request(to_xml("Request", {**job_body("out"), "Input": {"Object": "in/song.wav"}}))
    rec = run_job(req, storage, bucket=BUCKET, region=REGION, device="cpu")
    assert rec.state == "Failed" and rec.code == "InvalidArgument", (rec.code, rec.message)
    assert not temps(tmp_path)


# -- 12: control characters in response headers ---------------------------------------------------

@pytest.mark.parametrize("param", ["response-content-type", "response-content-disposition",
                                   "response-content-encoding", "response-content-language",
                                   "response-cache-control", "response-expires"])
@pytest.mark.parametrize("value", ["text/plain\r\nX-Evil: 1", "a\nb", "a\x01b", "a\x7fb"])
def test_response_overrides_with_control_characters_are_400(env, param, value):
    status, headers, body = raw(env["port"], "GET", "/in/song.wav", query={param: value})
    assert status == 400 and b"<Code>InvalidArgument</Code>" in body and "X-Evil" not in headers
    assert param.encode() in body
    status, headers, _ = raw(env["port"], "GET", "/in/song.wav", query={param: "fine value"})
    assert status == 200


def test_response_override_with_non_latin_text_is_sent_as_utf8(env):
    value = 'attachment; filename="中文.mp3"'
    status, headers, _ = raw(env["port"], "GET", "/in/song.wav",
                             query={"response-content-disposition": value})
    assert status == 200
    assert headers["Content-Disposition"].encode("latin-1").decode("utf-8") == value


# -- 13: NotifyConfig.Url ------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/x",
                                 "http://", "http://exa mple.com/"])
def test_queue_notify_url_must_be_http(env, url):
    c = env["client"]
    q = c.ci_get_asr_queue(Bucket=BUCKET)["QueueList"][0]
    with pytest.raises(CosServiceError) as ei:
        c.ci_update_asr_queue(Bucket=BUCKET, QueueId=q["QueueId"], Request={
            "State": "Active", "NotifyConfig": {"Url": url, "State": "On", "Type": "Url"}})
    assert ei.value.get_status_code() == 400 and ei.value.get_error_code() == "InvalidArgument"
    assert "NotifyConfig.Url" in ei.value.get_error_msg()
    assert c.ci_get_asr_queue(Bucket=BUCKET)["QueueList"][0]["NotifyConfig"].get("Url") != url


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://h/x"])
def test_config_notify_url_must_be_http(tmp_path, url):
    from separator.server.config import build_config

    path = tmp_path / "c.toml"
    path.write_text(f'[queue]\nNotifyConfig = {{ Url = "{url}" }}\n')
    with pytest.raises(ValueError, match="NotifyConfig.Url"):
        build_config(tmp_path, config_file=str(path))


def test_callback_sender_never_dials_a_non_http_url(tmp_path, monkeypatch):
    from separator.jobs import callback

    opened = []
    monkeypatch.setattr(callback.urllib.request, "urlopen", lambda req, **kw: opened.append(req.full_url))
    sender = callback.CallbackSender(timeout=1, retries=0, backoff=0)
    try:  # a Url stored before the check existed
        for url in ((tmp_path / "secret.txt").as_uri(), "ftp://127.0.0.1:1/x", "gopher://h/x"):
            assert sender._deliver("j1", callback.CallbackTarget(url), lambda: b"<x/>") is False
    finally:
        sender.close()
    assert opened == []


# -- 14: presigned URLs with CosConfig(IP=...) -------------------------------------------------------

def test_presigned_urls_made_with_an_ip_config_work_path_style(env):
    c = env["client"]  # CosConfig(IP="127.0.0.1", Port=...): the URL has no bucket in its host
    data = b"presigned \xe4\xb8\xad"
    c.put_object(Bucket=BUCKET, Body=data, Key="pre/中文 a+b.txt")
    url = c.get_presigned_download_url(Bucket=BUCKET, Key=f"{BUCKET}/pre/中文 a+b.txt")
    assert url.startswith(f"http://127.0.0.1:{env['port']}/{BUCKET}/")
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == data
    url = c.get_presigned_url(Bucket=BUCKET, Key=f"{BUCKET}/pre/put.bin", Method="PUT")
    req = urllib.request.Request(url, data=b"put via url", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    assert c.get_object(Bucket=BUCKET, Key="pre/put.bin")["Body"].get_raw_stream().read() == b"put via url"
    url = c.get_presigned_download_url(Bucket=BUCKET, Key=f"{BUCKET}/pre/put.bin",
                                       Params={"response-content-type": "text/x-test"})
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "text/x-test"
    # tampering with the path breaks the signature
    bad = url.replace("/pre/put.bin", "/pre/other.bin")
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(bad, timeout=10)
    assert ei.value.code == 403
    # a key without the bucket in front still says what is missing
    url = c.get_presigned_download_url(Bucket=BUCKET, Key="pre/put.bin")
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(url, timeout=10)
    assert ei.value.code == 400 and b"InvalidHost" in ei.value.read()


# -- 15: missing bucket, folder markers, multiple ranges ----------------------------------------------

def test_listing_a_missing_bucket_is_404(env):
    c = env["server"].client()
    with pytest.raises(CosServiceError) as ei:
        c.list_objects(Bucket="nosuch-1250000000")
    assert ei.value.get_status_code() == 404 and ei.value.get_error_code() == "NoSuchBucket"


def test_folder_markers(env):
    c = env["client"]
    c.put_object(Bucket=BUCKET, Body=b"", Key="folder/")
    lst = c.list_objects(Bucket=BUCKET, Prefix="folder/")
    assert [(o["Key"], o["Size"]) for o in lst["Contents"]] == [("folder/", "0")]
    h = c.head_object(Bucket=BUCKET, Key="folder/")
    assert h["Content-Length"] == "0"
    assert c.get_object(Bucket=BUCKET, Key="folder/")["Body"].get_raw_stream().read() == b""
    lst = c.list_objects(Bucket=BUCKET, Prefix="", Delimiter="/")
    assert "folder/" in {p["Prefix"] for p in lst["CommonPrefixes"]}
    # a job writes its outputs under the marked folder
    jid = submit(c, job_body("folder"))
    assert wait_jobs(c, [jid])[jid]["State"] == "Success"
    keys = [o["Key"] for o in c.list_objects(Bucket=BUCKET, Prefix="folder/")["Contents"]]
    assert keys == ["folder/", "folder/bg.mp3", "folder/vocals.mp3"]
    # nested markers, and the hidden marker file is never a key of its own
    c.put_object(Bucket=BUCKET, Body=b"", Key="folder/sub/")
    keys = [o["Key"] for o in c.list_objects(Bucket=BUCKET, Prefix="folder/")["Contents"]]
    assert keys == ["folder/", "folder/bg.mp3", "folder/sub/", "folder/vocals.mp3"]
    c.delete_object(Bucket=BUCKET, Key="folder/")
    keys = [o["Key"] for o in c.list_objects(Bucket=BUCKET, Prefix="folder/")["Contents"]]
    assert keys == ["folder/bg.mp3", "folder/sub/", "folder/vocals.mp3"]
    assert not c.object_exists(Bucket=BUCKET, Key="folder/")
    # a marker with content, and a marker whose folder is an object, are refused with 400
    with pytest.raises(CosServiceError) as ei:
        c.put_object(Bucket=BUCKET, Body=b"data", Key="other/")
    assert ei.value.get_status_code() == 400
    with pytest.raises(CosServiceError) as ei:
        c.put_object(Bucket=BUCKET, Body=b"", Key="in/song.wav/")
    assert ei.value.get_status_code() == 400


def test_reserved_marker_name_is_not_a_key(env):
    from separator.storage.local import FOLDER_MARKER

    c = env["client"]
    for key in (f"x/{FOLDER_MARKER}", FOLDER_MARKER, f"{FOLDER_MARKER}/y"):
        with pytest.raises(CosServiceError) as ei:
            c.put_object(Bucket=BUCKET, Body=b"", Key=key)
        assert ei.value.get_status_code() == 400, key


def test_multiple_ranges_get_the_whole_object(env):
    status, headers, body = raw(env["port"], "GET", "/in/song.wav", headers={"Range": "bytes=0-1,5-6"})
    assert status == 200 and body == b"RIFF-not-really-audio" * 10
    assert "Content-Range" not in headers
    status, _, body = raw(env["port"], "GET", "/in/song.wav", headers={"Range": "bytes=1000-2000"})
    assert status == 416


# -- 16: logging -------------------------------------------------------------------------------------

def test_serve_log_level_info_logs_one_line_per_finished_job(tmp_path):
    root = tmp_path / "storage"
    root.mkdir()
    cfg = write_config(tmp_path / "server.toml", engine=FAKE)
    cli = [sys.executable, "-m", "separator", "serve", "--log-level", "info"]
    server = ServerProcess(root, cfg, command=cli).start()
    try:
        c = server.client()
        c.put_object(Bucket=BUCKET, Body=b"audio" * 100, Key="in/song.wav")
        ok = submit(c, job_body("logged"))
        c.put_object(Bucket=BUCKET, Body=b"x", Key="logclash/bg.mp3/x")
        bad = submit(c, job_body("logclash"))
        wait_jobs(c, [ok, bad])

        def ended(jid):
            return [ln for ln in server.log.read_text().splitlines() if jid in ln and " ended " in ln]
        line = wait_for(lambda: ended(ok), what="job end line")
        assert len(line) == 1 and "INFO" in line[0] and "Success" in line[0] and "in/song.wav" in line[0]
        assert " s" in line[0]
        line = wait_for(lambda: ended(bad), what="failed job end line")
        assert len(line) == 1 and "Failed (InvalidArgument)" in line[0]
        q = c.ci_get_asr_queue(Bucket=BUCKET)["QueueList"][0]
        c.ci_update_asr_queue(Bucket=BUCKET, QueueId=q["QueueId"], Request={"State": "Paused"})
        waiting = submit(c, job_body("logged"))
        c.ci_cancel_jobs(Bucket=BUCKET, JobID=waiting)
        c.ci_cancel_jobs(Bucket=BUCKET, JobID=waiting)  # again: still one line
        line = wait_for(lambda: ended(waiting), what="cancelled job end line")
        assert len(line) == 1 and "Cancel" in line[0]
    finally:
        server.stop()


# -- 17: configuration ---------------------------------------------------------------------------------

def _build(tmp_path, text, name="c.toml"):
    from separator.server.config import build_config

    path = tmp_path / name
    path.write_text(text)
    return build_config(tmp_path, config_file=str(path))


@pytest.mark.parametrize("text,named", [
    ('anonymous = "false"\n', "anonymous"),
    ('anonymous = 0\n', "anonymous"),
    ("workers = 1.5\n", "workers"),
    ('workers = "2"\n', "workers"),
    ("port = true\n", "port"),
    ('time_skew = 9.5\n', "time_skew"),
    ('callback_timeout = "5"\n', "callback_timeout"),
    ("anonymus = true\n", "anonymus"),
    ('[[keys]]\nSecretId = "a"\nSecretKey = "b"\nSecretKye = "c"\n', "SecretKye"),
    ('[[keys]]\nSecretId = "a"\n', "SecretKey"),
    ('[[keys]]\nSecretId = 1\nSecretKey = "b"\n', "SecretId"),
    ('[queue]\nnmae = "q"\n', "nmae"),
    ('[queue]\nNotifyConfig = { Url = "file:///etc/passwd" }\n', "NotifyConfig.Url"),
    ('[queue]\nNotifyConfig = { Url = "http://h/", Colour = "red" }\n', "Colour"),
    ('[models]\nKaraoke = "htdemucs"\n', "Karaoke"),
    ('[models]\nMusicMode = 3\n', "MusicMode"),
])
def test_config_is_typed_and_closed(tmp_path, text, named):
    from separator.server.config import ConfigError

    with pytest.raises(ConfigError) as ei:
        _build(tmp_path, text)
    msg = str(ei.value)
    assert msg.startswith(str(tmp_path / "c.toml") + ": ") and named in msg and "\n" not in msg


def test_config_yaml_is_typed_too_and_good_files_still_load(tmp_path):
    from separator.server.config import ConfigError

    with pytest.raises(ConfigError, match="anonymous"):
        _build(tmp_path, "anonymous: 'false'\n", "c.yaml")
    cfg = _build(tmp_path, 'anonymous = false\ncallback_timeout = 2\nworkers = 2\n'
                 '[[keys]]\nSecretId = "a"\nSecretKey = "b"\n[models]\nMusicMode = "htdemucs"\n'
                 '[queue]\nname = "q"\nNotifyConfig = { Url = "https://h/cb", ResultFormat = "JSON" }\n'
                 '[engine_options]\ndelay = 0.5\n')
    assert cfg.anonymous is False and cfg.callback_timeout == 2.0 and cfg.workers == 2
    assert cfg.keys == {"a": "b"} and cfg.models == {"MusicMode": "htdemucs"} and cfg.queue_name == "q"
    assert cfg.queue_notify == {"Url": "https://h/cb", "ResultFormat": "JSON"}
    assert cfg.engine_options == {"delay": 0.5}


def _serve(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "separator", "serve", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_serve_reports_a_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('anonymous = "false"\n')
    r = _serve("--storage", str(tmp_path / "s"), "--config", str(bad), "--port", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: ") and "anonymous" in lines[0]


def test_serve_refuses_an_unknown_model_and_warns_about_a_missing_one(tmp_path):
    from separator.core import registry

    bad = tmp_path / "bad.toml"
    bad.write_text('[models]\nMusicMode = "no-such-model"\n')
    r = _serve("--storage", str(tmp_path / "s"), "--config", str(bad), "--port", "0")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {bad}: ")
    assert "no-such-model" in lines[0]
    missing = sorted({m.name for m in registry.list_models()} - registry.installed_models())
    if not missing:
        pytest.skip("every known model is installed here")
    root = tmp_path / "storage"
    root.mkdir()
    cfg = write_config(tmp_path / "server.toml", engine=FAKE)
    cfg.write_text(cfg.read_text() + f'[models]\nMusicMode = "{missing[0]}"\n')
    with ServerProcess(root, cfg) as server:
        pass
    text = server.log.read_text()
    warning = [ln for ln in text.splitlines() if "WARNING" in ln and missing[0] in ln]
    assert warning and f"separator models pull {missing[0]}" in warning[0]


def test_serve_refuses_a_storage_root_it_cannot_use(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    for storage in (f, f / "below"):
        r = _serve("--storage", str(storage), "--port", "0")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert str(storage) in lines[0] and "Traceback" not in r.stderr
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    candidates = [ro, Path("/sys/fs")]
    try:
        for storage in candidates:
            try:
                (storage / ".probe").mkdir()
            except OSError:
                break
            (storage / ".probe").rmdir()
        else:
            pytest.skip("no unwritable directory available (running as root?)")
        r = _serve("--storage", str(storage), "--port", "0")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert str(storage) in lines[0]
    finally:
        ro.chmod(0o755)
