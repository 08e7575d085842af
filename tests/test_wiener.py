"""Multichannel Wiener filter: the torch port against a plain numpy reference of norbert's
equations, its invariants, and ``wiener=True`` separation on a real clip."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import long_mixture
from separator.core.spleeter.wiener import softmask, wiener, wiener_cf


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SEPARATOR_CACHE", str(tmp_path_factory.getbasetemp() / "sepcache"))


# --------------------------------------------------------------------------- reference
def ref_wiener(v, x, iterations=1, use_softmask=True, eps=None):
    """norbert 0.2.1's wiener / expectation_maximization, written out literally in numpy:
    full (frames, bins, C, C) covariance and gain tensors, matrix products, no tricks."""
    if eps is None:
        eps = np.finfo(np.real(x).dtype).eps
    if use_softmask:
        y = v / (eps + v.sum(-1, keepdims=True)) * x[..., None]
    else:
        y = v * np.exp(1j * np.angle(x[..., None]))
    if not iterations:
        return y
    m = max(1.0, np.abs(x).max() / 10.0)
    x, y = x / m, y / m
    nt, nf, c = x.shape
    s = y.shape[-1]
    for _ in range(iterations):
        v_ = np.zeros((nt, nf, s))
        r = np.zeros((nf, c, c, s), x.dtype)
        for j in range(s):
            v_[..., j] = np.mean(np.abs(y[..., j]) ** 2, axis=2)
            cj = np.zeros((nt, nf, c, c), x.dtype)
            for i1, i2 in itertools.product(range(c), range(c)):
                cj[..., i1, i2] = y[..., i1, j] * np.conj(y[..., i2, j])
            r[..., j] = cj.sum(0) / (eps + v_[..., j].sum(0))[..., None, None]
        cxx = sum(v_[..., j, None, None] * r[None, ..., j] for j in range(s)) + np.sqrt(eps) * np.eye(c)
        inv = 1.0 / (cxx + eps) if c == 1 else np.linalg.pinv(cxx, eps)
        y = y.copy()
        for j in range(s):
            gain = v_[..., j, None, None] * (r[None, ..., j] @ inv)
            y[..., j] = (gain @ x[..., None])[..., 0]
    return y * m


def _random(rng, nt=37, nf=9, c=2, s=2, vc=None):
    x = (rng.standard_normal((nt, nf, c)) + 1j * rng.standard_normal((nt, nf, c))) * 30
    v = np.abs(rng.standard_normal((nt, nf, c if vc is None else vc, s))) * 20
    return v, x


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# --------------------------------------------------------------------------- the port
@pytest.mark.parametrize("c", [1, 2, 3])
@pytest.mark.parametrize("iterations", [0, 1, 2])
@pytest.mark.parametrize("use_softmask", [True, False])
def test_port_matches_numpy_reference_in_double(c, iterations, use_softmask):
    v, x = _random(np.random.default_rng(10 * c + iterations), c=c, s=3)
    ref = ref_wiener(v, x, iterations, use_softmask)
    out = wiener(torch.from_numpy(v), torch.from_numpy(x), iterations, use_softmask, frame_batch=8)
    assert out.shape == ref.shape and out.dtype == torch.complex128
    assert _rel(out.numpy(), ref) < 1e-12


@pytest.mark.parametrize("c", [1, 2])
@pytest.mark.parametrize("iterations", [1, 2])
def test_port_in_single_precision(c, iterations):
    """complex64 (as Spleeter calls it: eps = float32 eps) against the double-precision reference
    run with the same eps: the port is as accurate as the reference itself is in complex64."""
    v, x = _random(np.random.default_rng(c + 7 * iterations), c=c)
    eps = float(np.finfo(np.float32).eps)
    ref = ref_wiener(v, x, iterations, eps=eps)
    ref32 = ref_wiener(v.astype(np.float32), x.astype(np.complex64), iterations)
    out = wiener(torch.from_numpy(v).float(), torch.from_numpy(x).to(torch.complex64), iterations)
    assert out.dtype == torch.complex64
    assert _rel(out.numpy(), ref) < max(2e-6, 5 * _rel(ref32, ref))


def test_mono_spectrograms_broadcast_and_frame_batch_invariance():
    v, x = _random(np.random.default_rng(3), vc=1)
    ref = ref_wiener(v, x, 2)
    for fb in (1, 5, 1000):
        out = wiener(torch.from_numpy(v), torch.from_numpy(x), 2, frame_batch=fb).numpy()
        assert _rel(out, ref) < 1e-12


def test_softmask_init_sums_to_the_mixture():
    v, x = _random(np.random.default_rng(4), s=3)
    vt, xt = torch.from_numpy(v).float(), torch.from_numpy(x).to(torch.complex64)
    for y in (softmask(vt, xt), wiener(vt, xt, iterations=0)):
        np.testing.assert_allclose(y.sum(-1).numpy(), x, rtol=0, atol=1e-4)   # |x| ~ 30, eps 1e-7


def test_filtered_sources_nearly_sum_to_the_mixture():
    """After EM the gains sum to (Cxx)(Cxx + sqrt(eps) I)^-1: the mixture up to the regularisation."""
    v, x = _random(np.random.default_rng(5))
    y = wiener(torch.from_numpy(v), torch.from_numpy(x), 1, eps=1e-12).numpy()
    assert _rel(y.sum(-1), x) < 1e-4


def test_channels_first_layout_and_source_selection():
    v, x = _random(np.random.default_rng(6), s=3)
    full = wiener(torch.from_numpy(v), torch.from_numpy(x), 1).numpy()             # (T, F, C, S)
    vcf = torch.from_numpy(v).permute(3, 2, 1, 0)                                  # (S, C, F, T)
    xcf = torch.from_numpy(x).permute(2, 1, 0)                                     # (C, F, T)
    some = wiener_cf(vcf, xcf, 1, sources=(2, 0), frame_batch=4).numpy()           # (2, C, F, T)
    np.testing.assert_allclose(some, full[..., [2, 0]].transpose(3, 2, 1, 0), rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        wiener_cf(vcf[:, :, :3], xcf, 1)


def test_silent_input_gives_silence():
    x = torch.zeros(20, 5, 2, dtype=torch.complex64)
    v = torch.zeros(20, 5, 2, 2)
    y = wiener(v, x, 1)
    assert torch.isfinite(y.real).all() and (y == 0).all()


# --------------------------------------------------------------------------- separation
def _real_clip():
    """8 s of the committed real mixtures (tests/data) and their vocals."""
    mix, stems = long_mixture(8.0)
    return mix, stems["vocals"]


def test_wiener_separation_on_a_real_clip():
    from separator.core import registry
    from separator.core.spleeter import Spleeter2Stems
    from separator.evaluate import global_sdr

    mix, vocals = _real_clip()
    mix, vocals = mix[: 8 * 44100], vocals[: 8 * 44100]
    plain = Spleeter2Stems("cpu").separate(mix)
    model = registry.load_model("spleeter-2stems", "cpu", wiener=True, precision="fp32")
    assert isinstance(model, Spleeter2Stems) and model.wiener and model.wiener_iterations == 1
    out = model.separate(mix)
    for s in ("vocals", "accompaniment"):
        assert out[s].shape == mix.shape and out[s].dtype == np.float32 and np.isfinite(out[s]).all()
    # accompaniment = mixture - vocals: the stems sum back to the input
    assert global_sdr(mix, out["vocals"] + out["accompaniment"]) > 100
    # it filters something different from the ratio mask, and not worse (Spleeter's MWF: +0.1 to +0.3 dB)
    sdr_plain, sdr_wiener = global_sdr(vocals, plain["vocals"]), global_sdr(vocals, out["vocals"])
    assert global_sdr(plain["vocals"], out["vocals"]) < 40
    assert sdr_wiener > sdr_plain - 0.3, (sdr_plain, sdr_wiener)

    # full_band=False + wiener: Spleeter's MWF=True, both stems zero above bin 1024
    stock = Spleeter2Stems("cpu", wiener=True, full_band=False).separate(mix)
    np.testing.assert_array_equal(stock["vocals"], out["vocals"])
    spec = np.abs(np.fft.rfft(stock["accompaniment"][44100:3 * 44100, 0]))
    assert spec[int(len(spec) * 11500 / 22050):].max() < 1e-3 * spec.max()


def test_load_validates_wiener_iterations():
    from separator.core import spleeter
    from separator.errors import CIError

    with pytest.raises(CIError):
        spleeter.load(spleeter.SPEC, "cpu", wiener=True, wiener_iterations=-1)
    with pytest.raises(ValueError):
        spleeter.Spleeter2Stems("cpu", wiener_iterations=1.5)
