"""Batch throughput: audio hours separated per wall-clock hour, for 1 vs 2 local workers and on a
two-node Ray cluster on this machine (when Ray is installed).

    .venv/bin/python benchmarks/batch_throughput.py [--clips 8] [--seconds 30] [--no-ray] [--json PATH]

The inputs are ``--clips`` excerpts of ``--seconds`` s cut (to FLAC, in a temp folder) from the
real songs in ../shared/data/librosa-data.  Each configuration separates all of them into a fresh
OUTPUT with the default model and settings (AudioAndBackground, aac).  ``wall`` includes starting
the workers and loading the model once per worker, as a user sees it; ``per_file_s`` leaves out that
start-up: ``per_worker_realtime_x`` is audio seconds per second of a worker's busy time.
``loadavg_1min_before_after`` is there to spot runs disturbed by other work on the machine (the
figures assume an otherwise idle machine).  Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from separator.batch import BatchOptions, Defaults, run_batch  # noqa: E402
from separator.media import ffmpeg_exe  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "librosa-data"
SONGS = [  # (file, seconds long) — the longer real recordings
    "Karissa_Hobbs_-_Lets_Go_Fishin.hq.ogg",
    "Kevin_MacLeod_-_P_I_Tchaikovsky_Dance_of_the_Sugar_Plum_Fairy.hq.ogg",
    "442789__lena-orsa__happy-music-pistachio-ice-cream-ragtime.hq.ogg",
    "Kevin_MacLeod_-_Vibe_Ace.hq.ogg",
    "147793__setuniman__sweet-waltz-0i-22mi.hq.ogg",
    "pibble.hq.ogg",
    "Hungarian_Dance_number_5_-_Allegro_in_F_sharp_minor_(string_orchestra).hq.ogg",
    "glacier-bay-humpback.hq.ogg",
]


def make_clips(folder: Path, n: int, seconds: float) -> list[Path]:
    out = []
    for i in range(n):
        song = SHARED / SONGS[i % len(SONGS)]
        if not song.is_file():
            sys.exit(f"missing {song}")
        dst = folder / f"set{i % 2}" / f"clip{i:02d}.flac"
        dst.parent.mkdir(parents=True, exist_ok=True)
        offset = 5 + 7 * (i // len(SONGS))
        subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "fatal", "-y", "-ss", str(offset), "-t", str(seconds),
                        "-i", str(song), "-ac", "2", "-ar", "44100", str(dst)], check=True)
        out.append(dst)
    return out


def run(src: Path, name: str, **kw) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    load_before = os.getloadavg()[0]
    try:
        report = run_batch(BatchOptions(str(src), str(out), Defaults(), progress="none", **kw))
        t = report.totals
        rows = [r for r in report.rows if r["status"] == "ok"]
        assert t["ok"] == len(rows) and t["failed"] == 0, report.rows
        busy = sum(r["seconds"] for r in rows)
        return {"workers": t["workers"], "backend": t["backend"], "files": t["ok"],
                "audio_s": t["audio_seconds"], "wall_s": t["wall_seconds"],
                "audio_h_per_h": t["audio_hours_per_hour"],
                "per_file_s": round(busy / max(1, len(rows)), 3),
                "per_worker_realtime_x": round(t["audio_seconds"] / busy, 2) if busy else None,
                # other processes competing for the CPU make these figures lower: check the load
                "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cluster_run(src: Path) -> dict:
    """Start a head + a second node (1 CPU each) with ``ray start --block``, run, stop them."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    temp = Path(tempfile.mkdtemp(prefix="sepray-", dir="/tmp"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    procs = []

    def nodes() -> int:
        p = subprocess.run([ray_bin, "status", f"--address={address}"], capture_output=True, text=True, env=env)
        active = p.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return len(re.findall(r"node_[0-9a-f]+", active)) if p.returncode == 0 else 0

    try:
        procs.append(subprocess.Popen([ray_bin, "start", "--head", f"--port={port}",
                                       f"--ray-client-server-port={_free_port()}", "--include-dashboard=false",
                                       f"--temp-dir={temp / 'ray'}", *common], env=env, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 90
        while nodes() < 1 and time.monotonic() < deadline:
            time.sleep(1)
        procs.append(subprocess.Popen([ray_bin, "start", f"--address={address}", *common], env=env,
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while nodes() < 2 and time.monotonic() < deadline:
            time.sleep(1)
        if nodes() < 2:
            return {"error": "the 2-node cluster did not start"}
        result = run(src, "ray", ray_address=address)
        result["nodes"] = 2
        return result
    finally:
        for p in reversed(procs):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                    p.wait(timeout=5)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(temp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-in-"))
    try:
        make_clips(tmp, args.clips, args.seconds)
        import torch

        figures = {"benchmark": "batch_throughput", "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                   f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}", "torch": torch.__version__,
                   "model": "spleeter-2stems", "inputs": f"{args.clips} x {args.seconds:g} s FLAC excerpts of "
                   "shared/data/librosa-data songs", "runs": {}}
        figures["runs"]["local_1_worker"] = run(tmp, "w1", workers=1)
        figures["runs"]["local_2_workers"] = run(tmp, "w2", workers=2)
        if not args.no_ray:
            try:
                import ray  # noqa: F401
            except ImportError:
                figures["runs"]["ray_2_nodes"] = {"skipped": "ray is not installed (pip install 'separator[ray]')"}
            else:
                figures["runs"]["ray_2_nodes"] = ray_cluster_run(tmp)
        text = json.dumps(figures, indent=2)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
