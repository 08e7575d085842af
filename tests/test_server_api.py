"""The job service over HTTP with the official SDK (``cos-python-sdk-v5``, unchanged) as the client.

These tests run the server with a **fake fast engine** (``tests/fake_engine.py``,
selected through the server's config: it copies the input to each output key instead of
separating) so that the API, the queue, priorities, callbacks and a 100-job burst are quick to
check.  ``test_server_e2e.py`` runs the real engine end to end.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fake_engine import FAKE

pytest.importorskip("qcloud_cos")
from qcloud_cos.cos_exception import CosServiceError  # noqa: E402

from separator.server.signature import sign  # noqa: E402
from separator.server.testing import (  # noqa: E402
    BUCKET, REGION, SECRET_ID, SECRET_KEY, ServerProcess, free_port, write_config,
)

HOST = f"{BUCKET}.cos.{REGION}.myqcloud.com"
BUCKET2 = "other-1250000000"   # a second bucket: its own queue


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    root = base / "storage"
    root.mkdir()
    run_log = base / "runs.log"
    cfg = write_config(base / "server.toml", engine=FAKE,
                       engine_options={"delay": 0.0, "run_log": str(run_log)},
                       callback_timeout=2.0, callback_retries=1, callback_backoff=0.1)
    server = ServerProcess(root, cfg, workers=1).start()
    client = server.client()
    client.put_object(Bucket=BUCKET, Body=b"RIFF-not-really-audio" * 10, Key="in/song.wav")
    yield {"server": server, "client": client, "root": root, "run_log": run_log}
    server.stop()


def runs(env) -> list[str]:
    try:
        return [line.split()[0] for line in env["run_log"].read_text().splitlines()]
    except FileNotFoundError:
        return []


def job_body(**over):
    body = {"Tag": "VoiceSeparate", "Input": {"Object": "in/song.wav"},
            "Operation": {"VoiceSeparate": {"AudioMode": "AudioAndBackground", "AudioConfig": {"Codec": "mp3"}},
                          "Output": {"Region": REGION, "Bucket": BUCKET, "Object": "out/bg-${ext}.mp3",
                                     "AuObject": "out/voc.${ext}"}}}
    for k, v in over.items():
        if k in ("JobLevel", "UserData", "TemplateId"):
            body["Operation"][k] = v
        else:
            body[k] = v
    return body


def submit(client, **over) -> str:
    r = client.ci_create_media_jobs(Bucket=BUCKET, Jobs=job_body(**over), Lst={})
    d = r["JobsDetail"][0]
    assert d["State"] == "Submitted" and d["JobId"].startswith("j")
    return d["JobId"]


def canary(client, bucket=BUCKET2) -> None:
    """Run a job in another bucket (so another queue, active) to the end: once it is done, the
    scheduler has passed over every job that was waiting before it (at its level or above)."""
    client.put_object(Bucket=bucket, Body=b"canary", Key="in/song.wav")
    body = job_body()
    body["Operation"]["Output"]["Bucket"] = bucket
    job_id = client.ci_create_media_jobs(Bucket=bucket, Jobs=body, Lst={})["JobsDetail"][0]["JobId"]
    deadline = time.time() + 60
    while (d := client.ci_get_media_jobs(Bucket=bucket, JobIDs=job_id)["JobsDetail"][0])["State"] not in (
            "Success", "Failed"):
        assert time.time() < deadline, "the canary job did not end"
        time.sleep(0.05)
    assert d["State"] == "Success", d


def wait_jobs(client, ids, states=("Success", "Failed", "Cancel"), timeout=60.0) -> dict[str, dict]:
    deadline = time.time() + timeout
    ids = list(ids)
    while True:
        out = {}
        for i in range(0, len(ids), 50):
            r = client.ci_get_media_jobs(Bucket=BUCKET, JobIDs=",".join(ids[i:i + 50]))
            out.update({d["JobId"]: d for d in r["JobsDetail"]})
        if all(out[j]["State"] in states for j in ids):
            return out
        if time.time() > deadline:
            raise TimeoutError({j: out[j]["State"] for j in ids})
        time.sleep(0.1)


def raw(env, method, path, *, body=b"", headers=None, auth=True, host=HOST, query=None, auth_value=None):
    """A hand-made signed request (for what the SDK cannot send)."""
    hdrs = {"Host": host, "Content-Length": str(len(body)), **(headers or {})}
    target = path + ("?" + "&".join(f"{k}={v}" for k, v in (query or {}).items()) if query else "")
    if auth:
        decoded = __import__("urllib.parse").parse.unquote(path)
        hdrs["Authorization"] = auth_value or sign(SECRET_ID, SECRET_KEY, method, decoded, query or {},
                                                   {k: v for k, v in hdrs.items()})
    conn = http.client.HTTPConnection("127.0.0.1", env["server"].port, timeout=30)
    conn.request(method, target, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), data


# -- objects ---------------------------------------------------------------------------------------

def test_objects_put_get_range_head_list_delete(env):
    c = env["client"]
    data = os.urandom(5000)
    key = "dir/中文 a+b.bin"
    r = c.put_object(Bucket=BUCKET, Body=data, Key=key, ContentType="application/x-test",
                     Metadata={"x-cos-meta-who": "me"})
    assert r["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    h = c.head_object(Bucket=BUCKET, Key=key)
    assert h["Content-Length"] == "5000" and h["Content-Type"] == "application/x-test"
    assert h["x-cos-meta-who"] == "me"
    g = c.get_object(Bucket=BUCKET, Key=key)
    assert g["Body"].get_raw_stream().read() == data
    g = c.get_object(Bucket=BUCKET, Key=key, Range="bytes=100-199")
    assert g["Content-Range"] == "bytes 100-199/5000" and g["Content-Length"] == "100"
    assert g["Body"].get_raw_stream().read() == data[100:200]
    lst = c.list_objects(Bucket=BUCKET, Prefix="dir/")
    assert [o["Key"] for o in lst["Contents"]] == [key]
    lst = c.list_objects(Bucket=BUCKET, Prefix="", Delimiter="/")
    assert {p["Prefix"] for p in lst["CommonPrefixes"]} >= {"dir/", "in/"}
    assert c.object_exists(Bucket=BUCKET, Key=key)
    c.delete_object(Bucket=BUCKET, Key=key)
    assert not c.object_exists(Bucket=BUCKET, Key=key)
    c.delete_object(Bucket=BUCKET, Key=key)  # absent: still 2xx
    with pytest.raises(CosServiceError) as ei:
        c.get_object(Bucket=BUCKET, Key=key)
    assert ei.value.get_status_code() == 404 and ei.value.get_error_code() == "NoSuchKey"
    with pytest.raises(CosServiceError) as ei:
        c.head_object(Bucket=BUCKET, Key=key)
    assert ei.value.get_status_code() == 404 and ei.value.get_request_id()


def test_list_objects_paging(env):
    c = env["client"]
    for i in range(5):
        c.put_object(Bucket=BUCKET, Body=b"x", Key=f"page/{i} %.txt")
    keys, marker = [], ""
    while True:
        r = c.list_objects(Bucket=BUCKET, Prefix="page/", Marker=marker, MaxKeys=2)
        keys += [o["Key"] for o in r.get("Contents", [])]
        if r["IsTruncated"] != "true":
            break
        marker = r["NextMarker"]
    assert keys == [f"page/{i} %.txt" for i in range(5)]


def test_multipart_upload_and_download(env, tmp_path):
    c = env["client"]
    src = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 12345)
    src.write_bytes(data)
    c.upload_file(Bucket=BUCKET, Key="big/input.bin", LocalFilePath=str(src), PartSize=1, MAXThread=2)
    dst = tmp_path / "back.bin"
    c.download_file(Bucket=BUCKET, Key="big/input.bin", DestFilePath=str(dst))
    assert dst.read_bytes() == data
    h = c.head_object(Bucket=BUCKET, Key="big/input.bin")
    assert h["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert not list((env["root"] / ".separator" / "multipart").iterdir())


def test_path_traversal_and_bad_bucket_are_refused(env):
    for path in ("/../../etc/passwd", "/a/../../x", "/%2e%2e/x", "/a/./b", "/a//b"):
        status, headers, body = raw(env, "PUT", path, body=b"evil")
        assert status in (400, 403), (path, status, body)
        assert b"<Code>" in body and "x-cos-request-id" in headers
        status, _, _ = raw(env, "GET", path)
        assert status in (400, 403, 404)
    assert not (env["root"].parent / "x").exists()
    status, _, body = raw(env, "GET", "/in/song.wav", host="Bad_Bucket.cos.ap-guangzhou.myqcloud.com")
    assert status == 400
    status, _, body = raw(env, "GET", "/in/song.wav", host="127.0.0.1")
    assert status == 400 and b"InvalidHost" in body


# -- auth ------------------------------------------------------------------------------------------

def test_signature_failures_over_http(env):
    server = env["server"]
    with pytest.raises(CosServiceError) as ei:
        server.client(secret_key="wrong").head_object(Bucket=BUCKET, Key="in/song.wav")
    assert ei.value.get_status_code() == 403
    with pytest.raises(CosServiceError) as ei:
        server.client(secret_key="wrong").ci_get_media_jobs(Bucket=BUCKET, JobIDs="j1")
    assert ei.value.get_error_code() == "SignatureDoesNotMatch"
    with pytest.raises(CosServiceError) as ei:
        server.client(secret_id="AKIDunknown").list_objects(Bucket=BUCKET)
    assert ei.value.get_error_code() == "InvalidAccessKeyId"
    with pytest.raises(CosServiceError) as ei:
        server.client(Anonymous=True).get_object(Bucket=BUCKET, Key="in/song.wav")
    assert ei.value.get_error_code() == "AccessDenied"
    # expired key time
    old = sign(SECRET_ID, SECRET_KEY, "GET", "/in/song.wav", {}, {"Host": HOST}, start=int(time.time()) - 5000,
               expire=60)
    status, _, body = raw(env, "GET", "/in/song.wav", auth_value=old)
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    # a signed header changed after signing
    good = sign(SECRET_ID, SECRET_KEY, "PUT", "/in/t.bin", {}, {"Host": HOST, "Content-Length": "3",
                                                                "x-cos-meta-a": "1"})
    status, _, body = raw(env, "PUT", "/in/t.bin", body=b"abc", headers={"x-cos-meta-a": "2"}, auth_value=good)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, _, _ = raw(env, "PUT", "/in/t.bin", body=b"abc", headers={"x-cos-meta-a": "1"}, auth_value=good)
    assert status == 200


# -- hostile input ---------------------------------------------------------------------------------

LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><Request><Tag>&lol2;</Tag></Request>')
XXE = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><Request><Name>&x;</Name></Request>'
DEEP = b"<Request>" + b"<a>" * 200 + b"x" + b"</a>" * 200 + b"</Request>"


@pytest.mark.parametrize("method,path", [("POST", "/jobs"), ("POST", "/template"), ("PUT", "/asrqueue/p1")])
@pytest.mark.parametrize("payload", [LAUGHS, XXE, DEEP, b"<Request><Tag>", b"not xml at all"])
def test_hostile_xml_is_refused(env, method, path, payload):
    status, _, body = raw(env, method, path, body=payload)
    assert status == 400, body
    assert b"<Code>" in body and b"root:" not in body


def test_hostile_multipart_complete_and_body_limit(env):
    status, _, body = raw(env, "POST", "/x.bin", query={"uploads": ""})
    upload_id = body.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()
    status, _, body = raw(env, "POST", "/x.bin", body=XXE.replace(b"Request", b"CompleteMultipartUpload"),
                          query={"uploadId": upload_id})
    assert status == 400 and b"MalformedXML" in body
    big = b"<Request>" + b" " * (2 << 20) + b"</Request>"
    status, _, body = raw(env, "POST", "/jobs", body=big)
    assert status == 400 and b"InvalidContent" in body


# -- templates -------------------------------------------------------------------------------------

def test_templates_crud(env):
    c = env["client"]
    t = {"Tag": "VoiceSeparate", "Name": "vocals-only", "AudioMode": "IsAudio",
         "AudioConfig": {"Codec": "mp3", "Samplerate": "44100", "Bitrate": "128", "Channels": "2"}}
    r = c.ci_create_template(Bucket=BUCKET, Template=t)
    tid = r["Template"]["TemplateId"]
    assert tid.startswith("t") and r["Template"]["VoiceSeparate"]["AudioMode"] == "IsAudio"
    c.ci_create_template(Bucket=BUCKET, Template={**t, "Name": "other"})
    r = c.ci_get_template(Bucket=BUCKET, Name="vocals")
    assert r["TotalCount"] == "1" and r["TemplateList"][0]["TemplateId"] == tid
    r = c.ci_get_template(Bucket=BUCKET, Ids=tid)
    assert [x["Name"] for x in r["TemplateList"]] == ["vocals-only"]
    r = c.ci_get_template(Bucket=BUCKET, PageNumber=2, PageSize=1)
    assert int(r["TotalCount"]) >= 2 and len(r["TemplateList"]) == 1
    r = c.ci_update_template(Bucket=BUCKET, TemplateId=tid, Template={**t, "Name": "vocals-aac",
                                                                       "AudioConfig": {"Codec": "aac"}})
    assert r["Template"]["Name"] == "vocals-aac"
    r = c.ci_delete_template(Bucket=BUCKET, TemplateId=tid)
    assert r["TemplateId"] == tid
    with pytest.raises(CosServiceError) as ei:
        c.ci_delete_template(Bucket=BUCKET, TemplateId=tid)
    assert ei.value.get_error_code() == "InvalidArgument"
    with pytest.raises(CosServiceError) as ei:
        c.ci_create_template(Bucket=BUCKET, Template={**t, "AudioMode": "Karaoke"})
    assert ei.value.get_status_code() == 400


# -- jobs ------------------------------------------------------------------------------------------

def test_jobs_inline_and_by_template(env):
    c = env["client"]
    t = c.ci_create_template(Bucket=BUCKET, Template={"Tag": "VoiceSeparate", "Name": "bg", "AudioMode":
                                                      "IsBackground", "AudioConfig": {"Codec": "flac"}})
    tid = t["Template"]["TemplateId"]
    inline = submit(c, UserData="hello")
    by_template = submit(c, TemplateId=tid)
    done = wait_jobs(c, [inline, by_template])
    d = done[inline]
    assert d["State"] == "Success" and d["Code"] == "Success" and d["Operation"]["UserData"] == "hello"
    assert d["Operation"]["MediaResult"]["OutputFile"]["ObjectName"] == ["out/voc.mp3", "out/bg-mp3.mp3"]
    d = done[by_template]
    assert d["Operation"]["TemplateId"] == tid and d["Operation"]["TemplateName"] == "bg"
    assert d["Operation"]["VoiceSeparate"]["AudioMode"] == "IsBackground"  # the template wins
    assert d["Operation"]["MediaResult"]["OutputFile"]["ObjectName"] == "out/bg-flac.mp3"
    assert c.object_exists(Bucket=BUCKET, Key="out/bg-flac.mp3")
    r = c.ci_get_media_jobs(Bucket=BUCKET, JobIDs=f"{inline},jdoesnotexist,{by_template}")
    assert [x["JobId"] for x in r["JobsDetail"]] == [inline, by_template]
    assert r["NonExistJobIds"] == "jdoesnotexist"
    # errors at submission
    with pytest.raises(CosServiceError) as ei:
        submit(c, TemplateId="t" + "0" * 33)
    assert ei.value.get_error_code() == "InvalidArgument"
    with pytest.raises(CosServiceError) as ei:
        c.ci_create_media_jobs(Bucket=BUCKET, Jobs={**job_body(), "Input": {"Object": "in/missing.wav"}}, Lst={})
    assert ei.value.get_error_code() == "ResourceNotFound"
    body = job_body()
    body["Operation"]["VoiceSeparate"]["AudioMode"] = "Nope"
    with pytest.raises(CosServiceError) as ei:
        c.ci_create_media_jobs(Bucket=BUCKET, Jobs=body, Lst={})
    assert ei.value.get_status_code() == 400 and ei.value.get_error_code() == "InvalidArgument"
    assert ei.value.get_request_id()


def test_list_jobs_filters_and_paging(env):
    c = env["client"]
    ids = [submit(c) for _ in range(5)]
    wait_jobs(c, ids)
    seen, token = [], ""
    while True:
        r = c.ci_list_media_jobs(Bucket=BUCKET, Tag="VoiceSeparate", Size=2, NextToken=token, OrderByTime="Asc")
        seen += [d["JobId"] for d in r.get("JobsDetail", [])]
        token = r.get("NextToken") or ""
        if not token:
            break
    assert seen[-5:] == ids and len(seen) == len(set(seen))
    r = c.ci_list_media_jobs(Bucket=BUCKET, Tag="VoiceSeparate", States="Success", Size=100)
    assert set(ids) <= {d["JobId"] for d in r["JobsDetail"]}
    r = c.ci_list_media_jobs(Bucket=BUCKET, Tag="VoiceSeparate", States="Cancel,Running", Size=100)
    assert not set(ids) & {d["JobId"] for d in r.get("JobsDetail", [])}
    r = c.ci_list_media_jobs(Bucket=BUCKET, Tag="VoiceSeparate", Size=100,
                             StartCreationTime="2000-01-01T00:00:00+0800", EndCreationTime="2001-01-01T00:00:00+0800")
    assert not r.get("JobsDetail")
    r = c.ci_list_media_jobs(Bucket=BUCKET, Tag="VoiceSeparate", Size=100,
                             StartCreationTime=time.strftime("%Y-%m-%dT%H:%M:%S+0000",
                                                             time.gmtime(time.time() - 3600)))
    assert set(ids) <= {d["JobId"] for d in r["JobsDetail"]}
    with pytest.raises(CosServiceError):
        c.ci_list_media_jobs(Bucket=BUCKET, Tag="VoiceSeparate", Size=101)


def test_pause_cancel_priorities_resume(env):
    c = env["client"]
    q = c.ci_get_asr_queue(Bucket=BUCKET)["QueueList"][0]
    assert q["Category"] == "Speeching" and q["State"] == "Active" and q["QueueId"].startswith("p")
    r = c.ci_update_asr_queue(Bucket=BUCKET, QueueId=q["QueueId"],
                              Request={"Name": q["Name"], "QueueID": q["QueueId"], "State": "Paused"})
    assert r["Queue"][0]["State"] == "Paused"
    levels = [0, 0, 2, 1, 2]
    ids = [submit(c, JobLevel=str(level), QueueId=q["QueueId"]) for level in levels]
    canary(c)                     # a later job of another queue ran: these were passed over
    states = wait_jobs(c, ids, states=("Submitted",), timeout=5)
    assert all(d["State"] == "Submitted" for d in states.values())  # waiting jobs show Submitted
    r = c.ci_list_media_jobs(Bucket=BUCKET, Tag="VoiceSeparate", States="Pause", Size=100)
    assert set(ids) <= {d["JobId"] for d in r["JobsDetail"]}
    assert c.ci_cancel_jobs(Bucket=BUCKET, JobID=ids[1]) == ""
    before = len(runs(env))
    c.ci_update_asr_queue(Bucket=BUCKET, QueueId=q["QueueId"], Request={"State": "Active"})
    done = wait_jobs(c, ids)
    assert done[ids[1]]["State"] == "Cancel"
    order = runs(env)[before:]
    assert order == [ids[2], ids[4], ids[3], ids[0]]  # level 2 (FIFO), 1, 0; the cancelled one never ran
    with pytest.raises(CosServiceError) as ei:
        c.ci_cancel_jobs(Bucket=BUCKET, JobID=ids[0])
    assert ei.value.get_status_code() == 400 and ei.value.get_error_code() == "InvalidArgument"
    with pytest.raises(CosServiceError):
        c.ci_update_asr_queue(Bucket=BUCKET, QueueId="p" + "0" * 32, Request={"State": "Paused"})


# -- callbacks -------------------------------------------------------------------------------------

class _Sink(BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((self.path, self.headers.get("Content-Type"), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_callbacks_xml_json_queue_no_and_dead_endpoint(env):
    c = env["client"]
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    _Sink.got = []
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{sink.server_address[1]}"
    dead = f"http://127.0.0.1:{free_port()}/dead"
    try:
        xml_job = submit(c, CallBack=url + "/xml")
        json_job = submit(c, CallBack=url + "/json", CallBackFormat="JSON")
        dead_job = submit(c, CallBack=dead)
        no_job = submit(c, CallBack="no")
        done = wait_jobs(c, [xml_job, json_job, dead_job, no_job])
        assert all(d["State"] == "Success" for d in done.values())  # a dead endpoint fails nothing
        deadline = time.time() + 10
        while len(_Sink.got) < 2 and time.time() < deadline:
            time.sleep(0.05)
        got = {p: (ct, b) for p, ct, b in _Sink.got}
        ct, body = got["/xml"]
        assert ct == "application/xml" and b"<EventName>TaskFinish</EventName>" in body
        assert f"<JobId>{xml_job}</JobId>".encode() in body and b"<State>Success</State>" in body
        ct, body = got["/json"]
        doc = json.loads(body)
        assert ct == "application/json" and doc["EventName"] == "TaskFinish"
        assert doc["JobsDetail"]["JobId"] == json_job
        # the queue's NotifyConfig is used when the job names no CallBack; CallBack=no suppresses it
        q = c.ci_get_asr_queue(Bucket=BUCKET)["QueueList"][0]
        c.ci_update_asr_queue(Bucket=BUCKET, QueueId=q["QueueId"], Request={
            "State": "Active", "NotifyConfig": {"Url": url + "/queue", "State": "On", "Type": "Url",
                                                "Event": "TaskFinish", "ResultFormat": "JSON"}})
        _Sink.got = []
        via_queue = submit(c)
        suppressed = submit(c, CallBack="no")
        wait_jobs(c, [via_queue, suppressed])
        # a job after them with its own CallBack: once its callback came, theirs were sent (or not)
        barrier = submit(c, CallBack=url + "/barrier", CallBackFormat="JSON")
        deadline = time.time() + 10
        while "/barrier" not in [p for p, _, _ in _Sink.got] and time.time() < deadline:
            time.sleep(0.05)
        got = [(p, json.loads(b)["JobsDetail"]["JobId"]) for p, _, b in _Sink.got]
        assert ("/barrier", barrier) in got
        assert [x for x in got if x[0] != "/barrier"] == [("/queue", via_queue)]
    finally:
        q = c.ci_get_asr_queue(Bucket=BUCKET)["QueueList"][0]
        c.ci_update_asr_queue(Bucket=BUCKET, QueueId=q["QueueId"], Request={
            "State": "Active", "NotifyConfig": {"Url": "", "State": "Off"}})
        sink.shutdown()


# -- load ------------------------------------------------------------------------------------------

def test_burst_of_100_jobs_all_finish_once(env):
    c = env["client"]
    before = set(runs(env))
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: submit(env["server"].client(), JobLevel=str(i % 3)), range(100)))
    assert len(set(ids)) == 100
    done = wait_jobs(c, ids, timeout=120)
    assert all(d["State"] == "Success" for d in done.values())
    ran = [j for j in runs(env) if j not in before]
    assert sorted(ran) == sorted(ids)  # every job ran, and exactly once


def test_anonymous_mode_only_when_configured(tmp_path):
    root = tmp_path / "storage"
    root.mkdir()
    cfg = write_config(tmp_path / "anon.toml", keys={}, anonymous=True,
                       engine=FAKE)
    with ServerProcess(root, cfg) as server:
        c = server.client(Anonymous=True)
        c.put_object(Bucket=BUCKET, Body=b"abc", Key="a.txt")
        assert c.get_object(Bucket=BUCKET, Key="a.txt")["Body"].get_raw_stream().read() == b"abc"
    assert "ANONYMOUS ACCESS IS ON" in server.log.read_text()


def test_config_files_toml_and_yaml(tmp_path):
    from separator.server.config import build_config

    (tmp_path / "c.toml").write_text('anonymous = false\nregion = "ap-beijing"\ncallback_retries = 1\n'
                                     '[[keys]]\nSecretId = "a"\nSecretKey = "b"\n[models]\nMusicMode = "m4"\n'
                                     '[queue]\nname = "q"\n')
    cfg = build_config(tmp_path, config_file=str(tmp_path / "c.toml"), port=9, workers=None)
    assert cfg.keys == {"a": "b"} and cfg.region == "ap-beijing" and cfg.models == {"MusicMode": "m4"}
    assert cfg.port == 9 and cfg.callback_retries == 1 and cfg.queue_name == "q"
    (tmp_path / "c.yaml").write_text("anonymous: true\nkeys:\n  - SecretId: x\n    SecretKey: y\nworkers: 2\n")
    cfg = build_config(tmp_path, config_file=str(tmp_path / "c.yaml"))
    assert cfg.anonymous and cfg.keys == {"x": "y"} and cfg.workers == 2
