"""COS sha1 signatures: our signer matches the SDK's, and verification rejects each kind of forgery."""
from __future__ import annotations

import time

import pytest
import requests
from qcloud_cos import CosConfig
from qcloud_cos.cos_auth import CosS3Auth

from separator.errors import CIError
from separator.server.signature import parse_authorization, query_pairs, sign, verify

SID, SKEY = "AKIDtest", "secret-key"
KEYS = {SID: SKEY}


def sdk_request(method, url, *, key=None, params=None, headers=None, secret_key=SKEY, **conf):
    conf_ = CosConfig(Region="ap-guangzhou", SecretId=SID, SecretKey=secret_key, Scheme="http",
                      IP="127.0.0.1", Port=8080, **conf)
    req = requests.Request(method, url, headers=headers or {}, params=params or {}).prepare()
    return CosS3Auth(conf_, key, params=params or {})(req)


def check(r, path, *, now=None, keys=KEYS, headers_override=None):
    headers = {k.lower(): v for k, v in r.headers.items()}
    headers.update(headers_override or {})
    query = query_pairs(r.url.split("?", 1)[1] if "?" in r.url else "")
    return verify(method=r.method, path=path, query=query, headers=headers, keys=keys, now=now)


HOST = "test-1250000000.cos.ap-guangzhou.myqcloud.com"


def test_sdk_signature_verifies_for_ci_and_cos_calls():
    r = sdk_request("GET", "http://127.0.0.1:8080/jobs/j1%2Cj2", key="jobs/j1,j2", headers={"Host": HOST})
    assert check(r, "/jobs/j1,j2") == SID
    params = {"tag": "VoiceSeparate", "orderByTime": "Desc", "states": "All", "size": "10", "nextToken": "",
              "startCreationTime": "2001-01-01T00:00:00+0800"}
    r = sdk_request("GET", "http://127.0.0.1:8080/jobs", key="jobs", params=params, headers={"Host": HOST})
    assert check(r, "/jobs") == SID
    r = sdk_request("PUT", "http://127.0.0.1:8080/%E4%B8%AD%E6%96%87/a%20b.wav", key="中文/a b.wav",
                    headers={"Host": HOST, "Content-Type": "audio/wav", "x-cos-meta-x": "1"})
    assert check(r, "/中文/a b.wav") == SID


def test_unsigned_params_are_ignored_and_host_without_port_falls_back():
    # ?cancel is never signed by the SDK
    r = sdk_request("PUT", "http://127.0.0.1:8080/jobs/j1?cancel", key="jobs/j1", headers={"Host": HOST})
    assert check(r, "/jobs/j1") == SID
    # no Host given: the SDK signs the hostname without the port, the wire Host has it
    r = sdk_request("GET", "http://127.0.0.1:8080/asrbucket", key="asrbucket")
    assert check(r, "/asrbucket", headers_override={"host": "127.0.0.1:8080"}) == SID


def test_our_signer_matches_the_sdk():
    start = int(time.time()) - 60
    auth = sign(SID, SKEY, "GET", "/jobs", {"tag": "VoiceSeparate", "size": "10"}, {"host": HOST}, start=start)
    fields = parse_authorization(auth)
    assert fields["q-url-param-list"] == "size;tag"
    assert verify(method="GET", path="/jobs", query=[("tag", "VoiceSeparate"), ("size", "10")],
                  headers={"host": HOST, "authorization": auth}, keys=KEYS) == SID


@pytest.mark.parametrize("case,code", [
    ("unknown-key", "InvalidAccessKeyId"),
    ("wrong-secret", "SignatureDoesNotMatch"),
    ("expired", "AccessDenied"),
    ("future", "RequestTimeTooSkewed"),
    ("tampered-header", "SignatureDoesNotMatch"),
    ("tampered-param", "SignatureDoesNotMatch"),
    ("tampered-path", "SignatureDoesNotMatch"),
    ("missing", "AccessDenied"),
    ("garbage", "AccessDenied"),
])
def test_forgeries_are_refused(case, code):
    headers = {"host": HOST, "content-type": "application/xml"}
    now = time.time()
    auth = sign(SID, SKEY, "POST", "/jobs", {"size": "10"}, headers)
    query = [("size", "10")]
    path = "/jobs"
    keys = KEYS
    if case == "unknown-key":
        keys = {"AKIDother": SKEY}
    elif case == "wrong-secret":
        auth = sign(SID, "not-the-key", "POST", "/jobs", {"size": "10"}, headers)
    elif case == "expired":
        auth = sign(SID, SKEY, "POST", "/jobs", {"size": "10"}, headers, start=int(now) - 4000, expire=100)
    elif case == "future":
        auth = sign(SID, SKEY, "POST", "/jobs", {"size": "10"}, headers, start=int(now) + 7200)
    elif case == "tampered-header":
        headers = {**headers, "content-type": "text/plain"}
    elif case == "tampered-param":
        query = [("size", "11")]
    elif case == "tampered-path":
        path = "/jobs/x"
    elif case == "missing":
        auth = ""
    elif case == "garbage":
        auth = "q-sign-algorithm=md5&q-ak=x"
    with pytest.raises(CIError) as ei:
        verify(method="POST", path=path, query=query, headers={**headers, "authorization": auth}, keys=keys,
               now=now)
    assert ei.value.status == 403
    assert ei.value.code == code


def test_presigned_url_query_signature():
    auth = sign(SID, SKEY, "GET", "/in/a.wav", {}, {"host": HOST})
    q = [tuple(p.split("=", 1)) for p in auth.split("&")]
    assert verify(method="GET", path="/in/a.wav", query=q, headers={"host": HOST}, keys=KEYS) == SID
