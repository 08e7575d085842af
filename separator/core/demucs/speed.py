"""Inference-only rewrites of a loaded Demucs model: same function, less CPU time.

Applied once at load time by :func:`separator.core.demucs.model.load_demucs`; the parameters (and
``state_dict``) stay those of the checkpoint.  Each rewrite computes the same sums in
another order, so outputs match the unmodified model to float rounding
(tests/test_speed_rewrites.py compares each with the original; the demucs-CLI parity tests
run through them).

* **Polyphase transposed convolutions.**  The decoders' ``ConvTranspose{1,2}d`` (kernel 8,
  stride 4) become one stride-1 convolution with ``stride`` x the output channels (kernel
  ``8 / 4 = 2``) and an interleave of the phases.  oneDNN's transposed convolutions are
  much slower than its direct ones of the same size on CPU.
* **Group norms as two reductions (CUDA only).**  torch's CUDA ``group_norm`` gives each
  (sample, group) row to one thread block: with Demucs's ``GroupNorm(1, C)`` over whole
  chunks that is a handful of blocks for a GPU with a hundred multiprocessors or more, most
  of which wait (benchmarks/RESULTS.md, section 5).  :class:`FastGroupNorm` computes the same statistics with
  ``torch.var_mean`` (a reduction split across the whole GPU), in float32 as autocast does.
* **Fused attention in the self-attention layers.**  ``nn.MultiheadAttention``'s inference
  "fast path" computes self-attention on CPU as explicit ``bmm`` + ``softmax`` over the
  whole ``T x T`` matrix; the regular path calls ``scaled_dot_product_attention`` (a flash
  kernel on CPU).  The transformer's attention layers always take the regular path
  (:class:`RegularPathAttention`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..tensor_cache import Derived


def _phase_weight(w: torch.Tensor, stride: int) -> torch.Tensor:
    """``(Cin, Cout, K, ...)`` transposed-conv weight -> ``(stride*Cout, Cin, K/stride, ...)`` weight
    of the equivalent direct conv (padding ``K/stride - 1``); output channel ``c*stride + r``
    is phase ``r`` of channel ``c``: ``W'[c*s + r, i, d] = w[i, c, r + s*(k-1-d)]``."""
    cin, cout, K = w.shape[:3]
    k = K // stride
    taps = w.reshape(cin, cout, k, stride, *w.shape[3:])          # [.., j, r] = w[.., r + s*j]
    taps = taps.flip(2)                                             # j -> d = k-1-j
    taps = taps.movedim(3, 2)                                       # (Cin, Cout, s, k, ...)
    return taps.reshape(cin, cout * stride, k, *w.shape[3:]).transpose(0, 1).contiguous()


def _polyphase_ok(m: nn.Module) -> bool:
    if not isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d)) or m.groups != 1:
        return False
    K, s = m.kernel_size[0], m.stride[0]
    rest_trivial = all(k == 1 and st == 1 for k, st in zip(m.kernel_size[1:], m.stride[1:]))
    return (s > 1 and K % s == 0 and rest_trivial and all(p == 0 for p in m.padding)
            and all(p == 0 for p in m.output_padding) and all(d == 1 for d in m.dilation))


class PolyphaseConvTranspose(nn.Module):
    """Drop-in for a ``ConvTranspose1d`` / ``ConvTranspose2d`` whose kernel (along the first
    spatial dim) is a multiple of its stride and whose other spatial dims are 1x1 / stride 1.
    Registers the original ``weight`` / ``bias`` parameters under their own names, so the
    model's ``state_dict`` is unchanged."""

    def __init__(self, tr: nn.ConvTranspose1d | nn.ConvTranspose2d) -> None:
        super().__init__()
        self.stride = tr.stride[0]
        self.taps = tr.kernel_size[0] // self.stride
        self.dims = 1 if isinstance(tr, nn.ConvTranspose1d) else 2
        self.weight = tr.weight
        self.bias = tr.bias
        self._derived: Derived[tuple[torch.Tensor, torch.Tensor | None]] = Derived()

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.weight, self.bias
        return self._derived.get((w, b), lambda: (
            _phase_weight(w.detach(), self.stride),
            None if b is None else b.detach().repeat_interleave(self.stride)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, pad = self.stride, self.taps - 1
        w, b = self._weights()
        if self.dims == 1:
            y = F.conv1d(x, w, b, padding=pad)                      # (B, s*C, M)
            B, _, M = y.shape
            return y.view(B, -1, s, M).transpose(2, 3).reshape(B, -1, M * s)
        y = F.conv2d(x, w, b, padding=(pad, 0))                     # (B, s*C, M, W)
        B, _, M, W = y.shape
        return y.view(B, -1, s, M, W).transpose(2, 3).reshape(B, -1, M * s, W)


def _use_polyphase(model: nn.Module) -> int:
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _polyphase_ok(child):
                setattr(parent, name, PolyphaseConvTranspose(child))
                n += 1
    return n


class FastGroupNorm(nn.Module):
    """Drop-in for an ``nn.GroupNorm`` (exactly that class: demucs's ``MyGroupNorm``
    transposes its input first and is left alone).  Statistics and output in float32 (as
    autocast runs ``group_norm``); registers the original ``weight`` / ``bias``."""

    def __init__(self, gn: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups, self.eps, self.affine = gn.num_groups, gn.eps, gn.affine
        self.weight = gn.weight
        self.bias = gn.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[:2]
        g = x.float().reshape(B, self.num_groups, -1)
        var, mean = torch.var_mean(g, dim=-1, keepdim=True, correction=0)
        y = ((g - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if not self.affine:
            return y
        shape = (1, C) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.bias.float().view(shape), y, self.weight.float().view(shape))


def _fast_group_norms(model: nn.Module) -> int:
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.GroupNorm:
                setattr(parent, name, FastGroupNorm(child))
                n += 1
    return n


class RegularPathAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` that always takes the regular path,
    ``F.multi_head_attention_forward`` (which calls ``scaled_dot_product_attention`` when no
    weights are asked for), never the inference fast path.  Instances are switched to this
    class in place (:func:`_regular_path_attention`): same parameters and ``state_dict``,
    copied and pickled like any module, and nothing process-wide is toggled (the fast path's
    switch, ``torch.backends.mha``, is global and would race between threads)."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batched = self.batch_first and query.dim() == 3
        if batched:   # transposed keeping the "is" relations, which select the packed projection
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        separate = not self._qkv_same_embed_dim
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, self.out_proj.weight,
            self.out_proj.bias, training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask, use_separate_proj_weight=separate,
            q_proj_weight=self.q_proj_weight if separate else None,
            k_proj_weight=self.k_proj_weight if separate else None,
            v_proj_weight=self.v_proj_weight if separate else None,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        return (out.transpose(1, 0) if batched else out), weights


def _regular_path_attention(module: nn.Module) -> int:
    """Switch every ``nn.MultiheadAttention`` (exactly that class) in ``module`` to
    :class:`RegularPathAttention`; returns how many."""
    n = 0
    for m in module.modules():
        if type(m) is nn.MultiheadAttention:
            m.__class__ = RegularPathAttention
            n += 1
    return n


def optimize(model: nn.Module, device: str | torch.device = "cpu") -> dict[str, int]:
    """Rewrite ``model`` (one Demucs model, not a bag) in place for inference on ``device``;
    returns counts."""
    counts = {"polyphase": _use_polyphase(model), "attention": 0,
              "group_norm": _fast_group_norms(model) if torch.device(device).type == "cuda" else 0}
    for name in ("crosstransformer",):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module) and _regular_path_attention(sub):
            counts["attention"] += 1
    return counts


__all__ = ["optimize", "FastGroupNorm", "PolyphaseConvTranspose", "RegularPathAttention"]
