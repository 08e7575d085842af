"""``separator eval`` on two short real songs in the generic folder layout.

The songs are cut with ffmpeg from the real mixtures' stems committed in ``tests/data``
into a temporary folder: one with a ``mixture.wav``, one without (its mixture is the sum of
the stems).  Checks: the table and the JSON are produced, the
figures are finite, and the bundled model beats "no separation" by a wide margin.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import MIXTURES

SONGS = {"vocadito-vibeace": 0.5, "librispeech-brahms": 1.0}   # start second
LENGTH = 6.0


def _cut(src: Path, dst: Path, start: float) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(start), "-t", str(LENGTH), "-i", str(src),
                    "-ac", "2", "-ar", "44100", "-c:a", "pcm_f32le", str(dst)], check=True)


@pytest.fixture(scope="module")
def songs_dir(tmp_path_factory) -> Path:
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg is needed")
    pytest.importorskip("museval", reason="museval (dev extra) is needed to score")
    root = tmp_path_factory.mktemp("evalsongs")
    for i, (song, start) in enumerate(SONGS.items()):
        d = root / f"song{i + 1}"
        d.mkdir()
        _cut(MIXTURES / song / "vocals.flac", d / "vocals.wav", start)
        _cut(MIXTURES / song / "accompaniment.flac", d / "accompaniment.wav", start)
        if i == 0:   # an explicit mixture (the other song's is the sum of its stems)
            from separator.evaluate import decode
            mix = decode(d / "vocals.wav") + decode(d / "accompaniment.wav")
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "f32le", "-ar", "44100", "-ac", "2",
                            "-i", "-", "-c:a", "pcm_f32le", str(d / "mixture.wav")], input=mix.tobytes(), check=True)
    (root / "not-a-song").mkdir()                   # empty folders are ignored
    return root


def test_eval_folder_layout(songs_dir, tmp_path, capsys):
    from separator.cli import main
    out = tmp_path / "eval.json"
    rc = main(["eval", str(songs_dir), "--model", "spleeter-2stems", "--device", "cpu", "--baseline",
               "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "song1" in text and "song2" in text and "MEDIAN" in text
    assert "vocals museval" in text and "accompaniment global" in text

    report = json.loads(out.read_text())
    assert report["layout"] == "folders" and report["model"] == "spleeter-2stems"
    assert [r["song"] for r in report["songs"]] == ["song1", "song2"]
    for row in report["songs"]:
        assert abs(row["seconds"] - LENGTH) < 0.05
        for stem in ("vocals", "accompaniment"):
            for key in ("museval", "global"):
                assert math.isfinite(row["scores"][stem][key]), row
    med, base = report["median"], report["baseline"]["median"]
    # sane scores: Spleeter gets ~9 dB on vocals where the mixture itself scores ~-4 dB
    assert med["vocals"]["museval"] > base["vocals"]["museval"] + 6.0, (med, base)
    assert med["accompaniment"]["museval"] > base["accompaniment"]["museval"] + 3.0, (med, base)
    assert 3.0 < med["vocals"]["museval"] < 25.0
    assert med["vocals"]["museval"] == pytest.approx(
        float(np.median([r["scores"]["vocals"]["museval"] for r in report["songs"]])))


def test_eval_matches_stems_by_role():
    """A 4-stem ground truth is scored against a 2-stem model as vocals + accompaniment."""
    from separator.evaluate import match
    z = np.zeros((10, 2), np.float32)
    ref = {"vocals": z + 1, "drums": z + 2, "bass": z + 3, "other": z + 4}
    est = {"vocals": z + 1, "accompaniment": z + 9}
    refs, ests = match(ref, est)
    assert list(refs) == ["vocals", "accompaniment"]
    assert float(refs["accompaniment"][0, 0]) == 9.0 and float(ests["accompaniment"][0, 0]) == 9.0
    # and a 2-stem truth against a 4-stem model: the model's non-vocals sources are summed
    refs, ests = match({"vocals": z + 1, "background": z + 5}, {"vocals": z, "drums": z + 1, "bass": z + 1,
                                                                "other": z + 3})
    assert list(refs) == ["vocals", "accompaniment"] and float(ests["accompaniment"][0, 0]) == 5.0


def test_eval_missing_folder(tmp_path, capsys):
    from separator.cli import main
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
