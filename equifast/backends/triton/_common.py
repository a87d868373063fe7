"""Shared host helpers of the Triton kernels: gather tables, launch configuration, split-K.

No kernel reads a gather table: exact groups reach the kernels as affine views and filter
pre-passes (``_forward``). The tables here serve the host-side pre-pass of views that are no
affine map (interpolated C_n / D_n, arbitrary pixel permutations): for a destination pixel q and a
group element e, ``value[q] = Σ_t weight[e, q, t] · source[index[e, q, t]]``; ``transpose_table``
gives the adjoint gather (the view lift's input gradient), padded to the largest fan-in, so no
atomics are needed. Tables are built once per (group, size, device) and cached.
"""
from __future__ import annotations

import threading
from typing import Dict, Sequence, Tuple

import torch
import triton

from . import interpreting

_LOCK = threading.Lock()
_CACHE: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}


# ---------------------------------------------------------------------------
# Host side: tables
# ---------------------------------------------------------------------------
def transpose_table(index: torch.Tensor, weight: torch.Tensor, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of gather tables: index/weight [m, P, T] over sources in [0, size) ->
    (index_T [m, size, T'], weight_T [m, size, T']) with
    Σ_q Σ_t w[e,q,t]·y[q]·[index[e,q,t] = s] = Σ_t' weight_T[e,s,t']·y[index_T[e,s,t']]."""
    m, P, T = index.shape
    dst = torch.arange(P).repeat_interleave(T)
    per = []
    width = 1
    for e in range(m):
        src, w = index[e].reshape(-1), weight[e].reshape(-1)
        keep = w != 0
        s, d, ww = src[keep], dst[keep], w[keep]
        order = torch.argsort(s, stable=True)
        s, d, ww = s[order], d[order], ww[order]
        counts = torch.bincount(s, minlength=size)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(s.numel()) - starts[s]
        per.append((s, d, ww, rank))
        if counts.numel():
            width = max(width, int(counts.max()))
    index_t = torch.zeros(m, size, width, dtype=torch.int64)
    weight_t = torch.zeros(m, size, width, dtype=weight.dtype)
    for e, (s, d, ww, rank) in enumerate(per):
        index_t[e, s, rank] = d
        weight_t[e, s, rank] = ww
    return index_t, weight_t


def gather_table(group, H: int, W: int, elements: Sequence[int], device, transposed: bool = False):
    """(index int32 [m, H*W, T], weight float32 [m, H*W, T]) for the image action of ``elements``
    (row i = element elements[i]) on H x W, or of its adjoint when ``transposed``; cached."""
    elements = tuple(int(e) for e in elements)
    key = (group.name, id(group), int(H), int(W), elements, str(torch.device(device)), bool(transposed))
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    index, weight = group.sampling_tables(H, W)
    sel = torch.tensor(elements, dtype=torch.int64)
    index, weight = index[sel], weight[sel]
    if transposed:
        index, weight = transpose_table(index, weight, H * W)
    out = (index.to(device=device, dtype=torch.int32).contiguous(),
           weight.to(device=device, dtype=torch.float32).contiguous())
    with _LOCK:
        _CACHE[key] = out
    return out


def int_table(rows, device) -> torch.Tensor:
    """A small int32 table (Cayley-derived slot maps) on ``device``; cached."""
    rows = tuple(tuple(int(v) for v in r) for r in rows)
    key = ("int", rows, str(torch.device(device)))
    hit = _CACHE.get(key)
    if hit is None:
        hit = torch.tensor(rows, dtype=torch.int32, device=device).contiguous()
        with _LOCK:
            _CACHE[key] = hit
    return hit


def dot_precision(dtype: torch.dtype) -> str:
    """tf32 for float32 when PyTorch's convolutions may use it (torch.backends.cudnn.allow_tf32)."""
    if dtype == torch.float32 and not interpreting() and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


# ---------------------------------------------------------------------------
# Launch configuration
# ---------------------------------------------------------------------------
INTERPRETER_META = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128)  # few, large programs: the interpreter pays per op


SHARED_MEMORY = 227 * 1024   # the most shared memory one block can get on sm_90 (H100/H200)


def _configs(rows):
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), num_warps=warps, num_stages=stages)
            for bm, bn, bk, warps, stages in rows]


def gemm_configs():
    """Autotuning space of the backward implicit-GEMM kernels on a GPU (tiles over rows x
    columns, K step): no duplicates; ``prune_configs`` drops what cannot launch."""
    return _configs((
        (128, 64, 32, 4, 3), (128, 128, 32, 8, 3), (64, 64, 32, 4, 4), (128, 32, 32, 4, 4),
        (64, 128, 32, 4, 3), (128, 64, 64, 8, 3), (256, 64, 32, 8, 3), (64, 32, 32, 2, 4),
        (32, 32, 32, 2, 2), (128, 16, 32, 4, 3), (64, 64, 32, 4, 2), (128, 64, 32, 8, 2),
        (64, 128, 32, 4, 2)))


def forward_configs():
    """Autotuning space of the forward GEMM (``_forward``): BLOCK_K 16 / 32 for the flattened tiny K
    of image lifts, 32 / 64 with 3-4 stages for the (tap, channel block) walk of deep lifts and
    group convs, wide N for the folded n·C_out columns. ``prune_configs`` keeps the ones of a walk."""
    return _configs((
        (128, 32, 16, 4, 2), (128, 64, 16, 4, 2), (128, 128, 16, 8, 2), (64, 128, 16, 4, 2),
        (64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (128, 128, 32, 8, 3), (64, 256, 32, 8, 3),
        (128, 256, 32, 8, 3), (128, 64, 64, 4, 3), (128, 128, 64, 8, 3), (64, 128, 64, 4, 3),
        (64, 64, 64, 4, 4)))


def shared_bytes(config, itemsize: int) -> int:
    """Shared memory the pipelined A and B tiles of ``config`` need (num_stages copies of each)."""
    m = config.kwargs
    return config.num_stages * (m["BLOCK_M"] + m["BLOCK_N"]) * m["BLOCK_K"] * itemsize


def prune_configs(configs, args):
    """The configs the autotuner tries for a launch with arguments ``args`` (name -> value): the
    pipelined tiles fit in shared memory (the rest could not launch) and, for the forward GEMM, the
    tile suits its K walk (flattened: BLOCK_M·BLOCK_K <= 2048 and BLOCK_N <= 128; tap walk:
    BLOCK_K >= 32 and BLOCK_N·BLOCK_K <= 8192, for float32 BLOCK_K = 32 and BLOCK_M·BLOCK_N <= 16384:
    the configs tools/gpu_static_check.py found spill-free and fastest by its model; for the
    weight-gradient GEMM's flat walk BLOCK_N·BLOCK_K <= 2048, larger tiles spill)."""
    itemsize = next(v for v in args.values() if hasattr(v, "element_size")).element_size()
    keep = [c for c in configs if shared_bytes(c, itemsize) <= SHARED_MEMORY - 8 * 1024]
    if "gw_ptr" in args:                     # weight gradient: the flat walk gathers a [BLOCK_K, BLOCK_N] tile
        if not args["TAP_MODE"]:
            keep = [c for c in keep if c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] <= 2048]
    elif "TAP_MODE" in args:
        if args["TAP_MODE"]:
            keep = [c for c in keep if c.kwargs["BLOCK_K"] >= 32 and c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] <= 8192
                    and (itemsize <= 2 or (c.kwargs["BLOCK_K"] == 32 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 16384))]
        else:
            keep = [c for c in keep if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_K"] <= 2048 and c.kwargs["BLOCK_N"] <= 128]
    return keep


def _prune(configs, named_args, **kwargs):
    return prune_configs(configs, dict(named_args, **kwargs))


_TUNED: Dict[object, object] = {}


def launcher(kernel, key, configs=gemm_configs):
    """The kernel to launch and the meta-parameters to pass: a single fixed config under the
    interpreter (fast tests), an autotuned wrapper keyed on ``key`` (argument names) over
    ``configs()`` (pruned to what fits in shared memory) on a GPU."""
    if interpreting():
        return kernel, dict(INTERPRETER_META)
    tuned = _TUNED.get(kernel)
    if tuned is None:
        tuned = triton.autotune(configs=configs(), key=list(key),
                                prune_configs_by=dict(early_config_prune=_prune))(kernel)
        with _LOCK:
            _TUNED[kernel] = tuned
    return tuned, {}


def split_k(tiles: int, reduction: int, device) -> int:
    """Number of reduction splits for the weight-gradient kernel (float32 partials summed on the
    host: deterministic, no atomics). Enough programs to fill the GPU, each at least 2048 pixels."""
    if interpreting() or torch.device(device).type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, (2 * sms) // max(tiles, 1))
    return int(max(1, min(want, reduction // 2048, 256)))
