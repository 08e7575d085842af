"""benchmarks/cuda.py (the GPU measurements) and its place in the report, checked without a GPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from conftest import committed_mixtures  # noqa: E402


def test_report_renders_the_recorded_cuda_figures():
    """Section 5 and the summary rows come from benchmarks/cuda_results.json, with its card."""
    c = report.cuda_results()
    if not c:
        pytest.skip("no CUDA figures recorded")
    res = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    text = report.render(res)
    assert "## 5. CUDA" in text and c["env"]["card"] in text
    d = c["demucs"]
    ratio = d["reference_60"]["median_s"] / d["ours_fp32_b8_60"]["median_s"]
    assert f"({ratio:.2f}×)" in text
    worst = max(v["max_abs"] for v in c["spleeter"]["fp16_sdr_change_db"].values())
    assert f"at most {worst:.4f} dB" in text
    assert report._cuda({}) == [] and report._cuda_summary({}) == []


def _one_song(folder) -> str:
    """The first committed mixture's first 3 s as the script's song file; returns its name."""
    name, _mix, stems = committed_mixtures()[0]
    np.savez(folder / "song0.npz", name=np.array(name), vocals=stems["vocals"][: 3 * 44100],
             accompaniment=stems["accompaniment"][: 3 * 44100])
    return name


def test_cuda_script_dry_runs_on_the_cpu(tmp_path):
    """`--device cpu` runs the bundled-model section end to end on real music and writes
    its figures: speed rows and the SDR change of the reduced precision per song."""
    name = _one_song(tmp_path)
    out = tmp_path / "cuda.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda.py"), "--device", "cpu",
                           "--out", str(out), "--data", str(tmp_path), "--sections", "spleeter",
                           "--short", "4", "--long", "5", "--calls", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    sp = res["spleeter"]
    assert sp["songs"] == [name]
    assert sp["fp32_b2_4"]["seconds"] == 4.0 and sp["fp32_b2_4"]["xrt"] > 0
    assert sp["bf16_b8_5"]["seconds"] == 5.0
    fp32, bf16 = sp["global_sdr_db"]["fp32"][name], sp["global_sdr_db"]["bf16"][name]
    assert fp32["vocals"] > 0 and np.isfinite(bf16["vocals"])
    assert sp["bf16_sdr_change_db"]["vocals"]["median"] == pytest.approx(bf16["vocals"] - fp32["vocals"])
    assert "errors" not in res


def test_cuda_end_to_end_section_dry_runs_on_the_cpu(tmp_path):
    """`--sections e2e` runs our command and the demucs CLI file to file on real music (here on
    the CPU): both succeed, the speed-up is the ratio of their medians, the two tools' vocals
    agree, and the report renders the table with the card."""
    _one_song(tmp_path)
    out = tmp_path / "cuda.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda.py"), "--device", "cpu",
                           "--out", str(out), "--data", str(tmp_path), "--sections", "e2e",
                           "--short", "3", "--long", "4", "--calls", "1", "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert "errors" not in res
    for secs in ("3", "4"):
        r = res["e2e"][secs]
        assert r["ours_fp32"]["rc"] == [0] and r["demucs_cli_fp32"]["rc"] == [0] and r["ours_bf16"]["rc"] == [0]
        assert r["speedup_fp32"] == pytest.approx(r["demucs_cli_fp32"]["median_s"] / r["ours_fp32"]["median_s"], abs=0.01)
        assert r["vocals_sdr_ours_vs_cli_db"] > 40
    text = "\n".join(report._cuda({**res, "env": {**res["env"], "card": "TEST CARD", "date": "now"}}))
    assert "End to end on the card" in text and f"{res['e2e']['3']['speedup_fp32']:.2f}×" in text
    assert "GPU end to end" not in "\n".join(report._cuda({}))
