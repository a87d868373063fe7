"""Benchmarks of ``lift_conv`` and ``group_conv`` per backend, with rooflines: the one place for the cases.

``python -m equifast bench`` (or ``python -m equifast.benchmark``) calls :func:`main`; the
pytest-benchmark suites under ``bench/`` import :data:`CASES`, :func:`select` and :func:`prepare`
from here, so both time exactly the same calls.

One module per concern:

==================  ==============================================================================
``cases``           the shapes (``Case``, ``CASES``, scales), the configurations (``Config``,
                    ``select``) and the timed callables (``prepare``)
``timing``          ``measure`` (one callable) and ``compare`` (contenders interleaved, medians):
                    reusable by any benchmark script
``rooflines``       copy bandwidth and matmul throughput; speedups and roofline fractions
``machine``         the environment record (device, CPU, load, versions, git commit)
``train_step``      a training step of ``equifast.models.Figure3Net`` per backend
``report``          results.md and the plots
``cli``             the command line (``build_parser``, ``run``, ``main``)
==================  ==============================================================================

What is timed
  * ``forward``: the op under ``torch.no_grad()`` (inference).
  * ``backward``: ``torch.autograd.grad(out, (x, weight), grad_out, retain_graph=True)`` on a graph
    built once outside the timer (gradients for the input *and* the weight; no bias). Backends
    without their own backward kernels (``reference``, ``torch``) recompute their forward inside it.
  * ``forward+backward``: the op with autograd, then the gradient as above.
  The first call of every timed function (compilation, autotuning, caches) is never timed. On CUDA
  each sample is bracketed by CUDA events after flushing the L2 cache (as ``triton.testing.do_bench``
  does), and the device is synchronised before reading them; on CPU samples use ``time.perf_counter``
  with enough inner iterations to last at least ``min_sample_s``. The reported time is the median.

Rooflines, both measured in the same run on the same device:
  * memory: ``bytes / median / copy_bandwidth`` where ``bytes`` = elements read and written at least
    once by the mode (forward: x + weight + out; backward: grad_out + x + weight + grad_x +
    grad_weight; forward+backward: both) times the element size, and ``copy_bandwidth`` =
    2·N bytes / best time of ``dst.copy_(src)`` on N-byte buffers larger than the caches.
  * compute: ``flops / median / matmul_throughput[dtype]`` where ``flops`` = 2·B·|G|·C_out·H'·W'·C_in'·kh·kw
    for the forward (C_in' = C_in for lift_conv, |G|·C_in for group_conv), twice that for the backward
    (grad input + grad weight), three times for forward+backward; ``matmul_throughput`` = 2·n³ / best
    time of an n x n ``torch.mm`` of the same dtype (float32 on CUDA with TF32 allowed exactly when cuDNN
    convolutions may use it, ``torch.backends.cudnn.allow_tf32``).

Scales: ``full`` (the standard shapes; meant for a GPU), ``cpu`` (the same cases with the batch cut
so the whole set runs in minutes on a small CPU; the default without CUDA) and ``quick`` (tiny
shapes, few repeats; what CI runs).
"""
from .cases import (CASES, DTYPES, LAYOUTS, MODES, SCALES, Case, Config, Unsupported, cases_for, default_backends,
                    default_device, default_dtypes, prepare, select)
from .cli import main, run
from .rooflines import measure_rooflines
from .timing import compare, measure, synchronize
from .train_step import TRAIN_BATCH, prepare_train_step

__all__ = ["Case", "Config", "CASES", "MODES", "LAYOUTS", "DTYPES", "SCALES", "Unsupported", "cases_for",
           "select", "prepare", "measure", "compare", "synchronize", "measure_rooflines", "default_backends",
           "default_device", "default_dtypes", "TRAIN_BATCH", "prepare_train_step", "run", "main"]
