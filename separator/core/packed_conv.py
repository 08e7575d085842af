"""2-D convolutions on CPU with the kernel reordered for oneDNN once, not on every call.

``F.conv2d`` on CPU hands oneDNN a plain ``(O, I, kh, kw)`` kernel, which oneDNN reorders
into its blocked layout on every call.  The bundled U-Net's small, deep layers do little work
per call, so for them the reorder is a large part of the convolution time.
:class:`PackedConv2d` keeps the reordered ("pre-packed") kernel, derived from the module's
own ``weight`` (the ``state_dict`` is unchanged; a changed weight is re-packed), and calls
oneDNN's convolution directly -- the same primitive and the same numbers as ``F.conv2d``
(tests/test_speed_rewrites.py checks equality).

This uses ``torch.ops.mkldnn._convolution_pointwise`` and
``torch._C._nn.mkldnn_reorder_conv2d_weight``: the pair that torch's own compiler
(inductor's weight pre-packing) uses on CPU, both private.  Where this torch lacks either or
they refuse an input, or for anything but channels-last float32/bfloat16 inference on CPU,
the module is a plain ``nn.Conv2d`` (``F.conv2d``): torch can be any version of the range
``pyproject.toml`` allows.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .tensor_cache import Derived

log = logging.getLogger(__name__)

_DTYPES = (torch.float32, torch.bfloat16)
_broken = False   # set once the pre-packed path has failed in this process


def _private_ops():
    """torch's pre-packing pair (private: inductor's), or None where this torch lacks either."""
    try:
        return torch._C._nn.mkldnn_reorder_conv2d_weight, torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


def available() -> bool:
    return not _broken and torch.backends.mkldnn.is_available() and _private_ops() is not None


def _as_pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def packed_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding,
                  dilation, cache: Derived) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation)`` (groups 1), with the kernel
    pre-packed in ``cache`` when ``x`` is a channels-last float32/bf16 CPU tensor."""
    global _broken
    usable = (x.dim() == 4 and x.device.type == "cpu" and x.dtype in _DTYPES and weight.dtype == x.dtype
              and (bias is None or bias.dtype == x.dtype)
              and x.is_contiguous(memory_format=torch.channels_last)
              and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
              and available())
    if not usable:
        return F.conv2d(x, weight, bias, stride, padding, dilation)
    s, p, d = _as_pair(stride), _as_pair(padding), _as_pair(dilation)
    reorder, conv = _private_ops()
    try:
        packed = cache.get((weight,), lambda: reorder(weight.detach().to_mkldnn(), p, s, d, 1, list(x.shape)),
                           extra=(tuple(s), tuple(p), tuple(d)))
        return conv(x, packed, None if bias is None else bias.detach(), p, s, d, 1, "none", [], "")
    except (RuntimeError, NotImplementedError, TypeError) as err:   # an unusual build or another
        # signature: plain convolutions from now on
        _broken = True
        log.debug("pre-packed oneDNN convolution unavailable (%s); using F.conv2d", err)
        return F.conv2d(x, weight, bias, stride, padding, dilation)


class PackedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (groups 1, zero padding) that runs with a pre-packed kernel on CPU."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("PackedConv2d supports groups=1 and numeric zero padding only")
        self._packed: Derived = Derived()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self._packed)


__all__ = ["PackedConv2d", "available", "packed_conv2d"]
