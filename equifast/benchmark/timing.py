"""Timing helpers: reusable by any benchmark script (they know nothing about equifast's ops).

Two entry points, both returning a summary ``{"median_s", "min_s", "p20_s", "p80_s", "samples",
"inner"}`` (seconds per call; ``inner`` = calls per sample):

* ``measure(fn, device, repeat=5, min_sample_s=0.005, budget_s=2.0)`` — one callable on its own (what
  ``python -m equifast bench`` uses for every configuration).
* ``compare(fns, device, repeat=5, min_sample_s=0.005, budget_s=None)`` — several contenders side by
  side, for claims of the form "A is x times faster than B" measured in one run::

      from equifast.benchmark.timing import compare
      stats = compare({"torch": lambda: op(x, w, backend="torch"),
                       "cpu": lambda: op(x, w, backend="cpu")}, "cpu", repeat=9)
      ratio = stats["torch"]["median_s"] / stats["cpu"]["median_s"]

  Every contender is called once untimed first (compilation, autotuning, caches). Then round r takes
  one sample of every contender, in an order rotated by r, so that a change in machine load during the
  run hits all contenders alike; each contender's summary is over its ``repeat`` samples (cut to keep
  the whole comparison within ``budget_s`` when given, but never below 3 rounds). State the torch
  thread count (``torch.get_num_threads()``) next to the numbers.

  ``settle=k`` calls a contender k more times untimed right before each of its samples, so that a
  sample follows calls of the same contender, as in a training loop, rather than the other contenders'
  (on CPU the allocator's state differs: glibc gives freed multi-MiB blocks back to the kernel, and a
  contender whose buffers have other sizes leaves the heap so that the next one faults its pages in
  again). The rotation between rounds is unchanged.

How a sample is taken (both entry points):

* CPU: ``time.perf_counter`` around ``inner`` back-to-back calls, ``inner`` chosen so that a sample
  lasts at least ``min_sample_s``; the sample is the time per call.
* CUDA: one call between two CUDA events after an untimed L2 flush (zeroing 256 MiB, as
  ``triton.testing.do_bench`` does); the device is synchronised before the events are read.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Dict, Mapping, Optional, Sequence

import torch

Summary = Dict[str, float]


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], device: str, *, repeat: int = 5, min_sample_s: float = 0.005,
            budget_s: float = 2.0, warmup: bool = True) -> Summary:
    """Median time of ``fn`` in seconds (and min, 20th/80th percentiles, sample count).

    The first call (compile, autotune) is untimed. CPU: each sample runs ``fn`` enough times to last
    ``min_sample_s``; the number of samples is ``repeat``, cut (down to 3) to keep within ``budget_s``.
    CUDA: each sample is one call between CUDA events, after an L2 flush; synchronised.
    """
    if warmup:
        fn()
        synchronize(device)
    if torch.device(device).type == "cuda":
        return _measure_cuda(fn, repeat, budget_s)
    t0 = time.perf_counter()
    fn()
    single = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, math.ceil(min_sample_s / single))
    samples_wanted = max(3, min(repeat, int(budget_s / (single * inner))))
    samples = []
    for _ in range(samples_wanted):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return _summary(samples, inner)


_L2_FLUSH: Dict[str, torch.Tensor] = {}


def _l2_flush_buffer() -> torch.Tensor:
    dev = torch.cuda.current_device()
    flush = _L2_FLUSH.get(str(dev))
    if flush is None:
        flush = _L2_FLUSH[str(dev)] = torch.empty(256 * 2 ** 20, dtype=torch.int8, device="cuda")
    return flush


def _measure_cuda(fn, repeat: int, budget_s: float) -> Summary:
    flush = _l2_flush_buffer()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    single = max(start.elapsed_time(end) / 1e3, 1e-7)
    n = max(5, min(repeat, int(budget_s / single)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return _summary([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)], 1)


def _summary(samples: Sequence[float], inner: int) -> Summary:
    ordered = sorted(samples)

    def q(p):
        return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]
    return {"median_s": statistics.median(ordered), "min_s": ordered[0], "p20_s": q(0.2), "p80_s": q(0.8),
            "samples": len(ordered), "inner": inner}


def _time_once(fn: Callable[[], object], device: str) -> float:
    """Seconds of one synchronised call of ``fn``."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return max(time.perf_counter() - t0, 1e-7)


def _sample(fn: Callable[[], object], device: str, inner: int) -> float:
    """One sample: seconds per call of ``fn`` (CPU: ``inner`` calls; CUDA: one call after an L2 flush)."""
    if torch.device(device).type == "cuda":
        _l2_flush_buffer().zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def compare(fns: Mapping[str, Callable[[], object]], device: str, *, repeat: int = 5,
            min_sample_s: float = 0.005, budget_s: Optional[float] = None,
            warmup: bool = True, settle: int = 0) -> Dict[str, Summary]:
    """Time the contenders ``fns`` (name -> no-argument callable) interleaved; name -> summary.

    See the module docstring: an untimed first call of each, then ``repeat`` rounds (at least 3 when
    cut by ``budget_s``), one sample of every contender per round in an order rotated each round.
    """
    if not fns:
        raise ValueError("compare: fns must name at least one callable, got none")
    if repeat < 1:
        raise ValueError(f"compare: repeat must be >= 1, got {repeat}")
    if settle < 0:
        raise ValueError(f"compare: settle must be >= 0 untimed calls, got {settle}")
    names = list(fns)
    if warmup:
        for name in names:
            fns[name]()
        synchronize(device)
    cuda = torch.device(device).type == "cuda"
    single = {name: _time_once(fns[name], device) for name in names}
    inner = {name: 1 if cuda else max(1, math.ceil(min_sample_s / single[name])) for name in names}
    rounds = repeat
    if budget_s is not None:
        per_round = sum(single[name] * (inner[name] + settle) for name in names)
        rounds = max(min(3, repeat), min(repeat, int(budget_s / per_round)))
    samples: Dict[str, list] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if settle:
                for _ in range(settle):
                    fns[name]()
                synchronize(device)
            samples[name].append(_sample(fns[name], device, inner[name]))
    return {name: _summary(samples[name], inner[name]) for name in names}
