#!/usr/bin/env python
"""Write randomly initialised Demucs models in demucs's local-repo layout.

Exactly the format of the released weights (``demucs.states.serialize_model`` +
``save_with_checksum``): a torch-saved dict ``{klass, args, kwargs, state (half),
training_args}`` named ``<sig>-<sha256[:8]>.th``, plus bag ``<name>.yaml`` files
(``models`` / ``weights`` / ``segment``).  Used by the tests (tiny models, seconds of
CPU) and by the benchmark (``--full``: the published architectures of htdemucs, the
htdemucs_ft bag and hdemucs_mmi with their kwargs, random weights: the same compute)::

    python scripts/make_tiny_demucs.py OUT_DIR            # tiny_htdemucs, tiny_bag, tiny_mix
    python scripts/make_tiny_demucs.py OUT_DIR --full     # + bench_htdemucs, bench_htdemucs_ft, bench_hdemucs_mmi

``OUT_DIR`` is the demucs repo itself (use ``<model_dir>/demucs`` for the separator).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
from fractions import Fraction
from pathlib import Path

import torch
import yaml

SOURCES = ["drums", "bass", "other", "vocals"]


def save_package(model: torch.nn.Module, repo: Path, sig: str, half: bool = True) -> Path:
    """Save ``model`` as demucs.states.save_with_checksum(serialize_model(model)) does."""
    from demucs.states import get_state
    args, kwargs = model._init_args_kwargs
    package = {
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": get_state(model, None, half=half),
        "training_args": {"note": "randomly initialised test model"},
    }
    buf = io.BytesIO()
    torch.save(package, buf)
    checksum = hashlib.sha256(buf.getvalue()).hexdigest()[:8]
    repo.mkdir(parents=True, exist_ok=True)
    path = repo / f"{sig}-{checksum}.th"
    path.write_bytes(buf.getvalue())
    return path


def save_bag(repo: Path, name: str, sigs: list[str], weights=None, segment=None) -> Path:
    data: dict = {"models": sigs}
    if weights is not None:
        data["weights"] = weights
    if segment is not None:
        data["segment"] = segment
    path = repo / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, default_flow_style=None, sort_keys=False))
    return path


def tiny_htdemucs(seed: int, segment=Fraction(1)):
    from demucs.htdemucs import HTDemucs
    torch.manual_seed(seed)
    # depth 3 / nfft 2048: few tokens per second for the cross-transformer, so a chunk is quick
    return HTDemucs(sources=SOURCES, channels=4, depth=3, nfft=2048, t_layers=1, t_heads=1,
                    t_hidden_scale=1.0, dconv_comp=4, segment=segment)


def tiny_demucs(seed: int):
    from demucs.demucs import Demucs
    torch.manual_seed(seed)
    # v3 time-domain: valid_length() > length, so chunks are padded with neighbouring samples
    return Demucs(sources=SOURCES, channels=4, depth=3, resample=False, segment=2)


def tiny_hdemucs(seed: int):
    from demucs.hdemucs import HDemucs
    torch.manual_seed(seed)
    return HDemucs(sources=SOURCES, channels=4, depth=5, nfft=1024, segment=2)   # depth/nfft must merge branches


def make_tiny_repo(repo: Path) -> dict[str, list[Path]]:
    """tiny_htdemucs (1 HTDemucs), tiny_bag (2 HTDemucs, weights, segment override),
    tiny_mix (Demucs + HDemucs, segment 1.5). Returns name -> files."""
    repo = Path(repo)
    a = save_package(tiny_htdemucs(0), repo, "7a1e0001")
    b = save_package(tiny_htdemucs(1), repo, "7a1e0002")
    c = save_package(tiny_demucs(2), repo, "7a1e0003")
    d = save_package(tiny_hdemucs(3), repo, "7a1e0004")
    save_bag(repo, "tiny_htdemucs", ["7a1e0001"])
    save_bag(repo, "tiny_bag", ["7a1e0001", "7a1e0002"],
             weights=[[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 0.5]], segment=0.9)
    save_bag(repo, "tiny_mix", ["7a1e0003", "7a1e0004"], segment=1.5)
    return {"tiny_htdemucs": [a], "tiny_bag": [a, b], "tiny_mix": [c, d]}


#: The published architectures (random weights, the published kwargs): htdemucs's and its
#: fine-tuned bag's are in every .th file they ship, and in MSST's configs/config_musdb18_htdemucs.yaml
#: (HTDemucs's defaults but dconv_mode 3 and bottom_channels 512: 41.98 M parameters, where
#: ``HTDemucs()`` has 26.9 M); hdemucs_mmi is Hybrid Demucs v3 with HDemucs's defaults
#: (MSST's configs/config_musdb18_demucs3_mmi.yaml), run in 44 s segments by its bag file.
REAL_ARCHITECTURES = {
    "htdemucs": ("demucs.htdemucs:HTDemucs", {"dconv_mode": 3, "bottom_channels": 512, "segment": Fraction(39, 5)}),
    "hdemucs_mmi": ("demucs.hdemucs:HDemucs", {}),
}
#: bench name -> (architecture, sub-models, bag segment)
BENCH_MODELS = {
    "bench_htdemucs": ("htdemucs", 1, None),
    "bench_htdemucs_ft": ("htdemucs", 4, None),      # 4 fine-tuned copies, one source each
    "bench_hdemucs_mmi": ("hdemucs_mmi", 1, 44),
}


def real_architecture(arch: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised net of a published Demucs architecture."""
    import importlib
    mod, cls = REAL_ARCHITECTURES[arch][0].split(":")
    torch.manual_seed(seed)
    return getattr(importlib.import_module(mod), cls)(sources=SOURCES, **REAL_ARCHITECTURES[arch][1])


def make_bench_model(repo: Path, name: str = "bench_htdemucs", seed: int = 0) -> list[Path]:
    """Write bench model ``name`` (:data:`BENCH_MODELS`) into ``repo``: its weight files and bag."""
    arch, n, segment = BENCH_MODELS[name]
    paths, sigs = [], []
    for i in range(n):
        sig = hashlib.sha256(f"{name}-{i}".encode()).hexdigest()[:8]
        paths.append(save_package(real_architecture(arch, seed + i), Path(repo), sig))
        sigs.append(sig)
    weights = [[1.0 if j == i else 0.0 for j in range(len(SOURCES))] for i in range(n)] if n > 1 else None
    save_bag(Path(repo), name, sigs, weights=weights, segment=segment)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="demucs repo folder to write into")
    p.add_argument("--full", action="store_true",
                   help=f"also write the benchmark's published-architecture models ({', '.join(BENCH_MODELS)})")
    args = p.parse_args(argv)
    for name, files in make_tiny_repo(args.out).items():
        print(name, *[f.name for f in files])
    if args.full:
        for name in BENCH_MODELS:
            print(name, *[f.name for f in make_bench_model(args.out, name)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
