"""Mel-Band RoFormer's band layout: which STFT bins each mel band covers.

MSST builds it from ``librosa.filters.mel(sr=sample_rate, n_fft=stft_n_fft, n_mels=num_bands)``
(librosa's defaults: Slaney mel scale, ``fmin=0``, ``fmax=sr/2``, Slaney area normalisation,
float32), forces ``[0, 0]`` and ``[-1, -1]`` to 1 and keeps only ``weights > 0``.  Only that
boolean mask matters to the model, so this module computes the same filter bank with the same
numpy operations as librosa (no librosa at run time) and returns the mask.
"""
from __future__ import annotations

import numpy as np

_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    # librosa.hz_to_mel(htk=False) for a scalar
    hz = np.asanyarray(hz)
    mels = hz / _F_SP
    if hz >= _MIN_LOG_HZ:
        mels = _MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOGSTEP
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    # librosa.mel_to_hz(htk=False) for an array
    freqs = _F_SP * mels
    log_t = mels >= _MIN_LOG_MEL
    freqs[log_t] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_t] - _MIN_LOG_MEL))
    return freqs


def mel_filter_bank(sample_rate: float, n_fft: int, n_mels: int) -> np.ndarray:
    """``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)``: ``(n_mels, n_fft//2+1)``
    float32 Slaney-normalised triangular filters (frequencies in Hz, ``fmax = sample_rate / 2``)."""
    n_mels = int(n_mels)
    weights = np.zeros((n_mels, int(1 + n_fft // 2)), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(float(sample_rate) / 2), n_mels + 2)
    mel_f = _mel_to_hz(mels)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights


def mel_band_mask(sample_rate: float, n_fft: int, num_bands: int) -> np.ndarray:
    """``(num_bands, n_fft//2+1)`` bool: bin ``f`` belongs to band ``b`` (MSST's ``freqs_per_band``)."""
    fb = mel_filter_bank(sample_rate, n_fft, num_bands)
    fb[0, 0] = 1.0
    fb[-1, -1] = 1.0
    return fb > 0
