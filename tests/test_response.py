"""Response / error / callback / template bodies (spec §1.8, §2, §4, §6, §7): separator.request.response."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import pytest

from separator.errors import CIError
from separator.request import (
    JobRecord, TemplateRecord, VoiceSeparateParams, AudioConfig, jobs_detail_dict, merge_template, new_job_id,
    new_queue_id, new_request_id, new_template_id, parse_job_request, render_callback, render_error,
    render_response, render_template, render_template_deleted, render_template_list, resolve_outputs,
)
from separator.request.ids import JOB_ID_RE, QUEUE_ID_RE, TIME_RE

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
T0 = datetime(2022, 7, 1, 2, 12, 26, tzinfo=timezone.utc)
T1 = datetime(2022, 7, 1, 2, 12, 30, tzinfo=timezone.utc)
T2 = datetime(2022, 7, 1, 2, 13, 1, tzinfo=timezone.utc)

MEDIA_INFO = {
    "Format": {"Bitrate": "128.147000", "Duration": "10.000000", "FormatLongName": "MP2/3 (MPEG audio layer 2/3)",
               "FormatName": "mp3", "NumProgram": "0", "NumStream": "1", "Size": "160184", "StartTime": "0.000000"},
    "Stream": {"Audio": [{"Index": "0", "CodecName": "mp3", "SampleRate": "44100", "Channel": "2"},
                         {"Index": "0", "CodecName": "mp3", "SampleRate": "44100", "Channel": "2"}],
               "Subtitle": "", "Video": ""},
}


def request(path="request-inline.xml"):
    return parse_job_request((EXAMPLES / path).read_bytes())[0]


def record(state="Submitted", **kw) -> JobRecord:
    req = kw.pop("request", None) or request()
    rec = JobRecord(job_id=new_job_id(), state=state, creation_time=T0, queue_id=new_queue_id(),
                    input_region="ap-chongqing", input_bucket="test-1234567890", request=req, **kw)
    if state in ("Running", "Success", "Failed"):
        rec.start_time = T1
    if state in ("Success", "Failed"):
        rec.end_time = T2
    return rec


def finished(**kw) -> JobRecord:
    rec = record("Success", **kw)
    outs = resolve_outputs(rec.request)
    rec.media_result = [(outs["vocals"], "3b88" + "0" * 28), (outs["background"], "62de" + "0" * 28)]
    rec.media_info = MEDIA_INFO
    return rec


def xml_root(body: bytes) -> ET.Element:
    assert body.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    return ET.fromstring(body)


def tags(el) -> list[str]:
    return [c.tag for c in el]


# ------------------------------------------------------------------------------------------
# JobsDetail shape
# ------------------------------------------------------------------------------------------

TOP = ["Code", "Message", "JobId", "Tag", "State", "CreationTime", "StartTime", "EndTime", "QueueId", "Input",
       "Operation"]


def test_submitted_response_shape_and_order():
    rec = record()
    root = xml_root(render_response([rec]))
    assert root.tag == "Response" and tags(root) == ["JobsDetail"]
    jd = root.find("JobsDetail")
    assert tags(jd) == TOP
    assert jd.findtext("Code") == "Success" and jd.findtext("Message") == ""
    assert jd.find("Message").text is None  # <Message/>
    assert JOB_ID_RE.match(jd.findtext("JobId")) and QUEUE_ID_RE.match(jd.findtext("QueueId"))
    assert jd.findtext("Tag") == "VoiceSeparate" and jd.findtext("State") == "Submitted"
    assert jd.findtext("CreationTime") == "2022-07-01T10:12:26+0800" and TIME_RE.match(jd.findtext("CreationTime"))
    assert jd.findtext("StartTime") == "" and jd.findtext("EndTime") == ""
    assert tags(jd.find("Input")) == ["Region", "BucketId", "Object"]
    assert jd.findtext("Input/Object") == "input/demo.mp3"
    op = jd.find("Operation")
    assert tags(op) == ["VoiceSeparate", "Output", "UserData", "JobLevel"]
    assert tags(op.find("VoiceSeparate")) == ["AudioMode", "AudioConfig"]
    assert tags(op.find("VoiceSeparate/AudioConfig")) == ["Codec", "Samplerate", "Bitrate", "Channels"]
    assert [c.text for c in op.find("VoiceSeparate/AudioConfig")] == ["mp3", "44100", "128", "2"]
    assert tags(op.find("Output")) == ["Region", "Bucket", "Object", "AuObject"]
    assert op.findtext("Output/AuObject") == "output/vocal.${ext}"  # echo, not resolved
    assert op.findtext("UserData") == "demo" and op.findtext("JobLevel") == "0"


def test_template_nodes_only_when_template_used():
    req = merge_template(request("request-template.xml"), VoiceSeparateParams(audio_mode="AudioAndBackground"))
    rec = record(request=req, template_id=req.operation.template_id, template_name="my-tpl")
    op = xml_root(render_response([rec])).find("JobsDetail/Operation")
    assert tags(op)[:3] == ["TemplateId", "TemplateName", "VoiceSeparate"]
    assert op.findtext("TemplateName") == "my-tpl"
    assert op.findtext("VoiceSeparate/AudioMode") == "AudioAndBackground"
    assert "TemplateId" not in tags(xml_root(render_response([record()])).find("JobsDetail/Operation"))


@pytest.mark.parametrize("state", ["Submitted", "Running", "Pause", "Cancel"])
def test_media_nodes_absent_until_finished(state):
    rec = finished()
    rec.state = state
    op = xml_root(render_response([rec])).find("JobsDetail/Operation")
    assert "MediaInfo" not in tags(op) and "MediaResult" not in tags(op)


def test_finished_response_media_result():
    rec = finished()
    jd = xml_root(render_response([rec])).find("JobsDetail")
    assert tags(jd) == TOP and jd.findtext("EndTime") == "2022-07-01T10:13:01+0800"
    op = jd.find("Operation")
    assert tags(op) == ["VoiceSeparate", "Output", "MediaInfo", "MediaResult", "UserData", "JobLevel"]
    of = op.find("MediaResult/OutputFile")
    assert tags(of) == ["Bucket", "Region", "ObjectName", "ObjectName", "ObjectPrefix", "Md5Info", "Md5Info"]
    assert of.findtext("Bucket") == "test-1234567890" and of.findtext("Region") == "ap-chongqing"
    assert [e.text for e in of.findall("ObjectName")] == ["output/vocal.mp3", "output/background.mp3"]
    assert of.find("ObjectPrefix").text is None
    md5 = of.findall("Md5Info")
    assert [tags(m) for m in md5] == [["Md5", "ObjectName"]] * 2
    assert [m.findtext("ObjectName") for m in md5] == ["output/vocal.mp3", "output/background.mp3"]
    mi = op.find("MediaInfo")
    assert tags(mi) == ["Format", "Stream"] and tags(mi.find("Format")) == list(MEDIA_INFO["Format"])
    assert tags(mi.find("Stream")) == ["Audio", "Audio", "Subtitle", "Video"]


def test_failed_job_with_code_and_message():
    rec = record("Failed", code="InvalidInput", message="input has no audio stream <none> & co")
    jd = xml_root(render_response([rec])).find("JobsDetail")
    assert jd.findtext("Code") == "InvalidInput"
    assert jd.findtext("Message") == "input has no audio stream <none> & co"
    assert "MediaResult" not in tags(jd.find("Operation"))


def test_result_bucket_override_progress_and_extra():
    rec = finished(progress=100, extra={"SeparatorModel": "htdemucs", "Device": "cpu", "Timing": {"RealTime": 3.5}})
    rec.result_bucket, rec.result_region = "out-1250000000", "ap-guangzhou"
    jd = xml_root(render_response([rec])).find("JobsDetail")
    assert tags(jd)[:6] == ["Code", "Message", "JobId", "Tag", "State", "Progress"] and jd.findtext("Progress") == "100"
    op = jd.find("Operation")
    assert tags(op)[-4:] == ["JobLevel", "SeparatorModel", "Device", "Timing"]
    assert op.findtext("Timing/RealTime") == "3.5"
    assert op.findtext("MediaResult/OutputFile/Bucket") == "out-1250000000"


def test_xml_forbidden_characters_dropped():
    rec = record("Failed", code="InternalError", message="ffmpeg said \x00\x1b[31mboom\x07")
    body = render_response([rec])
    assert xml_root(body).findtext("JobsDetail/Message") == "ffmpeg said [31mboom"


def test_musicmode_bass_drum_echo():
    body = (EXAMPLES / "request-inline.xml").read_text()
    body = body.replace("AudioAndBackground", "MusicMode").replace(
        "</Output>", "<BassObject>o/bass.${ext}</BassObject><DrumObject>o/drum.${ext}</DrumObject></Output>")
    rec = record(request=parse_job_request(body)[0])
    out = xml_root(render_response([rec])).find("JobsDetail/Operation/Output")
    assert tags(out) == ["Region", "Bucket", "Object", "AuObject", "BassObject", "DrumObject"]


def test_model_extension_echoed():
    body = (EXAMPLES / "request-inline.xml").read_text().replace("</AudioConfig>", "</AudioConfig><Model>htdemucs</Model>")
    vs = xml_root(render_response([record(request=parse_job_request(body)[0])])).find("JobsDetail/Operation/VoiceSeparate")
    assert tags(vs) == ["AudioMode", "AudioConfig", "Model"]


# ------------------------------------------------------------------------------------------
# Response envelope
# ------------------------------------------------------------------------------------------

def test_multiple_nonexist_and_next_token():
    body = render_response([record(), finished()], non_exist_ids=["jnope1", "jnope2"], next_token="tok")
    root = xml_root(body)
    assert tags(root) == ["JobsDetail", "JobsDetail", "NonExistJobIds", "NonExistJobIds", "NextToken"]
    assert [e.text for e in root.findall("NonExistJobIds")] == ["jnope1", "jnope2"]
    assert tags(xml_root(render_response([record()], next_token=""))) == ["JobsDetail", "NextToken"]


def test_empty_list_renders_empty_jobsdetail():
    root = xml_root(render_response([], next_token=""))
    assert tags(root) == ["JobsDetail", "NextToken"] and len(root.find("JobsDetail")) == 0
    assert json.loads(render_response([], "json")) == {"Response": {"JobsDetail": []}}


def test_json_response():
    rec = finished()
    doc = json.loads(render_response([rec, record()], "json", non_exist_ids=["jx"]))
    resp = doc["Response"]
    assert list(resp) == ["JobsDetail", "NonExistJobIds"] and resp["NonExistJobIds"] == ["jx"]
    jd = resp["JobsDetail"][0]
    assert list(jd) == TOP and jd["Message"] == "" and jd["StartTime"] == "2022-07-01T10:12:30+0800"
    of = jd["Operation"]["MediaResult"]["OutputFile"]
    assert of["ObjectName"] == ["output/vocal.mp3", "output/background.mp3"]
    assert of["Md5Info"][0] == {"Md5": "3b88" + "0" * 28, "ObjectName": "output/vocal.mp3"}
    assert len(jd["Operation"]["MediaInfo"]["Stream"]["Audio"]) == 2
    assert jd == jobs_detail_dict(rec)


LIST_NODES = {("Response", "JobsDetail"), ("Response", "NonExistJobIds"), ("OutputFile", "ObjectName"),
              ("OutputFile", "Md5Info"), ("Stream", "Audio")}


def _norm(v, parent=""):
    """xmltodict output -> our JSON tree (None -> '', repeated nodes -> lists)."""
    if v is None:
        return ""
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if (parent, k) in LIST_NODES and not isinstance(x, list):
                x = [x]
            out[k] = [_norm(i, k) for i in x] if isinstance(x, list) else _norm(x, k)
        return out
    return v


def test_xml_and_json_are_equivalent_via_xmltodict():
    xmltodict = pytest.importorskip("xmltodict")
    recs = [finished(), record()]
    x = xmltodict.parse(render_response(recs, non_exist_ids=["jx"], next_token="n"))
    j = json.loads(render_response(recs, "json", non_exist_ids=["jx"], next_token="n"))
    assert _norm(x) == j


def test_sdk_xml_to_dict_parses_response():
    cos_comm = pytest.importorskip("qcloud_cos.cos_comm")
    one = cos_comm.xml_to_dict(render_response([finished()]))
    cos_comm.format_dict(one, ["JobsDetail"])
    assert isinstance(one["JobsDetail"], list) and one["JobsDetail"][0]["State"] == "Success"
    of = one["JobsDetail"][0]["Operation"]["MediaResult"]["OutputFile"]
    assert of["ObjectName"] == ["output/vocal.mp3", "output/background.mp3"]
    assert isinstance(of["Md5Info"], list)
    many = cos_comm.xml_to_dict(render_response([record(), record()], non_exist_ids=["jx"]))
    assert len(cos_comm.format_dict(many, ["JobsDetail"])["JobsDetail"]) == 2 and many["NonExistJobIds"] == "jx"
    empty = cos_comm.format_dict(cos_comm.xml_to_dict(render_response([], next_token="")), ["JobsDetail"])
    assert empty["JobsDetail"] == []


def test_sdk_parses_callback_and_template():
    cos_comm = pytest.importorskip("qcloud_cos.cos_comm")
    cb = cos_comm.xml_to_dict(render_callback(finished()))
    assert cb["EventName"] == "TaskFinish" and cb["JobsDetail"]["State"] == "Success"
    t = cos_comm.xml_to_dict(render_template(_template(), request_id="r1"))
    assert t["Template"]["VoiceSeparate"]["AudioMode"] == "IsAudio"


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------

def test_error_body_has_all_nodes():
    err = CIError("InvalidArgument", "Operation.Output.Bucket must look like 'name-APPID'",
                  resource="Operation.Output.Bucket")
    root = xml_root(render_error(err, request_id="req-1"))
    assert root.tag == "Error" and tags(root) == ["Code", "Message", "Resource", "RequestId", "TraceId"]
    assert [c.text for c in root][:4] == ["InvalidArgument", err.message, "Operation.Output.Bucket", "req-1"]
    assert all(c.text for c in root)
    root = xml_root(render_error(err, request_id="req-1", resource="/jobs"))
    assert root.findtext("Resource") == "/jobs"


def test_error_body_never_empty_nodes():
    root = xml_root(render_error(CIError("InternalError", ""), request_id=""))
    assert all(c.text for c in root) and root.findtext("Resource") == "/"


def test_error_json():
    doc = json.loads(render_error(CIError("MissingContent", "empty"), request_id="r", fmt="json"))
    assert list(doc["Error"]) == ["Code", "Message", "Resource", "RequestId", "TraceId"]


def test_sdk_digest_xml_reads_error():
    exc = pytest.importorskip("qcloud_cos.cos_exception")
    for err in (CIError("InvalidArgument", "bad <Codec> & stuff", resource="Operation.VoiceSeparate.AudioConfig.Codec"),
                CIError("InternalError", "")):
        msg = exc.digest_xml(render_error(err, request_id=new_request_id()))
        assert isinstance(msg, dict), msg
        assert msg["code"] == err.code and msg["resource"] and msg["requestid"] and msg["traceid"] != "Unknown"
    e = exc.CosServiceError("POST", render_error(CIError("InvalidArgument", "x"), request_id="rid"), 400)
    assert e.get_error_code() == "InvalidArgument" and e.get_request_id() == "rid"


def test_parse_error_renders_cleanly():
    with pytest.raises(CIError) as ei:
        parse_job_request(b"<!DOCTYPE x [<!ENTITY a 'b'>]><Request/>")
    root = xml_root(render_error(ei.value, request_id="r"))
    assert root.findtext("Code") == "InvalidContent"


# ------------------------------------------------------------------------------------------
# Callback
# ------------------------------------------------------------------------------------------

def test_callback_xml():
    root = xml_root(render_callback(finished()))
    assert root.tag == "Response" and tags(root) == ["EventName", "JobsDetail"]
    assert root.findtext("EventName") == "TaskFinish"
    jd = root.find("JobsDetail")
    assert tags(jd) == sorted(TOP)
    assert tags(jd.find("Input")) == ["BucketId", "Object", "Region"]
    op_tags = tags(jd.find("Operation"))
    assert op_tags[-1] == "JobLevel" and op_tags[:3] == ["MediaInfo", "MediaResult", "Output"]
    of = jd.find("Operation/MediaResult/OutputFile")
    assert [e.text for e in of.findall("ObjectName")] == ["output/vocal.mp3", "output/background.mp3"]


def test_callback_json():
    rec = finished()
    doc = json.loads(render_callback(rec, "json"))
    assert list(doc) == ["EventName", "JobsDetail"] and doc["EventName"] == "TaskFinish"
    assert isinstance(doc["JobsDetail"], dict) and doc["JobsDetail"]["JobId"] == rec.job_id
    assert doc["JobsDetail"]["Operation"]["MediaResult"]["OutputFile"]["ObjectName"][0] == "output/vocal.mp3"


def test_callback_failed_job():
    doc = json.loads(render_callback(record("Failed", code="InvalidInput", message="no audio"), "json"))
    assert doc["JobsDetail"]["Code"] == "InvalidInput" and "MediaResult" not in doc["JobsDetail"]["Operation"]


# ------------------------------------------------------------------------------------------
# Templates
# ------------------------------------------------------------------------------------------

def _template():
    return TemplateRecord(template_id=new_template_id(), name="tpl", bucket_id="test-1234567890",
                          params=VoiceSeparateParams(audio_mode="IsAudio",
                                                     audio_config=AudioConfig(codec="aac", samplerate=44100)),
                          create_time=T0, update_time=T1)


def test_template_response():
    t = _template()
    root = xml_root(render_template(t, request_id="r1"))
    assert tags(root) == ["RequestId", "Template"]
    tpl = root.find("Template")
    assert tags(tpl) == ["TemplateId", "Name", "BucketId", "Category", "Tag", "UpdateTime", "CreateTime",
                         "VoiceSeparate"]
    assert tpl.findtext("Category") == "Custom" and tpl.findtext("Tag") == "VoiceSeparate"
    assert tpl.findtext("CreateTime") == "2022-07-01T10:12:26+0800"
    assert tpl.findtext("VoiceSeparate/AudioConfig/Codec") == "aac"
    assert tpl.findtext("VoiceSeparate/AudioConfig/Bitrate") == ""
    doc = json.loads(render_template(t, request_id="r1", fmt="json"))
    assert doc["Response"]["Template"]["TemplateId"] == t.template_id


def test_template_list_and_delete():
    root = xml_root(render_template_list([_template(), _template()], request_id="r", total_count=2, page_number=1,
                                         page_size=10))
    assert tags(root) == ["RequestId", "TotalCount", "PageNumber", "PageSize", "TemplateList", "TemplateList"]
    root = xml_root(render_template_list([], request_id="r", total_count=0, page_number=1, page_size=10))
    assert "TemplateList" not in tags(root)
    root = xml_root(render_template_deleted("t1", request_id="r"))
    assert tags(root) == ["RequestId", "TemplateId"]


def test_bad_fmt():
    with pytest.raises(ValueError):
        render_response([], "yaml")


def test_lone_surrogates_do_not_break_rendering():
    rec = record("Failed", code="InternalError", message="bad \udcff byte")
    assert json.loads(render_response([rec], "json"))["Response"]["JobsDetail"][0]["Message"] == "bad ? byte"
    assert xml_root(render_response([rec])).findtext("JobsDetail/Message") == "bad  byte"
