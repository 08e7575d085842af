"""Streaming chunked inference (separator.core.roformer.RoformerSeparator) against MSST's
``demix`` (generic mode; a faithful copy in tests/roformer_ref.py, MIT, from ZFTurbo's
Music-Source-Separation-Training) run on the reference model classes, for both architectures
and inputs shorter than a chunk, exactly one chunk, several chunks and a ragged length.
The chunking itself is also checked bit for bit on a cheap stand-in model over many lengths,
overlaps, batch sizes and block splits, and for bounded memory on a long stream.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from separator.core.roformer import (BS_ROFORMER, MEL_BAND_ROFORMER, NormStats,
                                     RoformerSeparator, build_model, load_weights, parse_config,
                                     read_config)
from separator.core.roformer.demix import _Stream

from roformer_ref import msst_demix, randomize, reference_classes, save_pair, small_raw, snr_db

try:
    REF_BS, REF_MEL = reference_classes()
    REF_SKIP = ""
except ImportError as e:  # pragma: no cover - depends on the dev environment
    REF_BS = REF_MEL = None
    REF_SKIP = (f"reference RoFormer classes not importable ({e}); install the dev extra and "
                f"audio-separator==0.47.1 with --no-deps (scripts/setup.sh does)")
needs_ref = pytest.mark.skipif(REF_BS is None, reason=REF_SKIP or "reference available")

CHUNK = 8820          # 0.2 s at 44.1 kHz: 21 STFT frames of hop 441
PARITY_DB = 100.0


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These small models run faster single-threaded, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_blocks(x: np.ndarray, rng: np.random.Generator, max_block: int = 6000):
    """``x`` (frames, channels) cut at random places (blocks of 1 .. max_block frames)."""
    i = 0
    while i < len(x):
        n = int(rng.integers(1, max_block + 1))
        yield x[i:i + n]
        i += n


def run_stream(sep: RoformerSeparator, x: np.ndarray, rng, **kw) -> dict[str, np.ndarray]:
    progress: list[int] = []
    outs = list(sep.separate_stream(random_blocks(x, rng), progress=progress.append, **kw))
    got = {s: np.concatenate([o.stems[s] for o in outs]) if outs else np.zeros((0, x.shape[1]), np.float32)
           for s in sep.sources}
    assert sum(progress) == len(x)
    if outs and x.shape[1] == sep.audio_channels:   # each block carries the input frames it came from
        assert all(len(o.mixture) == len(o.stems[sep.sources[0]]) for o in outs)
        np.testing.assert_array_equal(np.concatenate([o.mixture for o in outs]), x)
    for s, a in got.items():
        assert a.shape == (len(x), sep.audio_channels) and a.dtype == np.float32, s
    return got


# ------------------------------------------------------------------- real nets vs the reference

LENGTHS = {"shorter_than_chunk": 5000, "one_chunk": CHUNK, "several_chunks": 4 * CHUNK,
           "ragged": 2 * CHUNK + 4411}


REFERENCE_CASES = [(BS_ROFORMER, None, case) for case in LENGTHS] + \
    [(MEL_BAND_ROFORMER, "vocals", case) for case in LENGTHS] + [(BS_ROFORMER, "vocals", "ragged")]


@needs_ref
@pytest.mark.parametrize("arch,target,case", REFERENCE_CASES,
                         ids=[f"{'bs' if a == BS_ROFORMER else 'mel'}_{'target' if t else '2stems'}-{c}"
                              for a, t, c in REFERENCE_CASES])
def test_stream_matches_msst_demix_on_reference(tmp_path, arch, target, case):
    """End to end: our net (weights from the reference's state dict, through .ckpt/.yaml) and
    our streaming demix against MSST's demix on the reference net."""
    raw = small_raw(arch, stems=("vocals", "other"), target=target)
    raw["inference"].update(batch_size=2 if case == "several_chunks" else 1, num_overlap=2)
    ref_cls = REF_BS if arch == BS_ROFORMER else REF_MEL
    ref = ref_cls(**raw["model"]).eval()
    randomize(ref, seed=11)
    yaml_path, ckpt = save_pair(tmp_path, raw, ref.state_dict())
    cfg = read_config(yaml_path)
    sep = RoformerSeparator(load_weights(build_model(cfg), ckpt), cfg)

    rng = np.random.default_rng(len(case))
    x = (0.3 * rng.standard_normal((LENGTHS[case], 2))).astype(np.float32)
    got = run_stream(sep, x, rng)
    expected = msst_demix(ref, x.T, chunk_size=cfg.chunk_size, num_overlap=cfg.num_overlap,
                          batch_size=cfg.batch_size, instruments=cfg.stems)
    for s in cfg.stems:
        assert snr_db(expected[s], got[s].T) > PARITY_DB, s


# ------------------------------------------------------------- chunking on a stand-in model

class StandIn(nn.Module):
    """Cheap, position-dependent and nonlinear, so misplaced or misweighted chunks show."""

    def __init__(self, n_stems: int):
        super().__init__()
        self.n_stems = n_stems

    def forward(self, x):                 # (b, s, t) -> (b, n, s, t)
        ramp = torch.linspace(0.5, 1.5, x.shape[-1])
        return torch.stack([torch.tanh(x * (i + 1)) * ramp + 0.01 * (i + 1)
                            for i in range(self.n_stems)], dim=1)


def stand_in_separator(num_overlap=2, batch_size=1, **kw):
    raw = small_raw(BS_ROFORMER)
    raw["inference"].update(num_overlap=num_overlap, batch_size=batch_size)
    cfg = parse_config(raw)
    return cfg, RoformerSeparator(StandIn(len(cfg.stems)), cfg, **kw)


@pytest.mark.parametrize("num_overlap", [1, 2, 4, 5])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_chunking_is_msst_demix_exactly(num_overlap, batch_size):
    cfg, sep = stand_in_separator(num_overlap, batch_size)
    step = CHUNK // num_overlap
    border = CHUNK - step
    rng = np.random.default_rng(num_overlap * 10 + batch_size)
    lengths = {1, CHUNK // 2, CHUNK // 2 + 1, step + 1, CHUNK, CHUNK + 1,
               2 * border, 2 * border + 1, 3 * CHUNK + 7}
    for n in sorted(lengths):
        x = rng.standard_normal((n, 2)).astype(np.float32)
        got = run_stream(sep, x, rng)
        expected = msst_demix(sep.model, x.T, chunk_size=CHUNK, num_overlap=num_overlap,
                              batch_size=batch_size, instruments=cfg.stems)
        for s in cfg.stems:
            np.testing.assert_array_equal(expected[s], got[s].T, err_msg=f"length {n}, {s}")


@pytest.mark.parametrize("num_overlap", [2, 4])
def test_chunks_msst_throws_away_are_not_run(num_overlap):
    """MSST runs every chunk that starts before the padded end; the ones starting in the end
    padding only feed trimmed samples, and we skip them: num_overlap - 1 fewer chunks."""
    cfg, sep = stand_in_separator(num_overlap, batch_size=1)
    seen: list[int] = []
    inner = sep.model.forward
    sep.model.forward = lambda x: (seen.append(x.shape[0]), inner(x))[1]
    n = 5 * CHUNK + 77
    sep.separate(np.random.default_rng(1).standard_normal((n, 2)).astype(np.float32))
    step = CHUNK // num_overlap
    padded = n + 2 * (CHUNK - step)
    assert sum(seen) == -(-padded // step) - (num_overlap - 1)


def test_block_splits_do_not_matter():
    cfg, sep = stand_in_separator(num_overlap=4, batch_size=2)
    x = np.random.default_rng(0).standard_normal((3 * CHUNK + 123, 2)).astype(np.float32)
    whole = sep.separate(x)
    ones = list(sep.separate_stream(x[i:i + 1] for i in range(len(x))))
    for s in cfg.stems:
        np.testing.assert_array_equal(whole[s], np.concatenate([o.stems[s] for o in ones]))
    np.testing.assert_array_equal(np.concatenate([o.mixture for o in ones]), x)


def test_output_streams_before_the_input_ends_and_memory_is_bounded():
    cfg, sep = stand_in_separator(num_overlap=2, batch_size=2)
    n_blocks, block = 600, 1000               # 6e5 frames, ~68 chunks
    rng = np.random.default_rng(1)
    consumed = []

    def blocks():
        for i in range(n_blocks):
            consumed.append(i)
            yield rng.standard_normal((block, 2)).astype(np.float32)

    stream = _Stream(sep, None, None)
    sizes, first_output_at, total = [], None, 0
    for out in stream.run(blocks()):
        if first_output_at is None:
            first_output_at = len(consumed)
        total += len(out.stems["vocals"])
        sizes.append((stream.buf.shape[1], stream.acc.shape[2], stream.cnt.shape[0], stream.raw.size))
    assert total == n_blocks * block
    assert first_output_at is not None and first_output_at < 20
    bound = 3 * CHUNK + sep.batch_size * sep.step
    assert max(max(s) for s in sizes) <= bound, max(sizes)

    # one huge block: still taken a chunk at a time
    stream = _Stream(sep, None, None)
    huge = rng.standard_normal((40 * CHUNK, 2)).astype(np.float32)
    outputs = 0
    for out in stream.run([huge]):
        outputs += 1
        assert max(stream.buf.shape[1], stream.acc.shape[2], stream.raw.size) <= bound
    assert outputs > 30


def test_mono_input_to_stereo_model_and_channel_errors():
    cfg, sep = stand_in_separator()
    mono = np.random.default_rng(2).standard_normal((CHUNK + 5, 1)).astype(np.float32)
    out = sep.separate(mono)
    expected = sep.separate(np.repeat(mono, 2, axis=1))
    for s in cfg.stems:
        assert out[s].shape == (CHUNK + 5, 2)
        np.testing.assert_array_equal(out[s], expected[s])
    with pytest.raises(ValueError, match="takes 2 channel"):
        sep.separate(np.zeros((100, 3), np.float32))
    assert sep.separate(np.zeros((0, 2), np.float32))["vocals"].shape == (0, 2)


def test_normalize_is_msst_normalize_audio():
    raw = small_raw(BS_ROFORMER)
    raw["inference"]["normalize"] = True
    cfg = parse_config(raw)
    sep = RoformerSeparator(StandIn(2), cfg)
    x = (0.2 + 0.5 * np.random.default_rng(3).standard_normal((3 * CHUNK, 2))).astype(np.float32)
    # MSST inference: normalize_audio (mono mean/std), demix, denormalize_audio
    mix = x.T.astype(np.float64)
    mono = mix.mean(0)
    mean, std = mono.mean(), mono.std()
    expected = msst_demix(sep.model, (mix - mean) / std, chunk_size=CHUNK, num_overlap=2,
                          batch_size=1, instruments=cfg.stems)
    got = sep.separate(x)
    for s in cfg.stems:
        assert snr_db(expected[s] * std + mean, got[s].T) > PARITY_DB
    with pytest.raises(ValueError, match="norm_stats"):
        list(sep.separate_stream([x]))
    stats = NormStats()
    for i in range(0, len(x), 1000):
        stats.update(x[i:i + 1000])
    streamed = list(sep.separate_stream([x[:5000], x[5000:]], norm_stats=stats))
    for s in cfg.stems:
        assert snr_db(got[s], np.concatenate([o.stems[s] for o in streamed])) > PARITY_DB
    np.testing.assert_array_equal(np.concatenate([o.mixture for o in streamed]), x)   # not normalised


def test_extract_instrumental_is_mix_minus_vocals():
    raw = small_raw(BS_ROFORMER, stems=("other", "vocals"))
    cfg = parse_config(raw)
    sep = RoformerSeparator(StandIn(2), cfg, extract_instrumental=True)
    assert sep.sources == ("other", "vocals", "instrumental")
    x = np.random.default_rng(4).standard_normal((2 * CHUNK + 9, 2)).astype(np.float32)
    outs = list(sep.separate_stream(random_blocks(x, np.random.default_rng(5))))
    got = {s: np.concatenate([o.stems[s] for o in outs]) for s in sep.sources}
    np.testing.assert_array_equal(got["instrumental"], x - got["vocals"])
    np.testing.assert_array_equal(np.concatenate([o.mixture for o in outs]), x)


def test_precision_and_device_arguments():
    raw = small_raw(BS_ROFORMER, target="vocals")
    cfg = parse_config(raw)
    model = build_model(cfg)
    randomize(model, 9)
    x = (0.3 * np.random.default_rng(6).standard_normal((5000, 2))).astype(np.float32)
    fp32 = RoformerSeparator(model, cfg).separate(x)["vocals"]
    bf16 = RoformerSeparator(model, cfg, precision="bf16").separate(x)["vocals"]
    assert np.isfinite(bf16).all() and snr_db(fp32, bf16) > 15
    with pytest.raises(ValueError, match="needs a CUDA device"):
        RoformerSeparator(model, cfg, precision="fp16")
    with pytest.raises(ValueError, match="precision must be"):
        RoformerSeparator(model, cfg, precision="int8")
    with pytest.raises(ValueError, match="device must be"):
        RoformerSeparator(model, cfg, device="meta")
    sep = RoformerSeparator(model, cfg, batch_size=3, num_overlap=4)
    assert (sep.batch_size, sep.num_overlap, sep.step, sep.samplerate, sep.sources) == (
        3, 4, CHUNK // 4, 44100, ("vocals",))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch", [BS_ROFORMER, MEL_BAND_ROFORMER])
def test_cuda_matches_cpu(arch):
    cfg = parse_config(small_raw(arch, target="vocals"))
    model = build_model(cfg)
    randomize(model, 10)
    x = (0.3 * np.random.default_rng(7).standard_normal((3 * CHUNK + 11, 2))).astype(np.float32)
    cpu = RoformerSeparator(model, cfg).separate(x)["vocals"]
    for precision, floor in (("fp32", 60), ("bf16", 15), ("fp16", 20)):
        got = RoformerSeparator(model, cfg, device="cuda", precision=precision).separate(x)["vocals"]
        assert np.isfinite(got).all() and snr_db(cpu, got) > floor, precision
