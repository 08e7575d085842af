"""`separator batch` on this machine: folder trees with bad files, resume (state file, kill -9,
Ctrl-C), naming templates, CSV/JSONL manifests (with cloud-format request documents).

Inputs are 3 s clips cut from a real song in tests/data, so every separation is one model segment."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_ffmpeg
from separator.batch import BatchError, BatchOptions, Defaults, build_plan, run_batch
from separator.cli import main as cli_main
from separator.batch.state import STATE_NAME
from separator.media import probe
from separator.storage.local import TMP_PREFIX

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip(data_file, tmp_path_factory) -> Path:
    src = data_file("ogg")
    out = tmp_path_factory.mktemp("clip") / "clip.wav"
    run_ffmpeg("-ss", "2", "-t", "3", "-i", str(src), "-ac", "2", "-ar", "44100", str(out))
    return out


def make(clip: Path, dst: Path) -> Path:
    """``clip`` transcoded to ``dst`` (format from its extension)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    run_ffmpeg("-i", str(clip), str(dst))
    return dst


def read_summary(path: Path) -> tuple[dict[str, dict], dict]:
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[-1].get("totals") is True
    return {r["rel"]: r for r in lines[:-1]}, lines[-1]


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def media_outputs(root: Path) -> set[str]:
    return {f for f in files_under(root) if not f.rsplit("/", 1)[-1].startswith(".")
            and not f.endswith(".jsonl")}


def assert_complete(path: Path, seconds: float = 3.0) -> None:
    info = probe(path)
    assert abs(info.duration - seconds) < 0.3, (path, info.duration)


def opts(source, output, **kw) -> BatchOptions:
    kw.setdefault("workers", 0)          # in this process: fast, and the model stays loaded
    kw.setdefault("progress", "none")
    defaults = kw.pop("defaults", Defaults())
    return BatchOptions(source=str(source), output=str(output), defaults=defaults, **kw)


# ------------------------------------------------------------------------------------------------

def test_folder_tree_with_bad_files_then_resume(clip, tmp_path, cut):
    src, out = tmp_path / "in", tmp_path / "out"
    make(clip, src / "top.wav")
    make(clip, src / "a" / "song.flac")
    make(clip, src / "a" / "b" / "song.mp3")
    cut(src / "a" / "song.flac", src / "a" / "b" / "corrupt.flac", keep=0.3)     # truncated flac
    (src / "a" / "fake.mp3").write_text("this is a text file, not an mp3\n" * 40)
    (src / "a" / "notes.txt").write_text("liner notes\n")
    make(clip, src / ".hidden" / "x.wav")                                     # hidden: left out

    report = run_batch(opts(src, out))
    rows, totals = read_summary(out / "batch-summary.jsonl")
    assert report.exit_status == 1 and totals["exit_status"] == 1
    assert {k: r["status"] for k, r in rows.items()} == {
        "top.wav": "ok", "a/song.flac": "ok", "a/b/song.mp3": "ok",
        "a/b/corrupt.flac": "failed", "a/fake.mp3": "failed", "a/notes.txt": "ignored"}
    assert rows["a/b/corrupt.flac"]["error"]["code"] == "InvalidInput"
    assert rows["a/fake.mp3"]["error"]["code"] == "InvalidInput"
    assert (totals["ok"], totals["failed"], totals["ignored"], totals["inputs"]) == (3, 2, 1, 5)
    assert totals["audio_seconds"] == pytest.approx(9.0, abs=0.3)
    expected = {f"{d}/{r}.m4a" for d in ("top", "a/song", "a/b/song") for r in ("vocals", "background")}
    assert media_outputs(out) == expected
    assert not [f for f in files_under(out) if TMP_PREFIX in f]
    for f in expected:
        assert_complete(out / f)
    assert rows["a/b/song.mp3"]["outputs"]["vocals"] == str(out / "a/b/song/vocals.m4a")

    # second run: the three good inputs are verified and skipped, the bad ones fail again
    before = {f: (out / f).stat().st_mtime_ns for f in expected}
    report = run_batch(opts(src, out))
    rows, totals = read_summary(out / "batch-summary.jsonl")
    assert (totals["ok"], totals["skipped"], totals["failed"]) == (0, 3, 2)
    assert report.exit_status == 1
    assert {f: (out / f).stat().st_mtime_ns for f in expected} == before
    assert len((out / STATE_NAME).read_text().splitlines()) == 3

    # an altered output and a deleted one: only those inputs are separated again
    with open(out / "top/vocals.m4a", "ab") as fh:
        fh.write(b"x")
    (out / "a/song/background.m4a").unlink()
    run_batch(opts(src, out))
    rows, totals = read_summary(out / "batch-summary.jsonl")
    assert {k for k, r in rows.items() if r["status"] == "ok"} == {"top.wav", "a/song.flac"}
    assert rows["a/b/song.mp3"]["status"] == "skipped"
    assert media_outputs(out) == expected
    assert_complete(out / "top/vocals.m4a")


def test_naming_template_and_glob(clip, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make(clip, src / "x" / "take.wav")
    make(clip, src / "x" / "notes.mp3")           # not matched by the glob
    d = Defaults(mode="IsAudio", codec="mp3", template="{model}/{rel_dir}/{name}.{input_ext}-{stem}.{ext}")
    report = run_batch(opts(str(src / "**" / "*.wav"), out, defaults=d))
    assert report.exit_status == 0
    assert media_outputs(out) == {"spleeter-2stems/x/take.wav-vocals.mp3"}
    assert_complete(out / "spleeter-2stems/x/take.wav-vocals.mp3")


def test_naming_template_errors_and_conflicts(clip, tmp_path):
    src = tmp_path / "in"
    make(clip, src / "song.mp3")
    make(clip, src / "song.wav")
    # the default template maps song.mp3 and song.wav to the same outputs: the second is refused
    plan = build_plan(src, tmp_path / "out")
    errors = {it.rel: it.error for it in plan.items}
    assert errors["song.mp3"] is None and errors["song.wav"][0] == "OutputConflict"
    # {input_ext} keeps them apart
    plan = build_plan(src, tmp_path / "out", Defaults(template="{name}-{input_ext}/{stem}.{ext}"))
    assert all(it.error is None for it in plan.items)
    assert sorted(os.path.relpath(p, tmp_path / "out") for it in plan.items for p in it.targets.values()) == [
        "song-mp3/background.m4a", "song-mp3/vocals.m4a", "song-wav/background.m4a", "song-wav/vocals.m4a"]
    for bad in ("{name}.{ext}", "{name}/{stem}.{nope}", "../{name}/{stem}.{ext}", "/abs/{stem}.{ext}"):
        with pytest.raises(BatchError):
            run_batch(opts(src, tmp_path / "o2", defaults=Defaults(template=bad)))
    with pytest.raises(BatchError):
        run_batch(opts(src, tmp_path / "o3", defaults=Defaults(codec="ogg")))
    with pytest.raises(BatchError):
        run_batch(opts(tmp_path / "missing", tmp_path / "o4"))


def test_manifest_csv(clip, tmp_path):
    base = tmp_path / "lib"
    make(clip, base / "in" / "a.wav")
    make(clip, base / "in" / "b.flac")
    (base / "list.csv").write_text(
        "input,output,mode,codec,samplerate\n"
        "in/a.wav,,,,\n"                                          # command-line settings
        "in/b.flac,flacs/{name}_{stem}.{ext},IsBackground,flac,22050\n"
        "in/missing.wav,,,,\n"                                    # no such file
        "in/a.wav,bad/{stem}.{ext},,amr,44100\n")                 # amr at 44100: invalid row
    out = tmp_path / "out"
    report = run_batch(opts(base / "list.csv", out, defaults=Defaults(codec="wav")))
    rows = [json.loads(x) for x in (out / "batch-summary.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows[:-1]] == ["ok", "ok", "failed", "failed"]
    assert rows[2]["error"]["code"] == "InvalidInput"
    assert rows[3]["error"]["code"] == "InvalidArgument"
    assert report.exit_status == 1
    assert media_outputs(out) == {"in/a/vocals.wav", "in/a/background.wav", "flacs/b_background.flac"}
    flac = probe(out / "flacs/b_background.flac")
    assert flac.samplerate == 22050 and flac.codec == "flac"
    # resumed per row
    run_batch(opts(base / "list.csv", out, defaults=Defaults(codec="wav")))
    totals = json.loads((out / "batch-summary.jsonl").read_text().splitlines()[-1])
    assert (totals["ok"], totals["skipped"], totals["failed"]) == (0, 2, 2)


def test_manifest_jsonl_with_request_documents(clip, tmp_path):
    base = tmp_path / "lib"
    make(clip, base / "songs" / "a.mp3")
    make(clip, base / "songs" / "b.wav")
    json_request = {"Request": {
        "Tag": "VoiceSeparate", "Input": {"Object": "songs/a.mp3"},
        "Operation": {"VoiceSeparate": {"AudioMode": "AudioAndBackground", "AudioConfig": {"Codec": "mp3"}},
                      "Output": {"Region": "ap-guangzhou", "Bucket": "music-1250000000",
                                 "Object": "req/a-bg.${ext}", "AuObject": "req/a-voc.${ext}"}}}}
    xml_request = ("<Request><Tag>VoiceSeparate</Tag><Input><Object>songs/b.wav</Object></Input>"
                   "<Operation><VoiceSeparate><AudioMode>IsAudio</AudioMode><AudioConfig><Codec>flac</Codec>"
                   "</AudioConfig></VoiceSeparate><Output><Region>ap-guangzhou</Region>"
                   "<Bucket>music-1250000000</Bucket><AuObject>xml/b.${ext}</AuObject></Output>"
                   "</Operation></Request>")
    (base / "b.xml").write_text(xml_request)
    templated = {"Request": {**json_request["Request"],
                             "Operation": {"TemplateId": "t1234567890", "Output": json_request["Request"]["Operation"]["Output"]}}}
    lines = [
        {"input": "songs/b.wav", "mode": "IsAudio", "codec": "wav", "output": "plain/{name}.{stem}.{ext}"},
        json_request,                                   # a request document as the whole line
        {"request": "b.xml"},                           # a request file next to the manifest
        templated,                                      # TemplateId: not supported in a batch
        {"input": "songs/a.mp3", "colour": "blue"},     # unknown key
    ]
    (base / "jobs.jsonl").write_text("# comment\n" + "\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    report = run_batch(opts(base / "jobs.jsonl", out))
    rows = [json.loads(x) for x in (out / "batch-summary.jsonl").read_text().splitlines()][:-1]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "failed"]
    assert rows[3]["error"]["code"] == "InvalidArgument" and "TemplateId" in rows[3]["error"]["message"]
    assert "colour" in rows[4]["error"]["message"]
    assert report.exit_status == 1
    assert media_outputs(out) == {"plain/b.vocals.wav", "req/a-bg.mp3", "req/a-voc.mp3", "xml/b.flac"}
    assert probe(out / "xml/b.flac").codec == "flac"


def test_ray_address_without_ray_is_a_clear_usage_error(clip, tmp_path, monkeypatch, capsys):
    make(clip, tmp_path / "in" / "a.wav")
    monkeypatch.setitem(sys.modules, "ray", None)       # as if the extra were not installed
    rc = cli_main(["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--ray-address", "auto", "-q"])
    assert rc == 2
    assert "pip install 'separator[ray]'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# interrupted runs: kill -9 and Ctrl-C of the CLI (local worker processes)
# ------------------------------------------------------------------------------------------------

def _start_cli(src: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "separator.batch", str(src), str(out), "--progress", "log",
                             *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)   # its own process group, as a shell job


def _wait_records(out: Path, n: int, proc: subprocess.Popen, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            recs = [json.loads(x) for x in (out / STATE_NAME).read_text().splitlines() if x.endswith("}")]
        except (FileNotFoundError, ValueError):
            recs = []
        if len(recs) >= n:
            return recs
        if proc.poll() is not None:
            pytest.fail(f"batch ended early: {proc.stdout.read().decode(errors='replace')[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no progress in time")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_resume_after_kill_9(clip, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = [f"d{i % 2}/clip{i}.wav" for i in range(6)]
    for n in names:
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        (src / n).write_bytes(clip.read_bytes())
    proc = _start_cli(src, out, "--workers", "2")
    recs = _wait_records(out, 1, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    # the workers die with the driver, so nothing is written after this point
    workers = {int(r["worker"].rsplit(":", 1)[1]) for r in recs}
    deadline = time.monotonic() + 10
    while any(_pid_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_pid_alive(p) for p in workers)
    done_at_kill = []
    for line in (out / STATE_NAME).read_text().splitlines():
        try:
            done_at_kill.append(json.loads(line))
        except ValueError:      # a line the kill cut short does not count (the rerun ignores it)
            pass
    # no partial output: whatever reached its final name is complete
    for f in media_outputs(out):
        assert_complete(out / f)

    proc = _start_cli(src, out, "--workers", "2")
    assert proc.wait(timeout=120) == 0, proc.stdout.read().decode(errors="replace")[-2000:]
    proc.stdout.close()
    rows, totals = read_summary(out / "batch-summary.jsonl")
    skipped = {k for k, r in rows.items() if r["status"] == "skipped"}
    assert skipped == {os.path.relpath(r["input"], src) for r in done_at_kill}
    assert totals["ok"] + totals["skipped"] == 6 and totals["failed"] == 0
    expected = {f"{n[:-4]}/{r}.m4a" for n in names for r in ("vocals", "background")}
    assert media_outputs(out) == expected                       # each output once, no temporaries
    assert not [f for f in files_under(out) if TMP_PREFIX in f]
    for f in expected:
        assert_complete(out / f)
    state = [json.loads(x) for x in (out / STATE_NAME).read_text().splitlines()]
    assert sorted(os.path.relpath(r["input"], src) for r in state) == sorted(names)


def test_interrupt_while_recording_reports_the_input_done(clip, tmp_path, monkeypatch):
    """A Ctrl-C that lands while a finished input's record is being written (after the line is
    in the file: the fsync) reports that input ``ok``, not ``pending``, and the rerun skips it."""
    from separator.batch import state as batch_state

    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        make(clip, src / f"c{i}.flac")
    real = batch_state.BatchState.record

    def record_then_interrupt(self, item, result):
        real(self, item, result)
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_state.BatchState, "record", record_then_interrupt)
    report = run_batch(opts(src, out))
    rows, totals = read_summary(out / "batch-summary.jsonl")
    assert report.exit_status == 130 == totals["exit_status"]
    assert (totals["ok"], totals["pending"]) == (1, 2)
    monkeypatch.undo()
    run_batch(opts(src, out))
    rows, totals = read_summary(out / "batch-summary.jsonl")
    assert (totals["ok"], totals["skipped"], totals["pending"]) == (2, 1, 0)


def test_ctrl_c_stops_cleanly(clip, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    n = 16                                 # enough that some are left when Ctrl-C comes
    for i in range(n):
        make(clip, src / f"c{i:02d}.flac")
    proc = _start_cli(src, out, "--workers", "1")
    _wait_records(out, 1, proc)
    os.killpg(proc.pid, signal.SIGINT)     # Ctrl-C reaches the driver and its workers
    assert proc.wait(timeout=30) == 130
    proc.stdout.close()
    rows, totals = read_summary(out / "batch-summary.jsonl")
    assert totals["pending"] >= 1 and totals["ok"] >= 1 and totals["exit_status"] == 130
    assert totals["ok"] + totals["pending"] == n
    assert not [f for f in files_under(out) if TMP_PREFIX in f]
