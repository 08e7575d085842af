"""The inference-only rewrites that make the models faster compute the same function.

* the bundled U-Net's up-sampling (:class:`CroppedConvTranspose2d`, polyphase form);
* Demucs' decoder transposed convolutions and self-attention (:mod:`separator.core.demucs.speed`);
* the malloc settings (:func:`separator.runtime.tune_malloc`), which must cut page faults.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demucs_fixtures as fx  # noqa: E402

from separator.core.demucs import speed as demucs_speed  # noqa: E402
from separator.core.demucs.speed import PolyphaseConvTranspose, optimize  # noqa: E402
from separator.core import packed_conv  # noqa: E402
from separator.core.packed_conv import PackedConv2d  # noqa: E402
from separator.core.spleeter.unet import (PHASES, CroppedConvTranspose2d, SpleeterUNet, expected_shapes,  # noqa: E402
                                          phase_weights, polyphase_weight)

ROOT = Path(__file__).resolve().parents[1]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- bundled U-Net
@pytest.mark.parametrize("cin,cout,h,w", [(512, 256, 4, 8), (64, 16, 6, 9), (32, 1, 16, 32), (16, 3, 5, 7),
                                           (2, 2, 1, 1), (24, 16, 1, 3)])
def test_cropped_conv_transpose_equals_transposed_conv_and_crop(cin, cout, h, w):
    torch.manual_seed(cin + cout)
    ours = CroppedConvTranspose2d(cin, cout)
    ref = nn.ConvTranspose2d(cin, cout, 5, stride=2)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, cin, h, w)
    with torch.no_grad():
        want = ref(x)[:, :, 1:-2, 1:-2]
        got = ours(x)
        assert got.shape == want.shape == (2, cout, 2 * h, 2 * w)
        assert rel_err(got, want) < 1e-5
        # channels-last input (what the model feeds) gives the same numbers
        got_cl = ours(x.contiguous(memory_format=torch.channels_last))
        assert rel_err(got_cl, want) < 1e-5
        # the cached polyphase kernel follows in-place changes of the weights (load_state_dict)
        ours.weight.mul_(-0.5)
        ref.weight.mul_(-0.5)
        assert rel_err(ours(x), ref(x)[:, :, 1:-2, 1:-2]) < 1e-5


def test_unet_keeps_the_checkpoint_names():
    names = set(expected_shapes())
    assert "up1.0.weight" in names and "up1.3.running_mean" in names and "up7.0.weight" in names
    assert expected_shapes()["up2.0.weight"] == (512, 128, 5, 5)


def _reference_unet(net: SpleeterUNet, x: torch.Tensor) -> torch.Tensor:
    """Spleeter's U-Net step by step with stock modules (ZeroPad2d + Conv2d, BatchNorm2d,
    LeakyReLU, ConvTranspose2d + crop): what the fast forward must equal."""
    skips, h = [], x
    for i in range(1, 7):
        c = getattr(net, f"down{i}_conv")(h)
        skips.append(c)
        h = getattr(net, f"down{i}_act")(c)

    def up(seq, t):
        tr = nn.ConvTranspose2d(seq[0].in_channels, seq[0].out_channels, 5, stride=2)
        tr.load_state_dict(seq[0].state_dict())
        return seq[3](seq[2](tr(t)[:, :, 1:-2, 1:-2]))

    u = up(net.up1, skips[5])
    for i, skip in zip(range(2, 7), reversed(skips[:5])):
        u = up(getattr(net, f"up{i}"), torch.cat([skip, u], dim=1))
    return net.up7(u) * x


def _random_unet(seed: int) -> SpleeterUNet:
    torch.manual_seed(seed)
    net = SpleeterUNet().eval()
    for m in net.modules():       # random but sane BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return net


def test_phase_kernels_keep_every_tap_of_the_polyphase_kernel():
    """The per-phase kernels are the polyphase kernel's blocks; everything they leave out is zero,
    so the split form computes only the 25 taps the transposed conv has per output 2x2 block."""
    torch.manual_seed(3)
    w = torch.randn(8, 5, 5, 5)                                   # (Cin, Cout, 5, 5)
    poly = polyphase_weight(w).view(5, 2, 2, 8, 3, 3)
    kernels = phase_weights(w)
    assert [tuple(k.shape[2:]) for k in kernels] == [(2, 2), (2, 3), (3, 2), (3, 3)]
    assert sum(k.shape[2] * k.shape[3] for k in kernels) == 25
    for (sh, sw), k in zip(PHASES, kernels):
        block = poly[:, sh, sw]
        kh, kw = k.shape[2:]
        assert torch.equal(block[:, :, :kh, :kw], k)
        assert not block[:, :, kh:].any() and not block[:, :, :, kw:].any()


def test_split_and_single_conv_forms_agree(monkeypatch):
    """The per-phase path (CPU, >= SPLIT_MIN_OUT outputs) and the single 3x3 conv + pixel shuffle
    give the same numbers, in float32 and in bf16 (to its rounding), channels-last or not."""
    torch.manual_seed(4)
    m = CroppedConvTranspose2d(48, 32).eval()
    x = torch.randn(2, 48, 9, 12)
    with torch.inference_mode():
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
            mm, xx = copy.deepcopy(m).to(dtype), x.to(dtype)
            for fmt in (torch.contiguous_format, torch.channels_last):
                xi = xx.contiguous(memory_format=fmt)
                monkeypatch.setattr(CroppedConvTranspose2d, "SPLIT_MIN_OUT", 1)
                split = mm(xi)
                monkeypatch.setattr(CroppedConvTranspose2d, "SPLIT_MIN_OUT", 10**6)
                single = mm(xi)
                assert split.dtype == dtype and split.is_contiguous(memory_format=fmt)
                assert rel_err(split.float(), single.float()) < tol


@pytest.mark.parametrize("channels_last", [False, True])
def test_unet_forward_equals_the_stock_modules(channels_last):
    net = _random_unet(1)
    x = torch.rand(2, 2, 128, 256)
    with torch.inference_mode():
        want = _reference_unet(net, x)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        got = net(x)
    assert got.shape == want.shape == x.shape
    assert rel_err(got, want) < 1e-5


def test_unet_in_bf16_matches_fp32_closely():
    net = _random_unet(0)
    x = torch.rand(1, 2, 64, 128)
    with torch.inference_mode():
        ref = net(x)
        half = copy.deepcopy(net).to(torch.bfloat16).to(memory_format=torch.channels_last)
        got = half(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()
    assert rel_err(got, ref) < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kw", [dict(kernel_size=5, stride=2), dict(kernel_size=3, padding=1),
                                dict(kernel_size=4, dilation=2, padding=3)])
def test_packed_conv_equals_conv2d(dtype, kw):
    if not packed_conv.available():
        pytest.skip("this torch build has no pre-packed oneDNN convolution")
    torch.manual_seed(3)
    conv = PackedConv2d(8, 12, **kw).to(dtype).requires_grad_(False)
    calls = []
    real = torch.ops.mkldnn._convolution_pointwise
    with torch.inference_mode():
        for shape in [(2, 8, 33, 47), (1, 8, 33, 47), (3, 8, 10, 9)]:    # packed for the first shape
            x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
            want = torch.nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
            got = conv(x)
            assert got.shape == want.shape
            assert rel_err(got.float(), want.float()) < (1e-6 if dtype == torch.float32 else 1e-2)
        calls.append(conv._packed._key)
        conv.weight.mul_(-2.0)                                             # in place, as load_state_dict
        want = torch.nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
        assert rel_err(conv(x).float(), want.float()) < (1e-6 if dtype == torch.float32 else 1e-2)
        assert conv._packed._key != calls[0]                               # re-packed
    assert real is torch.ops.mkldnn._convolution_pointwise


def test_packed_conv_is_a_plain_conv_where_it_cannot_pack(monkeypatch):
    conv = PackedConv2d(4, 6, kernel_size=3, padding=1)
    used = []
    monkeypatch.setattr(packed_conv, "packed_conv2d", packed_conv.packed_conv2d)
    x = torch.randn(1, 4, 9, 11, requires_grad=True)
    y = conv(x)                                    # autograd needed: plain conv, gradients flow
    y.sum().backward()
    assert x.grad is not None and conv._packed._key is None
    with torch.no_grad():
        conv(torch.randn(1, 4, 9, 11))            # NCHW input: plain conv, nothing packed
        used.append(conv._packed._key)
    assert used == [None]
    assert set(conv.state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError):
        PackedConv2d(4, 4, kernel_size=3, groups=2)


# --------------------------------------------------------------------------- private torch calls
# torch is a version range (pyproject.toml): where a private function the fast paths use is
# missing, the public way gives the same numbers.
@pytest.mark.parametrize("channels_last", [False, True])
def test_unet_without_private_leaky_relu_out_gives_the_same_numbers(channels_last, monkeypatch):
    net = _random_unet(2)
    x = torch.rand(1, 2, 64, 128)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = net(x)
    # F.leaky_relu itself calls torch._C._nn.leaky_relu in this torch, so the private function
    # cannot simply be deleted: it is replaced by one without the out= variant
    real, refused = torch._C._nn.leaky_relu, []

    def without_out(*args, **kwargs):
        if "out" in kwargs:
            refused.append(1)
            raise TypeError("leaky_relu() got an unexpected keyword argument 'out'")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch._C._nn, "leaky_relu", without_out)
    with torch.inference_mode():
        got = net(x)
    assert refused and torch.equal(got, want)


def test_packed_conv_without_private_ops_is_conv2d(monkeypatch):
    torch.manual_seed(4)
    conv = PackedConv2d(8, 12, kernel_size=5, stride=2).requires_grad_(False)
    x = torch.randn(2, 8, 33, 47).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        packed = conv(x)
    monkeypatch.delattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    assert not packed_conv.available()
    with torch.inference_mode():
        plain = conv(x)
        want = torch.nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    assert torch.equal(plain, want)
    assert rel_err(plain, packed) < 1e-6
    monkeypatch.undo()
    assert packed_conv.available() or not torch.backends.mkldnn.is_available()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fall-back reads /proc/cpuinfo")
def test_native_bf16_check_without_private_cpu_probes(monkeypatch):
    from separator.core import precision
    from separator.core.spleeter.model import auto_precision

    want, auto = precision.native_bf16_cpu(), auto_precision("cpu")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert precision.native_bf16_cpu() == want
    assert auto_precision("cpu") == auto


# --------------------------------------------------------------------------- Demucs
@pytest.mark.parametrize("make,shape", [
    (lambda: nn.ConvTranspose1d(12, 6, 8, 4), (2, 12, 37)),
    (lambda: nn.ConvTranspose2d(12, 6, (8, 1), (4, 1)), (2, 12, 37, 5)),
    (lambda: nn.ConvTranspose1d(3, 5, 4, 2, bias=False), (1, 3, 9)),
    (lambda: nn.ConvTranspose2d(4, 4, (6, 1), (3, 1)), (1, 4, 1, 3)),
])
def test_polyphase_transposed_conv_equals_the_original(make, shape):
    torch.manual_seed(1)
    tr = make()
    poly = PolyphaseConvTranspose(tr)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert poly(x).shape == tr(x).shape
        assert rel_err(poly(x), tr(x)) < 1e-5


def test_only_eligible_transposed_convs_are_rewritten():
    model = nn.Sequential(nn.ConvTranspose1d(4, 4, 8, 4),            # yes
                          nn.ConvTranspose1d(4, 4, 7, 4),            # kernel not a multiple of stride
                          nn.ConvTranspose1d(4, 4, 8, 4, padding=2), # padded
                          nn.ConvTranspose2d(4, 4, (8, 3), (4, 1)),  # 2-D kernel
                          nn.ConvTranspose1d(4, 4, 8, 4, groups=2))  # grouped
    assert demucs_speed._use_polyphase(model) == 1
    assert isinstance(model[0], PolyphaseConvTranspose)
    assert [type(m) for m in model[1:]] == [nn.ConvTranspose1d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                            nn.ConvTranspose1d]


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    stock = fx.make_tiny.tiny_htdemucs(seed=3).eval()
    fast = copy.deepcopy(stock)
    counts = optimize(fast)
    return stock, fast, counts


def test_optimized_htdemucs_computes_the_same_on_real_audio(tiny_pair):
    stock, fast, counts = tiny_pair
    assert counts["polyphase"] == 2 * 3 and counts["attention"] == 1   # freq + time decoders, depth 3
    clip = fx.real_clip()
    audio = fx.decode(clip, seconds=1.0) if clip is not None else fx.noise(1.0, seed=4)
    x = torch.from_numpy(audio.T.copy())[None]
    with torch.inference_mode():
        want, got = stock(x), fast(x)
    assert torch.isfinite(got).all()
    sdr = 10 * torch.log10((want ** 2).sum() / ((want - got) ** 2).sum())
    assert sdr > 100, float(sdr)
    # parameters and their names are the checkpoint's
    a, b = stock.state_dict(), fast.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def attention_pair():
    """A small HTDemucs whose self-attention can take torch's fast path (an even number of
    heads, which the tiny test models do not have), and its optimized copy."""
    from demucs.htdemucs import HTDemucs
    torch.manual_seed(8)
    stock = HTDemucs(sources=["drums", "bass", "other", "vocals"], channels=8, depth=2, t_layers=2,
                     t_heads=2, segment=1).eval()
    fast = copy.deepcopy(stock)
    optimize(fast)
    return stock, fast


def _native_attention_calls(monkeypatch) -> list:
    calls: list = []
    real = torch._native_multi_head_attention
    monkeypatch.setattr(torch, "_native_multi_head_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_attention_takes_the_regular_path_without_touching_the_global_switch(attention_pair, monkeypatch):
    """The transformer's attention layers are switched to a class that always takes the
    regular path (scaled_dot_product_attention): the process-wide fast-path switch is never
    set, the native fast-path kernel is never called (the stock model calls it), and the
    outputs equal the stock module run with the fast path off, exactly; the state_dict is
    unchanged."""
    from separator.core.demucs.speed import RegularPathAttention

    stock, fast = attention_pair
    x = torch.randn(1, 2, 44100)
    native = _native_attention_calls(monkeypatch)
    with torch.inference_mode():
        stock(x)
    assert native, "the stock model should take the fast path here"
    monkeypatch.undo()
    attn = [m for m in fast.crosstransformer.modules() if isinstance(m, nn.MultiheadAttention)]
    assert attn and all(type(m) is RegularPathAttention for m in attn)
    assert not any(type(m) is RegularPathAttention for m in stock.modules())
    before = torch.backends.mha.get_fastpath_enabled()
    toggled: list = []
    monkeypatch.setattr(torch.backends.mha, "set_fastpath_enabled", toggled.append)
    native = _native_attention_calls(monkeypatch)
    with torch.inference_mode():
        got = fast.crosstransformer(*_crosstransformer_inputs(fast, x))
    assert toggled == [] and native == [] and torch.backends.mha.get_fastpath_enabled() == before
    monkeypatch.undo()
    # the stock layers (same weights), with the fast path off for the comparison only
    regular = copy.deepcopy(fast.crosstransformer)
    for m in regular.modules():
        if type(m) is RegularPathAttention:
            m.__class__ = nn.MultiheadAttention
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode():
            want = regular(*_crosstransformer_inputs(fast, x))
    finally:
        torch.backends.mha.set_fastpath_enabled(before)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert list(regular.state_dict()) == list(fast.crosstransformer.state_dict())
    # the switch stays what it was even when a forward fails
    with pytest.raises((ValueError, RuntimeError, AssertionError)), torch.inference_mode():
        fast.crosstransformer(torch.randn(1, 3, 3, 3), torch.randn(1, 3, 3))
    assert torch.backends.mha.get_fastpath_enabled() == before


def _crosstransformer_inputs(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (frequency, time) branch inputs the cross-transformer of ``model`` gets for ``x``."""
    seen = []
    hook = model.crosstransformer.register_forward_pre_hook(lambda m, args: seen.append(args))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        hook.remove()
    return tuple(a.clone() for a in seen[0])


def test_attention_rewrite_copies_and_pickles(tiny_pair):
    import pickle

    from separator.core.demucs.speed import RegularPathAttention

    _, fast, _ = tiny_pair
    for twin in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert sum(type(m) is RegularPathAttention for m in twin.modules()) == \
            sum(type(m) is RegularPathAttention for m in fast.modules()) > 0
        x = torch.randn(1, 2, 22050)
        with torch.inference_mode():
            assert torch.equal(twin(x), fast(x))


def test_a_copy_of_an_optimized_model_is_independent(tiny_pair):
    _, fast, _ = tiny_pair
    twin = copy.deepcopy(fast)
    x = torch.randn(1, 2, 44100)
    with torch.inference_mode():
        want = twin(x)
        for p in fast.parameters():   # change the original in place: the copy must not follow
            p.add_(1.0)
        assert torch.equal(twin(x), want)
        assert not torch.allclose(fast(x), want)
        for p in fast.parameters():
            p.sub_(1.0)


# --------------------------------------------------------------------------- malloc
_FAULTS = """
import json, resource, torch
from separator import runtime
tuned = runtime.tune_malloc()
again = runtime.tune_malloc()
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv1d(2, 32, 5, padding=2), torch.nn.GELU(),
                          torch.nn.Conv1d(32, 32, 5, padding=2), torch.nn.GELU(),
                          torch.nn.Conv1d(32, 2, 5, padding=2))
x = torch.randn(1, 2, 300000)                    # ~38 MB activations, freed after each layer
with torch.inference_mode():
    net(x)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        net(x)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
print(json.dumps({"tuned": tuned, "again": again, "faults": faults}))
"""


def _faults(env_value: str) -> dict:
    env = dict(os.environ, SEPARATOR_MALLOC_TUNING=env_value, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env,
                         check=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_allocator_tuning_keeps_freed_activations_in_the_heap():
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    on, off = _faults("1"), _faults("0")
    assert on["tuned"] and on["again"] and not off["tuned"]
    assert off["faults"] > 100_000, off          # every forward maps its activations afresh
    assert on["faults"] < off["faults"] / 10, (on, off)


# --------------------------------------------------------------------------- group norms (CUDA rewrite)
@pytest.mark.parametrize("groups,shape,affine", [(1, (3, 8, 500), True), (4, (2, 8, 7, 33), True),
                                                 (1, (2, 6, 9, 40), False)])
def test_fast_group_norm_equals_group_norm(groups, shape, affine):
    torch.manual_seed(5)
    gn = nn.GroupNorm(groups, shape[1], eps=1e-5, affine=affine)
    if affine:
        with torch.no_grad():
            gn.weight.normal_()
            gn.bias.normal_()
    fast = demucs_speed.FastGroupNorm(gn)
    x = torch.randn(*shape) * 3 + 1
    with torch.inference_mode():
        want, got = gn(x), fast(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        half_in = fast(x.bfloat16())
    assert half_in.dtype == torch.float32                  # statistics in float32, as autocast's group_norm
    assert torch.allclose(half_in, gn(x.bfloat16().float()), atol=1e-4, rtol=1e-4)


def test_group_norm_rewrite_is_for_cuda_models_only():
    from demucs.htdemucs import HTDemucs
    torch.manual_seed(6)
    stock = HTDemucs(sources=["drums", "bass", "other", "vocals"], channels=8, depth=2, t_layers=1,
                     norm_starts=0, segment=1).eval()
    cpu_model, cuda_model = copy.deepcopy(stock), copy.deepcopy(stock)
    assert optimize(cpu_model)["group_norm"] == 0
    counts = optimize(cuda_model, "cuda")                  # rewrites only; nothing is moved
    assert counts["group_norm"] == sum(type(m) is nn.GroupNorm for m in stock.modules()) > 0
    assert not any(type(m) is nn.GroupNorm for m in cuda_model.modules())
    x = torch.from_numpy(fx.noise(1.0, seed=7).T.copy())[None]
    with torch.inference_mode():
        want, got = stock(x), cuda_model(x)
    sdr = 10 * torch.log10((want ** 2).sum() / ((want - got) ** 2).sum())
    assert sdr > 100, float(sdr)
    a, b = stock.state_dict(), cuda_model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
