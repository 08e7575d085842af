"""Device and precision: the precisions the models run in, autocast, and what a device
computes natively.

Every family takes ``precision`` = ``fp32``, ``bf16`` or ``fp16`` (CUDA only) or ``auto``;
what ``auto`` means is the family's own choice (the bundled model: :func:`fastest`; Demucs:
fp32).  The STFTs, masks and overlap-adds stay float32 whatever the precision.
"""
from __future__ import annotations

import contextlib

import torch

#: ``precision`` -> the dtype its arithmetic runs in
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None for fp32: no autocast)."""
    dtype = PRECISIONS[precision]
    return None if dtype is torch.float32 else dtype


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for one forward pass on ``device``: convolutions, linear layers and
    attention in ``dtype``; autocast keeps the norms, softmax and the STFT / iSTFT in float32
    (HTDemucs de-normalises in float32 before its masks, so the complex spectrograms stay
    complex64).  A plain context for float32 (and for the float32 CPU copy of the
    out-of-memory fall-back)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def native_bf16_cpu() -> bool:
    """True when this CPU computes bf16 natively (AMX or AVX512-BF16, with AVX512 kernels).

    Asks torch (``torch.cpu._is_amx_tile_supported`` / ``_is_avx512_bf16_supported``, private)
    where this torch has both, else the CPU flags the kernel reports (Linux ``/proc/cpuinfo``;
    elsewhere: False, i.e. fp32)."""
    try:
        cpu = torch.backends.cpu.get_cpu_capability()          # e.g. "AVX512"
    except (AttributeError, RuntimeError):
        return False
    if not cpu.startswith("AVX512"):
        return False
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if amx is not None and avx512_bf16 is not None:
        try:
            return bool(amx()) or bool(avx512_bf16())
        except RuntimeError:
            pass
    return bool(cpu_flags() & {"amx_tile", "avx512_bf16"})


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the (Linux) kernel reports; empty where it reports none."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def fastest(device: str | torch.device) -> str:
    """The fastest precision ``device`` computes natively: fp16 on CUDA, bf16 on CPUs with
    native bf16 (:func:`native_bf16_cpu`), else fp32."""
    dev = torch.device(device).type
    if dev == "cuda":
        return "fp16"
    if dev != "cpu":
        return "fp32"
    return "bf16" if native_bf16_cpu() else "fp32"


__all__ = ["PRECISIONS", "autocast", "autocast_dtype", "cpu_flags", "fastest", "native_bf16_cpu"]
