"""Finite groups acting on images and on stacks of group copies.

A group of order n has elements 0..n-1, element 0 the identity, a Cayley table
``cayley[a][b] = a·b`` and ``inverse[a]``. It acts

* on images (the last two dims): ``act(x, g)`` with (g·x)(p) = x(g⁻¹p);
* on a stack s of shape [B, n, C, H, W] by the *regular* action
  (g·s)[:, h] = s[:, g⁻¹h] (a permutation of the group axis), and by the
  *canonical* action (g·s)[:, h] = act(s[:, g⁻¹h], g) (G-CNN feature maps).

Every image action is stored as a *sampling table* for a given image size:
``act(x, g).flatten(-2)[..., q] = Σ_t weight[q, t] · x.flatten(-2)[..., index[q, t]]``.
Exact actions (90° rotations, flips) have one tap of weight 1 (a pixel
permutation); interpolated rotations have 4 bilinear taps, zeros outside
(a tap outside the image has weight 0 and index 0).

Exact built-in groups (C1, C2, C4, D1, D2, D4) also describe each action as an integer
*affine map* of pixel coordinates (``affine_maps``): a rotation or flip by a multiple of 90°
needs no per-size table, and the compiled kernels compute the source pixel from (g, row, col).

Built-in groups: ``C{n}`` (rotations r^k by 360°·k/n counter-clockwise about the
image centre) and ``D{n}`` (r^k for k < n, then r^k·f as element n+k, with
f = flip of the last dim applied first). ``get("C4")`` looks a group up by name.

Per-size tables are cached per group in bounded least-recently-used caches
(``TABLE_CACHE_ENTRIES`` sizes and ``TABLE_CACHE_BYTES`` bytes per cache; a table larger than
the byte budget is built for the call and not kept), so a stream of image sizes cannot grow
memory without bound.
"""
from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

__all__ = ["Group", "cyclic", "dihedral", "get", "register", "custom", "names"]

SamplingTable = Tuple[torch.Tensor, torch.Tensor]  # index [H*W, T] int64, weight [H*W, T] float64
ImageAction = Callable[[int, int, int], Union[torch.Tensor, SamplingTable]]
# affine_action(g, H, W) -> ((a, b, c), (d, e, f)): act(x, g)[r, q] = x[a·r + b·q + c, d·r + e·q + f]
AffineAction = Callable[[int, int, int], Tuple[Tuple[int, int, int], Tuple[int, int, int]]]

TABLE_CACHE_ENTRIES = 8          # image sizes kept per cache (least recently used evicted first)
TABLE_CACHE_BYTES = 256 << 20    # bytes kept per cache; a larger table is not cached


class TableCache:
    """A thread-safe least-recently-used cache of tensors (or tuples of tensors) bounded by
    ``entries`` and by ``max_bytes`` (the sum of the values' storage)."""

    def __init__(self, entries: int = TABLE_CACHE_ENTRIES, max_bytes: int = TABLE_CACHE_BYTES):
        self.entries, self.max_bytes = int(entries), int(max_bytes)
        self._data: "OrderedDict[tuple, object]" = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def nbytes(value) -> int:
        if value is None:
            return 0
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        return sum(TableCache.nbytes(v) for v in value)

    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key, value):
        size = self.nbytes(value)
        if size > self.max_bytes:
            return value
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.entries or self.total_bytes() > self.max_bytes:
                self._data.popitem(last=False)
        return value

    def get_or_build(self, key, build):
        value = self.get(key)
        if value is None:
            value = self.put(key, build())
        return value

    def total_bytes(self) -> int:
        return sum(self.nbytes(v) for v in self._data.values())

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

_REGISTRY: Dict[str, "Group"] = {}
_LOCK = threading.Lock()


class Group:
    """A finite group with an action on images.

    Args:
        name: unique name; the group is registered under it so that ops can refer to it.
        cayley: n x n table with ``cayley[a][b] = a·b`` (element 0 must be the identity).
        image_action: ``image_action(g, H, W)`` returns either a LongTensor [H*W] of source
            pixels (a pixel permutation: ``act(x, g).flatten(-2)[q] = x.flatten(-2)[perm[q]]``)
            or a sampling table ``(index [H*W, T], weight [H*W, T])``.
        exact: True when every action is a pixel permutation (no interpolation).
        quarter_turns: True when some element rotates by 90° (square images needed).
        affine_action: optional, for exact groups whose actions are rotations / flips by multiples
            of 90°: ``affine_action(g, H, W) = ((a, b, c), (d, e, f))`` with
            ``act(x, g)[r, q] = x[a·r + b·q + c, d·r + e·q + f]`` (a signed permutation matrix);
            then no per-size pixel table is needed (``affine_maps``).

    The group axioms are checked on construction; the action's homomorphism property
    (act(act(x, h), g) == act(x, g·h)) is checked the first time a table of a size is built,
    for exact actions.
    """

    def __init__(self, name: str, cayley, image_action: ImageAction, *, exact: bool,
                 quarter_turns: bool = False, register_group: bool = True,
                 affine_action: Optional[AffineAction] = None):
        table = torch.as_tensor(cayley, dtype=torch.int64)
        _check_group_axioms(name, table)
        self.name = str(name)
        self.order = int(table.shape[0])
        self.cayley: Tuple[Tuple[int, ...], ...] = tuple(tuple(int(v) for v in row) for row in table.tolist())
        self.inverse: Tuple[int, ...] = tuple(row.index(0) for row in self.cayley)
        # slots[g][h] = g⁻¹·h: where the regular action of g moves slot h from (see ``slot_table``)
        self.slots: Tuple[Tuple[int, ...], ...] = tuple(self.cayley[i] for i in self.inverse)
        self.exact = bool(exact)
        self.quarter_turns = bool(quarter_turns)
        self._image_action = image_action
        self._affine_action = affine_action if self.exact else None
        self._tables = TableCache()          # (H, W) -> sampling tables
        self._device_tables = TableCache()   # (H, W, device, dtype) -> sampling tables there
        self._perms = TableCache()           # (H, W, dtype) -> pixel permutations
        self._affine: Dict[Tuple[int, int], torch.Tensor] = {}   # [n, 2, 3]: 48·n bytes per size
        if register_group:
            register(self)

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        kind = "exact" if self.exact else "interpolated"
        return f"Group({self.name!r}, order={self.order}, {kind})"

    def __len__(self) -> int:
        return self.order

    # A group is an immutable value known by its registered name: copies are the group itself, and
    # pickling (torch.save of a layer or model) stores the name (a custom group must be registered
    # again, under the same name, before loading).
    def __deepcopy__(self, memo) -> "Group":
        return self

    def __reduce__(self):
        return get, (self.name,)

    def mul(self, a: int, b: int) -> int:
        return self.cayley[a][b]

    def cayley_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor(self.cayley, dtype=torch.int64, device=device)

    def inverse_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor(self.inverse, dtype=torch.int64, device=device)

    def slot_table(self, device=None) -> torch.Tensor:
        """[n, n] int64 with ``slot_table[g, h] = g⁻¹·h``: row g is the regular action of g on the
        group axis, (g·s)[:, h] = s[:, g⁻¹·h], and the block permutation of a group convolution's
        filter bank (copy g weighs slot h with weight[:, g⁻¹·h])."""
        return torch.tensor(self.slots, dtype=torch.int64, device=device)

    def check_image_size(self, H: int, W: int, what: str = "input") -> None:
        """Raise if this group cannot act on H x W images (90° rotations need H == W)."""
        if self.quarter_turns and H != W:
            raise ValueError(
                f"group {self.name} rotates by 90 degrees and needs a square {what}; "
                f"got {what} of spatial size {H}x{W}")

    # ----------------------------------------------------------- image action
    def sampling_table(self, g: int, H: int, W: int) -> SamplingTable:
        """(index [H*W, T] int64, weight [H*W, T] float64) of ``act(·, g)`` on H x W images (CPU)."""
        return self.sampling_tables(H, W)[0][g], self.sampling_tables(H, W)[1][g]

    def sampling_tables(self, H: int, W: int) -> SamplingTable:
        """All elements stacked: index [n, H*W, T] int64, weight [n, H*W, T] float64 (CPU, cached)."""
        return self._tables.get_or_build((int(H), int(W)), lambda: self._build_sampling_tables(int(H), int(W)))

    def _build_sampling_tables(self, H: int, W: int) -> SamplingTable:
        self.check_image_size(H, W)
        if self.affine_maps(H, W) is not None:   # exact and affine: checked on the maps
            index = self.permutations(H, W).unsqueeze(-1)
            return index, torch.ones(index.shape, dtype=torch.float64)
        per_element = [_as_sampling_table(self._image_action(g, H, W), H * W, self.name)
                       for g in range(self.order)]
        taps = max(t[0].shape[1] for t in per_element)
        index = torch.zeros(self.order, H * W, taps, dtype=torch.int64)
        weight = torch.zeros(self.order, H * W, taps, dtype=torch.float64)
        for g, (i, w) in enumerate(per_element):
            index[g, :, : i.shape[1]] = i
            weight[g, :, : w.shape[1]] = w
        if self.exact:
            _check_exact_action(self, index, weight, H, W)
        return index, weight

    def tables_on(self, H: int, W: int, device, dtype=torch.float32) -> SamplingTable:
        """``sampling_tables`` moved to ``device``, weights in ``dtype`` (cached)."""
        device = torch.device(device)

        def build():
            index, weight = self.sampling_tables(H, W)
            return index.to(device), weight.to(device=device, dtype=dtype)

        return self._device_tables.get_or_build((int(H), int(W), str(device), dtype), build)

    def affine_maps(self, H: int, W: int) -> Optional[torch.Tensor]:
        """For exact groups with an affine description (the built-in C1, C2, C4, D1, D2, D4):
        int64 [n, 2, 3] with ``act(x, g)[r, q] = x[A[g, 0] · (r, q, 1), A[g, 1] · (r, q, 1)]``;
        None otherwise. Checked: every map is a signed permutation matrix that maps the H x W
        image onto itself, element 0 is the identity, and the maps compose as the Cayley table."""
        if self._affine_action is None:
            return None
        key = (int(H), int(W))
        maps = self._affine.get(key)
        if maps is None:
            self.check_image_size(H, W)
            maps = torch.tensor([self._affine_action(g, int(H), int(W)) for g in range(self.order)],
                                dtype=torch.int64).reshape(self.order, 2, 3)
            _check_affine_action(self, maps, int(H), int(W))
            with _LOCK:
                if len(self._affine) >= 4 * TABLE_CACHE_ENTRIES:   # tiny entries; bounded all the same
                    self._affine.clear()
                self._affine[key] = maps
        return maps

    def permutations(self, H: int, W: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """For exact groups: [n, H*W] (int64, or int32 with ``dtype=torch.int32``),
        ``act(x, g).flatten(-2) = x.flatten(-2)[..., perm[g]]`` (cached)."""
        if not self.exact:
            raise ValueError(f"group {self.name} interpolates; it has no pixel permutations")
        if dtype not in (torch.int32, torch.int64):
            raise ValueError(f"permutations: dtype must be torch.int32 or torch.int64, got {dtype}")
        if dtype == torch.int32 and H * W > 2 ** 31 - 1:
            raise ValueError(f"permutations: an int32 table cannot index {H}x{W} pixels")
        return self._perms.get_or_build((int(H), int(W), dtype),
                                        lambda: self._build_permutations(int(H), int(W)).to(dtype))

    def _build_permutations(self, H: int, W: int) -> torch.Tensor:
        maps = self.affine_maps(H, W)
        if maps is None:
            return self.sampling_tables(H, W)[0][:, :, 0]
        return affine_pixel_table(maps, H, W)

    def act(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """(g·x)(p) = x(g⁻¹p) on the last two dims of ``x``."""
        if x.dim() < 2:
            raise ValueError(f"act: expected a tensor with at least 2 dims (..., H, W), got shape {tuple(x.shape)}")
        g = self._element(g)
        return x if g == 0 else self.act_all(x, [g])[0]

    def act_all(self, x: torch.Tensor, elements: Optional[Sequence[int]] = None, dim: int = 0) -> torch.Tensor:
        """``torch.stack([act(x, g) for g in elements], dim)``, one gather (default: all elements, new
        dim 0). ``dim=1`` on a batch [B, C, H, W] gives the views [B, m, C, H, W] contiguous, ready to
        be read as a [B*m, C, H, W] batch."""
        elements = self._elements(elements)
        H, W = x.shape[-2:]
        flat = x.reshape(*x.shape[:-2], H * W).unsqueeze(dim)          # element axis of size 1 at dim
        index, weight = self._selected_tables(elements, H, W, x)        # [m, HW, T]
        lead = [1] * (flat.dim() - 1)
        lead[dim] = len(elements)
        out = _gather_taps(flat, index.view(*lead, *index.shape[1:]), weight.view(*lead, *weight.shape[1:]),
                           self.exact)
        return out.reshape(*flat.shape[:dim], len(elements), *x.shape[dim:])

    def act_each(self, t: torch.Tensor, elements: Optional[Sequence[int]] = None) -> torch.Tensor:
        """``out[i] = act(t[i], elements[i])`` for t of shape [m, ..., H, W] (default elements 0..n-1), one gather."""
        elements = self._elements(elements)
        if t.shape[0] != len(elements):
            raise ValueError(f"act_each: expected {len(elements)} slices on dim 0, got shape {tuple(t.shape)}")
        H, W = t.shape[-2:]
        index, weight = self._selected_tables(elements, H, W, t)        # [m, HW, T]
        flat = t.reshape(len(elements), -1, H * W)                      # [m, R, HW]
        return _gather_taps(flat, index[:, None], weight[:, None], self.exact).reshape(t.shape)

    def _elements(self, elements) -> list:
        return list(range(self.order)) if elements is None else [self._element(g) for g in elements]

    def _selected_tables(self, elements, H, W, like: torch.Tensor) -> SamplingTable:
        index, weight = self.tables_on(H, W, like.device, _table_dtype(like))
        sel = torch.tensor(elements, device=like.device)
        return index[sel], weight[sel]

    # ------------------------------------------------------------ stack actions
    def act_regular(self, s: torch.Tensor, g: int) -> torch.Tensor:
        """Regular action on a stack [B, n, ...]: (g·s)[:, h] = s[:, g⁻¹h]."""
        self._check_stack(s)
        g = self._element(g)
        perm = torch.tensor(self.slots[g], device=s.device)
        return s.index_select(1, perm)

    def act_canonical(self, s: torch.Tensor, g: int) -> torch.Tensor:
        """Canonical (G-CNN) action on a stack [B, n, C, H, W]: (g·s)[:, h] = act(s[:, g⁻¹h], g)."""
        return self.act(self.act_regular(s, g), g)

    def act_stack(self, s: torch.Tensor, g: int, frame: str) -> torch.Tensor:
        """The action under which ``frame``'s outputs transform: regular for "view", canonical otherwise."""
        if frame == "view":
            return self.act_regular(s, g)
        if frame == "canonical":
            return self.act_canonical(s, g)
        raise ValueError(f"frame must be 'view' or 'canonical', got {frame!r}")

    # ---------------------------------------------------------------- helpers
    def _element(self, g) -> int:
        g = int(g)
        if not 0 <= g < self.order:
            raise ValueError(f"group element must be in [0, {self.order}) for group {self.name}, got {g}")
        return g

    def _check_stack(self, s: torch.Tensor) -> None:
        if s.dim() < 2 or s.shape[1] != self.order:
            raise ValueError(f"expected a stack [B, {self.order}, ...] for group {self.name}, "
                             f"got shape {tuple(s.shape)}")


# ---------------------------------------------------------------------------
# Table helpers
# ---------------------------------------------------------------------------
def _table_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def tap_sum(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_t values·weights over the last dim (taps), skipping zero-weight taps.

    A tap outside the image has weight 0 and the placeholder index 0: its value must not be read
    as 0·x[0], or a NaN/Inf in pixel 0 would leak into every output pixel with an outside tap.
    Kernels reading the tables must likewise skip (mask) zero-weight taps."""
    return (values * weights).masked_fill(weights == 0, 0).sum(-1)


def _gather_taps(src: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, exact: bool) -> torch.Tensor:
    """out[..., q] = Σ_t weight[..., q, t] · src[..., index[..., q, t]], with ``index``/``weight``
    ([..., HW, T]) broadcast against ``src`` ([..., HW]) on the leading dims (one gather)."""
    shape = torch.broadcast_shapes(src.shape[:-1], index.shape[:-2])
    hw, taps = index.shape[-2:]
    values = src.expand(*shape, src.shape[-1]).gather(
        -1, index.reshape(*index.shape[:-2], hw * taps).expand(*shape, hw * taps))
    values = values.reshape(*shape, hw, taps)
    return values[..., 0] if exact else tap_sum(values, weight)


def _as_sampling_table(value, hw: int, name: str) -> SamplingTable:
    if isinstance(value, (tuple, list)):
        index, weight = value
        index = torch.as_tensor(index, dtype=torch.int64)
        weight = torch.as_tensor(weight, dtype=torch.float64)
    else:
        index = torch.as_tensor(value, dtype=torch.int64)
        weight = torch.ones_like(index, dtype=torch.float64)
    if index.dim() == 1:
        index, weight = index[:, None], weight[:, None]
    if index.shape != weight.shape or index.shape[0] != hw:
        raise ValueError(f"group {name}: image action must give index and weight of shape [H*W={hw}, T], "
                         f"got {tuple(index.shape)} and {tuple(weight.shape)}")
    if bool(((index < 0) | (index >= hw)).any()):
        raise ValueError(f"group {name}: image action gives pixel indices outside [0, {hw})")
    return index, weight


def _check_group_axioms(name: str, table: torch.Tensor) -> None:
    if table.dim() != 2 or table.shape[0] != table.shape[1] or table.shape[0] < 1:
        raise ValueError(f"group {name}: cayley table must be a square n x n table, got shape {tuple(table.shape)}")
    n = table.shape[0]
    if bool(((table < 0) | (table >= n)).any()):
        raise ValueError(f"group {name}: cayley table entries must lie in [0, {n})")
    ar = torch.arange(n)
    if not (torch.equal(table[0], ar) and torch.equal(table[:, 0], ar)):
        raise ValueError(f"group {name}: element 0 must be the identity (row 0 and column 0 of cayley = 0..n-1)")
    if not all(torch.equal(row.sort().values, ar) for row in table) or \
       not all(torch.equal(col.sort().values, ar) for col in table.t()):
        raise ValueError(f"group {name}: cayley table is not a Latin square, so some element has no inverse")
    # associativity: (a·b)·c == a·(b·c) for all a, b, c
    left = table[table]      # left[a, b, c] = (a·b)·c
    right = table[:, table]  # right[a, b, c] = a·(b·c)
    if not torch.equal(left, right):
        raise ValueError(f"group {name}: cayley table is not associative")


def affine_pixel_table(maps: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """[n, H*W] int64 pixel table of affine maps [n, 2, 3] (see ``Group.affine_maps``)."""
    r = torch.arange(H, dtype=torch.int64).view(1, H, 1)
    q = torch.arange(W, dtype=torch.int64).view(1, 1, W)
    a = maps.view(-1, 6, 1, 1)
    rows = a[:, 0] * r + a[:, 1] * q + a[:, 2]
    cols = a[:, 3] * r + a[:, 4] * q + a[:, 5]
    return (rows * W + cols).reshape(maps.shape[0], H * W)


def _check_affine_action(group: Group, maps: torch.Tensor, H: int, W: int) -> None:
    n = group.order
    m = torch.zeros(n, 3, 3, dtype=torch.int64)
    m[:, :2] = maps
    m[:, 2, 2] = 1
    for g in range(n):
        lin = maps[g, :, :2]
        if not (lin.abs().sum(0) == 1).all() or not (lin.abs().sum(1) == 1).all():
            raise ValueError(f"group {group.name}: the affine action of element {g} is not a rotation or flip "
                             f"by a multiple of 90 degrees")
        corners = torch.tensor([[0, 0, 1], [0, W - 1, 1], [H - 1, 0, 1], [H - 1, W - 1, 1]], dtype=torch.int64)
        src = corners @ m[g, :2].T
        if bool(((src[:, 0] < 0) | (src[:, 0] >= H) | (src[:, 1] < 0) | (src[:, 1] >= W)).any()):
            raise ValueError(f"group {group.name}: the affine action of element {g} maps the {H}x{W} image "
                             f"outside itself")
    if not torch.equal(m[0], torch.eye(3, dtype=torch.int64)):
        raise ValueError(f"group {group.name}: element 0 must act as the identity on images")
    # act(act(x, h), g) = act(x, g·h):  src_{gh}(p) = src_h(src_g(p)), i.e. M_{gh} = M_h · M_g
    for g in range(n):
        for h in range(n):
            if not torch.equal(m[h] @ m[g], m[group.cayley[g][h]]):
                raise ValueError(f"group {group.name}: affine action is not compatible with the cayley table "
                                 f"(act(act(x, {h}), {g}) != act(x, {group.cayley[g][h]}) on {H}x{W} images)")


def _check_exact_action(group: Group, index: torch.Tensor, weight: torch.Tensor, H: int, W: int) -> None:
    n = group.order
    if index.shape[2] != 1 or not bool((weight == 1).all()):
        raise ValueError(f"group {group.name}: declared exact, but its image action interpolates")
    perm = index[:, :, 0]
    if not torch.equal(perm[0], torch.arange(H * W)):
        raise ValueError(f"group {group.name}: element 0 must act as the identity on images")
    for g in range(n):
        if not torch.equal(perm[g].sort().values, torch.arange(H * W)):
            raise ValueError(f"group {group.name}: the image action of element {g} is not a pixel permutation")
    # act(act(x, h), g) = act(x, g·h):  perm_{gh}[q] = perm_h[perm_g[q]]
    for g in range(n):
        for h in range(n):
            if not torch.equal(perm[h][perm[g]], perm[group.cayley[g][h]]):
                raise ValueError(f"group {group.name}: image action is not compatible with the cayley table "
                                 f"(act(act(x, {h}), {g}) != act(x, {group.cayley[g][h]}) on {H}x{W} images)")


# ---------------------------------------------------------------------------
# Rotations and flips about the image centre
# ---------------------------------------------------------------------------
def _rotation_flip_table(H: int, W: int, angle: float, flip: bool, exact: bool) -> SamplingTable:
    """Sampling table of x -> rot(angle)(flip(x)) (flip of the last dim first), about the centre.

    Output pixel p samples the input at M⁻¹p where M = R(angle)·F in centred coordinates
    (u = column - cx to the right, v = cy - row upwards)."""
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    rows = torch.arange(H, dtype=torch.float64)[:, None].expand(H, W)
    cols = torch.arange(W, dtype=torch.float64)[None, :].expand(H, W)
    u, v = cols - cx, cy - rows
    c, s = math.cos(angle), math.sin(angle)
    # inverse rotation R(-angle)
    su, sv = c * u + s * v, -s * u + c * v
    if flip:  # F⁻¹ = F: u -> -u
        su = -su
    src_r, src_c = cy - sv, su + cx
    if exact:
        r = torch.round(src_r).long()
        q = torch.round(src_c).long()
        if bool(((r < 0) | (r >= H) | (q < 0) | (q >= W)).any()):
            raise ValueError(f"a {math.degrees(angle):.0f} degree rotation needs a square image, got {H}x{W}")
        return (r * W + q).reshape(-1, 1), torch.ones(H * W, 1, dtype=torch.float64)
    r0, c0 = torch.floor(src_r), torch.floor(src_c)
    fr, fc = src_r - r0, src_c - c0
    index, weight = [], []
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = (r0 + dr).long(), (c0 + dc).long()
        inside = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        w = torch.where(inside & (w > 1e-12), w, torch.zeros_like(w))
        index.append(torch.where(w > 0, rr * W + cc, torch.zeros_like(rr)).reshape(-1))
        weight.append(w.reshape(-1))
    return torch.stack(index, 1), torch.stack(weight, 1)


def _rotation_flip_affine(H: int, W: int, quarter_turns: int, flip: bool):
    """The exact action x -> rot(90°·quarter_turns)(flip(x)) as an integer affine map (see
    ``Group.affine_maps``); the same pixels as ``_rotation_flip_table(..., exact=True)``."""
    c, s = ((1, 0), (0, 1), (-1, 0), (0, -1))[quarter_turns % 4]
    f = -1 if flip else 1
    row_2 = (H - 1) * (1 - c) - s * (W - 1)                 # twice the row offset
    col_2 = f * (s * (H - 1) - c * (W - 1)) + (W - 1)       # twice the column offset
    if row_2 % 2 or col_2 % 2:
        raise ValueError(f"a {90 * quarter_turns} degree rotation needs a square image, got {H}x{W}")
    return (c, s, row_2 // 2), (-f * s, f * c, col_2 // 2)


def _is_exact_order(n: int) -> bool:
    return 4 % n == 0


def cyclic(n: int) -> Group:
    """C_n: rotations by 360°·k/n counter-clockwise about the image centre (element k)."""
    n = _check_order(n, "C")
    name = f"C{n}"
    if name in _REGISTRY:
        return _REGISTRY[name]
    cayley = [[(a + b) % n for b in range(n)] for a in range(n)]
    exact = _is_exact_order(n)

    def action(g, H, W):
        return _rotation_flip_table(H, W, 2 * math.pi * g / n, False, exact)

    def affine(g, H, W):
        return _rotation_flip_affine(H, W, 4 // n * g, False)

    return Group(name, cayley, action, exact=exact, quarter_turns=n not in (1, 2),
                 affine_action=affine if exact else None)


def dihedral(n: int) -> Group:
    """D_n: element k < n is r^k, element n+k is r^k·f with f = flip of the last dim (applied first)."""
    n = _check_order(n, "D")
    name = f"D{n}"
    if name in _REGISTRY:
        return _REGISTRY[name]

    def mul(a, b):  # (r^i f^p)(r^j f^q) = r^(i + (-1)^p j) f^(p+q)
        i, p = a % n, a // n
        j, q = b % n, b // n
        k = (i + (j if p == 0 else -j)) % n
        return k + n * ((p + q) % 2)

    cayley = [[mul(a, b) for b in range(2 * n)] for a in range(2 * n)]
    exact = _is_exact_order(n)

    def action(g, H, W):
        return _rotation_flip_table(H, W, 2 * math.pi * (g % n) / n, g >= n, exact)

    def affine(g, H, W):
        return _rotation_flip_affine(H, W, 4 // n * (g % n), g >= n)

    return Group(name, cayley, action, exact=exact, quarter_turns=n not in (1, 2),
                 affine_action=affine if exact else None)


def _check_order(n, prefix) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{prefix}{{n}} needs an integer order n >= 1, got {n!r}")
    return n


def custom(name: str, cayley, image_action: ImageAction, *, exact: Optional[bool] = None,
           quarter_turns: bool = False) -> Group:
    """Build (and register) a group from a Cayley table and an image action.

    ``image_action(g, H, W)`` returns a pixel permutation (LongTensor [H*W] of source pixels)
    or a sampling table (index [H*W, T], weight [H*W, T]). ``exact`` defaults to True when the
    action of the identity on a 2x2 probe is a plain permutation."""
    if name in _REGISTRY:
        raise ValueError(f"a group named {name!r} is already registered")
    if exact is None:
        probe = image_action(0, 2, 2)
        exact = not isinstance(probe, (tuple, list))
    return Group(name, cayley, image_action, exact=exact, quarter_turns=quarter_turns)


_NAME = re.compile(r"^([CD])(\d+)$")


def register(group: Group) -> Group:
    """Make ``group`` findable by ``get(group.name)`` (done automatically on construction)."""
    with _LOCK:
        existing = _REGISTRY.get(group.name)
        if existing is not None and existing is not group:
            raise ValueError(f"a different group named {group.name!r} is already registered")
        _REGISTRY[group.name] = group
    return group


def get(group: Union[str, Group]) -> Group:
    """Look a group up by name ("C4", "D8", or a registered custom name); Groups pass through."""
    if isinstance(group, Group):
        return group
    if not isinstance(group, str):
        raise TypeError(f"group must be a name such as 'C4' or an equifast.groups.Group, got {type(group).__name__}")
    found = _REGISTRY.get(group)
    if found is not None:
        return found
    m = _NAME.match(group)
    if m and int(m.group(2)) >= 1:
        return cyclic(int(m.group(2))) if m.group(1) == "C" else dihedral(int(m.group(2)))
    custom_names = sorted(name for name in _REGISTRY if not _NAME.match(name))
    raise ValueError(f"unknown group {group!r}: expected 'C<n>' or 'D<n>' with n >= 1, or a registered custom "
                     f"group ({', '.join(custom_names) if custom_names else 'none registered'})")


def names() -> Tuple[str, ...]:
    """Names of the groups built so far."""
    return tuple(sorted(_REGISTRY))


EXACT_GROUPS = ("C1", "C2", "C4", "D1", "D2", "D4")
