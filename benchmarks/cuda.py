#!/usr/bin/env python
"""The CUDA measurements: x-realtime, GPU memory and the quality of each precision, on a GPU.

Not part of ``make bench`` (that one needs no GPU): run it where a CUDA card is, and merge
its JSON into the report with ``python benchmarks/run.py --cuda-json FILE --merge`` (the
figures keep the card's name and the date they were taken)::

    python benchmarks/cuda.py --out cuda.json --data DIR_OF_SONG_NPZ [--sections demucs,oom,spleeter]

Inputs are real audio held in memory (the separation core, decode and encode excluded: the
mp3 encoders, not the GPU, bound an end-to-end run there).  ``--data`` holds songs as
``.npz`` files with ``vocals`` and ``accompaniment`` arrays (frames, 2) float32 at 44.1 kHz,
the mixture being their sum (``scripts``-free: written from ``separator.evaluate.dev_songs``).

Sections (each one's figures are written as soon as they are measured):

* ``env``: torch, CUDA, the card.
* ``demucs``: the default-size HTDemucs (random weights: the compute of ``htdemucs``) on the
  card, ours (fp32 / fp16, batch 1 / 8) against demucs's own ``apply_model`` on the same card
  (what ``demucs.separate`` runs), 60 s and 10 min; SDR between the outputs.
* ``forward``: one batch of 8 HTDemucs windows through demucs's modules and through ours.
* ``parity``: demucs on the CPU and on the card, and ours against each (TF32 off).
* ``oom``: a memory cap makes the batch not fit: the fall-back halves it, then runs a chunk
  on the CPU; outputs are compared with the uncapped run.
* ``spleeter``: the bundled model, fp32 / fp16 / bf16, 60 s and 10 min; the global SDR of
  each precision against the ground truth, per song.
* ``e2e``: decode -> separate -> encode, command against command on the card: our
  ``separator separate`` (ffmpeg: imageio-ffmpeg's static build, no system package) against
  ``python -m demucs.separate`` (it reads and writes WAV itself), htdemucs's architecture, WAV
  in and out, shifts 0 and overlap 0.25 both, float32 both (and ours fp16), short and long
  input, alternating; the SDR between the two tools' stems.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import ensure_bench_model, global_sdr  # noqa: E402

SR = 44100
RESULT: dict = {}
OUT: Path | None = None
DEVICE = "cuda"          # "cpu" only for a dry run of the script itself (--device cpu)


def save() -> None:
    if OUT is not None:
        OUT.write_text(json.dumps(RESULT, indent=1, sort_keys=True))


def log(*a) -> None:
    print(*a, flush=True)


def stems_snr(a: dict, b: dict) -> float:
    """SNR of b against a over all stems together (dB)."""
    num = sum(float(np.sum(a[s].astype(np.float64) ** 2)) for s in a)
    den = sum(float(np.sum((a[s].astype(np.float64) - b[s]) ** 2)) for s in a)
    return float("inf") if den == 0 else float(10 * np.log10(num / den))


def songs(data: Path) -> list[tuple[str, np.ndarray, dict]]:
    out = []
    for f in sorted(data.glob("*.npz")):
        z = np.load(f)
        v, a = z["vocals"].astype(np.float32), z["accompaniment"].astype(np.float32)
        out.append((str(z["name"]), v + a, {"vocals": v, "accompaniment": a}))
    return out


def tiled(mixes: list[np.ndarray], seconds: float) -> np.ndarray:
    """``seconds`` of real music: the songs one after another, repeated."""
    n = int(seconds * SR)
    whole = np.concatenate(mixes)
    reps = -(-n // len(whole))
    return np.ascontiguousarray(np.concatenate([whole] * reps)[:n])


def cuda() -> bool:
    return DEVICE.startswith("cuda")


def timed(fn, *args):
    if cuda():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn(*args)
    if cuda():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def gpu_peak_reset() -> None:
    if cuda():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_mib() -> float:
    return torch.cuda.max_memory_allocated() / 2 ** 20 if cuda() else 0.0


def half() -> str:
    """fp16 on the card; bf16 stands in for it in a CPU dry run."""
    return "fp16" if cuda() else "bf16"


def measure(name: str, fn, audio: np.ndarray, calls: int) -> dict:
    """First call, then ``calls`` warm calls (median): x-realtime and peak GPU memory."""
    secs = len(audio) / SR
    gpu_peak_reset()
    out, first = timed(fn, audio)
    warm = [timed(fn, audio)[1] for _ in range(calls)]
    med = statistics.median(warm) if warm else first
    row = {"seconds": secs, "first_s": first, "warm_s": warm, "median_s": med,
           "xrt": secs / med, "gpu_peak_mib": gpu_peak_mib()}
    log(f"  {name} {secs:.0f}s: first {first:.2f}s, warm median {med:.3f}s = {secs / med:.0f}x realtime, "
        f"peak GPU {row['gpu_peak_mib']:.0f} MiB")
    return row, out


# ------------------------------------------------------------------------------------- sections
def section_env(args) -> None:
    if not cuda():
        RESULT["env"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "card": "none (dry run on CPU)"}
        return
    p = torch.cuda.get_device_properties(0)
    RESULT["env"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "card": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
        "gpu_memory_gib": round(p.total_memory / 2 ** 30, 1), "multiprocessors": p.multi_processor_count,
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    log("env", RESULT["env"])


def _demucs_repo(args) -> Path:
    return ensure_bench_model("bench_htdemucs", Path(args.work))


def _demucs_reference(repo: Path, device: str | None = None):
    """demucs.separate's computation in process: normalise by the mix, apply_model on the card."""
    from demucs.apply import apply_model
    from demucs.pretrained import get_model
    device = device or DEVICE
    model = get_model("bench_htdemucs", repo=repo)
    model.eval()

    def run(audio: np.ndarray) -> dict:
        wav = torch.from_numpy(np.ascontiguousarray(audio.T))
        ref = wav.mean(0)
        wav = (wav - ref.mean()) / (ref.std() + 1e-8)
        with torch.inference_mode():
            out = apply_model(model, wav[None], device=device, shifts=0, split=True, overlap=0.25,
                              progress=False, num_workers=0)[0]
        out = out * (ref.std() + 1e-8) + ref.mean()
        return {s: out[i].numpy().T for i, s in enumerate(model.sources)}
    return run


def section_demucs(args, mixes) -> None:
    from separator.core.demucs import load_demucs
    repo = _demucs_repo(args)
    res = RESULT.setdefault("demucs", {"model": "bench_htdemucs: htdemucs's published architecture (41.98 M "
                                       "parameters), random init, segment 7.8 s, overlap 0.25, shifts 0"})
    a60, a600 = tiled(mixes, args.short), tiled(mixes, args.long)
    ref = _demucs_reference(repo)
    row, ref_out = measure("demucs apply_model fp32", ref, a60, args.calls)
    res[f"reference_{args.short}"] = row
    save()
    outs = {}
    for prec, batch in (("fp32", 1), ("fp32", 8), (half(), 8), (half(), 16)):
        m = load_demucs("bench_htdemucs", DEVICE, model_dir=repo.parent, batch=batch, precision=prec)
        key = f"{prec}_b{batch}"
        row, outs[key] = measure(f"ours {key}", m.separate, a60, args.calls)
        row["sdr_vs_reference_db"] = stems_snr(ref_out, outs[key])
        res[f"ours_{key}_{args.short}"] = row
        log(f"    SDR vs apply_model {row['sdr_vs_reference_db']:.1f} dB")
        save()
        del m
    res[f"{half()}_vs_fp32_sdr_db"] = stems_snr(outs["fp32_b1"], outs[f"{half()}_b8"])
    res["batch8_vs_batch1_sdr_db"] = stems_snr(outs["fp32_b1"], outs["fp32_b8"])
    log(f"  {half()} vs fp32 {res[f'{half()}_vs_fp32_sdr_db']:.1f} dB; batch 8 vs 1 {res['batch8_vs_batch1_sdr_db']:.1f} dB")
    save()
    # long input: the reference once, ours fp32 b8 and fp16 b8 once each (first call = warm: model loaded)
    row, ref_long = measure("demucs apply_model fp32", ref, a600, 0)
    res[f"reference_{args.long}"] = row
    save()
    for prec in ("fp32", half()):
        m = load_demucs("bench_htdemucs", DEVICE, model_dir=repo.parent, batch=8, precision=prec)
        m.separate(a60[: 10 * SR])                                  # warm-up (cuDNN plans)
        row, out = measure(f"ours {prec}_b8", m.separate, a600, 0)
        row["sdr_vs_reference_db"] = stems_snr(ref_long, out)
        res[f"ours_{prec}_b8_{args.long}"] = row
        save()
        del m, out
    del ref_long


def section_forward(args) -> None:
    """One forward pass of 8 HTDemucs windows on the card: demucs's modules, with our CPU
    rewrites, and with the CUDA ones too (what runs): median of 5 after a warm-up."""
    from demucs.pretrained import get_model
    from separator.core.demucs import speed as demucs_speed
    from separator.core.precision import autocast as _autocast
    repo = _demucs_repo(args)
    dev = torch.device(DEVICE)
    x = torch.randn(8 if cuda() else 1, 2, int(7.8 * SR), device=dev) * 0.1     # (1: a CPU dry run)
    res = RESULT.setdefault("forward_b8_ms", {})
    for label, target in (("stock", None), ("cpu_rewrites", "cpu"), ("cuda_rewrites", "cuda")):
        model = get_model("bench_htdemucs", repo=repo).models[0]
        if target is not None:
            demucs_speed.optimize(model, target)
        model = model.to(dev).eval()
        for prec in ("fp32", half()):
            dtype = None if prec == "fp32" else getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[prec])
            with torch.inference_mode(), _autocast(dev, dtype):
                model(x)
                ts = [timed(model, x)[1] for _ in range(5 if cuda() else 1)]
            res[f"{label}_{prec}"] = statistics.median(ts) * 1e3
            log(f"  forward b8 {label} {prec}: {res[f'{label}_{prec}']:.1f} ms")
        save()
        del model


def section_parity(args, mixes) -> None:
    """12 s, HTDemucs-size, TF32 off: demucs on the CPU against demucs on the card, and ours
    against demucs on each (how far a CPU fall-back can be from a GPU run at best)."""
    from separator.core.demucs import load_demucs
    repo = _demucs_repo(args)
    audio = tiled(mixes, 12)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref_cpu = _demucs_reference(repo, "cpu")(audio)
        ref_gpu = _demucs_reference(repo)(audio)
        ours_cpu = load_demucs("bench_htdemucs", "cpu", model_dir=repo.parent, batch=1).separate(audio)
        ours_gpu = load_demucs("bench_htdemucs", DEVICE, model_dir=repo.parent, batch=1).separate(audio)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    res = RESULT["parity"] = {"seconds": 12, "tf32": False,
                              "demucs_cpu_vs_demucs_gpu_db": stems_snr(ref_cpu, ref_gpu),
                              "ours_cpu_vs_demucs_cpu_db": stems_snr(ref_cpu, ours_cpu),
                              "ours_gpu_vs_demucs_gpu_db": stems_snr(ref_gpu, ours_gpu)}
    log(f"  parity: {res}")
    save()


def section_oom(args, mixes) -> None:
    """Cap the card's memory so that a batch of 16 HTDemucs chunks does not fit, then so
    that one chunk does not either."""
    import logging
    from separator.core.demucs import load_demucs

    if not cuda():
        log("  (no memory cap on a CPU: skipped)")
        return
    repo = _demucs_repo(args)
    res = RESULT.setdefault("oom", {})
    audio = tiled(mixes, 30)
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())
    h = Grab(level=logging.INFO)
    logging.getLogger("separator.core.oom").addHandler(h)
    logging.getLogger("separator.core.oom").setLevel(logging.INFO)
    try:
        free = load_demucs("bench_htdemucs", "cuda", model_dir=repo.parent, batch=16)
        gpu_peak_reset()
        base = free.separate(audio)
        need = gpu_peak_mib()
        short = audio[: 12 * SR]
        base_short = free.separate(short)     # the reference for the 12 s run (its own normalisation)
        del free
        total = torch.cuda.get_device_properties(0).total_memory / 2 ** 20
        for label, cap_mib in (("batch_split", need * 0.45), ("cpu_chunk", 400.0)):
            records.clear()
            m = load_demucs("bench_htdemucs", "cuda", model_dir=repo.parent, batch=16)
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap_mib / total))
            try:
                t = time.perf_counter()
                out = m.separate(audio if label == "batch_split" else short)
                dt = time.perf_counter() - t
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0)
                torch.cuda.empty_cache()
            ref = base if label == "batch_split" else base_short
            fb = m.oom[0]
            res[label] = {"cap_mib": cap_mib, "uncapped_peak_mib": need, "seconds": len(next(iter(out.values()))) / SR,
                          "time_s": dt, "batch_reached": fb.batch, "cpu_copy_made": fb.fallback_net is not None,
                          "sdr_vs_uncapped_db": stems_snr(ref, out), "log": records[:6]}
            log(f"  oom {label}: cap {cap_mib:.0f} MiB (uncapped peak {need:.0f}), batch {fb.batch}, "
                f"cpu copy {fb.fallback_net is not None}, SDR vs uncapped {res[label]['sdr_vs_uncapped_db']:.1f} dB, "
                f"{dt:.1f}s; log: {records[:2]}")
            save()
            del m
    finally:
        logging.getLogger("separator.core.oom").removeHandler(h)


def section_spleeter(args, data) -> None:
    from separator.core.spleeter import Spleeter2Stems
    from separator.evaluate import global_sdr
    res = RESULT.setdefault("spleeter", {})
    mixes = [m for _, m, _ in data]
    a60, a600 = tiled(mixes, args.short), tiled(mixes, args.long)
    cpu = Spleeter2Stems("cpu", precision="fp32")
    configs = (("fp32", 2), ("fp32", 8), ("fp16", 8), ("bf16", 8)) if cuda() else (("fp32", 2), ("bf16", 8))
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for prec, batch in configs:
        key = f"{prec}_b{batch}"
        m = Spleeter2Stems(DEVICE, precision=prec, batch_segments=batch)
        row, _ = measure(f"spleeter {key}", m.separate, a60, args.calls)
        res[f"{key}_{args.short}"] = row
        save()
        if batch == 8:
            m.separate(a60[: 10 * SR])
            row, _ = measure(f"spleeter {key}", m.separate, a600, 0)
            res[f"{key}_{args.long}"] = row
            save()
        # quality on the songs (batch does not change the numbers: whole-segment batches)
        per = scores.setdefault(prec, {})
        for name, mix, refs in data:
            out = m.separate(mix)
            per[name] = {s: global_sdr(refs[s], out[s]) for s in refs}
            if prec == "fp32" and name == data[0][0]:
                res["fp32_gpu_vs_cpu_snr_db"] = stems_snr(cpu.separate(mix), out)
        del m
    for prec in ("fp16", "bf16"):
        if prec not in scores:
            continue
        deltas = {s: [scores[prec][n][s] - scores["fp32"][n][s] for n in scores["fp32"]]
                  for s in ("vocals", "accompaniment")}
        res[f"{prec}_sdr_change_db"] = {
            s: {"median": statistics.median(d), "max_abs": max(abs(x) for x in d)} for s, d in deltas.items()}
        log(f"  {prec} vs fp32 global SDR change: {res[f'{prec}_sdr_change_db']}")
    res["global_sdr_db"] = scores
    res["songs"] = [n for n, _, _ in data]
    save()


def _write_wav(path: Path, audio: np.ndarray) -> Path:
    """(frames, 2) float -> 16-bit PCM WAV (the stdlib writer: no ffmpeg needed for the input)."""
    import wave
    pcm = (np.clip(audio, -1, 1 - 1 / 32768) * 32768).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    return path


def _read_wav(path: Path) -> np.ndarray:
    """A WAV the two tools write (16-bit PCM or 32-bit float) as (frames, channels) float64."""
    import wave
    raw = path.read_bytes()
    if raw[20:22] == b"\x01\x00":                        # PCM
        with wave.open(str(path)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels()) / 32768.0
    i = raw.index(b"data") + 8                            # IEEE float (demucs --float32)
    ch = int.from_bytes(raw[22:24], "little")
    return np.frombuffer(raw[i:], "<f4")[: (len(raw) - i) // 4 // ch * ch].reshape(-1, ch).astype(np.float64)


def section_e2e(args, mixes) -> None:
    import shutil
    import subprocess
    repo = _demucs_repo(args)
    res = RESULT.setdefault("e2e", {"model": "bench_htdemucs (htdemucs's published architecture, random init)",
                                    "conditions": "WAV in and out, shifts 0, overlap 0.25, segment 7.8 s, "
                                                  "command against command (start-up, import, load included)"})
    work = Path(args.work) / "e2e"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SEPARATOR_MODEL_DIR": str(repo.parent), "SEPARATOR_OFFLINE": "1"}
    dev = DEVICE if DEVICE != "cuda" else "cuda"

    def run(tool: str, inp: Path, precision: str = "fp32") -> dict:
        od = work / f"{tool}_{precision}_{inp.stem}"
        shutil.rmtree(od, ignore_errors=True)
        if tool == "demucs_cli":
            cmd = [sys.executable, "-m", "demucs.separate", "--repo", str(repo), "-n", "bench_htdemucs", "--shifts",
                   "0", "--overlap", "0.25", "--float32", "--clip-mode", "none", "-d", dev, "-o", str(od), str(inp)]
            stems = od / "bench_htdemucs" / inp.stem
        else:
            cmd = [sys.executable, "-m", "separator", "separate", "-q", "--mode", "MusicMode", "--codec", "wav",
                   "--model", "bench_htdemucs", "--model-dir", str(repo.parent), "--shifts", "0", "--overlap",
                   "0.25", "--precision", precision, "--device", dev, "-o", str(od), str(inp)]
            stems = od / "bench_htdemucs" / inp.stem
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        wall = time.perf_counter() - t
        row = {"tool": tool, "precision": precision, "wall_s": round(wall, 3), "rc": proc.returncode,
               "command": " ".join(cmd[1:])}
        if proc.returncode:
            row["stderr"] = proc.stderr[-1500:]
        else:
            row["vocals"] = _read_wav(stems / "vocals.wav")
        shutil.rmtree(od, ignore_errors=True)
        log(f"  e2e {tool} {precision} {inp.stem}: {wall:.2f} s (rc {proc.returncode})")
        return row

    for secs, reps in ((args.short, max(1, args.calls)), (args.long, 1)):
        inp = _write_wav(work / f"mix_{secs}s.wav", tiled(mixes, secs))
        rows: dict[str, list] = {"ours_fp32": [], "demucs_cli_fp32": [], f"ours_{half()}": []}
        for _ in range(reps):
            for tool, prec in (("ours", "fp32"), ("demucs_cli", "fp32"), ("ours", half())):
                rows[f"{tool}_{prec}"].append(run(tool, inp, prec))
        out = {}
        for key, rs in rows.items():
            ok = [r for r in rs if r["rc"] == 0]
            out[key] = {"walls_s": [r["wall_s"] for r in rs], "rc": [r["rc"] for r in rs],
                        "median_s": statistics.median(r["wall_s"] for r in ok) if ok else None,
                        "xrt": round(secs / statistics.median(r["wall_s"] for r in ok), 1) if ok else None,
                        "command": rs[0]["command"], **({"stderr": rs[0]["stderr"]} if not ok else {})}
        o, c = (next((r["vocals"] for r in rows[k] if r["rc"] == 0), None) for k in ("ours_fp32", "demucs_cli_fp32"))
        if o is not None and c is not None:
            out["vocals_sdr_ours_vs_cli_db"] = round(global_sdr(c, o), 1)
        if out["ours_fp32"]["median_s"] and out["demucs_cli_fp32"]["median_s"]:
            out["speedup_fp32"] = round(out["demucs_cli_fp32"]["median_s"] / out["ours_fp32"]["median_s"], 2)
        h = out[f"ours_{half()}"]
        if h["median_s"] and out["demucs_cli_fp32"]["median_s"]:
            out[f"speedup_{half()}_vs_cli_fp32"] = round(out["demucs_cli_fp32"]["median_s"] / h["median_s"], 2)
        res[str(secs)] = out
        inp.unlink(missing_ok=True)
        save()


def main(argv=None) -> int:
    global OUT, DEVICE
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="folder of song .npz files")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "cuda")
    p.add_argument("--sections", default="demucs,forward,parity,oom,spleeter,e2e")
    p.add_argument("--calls", type=int, default=3, help="warm calls per 60 s measurement")
    p.add_argument("--short", type=int, default=60, help="seconds of the short input")
    p.add_argument("--long", type=int, default=600, help="seconds of the long input")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to dry-run this script")
    args = p.parse_args(argv)
    DEVICE = args.device
    if cuda() and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    OUT = args.out
    if OUT.is_file():
        RESULT.update(json.loads(OUT.read_text()))
    section_env(args)
    save()
    data = songs(args.data)
    log("songs:", [n for n, _, _ in data], f"{sum(len(m) for _, m, _ in data) / SR:.0f} s")
    failed = 0
    for name in args.sections.split(","):
        t = time.perf_counter()
        log(f"== {name}")
        try:
            if name == "demucs":
                section_demucs(args, [m for _, m, _ in data])
            elif name == "forward":
                section_forward(args)
            elif name == "parity":
                section_parity(args, [m for _, m, _ in data])
            elif name == "oom":
                section_oom(args, [m for _, m, _ in data])
            elif name == "spleeter":
                section_spleeter(args, data)
            elif name == "e2e":
                section_e2e(args, [m for _, m, _ in data])
            else:
                raise SystemExit(f"unknown section {name}")
        except Exception:        # noqa: BLE001 - keep the other sections' figures
            failed += 1
            RESULT.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]
            log(traceback.format_exc())
        RESULT.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t, 1)
        save()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
