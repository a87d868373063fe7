"""View-frame group convolution in the group-Fourier basis (see ``basis``): one plain conv2d per
*unit*, a unit being one copy of an irreducible (dimension d) with its d x d matrix Ŵ of
C_out x C_in filters (C_n's complex frequencies are three 1-d units each: ``basis.cyclic``).

The stack is mixed into rows, U[r] = Σ_g t_in[r, g] s[:, g]: every unit gets one dense image
[B, d*C, H, W] (its d rows the channel blocks), the images of a chunk one after the other in one
buffer, so that each is the input of its convolution without a copy. The units are taken in chunks of
at most 2n rows (``CHUNK_ROWS``: every unit of every group in one chunk, 1-d units and blocks):

    U = t_in ·_g s                       one mix per chunk                          [B, d*C_in, H, W] per unit
    Ŵ_k = t_w_k ·_h w                    all units in one small product             [d*C_out, d*C_in, kh, kw]
    Y_k = conv2d(U_k, Ŵ_k)               one call per unit, the only heavy step     [B, d*C_out, H', W']
    out += t_out ·_r Y                   one mix per chunk, reading every Y_k where it is  [B, n, C_out, H', W']

A mix (``mix``) applies a small matrix across planes [P, Q] (the copies of a stack, the rows, the
convolution outputs, each a view): on CPU one pass of the compiled kernel ``equifast_C::group_mix``
(no gathering copy, results written in place in their final layout), elsewhere plain PyTorch.

The bias enters the trivial representation's unit as its conv's bias.
backward, with the same matrices transposed (no recomputed forward, no autograd), per chunk:
    gY = t_outᵀ ·_g grad_out;  gŴ_k = conv_weight_grad(gY_k, U_k) for every unit, then U is freed;
    gU_k = conv_input_grad(gY_k, Ŵ_k);  grad_s += t_inᵀ ·_r gU;  at the end grad_w = t_wᵀ ·_k gŴ
On CPU at stride 1 the input gradient runs as a forward convolution, conv2d(gY_k, flip(Ŵ_k)ᵀ)
(``_conv_grad``, ``_flipped_padding``): oneDNN's forward kernel is faster than its backward-data kernel
on these shapes.
One convolution per unit rather than one grouped convolution over many: oneDNN's grouped
convolutions were measured slower per FLOP on CPU (their backward 1.5-1.7x at 2-3 groups in a quiet
microbenchmark). The exception (``grouped``): groups with more than 16 one-dimensional units (C16)
run them as grouped convolutions over runs of at most n/2 rows, mixed batch-major as [B, R, C, H, W]
(a third of the calls), one batch slice after the other, each slice's rows within ``SLICE_BYTES``
(``slices``: small blocks are reused by the allocator, large ones are faulted in again every time).

Layouts (``_Rows``, ``_Stack``): a contiguous stack gives NCHW unit images (planes [B, C*H*W]); a
channels_last stack (memory B, H, W, n, C) gives NHWC unit images (planes [B*H*W, C], read without a
copy) for channels_last convolutions; outputs and gradients come back in the stack's layout (grouped
convolutions read contiguous stacks only).

Precision: float32/float64 compute in their own dtype. bfloat16 (and float16 off CPU) mixes in
float32 and convolves in its own dtype (U, Ŵ and Y are rounded to it); float16 on CPU runs in float32
and rounds once (oneDNN's CPU float16 convolution is unreliable, see ``equifast.backends._conv2d``).
Autocast is switched off inside: the dtypes are the ones chosen here.

Eval-mode weight cache: ``prepare_weight`` returns the transformed filters of every unit (no
autograd) and ``forward_prepared`` runs the forward with them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..._layout import empty_stack, is_channels_last
from . import basis as _basis

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _dtypes(dtype: torch.dtype, device) -> Tuple[torch.dtype, torch.dtype]:
    """(dtype of the group-axis mixes, dtype of the convolutions): low precision mixes in float32 and
    convolves in its own dtype, except float16 on CPU (see ``equifast.backends._conv2d``)."""
    if dtype == torch.float64:
        return torch.float64, torch.float64
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        return torch.float32, torch.float32
    return torch.float32, dtype


# ---------------------------------------------------------------------------------------------
# Units: the convolutions of a basis
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One convolution: a copy of an irreducible of dimension d."""
    d: int
    t_in: torch.Tensor              # [d, n]
    t_w: torch.Tensor               # [d*d, n]
    t_out: torch.Tensor             # [n, d]
    bias: Optional[torch.Tensor]    # [d]: the conv's bias is bias ⊗ b (the trivial unit only)


@dataclass(frozen=True)
class Chunk:
    """Units whose rows are mixed together (R = Σ d rows): t_in [R, n], t_out [n, R]."""
    units: Tuple[Unit, ...]
    t_in: torch.Tensor
    t_out: torch.Tensor

    @property
    def dims(self) -> List[int]:
        return [u.d for u in self.units]


@dataclass(frozen=True)
class Units:
    chunks: Tuple[Chunk, ...]       # every unit (the 1-d ones first), in chunks of at most CHUNK_ROWS(n) rows
    runs: Tuple[Chunk, ...]         # the 1-d units in runs of at most RUN_ROWS(n) rows (grouped convs)
    blocks: Tuple[Unit, ...]        # the units of dimension d > 1 (each on its own next to the runs)
    t_w: torch.Tensor               # [Σ d², n]: every unit's t_w, in the order of ``all``

    @property
    def all(self) -> Tuple[Unit, ...]:
        """Every unit: the 1-d ones, then the blocks (the order of the chunks, and of runs then blocks)."""
        return tuple(u for c in self.chunks for u in c.units)

    def max_rows(self, in_groups: bool) -> int:
        """The most rows one step mixes at once (a chunk, or a run or a block)."""
        if in_groups:
            return max([len(c.units) for c in self.runs] + [u.d for u in self.blocks])
        return max(c.t_in.shape[0] for c in self.chunks)


def CHUNK_ROWS(n: int) -> int:   # noqa: N802 (a tuning constant of the group order)
    """Rows mixed and convolved together: at most 2n, which takes every unit of every group in one
    chunk (a basis has n rows, C_n's three-row complex units 3n/2 at most): one pass over the stack in,
    one out. Smaller chunks (tests) split the units, a unit never."""
    return max(1, 2 * n)


def RUN_ROWS(n: int) -> int:   # noqa: N802
    """Rows of 1-d units in one grouped convolution (``grouped``): at most n/2, as a grouped call holds
    its mixed input, output gradient and input gradient at once."""
    return max(1, n // 2)


MODE = "auto"          # "units" or "grouped" force one way (tests, benchmarks)
GROUPED_FROM_UNITS = 16   # more 1-d units than this take grouped convs


def grouped(units: "Units") -> bool:
    """Whether the 1-d units run as grouped convolutions over runs of at most n/2 rows (a third of the
    calls) rather than one convolution per unit. Measured on this CPU (A/B of both in one process,
    interleaved, 32->32 channels, B=8, with the compiled mixes): C16 (23 units) grouped 1-14% faster in
    four of four runs at two threads and 3% at one; C8 (11 units) one conv per unit 1-9% faster at one
    and two threads; C4 (5) and D4 (4) within noise at one thread, one conv per unit ahead for C4."""
    if MODE != "auto":
        return MODE == "grouped"
    return sum(len(r.units) for r in units.runs) > GROUPED_FROM_UNITS


def _chunk(units) -> Chunk:
    return Chunk(tuple(units), torch.cat([u.t_in for u in units]), torch.cat([u.t_out for u in units], 1))


def _split(flat, rows):
    """1-d units in runs of about equal size, at most ``rows`` each."""
    count = -(-len(flat) // rows)
    bounds = [round(i * len(flat) / count) for i in range(count + 1)] if count else [0]
    return tuple(_chunk(flat[a:b]) for a, b in zip(bounds, bounds[1:]))


def _fill(units, rows):
    """Units in order, in chunks of at most ``rows`` rows (a unit of more rows on its own)."""
    chunks, part, used = [], [], 0
    for u in units:
        if part and used + u.d > rows:
            chunks.append(_chunk(part))
            part, used = [], 0
        part.append(u)
        used += u.d
    return tuple(chunks + ([_chunk(part)] if part else []))


def units_of(b: _basis.Basis) -> List[Unit]:
    """Every copy of every block of the basis as a unit (float64, CPU)."""
    out = []
    for blk in b.blocks:
        d = blk.d
        for s in range(blk.units):
            rows = slice(s * d, (s + 1) * d)
            bias = blk.bias[rows]
            out.append(Unit(d, blk.t_in[rows], blk.t_w[s].reshape(d * d, -1), blk.t_out[:, rows],
                            bias if bool(bias.any()) else None))
    return out


_UNITS: Dict[tuple, Units] = {}
_LOCK = threading.Lock()


def _units(group, device, dtype) -> Units:
    """The units of ``group`` on ``device`` in ``dtype`` (cached per group, device and dtype)."""
    key = (group.name, id(group), str(device), dtype)
    hit = _UNITS.get(key)
    if hit is None:
        units = [Unit(u.d, u.t_in.to(device, dtype), u.t_w.to(device, dtype), u.t_out.to(device, dtype),
                      None if u.bias is None else u.bias.to(device, dtype)) for u in units_of(_basis.get(group))]
        flat = [u for u in units if u.d == 1]
        blocks = tuple(u for u in units if u.d > 1)
        hit = Units(_fill(flat + list(blocks), CHUNK_ROWS(group.order)), _split(flat, RUN_ROWS(group.order)),
                    blocks, torch.cat([u.t_w for u in flat + list(blocks)]))
        with _LOCK:
            _UNITS[key] = hit
    return hit


# ---------------------------------------------------------------------------------------------
# Group-axis mixes over planes
# ---------------------------------------------------------------------------------------------
MIX = "auto"           # "torch": the plain-PyTorch mix everywhere (tests, benchmarks)
_COMPILED_MIX: Optional[bool] = None


def _compiled_mix():
    """``torch.ops.equifast_C.group_mix`` where equifast._C is built with its CPU kernels, else None
    (looked up once, on first use)."""
    global _COMPILED_MIX
    if _COMPILED_MIX is None:
        from .._compiled import has_kernel
        _COMPILED_MIX = has_kernel("group_mix", "CPU")
    return torch.ops.equifast_C.group_mix if _COMPILED_MIX else None


def mix(T: torch.Tensor, inputs: List[torch.Tensor], outputs: List[torch.Tensor], accumulate: bool = False) -> None:
    """outputs[r] = Σ_g T[r, g] inputs[g] (``accumulate``: +=), over 2-D planes [P, Q] with unit column
    stride (any row stride: the copies of a stack, a list of separate convolution outputs).

    Two implementations of the same sum: on CPU with T, inputs and outputs of one dtype (float32 or
    float64), the compiled kernel ``equifast_C::group_mix`` (csrc/cpu/group_mix.cpp: one pass that
    reads the planes where they are and writes the outputs in place); elsewhere (CUDA, low precision,
    no compiled extension, ``MIX = "torch"``) plain PyTorch: the inputs stacked, one product, the
    rows copied (or added) into the outputs, converting dtypes."""
    op = _compiled_mix() if MIX == "auto" and T.device.type == "cpu" else None
    if op is not None and all(t.dtype == T.dtype for t in inputs) and all(t.dtype == T.dtype for t in outputs):
        op(T.contiguous(), inputs, outputs, accumulate)
        return
    X = torch.stack(inputs).to(T.dtype)
    Y = torch.mm(T, X.view(len(inputs), -1)).view(len(outputs), *X.shape[1:])
    for o, y in zip(outputs, Y):
        if accumulate:
            o.add_(y)
        else:
            o.copy_(y)


def image_planes(x: torch.Tensor, channels_last: bool, parts: int = 1) -> List[torch.Tensor]:
    """The ``parts`` channel blocks of an image x [B, parts*C, H, W] as planes: [B, C*H*W] for a
    contiguous image, [B*H*W, C] for a channels_last one (views; an image in the other layout is
    copied first)."""
    B, PC, H, W = x.shape
    if channels_last:
        x = x.permute(0, 2, 3, 1)
        return list(x.contiguous().view(B * H * W, parts, PC // parts).unbind(1))
    return list(x.contiguous().view(B, parts, -1).unbind(1))


def stack_planes(s: torch.Tensor, channels_last: bool) -> List[torch.Tensor]:
    """The n copies of a stack [B, n, C, H, W] as planes: [B, C*H*W] (contiguous; memory B, n, C, H, W)
    or [B*H*W, C] (channels_last; memory B, H, W, n, C), views of ``s`` (a stack in the other layout is
    copied first)."""
    B, n, C, H, W = s.shape
    if channels_last:
        return list(s.permute(0, 3, 4, 1, 2).contiguous().view(B * H * W, n, C).unbind(1))
    return list(s.contiguous().view(B, n, -1).unbind(1))


def transformed_weights(weight: torch.Tensor, units: Units, conv_dtype) -> List[torch.Tensor]:
    """Ŵ of every unit (in the order of ``units.all``) [d*C_out, d*C_in, kh, kw], Ŵ[(a, o), (b, c)] =
    Σ_h t_w[(a, b), h] weight[o, h, c]: one small product over the weight."""
    C_out, n, C_in, kh, kw = weight.shape
    w = weight.to(units.t_w.dtype).transpose(0, 1).reshape(n, -1)
    mixed = torch.matmul(units.t_w, w)                                  # [(unit a b), (o c k l)]
    hats, row = [], 0
    for u in units.all:
        d = u.d
        h = mixed[row:row + d * d]
        row += d * d
        if d > 1:
            h = h.view(d, d, C_out, C_in, kh, kw).permute(0, 2, 1, 3, 4, 5)
        hats.append(h.reshape(d * C_out, d * C_in, kh, kw).to(conv_dtype))
    return hats


def weight_grad(units: Units, g_hats: List[torch.Tensor], shape) -> torch.Tensor:
    """The adjoint of ``transformed_weights``: [C_out, n, C_in, kh, kw] from every unit's gŴ."""
    C_out, n, C_in, kh, kw = shape
    parts = []
    for u, g in zip(units.all, g_hats):
        d = u.d
        g = g.to(units.t_w.dtype)
        if d > 1:
            g = g.reshape(d, C_out, d, C_in, kh * kw).permute(0, 2, 1, 3, 4)
        parts.append(g.reshape(d * d, -1))
    g = torch.cat(parts) if len(parts) > 1 else parts[0]
    return torch.matmul(units.t_w.t(), g).view(n, C_out, C_in, kh, kw).transpose(0, 1)


# ---------------------------------------------------------------------------------------------
# The two layouts: contiguous stacks give NCHW unit images, channels_last stacks NHWC ones
# ---------------------------------------------------------------------------------------------
class _Rows:
    """A stack [B, n, C, H, W] read as rows for the convolutions, in the layout of the stack: each
    unit of dimension d gets one dense image [B, d*C, H, W] (contiguous, or channels_last for a
    channels_last stack, memory B, H, W, n, C), its d rows the channel blocks (a, c), and one ``mix``
    of the stack's copies writes the images of a whole chunk (one buffer, the images one after the
    other)."""

    def __init__(self, s: torch.Tensor, channels_last: bool):
        B, n, C, H, W = s.shape
        self.shape, self.cl, self.device = (B, C, H, W), channels_last, s.device
        self.planes = stack_planes(s, channels_last)

    def images(self, dims: List[int], T: torch.Tensor, dtype) -> List[torch.Tensor]:
        """The rows T [Σ dims, n] as one image [B, d*C, H, W] in ``dtype`` per d of ``dims`` (channels
        (a, c)), the images one after the other in one buffer, written by one mix."""
        B, C, H, W = self.shape
        buf = torch.empty(T.shape[0] * B * C * H * W, dtype=dtype, device=self.device)
        images, planes, start = [], [], 0
        for d in dims:
            part = buf[start:start + B * d * C * H * W]
            start += part.numel()
            image = part.view(B, H, W, d * C).permute(0, 3, 1, 2) if self.cl else part.view(B, d * C, H, W)
            images.append(image)
            planes += image_planes(image, self.cl, d)
        mix(T, self.planes, planes)
        return images

    def block(self, T: torch.Tensor, dtype) -> torch.Tensor:
        """The rows of T [d, n] as one image [B, d*C, H, W] in ``dtype`` (channels (a, c))."""
        return self.images([T.shape[0]], T, dtype)[0]

    def empty_image(self, C: int, dtype) -> torch.Tensor:
        """An uninitialised image [B, C, H, W] in the rows' layout (its shape for an input gradient)."""
        B, _, H, W = self.shape
        if self.cl:
            return torch.empty(B, H, W, C, dtype=dtype, device=self.device).permute(0, 3, 1, 2)
        return torch.empty(B, C, H, W, dtype=dtype, device=self.device)


class _Stack:
    """A stack [B, n, C, H, W] of ``dtype`` in the rows' layout, written one batch slice after the
    other (``begin``): the first addition to a slice writes it, the next ones add; each addition one
    ``mix`` reading the images where they are. The stack is allocated at the first addition, after
    the first rows are freed (their memory is taken again rather than new pages)."""

    def __init__(self, n: int, shape, dtype, channels_last: bool, device):
        self.n, self.shape, self.dtype, self.cl, self.device = n, shape, dtype, channels_last, device
        self.stack, self.part, self.planes = None, slice(None), None

    def begin(self, part: slice) -> None:
        """The next additions go to the batch slice ``part``."""
        self.part, self.planes = part, None

    def _add(self, T, planes):
        started = self.planes is not None
        if not started:
            if self.stack is None:
                B, C, H, W = self.shape
                self.stack = empty_stack((B, self.n, C, H, W), self.cl, dtype=self.dtype, device=self.device)
            self.planes = stack_planes(self.stack[self.part], self.cl)    # views: contiguous batch slices
        mix(T, planes, self.planes, started)

    def add_images(self, dims: List[int], T: torch.Tensor, images: List[torch.Tensor]) -> None:
        """Adds T [n, Σ dims] applied to the rows of the images [B, d*C, H, W] (one per d of ``dims``);
        empties ``images``."""
        planes = [p for d, y in zip(dims, images) for p in image_planes(y, self.cl, d)]
        images.clear()
        self._add(T, planes)

    def add_block(self, T: torch.Tensor, image: torch.Tensor) -> None:
        """Adds T [n, d] applied to the d row-blocks of image [B, d*C, H, W]."""
        self.add_images([T.shape[1]], T, [image])

    def result(self) -> torch.Tensor:
        if self.stack is None:      # nothing added (no units)
            B, C, H, W = self.shape
            return torch.zeros(B, self.n, C, H, W, dtype=self.dtype, device=self.device)
        return self.stack


# ---------------------------------------------------------------------------------------------
# Convolution with explicit padding
# ---------------------------------------------------------------------------------------------
def _conv2d(x, weight, bias, padding, dilation, groups=1, stride=(1, 1)):
    """conv2d with explicit padding (top, bottom, left, right)."""
    pt, pb, pl, pr = padding
    if pt == pb and pl == pr:
        return F.conv2d(x, weight, bias, stride, (pt, pl), dilation, groups)
    return F.conv2d(F.pad(x, (pl, pr, pt, pb)), weight, bias, stride, 0, dilation, groups)


def _conv(x, weight, bias, plan, groups=1):
    return _conv2d(x, weight, bias, plan.padding, plan.dilation, groups, plan.stride)


def _flipped_padding(plan, kernel):
    """The padding under which the input gradient of a stride-1 ``_conv`` is the convolution of its
    output gradient with the flipped, transposed filters: d*(k-1) - p on every side; None for other
    strides, or where a side's padding exceeds the kernel's reach (then it would crop)."""
    if tuple(plan.stride) != (1, 1):
        return None
    (kh, kw), (dh, dw) = kernel, plan.dilation
    pt, pb, pl, pr = plan.padding
    pads = (dh * (kh - 1) - pt, dh * (kh - 1) - pb, dw * (kw - 1) - pl, dw * (kw - 1) - pr)
    return pads if min(pads) >= 0 else None


def _conv_grad(grad_y, x, weight, plan, which, groups=1):
    """The input gradient (which = "input"; x: an image of the input's shape and layout, its values
    unread) or the weight gradient (which = "weight"; x: the input) of ``_conv``. On CPU at stride 1 the
    input gradient is a forward conv2d of grad_y with the flipped, transposed filters (``_flipped_padding``)."""
    if which == "input" and grad_y.device.type == "cpu":     # measured with oneDNN only
        flipped = _flipped_padding(plan, weight.shape[-2:])
        if flipped is not None:
            C_out, C_in = weight.shape[0] // groups, weight.shape[1]
            w_t = weight.view(groups, C_out, C_in, *weight.shape[-2:]).transpose(1, 2).flip(-2, -1)
            return _conv2d(grad_y, w_t.reshape(groups * C_in, C_out, *weight.shape[-2:]), None, flipped,
                           plan.dilation, groups)
    pt, pb, pl, pr = plan.padding
    symmetric = pt == pb and pl == pr
    H, W = x.shape[-2:]
    if symmetric:
        inp = x
    elif which == "input":
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        inp = torch.empty(x.shape[0], x.shape[1], H + pt + pb, W + pl + pr, dtype=grad_y.dtype,
                          device=grad_y.device, memory_format=fmt)
    else:
        inp = F.pad(x, (pl, pr, pt, pb))
    mask = [which == "input", which == "weight", False]
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad_y, inp, weight, None, list(plan.stride), [pt, pl] if symmetric else [0, 0], list(plan.dilation),
        False, [0, 0], groups, mask)
    if which == "weight":
        return gw
    return gx if symmetric else gx[..., pt:pt + H, pl:pl + W]


def _bias(u: Unit, bias, conv_dtype):
    return None if u.bias is None or bias is None else (u.bias[:, None] * bias).reshape(-1).to(conv_dtype)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def group_conv_forward(s, weight, bias, plan):
    with torch.autocast(s.device.type, enabled=False):   # dtypes are chosen here (``_dtypes``)
        return _forward(s, prepare_weight(weight, plan.group, s.device, s.dtype), bias, plan)


def group_conv_backward(grad_out, s, weight, plan, output_mask):
    """(grad_s, grad_weight, None): the bias gradient is left to the op (a sum of grad_out)."""
    with torch.autocast(s.device.type, enabled=False):
        return _backward(grad_out, s, weight, plan, output_mask)


@dataclass(frozen=True)
class Prepared:
    """The transformed filters of every unit of ``group`` for inputs of ``dtype`` (``prepare_weight``)."""
    group: object
    dtype: torch.dtype
    units: Units
    hats: Tuple[torch.Tensor, ...]
    weight_shape: Tuple[int, ...]


def prepare_weight(weight: torch.Tensor, group, device, dtype) -> Prepared:
    """The transformed filters Ŵ of every unit, for a forward on inputs of ``dtype`` on ``device``
    (no autograd: for an eval-mode cache, which must be rebuilt when the weight changes)."""
    if weight.dim() != 5 or weight.shape[1] != group.order:
        raise ValueError(f"prepare_weight: weight must be [C_out, {group.order}, C_in, kh, kw] for group "
                         f"{group.name}, got {tuple(weight.shape)}")
    mix_dtype, conv_dtype = _dtypes(dtype, device)
    units = _units(group, device, mix_dtype)
    with torch.no_grad():
        hats = transformed_weights(weight.detach().to(device), units, conv_dtype)
    return Prepared(group, dtype, units, tuple(hats), tuple(weight.shape))


def forward_prepared(s: torch.Tensor, prepared: Prepared, bias: Optional[torch.Tensor], plan) -> torch.Tensor:
    """group_conv's forward (view frame) of ``s`` [B, n, C_in, H, W] with the filters of
    ``prepare_weight``. The output is in the layout of ``s`` (channels_last stacks give channels_last
    stacks, any other a contiguous one)."""
    n, C_in = prepared.group.order, prepared.weight_shape[2]
    if s.dtype != prepared.dtype or s.dim() != 5 or s.shape[1] != n or s.shape[2] != C_in:
        raise ValueError(f"forward_prepared: s must be a [B, {n}, {C_in}, H, W] stack of {prepared.dtype}, "
                         f"got {tuple(s.shape)} of {s.dtype}")
    with torch.autocast(s.device.type, enabled=False):
        return _forward(s, prepared, bias, plan)


SLICE_BYTES = 4 << 20     # the rows of one grouped run for one batch slice (``slices``)


def slices(B: int, units: Units, in_groups: bool, image_bytes: int) -> List[slice]:
    """The batch slices a forward or backward works on, one after the other (``image_bytes``: one
    row of one image, the larger of input and output).

    Grouped runs take slices of about equal size whose rows (a run's mixed input, or its output) stay
    within ``SLICE_BYTES``: without them, C16 at 32 channels and batch 8 mixes 8 MiB rows per run,
    and glibc hands such freed blocks back to the kernel between runs (heap trim, munmap), so that
    every run faulted its pages in again; a third of the backward's time on this CPU
    (bench/results/fourier-2026-11-30-v4). One conv per unit takes the whole batch: slices multiply
    its calls, measured 7-13% slower for C4 and C8."""
    if not in_groups:
        return [slice(0, B)]
    count = max(1, min(B, -(-B * units.max_rows(in_groups) * image_bytes // SLICE_BYTES)))
    bounds = [round(i * B / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _forward(s, prepared, bias, plan):
    units, hats = prepared.units, prepared.hats
    mix_dtype, conv_dtype = units.t_w.dtype, hats[0].dtype
    C_out, n, C_in, kh, kw = prepared.weight_shape
    B, _, _, H, W = s.shape
    Ho, Wo = plan.out_size(H, W, kh, kw)
    if B == 0:
        return s.new_zeros(0, n, C_out, Ho, Wo)
    cl = is_channels_last(s)
    in_groups = grouped(units) and not cl       # grouped convolutions read batch-major contiguous rows
    bias = None if bias is None else bias.to(mix_dtype)
    out = _Stack(n, (B, C_out, Ho, Wo), mix_dtype, cl, s.device)
    for part in slices(B, units, in_groups, max(C_in * H * W, C_out * Ho * Wo) * hats[0].element_size()):
        out.begin(part)
        _forward_slice(s[part], out, units, hats, bias, plan, cl, in_groups)
    return out.result().to(s.dtype)


def _forward_slice(s, out, units, hats, bias, plan, cl, in_groups):
    """The forward of one batch slice ``s``, added to ``out`` (a ``_Stack`` begun at that slice)."""
    conv_dtype = hats[0].dtype
    C_out = out.shape[1]
    rows = _Rows(s, cl)
    k = 0
    for run in units.runs if in_groups else ():
        R = len(run.units)
        U = rows.block(run.t_in, conv_dtype)
        biases = [_bias(u, bias, conv_dtype) for u in run.units]
        b = None if all(x is None for x in biases) else \
            torch.cat([hats[0].new_zeros(C_out) if x is None else x for x in biases])
        Y = _conv(U, torch.cat(hats[k:k + R]), b, plan, R)
        del U
        k += R
        out.add_block(run.t_out, Y)             # R 1-d rows, batch-major: the same product
        del Y
    for u in units.blocks if in_groups else ():
        Y = _conv(rows.block(u.t_in, conv_dtype), hats[k], _bias(u, bias, conv_dtype), plan)
        k += 1
        out.add_block(u.t_out, Y)
        del Y
    for chunk in () if in_groups else units.chunks:
        Us = rows.images(chunk.dims, chunk.t_in, conv_dtype)
        Ys = []
        for u, U in zip(chunk.units, Us):
            Ys.append(_conv(U, hats[k], _bias(u, bias, conv_dtype), plan))
            k += 1
        del Us                                  # peak memory: the rows go before the mix
        out.add_images(chunk.dims, chunk.t_out, Ys)
        del Ys


def _backward(grad_out, s, weight, plan, output_mask):
    need_x, need_w = bool(output_mask[0]), bool(output_mask[1])
    if not (need_x or need_w):
        return None, None, None
    mix_dtype, conv_dtype = _dtypes(s.dtype, s.device)
    units = _units(plan.group, s.device, mix_dtype)
    C_out, n, C_in, kh, kw = weight.shape
    B, _, _, H, W = s.shape
    Ho, Wo = grad_out.shape[-2:]
    if B == 0:
        return (s.new_zeros(s.shape) if need_x else None), (weight.new_zeros(weight.shape) if need_w else None), None
    hats = transformed_weights(weight, units, conv_dtype)
    cl = is_channels_last(s)
    in_groups = grouped(units) and not cl       # grouped convolutions read batch-major contiguous rows
    grad = _Stack(n, (B, C_in, H, W), mix_dtype, cl, s.device) if need_x else None
    g_hats = None
    for part in slices(B, units, in_groups, max(C_in * H * W, C_out * Ho * Wo) * hats[0].element_size()):
        if need_x:
            grad.begin(part)
        g = _backward_slice(grad_out[part], s[part], grad, units, hats, plan, cl, in_groups, need_w)
        g_hats = [x.to(mix_dtype) for x in g] if g_hats is None else [a.add_(b) for a, b in zip(g_hats, g)]
    gs = grad.result().to(s.dtype) if need_x else None
    gw = weight_grad(units, g_hats, weight.shape).to(weight.dtype) if need_w else None
    return gs, gw, None


def _backward_slice(grad_out, s, grad, units, hats, plan, cl, in_groups, need_w):
    """The backward of one batch slice: adds its grad_s to ``grad`` (a ``_Stack`` begun at that slice;
    None: not needed) and returns its gŴ of every unit (none unless ``need_w``)."""
    conv_dtype = hats[0].dtype
    C_out, C_in = grad_out.shape[2], s.shape[2]
    kh, kw = hats[0].shape[-2:]
    need_x = grad is not None
    rows_s, rows_g = _Rows(s, cl), _Rows(grad_out, cl)
    g_hats, k = [], 0
    for run in units.runs if in_groups else ():
        R = len(run.units)
        gY = rows_g.block(run.t_out.t(), conv_dtype)
        W_cat = torch.cat(hats[k:k + R])
        if need_w:
            U = rows_s.block(run.t_in, conv_dtype)
            g_hats += list(_conv_grad(gY, U, W_cat, plan, "weight", R).view(R, C_out, C_in, kh, kw).unbind(0))
            del U
        if need_x:
            gU = _conv_grad(gY, rows_s.empty_image(R * C_in, conv_dtype), W_cat, plan, "input", R)
            del gY
            grad.add_block(run.t_in.t(), gU)
            del gU
        k += R
    for u in units.blocks if in_groups else ():
        gY = rows_g.block(u.t_out.t(), conv_dtype)
        if need_w:
            g_hats.append(_conv_grad(gY, rows_s.block(u.t_in, conv_dtype), hats[k], plan, "weight"))
        if need_x:
            gU = _conv_grad(gY, rows_s.empty_image(u.d * C_in, conv_dtype), hats[k], plan, "input")
            del gY
            grad.add_block(u.t_in.t(), gU)
            del gU
        k += 1
    # Per chunk: the weight gradients first (then the inputs' images are freed), then the input gradients.
    for chunk in () if in_groups else units.chunks:
        R = len(chunk.units)
        gYs = rows_g.images(chunk.dims, chunk.t_out.t(), conv_dtype)
        if need_w:
            Us = rows_s.images(chunk.dims, chunk.t_in, conv_dtype)
            g_hats += [_conv_grad(gY, U, hats[k + r], plan, "weight") for r, (gY, U) in enumerate(zip(gYs, Us))]
            del Us
        if need_x:
            holders = {d: rows_s.empty_image(d * C_in, conv_dtype) for d in set(chunk.dims)}
            gUs = [_conv_grad(gY, holders[u.d], hats[k + r], plan, "input")
                   for r, (u, gY) in enumerate(zip(chunk.units, gYs))]
            del gYs, holders
            grad.add_images(chunk.dims, chunk.t_in.t(), gUs)
            del gUs
        k += R
    return g_hats


