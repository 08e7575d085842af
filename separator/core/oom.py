"""Out-of-memory fall-back for a model's forward passes: smaller batches, then the CPU.

:class:`OomFallback` runs the ``n`` items of one chunk's work (U-Net segments, Demucs
windows) through a network in batches, with this chain on out-of-memory:

1. on the model's device: free the CUDA cache and retry with half the batch, down to 1.
   The size that worked is remembered, so later chunks start from it instead of failing
   again each time;
2. when a single item still does not fit, the rest of that chunk runs on a CPU copy of
   the network (made on first need and kept), and a warning is logged (once).  The
   device is tried again for the next chunk: memory pressure can be transient when
   several jobs share a GPU;
3. after ``max_failures`` chunks in a row needed the CPU, the instance stays on the CPU
   (and says so in the log).

The math is the same at every step (only the batch size or the device changes), so the
results equal the un-faulted ones to float rounding.  Errors that are not out-of-memory
propagate unchanged, and on a CPU device there is no step 2: the out-of-memory error of
the batch-1 attempt propagates.
"""
from __future__ import annotations

import copy
import gc
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import torch
from torch import nn

log = logging.getLogger(__name__)

#: chunks in a row that may need the CPU before a model instance stays there
MAX_DEVICE_FAILURES = 3

_OOM_TYPES: tuple[type[BaseException], ...] = tuple(
    {t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
     if isinstance(t, type)})
_OOM_MESSAGES = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed",
                 "can't allocate memory")


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error of torch (CUDA, cuBLAS/cuDNN workspaces, the CPU allocator)."""
    if _OOM_TYPES and isinstance(exc, _OOM_TYPES):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def free_cuda_cache() -> None:
    """Give cached CUDA memory back after an out-of-memory error; a no-op (that never
    initialises CUDA) where CUDA is not in use."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()                 # tensors kept alive by reference cycles of the failed attempt
        torch.cuda.empty_cache()


M = TypeVar("M")
N = TypeVar("N", bound=nn.Module)
#: ``step(net, device, lo, hi)``: compute items ``lo:hi`` with ``net`` on ``device`` and store them
Step = Callable[[M, torch.device, int, int], None]


def module_copy(module: N, device: str | torch.device, dtype: torch.dtype | None = None, *,
                memory_format: torch.memory_format | None = None) -> N:
    """A copy of ``module`` on ``device`` (floating tensors in ``dtype``), made without
    allocating anything on the module's own device (a plain deepcopy would, first)."""
    with torch.inference_mode(False), torch.no_grad():
        memo: dict[int, object] = {}
        for p in module.parameters():
            memo[id(p)] = nn.Parameter(p.detach().to(device), requires_grad=False)
        for b in module.buffers():
            memo[id(b)] = b.detach().to(device)
        clone = copy.deepcopy(module, memo)
        kw = {k: v for k, v in (("dtype", dtype), ("memory_format", memory_format)) if v is not None}
        if kw:
            clone.to(**kw)
    return clone


class OomFallback(Generic[M]):
    """The fall-back chain for one network (or networks run together) of one model instance.

    :meth:`run` calls ``step(net, device, lo, hi)`` on consecutive ranges covering
    ``[0, n)``.  ``step`` must store its results only once they are computed (a failed
    attempt is simply redone) and move them where the caller wants them.

    ``fallback_device`` is where work goes when one item does not fit on ``device``
    (None, for a CPU device: nowhere).  It is an attribute so that tests on a CPU-only
    machine can make a CPU "device" fall back to a CPU copy.
    """

    def __init__(self, device: str | torch.device, *, batch: int, cpu_copy: Callable[[M], M], name: str,
                 max_failures: int = MAX_DEVICE_FAILURES) -> None:
        self.device = torch.device(device)
        self.fallback_device: torch.device | None = None if self.device.type == "cpu" else torch.device("cpu")
        self.initial_batch = max(1, int(batch))
        self.name = name
        self.max_failures = max(1, int(max_failures))
        self._cpu_copy = cpu_copy
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget what was learnt: full batch, device first, no CPU copy."""
        with self._lock:
            self.batch = self.initial_batch       # the largest batch known to fit on the device
            self.failures = 0                     # chunks in a row that needed the fall-back
            self.pinned = False                   # gave up on the device for this instance
            self.fallback_net: M | None = None    # the CPU copy, made on first need
            self._warned = False

    def run(self, net: M, n: int, step: Step[M]) -> None:
        """Compute items ``[0, n)`` (one chunk's work) through the chain."""
        lo = 0
        if not self.pinned:
            lo, batch = self._batches(net, self.device, step, 0, n, self.batch,
                                      last=self.fallback_device is None)
            with self._lock:
                self.batch = min(self.batch, batch)
                if lo == n:
                    self.failures = 0
                    return
                self.failures += 1
                self.pinned = self.failures >= self.max_failures
            self._log_fallback()
        self._batches(self._fallback_net(net), self.fallback_device, step, lo, n, self.initial_batch, last=True)

    def _batches(self, net: M, device: torch.device, step: Step[M], lo: int, n: int, batch: int, *,
                 last: bool) -> tuple[int, int]:
        """Items ``lo:n`` on ``device``, halving ``batch`` on out-of-memory.  Returns (first
        item not done, batch size reached): ``n`` unless one item alone ran out of memory,
        which propagates instead when ``last``."""
        while lo < n:
            hi = min(n, lo + batch)
            try:
                step(net, device, lo, hi)
                lo = hi
                continue
            except Exception as exc:  # noqa: BLE001 - anything but out-of-memory propagates
                if not is_oom(exc) or (last and hi - lo == 1):
                    raise
            # out of the except block: the failed attempt's tensors are no longer referenced
            free_cuda_cache()
            if hi - lo == 1:
                return lo, 1
            smaller = min(batch // 2, hi - lo - 1)
            log.warning("%s: out of memory on %s with a batch of %d; retrying with a batch of %d",
                        self.name, device, hi - lo, smaller)
            batch = smaller
        return lo, batch

    def _fallback_net(self, net: M) -> M:
        with self._lock:
            if self.fallback_net is None:
                self.fallback_net = self._cpu_copy(net)
            return self.fallback_net

    def _log_fallback(self) -> None:
        with self._lock:
            first, self._warned = not self._warned, True
            pinned, failures = self.pinned, self.failures
        if pinned:
            log.warning("%s: out of memory on %s even with a batch of 1, %d chunks in a row; staying on "
                        "%s for this model instance (slower; load the model again to retry %s)",
                        self.name, self.device, failures, self.fallback_device, self.device)
        elif first:
            log.warning("%s: out of memory on %s even with a batch of 1; running the rest of this chunk "
                        "on a %s copy of the network (slower); %s is tried again for the next chunk",
                        self.name, self.device, self.fallback_device, self.device)
        else:
            log.info("%s: out of memory on %s again (%d chunk(s) in a row); this chunk runs on %s",
                     self.name, self.device, failures, self.fallback_device)
