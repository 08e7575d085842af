"""Demucs family: catalogue, model store, loading, streaming and parity with demucs.

Tiny randomly initialised models (HTDemucs, a 2-HTDemucs bag, a Demucs+HDemucs bag) are
written in demucs's local-repo layout by scripts/make_tiny_demucs.py and loaded through
the same code as real weights.  No GPU, no network.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demucs_fixtures as fx  # noqa: E402

from separator.core.demucs import DemucsModel, catalogue, load_demucs, mix_stats  # noqa: E402
from separator.core.demucs import repo as model_store  # noqa: E402
from separator.core.demucs import specs as demucs_specs  # noqa: E402
from separator.errors import CIError, ModelUnavailable  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: the tiny models gain nothing from more, and OpenMP spin-waits
    make a 2-thread run crawl when the machine is busy (both sides of every parity check
    use the same setting; the CLI subprocess gets OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("demucs")


@pytest.fixture(scope="module")
def tiny_dir(tmp_root):
    """A model dir holding the tiny repo; tests must not modify it (use fresh_dir)."""
    return fx.tiny_model_dir(tmp_root, "shared")


@pytest.fixture
def fresh_dir(tmp_root, request):
    return fx.tiny_model_dir(tmp_root, request.node.name)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv(model_store.ENV_MODEL_DIR, raising=False)
    monkeypatch.delenv(model_store.ENV_DEMUCS_MIRROR, raising=False)
    monkeypatch.delenv(model_store.ENV_OFFLINE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def demucs_reference(name, repo, audio, **kw):
    """In-process demucs.api.Separator: what `demucs.separate` computes."""
    from demucs.api import Separator
    sep = Separator(model=name, repo=Path(repo), device="cpu", progress=False, **kw)
    _, out = sep.separate_tensor(torch.from_numpy(np.ascontiguousarray(audio.T)))
    return {s: v.numpy().T for s, v in out.items()}


def max_diff(a, b):
    return max(float(np.abs(a[s] - b[s]).max()) for s in a)


# ----------------------------------------------------------------------------- catalogue

def test_catalogue_covers_every_pretrained_model():
    import demucs.pretrained
    remote = demucs.pretrained.REMOTE_ROOT
    urls = demucs.pretrained._parse_remote_files(remote / "files.txt")
    cat = catalogue.demucs_catalogue()
    names = {p.stem for p in remote.glob("*.yaml")}
    assert names == set(cat)
    assert {"htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_extra", "mdx_q",
            "mdx_extra_q"} <= set(cat)
    for name, entry in cat.items():
        bag = yaml.safe_load((remote / f"{name}.yaml").read_text())
        assert list(entry.bag_models) == bag["models"]
        assert entry.bag_segment == bag.get("segment")
        assert (None if entry.bag_weights is None else [list(w) for w in entry.bag_weights]) == bag.get("weights")
        for f in entry.files:
            assert f.url == urls[f.sig] and f.file == f.url.rsplit("/", 1)[1]
            assert f.file == f"{f.sig}-{f.checksum}.th" and len(f.checksum) == 8
    assert cat["htdemucs_6s"].sources == ("drums", "bass", "other", "vocals", "guitar", "piano")
    assert cat["htdemucs"].sources == ("drums", "bass", "other", "vocals")


def test_committed_catalogue_is_up_to_date():
    committed = (catalogue.CATALOGUE_DIR / "demucs.yaml").read_text()
    assert committed == catalogue.dump_demucs_catalogue(), \
        "regenerate: python -m separator.core.demucs catalogue > models/demucs.yaml"


def test_specs_list_every_model():
    specs = {s.name: s for s in demucs_specs()}
    assert set(specs) == set(catalogue.demucs_catalogue())
    assert all(s.family == "demucs" and s.samplerate == 44100 and s.audio_channels == 2 for s in specs.values())
    assert specs["htdemucs_6s"].sources[-2:] == ("guitar", "piano")


# ----------------------------------------------------------------------------- store

def test_model_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert model_store.model_dir() == tmp_path / "x" / "separator" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert model_store.model_dir() == Path.home() / ".cache" / "separator" / "models"
    monkeypatch.setenv("SEPARATOR_MODEL_DIR", str(tmp_path / "env"))
    assert model_store.model_dir() == tmp_path / "env"
    assert model_store.model_dir(tmp_path / "flag") == tmp_path / "flag"
    assert model_store.demucs_repo(tmp_path / "flag") == tmp_path / "flag" / "demucs"


def test_flat_demucs_repo_is_accepted(tiny_dir, tmp_path):
    import shutil
    shutil.copytree(tiny_dir / "demucs", tmp_path / "flat")
    assert model_store.demucs_repo(tmp_path / "flat") == tmp_path / "flat"
    m = load_demucs("tiny_htdemucs", "cpu", model_dir=tmp_path / "flat")
    assert m.sources == ("drums", "bass", "other", "vocals")


def test_list_installed_and_verify_clean(tiny_dir):
    rows = {r.name: r for r in model_store.list_installed(tiny_dir)}
    assert set(catalogue.demucs_catalogue()) <= set(rows)
    assert not rows["htdemucs"].installed and rows["htdemucs"].missing == ["955717e8-8726e21a.th"]
    assert rows["tiny_bag"].installed and rows["tiny_bag"].origin == "local" and rows["tiny_bag"].size_mb >= 0
    checks = model_store.verify(tiny_dir)
    assert len(checks) == 4 and all(c.status == "ok" for c in checks)


def test_pull_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv(model_store.ENV_DEMUCS_MIRROR, "http://127.0.0.1:9/demucs/")   # nothing listens
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as ei:
        model_store.pull("htdemucs_ft", tmp_path)
    assert time.monotonic() - t0 < 5
    msg = ei.value.message
    for f in catalogue.demucs_catalogue()["htdemucs_ft"].files:
        assert f.file in msg
    assert str(tmp_path / "demucs") in msg and "pull htdemucs_ft" in msg


def test_pull_real_host_offline_fails_fast(tmp_path):
    if model_store.unreachable(catalogue.DEMUCS_URL_ROOT) is None:
        pytest.skip("network is reachable here; the mirror test covers the failure path")
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable, match="955717e8-8726e21a.th"):
        model_store.pull("htdemucs", tmp_path)
    assert time.monotonic() - t0 < 5


def test_pull_rejects_a_download_with_the_wrong_checksum(monkeypatch, tmp_path):
    import functools
    import http.server
    import threading
    served = tmp_path / "mirror" / "hybrid_transformer"
    served.mkdir(parents=True)
    (served / "955717e8-8726e21a.th").write_bytes(b"not the real weights" * 100)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "mirror"))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(model_store.ENV_DEMUCS_MIRROR, f"http://127.0.0.1:{server.server_port}/")
        with pytest.raises(ModelUnavailable, match="hash"):
            model_store.pull("htdemucs", tmp_path / "models")
    finally:
        server.shutdown()
    assert not list((tmp_path / "models" / "demucs").glob("*.th*"))     # nothing half-written kept


def test_uninstalled_model_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv(model_store.ENV_DEMUCS_MIRROR, "http://127.0.0.1:9/demucs/")
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable, match="955717e8-8726e21a.th"):
        load_demucs("htdemucs", "cpu", model_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match="not installed"):
        load_demucs("htdemucs", "cpu", model_dir=tmp_path, allow_download=False)
    assert time.monotonic() - t0 < 5
    with pytest.raises(ModelUnavailable, match="unknown Demucs model"):
        load_demucs("no_such_model", "cpu", model_dir=tmp_path)


def test_quantized_models_need_diffq(tmp_path):
    import importlib.util
    if importlib.util.find_spec("diffq") is not None:
        pytest.skip("diffq is installed")
    with pytest.raises(ModelUnavailable, match="diffq"):
        load_demucs("mdx_q", "cpu", model_dir=tmp_path)


def _th(repo: Path, sig: str) -> Path:
    return next(repo.glob(f"{sig}-*.th"))


def test_truncated_weights_detected(fresh_dir):
    repo = fresh_dir / "demucs"
    p = _th(repo, "7a1e0002")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    bad = [c for c in model_store.verify(fresh_dir) if not c.ok]
    assert [(c.path.name, c.status) for c in bad] == [(p.name, "truncated")]
    with pytest.raises(ModelUnavailable, match="truncated"):
        load_demucs("tiny_bag", "cpu", model_dir=fresh_dir)
    load_demucs("tiny_htdemucs", "cpu", model_dir=fresh_dir)      # the other file is still fine


def test_corrupt_weights_detected(fresh_dir):
    repo = fresh_dir / "demucs"
    p = _th(repo, "7a1e0001")
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    bad = [c for c in model_store.verify(fresh_dir) if not c.ok]
    assert [(c.path.name, c.status) for c in bad] == [(p.name, "corrupt")]
    with pytest.raises(ModelUnavailable, match="corrupt"):
        load_demucs("tiny_htdemucs", "cpu", model_dir=fresh_dir)


def test_truncated_file_without_checksum_is_model_unavailable(fresh_dir):
    repo = fresh_dir / "demucs"
    p = _th(repo, "7a1e0001")
    bare = repo / "7a1e0001.th"
    p.rename(bare)
    bare.write_bytes(bare.read_bytes()[:5000])
    with pytest.raises(ModelUnavailable, match="7a1e0001"):
        load_demucs("tiny_htdemucs", "cpu", model_dir=fresh_dir)


def test_catalogue_file_with_wrong_content_is_refused(fresh_dir):
    repo = fresh_dir / "demucs"
    (repo / "955717e8-8726e21a.th").write_bytes(_th(repo, "7a1e0001").read_bytes())
    checks = {c.path.name: c.status for c in model_store.verify(fresh_dir)}
    assert checks["955717e8-8726e21a.th"] == "corrupt"
    with pytest.raises(ModelUnavailable, match="corrupt"):
        load_demucs("htdemucs", "cpu", model_dir=fresh_dir, allow_download=False)


# ----------------------------------------------------------------------------- knobs

def test_segment_bounds_and_bad_knobs(tiny_dir):
    with pytest.raises(CIError) as ei:
        load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir, segment=1.5)   # trained on 1 s
    assert ei.value.code == "InvalidArgument" and "max 1 s" in ei.value.message
    for kw in ({"overlap": 1.0}, {"overlap": -0.1}, {"shifts": -1}, {"segment": 0}, {"jobs": -2}):
        with pytest.raises(CIError) as ei:
            load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir, **kw)
        assert ei.value.code == "InvalidArgument"
    m = load_demucs("tiny_mix", "cpu", model_dir=tiny_dir, segment=30)      # no transformer: unbounded
    assert m.chunk_segments() == [30 * 44100] * 2


# ----------------------------------------------------------------------------- separation

def test_parity_in_process_bags_and_architectures(tiny_dir):
    """Every architecture / bag path against demucs.api (what `demucs.separate` runs)."""
    audio = fx.noise(1.8, seed=1)
    for name, kw in [("tiny_htdemucs", {}), ("tiny_bag", {}), ("tiny_mix", {}),
                     ("tiny_htdemucs", {"segment": 0.6, "overlap": 0.5})]:
        m = load_demucs(name, "cpu", model_dir=tiny_dir, **kw)
        ours = m.separate(audio)
        ref = demucs_reference(name, tiny_dir / "demucs", audio, shifts=0, overlap=kw.get("overlap", 0.25),
                               segment=kw.get("segment"))
        assert set(ours) == set(ref) == set(m.sources)
        assert all(ours[s].shape == audio.shape for s in ours)
        assert max_diff(ours, ref) <= 1e-5, (name, kw)


def test_bag_uses_its_segment(tiny_dir):
    m = load_demucs("tiny_bag", "cpu", model_dir=tiny_dir)
    assert m.chunk_segments() == [int(0.9 * 44100)] * 2       # the bag's yaml segment (<= trained 1 s)
    assert m.max_segment == 0.9     # the bag shrinks its HTDemucs in place, as demucs does


def test_parity_with_shifts_single_model(tiny_dir):
    audio = fx.noise(1.7, seed=2)
    m = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir, shifts=1)
    random.seed(123)
    ours = m.separate(audio)
    random.seed(123)
    ref = demucs_reference("tiny_htdemucs", tiny_dir / "demucs", audio, shifts=1)
    assert max_diff(ours, ref) <= 1e-5
    seeded = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir, shifts=2, seed=7)
    assert max_diff(seeded.separate(audio), seeded.separate(audio)) == 0.0


def test_parity_with_demucs_cli_on_real_clip(tiny_dir, tmp_path):
    clip = fx.real_clip()
    if clip is None:
        pytest.skip(f"real audio not found under {fx.DATA}")
    audio = fx.decode(clip, seconds=4.0, start=2.0)
    wav = tmp_path / "clip.wav"
    fx.write_f32_wav(wav, audio)
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "demucs.separate", "--repo", str(tiny_dir / "demucs"), "-n", "tiny_bag",
                    "--shifts", "0", "--overlap", "0.25", "-d", "cpu", "--float32", "--clip-mode", "none",
                    "-o", str(out), str(wav)], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    m = load_demucs("tiny_bag", "cpu", model_dir=tiny_dir)
    ours = fx.collect(m.separate_stream(fx.blocks(fx.decode(wav))), m.sources)
    cli = {s: fx.read_f32_wav(out / "tiny_bag" / "clip" / f"{s}.wav") for s in m.sources}
    assert max_diff(ours, cli) <= 1e-4


def test_streaming_blocks_equal_one_block_and_stats_modes(tiny_dir):
    audio = fx.noise(3.1, seed=3)
    m = load_demucs("tiny_bag", "cpu", model_dir=tiny_dir)
    whole = m.separate(audio)                                           # list: two passes
    spooled = fx.collect(m.separate_stream(fx.blocks(audio)), m.sources)  # one-shot: spool
    stats = mix_stats([audio])
    given = fx.collect(m.separate_stream(fx.blocks(audio, (17, 30000, 1)), stats=stats), m.sources)
    assert max_diff(whole, spooled) == 0.0
    assert max_diff(whole, given) == 0.0


def test_each_block_carries_the_input_it_came_from(tiny_dir):
    """Every yielded block's mixture is exactly the (un-normalised) input frames its stems came
    from, in the model's channels, whichever way the statistics are obtained, with shifts and
    bags."""
    audio = fx.noise(2.6, seed=20) + 0.3                       # a DC offset: normalisation shows
    for name, kw in [("tiny_bag", {}), ("tiny_htdemucs", {"shifts": 2, "seed": 3}), ("tiny_mix", {})]:
        m = load_demucs(name, "cpu", model_dir=tiny_dir, **kw)
        for blocks, extra in [([audio], {}),                                  # re-iterable: two passes
                              (fx.blocks(audio), {}),                          # one-shot: spooled
                              (fx.blocks(audio, (17, 30000, 1)), {"stats": mix_stats([audio])})]:
            mixture: list = []
            stems = fx.collect(m.separate_stream(blocks, **extra), m.sources, mixture)
            assert all(b.dtype == np.float32 and b.flags.c_contiguous for b in mixture)
            np.testing.assert_array_equal(np.concatenate(mixture), audio)
            assert all(len(v) == len(audio) for v in stems.values())
    mono = audio[:, :1]
    mixture = []
    fx.collect(load_demucs("tiny_mix", "cpu", model_dir=tiny_dir).separate_stream([mono]), ("vocals",), mixture)
    np.testing.assert_array_equal(np.concatenate(mixture), np.repeat(mono, 2, axis=1))


def test_a_demucs_job_decodes_its_input_twice(tiny_dir, tmp_path, monkeypatch):
    """A Demucs job reads its input twice: once for the normalisation statistics, once to
    separate; the residual background comes from the mixture the model hands back (no third
    decode), so the written roles sum back to the input."""
    from separator.jobs.engine import separate_file
    from separator.media import load_audio
    from separator.request import AudioConfig

    song = tmp_path / "song.wav"
    audio = fx.noise(2.2, seed=21)
    fx.write_f32_wav(song, audio)
    launches = fx.count_decoders(monkeypatch, song)
    targets = {r: tmp_path / f"{r}.wav" for r in ("vocals", "background")}
    separate_file(song, targets, mode="AudioAndBackground", model="tiny_htdemucs", device="cpu",
                  audio_config=AudioConfig(codec="wav", samplerate=44100, channels=2),
                  model_options={"model_dir": str(tiny_dir)})
    assert len(launches) == 2
    v, b = (load_audio(targets[r], 44100, 2) for r in ("vocals", "background"))
    assert np.abs(v + b - audio).max() < 1e-4                 # 16-bit wav rounding of each role


def test_output_streams_before_input_ends(tiny_dir):
    """With stats given, output is produced after about one segment of input: memory is
    bounded by the chunk, not the file."""
    m = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir)
    audio = np.zeros((20 * 44100, 2), np.float32)
    audio[::100] = 0.05
    consumed = 0

    def src():
        nonlocal consumed
        for i in range(0, len(audio), 4410):
            consumed += 4410
            yield audio[i:i + 4410]

    progress = []
    stream = m.separate_stream(src(), stats=mix_stats([audio]), progress=progress.append)
    first = next(stream)
    assert consumed <= 3 * 44100 and len(first.stems["vocals"]) > 0
    total = len(first.stems["vocals"]) + sum(len(b.stems["vocals"]) for b in stream)
    assert total == len(audio) and sum(progress) == len(audio)


def test_jobs_do_not_change_the_result(tiny_dir):
    audio = fx.noise(2.5, seed=4)
    a = load_demucs("tiny_bag", "cpu", model_dir=tiny_dir).separate(audio)
    b = load_demucs("tiny_bag", "cpu", model_dir=tiny_dir, jobs=2).separate(audio)
    assert max_diff(a, b) <= 1e-6


def test_edge_lengths(tiny_dir):
    m = load_demucs("tiny_mix", "cpu", model_dir=tiny_dir)
    assert all(len(v) == 0 for v in m.separate(np.zeros((0, 2), np.float32)).values())
    short = fx.noise(0.05, seed=5)
    out = m.separate(short)
    assert all(v.shape == short.shape for v in out.values())
    mono = short[:, :1]
    assert max_diff(m.separate(mono), m.separate(np.repeat(mono, 2, axis=1))) == 0.0


def test_stems_and_background(tiny_dir):
    """A random HTDemucs does not make its stems sum to the mix (demucs guarantees no sum:
    HTDemucs has no residual stem), so the pipeline's two-stem output uses
    background = mix - vocals, which sums back to the mix exactly (float rounding)."""
    clip = fx.real_clip()
    audio = fx.decode(clip, seconds=2.0) if clip else fx.noise(2.0, seed=6)
    out = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir).separate(audio)
    total = sum(out.values())
    assert np.abs(total - audio).max() > 1e-3          # documented: no sum guarantee
    background = audio - out["vocals"]
    assert np.abs(background + out["vocals"] - audio).max() <= 1e-6


def test_registry_style_factory(tiny_dir):
    from separator.core import demucs
    spec = next(s for s in demucs_specs(tiny_dir, include_local=True) if s.name == "tiny_bag")
    m = demucs.load(spec, "cpu", model_dir=tiny_dir, overlap=0.5)
    assert isinstance(m, DemucsModel) and m.spec == spec and m.overlap == 0.5


def test_local_models_are_listed_from_their_headers(tiny_dir, monkeypatch):
    """Listing a local model reads its weight file's class and arguments (memory-mapped); it
    builds nothing (the CLI used to build every local model once just to list it)."""
    from separator.core.demucs import loader

    want = {s.name: s for s in demucs_specs(tiny_dir, include_local=True)}
    built = []
    monkeypatch.setattr(loader, "load_bag", lambda *a, **k: built.append(a) or pytest.fail("built"))
    got = {s.name: s for s in demucs_specs(tiny_dir, include_local=True)}
    assert not built and set(got) >= {"tiny_htdemucs", "tiny_bag"}
    monkeypatch.undo()
    assert got == want
    for name in ("tiny_htdemucs", "tiny_bag"):
        m = load_demucs(name, "cpu", model_dir=tiny_dir)
        assert (got[name].sources, got[name].samplerate, got[name].audio_channels) == \
            (tuple(m.sources), m.samplerate, m.audio_channels)


def test_models_are_built_without_random_init_and_loaded_exactly(tiny_dir):
    """Construction skips torch.nn.init's random fills (the checkpoint overwrites every
    parameter): loading draws no random numbers and changes nothing process-wide (torch.nn.init
    is not patched); the parameters are the checkpoint's."""
    init = {n: getattr(torch.nn.init, n) for n in dir(torch.nn.init)}
    rng = torch.get_rng_state()
    m = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: getattr(torch.nn.init, n) for n in dir(torch.nn.init)} == init
    repo = Path(tiny_dir) / "demucs"
    sig = str(yaml.safe_load((repo / "tiny_htdemucs.yaml").read_text())["models"][0])
    path = next(repo.glob(f"{sig}-*.th"))
    state = torch.load(path, map_location="cpu", weights_only=False)["state"]
    own = m.models[0].state_dict()
    for k, v in state.items():
        torch.testing.assert_close(own[k], v.to(own[k].dtype), rtol=0, atol=0)   # (stored as fp16)
    assert any(v.abs().sum() > 0 for v in own.values())


def test_zero_init_is_local_to_the_building_thread():
    """The zero fills apply only in the thread that builds: a random fill elsewhere at the same
    time stays random."""
    import threading

    from separator.core.demucs.loader import _ZeroInit

    inside, outside = threading.Event(), threading.Event()
    got = {}

    def elsewhere():
        inside.wait()
        t = torch.empty(1000)
        torch.nn.init.kaiming_uniform_(t.view(10, 100))
        got["other thread"] = float(t.abs().sum())
        outside.set()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    with _ZeroInit():
        inside.set()
        outside.wait(30)
        t, u = torch.empty(10, 100), torch.empty(1000)
        torch.nn.init.kaiming_uniform_(t)
        u.normal_()
        got["building thread"] = float(t.abs().sum() + u.abs().sum())
        assert float(torch.ones(3).sum()) == 3.0                  # everything else unchanged
    thread.join()
    assert got["building thread"] == 0.0 and got["other thread"] > 0


# ----------------------------------------------------------------------------- precision
def _snr(ref: dict, est: dict) -> float:
    num = sum(float(np.sum(ref[s].astype(np.float64) ** 2)) for s in ref)
    den = sum(float(np.sum((ref[s].astype(np.float64) - est[s]) ** 2)) for s in ref)
    return float("inf") if den == 0 else 10 * np.log10(num / den)


def test_precision_knob(tiny_dir):
    """fp32 is the default (and what auto means for Demucs); fp16 needs CUDA; bf16 runs the
    forward passes under autocast: float32 outputs within rounding of the fp32 ones, and a
    different computation (a knob that did nothing would give identical outputs)."""
    from separator.core import demucs
    audio = fx.noise(1.6, seed=11)
    fp32 = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir)
    assert fp32.precision == "fp32" and fp32.dtype is None
    assert load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir, precision="auto").precision == "fp32"
    for bad in ("fp16", "int8"):
        with pytest.raises(CIError) as ei:
            load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir, precision=bad)
        assert ei.value.code == "InvalidArgument" and bad in ei.value.message
    spec = next(s for s in demucs_specs(tiny_dir, include_local=True) if s.name == "tiny_htdemucs")
    with pytest.raises(CIError):
        demucs.load(spec, "cpu", model_dir=tiny_dir, wiener=True)
    bf16 = demucs.load(spec, "cpu", model_dir=tiny_dir, precision="bf16")
    assert bf16.precision == "bf16"
    a, b = fp32.separate(audio), bf16.separate(audio)
    assert all(b[s].dtype == np.float32 and b[s].shape == audio.shape for s in b)
    assert max_diff(a, b) > 0.0
    assert _snr(a, b) > 25.0


def test_reduced_precision_fallback_copy_runs_fp32(tiny_dir):
    """Out of memory, the CPU copy of a bf16 model computes in float32 (the fall-back trades
    speed for fitting, never precision): its chunks equal the fp32 model's."""
    audio = fx.noise(1.2, seed=12)
    fp32 = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir).separate(audio)
    m = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir, precision="bf16")
    fb = m.oom[0]
    fb.fallback_device = torch.device("cpu")
    fb.pinned = True                                   # every chunk goes to the fall-back copy
    out = m.separate(audio)
    assert fb.fallback_net is not None
    assert max_diff(fp32, out) <= 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_and_batches_match_cpu(tiny_dir):
    """On a GPU: fp32 and batched chunks agree with the CPU, and fp16 autocast stays close
    to fp32.  cuDNN runs fp32 convolutions in TF32 by default (torch's setting, as the demucs
    CLI runs them; 10-bit mantissa), so "agree" is ~40 dB on this tiny random model (the
    full-size HTDemucs: 73-78 dB against demucs's own apply_model on an H200)."""
    audio = fx.noise(3.0, seed=13)
    cpu = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir).separate(audio)
    gpu = load_demucs("tiny_htdemucs", "cuda", model_dir=tiny_dir, batch=1).separate(audio)
    assert load_demucs("tiny_htdemucs", "cuda", model_dir=tiny_dir).batch == 8     # CUDA_BATCH
    batched = load_demucs("tiny_htdemucs", "cuda", model_dir=tiny_dir, batch=4).separate(audio)
    half = load_demucs("tiny_htdemucs", "cuda", model_dir=tiny_dir, precision="fp16", batch=4).separate(audio)
    print(f"SNR gpu/cpu {_snr(cpu, gpu):.1f} dB, batch 4/1 {_snr(gpu, batched):.1f} dB, "
          f"fp16/fp32 {_snr(gpu, half):.1f} dB")
    assert _snr(cpu, gpu) > 35.0
    assert _snr(gpu, batched) > 35.0
    assert all(half[s].dtype == np.float32 for s in half)
    assert _snr(gpu, half) > 30.0


def test_batched_chunks_with_a_short_last_chunk_match_demucs(tiny_dir):
    """A batch mixing whole chunks with the short last one (HTDemucs pads every window to its
    training length) equals demucs's one-at-a-time result; batch defaults to 1 on a CPU."""
    assert load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir).batch == 1
    audio = fx.noise(2.3, seed=14)                            # 1 s segments, stride 0.75 s: a short last chunk
    m = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir, batch=4)
    ours = m.separate(audio)
    ref = demucs_reference("tiny_htdemucs", tiny_dir / "demucs", audio, shifts=0, overlap=0.25)
    assert max_diff(ours, ref) <= 1e-5
