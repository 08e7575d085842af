"""Out-of-memory fall-back (separator.core.oom) on real audio, CPU only, by fault injection.

Faults are forward-pre-hooks on the *original* network modules that raise
``torch.OutOfMemoryError`` (per batch size, or always).  The fall-back's CPU copy is a
deep copy, so it carries the hooks too, but they never raise on a module that is not the
original: that is the "other device".  On this CPU-only machine the model's primary device
is the CPU, which has no CPU step, so the tests that exercise the CPU copy mark the
primary as a pretend GPU by setting ``fallback_device`` (the policy's test seam).
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demucs_fixtures as fx  # noqa: E402
from conftest import long_mixture  # noqa: E402

from separator.core import registry  # noqa: E402
from separator.core.demucs import load_demucs  # noqa: E402
from separator.core.demucs import repo as model_store  # noqa: E402
from separator.core.oom import MAX_DEVICE_FAILURES, free_cuda_cache, is_oom  # noqa: E402
from separator.core.precision import PRECISIONS  # noqa: E402
from separator.core.spleeter.model import Spleeter2Stems, auto_precision, tf_stft  # noqa: E402

DATA = fx.DATA
CPU = torch.device("cpu")
OOM_LOGGER = "separator.core.oom"


@pytest.fixture(scope="module", autouse=True)
def _env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEPARATOR_CACHE", str(tmp_path_factory.getbasetemp() / "sepcache"))
        for var in (model_store.ENV_MODEL_DIR, model_store.ENV_DEMUCS_MIRROR, model_store.ENV_OFFLINE):
            mp.delenv(var, raising=False)
        yield


def _oom() -> BaseException:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


class Faults:
    """Forward-pre-hooks on ``modules``: the original raises ``exc()`` while ``on`` and
    ``when(batch)``; copies of it (the fall-back's CPU copy) never raise.  Records every call."""

    def __init__(self, modules: Iterable[torch.nn.Module], when: Callable[[int], bool] = lambda b: True,
                 exc: Callable[[], BaseException] = _oom) -> None:
        self.when, self.exc, self.on = when, exc, True
        self.calls: list[tuple[int, int, bool]] = []     # (module index, batch, raised) on originals
        self.copy_calls: list[tuple[int, int]] = []      # (module index, batch) on copies
        self.handles = [m.register_forward_pre_hook(self._hook(i, m)) for i, m in enumerate(modules)]

    def _hook(self, i: int, orig: torch.nn.Module):
        def hook(mod, args):
            batch = args[0].shape[0]
            if mod is not orig:
                self.copy_calls.append((i, batch))
                return None
            fail = self.on and self.when(batch)
            self.calls.append((i, batch, fail))
            if fail:
                raise self.exc()
            return None
        return hook

    def batches(self, i: int = 0) -> list[int]:
        return [b for j, b, _ in self.calls if j == i]

    def take(self) -> tuple[list, list]:
        out = (self.calls, self.copy_calls)
        self.calls, self.copy_calls = [], []
        return out

    def __enter__(self) -> "Faults":
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------- real audio
@pytest.fixture(scope="module")
def spleeter() -> Spleeter2Stems:
    """One model for the Spleeter tests; each test gets a fresh fall-back state (``fresh``)."""
    return Spleeter2Stems("cpu", batch_segments=4, precision="auto")


@pytest.fixture
def fresh(spleeter):
    spleeter.oom.reset()
    spleeter.oom.fallback_device = None
    yield spleeter
    spleeter.oom.reset()
    spleeter.oom.fallback_device = None


def _mag(model: Spleeter2Stems, audio: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(audio.T))
    return tf_stft(x, model.window, model.p)[:, :model.p.bins].abs()


@pytest.fixture(scope="module")
def mags(spleeter) -> dict[int, torch.Tensor]:
    """Magnitudes of real music, exactly 1, 2 and 3 whole U-Net segments (512 frames each; a
    partial last segment would run as a batch of its own): the committed mixtures end to end."""
    song, _ = long_mixture(36.0)
    p = spleeter.p
    out = {n: _mag(spleeter, song[:n * p.segment_frames * p.frame_step - p.frame_length]) for n in (1, 2, 3)}
    for n, m in out.items():
        assert m.shape[-1] == n * p.segment_frames
    return out


@pytest.fixture(scope="module")
def refs(spleeter, mags) -> dict[str, torch.Tensor]:
    """Un-faulted results."""
    spleeter.oom.reset()
    with torch.inference_mode():
        return {"mask3": spleeter.vocal_mask(mags[3]), "mask2": spleeter.vocal_mask(mags[2]),
                "est1": spleeter.source_magnitudes(mags[1])}


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the helpers
def test_is_oom_and_free_cache():
    assert is_oom(torch.OutOfMemoryError("x"))
    assert is_oom(torch.cuda.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not is_oom(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_oom(ValueError("out of memory"))          # only torch's RuntimeErrors
    assert not is_oom(MemoryError())
    free_cuda_cache()                                       # no CUDA: a no-op that initialises nothing
    assert not torch.cuda.is_initialized()


# --------------------------------------------------------------------------- Spleeter
def test_spleeter_halves_the_batch_and_remembers_it(fresh, mags, refs):
    m = fresh
    with torch.inference_mode(), Faults(m.nets, when=lambda b: b > 2) as f:
        _close(m.vocal_mask(mags[3]), refs["mask3"])
        # 3 segments at batch 4 fail; halved to 2: fits (then the 1 left)
        assert f.batches(0) == [3, 2, 1] and f.batches(1) == [2, 1]
        assert m.oom.batch == 2 and m.oom.fallback_net is None
        f.take()
        _close(m.vocal_mask(mags[3]), refs["mask3"])     # the next chunk starts at the size that worked
        assert f.batches(0) == [2, 1] and not any(r for *_, r in f.calls)
        f.when = lambda b: b > 1
        f.take()
        _close(m.vocal_mask(mags[3]), refs["mask3"])
        assert f.batches(0) == [2, 1, 1, 1] and m.oom.batch == 1
        assert m.oom.fallback_net is None and not f.copy_calls and m.oom.failures == 0


def test_spleeter_cpu_copy_then_back_to_the_device(fresh, mags, refs, caplog):
    m = fresh
    m.oom.fallback_device = CPU          # pretend the model's device is a GPU
    caplog.set_level(logging.INFO, logger=OOM_LOGGER)
    with torch.inference_mode(), Faults(m.nets) as f:
        _close(m.vocal_mask(mags[2]), refs["mask2"])
        calls, copy_calls = f.take()
        assert [b for _, b, _ in calls] == [2, 1]       # halved to 1, still out of memory
        assert copy_calls == [(0, 2), (1, 2)]           # the whole chunk on the CPU copy
        cpu = m.oom.fallback_net
        assert cpu is not None and cpu is not m.nets
        p = next(cpu.parameters())
        assert p.device == CPU and p.dtype == PRECISIONS[auto_precision("cpu")] and not p.requires_grad
        assert m.oom.failures == 1 and not m.oom.pinned
        warnings = [r for r in caplog.records if r.name == OOM_LOGGER and r.levelno == logging.WARNING
                    and "tried again for the next chunk" in r.getMessage()]
        assert len(warnings) == 1

        f.on = False                                     # the next chunk: the device again
        _close(m.vocal_mask(mags[2]), refs["mask2"])
        calls, copy_calls = f.take()
        assert calls == [(0, 1, False), (1, 1, False), (0, 1, False), (1, 1, False)] and not copy_calls
        assert m.oom.failures == 0

        f.on = True                                      # out of memory again: same copy, no new warning
        caplog.clear()
        _close(m.vocal_mask(mags[2]), refs["mask2"])
        assert m.oom.fallback_net is cpu
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "tried again" in r.getMessage()]


def test_spleeter_stays_on_cpu_after_repeated_failures(fresh, mags, refs, caplog):
    m = fresh
    m.oom.fallback_device = CPU
    caplog.set_level(logging.INFO, logger=OOM_LOGGER)
    with torch.inference_mode(), Faults(m.nets) as f:
        for k in range(1, MAX_DEVICE_FAILURES + 1):
            _close(m.source_magnitudes(mags[1]), refs["est1"])
            calls, copy_calls = f.take()
            assert calls == [(0, 1, True)] and copy_calls == [(0, 1), (1, 1)]
            assert m.oom.failures == k and m.oom.pinned == (k == MAX_DEVICE_FAILURES)
        assert any("staying on cpu" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        f.on = False
        _close(m.source_magnitudes(mags[1]), refs["est1"])
        calls, copy_calls = f.take()
        assert calls == [] and copy_calls == [(0, 1), (1, 1)]   # the device is not tried any more


def test_non_oom_errors_propagate_unchanged(fresh, mags):
    m = fresh
    m.oom.fallback_device = CPU
    boom = RuntimeError("CUDA error: device-side assert triggered")
    with torch.inference_mode(), Faults(m.nets, exc=lambda: boom) as f:
        with pytest.raises(RuntimeError) as err:
            m.vocal_mask(mags[3])
        assert err.value is boom
        assert f.batches(0) == [3] and not f.copy_calls     # no retry, no CPU copy
    assert m.oom.batch == 4 and m.oom.fallback_net is None and m.oom.failures == 0


def test_oom_propagates_on_cpu_at_batch_one(fresh, mags):
    m = fresh                            # a real CPU model: there is nowhere to fall back to
    assert m.oom.fallback_device is None
    with torch.inference_mode(), Faults(m.nets) as f:
        with pytest.raises(torch.OutOfMemoryError):
            m.vocal_mask(mags[3])
        assert f.batches(0) == [3, 2, 1] and not f.copy_calls
    assert m.oom.fallback_net is None


# --------------------------------------------------------------------------- Demucs
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return fx.tiny_model_dir(tmp_path_factory.mktemp("oom_demucs"), "shared")


@pytest.fixture
def one_thread():
    """One intra-op thread for the tiny Demucs models (as in test_demucs: OpenMP spin-waits
    make them ~15x slower with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    path = fx.real_clip()
    if path is None:
        pytest.skip(f"no real clip in {DATA}")
    return fx.decode(path, seconds=6.0)


def _max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[s] - b[s]).max()) for s in a)


@pytest.mark.usefixtures("one_thread")
def test_demucs_splits_batches_then_uses_a_cpu_copy(tiny_dir, clip, caplog):
    caplog.set_level(logging.INFO, logger=OOM_LOGGER)
    ref = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir, batch=2).separate(clip)
    model = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir, batch=2)
    oom = model.oom[0]
    with Faults(model.models, when=lambda b: b > 1) as f:                 # 1. split the batch
        assert _max_diff(model.separate(clip), ref) < 1e-5
        assert f.batches()[:3] == [2, 1, 1] and set(f.batches()[3:]) == {1}
        assert oom.batch == 1 and oom.fallback_net is None and not f.copy_calls

        oom.reset()                                                        # 2. a pretend GPU:
        oom.fallback_device = CPU                                          # CPU copy, then back
        raised = []
        f.when = lambda b: len(raised) < 2 and not raised.append(b)        # the first group only
        f.take()
        assert _max_diff(model.separate(clip), ref) < 1e-5
        calls, copy_calls = f.take()
        assert [(b, r) for _, b, r in calls[:2]] == [(2, True), (1, True)]
        assert copy_calls == [(0, 2)]                                      # that group on the CPU
        assert len(calls) > 2 and not any(r for *_, r in calls[2:])        # later groups: device
        assert oom.failures == 0 and not oom.pinned

        f.when = lambda b: True                                            # 3. always: stays on CPU
        assert _max_diff(model.separate(clip), ref) < 1e-5
        calls, copy_calls = f.take()
        assert len(calls) == MAX_DEVICE_FAILURES and oom.pinned           # batch 1 remembered: 1 try each
        assert len(copy_calls) > MAX_DEVICE_FAILURES
        assert any("staying on cpu" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("one_thread")
def test_demucs_bag_falls_back_per_sub_model(tiny_dir, clip):
    ref = load_demucs("tiny_bag", "cpu", model_dir=tiny_dir, batch=2).separate(clip)
    model = load_demucs("tiny_bag", "cpu", model_dir=tiny_dir, batch=2)
    for oom in model.oom:
        oom.fallback_device = CPU
    with Faults(model.models[1:]) as f:                                    # only the second model
        assert _max_diff(model.separate(clip), ref) < 1e-5
        assert f.calls and all(r for *_, r in f.calls) and f.copy_calls
    assert model.oom[0].fallback_net is None and model.oom[0].failures == 0
    assert model.oom[1].fallback_net is not None and model.oom[1].pinned


@pytest.mark.usefixtures("one_thread")
def test_demucs_non_oom_error_propagates(tiny_dir, clip):
    model = load_demucs("tiny_htdemucs", "cpu", model_dir=tiny_dir, batch=2)
    model.oom[0].fallback_device = CPU
    with Faults(model.models, exc=lambda: KeyError("not memory")) as f, pytest.raises(KeyError):
        model.separate(clip)
    assert len(f.calls) == 1 and not f.copy_calls and model.oom[0].fallback_net is None


# --------------------------------------------------------------------------- end to end
def test_separate_file_succeeds_despite_oom(tmp_path, caplog):
    from separator.jobs.engine import separate_file
    from separator.media import load_audio
    from separator.request import AudioConfig

    song = tmp_path / "song.wav"                 # 15 s of real mixtures: two U-Net segments, one batch
    fx.write_f32_wav(song, long_mixture(15.0)[0])
    cfg = AudioConfig(codec="wav", samplerate=44100, channels=2)
    opts = {"batch": 2}
    roles = ("vocals", "background")

    def run(folder: Path):
        targets = {r: folder / f"{r}.wav" for r in roles}
        separate_file(song, targets, mode="AudioAndBackground", audio_config=cfg, model="spleeter-2stems",
                      device="cpu", model_options=opts)
        return {r: load_audio(targets[r], 44100, 2) for r in roles}

    (tmp_path / "ref").mkdir()
    (tmp_path / "oom").mkdir()
    ref = run(tmp_path / "ref")
    loaded = registry.load_model("spleeter-2stems", device="cpu", **opts)     # the engine's cached instance
    caplog.set_level(logging.INFO, logger=OOM_LOGGER)
    try:
        loaded.oom.reset()
        loaded.oom.fallback_device = CPU                 # pretend GPU; its U-Nets always run out of memory
        with Faults(loaded.nets) as f:
            out = run(tmp_path / "oom")
        assert f.copy_calls and all(r for *_, r in f.calls)
    finally:
        loaded.oom.reset()
        loaded.oom.fallback_device = None
    mix = load_audio(song, 44100, 2)
    for r in roles:
        assert out[r].shape == ref[r].shape and len(out[r]) == len(mix)
        np.testing.assert_allclose(out[r], ref[r], atol=2 / 32768)
        assert np.abs(out[r]).max() > 0.01
    np.testing.assert_allclose(out["vocals"] + out["background"], mix, atol=4 / 32768)
    assert any(r.levelno == logging.WARNING and "out of memory" in r.getMessage() for r in caplog.records)
