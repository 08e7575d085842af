"""Measurement helpers shared by the benchmark sections (no third-party imports beyond numpy).

Every measured thing runs in its own child process, started by :func:`measure`:

* **wall** -- ``time.perf_counter()`` around the whole process (start, imports, model
  load, work, exit): what a user waits for;
* **peak RSS** -- ``ru_maxrss`` of ``os.wait4(pid)`` for *that* child: the high-water mark
  of its largest process (the Python process; a child's own waited-for children such as
  ffmpeg count as ``max``, not as a sum).  It is what ``/usr/bin/time -v`` reports as
  "Maximum resident set size", the method of the reference figures;
* **tree peak RSS** -- in addition, a sampler reads ``VmRSS`` of every process of the
  child's process group from ``/proc`` every 0.2 s and keeps the largest *sum* (the
  Python process plus its ffmpeg decoders/encoders): an upper-bound view that the
  per-process figure cannot give.  It is sampled, so short spikes can be missed;
* **user / sys CPU seconds** from the same rusage.

A child prints one line ``BENCH_JSON {...}`` with its own in-process timings; it is
parsed into ``result``.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
WORK = BENCH / "_work"                           # git-ignored: inputs, outputs, venvs
DATA = ROOT.parent / "shared" / "data"            # never copied into the repo
SR = 44100
THREADS = 2
MARK = "BENCH_JSON "


def bench_env(extra: dict | None = None) -> dict:
    """The environment of every child: 2 threads for every math library, no GPU."""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env[k] = str(THREADS)
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------- process tree RSS
def _pgid_rss_kb(pgid: int) -> int:
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as fh:
                stat = fh.read()
            # fields after the ")" of comm: state ppid pgrp ...
            rest = stat[stat.rindex(b")") + 2:].split()
            if int(rest[2]) != pgid:
                continue
            with open(f"/proc/{d}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total


class _TreeSampler(threading.Thread):
    def __init__(self, pgid: int, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pgid, self.period = pgid, period
        self.peak_kb = 0
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_kb = max(self.peak_kb, _pgid_rss_kb(self.pgid))
            self.stop.wait(self.period)


def measure(cmd: list[str], *, timeout: float, env: dict | None = None, cwd: str | Path | None = None,
            label: str = "") -> dict:
    """Run ``cmd`` in its own process group; return wall, peak RSS, CPU and its BENCH_JSON result."""
    out_f = tempfile.TemporaryFile()
    err_f = tempfile.TemporaryFile()
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL,
                            env=env or bench_env(), cwd=cwd or ROOT, start_new_session=True)
    sampler = _TreeSampler(proc.pid)
    timed_out = False
    status = ru = None
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.perf_counter() - t0 > timeout:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)    # the group this call started, nothing else
            except ProcessLookupError:
                pass
            pid, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:  # anything the child left in its group (it should not): end it
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    out_f.seek(0)
    err_f.seek(0)
    stdout = out_f.read().decode("utf-8", "replace")
    stderr = err_f.read().decode("utf-8", "replace")
    result = None
    for line in stdout.splitlines():
        if line.startswith(MARK):
            result = json.loads(line[len(MARK):])
    rec = {
        "label": label,
        "cmd": " ".join(str(c) for c in cmd),
        "rc": proc.returncode,
        "timed_out": timed_out,
        "wall_s": round(wall, 3),
        "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
        "tree_peak_rss_mib": round(sampler.peak_kb / 1024, 1),
        "user_s": round(ru.ru_utime, 2),
        "sys_s": round(ru.ru_stime, 2),
        "loadavg_1m_before": round(load0, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "result": result,
    }
    if proc.returncode != 0 or timed_out:
        rec["stderr_tail"] = _tail(stderr, 3000)
        rec["stdout_tail"] = _tail(stdout, 1000)
    return rec


def _tail(s: str, n: int) -> str:
    # progress bars write thousands of \r updates: keep the last state of each line
    lines = [ln.split("\r")[-1] for ln in s.splitlines()]
    return "\n".join(lines)[-n:]


def emit(result: dict) -> None:
    """For children: print the result line the parent parses."""
    print(MARK + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- machine
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                f = line.split(":", 1)[1].split()
                have = [x for x in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if x in f]
                flags = " ".join(have + (["no AMX"] if "amx_tile" not in f else []))
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "host": platform.node(),
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": mem_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "threads_per_child": THREADS,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "gpu": None,
    }
    for mod in ("torch", "numpy", "demucs", "museval"):
        try:
            m = __import__(mod)
            info[f"{mod}_version"] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001 - report, never fail
            info[f"{mod}_version"] = None
    try:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    ff = shutil.which("ffmpeg")
    if ff:
        try:
            first = subprocess.run([ff, "-version"], capture_output=True, text=True).stdout.splitlines()[0]
            info["ffmpeg"] = first.split(" Copyright")[0]
        except (OSError, IndexError):
            info["ffmpeg"] = ff
    return info


# --------------------------------------------------------------------------- audio inputs
def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if not exe:
        raise RuntimeError("ffmpeg not found")
    return exe


def looped_input(src: Path, seconds: float, dst: Path, *, codec: str = "pcm_s16le") -> Path:
    """``src`` looped to ``seconds`` (cached in ``_work``): WAV (``pcm_s16le``) or mp3 (frames copied)."""
    if dst.is_file() and dst.stat().st_size > 0:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".part" + dst.suffix)
    cmd = [ffmpeg(), "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(src), "-t", f"{seconds}",
           "-map", "0:a:0"]
    cmd += ["-c:a", "copy"] if codec == "copy" else ["-c:a", codec, "-ar", str(SR), "-ac", "2"]
    subprocess.run(cmd + [str(tmp)], check=True)
    tmp.replace(dst)
    return dst


def decode_f32(path: Path, seconds: float | None = None) -> np.ndarray:
    cmd = [ffmpeg(), "-nostdin", "-v", "error", "-i", str(path)]
    if seconds is not None:
        cmd += ["-t", str(seconds)]
    cmd += ["-map", "0:a:0", "-f", "f32le", "-ac", "2", "-ar", str(SR), "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.float32).reshape(-1, 2).copy()


def global_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    n = min(len(reference), len(estimate))
    ref = reference[:n].astype(np.float64)
    err = ref - estimate[:n].astype(np.float64)
    num, den = float(np.sum(ref ** 2)), float(np.sum(err ** 2))
    if den == 0.0:
        return float("inf")
    return float(10 * np.log10(max(num, 1e-300) / den))


def ensure_bench_model(name: str = "bench_htdemucs", work: Path = WORK) -> Path:
    """Bench model ``name`` (a published Demucs architecture with random weights, see
    scripts/make_tiny_demucs.py ``BENCH_MODELS``) as a demucs repo under ``work``, written on
    first use.  Returns the repo folder."""
    repo = work / "models" / "demucs"
    if not (repo / f"{name}.yaml").is_file():
        import importlib.util
        spec = importlib.util.spec_from_file_location("make_tiny_demucs", ROOT / "scripts" / "make_tiny_demucs.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.make_bench_model(repo, name)
    return repo
