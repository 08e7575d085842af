"""RoFormer models (separator.core.roformer): config reading, weights loading, and forward parity
with the reference classes (audio-separator 0.47.1's copies of MSST's BS-RoFormer and Mel-Band
RoFormer; see tests/roformer_ref.py).  Published yamls under tests/data/roformer come from
ZFTurbo's Music-Source-Separation-Training (MIT); see tests/data/roformer/README.md.

Models here are random-init and small (dim 16, depth 1, 2 heads of 8) but keep the published
band layouts, STFT settings (n_fft 2048, hop 441) and stem lists, and are saved in the real
format (.ckpt state dict + .yaml with !!python/tuple tags) and loaded through the package.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from separator.core.roformer import (BS_ROFORMER, MEL_BAND_ROFORMER, RoformerConfigError,
                                     RoformerWeightsError, build_model, load_weights,
                                     parse_config, read_config)
from separator.core.roformer.mel import mel_band_mask
from separator.core.roformer.model import DEFAULT_FREQS_PER_BANDS

from roformer_ref import (msst_forward, randomize, reference_classes, save_pair, small_raw,
                          snr_db)

DATA = Path(__file__).parent / "data" / "roformer"
EP317 = DATA / "model_bs_roformer_ep_317_sdr_12.9755.yaml"
KJ_MEL = DATA / "config_vocals_mel_band_roformer_kj.yaml"
MEGA = DATA / "mvsep_mega_model_bs_roformer_53_stems.yaml"

try:
    REF_BS, REF_MEL = reference_classes()
    REF_SKIP = ""
except ImportError as e:  # pragma: no cover - depends on the dev environment
    REF_BS = REF_MEL = None
    REF_SKIP = (f"reference RoFormer classes not importable ({e}); install the dev extra and "
                f"audio-separator==0.47.1 with --no-deps (scripts/setup.sh does)")
needs_ref = pytest.mark.skipif(REF_BS is None, reason=REF_SKIP or "reference available")

PARITY_DB = 100.0     # float32 rounding gives ~130 dB or more; the requirement is 60 dB


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These small models run faster single-threaded, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ helpers

def make_reference(raw: dict, seed: int = 0):
    cls = REF_BS if "freqs_per_bands" in raw["model"] else REF_MEL
    ref = cls(**raw["model"]).eval()
    randomize(ref, seed)
    return ref


def load_ours(yaml_path: Path, ckpt: Path):
    cfg = read_config(yaml_path)
    return cfg, load_weights(build_model(cfg), ckpt)


# ----------------------------------------------------------------------- published configs

def test_published_bs_roformer_yaml_parses_as_shipped():
    cfg = read_config(EP317)
    assert cfg.architecture == BS_ROFORMER
    assert cfg.stems == ("vocals",)                  # target_instrument -> one stem
    assert (cfg.samplerate, cfg.audio_channels) == (44100, 2)
    assert (cfg.chunk_size, cfg.num_overlap, cfg.batch_size, cfg.normalize) == (352800, 2, 4, False)
    kw = cfg.model_kwargs
    assert kw["freqs_per_bands"] == DEFAULT_FREQS_PER_BANDS and sum(kw["freqs_per_bands"]) == 1025
    assert (kw["dim"], kw["depth"], kw["num_stems"], kw["stft_hop_length"]) == (512, 12, 1, 441)
    assert kw["zero_dc"] is False and kw["mask_estimator_depth"] == 2
    assert isinstance(cfg.raw["model"]["multi_stft_resolutions_window_sizes"], tuple)
    assert (cfg.step, cfg.border, cfg.fade_size) == (176400, 176400, 35280)


def test_published_mel_band_roformer_yaml_parses_as_shipped():
    cfg = read_config(KJ_MEL)
    assert cfg.architecture == MEL_BAND_ROFORMER
    assert cfg.stems == ("vocals",)
    kw = cfg.model_kwargs
    assert (kw["num_bands"], kw["sample_rate"], kw["dim"], kw["depth"]) == (60, 44100, 384, 6)
    assert kw["mask_estimator_depth"] == 2 and kw["linear_transformer_depth"] == 0
    assert (cfg.chunk_size, cfg.num_overlap, cfg.batch_size) == (352800, 2, 4)


def test_published_newer_yaml_parses_as_shipped():
    cfg = read_config(MEGA)
    assert cfg.architecture == BS_ROFORMER          # from training.model_type
    assert len(cfg.stems) == 53 and cfg.stems[0] == "accordion" and cfg.stems[-1] == "woodwind"
    assert cfg.chunk_size == 882000                  # inference.chunk_size overrides audio's
    kw = cfg.model_kwargs
    assert (kw["mlp_expansion_factor"], kw["skip_connection"], kw["num_stems"]) == (2, False, 53)
    assert kw["stft_hop_length"] == 512


def test_published_configs_build_the_reference_shapes():
    # the real nets are big; compare key sets/shapes for the smaller KJ mel net only, cheaply
    if REF_BS is None:
        pytest.skip(REF_SKIP)
    raw = yaml.load(KJ_MEL.read_text(), Loader=yaml.UnsafeLoader)    # test only: trusted file
    raw["model"].update(dim=8, depth=1)
    cfg = parse_config(raw)
    ours = build_model(cfg).state_dict()
    theirs = REF_MEL(**raw["model"]).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


# ------------------------------------------------------------------------------ config checks

def test_yaml_loader_refuses_python_objects(tmp_path):
    evil = "audio: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(RoformerConfigError, match="only plain YAML"):
        parse_config(evil, source="evil.yaml")
    with pytest.raises(RoformerConfigError, match="python/tuple must tag a sequence"):
        parse_config("model: !!python/tuple {a: 1}\n")
    with pytest.raises(RoformerConfigError, match="cannot read"):
        read_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("section,key,match", [
    ("model", "bogus_option", "unknown option model.bogus_option"),
    ("audio", "bogus", "unknown option audio.bogus"),
    ("inference", "bogus", "unknown option inference.bogus"),
    ("model", "num_bands", "num_bands .*an option of mel_band_roformer"),
])
def test_unknown_options_are_named(section, key, match):
    raw = small_raw(BS_ROFORMER)
    raw[section][key] = 1
    with pytest.raises(RoformerConfigError, match=match):
        parse_config(raw, architecture=BS_ROFORMER if key == "num_bands" else None)


def test_unknown_section_and_unsupported_options():
    raw = small_raw(BS_ROFORMER)
    raw["mystery"] = {}
    with pytest.raises(RoformerConfigError, match="unknown section 'mystery'"):
        parse_config(raw)
    for key in ("use_pope", "use_shared_bias"):
        raw = small_raw(BS_ROFORMER, **{key: True})
        with pytest.raises(RoformerConfigError, match=f"model.{key}"):
            parse_config(raw)
        parse_config(small_raw(BS_ROFORMER, **{key: False}))        # off: accepted
    # training-only and kernel options are accepted
    parse_config(small_raw(MEL_BAND_ROFORMER, use_torch_checkpoint=True, sage_attention=True,
                           match_input_audio_length=True))


def test_stems_follow_msst_target_instrument():
    cfg = parse_config(small_raw(BS_ROFORMER, stems=("vocals", "other"), target="vocals"))
    assert cfg.stems == ("vocals",) and cfg.model_kwargs["num_stems"] == 1
    cfg = parse_config(small_raw(BS_ROFORMER, stems=("vocals", "bass", "drums", "other")))
    assert cfg.stems == ("vocals", "bass", "drums", "other")
    raw = small_raw(BS_ROFORMER, stems=("vocals", "other"), target="vocals")
    raw["model"]["num_stems"] = 2
    with pytest.raises(RoformerConfigError, match="num_stems is 2 but training.target_instrument"):
        parse_config(raw)


def test_architecture_detection_and_checks():
    assert parse_config(small_raw(MEL_BAND_ROFORMER)).architecture == MEL_BAND_ROFORMER
    raw = small_raw(BS_ROFORMER)
    del raw["model"]["freqs_per_bands"]
    with pytest.raises(RoformerConfigError, match="cannot tell"):
        parse_config(raw)
    assert parse_config(raw, architecture=BS_ROFORMER).model_kwargs["freqs_per_bands"] == DEFAULT_FREQS_PER_BANDS
    raw = small_raw(BS_ROFORMER)
    raw["training"]["model_type"] = "htdemucs"
    with pytest.raises(RoformerConfigError, match="model_type 'htdemucs'"):
        parse_config(raw)
    with pytest.raises(RoformerConfigError, match="freqs_per_bands must split the 1025 bins"):
        parse_config(small_raw(BS_ROFORMER, freqs_per_bands=(2, 2, 2)))
    with pytest.raises(RoformerConfigError, match="num_channels is 1"):
        raw = small_raw(BS_ROFORMER)
        raw["audio"]["num_channels"] = 1
        parse_config(raw)
    with pytest.raises(RoformerConfigError, match="model.dim must be an integer"):
        parse_config(small_raw(BS_ROFORMER, dim="wide"))


def test_mel_band_layout_matches_librosa():
    fixture = json.loads((DATA / "mel_band_layouts_librosa.json").read_text())
    for layout in fixture["layouts"]:
        mask = mel_band_mask(layout["sample_rate"], layout["n_fft"], layout["num_bands"])
        expected = np.zeros_like(mask)
        for band, (lo, hi) in enumerate(layout["band_bin_ranges"]):
            expected[band, lo:hi] = True
        np.testing.assert_array_equal(mask, expected)


# ------------------------------------------------------------------------------ weights loading

def test_weights_wrappers_and_prefixes(tmp_path):
    raw = small_raw(BS_ROFORMER)
    model = build_model(parse_config(raw))
    randomize(model, 1)
    sd = model.state_dict()
    variants = {
        "plain": sd,
        "wrapped": {"state_dict": sd, "epoch": 3},
        "training": {"model_state_dict": sd, "optimizer_name": "Adam", "best_metric": 1.5},
        "model": {"model": sd},
        "module": {f"module.{k}": v for k, v in sd.items()},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in sd.items()}},
        "half": {k: v.half() for k, v in sd.items()},
        "no_rotary": {k: v for k, v in sd.items() if not k.endswith("rotary_embed.freqs")},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / f"{name}.ckpt")
        fresh = build_model(parse_config(raw))
        load_weights(fresh, tmp_path / f"{name}.ckpt")
        got = fresh.state_dict()
        tol = 1e-3 if name == "half" else 0
        assert all(torch.allclose(got[k], sd[k], atol=tol, rtol=tol) for k in sd), name


def test_weights_refusals_name_the_problem(tmp_path):
    raw = small_raw(BS_ROFORMER)
    model = build_model(parse_config(raw))
    sd = model.state_dict()

    def expect(obj, match):
        path = tmp_path / "x.ckpt"
        torch.save(obj, path)
        with pytest.raises(RoformerWeightsError, match=match):
            load_weights(build_model(parse_config(raw)), path)

    first = next(k for k in sd if not k.endswith("rotary_embed.freqs"))
    expect({k: v for k, v in sd.items() if k != first}, f"1 missing \\(first: {first}\\)")
    expect({**sd, "extra.weight": torch.zeros(1)}, "1 unexpected \\(first: extra.weight\\)")
    expect({**sd, first: torch.zeros(3, 3)}, f"{first} has shape \\(3, 3\\)")
    expect([1, 2, 3], "not a state dict")
    expect({"optimizer": {"lr": 1}}, "neither a state dict")
    # needs unpickling beyond plain tensors: refused by weights_only
    path = tmp_path / "pickled.ckpt"
    with open(path, "wb") as fh:
        pickle.dump({"w": torch.zeros(1), "obj": Path("x")}, fh)
    with pytest.raises(RoformerWeightsError, match="weights_only"):
        load_weights(model, path)
    with pytest.raises(RoformerWeightsError, match="not found"):
        load_weights(model, tmp_path / "nope.ckpt")


def test_mel_checkpoint_with_derived_band_buffers(tmp_path):
    raw = small_raw(MEL_BAND_ROFORMER)
    model = build_model(parse_config(raw))
    layout = model.band_layout()
    torch.save({**model.state_dict(), **layout}, tmp_path / "m.ckpt")
    load_weights(build_model(parse_config(raw)), tmp_path / "m.ckpt")
    layout["num_bands_per_freq"] = layout["num_bands_per_freq"] + 1
    torch.save({**model.state_dict(), **layout}, tmp_path / "m.ckpt")
    with pytest.raises(RoformerWeightsError, match="another mel band layout"):
        load_weights(build_model(parse_config(raw)), tmp_path / "m.ckpt")


# --------------------------------------------------------------------------- forward parity

FORWARD_CASES = [
    ("bs_2stems", BS_ROFORMER, dict(stems=("vocals", "other"))),
    ("bs_target", BS_ROFORMER, dict(stems=("vocals", "other"), target="vocals")),
    ("bs_linear_mlp2", BS_ROFORMER, dict(stems=("vocals", "bass", "drums", "other"),
                                          linear_transformer_depth=1, mlp_expansion_factor=2,
                                          depth=2)),
    ("mel_target", MEL_BAND_ROFORMER, dict(stems=("vocals", "other"), target="vocals")),
    ("mel_2stems_depth2", MEL_BAND_ROFORMER, dict(stems=("vocals", "other"), depth=2)),
]


@needs_ref
@pytest.mark.parametrize("name,arch,opts", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_forward_matches_reference(tmp_path, name, arch, opts):
    stems = opts.pop("stems")
    target = opts.pop("target", None)
    raw = small_raw(arch, stems=stems, target=target, **opts)
    ref = make_reference(raw, seed=hash(name) % 1000)
    yaml_path, ckpt = save_pair(tmp_path, raw, ref.state_dict())
    cfg, ours = load_ours(yaml_path, ckpt)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert any(k.endswith("rotary_embed.freqs") for k in ours.state_dict())
    x = torch.randn(2, 2, 441 * 12, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = ref(x)
        got = ours(x)
    if expected.ndim == 3:                 # the reference squeezes a single stem
        expected = expected.unsqueeze(1)
    assert got.shape == expected.shape == (2, len(cfg.stems), 2, x.shape[-1])
    for s in range(len(cfg.stems)):
        assert snr_db(expected[:, s].numpy(), got[:, s].numpy()) > PARITY_DB, cfg.stems[s]


@needs_ref
@pytest.mark.parametrize("arch", [BS_ROFORMER, MEL_BAND_ROFORMER])
def test_msst_options_match_msst_forward(tmp_path, arch):
    """skip_connection and zero_dc, which audio-separator's classes ignore, against MSST's own
    forward (tests/roformer_ref.msst_forward) run on the reference modules."""
    raw = small_raw(arch, depth=3, skip_connection=True, zero_dc=True)
    ref = make_reference(raw, seed=5)
    _, ours = load_ours(*save_pair(tmp_path, raw, ref.state_dict()))
    x = torch.randn(1, 2, 441 * 16, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = msst_forward(ref, x, skip_connection=True, zero_dc=True,
                                mel=arch == MEL_BAND_ROFORMER)
        got = ours(x)
        plain = msst_forward(ref, x, mel=arch == MEL_BAND_ROFORMER)
    for s in range(2):
        assert snr_db(expected[:, s].numpy(), got[:, s].numpy()) > PARITY_DB
        # and the options do change the output
        assert snr_db(plain[:, s].numpy(), got[:, s].numpy()) < 60


def test_mono_model_and_odd_lengths():
    raw = small_raw(BS_ROFORMER, stereo=False)
    raw["audio"]["num_channels"] = 1
    model = build_model(parse_config(raw))
    for n in (3000, 4410, 5001):
        with torch.inference_mode():
            y = model(torch.randn(1, n))
        assert y.shape == (1, 2, 1, n)


def test_grouped_weights_follow_weight_changes():
    """The per-band layers run on cached stacked weights: a later weight change must show."""
    raw = small_raw(BS_ROFORMER)
    model = build_model(parse_config(raw))
    x = torch.randn(1, 2, 4410)
    with torch.inference_mode():
        before = model(x)
    randomize(model, 3)
    with torch.inference_mode():
        after = model(x)
    fresh = build_model(parse_config(raw))
    fresh.load_state_dict(model.state_dict())
    with torch.inference_mode():
        expected = fresh(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


def test_runtime_needs_only_torch_numpy_yaml():
    """The package imports and runs with the dev-only reference dependencies blocked."""
    import subprocess
    import sys
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('einops', 'beartype', 'rotary_embedding_torch', 'librosa',
                                  'audio_separator', 'scipy'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import torch
from separator.core.roformer import read_config, build_model, parse_config
cfg = read_config({str(KJ_MEL)!r})
raw = dict(cfg.raw); raw['model'] = dict(raw['model'], dim=8, depth=1)
model = build_model(parse_config(raw))
with torch.inference_mode():
    print(tuple(model(torch.zeros(1, 2, 4410)).shape))
"""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(1, 1, 2, 4410)"


def test_stacked_weights_are_not_a_second_copy(tmp_path):
    raw = small_raw(BS_ROFORMER)
    model = build_model(parse_config(raw))
    randomize(model, 4)
    sd_before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        model(torch.randn(1, 2, 4410))
    me = model.mask_estimators[0]
    run_first, count = me._runs[0][:2]
    assert count > 1
    w0 = me._linears(run_first)[0].weight
    w1 = me._linears(run_first + 1)[0].weight
    assert w0.untyped_storage().data_ptr() == w1.untyped_storage().data_ptr()   # one stack
    sd_after = model.state_dict()
    assert list(sd_after) == list(sd_before)
    assert all(torch.equal(sd_after[k], sd_before[k]) for k in sd_before)
    # saving and loading again after the stacking works as before
    torch.save(sd_after, tmp_path / "again.ckpt")
    fresh = build_model(parse_config(raw))
    load_weights(fresh, tmp_path / "again.ckpt")
    load_weights(model, tmp_path / "again.ckpt")      # written into the stacked slices
    x = torch.randn(1, 2, 4410)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), fresh(x), rtol=0, atol=0)
