"""`separator batch --ray-address` on a real two-node Ray cluster on this machine.

A head and a second node are started with ``ray start --block`` (each in its own process
group, so the test can kill exactly its own processes; ``ray stop`` would stop every Ray
process on the machine).  A batch is spread over both; once both nodes have finished inputs,
the second node is killed: its input in flight is retried on the head, and every output is
present exactly once, none partial.  Skipped when Ray is not installed (``separator[ray]``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_nodes import stop, two_node_cluster

pytest.importorskip("ray")

from conftest import run_ffmpeg  # noqa: E402
from separator.batch.state import STATE_NAME  # noqa: E402
from separator.media import probe  # noqa: E402
from separator.storage.local import TMP_PREFIX  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
N_INPUTS = 12


@pytest.fixture
def cluster():
    with two_node_cluster() as c:
        yield c


@pytest.fixture
def inputs(data_file, tmp_path) -> Path:
    src = data_file("ogg")
    folder = tmp_path / "in"
    folder.mkdir()
    run_ffmpeg("-ss", "2", "-t", "3", "-i", str(src), "-ac", "2", str(folder / "clip0.wav"))
    for i in range(1, N_INPUTS):
        sub = folder / f"set{i % 3}"
        sub.mkdir(exist_ok=True)
        shutil.copy(folder / "clip0.wav", sub / f"clip{i}.wav")
    return folder


def _records(out: Path) -> list[dict]:
    recs = []
    try:
        lines = (out / STATE_NAME).read_text().splitlines()
    except FileNotFoundError:
        return recs
    for line in lines:
        try:
            recs.append(json.loads(line))
        except ValueError:  # being written
            pass
    return recs


def test_two_node_cluster_survives_losing_a_node(cluster, inputs, tmp_path):
    out = tmp_path / "out"
    env = dict(cluster["env"], PYTHONUNBUFFERED="1")
    log = open(tmp_path / "batch.log", "wb")
    batch = subprocess.Popen([sys.executable, "-m", "separator.batch", "-v", str(inputs), str(out),
                              "--ray-address", cluster["address"], "--progress", "log"],
                             cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # wait until both nodes have finished inputs, then kill the second node mid-run
        deadline = time.monotonic() + 120
        while len({r.get("node") for r in _records(out)}) < 2:
            assert batch.poll() is None, (tmp_path / "batch.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the batch did not reach both nodes"
            time.sleep(0.05)
        done_before = len(_records(out))
        assert done_before <= N_INPUTS - 4, "too late to kill a node mid-run"
        stop(cluster["node2"])
        rc = batch.wait(timeout=180)
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "batch.log").read_text()
    assert rc == 0, text[-3000:]

    lines = [json.loads(x) for x in (out / "batch-summary.jsonl").read_text().splitlines()]
    rows, totals = lines[:-1], lines[-1]
    assert (totals["ok"], totals["failed"], totals["backend"]) == (N_INPUTS, 0, "ray")
    assert len({r["node"] for r in rows}) == 2                  # spread over both nodes
    assert any(r["attempts"] >= 2 for r in rows), text[-3000:]  # the lost node's input, retried
    assert "retrying elsewhere" in text

    # every output present exactly once, none partial, no temporaries left
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not [f for f in files if TMP_PREFIX in f]
    media = {f for f in files if f.endswith(".m4a")}
    expected = {f"{p.relative_to(inputs).with_suffix('').as_posix()}/{role}.m4a"
                for p in inputs.rglob("*.wav") for role in ("vocals", "background")}
    assert media == expected
    for f in media:
        assert abs(probe(out / f).duration - 3.0) < 0.3
    recs = _records(out)
    assert sorted(r["input"] for r in recs) == sorted(str(p) for p in inputs.rglob("*.wav"))
