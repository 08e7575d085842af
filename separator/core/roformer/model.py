"""BS-RoFormer and Mel-Band RoFormer nets in plain torch, for inference.

The module tree mirrors the classes ZFTurbo's Music-Source-Separation-Training (MSST) trains
(``models/bs_roformer/bs_roformer.py`` and ``mel_band_roformer.py``, themselves after
lucidrains' BS-RoFormer), so ``state_dict()`` has exactly the keys and shapes of the community
checkpoints, including one ``...rotary_embed.freqs`` per attention layer (the two rotary
embeddings, one for the time axis and one for the band axis, are each shared by all layers of
their axis, as in the reference).  The computation is the reference's, with these differences,
none of which changes the result beyond float rounding:

* no einops/beartype/rotary-embedding-torch: reshapes and the rotary rotation are plain torch;
  attention is ``torch.nn.functional.scaled_dot_product_attention`` (the reference's
  ``flash_attn`` switch only picks a kernel for the same maths, so it is ignored);
* the per-band layers (band split: RMSNorm + Linear per band; mask estimators: an MLP + GLU per
  band) are run as one batched matmul per run of consecutive equally sized bands, on stacks of
  the per-band weights (built on the first inference call, rebuilt whenever a weight is moved or
  changed; the per-band parameters then live in slices of the stacks, so nothing is held twice);
* the STFT, the complex masking and the iSTFT always run in float32 (outside autocast), and the
  iSTFT is always given the input length (MSST's newer BS-RoFormer does the same; for a chunk
  length that is a multiple of the hop, as in every published config, it changes nothing);
* the output is always ``(batch, stems, channels, samples)``, also for one stem.

**DC bin.**  MSST's newest classes take a ``zero_dc`` option that defaults to ``True`` and then
zero the DC bin of every output spectrum before the iSTFT; older MSST classes and
audio-separator's copies (which the published checkpoints were trained with or run in) have no
such step.  Published yamls do not set it, so here ``zero_dc`` defaults to ``False`` (DC kept,
as the checkpoints were trained) and only ``zero_dc: true`` in the yaml zeroes it.

Dropout, ``use_torch_checkpoint``, ``sage_attention`` and the multi-resolution STFT loss
settings only matter for training; :mod:`.config` accepts and drops them.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .mel import mel_band_mask

# lucidrains' / MSST's default BS-RoFormer band layout (62 bands, 1025 bins of a 2048-point STFT)
DEFAULT_FREQS_PER_BANDS: tuple[int, ...] = (
    (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129))


# ---------------------------------------------------------------------------- building blocks

class RMSNorm(nn.Module):
    """``F.normalize(x) * sqrt(dim) * gamma`` (the reference's RMSNorm; key ``gamma``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _l2norm(x) * self.scale * self.gamma


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    # normalised in float32 for half inputs (a sum of squares overflows float16)
    if x.dtype in (torch.float16, torch.bfloat16):
        return F.normalize(x.float(), dim=-1).to(x.dtype)
    return F.normalize(x, dim=-1)


class RotaryEmbedding(nn.Module):
    """Holds the rotary base frequencies (key ``freqs``, ``dim_head // 2`` values); the angles of
    position ``p`` are ``p * freqs``, each repeated for the pair of features it rotates."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.register_buffer("freqs", freqs)

    def cos_sin(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 ``(seq_len, dim)`` cosines and sines of the angles of positions ``0..seq_len-1``."""
        pos = torch.arange(seq_len, device=device, dtype=torch.float32)
        angles = pos[:, None] * self.freqs.to(device=device, dtype=torch.float32)[None, :]
        angles = angles.repeat_interleave(2, dim=-1)
        return angles.cos(), angles.sin()


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``t`` (..., seq, dim), computed in float32: each feature pair
    ``(x0, x1)`` becomes ``(x0 cos - x1 sin, x1 cos + x0 sin)``."""
    tf = t.float()
    x1, x2 = tf.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)
    return (tf * cos + rotated * sin).to(t.dtype)


class Attention(nn.Module):
    """Gated multi-head self-attention with rotary positions (keys ``norm``, ``to_qkv``,
    ``to_gates``, ``to_out.0``, ``rotary_embed``)."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary_embed: RotaryEmbedding | None):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner = heads * dim_head
        self.rotary_embed = rotary_embed
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = self.norm(x)
        b, n, _ = x.shape
        # 'b n (qkv h d) -> qkv b h n d'
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None and self.rotary_embed is not None:
            q = _rotate(q, *rope)
            k = _rotate(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)
        gates = self.to_gates(x).transpose(1, 2).unsqueeze(-1)        # 'b n h -> b h n 1'
        out = out * gates.sigmoid()
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out[0](out)


class LinearAttention(nn.Module):
    """El-Nouby et al.'s cross-covariance ("linear") attention over all time-band tokens (keys
    ``norm``, ``to_qkv.0``, ``temperature``, ``to_out.1``); used when
    ``linear_transformer_depth > 0``."""

    def __init__(self, dim: int, heads: int, dim_head: int, scale: float = 8.0):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.scale = scale
        inner = heads * dim_head
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(nn.Linear(dim, inner * 3, bias=False))
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(nn.Identity(), nn.Linear(inner, dim, bias=False))

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        x = self.norm(x)
        b, n, _ = x.shape
        # 'b n (qkv h d) -> qkv b h d n'
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 4, 1).unbind(0)
        q, k = _l2norm(q), _l2norm(k)
        q = q * self.temperature.exp()
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.permute(0, 3, 1, 2).reshape(b, n, self.heads * self.dim_head)  # 'b h d n -> b n (h d)'
        return self.to_out[1](out)


class FeedForward(nn.Module):
    """RMSNorm, Linear, GELU, Linear (keys ``net.0``, ``net.1``, ``net.4``)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(RMSNorm(dim), nn.Linear(dim, inner), nn.GELU(), nn.Identity(),
                                 nn.Linear(inner, dim), nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """``depth`` pre-norm residual (attention, feed-forward) layers, then ``norm`` (an RMSNorm in
    Mel-Band RoFormer, nothing in BS-RoFormer)."""

    def __init__(self, *, dim: int, depth: int, dim_head: int, heads: int, norm_output: bool,
                 rotary_embed: RotaryEmbedding | None = None, linear_attn: bool = False):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            attn = (LinearAttention(dim, heads, dim_head) if linear_attn
                    else Attention(dim, heads, dim_head, rotary_embed))
            self.layers.append(nn.ModuleList([attn, FeedForward(dim)]))
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        for attn, ff in self.layers:
            x = attn(x, rope) + x
            x = ff(x) + x
        return self.norm(x)


# ---------------------------------------------------------------------- per-band layers, batched

def _runs(sizes: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Runs of consecutive equal sizes: ``(first_band, count, size, feature_offset)``."""
    runs: list[tuple[int, int, int, int]] = []
    offset = 0
    for i, s in enumerate(sizes):
        if runs and runs[-1][2] == s:
            first, count, _, off = runs[-1]
            runs[-1] = (first, count + 1, s, off)
        else:
            runs.append((i, 1, s, offset))
        offset += s
    return runs


class _StackCache:
    """Stacked copies of per-band weights (one tensor per run and layer), rebuilt when any source
    parameter is replaced, moved or written in place (its data pointer or version changes).

    ``build()`` returns ``(value, links)``; each link ``(stacked, params)`` says that
    ``stacked[i]`` holds ``params[i]``.  Once built, each of those parameters is pointed at its
    slice of the stack (``p.data = stacked[i]``), so the weights are held once, not twice, and
    ``state_dict()`` is unchanged.  While gradients are wanted, the stacks are built afresh on
    every call (inside the autograd graph) and nothing is re-pointed."""

    def __init__(self):
        self._key = None
        self._value = None

    @staticmethod
    def _signature(params: list[torch.Tensor]):
        return tuple((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in params)

    def get(self, params: list[torch.Tensor], build):
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return build()[0]
        if self._signature(params) != self._key:
            self._value = None
            with torch.inference_mode(False), torch.no_grad():
                value, links = build()
                for stacked, group in links:
                    for i, p in enumerate(group):
                        p.data = stacked[i]
            self._value = value
            self._key = self._signature(params)
        return self._value


def _linear_bands(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x`` (..., g, i) through ``g`` Linear layers at once: ``weight`` (g, o, i), ``bias`` (g, o)."""
    if weight.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        weight = weight.to(x.dtype)
    y = torch.einsum("...gi,goi->...go", x, weight)
    return y + bias.to(y.dtype)


class BandSplit(nn.Module):
    """Per band: RMSNorm + Linear from that band's ``dim_in`` features to ``dim`` (keys
    ``to_features.{band}.0.gamma``, ``.1.weight``, ``.1.bias``).  ``(b, t, sum(dim_inputs))`` ->
    ``(b, t, bands, dim)``."""

    def __init__(self, dim: int, dim_inputs: Sequence[int]):
        super().__init__()
        self.dim_inputs = tuple(dim_inputs)
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(d), nn.Linear(d, dim)) for d in self.dim_inputs)
        self._runs = _runs(self.dim_inputs)
        self._cache = _StackCache()

    def _params(self) -> list[torch.Tensor]:
        return [p for net in self.to_features for p in (net[0].gamma, net[1].weight, net[1].bias)]

    def _stacks(self):
        def build():
            out, links = [], []
            for first, count, _, _ in self._runs:
                if count == 1:
                    out.append(None)
                    continue
                nets = self.to_features[first:first + count]
                groups = ([n[0].gamma for n in nets], [n[1].weight for n in nets],
                          [n[1].bias for n in nets])
                stacks = tuple(torch.stack(g) for g in groups)
                out.append(stacks)
                links.extend(zip(stacks, groups))
            return out, links
        return self._cache.get(self._params(), build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for (first, count, size, off), stacked in zip(self._runs, self._stacks()):
            xs = x[..., off:off + count * size]
            if stacked is None:
                outs.append(self.to_features[first](xs).unsqueeze(-2))
                continue
            gamma, weight, bias = stacked
            xs = _l2norm(xs.unflatten(-1, (count, size))) * (size ** 0.5) * gamma
            outs.append(_linear_bands(xs, weight, bias))
        return torch.cat(outs, dim=-2)


def _mlp(dim_in: int, dim_out: int, dim_hidden: int, n_linear: int) -> nn.Sequential:
    dims = (dim_in,) + (dim_hidden,) * (n_linear - 1) + (dim_out,)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < n_linear - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    """Per band: an MLP (``n_linear`` Linear layers, Tanh between) to ``2 * dim_in`` features and a
    GLU down to ``dim_in`` (keys ``to_freqs.{band}.0.{0,2,4..}``).  ``(b, t, bands, dim)`` ->
    ``(b, t, sum(dim_inputs))``."""

    def __init__(self, dim: int, dim_inputs: Sequence[int], n_linear: int, mlp_expansion_factor: int):
        super().__init__()
        self.dim_inputs = tuple(dim_inputs)
        self.n_linear = n_linear
        hidden = dim * mlp_expansion_factor
        self.to_freqs = nn.ModuleList(
            nn.Sequential(_mlp(dim, d * 2, hidden, n_linear), nn.GLU(dim=-1)) for d in self.dim_inputs)
        self._runs = _runs(self.dim_inputs)
        self._cache = _StackCache()

    def _linears(self, band: int) -> list[nn.Linear]:
        return [m for m in self.to_freqs[band][0] if isinstance(m, nn.Linear)]

    def _stacks(self):
        def build():
            out, links = [], []
            for first, count, _, _ in self._runs:
                if count == 1:
                    out.append(None)
                    continue
                per_layer = []
                for li in range(self.n_linear):
                    lins = [self._linears(b)[li] for b in range(first, first + count)]
                    groups = ([m.weight for m in lins], [m.bias for m in lins])
                    stacks = tuple(torch.stack(g) for g in groups)
                    per_layer.append(stacks)
                    links.extend(zip(stacks, groups))
                out.append(per_layer)
            return out, links
        params = [p for b in range(len(self.dim_inputs)) for m in self._linears(b) for p in (m.weight, m.bias)]
        return self._cache.get(params, build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for (first, count, size, _), stacked in zip(self._runs, self._stacks()):
            if stacked is None:
                outs.append(self.to_freqs[first](x[..., first, :]))
                continue
            h = x[..., first:first + count, :]
            for li, (weight, bias) in enumerate(stacked):
                h = _linear_bands(h, weight, bias)
                if li < self.n_linear - 1:
                    h = torch.tanh(h)
            outs.append(F.glu(h, dim=-1).flatten(-2))
        return torch.cat(outs, dim=-1)


# ------------------------------------------------------------------------------------ the nets

class _RoformerBase(nn.Module):
    """What both nets share: STFT in, axial transformer trunk, masks, iSTFT out."""

    def _init_trunk(self, *, dim, depth, stereo, num_stems, time_transformer_depth,
                    freq_transformer_depth, linear_transformer_depth, dim_head, heads,
                    stft_n_fft, stft_hop_length, stft_win_length, stft_normalized,
                    skip_connection, zero_dc, norm_output):
        self.stereo = bool(stereo)
        self.audio_channels = 2 if stereo else 1
        self.num_stems = int(num_stems)
        self.skip_connection = bool(skip_connection)
        self.zero_dc = bool(zero_dc)
        self.n_fft = int(stft_n_fft)
        self.hop_length = int(stft_hop_length)
        self.win_length = int(stft_win_length)
        self.stft_normalized = bool(stft_normalized)
        self.register_buffer("stft_window", torch.hann_window(self.win_length), persistent=False)

        time_rotary = RotaryEmbedding(dim_head)
        freq_rotary = RotaryEmbedding(dim_head)
        kw = dict(dim=dim, dim_head=dim_head, heads=heads, norm_output=norm_output)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            block = []
            if linear_transformer_depth > 0:
                block.append(Transformer(depth=linear_transformer_depth, linear_attn=True, **kw))
            block.append(Transformer(depth=time_transformer_depth, rotary_embed=time_rotary, **kw))
            block.append(Transformer(depth=freq_transformer_depth, rotary_embed=freq_rotary, **kw))
            self.layers.append(nn.ModuleList(block))
        # a tuple is not registered as a submodule: no extra state_dict keys
        self._rotary = (time_rotary, freq_rotary)

    # -- STFT domain, always float32

    def _stft(self, audio: torch.Tensor) -> torch.Tensor:
        """``(b, s, L)`` -> ``(b, F*s, T, 2)`` real view, channels interleaved per bin ('b (f s) t c')."""
        b, s, length = audio.shape
        with torch.autocast(audio.device.type, enabled=False):
            spec = torch.stft(audio.float().reshape(b * s, length), n_fft=self.n_fft,
                              hop_length=self.hop_length, win_length=self.win_length,
                              window=self.stft_window.float(), normalized=self.stft_normalized,
                              return_complex=True)
        spec = torch.view_as_real(spec)                                # (b*s, F, T, 2)
        n_bins, n_frames = spec.shape[1], spec.shape[2]
        return spec.view(b, s, n_bins, n_frames, 2).transpose(1, 2).reshape(b, n_bins * s, n_frames, 2)

    def _istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """complex ``(b, n, F*s, T)`` -> ``(b, n, s, length)`` float32."""
        b, n, fs, t = spec.shape
        s = self.audio_channels
        spec = spec.view(b, n, fs // s, s, t).transpose(2, 3).reshape(b * n * s, fs // s, t)
        if self.zero_dc:
            spec = spec.index_fill(1, torch.tensor(0, device=spec.device), 0.0)
        with torch.autocast(spec.device.type, enabled=False):
            audio = torch.istft(spec, n_fft=self.n_fft, hop_length=self.hop_length,
                                win_length=self.win_length, window=self.stft_window.float(),
                                normalized=self.stft_normalized, length=length)
        return audio.view(b, n, s, length)

    # -- the trunk

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, t, bands, dim)`` through the axial transformer blocks."""
        b, t, nb, d = x.shape
        time_rotary, freq_rotary = self._rotary
        rope_t = time_rotary.cos_sin(t, x.device)
        rope_f = freq_rotary.cos_sin(nb, x.device)
        store: list[torch.Tensor] = []
        for i, block in enumerate(self.layers):
            if len(block) == 3:
                linear_t, time_t, freq_t = block
                x = linear_t(x.reshape(b, t * nb, d)).reshape(b, t, nb, d)
            else:
                time_t, freq_t = block
            if self.skip_connection:
                for j in range(i):
                    x = x + store[j]
            x = time_t(x.transpose(1, 2).reshape(b * nb, t, d), rope_t)
            x = x.reshape(b, nb, t, d).transpose(1, 2).reshape(b * t, nb, d)
            x = freq_t(x, rope_f).reshape(b, t, nb, d)
            if self.skip_connection:
                store.append(x)
        return x

    def _masks(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, t, bands, dim)`` -> float32 real view ``(b, n, F', t, 2)`` of the complex masks."""
        mask = torch.stack([fn(x) for fn in self.mask_estimators], dim=1)   # (b, n, t, F'*2)
        b, n, t, _ = mask.shape
        return mask.float().view(b, n, t, -1, 2).transpose(2, 3)

    def _check_input(self, raw_audio: torch.Tensor) -> torch.Tensor:
        if raw_audio.ndim == 2:
            raw_audio = raw_audio.unsqueeze(1)
        if raw_audio.ndim != 3 or raw_audio.shape[1] != self.audio_channels:
            raise ValueError(f"expected audio of shape (batch, {self.audio_channels}, samples), "
                             f"got {tuple(raw_audio.shape)}")
        return raw_audio


class BSRoformer(_RoformerBase):
    """Band-Split RoFormer.  ``forward(audio)``: ``(batch, channels, samples)`` (or
    ``(batch, samples)`` when mono) -> ``(batch, num_stems, channels, samples)``, float32."""

    def __init__(self, dim: int, *, depth: int, stereo: bool = False, num_stems: int = 1,
                 time_transformer_depth: int = 2, freq_transformer_depth: int = 2,
                 linear_transformer_depth: int = 0,
                 freqs_per_bands: Sequence[int] = DEFAULT_FREQS_PER_BANDS,
                 dim_head: int = 64, heads: int = 8, stft_n_fft: int = 2048,
                 stft_hop_length: int = 512, stft_win_length: int = 2048,
                 stft_normalized: bool = False, mask_estimator_depth: int = 2,
                 mlp_expansion_factor: int = 4, skip_connection: bool = False,
                 zero_dc: bool = False):
        super().__init__()
        self._init_trunk(dim=dim, depth=depth, stereo=stereo, num_stems=num_stems,
                         time_transformer_depth=time_transformer_depth,
                         freq_transformer_depth=freq_transformer_depth,
                         linear_transformer_depth=linear_transformer_depth, dim_head=dim_head,
                         heads=heads, stft_n_fft=stft_n_fft, stft_hop_length=stft_hop_length,
                         stft_win_length=stft_win_length, stft_normalized=stft_normalized,
                         skip_connection=skip_connection, zero_dc=zero_dc, norm_output=False)
        freqs_per_bands = tuple(int(f) for f in freqs_per_bands)
        n_bins = self.n_fft // 2 + 1
        if len(freqs_per_bands) < 2 or sum(freqs_per_bands) != n_bins:
            raise ValueError(f"freqs_per_bands must have at least 2 bands summing to {n_bins} "
                             f"(stft_n_fft // 2 + 1), got {len(freqs_per_bands)} bands summing "
                             f"to {sum(freqs_per_bands)}")
        self.freqs_per_bands = freqs_per_bands
        dims = tuple(2 * f * self.audio_channels for f in freqs_per_bands)
        self.final_norm = RMSNorm(dim)
        self.band_split = BandSplit(dim, dims)
        # BS-RoFormer's MLP: mask_estimator_depth Linear layers in all
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, dims, mask_estimator_depth, mlp_expansion_factor)
            for _ in range(num_stems))

    def forward(self, raw_audio: torch.Tensor) -> torch.Tensor:
        raw_audio = self._check_input(raw_audio)
        b, _, length = raw_audio.shape
        stft_repr = self._stft(raw_audio)                        # (b, F*s, T, 2)
        t = stft_repr.shape[2]
        x = stft_repr.transpose(1, 2).reshape(b, t, -1)          # 'b f t c -> b t (f c)'
        x = self.band_split(x.to(self.final_norm.gamma.dtype))
        x = self.final_norm(self._trunk(x))
        mask = torch.view_as_complex(self._masks(x).contiguous())        # (b, n, F*s, T)
        spec = torch.view_as_complex(stft_repr).unsqueeze(1) * mask
        return self._istft(spec, length)


class MelBandRoformer(_RoformerBase):
    """Mel-Band RoFormer: overlapping mel bands (``num_bands`` of them, from a Slaney mel filter
    bank at ``sample_rate``); the masks of bins covered by several bands are averaged.  Same
    ``forward`` shapes as :class:`BSRoformer`."""

    def __init__(self, dim: int, *, depth: int, stereo: bool = False, num_stems: int = 1,
                 time_transformer_depth: int = 2, freq_transformer_depth: int = 2,
                 linear_transformer_depth: int = 0, num_bands: int = 60, dim_head: int = 64,
                 heads: int = 8, sample_rate: int = 44100, stft_n_fft: int = 2048,
                 stft_hop_length: int = 512, stft_win_length: int = 2048,
                 stft_normalized: bool = False, mask_estimator_depth: int = 1,
                 mlp_expansion_factor: int = 4, skip_connection: bool = False,
                 zero_dc: bool = False):
        super().__init__()
        self._init_trunk(dim=dim, depth=depth, stereo=stereo, num_stems=num_stems,
                         time_transformer_depth=time_transformer_depth,
                         freq_transformer_depth=freq_transformer_depth,
                         linear_transformer_depth=linear_transformer_depth, dim_head=dim_head,
                         heads=heads, stft_n_fft=stft_n_fft, stft_hop_length=stft_hop_length,
                         stft_win_length=stft_win_length, stft_normalized=stft_normalized,
                         skip_connection=skip_connection, zero_dc=zero_dc, norm_output=True)
        n_bins = self.n_fft // 2 + 1
        mask = torch.from_numpy(mel_band_mask(sample_rate, self.n_fft, num_bands))  # (bands, bins)
        if not bool(mask.any(dim=0).all()):
            raise ValueError(f"num_bands={num_bands} mel bands at sample_rate={sample_rate} leave "
                             f"some of the {n_bins} STFT bins uncovered")
        freq_indices = torch.arange(n_bins).expand(num_bands, n_bins)[mask]  # band-major
        if self.stereo:
            freq_indices = (freq_indices[:, None] * 2 + torch.arange(2)).reshape(-1)
        self.register_buffer("freq_indices", freq_indices, persistent=False)
        self._mask = mask
        per_freq = mask.sum(dim=0).float().clamp(min=1e-8).repeat_interleave(self.audio_channels)
        self.register_buffer("bands_per_bin", per_freq, persistent=False)       # (F*s,)
        self.num_freqs_per_band = tuple(int(v) for v in mask.sum(dim=1))
        dims = tuple(2 * f * self.audio_channels for f in self.num_freqs_per_band)
        self.band_split = BandSplit(dim, dims)
        # Mel-Band RoFormer's MLP: mask_estimator_depth hidden layers, i.e. one more Linear
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, dims, mask_estimator_depth + 1, mlp_expansion_factor)
            for _ in range(num_stems))

    def band_layout(self) -> dict[str, torch.Tensor]:
        """The band-layout tensors the reference derives from the mel filter bank (CPU), under
        its names: ``freq_indices``, ``freqs_per_band`` (bands x bins, bool),
        ``num_freqs_per_band``, ``num_bands_per_freq``."""
        mask = self._mask
        return {"freq_indices": self.freq_indices.cpu(), "freqs_per_band": mask,
                "num_freqs_per_band": mask.sum(dim=1), "num_bands_per_freq": mask.sum(dim=0)}

    def forward(self, raw_audio: torch.Tensor) -> torch.Tensor:
        raw_audio = self._check_input(raw_audio)
        b, _, length = raw_audio.shape
        stft_repr = self._stft(raw_audio)                        # (b, F*s, T, 2)
        t = stft_repr.shape[2]
        x = stft_repr.index_select(1, self.freq_indices)         # (b, F', T, 2)
        x = x.transpose(1, 2).reshape(b, t, -1)
        x = self.band_split(x.to(self.band_split.to_features[0][0].gamma.dtype))
        x = self._trunk(x)
        masks = self._masks(x)                                   # (b, n, F', T, 2)
        summed = masks.new_zeros((b, masks.shape[1], stft_repr.shape[1], t, 2))
        summed.index_add_(2, self.freq_indices, masks)
        averaged = torch.view_as_complex(summed) / self.bands_per_bin[:, None]
        spec = torch.view_as_complex(stft_repr).unsqueeze(1) * averaged
        return self._istft(spec, length)
