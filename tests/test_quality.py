"""Quality of spleeter-2stems on the 7 dev songs, against TF Spleeter's reference figures.

Reference (shared/reference/spleeter-reference.md, TF Spleeter 2stems, median over the 7
items of the 1 s framewise museval v4 SDR): vocals 9.01 dB, accompaniment 12.26 dB.
Everything is computed live: decode, separate, score (about 1-2 minutes on 2 cores).

* vocals: ours must be within 0.3 dB of 9.01;
* accompaniment, stock Spleeter (``full_band=False``, band-limited like TF): within 0.3 dB of 12.26;
* accompaniment, our default full-band background (mixture - vocals): not worse than
  12.26 - 0.3 (it keeps the > 11 kHz band TF drops, so it is higher: ~12.8), and the two
  stems must rebuild the mixture (SNR >= 30 dB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REF_VOCALS, REF_ACC, TOL = 9.01, 12.26, 0.3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def songs():
    if not DATA.is_dir():
        pytest.skip(f"dev audio not found at {DATA} (../shared/data): quality test skipped")
    pytest.importorskip("museval", reason="museval (dev extra) is needed to score")
    from separator.evaluate import dev_songs
    items = list(dev_songs(DATA))
    if len(items) != 7:
        pytest.skip(f"only {len(items)} of the 7 reference items found (Falcon 69 comes from the stempeg "
                    "package's test data): medians are not comparable")
    return items


def _medians(model, songs):
    from separator.evaluate import global_sdr, score
    voc, acc, recon = [], [], []
    for _name, mix, ref in songs:
        est = model.separate(mix)
        s = score(ref, est)
        voc.append(s["vocals"]["museval"])
        acc.append(s["accompaniment"]["museval"])
        recon.append(global_sdr(mix, est["vocals"] + est["accompaniment"]))
    return float(np.median(voc)), float(np.median(acc)), recon


def test_default_full_band_quality(songs, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SEPARATOR_CACHE", str(tmp_path_factory.getbasetemp() / "sepcache"))
    from separator.core.spleeter import Spleeter2Stems
    voc, acc, recon = _medians(Spleeter2Stems("cpu"), songs)
    print(f"default: median museval SDR vocals {voc:.2f} dB, accompaniment {acc:.2f} dB")
    assert abs(voc - REF_VOCALS) <= TOL, voc
    assert acc >= REF_ACC - TOL, acc
    assert min(recon) >= 30.0, recon


def test_stock_spleeter_matches_reference(songs, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SEPARATOR_CACHE", str(tmp_path_factory.getbasetemp() / "sepcache"))
    from separator.core.spleeter import Spleeter2Stems
    voc, acc, _ = _medians(Spleeter2Stems("cpu", full_band=False), songs)
    print(f"stock: median museval SDR vocals {voc:.2f} dB, accompaniment {acc:.2f} dB")
    assert abs(voc - REF_VOCALS) <= TOL, voc
    assert abs(acc - REF_ACC) <= TOL, acc
