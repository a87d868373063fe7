"""Shared helpers of the Triton kernels: index-map tables, launch configuration, tile gathers.

Index maps. Every group action the kernels need is a *gather table*: for a destination position
q (a pixel of an H x W image or a tap of a kh x kw kernel) and a group element e,
``value[q] = Σ_t weight[e, q, t] · source[index[e, q, t]]``. Exact groups have one tap of weight 1
(a permutation); interpolated C_n / D_n have the group's bilinear taps (weight 0 outside).
The adjoint of a gather (needed by the backward passes) is again a gather: ``transpose_table``
turns the table of e into the table of its transpose (for an exact group that is the inverse
permutation, i.e. the table of e⁻¹), padded to the largest number of taps, so no backward
kernel needs atomics.

Tables are built on the host once per (group, size, device) and cached; the kernels load them
as int32 / float32.
"""
from __future__ import annotations

import threading
from typing import Dict, Sequence, Tuple

import torch
import triton
import triton.language as tl

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


def dummy(device, dtype=torch.int32) -> torch.Tensor:
    key = ("dummy", str(torch.device(device)), dtype)
    hit = _CACHE.get(key)
    if hit is None:
        hit = torch.zeros(1, dtype=dtype, device=device)
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
    the configs tools/gpu_static_check.py found spill-free and fastest by its model)."""
    itemsize = next(v for v in args.values() if hasattr(v, "element_size")).element_size()
    keep = [c for c in configs if shared_bytes(c, itemsize) <= SHARED_MEMORY - 8 * 1024]
    if "TAP_MODE" in args:
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
    """Number of reduction splits for the weight-gradient kernels (partial sums, reduced on the
    host: deterministic, no atomics). Enough programs to fill the GPU, each at least 2048 rows."""
    if interpreting() or torch.device(device).type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, (2 * sms) // max(tiles, 1))
    return int(max(1, min(want, reduction // 2048, 256)))


def split_reduction(rows: int, cols: int, reduction: int, device):
    """(splits, chunk) for a weight-gradient kernel with a rows x cols output reducing over
    ``reduction`` pixels: ``chunk`` pixels per split, a multiple of every BLOCK_K."""
    splits = split_k(triton.cdiv(rows, 64) * triton.cdiv(cols, 64), reduction, device)
    chunk = triton.cdiv(triton.cdiv(reduction, splits), 128) * 128
    return triton.cdiv(reduction, chunk), chunk


def split_partials(splits: int, shape, dtype, device) -> torch.Tensor:
    """Output of a weight-gradient kernel: the gradient itself (``dtype``) when unsplit, else
    float32 partials [splits, *shape]; ``sum_partials`` turns it into the gradient."""
    return torch.empty((splits, *shape), device=device, dtype=torch.float32 if splits > 1 else dtype)


def sum_partials(part: torch.Tensor, dtype) -> torch.Tensor:
    """The gradient from ``split_partials``' buffer (one launch unless split: then one small sum)."""
    return part[0] if part.shape[0] == 1 else part.sum(0).to(dtype)


# ---------------------------------------------------------------------------
# Device side: tile prologue, transposed-conv index block, tile gathers
# ---------------------------------------------------------------------------
@triton.jit
def tile_2d(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program ``pid``'s tile of an M x N output (tiles ordered row-major): row indices, column
    indices and their in-bounds masks."""
    num_n = tl.cdiv(N, BLOCK_N)
    rm = (pid // num_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = (pid % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rm, rn, rm < M, rn < N


@triton.jit
def pixel_bij(r, H, W):
    """Flat pixel indices ``r`` over a B x H x W grid -> (b, i, j)."""
    HW = H * W
    return r // HW, (r % HW) // W, r % W


@triton.jit
def transposed_tap(vi, vj, tap, KW, dh, dw, sh, sw, Ho, Wo):
    """Gather form of a transposed convolution: for padded input rows/columns (vi, vj) [M] and
    kernel taps ``tap`` [K], the output pixel (ii, jj) [M, K] each tap reads and whether it exists
    (vi - a·dh divisible by sh, inside [0, Ho) x [0, Wo); a = tap // KW, c = tap % KW)."""
    inum = vi[:, None] - ((tap // KW) * dh)[None, :]
    jnum = vj[:, None] - ((tap % KW) * dw)[None, :]
    inum_c = tl.maximum(inum, 0)
    jnum_c = tl.maximum(jnum, 0)
    ii = inum_c // sh
    jj = jnum_c // sw
    ok = (inum >= 0) & (jnum >= 0) & (ii * sh == inum_c) & (jj * sw == jnum_c) & (ii < Ho) & (jj < Wo)
    return ii, jj, ok


@triton.jit
def adjoint_tap(ttab, twt, g, tapp, t, KK, ok, MAP: tl.constexpr, TT: tl.constexpr):
    """Tap t of the adjoint kernel table of element row ``g`` at taps ``tapp`` [N]: (source tap,
    weight); without MAP the identity (tap = tapp, weight 1)."""
    if MAP:
        row = (g * KK + tapp) * TT + t
        tap = tl.load(ttab + row, mask=ok, other=0)
        cw = tl.load(twt + row, mask=ok, other=0.0)
    else:
        tap = tapp
        cw = tl.zeros(tapp.shape, dtype=tl.float32) + 1.0
    return tap, cw


@triton.jit
def gather_pixels(row_ptr, cofs, p, q, ok, tab_ptr, wt_ptr, g, H, W, sxh, sxw,
                  MAP: tl.constexpr, T: tl.constexpr, WEIGHTED: tl.constexpr):
    """Tile of images read at view pixels (p, q) (int32 tiles, ``ok`` = inside the image):
    ``row_ptr`` are per-row (or per-column) base pointers (the 64-bit batch offset), ``cofs`` the
    int32 channel/slot offsets. Without MAP: x[row + cofs + p*sxh + q*sxw]; with MAP the view of
    element row ``g`` of the table, Σ_t wt[g, p*W+q, t] · x[row + cofs + pixel index[g, p*W+q, t]].
    Offsets inside one sample are int32 (``supports`` guards per-sample extents < 2^31)."""
    if MAP:
        vp = tl.where(ok, p * W + q, 0)
        row = (g * H * W + vp) * T
        if WEIGHTED:
            acc = tl.zeros(p.shape, dtype=tl.float32)
            for t in tl.static_range(T):
                src = tl.load(tab_ptr + row + t, mask=ok, other=0)
                wgt = tl.load(wt_ptr + row + t, mask=ok, other=0.0)
                # a zero-weight tap (outside the image) points at the placeholder pixel 0: skip it,
                # or a NaN/Inf there would leak in as 0·NaN
                v = tl.load(row_ptr + (cofs + (src // W) * sxh + (src % W) * sxw), mask=ok & (wgt != 0), other=0.0)
                acc += wgt * v.to(tl.float32)
            return acc.to(row_ptr.dtype.element_ty)
        else:
            src = tl.load(tab_ptr + row, mask=ok, other=0)
            return tl.load(row_ptr + (cofs + (src // W) * sxh + (src % W) * sxw), mask=ok, other=0.0)
    else:
        return tl.load(row_ptr + (cofs + p * sxh + q * sxw), mask=ok, other=0.0)


@triton.jit
def gather_taps(w_ptr, base, tap, ok, tab_ptr, wt_ptr, g, KK,
                MAP: tl.constexpr, T: tl.constexpr, WEIGHTED: tl.constexpr):
    """Tile of a (contiguous, taps innermost) weight read at taps ``tap`` (int32 offsets): without
    MAP w[base + tap]; with MAP the kernel acted on by element row ``g``,
    Σ_t wt[g, tap, t] · w[base + index[g, tap, t]]."""
    if MAP:
        row = (g * KK + tap) * T
        if WEIGHTED:
            acc = tl.zeros(tap.shape, dtype=tl.float32)
            for t in tl.static_range(T):
                src = tl.load(tab_ptr + row + t, mask=ok, other=0)
                wgt = tl.load(wt_ptr + row + t, mask=ok, other=0.0)
                v = tl.load(w_ptr + (base + src), mask=ok & (wgt != 0), other=0.0)  # skip zero-weight taps
                acc += wgt * v.to(tl.float32)
            return acc.to(w_ptr.dtype.element_ty)
        else:
            src = tl.load(tab_ptr + row, mask=ok, other=0)
            return tl.load(w_ptr + (base + src), mask=ok, other=0.0)
    else:
        return tl.load(w_ptr + (base + tap), mask=ok, other=0.0)
