"""Multichannel Wiener filtering of source estimates, in PyTorch.

A port of the algorithm original Spleeter runs with ``MWF=True`` (``norbert.wiener`` from
norbert 0.2.1), written from its equations.  Local Gaussian model: each source ``j`` is
zero-mean Gaussian in every TF bin with covariance ``v_j(t, f) R_j(f)`` (a power spectral
density times a spatial covariance matrix), and the posterior mean of source ``j`` given
the mixture STFT ``x`` is

    y_j = v_j R_j (sum_k v_k R_k + sqrt(eps) I)^-1 x.

:func:`wiener` makes initial estimates (a soft mask ``v_j / (eps + sum_k v_k) * x``, or
the spectrograms with the mixture phase), then runs ``iterations`` steps of norbert's
simplified EM: from the current estimates ``y_j``,

* ``v_j(t, f) = mean_c |y_j(t, f, c)|^2``;
* ``R_j(f) = sum_t y_j y_j^H / (eps + sum_t v_j)``;
* new ``y_j`` from the formula above,

all on ``x / max(1, max|x| / 10)`` (norbert's rescaling for numerical stability), with
norbert's default ``eps`` = the machine epsilon of ``x``'s real dtype.

Differences from norbert are in the arithmetic only, not the result (float rounding):

* frames are processed in batches of ``frame_batch``, and EM statistics are accumulated
  (in double precision) while the estimates are produced, so no ``(frames, bins, channels,
  channels)`` or full ``(..., sources)`` intermediate is ever stored -- memory is the output
  plus one real ``(sources, bins, frames)`` PSD array;
* for two channels the mixture covariance is inverted in closed form using its Hermitian
  structure (it is exactly Hermitian in norbert too), and ``v_j R_j C^-1 x`` is computed
  as ``v_j R_j (C^-1 x)`` instead of forming the gain matrix.

Two layouts: :func:`wiener` takes norbert's (``v[frames, bins, {1, C}, sources]``,
``x[frames, bins, C]``, returns ``[frames, bins, C, sources]``); :func:`wiener_cf` is the
channels-first, frames-last layout of :mod:`separator.core.spleeter.model` (``v[S, {1, C}, F, T]``,
``x[C, F, T]``, returns ``[len(sources), C, F, T]``) and can return only some sources.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DEFAULT_FRAME_BATCH = 256


def _eps(x: torch.Tensor, eps: float | None) -> float:
    return float(torch.finfo(x.real.dtype).eps) if eps is None else float(eps)


def softmask(v: torch.Tensor, x: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """norbert's ``softmask``: ``v / (eps + sum_j v_j) * x``.  Layout of :func:`wiener`."""
    eps = _eps(x, eps)
    return v / (eps + v.sum(-1, keepdim=True)) * x[..., None]


def wiener(v: torch.Tensor, x: torch.Tensor, iterations: int = 1, use_softmask: bool = True,
           eps: float | None = None, *, frame_batch: int = DEFAULT_FRAME_BATCH) -> torch.Tensor:
    """norbert 0.2.1's ``wiener(v, x, iterations, use_softmask, eps)`` in torch.

    ``v``: nonnegative source spectrograms ``[frames, bins, {1, C}, sources]`` (magnitudes,
    as Spleeter passes them); ``x``: complex mixture STFT ``[frames, bins, C]``.  Returns the
    complex source STFTs ``[frames, bins, C, sources]``.
    """
    y = wiener_cf(v.permute(3, 2, 1, 0), x.permute(2, 1, 0), iterations=iterations,
                  use_softmask=use_softmask, eps=eps, frame_batch=frame_batch)
    return y.permute(3, 2, 1, 0)


def wiener_cf(v: torch.Tensor, x: torch.Tensor, iterations: int = 1, use_softmask: bool = True,
              eps: float | None = None, *, sources: Sequence[int] | None = None,
              frame_batch: int = DEFAULT_FRAME_BATCH) -> torch.Tensor:
    """:func:`wiener` on ``v[S, {1, C}, F, T]`` and ``x[C, F, T]`` -> ``[len(sources), C, F, T]``.

    ``sources`` (default: all, in order) picks which filtered sources to return; the
    others are still modelled, only their final STFTs are not materialised.
    """
    if x.dim() != 3 or v.dim() != 4 or v.shape[2:] != x.shape[1:] or v.shape[1] not in (1, x.shape[0]):
        raise ValueError(f"shapes do not match: v {tuple(v.shape)}, x {tuple(x.shape)}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    eps = _eps(x, eps)
    n_src = v.shape[0]
    c, f, t = x.shape
    want = list(range(n_src)) if sources is None else [int(j) for j in sources]
    rdt = x.real.dtype
    v = v.to(rdt)
    fb = max(1, int(frame_batch))
    out = x.new_empty(len(want), c, f, t)
    batches = [slice(s, min(s + fb, t)) for s in range(0, t, fb)]

    def init(j: int, b: slice) -> torch.Tensor:        # initial estimate of source j, frames b
        vb = v[:, :, :, b]
        if use_softmask:
            return vb[j] / (eps + vb.sum(0)) * x[:, :, b]
        return vb[j] * torch.exp(1j * torch.angle(x[:, :, b]))

    if iterations == 0:
        for b in batches:
            for k, j in enumerate(want):
                out[k, :, :, b] = init(j, b)
        return out

    scale = max(1.0, float(x.abs().max()) / 10.0) if x.numel() else 1.0
    psd = torch.empty(n_src, f, t, dtype=rdt, device=x.device)        # v_j(f, t) of the current estimates
    cov = torch.zeros(n_src, c, c, f, dtype=torch.complex128, device=x.device)   # sum_t y_j y_j^H

    def accumulate(j: int, b: slice, y: torch.Tensor, psd_out: torch.Tensor, cov_out: torch.Tensor) -> None:
        power = y.real.square() + y.imag.square()                         # |y_c|^2, (C, F, B)
        psd_out[j, :, b] = power.mean(0)
        for i1 in range(c):
            cov_out[j, i1, i1] += power[i1].sum(-1, dtype=torch.float64)
            for i2 in range(i1 + 1, c):
                cov_out[j, i1, i2] += (y[i1] * y[i2].conj()).sum(-1).to(torch.complex128)

    for b in batches:                                  # statistics of the initial estimates
        for j in range(n_src):
            accumulate(j, b, init(j, b) / scale, psd, cov)

    reg = math.sqrt(eps)
    for it in range(iterations):
        last = it == iterations - 1
        # R_j(f) = sum_t y_j y_j^H / (eps + sum_t v_j); Hermitian: fill the lower triangle
        for i1 in range(c):
            for i2 in range(i1):
                cov[:, i1, i2] = cov[:, i2, i1].conj()
        den = eps + psd.sum(-1, dtype=torch.float64)                      # (S, F)
        R = (cov / den[:, None, None, :]).to(x.dtype)                     # (S, C, C, F)
        if not last:
            new_psd = torch.empty_like(psd)
            cov = torch.zeros_like(cov)
        for b in batches:
            xb = x[:, :, b] / scale
            z = _solve(psd[:, :, b], R, xb, reg, eps)                     # C_xx^-1 x, (C, F, B)
            for j in (want if last else range(n_src)):
                vj = psd[j, :, b]
                yj = torch.stack([vj * sum(R[j, i1, i2, :, None] * z[i2] for i2 in range(c))
                                  for i1 in range(c)])
                if last:
                    out[want.index(j), :, :, b] = yj * scale
                else:
                    accumulate(j, b, yj, new_psd, cov)
        if not last:
            psd = new_psd
    return out


def _solve(psd: torch.Tensor, R: torch.Tensor, x: torch.Tensor, reg: float, eps: float) -> torch.Tensor:
    """``(sum_j psd_j R_j + reg I)^-1 x`` per TF bin; ``psd[S, F, B]``, ``R[S, C, C, F]``, ``x[C, F, B]``."""
    c = x.shape[0]
    if c == 2:   # Hermitian 2x2 in closed form: [[a, b], [b*, d]]^-1 = [[d, -b], [-b*, a]] / (ad - |b|^2)
        def mix(entry: torch.Tensor) -> torch.Tensor:   # sum_j psd_j * entry_j, entry[S, F] real
            return sum(psd[j] * entry[j, :, None] for j in range(psd.shape[0]))
        a = mix(R[:, 0, 0].real) + reg
        d = mix(R[:, 1, 1].real) + reg
        bre = mix(R[:, 0, 1].real)
        bim = mix(R[:, 0, 1].imag)
        inv_det = 1.0 / (a * d - (bre.square() + bim.square()))
        b = torch.complex(bre, bim)
        return torch.stack([(d * x[0] - b * x[1]) * inv_det, (a * x[1] - b.conj() * x[0]) * inv_det])
    cxx = torch.einsum("sfb,sijf->fbij", psd.to(R.dtype), R)              # (F, B, C, C)
    cxx = cxx + reg * torch.eye(c, dtype=cxx.dtype, device=cxx.device)
    inv = 1.0 / (cxx + eps) if c == 1 else torch.linalg.pinv(cxx, rtol=eps)
    return (inv @ x.permute(1, 2, 0)[..., None])[..., 0].permute(2, 0, 1)
