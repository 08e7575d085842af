"""Request parsing and validation (spec §1, §4): separator.request.parse / model / ids."""
from __future__ import annotations

import copy
import json
import re
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from separator.errors import CIError
from separator.request import (
    MAX_BODY_BYTES, AudioConfig, JobRequest, TemplateRequest, VoiceSeparateParams, effective_audio_config,
    format_time, merge_template, new_job_id, new_queue_id, new_request_id, new_template_id, parse_job_request,
    parse_template_request, parse_time, resolve_outputs, validate_job_request,
)
from separator.request.ids import JOB_ID_RE, QUEUE_ID_RE, TEMPLATE_ID_RE, TIME_RE

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEL = object()

BASE = {
    "Tag": "VoiceSeparate",
    "Input": {"Object": "input/demo.mp3"},
    "Operation": {
        "VoiceSeparate": {
            "AudioMode": "AudioAndBackground",
            "AudioConfig": {"Codec": "mp3", "Samplerate": "44100", "Bitrate": "128", "Channels": "2"},
        },
        "Output": {"Region": "ap-chongqing", "Bucket": "test-1234567890",
                   "Object": "output/background.${ext}", "AuObject": "output/vocal.${ext}"},
    },
}
VS = ("Operation", "VoiceSeparate")
AC = VS + ("AudioConfig",)
OUT = ("Operation", "Output")


def build(*changes) -> dict:
    """BASE with (path_tuple, value) changes applied; value DEL removes the node."""
    d = copy.deepcopy(BASE)
    for path, value in changes:
        cur = d
        for p in path[:-1]:
            cur = cur.setdefault(p, {})
        if value is DEL:
            cur.pop(path[-1], None)
        else:
            cur[path[-1]] = value
    return d


def _fill(parent, tag, value):
    if isinstance(value, list):
        for v in value:
            _fill(parent, tag, v)
        return
    el = ET.SubElement(parent, tag)
    if isinstance(value, dict):
        for k, v in value.items():
            _fill(el, k, v)
    else:
        el.text = str(value)


def to_xml(d: dict, root: str = "Request") -> bytes:
    r = ET.Element(root)
    for k, v in d.items():
        _fill(r, k, v)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(r)


def to_json(d: dict) -> bytes:
    return json.dumps({"Request": d}).encode()


ENCODERS = {"xml": to_xml, "json": to_json}


def parse(d: dict, fmt: str = "xml") -> JobRequest:
    req, got = parse_job_request(ENCODERS[fmt](d))
    assert got == fmt
    return req


def error_of(d_or_body, fmt: str = "xml") -> CIError:
    body = ENCODERS[fmt](d_or_body) if isinstance(d_or_body, dict) else d_or_body
    with pytest.raises(CIError) as ei:
        parse_job_request(body)
    return ei.value


# ------------------------------------------------------------------------------------------
# Examples and the basics
# ------------------------------------------------------------------------------------------

def test_examples_parse():
    x, fx = parse_job_request((EXAMPLES / "request-inline.xml").read_bytes())
    j, fj = parse_job_request((EXAMPLES / "request-inline.json").read_text())
    assert (fx, fj) == ("xml", "json")
    assert x == j
    assert x.input_object == "input/demo.mp3"
    assert x.params.audio_mode == "AudioAndBackground"
    assert x.params.audio_config == AudioConfig(codec="mp3", samplerate=44100, bitrate=128, channels=2)
    assert x.output.bucket == "test-1234567890" and x.output.region == "ap-chongqing"
    assert resolve_outputs(x) == {"vocals": "output/vocal.mp3", "background": "output/background.mp3"}
    t, _ = parse_job_request((EXAMPLES / "request-template.xml").read_bytes())
    assert t.operation.template_id.startswith("t") and t.params is None
    tpl, _ = parse_template_request((EXAMPLES / "template-create.xml").read_bytes())
    assert tpl.name == "vocals-mp3" and tpl.audio_mode == "IsAudio"


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_base_defaults(fmt):
    r = parse(BASE, fmt)
    assert r.tag == "VoiceSeparate"
    assert r.callback_format == "XML" and r.callback_type == "Url"
    assert r.operation.job_level == 0 and r.queue_id is None and r.operation.user_data is None


def test_sdk_format_xml_body_is_accepted():
    """The SDK sends xmltodict.unparse({'Request': d}) with no Content-Type."""
    xmltodict = pytest.importorskip("xmltodict")
    body = xmltodict.unparse({"Request": BASE}).encode()
    assert body.startswith(b"<?xml")
    assert parse_job_request(body)[0] == parse(BASE)


def test_sdk_cos_comm_format_xml():
    cos_comm = pytest.importorskip("qcloud_cos.cos_comm")
    assert parse_job_request(cos_comm.format_xml(BASE, "Request"))[0] == parse(BASE)


def test_xml_without_header_pretty_printed_and_bom():
    body = (EXAMPLES / "request-inline.xml").read_text().split("\n", 1)[1]
    assert parse_job_request(body)[0] == parse_job_request("\ufeff" + body)[0]
    assert parse_job_request(b"\xef\xbb\xbf" + to_json(BASE))[1] == "json"


def test_json_inner_object_and_numbers():
    d = build((AC + ("Samplerate",), 48000), (AC + ("Channels",), 1), (("Operation", "JobLevel"), 2))
    r, fmt = parse_job_request(json.dumps(d))
    assert fmt == "json" and r.params.audio_config.samplerate == 48000 and r.operation.job_level == 2
    assert r.params.audio_config.channels == 1


def test_json_null_is_absent():
    r = parse(build((("QueueId",), None), (OUT + ("AuObject",), None), (VS + ("AudioMode",), "IsBackground")), "json")
    assert r.queue_id is None and r.output.au_object is None


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_round_trip_via_to_wire(fmt):
    r = parse(build((("CallBack",), "http://cb.example.com/x"), (("Operation", "UserData"), "u1"),
                    (("Operation", "JobLevel"), "1"), (("QueueId",), "p" + "a" * 32)), fmt)
    assert parse(r.to_wire(), fmt) == r


def test_explicit_fmt_mismatch():
    with pytest.raises(CIError) as ei:
        parse_job_request(to_xml(BASE), "json")
    assert ei.value.code == "InvalidContent"
    with pytest.raises(CIError) as ei:
        parse_job_request(to_json(BASE), "xml")
    assert ei.value.code == "InvalidContent"


def test_unknown_nodes_are_ignored():
    r = parse(build((("QueueType",), "Speeching"), (("CallBackKafkaConfig",), {"Region": "x"}),
                    (("Input", "Url"), "http://x"), (AC + ("Profile",), "aac_low")))
    assert r == parse(BASE)


def test_userdata_kept_verbatim_other_text_stripped():
    r = parse(build((("Operation", "UserData"), "  a b  "), (OUT + ("Bucket",), "  test-1234567890\n")))
    assert r.operation.user_data == "  a b  "
    assert r.output.bucket == "test-1234567890"


# ------------------------------------------------------------------------------------------
# Validation: every rule, XML and JSON alike
# ------------------------------------------------------------------------------------------

ERRORS = [
    # id, changes, code, node named in message
    ("tag-missing", [(("Tag",), DEL)], "Tag"),
    ("tag-wrong", [(("Tag",), "Transcode")], "Tag"),
    ("tag-case", [(("Tag",), "voiceseparate")], "Tag"),
    ("input-missing", [(("Input",), DEL)], "Input.Object"),
    ("input-object-missing", [(("Input", "Object"), DEL), (("Input", "Url"), "http://x/y.mp3")], "Input.Object"),
    ("input-object-empty", [(("Input", "Object"), "")], "Input.Object"),
    ("input-leading-slash", [(("Input", "Object"), "/input/demo.mp3")], "Input.Object"),
    ("input-dotdot", [(("Input", "Object"), "input/../../etc/passwd")], "Input.Object"),
    ("input-dotdot-backslash", [(("Input", "Object"), "input\\..\\x")], "Input.Object"),
    ("input-control-char", [(("Input", "Object"), "in\tput.mp3")], "Input.Object"),
    ("input-too-long", [(("Input", "Object"), "a" * 851)], "Input.Object"),
    ("operation-missing", [(("Operation",), DEL)], "Operation"),
    ("output-missing", [(OUT, DEL)], "Operation.Output"),
    ("region-missing", [(OUT + ("Region",), DEL)], "Operation.Output.Region"),
    ("region-bad", [(OUT + ("Region",), "AP Chongqing")], "Operation.Output.Region"),
    ("bucket-missing", [(OUT + ("Bucket",), DEL)], "Operation.Output.Bucket"),
    ("bucket-no-appid", [(OUT + ("Bucket",), "test")], "Operation.Output.Bucket"),
    ("bucket-upper", [(OUT + ("Bucket",), "Test-1234567890")], "Operation.Output.Bucket"),
    ("bucket-appid-letters", [(OUT + ("Bucket",), "test-12345a")], "Operation.Output.Bucket"),
    ("bucket-underscore", [(OUT + ("Bucket",), "te_st-1234567890")], "Operation.Output.Bucket"),
    ("bucket-too-long", [(OUT + ("Bucket",), "a" * 45 + "-1234567890")], "Operation.Output.Bucket"),
    ("both-objects-empty", [(OUT + ("Object",), DEL), (OUT + ("AuObject",), "")], "Operation.Output.Object"),
    ("only-bass-musicmode", [(VS + ("AudioMode",), "MusicMode"), (OUT + ("Object",), DEL),
                             (OUT + ("AuObject",), DEL), (OUT + ("BassObject",), "o/b.mp3")], "Operation.Output.Object"),
    ("object-slash", [(OUT + ("Object",), "/out/b.mp3")], "Operation.Output.Object"),
    ("auobject-dotdot", [(OUT + ("AuObject",), "../v.mp3")], "Operation.Output.AuObject"),
    ("bassobject-dotdot", [(OUT + ("BassObject",), "a/../../b")], "Operation.Output.BassObject"),
    ("same-output-key", [(OUT + ("Object",), "out/x.${ext}"), (OUT + ("AuObject",), "out/x.${ext}")],
     "Operation.Output.Object"),
    ("neither-template-nor-inline", [(VS, DEL)], "Operation.TemplateId"),
    ("template-id-bad", [(("Operation", "TemplateId"), "t 1")], "Operation.TemplateId"),
    ("mode-missing", [(VS + ("AudioMode",), DEL)], "Operation.VoiceSeparate.AudioMode"),
    ("mode-unknown", [(VS + ("AudioMode",), "Karaoke")], "Operation.VoiceSeparate.AudioMode"),
    ("isaudio-needs-auobject", [(VS + ("AudioMode",), "IsAudio"), (OUT + ("AuObject",), DEL)],
     "Operation.Output.AuObject"),
    ("isbackground-needs-object", [(VS + ("AudioMode",), "IsBackground"), (OUT + ("Object",), DEL)],
     "Operation.Output.Object"),
    ("both-needs-object", [(OUT + ("Object",), DEL)], "Operation.Output.Object"),
    ("both-needs-auobject", [(OUT + ("AuObject",), DEL)], "Operation.Output.AuObject"),
    ("codec-unknown", [(AC + ("Codec",), "ogg")], "Operation.VoiceSeparate.AudioConfig.Codec"),
    ("samplerate-aac-8000", [(AC + ("Codec",), "aac"), (AC + ("Samplerate",), "8000")], "AudioConfig.Samplerate"),
    ("samplerate-default-aac-8000", [(AC + ("Codec",), DEL), (AC + ("Samplerate",), "8000"),
                                     (AC + ("Channels",), DEL)], "AudioConfig.Samplerate"),
    ("samplerate-flac-8000", [(AC + ("Codec",), "flac"), (AC + ("Samplerate",), "8000")], "AudioConfig.Samplerate"),
    ("samplerate-mp3-8000", [(AC + ("Samplerate",), "8000")], "AudioConfig.Samplerate"),
    ("samplerate-mp3-96000", [(AC + ("Samplerate",), "96000")], "AudioConfig.Samplerate"),
    ("samplerate-amr-44100", [(AC + ("Codec",), "amr"), (AC + ("Samplerate",), "44100"),
                              (AC + ("Channels",), "1")], "AudioConfig.Samplerate"),
    ("samplerate-unlisted", [(AC + ("Samplerate",), "12345")], "AudioConfig.Samplerate"),
    ("samplerate-abc", [(AC + ("Samplerate",), "abc")], "AudioConfig.Samplerate"),
    ("samplerate-float", [(AC + ("Samplerate",), "44100.0")], "AudioConfig.Samplerate"),
    ("samplerate-negative", [(AC + ("Samplerate",), "-44100")], "AudioConfig.Samplerate"),
    ("bitrate-low", [(AC + ("Bitrate",), "7")], "AudioConfig.Bitrate"),
    ("bitrate-high", [(AC + ("Bitrate",), "1001")], "AudioConfig.Bitrate"),
    ("bitrate-float", [(AC + ("Bitrate",), "12.5")], "AudioConfig.Bitrate"),
    ("bitrate-abc", [(AC + ("Bitrate",), "fast")], "AudioConfig.Bitrate"),
    ("bitrate-huge", [(AC + ("Bitrate",), "9" * 40)], "AudioConfig.Bitrate"),
    ("channels-mp3-4", [(AC + ("Channels",), "4")], "AudioConfig.Channels"),
    ("channels-amr-2", [(AC + ("Codec",), "amr"), (AC + ("Samplerate",), DEL), (AC + ("Channels",), "2")],
     "AudioConfig.Channels"),
    ("channels-aac-3", [(AC + ("Codec",), "aac"), (AC + ("Channels",), "3")], "AudioConfig.Channels"),
    ("channels-abc", [(AC + ("Channels",), "two")], "AudioConfig.Channels"),
    ("musicmode-flac", [(VS + ("AudioMode",), "MusicMode"), (AC + ("Codec",), "flac")], "AudioConfig.Codec"),
    ("musicmode-amr", [(VS + ("AudioMode",), "MusicMode"), (AC + ("Codec",), "AMR")], "AudioConfig.Codec"),
    ("musicmode-samplerate-type", [(VS + ("AudioMode",), "MusicMode"), (AC + ("Samplerate",), "abc")],
     "AudioConfig.Samplerate"),
    ("model-bad", [(VS + ("Model",), "../evil")], "Operation.VoiceSeparate.Model"),
    ("userdata-non-ascii", [(("Operation", "UserData"), "人声")], "Operation.UserData"),
    ("userdata-control", [(("Operation", "UserData"), "a\tb")], "Operation.UserData"),
    ("userdata-too-long", [(("Operation", "UserData"), "x" * 1025)], "Operation.UserData"),
    ("joblevel-3", [(("Operation", "JobLevel"), "3")], "Operation.JobLevel"),
    ("joblevel-abc", [(("Operation", "JobLevel"), "high")], "Operation.JobLevel"),
    ("queueid-bad", [(("QueueId",), "p/../x")], "QueueId"),
    ("callbackformat", [(("CallBackFormat",), "YAML")], "CallBackFormat"),
    ("callbacktype", [(("CallBackType",), "Kafka")], "CallBackType"),
    ("callback-url", [(("CallBack",), "ftp://example.com/x")], "CallBack"),
    ("callback-url-nohost", [(("CallBack",), "http://")], "CallBack"),
    ("tdmq-no-config", [(("CallBackType",), "TDMQ")], "CallBackMqConfig"),
    ("tdmq-region", [(("CallBackType",), "TDMQ"),
                     (("CallBackMqConfig",), {"MqRegion": "xx", "MqMode": "Queue", "MqName": "t"})],
     "CallBackMqConfig.MqRegion"),
    ("tdmq-region-missing", [(("CallBackType",), "TDMQ"), (("CallBackMqConfig",), {"MqName": "t"})],
     "CallBackMqConfig.MqRegion"),
    ("tdmq-mode", [(("CallBackType",), "TDMQ"),
                   (("CallBackMqConfig",), {"MqRegion": "bj", "MqMode": "Fanout", "MqName": "t"})],
     "CallBackMqConfig.MqMode"),
    ("tdmq-name", [(("CallBackType",), "TDMQ"), (("CallBackMqConfig",), {"MqRegion": "bj"})],
     "CallBackMqConfig.MqName"),
    ("container-as-text", [(OUT, "output")], "Operation.Output"),
    ("leaf-as-container", [(("Tag",), {"X": "1"})], "Tag"),
    ("repeated-leaf", [(("Tag",), ["VoiceSeparate", "VoiceSeparate"])], "Tag"),
    ("repeated-container", [(("Input",), [{"Object": "a"}, {"Object": "b"}])], "Input"),
]


@pytest.mark.parametrize("fmt", ["xml", "json"])
@pytest.mark.parametrize("changes,node", [pytest.param(c, n, id=i) for i, c, n in ERRORS])
def test_validation_errors(changes, node, fmt):
    err = error_of(build(*changes), fmt)
    assert err.code == "InvalidArgument", err
    assert err.status == 400
    assert node in err.message, err.message
    assert err.resource and node.split(".")[-1] in err.resource


def test_error_messages_name_allowed_values():
    assert "aac, mp3, flac, amr, wav" in error_of(build((AC + ("Codec",), "ogg"))).message
    assert "IsAudio, IsBackground, AudioAndBackground, MusicMode" in error_of(
        build((VS + ("AudioMode",), "X"))).message
    assert "11025, 22050, 32000, 44100, 48000" in error_of(build((AC + ("Samplerate",), "8000"))).message
    assert "[8, 1000]" in error_of(build((AC + ("Bitrate",), "2000"))).message
    assert "mp3, wav, aac" in error_of(build((VS + ("AudioMode",), "MusicMode"), (AC + ("Codec",), "flac"))).message
    assert "'abc'" in error_of(build((AC + ("Samplerate",), "abc"))).message


def test_json_bool_value_rejected():
    err = error_of(build((AC + ("Samplerate",), True)), "json")
    assert err.code == "InvalidArgument" and "Samplerate" in err.message


def test_repeated_xml_element_raw():
    body = to_xml(BASE).replace(b"<Tag>VoiceSeparate</Tag>", b"<Tag>VoiceSeparate</Tag><Tag>x</Tag>")
    assert error_of(body).resource == "Tag"


# ------------------------------------------------------------------------------------------
# Accepted variants
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["xml", "json"])
@pytest.mark.parametrize("given,stored", [("MP3", "mp3"), ("Mp3", "mp3"), ("AAC", "aac"), ("WAV", "wav"),
                                          ("Flac", "flac")])
def test_codec_case_insensitive(given, stored, fmt):
    r = parse(build((AC + ("Codec",), given), (AC + ("Channels",), "2")), fmt)
    assert r.params.audio_config.codec == stored


def test_enums_case_insensitive_and_canonicalised():
    r = parse(build((VS + ("AudioMode",), "audioandbackground"), (("CallBackFormat",), "json"),
                    (("CallBackType",), "tdmq"),
                    (("CallBackMqConfig",), {"MqRegion": "BJ", "MqMode": "topic", "MqName": "t1"})))
    assert r.params.audio_mode == "AudioAndBackground"
    assert (r.callback_format, r.callback_type) == ("JSON", "TDMQ")
    assert (r.callback_mq_config.mq_region, r.callback_mq_config.mq_mode) == ("bj", "Topic")


def test_tdmq_default_mode_queue_and_callback_no():
    r = parse(build((("CallBackType",), "TDMQ"), (("CallBackMqConfig",), {"MqRegion": "gz", "MqName": "t"})))
    assert r.callback_mq_config.mq_mode == "Queue"
    assert parse(build((("CallBack",), "no"))).callback == "no"
    assert parse(build((("CallBack",), "https://cb.example.com:8443/p?q=1"))).callback.startswith("https://")


def test_musicmode_ignores_samplerate_bitrate_channels():
    r = parse(build((VS + ("AudioMode",), "MusicMode"), (AC + ("Samplerate",), "8000"),
                    (AC + ("Bitrate",), "5000"), (AC + ("Channels",), "7")))
    assert r.params.audio_mode == "MusicMode"
    eff = effective_audio_config(r.params)
    assert eff == AudioConfig(codec="mp3", samplerate=44100)


@pytest.mark.parametrize("codec", ["mp3", "wav", "aac"])
def test_musicmode_codecs(codec):
    assert parse(build((VS + ("AudioMode",), "MusicMode"), (AC + ("Codec",), codec))).params.audio_mode == "MusicMode"


def test_amr_defaults_to_8000_mono():
    r = parse(build((AC, {"Codec": "amr"})))
    assert effective_audio_config(r.params) == AudioConfig(codec="amr", samplerate=8000, channels=1)
    r = parse(build((AC, {"Codec": "amr", "Samplerate": "8000", "Bitrate": "12", "Channels": "1"})))
    assert r.params.audio_config.samplerate == 8000


def test_defaults_when_audio_config_absent():
    r = parse(build((AC, DEL)))
    assert r.params.audio_config is None
    assert effective_audio_config(r.params) == AudioConfig(codec="aac", samplerate=44100)
    assert resolve_outputs(r)["vocals"] == "output/vocal.m4a"


def test_wav_allows_96000_and_8000():
    for sr in ("8000", "96000"):
        assert parse(build((AC + ("Codec",), "wav"), (AC + ("Samplerate",), sr))).params.audio_config.samplerate == int(sr)


@pytest.mark.parametrize("codec,sr,ch,br", [("aac", 96000, 8, 1000), ("mp3", 48000, 1, 8), ("flac", 11025, 6, 500),
                                             ("amr", 8000, 1, 8), ("wav", 22050, 5, 64)])
def test_valid_matrix_corners(codec, sr, ch, br):
    r = parse(build((AC, {"Codec": codec, "Samplerate": str(sr), "Channels": str(ch), "Bitrate": str(br)})))
    assert r.params.audio_config == AudioConfig(codec=codec, samplerate=sr, channels=ch, bitrate=br)


def test_extra_output_nodes_ignored_by_mode():
    r = parse(build((VS + ("AudioMode",), "IsAudio"), (OUT + ("BassObject",), "o/bass.${ext}")))
    assert resolve_outputs(r) == {"vocals": "output/vocal.mp3"}
    # same key in Object and AuObject is fine when the mode writes only one of them
    r = parse(build((VS + ("AudioMode",), "IsAudio"), (OUT + ("Object",), "output/vocal.${ext}")))
    assert list(resolve_outputs(r)) == ["vocals"]


def test_bucket_and_key_shapes_accepted():
    r = parse(build((OUT + ("Bucket",), "a-1"), (OUT + ("Object",), "dir/名字 with space.${ext}"),
                    (("Input", "Object"), "a..b/c.mp3")))
    assert r.output.bucket == "a-1" and r.input_object == "a..b/c.mp3"


def test_model_extension_node():
    r = parse(build((VS + ("Model",), "htdemucs_ft")))
    assert r.params.model == "htdemucs_ft"
    assert r.to_wire()["Operation"]["VoiceSeparate"]["Model"] == "htdemucs_ft"


def test_user_data_limits_accepted():
    assert parse(build((("Operation", "UserData"), "~" * 1024))).operation.user_data == "~" * 1024


# ------------------------------------------------------------------------------------------
# Output roles and ${ext}
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec,ext", [("aac", "m4a"), ("mp3", "mp3"), ("flac", "flac"), ("amr", "amr"),
                                       ("wav", "wav"), ("AAC", "m4a")])
def test_ext_substitution(codec, ext):
    r = parse(build((AC, {"Codec": codec})))
    assert resolve_outputs(r) == {"vocals": f"output/vocal.{ext}", "background": f"output/background.{ext}"}
    assert resolve_outputs(r.output, "IsAudio", codec) == {"vocals": f"output/vocal.{ext}"}


def test_ext_substituted_everywhere_and_literal_names_kept():
    r = parse(build((OUT + ("Object",), "${ext}/b.${ext}"), (OUT + ("AuObject",), "fixed/vocal.wav")))
    assert resolve_outputs(r) == {"vocals": "fixed/vocal.wav", "background": "mp3/b.mp3"}


FOUR = ((OUT + ("BassObject",), "o/bass.${ext}"), (OUT + ("DrumObject",), "o/drum.${ext}"))


@pytest.mark.parametrize("mode,roles", [
    ("IsAudio", ["vocals"]),
    ("IsBackground", ["background"]),
    ("AudioAndBackground", ["vocals", "background"]),
    ("MusicMode", ["vocals", "background", "bass", "drums"]),
])
def test_role_mapping_per_mode(mode, roles):
    r = parse(build((VS + ("AudioMode",), mode), *FOUR))
    out = resolve_outputs(r)
    assert list(out) == roles
    nodes = {"vocals": "output/vocal.mp3", "background": "output/background.mp3",
             "bass": "o/bass.mp3", "drums": "o/drum.mp3"}
    assert out == {k: nodes[k] for k in roles}


def test_musicmode_only_named_roles():
    r = parse(build((VS + ("AudioMode",), "MusicMode"), (OUT + ("Object",), DEL), (FOUR[1])))
    assert resolve_outputs(r) == {"vocals": "output/vocal.mp3", "drums": "o/drum.mp3"}


def test_resolve_outputs_bad_mode():
    with pytest.raises(CIError):
        resolve_outputs(parse(BASE).output, "Karaoke", "mp3")


# ------------------------------------------------------------------------------------------
# Templates
# ------------------------------------------------------------------------------------------

def test_template_overrides_inline_params():
    r = parse(build((("Operation", "TemplateId"), "t" + "1" * 33), (VS + ("Model",), "htdemucs"),
                    (AC + ("Codec",), "ogg")))  # inline params are ignored (only type-checked)
    tpl = TemplateRequest(name="n", audio_mode="IsAudio", audio_config=AudioConfig(codec="wav", samplerate=48000))
    m = merge_template(r, tpl)
    assert m.params.audio_mode == "IsAudio" and m.params.audio_config.codec == "wav"
    assert m.params.model == "htdemucs"  # our extension node survives
    assert m.operation.template_id == r.operation.template_id
    assert resolve_outputs(m) == {"vocals": "output/vocal.wav"}
    assert r.params.audio_config.codec == "ogg"  # original untouched


def test_template_only_request_then_merge_checks_outputs():
    r = parse(build((VS, DEL), (("Operation", "TemplateId"), "t" + "1" * 33), (OUT + ("AuObject",), DEL)))
    assert merge_template(r, VoiceSeparateParams(audio_mode="IsBackground")).params.audio_mode == "IsBackground"
    with pytest.raises(CIError) as ei:
        merge_template(r, VoiceSeparateParams(audio_mode="IsAudio"))
    assert "Operation.Output.AuObject" in ei.value.message


def test_template_only_request_still_checks_general_output_rules():
    err = error_of(build((VS, DEL), (("Operation", "TemplateId"), "t1"), (OUT + ("Bucket",), "x")))
    assert "Operation.Output.Bucket" in err.message


TPL = {"Tag": "VoiceSeparate", "Name": "my_tpl-1*", "AudioMode": "IsAudio",
       "AudioConfig": {"Codec": "aac", "Samplerate": "44100", "Bitrate": "128", "Channels": "4"}}


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_template_request_ok(fmt):
    t, got = parse_template_request(ENCODERS[fmt](TPL))
    assert got == fmt and t.name == "my_tpl-1*" and t.audio_config.channels == 4
    t, _ = parse_template_request(to_xml({**TPL, "Name": "人声模板", "AudioConfig": ""}))
    assert t.audio_config is None and t.params.audio_mode == "IsAudio"


@pytest.mark.parametrize("change,node", [
    ({"Tag": "Transcode"}, "Tag"),
    ({"Name": None}, "Name"),
    ({"Name": "a b"}, "Name"),
    ({"Name": "x" * 65}, "Name"),
    ({"AudioMode": None}, "AudioMode"),
    ({"AudioMode": "Stereo"}, "AudioMode"),
    ({"AudioConfig": {"Codec": "amr", "Samplerate": "44100"}}, "AudioConfig.Samplerate"),
    ({"AudioMode": "MusicMode", "AudioConfig": {"Codec": "flac"}}, "AudioConfig.Codec"),
])
def test_template_request_errors(change, node):
    d = {k: v for k, v in {**TPL, **change}.items() if v is not None}
    with pytest.raises(CIError) as ei:
        parse_template_request(to_xml(d))
    assert ei.value.code == "InvalidArgument" and node in ei.value.message
    assert ei.value.resource.startswith(node.split(".")[0])


# ------------------------------------------------------------------------------------------
# Hostile and malformed bodies
# ------------------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Request><Tag>VoiceSeparate</Tag><Input><Object>&lol9;</Object></Input></Request>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Request [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Request><Tag>VoiceSeparate</Tag><Input><Object>&xxe;</Object></Input></Request>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Request SYSTEM "http://127.0.0.1:1/evil.dtd">
<Request><Tag>VoiceSeparate</Tag></Request>"""

PARAM_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE Request [<!ENTITY % pe SYSTEM "http://127.0.0.1:1/x"> %pe;]>
<Request/>"""

PLAIN_DTD = b"""<!DOCTYPE Request><Request><Tag>VoiceSeparate</Tag></Request>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, XXE, EXTERNAL_DTD, PARAM_ENTITY, PLAIN_DTD],
                         ids=["billion-laughs", "xxe", "external-dtd", "parameter-entity", "plain-dtd"])
def test_xml_attacks_refused(body):
    t0 = time.monotonic()
    err = error_of(body)
    assert time.monotonic() - t0 < 1.0
    assert err.code == "InvalidContent"
    assert "root:" not in err.message and "lol" not in err.message


def test_oversize_body_refused():
    pad = "x" * (MAX_BODY_BYTES + 1)
    err = error_of(to_xml(build((("Operation", "UserData"), pad))))
    assert err.code == "InvalidContent" and str(MAX_BODY_BYTES) in err.message
    assert error_of(to_json(build((("Operation", "UserData"), pad))), "json").code == "InvalidContent"


def test_deep_nesting_refused():
    deep = "<Request>" + "<a>" * 50000 + "</a>" * 50000 + "</Request>"
    assert error_of(deep).code == "InvalidContent"
    assert error_of("{" + '"a":{' * 100000 + "}" * 100001).code == "InvalidContent"
    assert error_of("{" + '"a":[' * 30 + "]" * 30 + "}").code == "InvalidContent"


@pytest.mark.parametrize("body", [b"", "", b"   \n\t", None, b"\xef\xbb\xbf"], ids=["bytes", "str", "blank", "none", "bom"])
def test_empty_body(body):
    err = error_of(body)
    assert err.code == "MissingContent"


@pytest.mark.parametrize("body", [b"<Request>", b"not xml at all", b"<Request><Tag>x</Request>",
                                  b"{", b'{"Request": {"Tag": "VoiceSeparate",}}', b'{"a": NaN}',
                                  b"[1, 2]", b"\xff\xfe<\x00R\x00", b'{"Tag": "\xff"}', b"<Request>\x01</Request>",
                                  b'{"Tag": "VoiceSeparate", "Input": {"Object": "\\ud800"}}'],
                         ids=["unclosed", "text", "mismatch", "json-open", "json-trailing-comma", "json-nan",
                              "json-array", "bad-bytes", "json-bad-utf8", "xml-control-char", "json-lone-surrogate"])
def test_malformed_body(body):
    assert error_of(body).code == "InvalidContent"


def test_wrong_root():
    err = error_of(to_xml(BASE, root="Response"))
    assert err.code == "InvalidArgument" and "<Request>" in err.message


def test_json_top_level_must_be_object():
    with pytest.raises(CIError) as ei:
        parse_job_request(b"[1]", "json")
    assert ei.value.code == "InvalidContent"


def test_validate_job_request_python_api():
    """Requests built in Python go through the same rules."""
    r = parse(BASE)
    assert validate_job_request(r) is r
    bad = r.model_copy(update={"operation": r.operation.model_copy(update={"job_level": 7})})
    with pytest.raises(CIError) as ei:
        validate_job_request(bad)
    assert "Operation.JobLevel" in ei.value.message


# ------------------------------------------------------------------------------------------
# ids and time
# ------------------------------------------------------------------------------------------

def test_ids_shapes():
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(JOB_ID_RE.match(i) for i in ids)
    assert re.fullmatch(r"j[0-9a-f]{32}", new_job_id())
    assert re.fullmatch(r"p[0-9a-f]{32}", new_queue_id()) and QUEUE_ID_RE.match(new_queue_id())
    assert re.fullmatch(r"t[0-9a-f]{33}", new_template_id()) and TEMPLATE_ID_RE.match(new_template_id())
    a, b = new_request_id(), new_request_id()
    assert a != b and re.fullmatch(r"[A-Za-z0-9_-]+", a)


def test_format_time():
    utc = datetime(2022, 7, 1, 2, 12, 26, tzinfo=timezone.utc)
    assert format_time(utc) == "2022-07-01T10:12:26+0800"
    assert format_time(utc.replace(tzinfo=None)) == "2022-07-01T10:12:26+0800"  # naive = UTC
    ny = utc.astimezone(timezone(timedelta(hours=-5)))
    assert format_time(ny) == "2022-07-01T10:12:26+0800"
    assert format_time(None) == ""
    assert TIME_RE.match(format_time(datetime.now(timezone.utc)))
    assert format_time(datetime(2022, 12, 31, 20, 0, 0, tzinfo=timezone.utc)) == "2023-01-01T04:00:00+0800"


@pytest.mark.parametrize("s", ["2022-07-01T10:12:26+0800", "2022-07-01T10:12:26+08:00", "2022-07-01T02:12:26Z",
                               "2022-07-01T10:12:26", "2022-07-01T10:12:26 0800", "2022-07-01T03:12:26+0100",
                               "2022-06-30T21:12:26-0500"])
def test_parse_time(s):
    assert parse_time(s) == datetime(2022, 7, 1, 2, 12, 26, tzinfo=timezone.utc)
    assert format_time(parse_time(s)) == "2022-07-01T10:12:26+0800"


@pytest.mark.parametrize("s", ["", "yesterday", "2022-13-01T00:00:00+0800", "2022-07-01", "2022-07-01T25:00:00+0800",
                               "2022-07-01T10:12:26+9999"])
def test_parse_time_errors(s):
    with pytest.raises(CIError) as ei:
        parse_time(s, field="startCreationTime")
    assert ei.value.code == "InvalidArgument" and "startCreationTime" in ei.value.message


def test_long_user_values_are_cut_in_messages():
    err = error_of(build((OUT + ("Bucket",), "B" * 100_000)))
    assert "Operation.Output.Bucket" in err.message and len(err.message) < 400


def test_persistence_round_trips():
    """The job store keeps model_dump_json(by_alias=True) and params.to_wire(); both must load back."""
    r = parse(build((("CallBackType",), "TDMQ"), (("CallBackMqConfig",), {"MqRegion": "sh", "MqName": "q"}),
                    (VS + ("Model",), "htdemucs"), (("Operation", "UserData"), "u")))
    assert JobRequest.model_validate_json(r.model_dump_json(by_alias=True)) == r
    assert JobRequest.model_validate_json(r.model_dump_json()) == r
    assert VoiceSeparateParams.model_validate(r.params.to_wire()) == r.params
    t, _ = parse_template_request(to_xml({"Tag": "VoiceSeparate", "Name": "n", "AudioMode": "IsAudio",
                                          "AudioConfig": {"Codec": "amr"}}))
    assert VoiceSeparateParams.model_validate(t.params.to_wire()) == t.params
