"""Reference implementations for the RoFormer parity tests (dev-only dependencies).

* The model classes audio-separator 0.47.1 ships (``audio_separator/separator/uvr_lib_v5/
  roformer``), imported without running ``audio_separator/separator/__init__.py`` (which pulls
  in audio-separator's heavy runtime dependencies).  They need einops, beartype and
  rotary-embedding-torch 0.6.x; Mel-Band RoFormer's also imports ``librosa.filters.mel``: when
  librosa is absent, a stub serves the numpy port in ``separator.core.roformer.mel`` (which
  ``test_roformer.py`` checks against librosa's output stored in tests/data/roformer).
* ``msst_forward``: MSST's current ``forward`` (models/bs_roformer/*.py, MIT) re-typed to run on
  a reference instance, for the options audio-separator's copy ignores (``skip_connection``,
  ``zero_dc``, the iSTFT ``length``).
* ``msst_demix``: MSST's ``utils/model_utils.py::demix`` in generic mode (MIT), re-typed.

Source: https://github.com/ZFTurbo/Music-Source-Separation-Training (MIT licence,
Copyright (c) 2024 Roman Solovyev (ZFTurbo)).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import yaml

from separator.core.roformer import BS_ROFORMER
from separator.core.roformer.model import DEFAULT_FREQS_PER_BANDS


_REFERENCE: tuple | None = None


def reference_classes():
    """``(BSRoformer, MelBandRoformer)`` of audio-separator, or raise ImportError with the reason."""
    global _REFERENCE
    if _REFERENCE is None:
        _REFERENCE = _import_reference()
    return _REFERENCE


def _import_reference():
    spec = importlib.util.find_spec("audio_separator")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("audio-separator is not installed (pip install --no-deps audio-separator==0.47.1)")
    for dep in ("einops", "beartype", "rotary_embedding_torch"):
        if importlib.util.find_spec(dep) is None:
            raise ImportError(f"{dep} is not installed")
    root = Path(spec.submodule_search_locations[0])
    for name, sub in (("audio_separator", ""), ("audio_separator.separator", "separator"),
                      ("audio_separator.separator.uvr_lib_v5", "separator/uvr_lib_v5")):
        if name not in sys.modules:          # namespace stand-ins: no __init__ code runs
            mod = types.ModuleType(name)
            mod.__path__ = [str(root / sub)]
            sys.modules[name] = mod
    base = "audio_separator.separator.uvr_lib_v5.roformer."
    bs = importlib.import_module(base + "bs_roformer")
    stub = importlib.util.find_spec("librosa") is None and "librosa" not in sys.modules
    if stub:   # only while the reference module imports (it binds `filters` at import)
        from separator.core.roformer.mel import mel_filter_bank
        librosa = types.ModuleType("librosa")
        filters = types.ModuleType("librosa.filters")
        filters.mel = lambda *, sr, n_fft, n_mels: mel_filter_bank(sr, n_fft, n_mels)
        librosa.filters = filters
        sys.modules["librosa"] = librosa
        sys.modules["librosa.filters"] = filters
    try:
        mel = importlib.import_module(base + "mel_band_roformer")
    finally:
        if stub:
            del sys.modules["librosa"], sys.modules["librosa.filters"]
    return bs.BSRoformer, mel.MelBandRoformer


def msst_forward(self, raw_audio, *, skip_connection=False, zero_dc=False, mel=False):
    """MSST's BSRoformer / MelBandRoformer ``forward`` (inference part) on a reference instance."""
    from einops import pack, rearrange, repeat, unpack

    device = raw_audio.device
    if raw_audio.ndim == 2:
        raw_audio = rearrange(raw_audio, "b t -> b 1 t")
    batch, channels, raw_audio_length = raw_audio.shape
    raw_audio, ps0 = pack([raw_audio], "* t")
    stft_window = self.stft_window_fn(device=device)
    stft_repr = torch.stft(raw_audio, **self.stft_kwargs, window=stft_window, return_complex=True)
    stft_repr = torch.view_as_real(stft_repr)
    stft_repr = unpack(stft_repr, ps0, "* f t c")[0]
    stft_repr = rearrange(stft_repr, "b s f t c -> b (f s) t c")
    if mel:
        batch_arange = torch.arange(batch, device=device)[..., None]
        x = stft_repr[batch_arange, self.freq_indices]
        x = rearrange(x, "b f t c -> b t (f c)")
    else:
        x = rearrange(stft_repr, "b f t c -> b t (f c)")
    x = self.band_split(x)
    store = [None] * len(self.layers)
    for i, transformer_block in enumerate(self.layers):
        if len(transformer_block) == 3:
            linear_transformer, time_transformer, freq_transformer = transformer_block
            x, ft_ps = pack([x], "b * d")
            x = linear_transformer(x)
            x, = unpack(x, ft_ps, "b * d")
        else:
            time_transformer, freq_transformer = transformer_block
        if skip_connection:
            for j in range(i):
                x = x + store[j]
        x = rearrange(x, "b t f d -> b f t d")
        x, ps = pack([x], "* t d")
        x = time_transformer(x)
        x, = unpack(x, ps, "* t d")
        x = rearrange(x, "b f t d -> b t f d")
        x, ps = pack([x], "* f d")
        x = freq_transformer(x)
        x, = unpack(x, ps, "* f d")
        if skip_connection:
            store[i] = x
    if not mel:
        x = self.final_norm(x)
    num_stems = len(self.mask_estimators)
    mask = torch.stack([fn(x) for fn in self.mask_estimators], dim=1)
    mask = rearrange(mask, "b n t (f c) -> b n f t c", c=2)
    stft_repr = rearrange(stft_repr, "b f t c -> b 1 f t c")
    stft_repr = torch.view_as_complex(stft_repr)
    mask = torch.view_as_complex(mask)
    if mel:
        mask = mask.type(stft_repr.dtype)
        scatter_indices = repeat(self.freq_indices, "f -> b n f t", b=batch, n=num_stems, t=stft_repr.shape[-1])
        stft_repr_expanded_stems = repeat(stft_repr, "b 1 ... -> b n ...", n=num_stems)
        masks_summed = torch.zeros_like(stft_repr_expanded_stems).scatter_add_(2, scatter_indices, mask)
        denom = repeat(self.num_bands_per_freq, "f -> (f r) 1", r=channels)
        mask = masks_summed / denom.clamp(min=1e-8)
    stft_repr = stft_repr * mask
    stft_repr = rearrange(stft_repr, "b n (f s) t -> (b n s) f t", s=self.audio_channels)
    if zero_dc:
        stft_repr = stft_repr.index_fill(1, torch.tensor(0, device=device), 0.)
    recon_audio = torch.istft(stft_repr, **self.stft_kwargs, window=stft_window, return_complex=False,
                              length=raw_audio_length)
    return rearrange(recon_audio, "(b n s) t -> b n s t", s=self.audio_channels, n=num_stems)


def msst_demix(model, mix, *, chunk_size, num_overlap, batch_size, instruments):
    """MSST's ``demix`` (generic mode) of a ``(channels, samples)`` mix -> ``{stem: (channels, samples)}``."""
    mix = torch.tensor(mix, dtype=torch.float32)
    num_instruments = len(instruments)
    fade_size = chunk_size // 10
    step = chunk_size // num_overlap
    border = chunk_size - step
    length_init = mix.shape[-1]
    fadein = torch.linspace(0, 1, fade_size)
    fadeout = torch.linspace(1, 0, fade_size)
    windowing_array = torch.ones(chunk_size)
    windowing_array[-fade_size:] = fadeout
    windowing_array[:fade_size] = fadein
    if length_init > 2 * border and border > 0:
        mix = nn.functional.pad(mix, (border, border), mode="reflect")
    with torch.inference_mode():
        req_shape = (num_instruments,) + mix.shape
        result = torch.zeros(req_shape, dtype=torch.float32)
        counter = torch.zeros(req_shape, dtype=torch.float32)
        i = 0
        batch_data = []
        batch_locations = []
        while i < mix.shape[1]:
            part = mix[:, i:i + chunk_size]
            chunk_len = part.shape[-1]
            pad_mode = "reflect" if chunk_len > chunk_size // 2 else "constant"
            part = nn.functional.pad(part, (0, chunk_size - chunk_len), mode=pad_mode, value=0)
            batch_data.append(part)
            batch_locations.append((i, chunk_len))
            i += step
            if len(batch_data) >= batch_size or i >= mix.shape[1]:
                arr = torch.stack(batch_data, dim=0)
                x = model(arr)
                window = windowing_array.clone()
                if i - step == 0:
                    window[:fade_size] = 1
                elif i >= mix.shape[1]:
                    window[-fade_size:] = 1
                for j, (start, seg_len) in enumerate(batch_locations):
                    result[..., start:start + seg_len] += x[j, ..., :seg_len].cpu() * window[..., :seg_len]
                    counter[..., start:start + seg_len] += window[..., :seg_len]
                batch_data.clear()
                batch_locations.clear()
        estimated_sources = (result / counter).cpu().numpy()
        np.nan_to_num(estimated_sources, copy=False, nan=0.0)
        if length_init > 2 * border and border > 0:
            estimated_sources = estimated_sources[..., border:-border]
    return {k: v for k, v in zip(instruments, estimated_sources)}


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ref - est|^2), in float64; inf when equal."""
    ref = np.asarray(ref, np.float64)
    err = ref - np.asarray(est, np.float64)
    e = float(np.sum(err * err))
    return float("inf") if e == 0 else 10 * np.log10(float(np.sum(ref * ref)) / e)


# ----------------------------------------------------------------- small test models, real format

def small_raw(arch: str, stems=("vocals", "other"), target=None, **model_over) -> dict:
    """A published-style config (published band layout, STFT and stems) with small dims."""
    model = {"dim": 16, "depth": 1, "stereo": True, "num_stems": 1 if target else len(stems),
             "time_transformer_depth": 1, "freq_transformer_depth": 1, "dim_head": 8, "heads": 2,
             "attn_dropout": 0.1, "ff_dropout": 0.1, "flash_attn": True, "dim_freqs_in": 1025,
             "stft_n_fft": 2048, "stft_hop_length": 441, "stft_win_length": 2048,
             "stft_normalized": False, "mask_estimator_depth": 2,
             "multi_stft_resolution_loss_weight": 1.0,
             "multi_stft_resolutions_window_sizes": (4096, 2048, 1024, 512, 256),
             "multi_stft_hop_size": 147, "multi_stft_normalized": False}
    if arch == BS_ROFORMER:
        model.update(linear_transformer_depth=0, freqs_per_bands=DEFAULT_FREQS_PER_BANDS)
    else:
        model.update(num_bands=60, sample_rate=44100)
    model.update(model_over)
    training = {"instruments": list(stems), "target_instrument": target, "use_amp": True}
    return {"audio": {"chunk_size": 8820, "dim_f": 1024, "dim_t": 21, "hop_length": 441,
                      "n_fft": 2048, "num_channels": 2, "sample_rate": 44100, "min_mean_abs": 0.0},
            "model": model, "training": training,
            "inference": {"batch_size": 1, "dim_t": 21, "num_overlap": 2}}


def write_yaml(path: Path, raw: dict) -> Path:
    text = yaml.dump(raw, sort_keys=False)          # tuples -> !!python/tuple, as published
    assert "!!python/tuple" in text
    path.write_text(text)
    return path


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial random weights (norm gains around 1, small linear weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("rotary_embed.freqs"):
                continue
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("gamma") or name.endswith("temperature"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(noise / max(1, p.shape[-1]) ** 0.5)


def save_pair(tmp_path: Path, raw: dict, state: dict, name: str = "model"):
    """The real on-disk format: <name>.yaml + <name>.ckpt (a plain state dict)."""
    yaml_path = write_yaml(tmp_path / f"{name}.yaml", raw)
    ckpt = tmp_path / f"{name}.ckpt"
    torch.save(state, ckpt)
    return yaml_path, ckpt
