"""benchmarks/report.py: which run each figure came from, and the tables added for issue 17."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402


def _run(command: str, started: str, sections: list[str], before: dict | None = None) -> dict:
    run = {"command": command, "started_utc": started, "sections": sections}
    if before is not None:
        run["merged_from"] = before
    return run


def test_provenance_names_the_run_behind_each_section():
    """Each section is credited to the newest run that measured it; a run whose sections were
    all measured again later is left out, however deep the chain of merges."""
    full = _run("run.py", "t0", ["spleeter", "service", "demucs"])
    redo = _run("run.py --only demucs --merge", "t1", ["demucs"], full)
    again = _run("run.py --only demucs,bounds --merge", "t2", ["demucs", "bounds"], redo)
    got = [(r["started_utc"], secs) for r, secs in report.provenance(again)]
    assert got == [("t0", ["spleeter", "service"]), ("t2", ["demucs", "bounds"])]
    res = {"machine": {"cores": 2, "cpu": "X"}, "run": again}
    line = report.readme_figures(res, cuda={}).splitlines()[0]
    assert "started t0 UTC" in line and "sections demucs, bounds from t2 UTC" in line and "t1" not in line
    head = "\n".join(report._machine(res)[:6])
    assert "spleeter, service from `run.py` started t0 UTC" in head and "t1" not in head


def _bound(conv_wall: float) -> dict:
    return {"rc": 0, "result": {
        "threads": 2, "precision": "fp32", "conv_gflop_per_min_needed": 120.0, "conv_gflop_per_min_computed": 150.0,
        "conv_wall_s_per_min": conv_wall, "unet_wall_s_per_min": conv_wall + 0.1, "conv_gflops_achieved": 150.0 / conv_wall,
        "conv_peak_gflops": {"threads_2": {"3x3": 200.0}, "threads_1": {"3x3": 100.0}},
        "model_cpu_s_per_min": 2.0, "bound_conv_cpu_s_per_min": 1.2}}


def test_bounds_table_and_summary_row_come_from_the_recorded_figures():
    res = {"bounds": {"runs": {"avx2": _bound(1.0), "native": {"rc": 1, "timed_out": True}}},
           "spleeter": {"runs": {"avx2": {"auto_precision": "fp32", "stages": {"result": {
               "precision": "fp32", "end_to_end_over_limit": 1.05, "limit_s": 2.0, "cpu_s_per_min": {"model": 2.5},
               "stages": {"end_to_end": {"wall_s": 2.1}}}}}}}}
    text = "\n".join(report._bounds(res))
    assert "| avx2 | 120.0 / 150.0 | 100.0 / 200.0 | 150.0 (75 %) |" in text
    assert "**1.20**" in text and "| native | failed (timeout) |" in text
    summary = "\n".join(report._summary(res))
    assert "1.20 CPU-s (120.0 GFLOP at 100.0 GFLOPS per core); ours run at 75 % of that peak" in summary
    assert report._bounds({}) == []


def test_demucs_best_against_best_is_its_own_table_with_its_sdr():
    pair = {"model": "bench_htdemucs", "isa": "native", "audio_s": 30, "speedup": 1.2, "cpu_ratio": 1.3,
            "speedup_bf16_vs_cli_fp32": 1.55, "cpu_ratio_bf16": 1.7,
            "sdr_bf16_vs_cli_db": {"vocals": 48.1, "drums": 45.0}}
    runs = [{"tool": "ours", "model": "bench_htdemucs", "isa": "native", "audio_s": 30, "precision": "bf16",
             "rc": 0, "wall_s": 10.0, "xrt": 3.0, "peak_rss_mib": 900, "tree_peak_rss_mib": 900,
             "user_s": 15, "sys_s": 1}]
    res = {"demucs": {"runs": runs, "pairs": [pair], "conditions": {"best": "bf16 against fp32"}}}
    text = "\n".join(report._demucs(res))
    assert "| bench_htdemucs | native | 30 s | ours bf16 | 10.0 |" in text
    assert "| bench_htdemucs | native | 30 s | **1.55×** | 1.70× | vocals 48.1, drums 45.0 |" in text
    summary = "\n".join(report._summary(res))
    assert "our best (bf16) vs the demucs CLI's (fp32)" in summary and "1.55× (CPU time 1.70×); min SDR vs CLI 45 dB" in summary
    res["machine"], res["run"] = {"cores": 2, "cpu": "X"}, _run("run.py", "t0", ["demucs"])
    readme = report.readme_figures(res, cuda={})
    assert "Our best against theirs" in readme and "htdemucs 30 s, native kernels: **1.55×**, stems ≥ 45 dB" in readme
