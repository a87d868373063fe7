"""The real group-Fourier basis of a finite group's regular representation, as the three matrices
the ``fourier`` backend applies along the group axis.

A view-frame group convolution is out[:, g] = Σ_h conv2d(s[:, g·h], w[:, h]) = Σ_h (R(h) s ⊛ w_h)[:, g],
with R(h) the right regular representation, (R(h) s)[:, g] = s[:, g·h], acting on the group axis.
For a real orthogonal Q whose columns split R into irreducible blocks, QᵀR(h)Q = ⊕ ρ(h) (an
irreducible ρ of dimension d appearing once per *copy*), the layer becomes one small convolution
per copy: ŷ = Ŵ_ρ ŝ with ŝ = the copy's d coordinates of Qᵀs and Ŵ_ρ[a, b] = Σ_h ρ(h)[a, b] w_h,
a d x d matrix of C_out x C_in filters shared by all copies of ρ; then out = Q ŷ.

Each copy is one *unit*, a convolution of d*C_in -> d*C_out channels. Units of the same dimension
d form one ``Block`` of S units: ``t_in`` [S*d, n] maps the group axis to the S units' d-vectors,
``t_w`` [S, d, d, n] maps the weight's group axis to each unit's d x d filter matrix and ``t_out``
[n, S*d] maps the units' outputs back. How the units are convolved (one conv2d each, or grouped
conv2d calls) is the backend's choice (``group_conv``). The complex frequencies of C_n
(2-dimensional real irreducibles whose filter matrix is a complex number A - iB) use three real
products instead of four (Gauss): ``cyclic`` turns each into three d = 1 units, so a C_n layer is
n_1 + 3*n_2 convolutions of C_out x C_in filters (C4: 5, C8: 11, C16: 23) instead of one dense conv
of n^2 blocks.

Closed forms: ``cyclic`` (real DFT) and ``dihedral`` (the irreducibles of D_n, all of real type).
Any other group: ``numeric`` builds Q from the Cayley table (isotypic components from a random
symmetric central element, copies from a random symmetric element of the commutant, matching
bases through an intertwiner). Every basis is checked on construction: QᵀR(g)Q equal to the
block-diagonal ⊕ ρ(g) within 1e-12 for every g.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

TOLERANCE = 1e-12


class BasisError(ValueError):
    """The regular representation of a group could not be block-diagonalised to TOLERANCE."""


@dataclass(frozen=True)
class Block:
    """S units of dimension d, each d*C_in -> d*C_out channels: copies of irreducibles of dimension d, or
    (C_n) Gauss's three products of a complex frequency as three 1-d units (float64, CPU)."""
    d: int
    t_in: torch.Tensor    # [S*d, n]
    t_w: torch.Tensor     # [S, d, d, n]
    t_out: torch.Tensor   # [n, S*d]
    bias: torch.Tensor    # [S*d]: out = t_out @ y + 1 ⊗ b  <=>  y += bias ⊗ b (zero where no trivial part)

    @property
    def units(self) -> int:
        return self.t_w.shape[0]


@dataclass(frozen=True)
class Basis:
    group_name: str
    order: int
    blocks: Tuple[Block, ...]
    kind: str   # "cyclic", "dihedral" or "numeric"

    @property
    def filter_blocks(self) -> int:
        """C_out x C_in convolutions per layer (the dense bank has order**2)."""
        return sum(b.units * b.d * b.d for b in self.blocks)


# ---------------------------------------------------------------------------------------------
# Regular representation
# ---------------------------------------------------------------------------------------------
def right_regular(cayley: torch.Tensor) -> torch.Tensor:
    """R [n, n, n] float64 with (R[h] s)[g] = s[g·h]: R[h][g, g·h] = 1."""
    n = cayley.shape[0]
    R = torch.zeros(n, n, n, dtype=torch.float64)
    g = torch.arange(n)
    for h in range(n):
        R[h, g, cayley[:, h]] = 1.0
    return R


def _bias_vector(t_out: torch.Tensor) -> torch.Tensor:
    """v with t_out @ v = 1 (all ones), nonzero only where a group's output is constant over the
    group axis (the trivial representation); zeros when the block has no trivial part."""
    n = t_out.shape[0]
    v = torch.zeros(t_out.shape[1], dtype=torch.float64)
    for j in range(t_out.shape[1]):
        col = t_out[:, j]
        if abs(float(col[0])) > 1e-9 and bool(torch.allclose(col, col[0].expand(n), atol=1e-13, rtol=0)):
            v[j] = 1.0 / float(col[0])
            return v
    return v


def _block(d: int, t_in, t_w, t_out) -> Block:
    return Block(d, t_in, t_w, t_out, _bias_vector(t_out))


# ---------------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------------
def cyclic(n: int, name: str) -> Basis:
    """C_n, element k = r^k: the real DFT. Trivial and (n even) alternating frequencies are 1-d; each
    frequency 0 < k < n/2 spans cos/sin, on which R(h) is a rotation, so its filter is the complex
    number F = A - iB (A = Σ_h cos(θh) w_h, B = Σ_h sin(θh) w_h, θ = 2πk/n) acting on z = x_c + i x_s:
    y = F z in three real products k1 = A (x_c + x_s), k2 = -(A + B) x_c, k3 = (A - B) x_s,
    y_c = k1 - k3, y_s = k1 + k2."""
    g = torch.arange(n, dtype=torch.float64)
    rows_in, rows_w, cols_out = [], [], []
    one = torch.ones(n, dtype=torch.float64)
    rows_in.append(one / math.sqrt(n)); rows_w.append(one); cols_out.append(one / math.sqrt(n))
    if n % 2 == 0:
        alt = torch.cos(math.pi * g)
        rows_in.append(alt / math.sqrt(n)); rows_w.append(alt); cols_out.append(alt / math.sqrt(n))
    for k in range(1, (n + 1) // 2):
        theta = 2 * math.pi * k * g / n
        cos, sin = torch.cos(theta), torch.sin(theta)
        c, s = math.sqrt(2.0 / n) * cos, math.sqrt(2.0 / n) * sin
        rows_in += [c + s, c, s]
        rows_w += [cos, -(cos + sin), cos - sin]
        cols_out += [c + s, s, -c]
    t_in = torch.stack(rows_in)
    t_w = torch.stack(rows_w)[:, None, None, :]
    t_out = torch.stack(cols_out, 1)
    return Basis(name, n, (_block(1, t_in, t_w, t_out),), "cyclic")


def _dihedral_irreps(n: int) -> List[torch.Tensor]:
    """Real orthogonal irreducibles of D_n as [2n, d, d] tensors (element k = r^k, n + k = r^k f)."""
    k = torch.arange(2 * n) % n
    flip = (torch.arange(2 * n) >= n).to(torch.float64)
    sign_f = 1 - 2 * flip                                  # +1 on rotations, -1 on reflections
    alt = torch.cos(math.pi * k.to(torch.float64))         # (-1)^k
    irreps = [torch.ones(2 * n, 1, 1, dtype=torch.float64), sign_f[:, None, None]]
    if n % 2 == 0:
        irreps += [alt[:, None, None], (alt * sign_f)[:, None, None]]
    for j in range(1, (n + 1) // 2):
        theta = 2 * math.pi * j * k.to(torch.float64) / n
        c, s = torch.cos(theta), torch.sin(theta)
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)   # Rot(θ)
        F = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
        irreps.append(torch.where(flip[:, None, None] > 0, rot @ F, rot))           # r^k f -> Rot·F
    return irreps


def _peter_weyl_blocks(irreps: List[torch.Tensor], n: int) -> Tuple[Block, ...]:
    """Blocks from real-type orthogonal irreducibles ρ (each [n, d, d]): copy i of ρ has basis
    columns q_ij(g) = sqrt(d/n) ρ(g)[i, j] (j = 0..d-1), on which R(h) acts as ρ(h)."""
    by_dim: Dict[int, List[torch.Tensor]] = {}
    for rho in irreps:
        by_dim.setdefault(rho.shape[1], []).append(rho)
    blocks = []
    for d, rhos in sorted(by_dim.items()):
        cols, t_w = [], []
        for rho in rhos:
            for i in range(d):
                cols += [math.sqrt(d / n) * rho[:, i, j] for j in range(d)]
                t_w.append(rho.permute(1, 2, 0))
        t_out = torch.stack(cols, 1)
        blocks.append(_block(d, t_out.t().contiguous(), torch.stack(t_w), t_out))
    return tuple(blocks)


def dihedral(n: int, name: str) -> Basis:
    return Basis(name, 2 * n, _peter_weyl_blocks(_dihedral_irreps(n), 2 * n), "dihedral")


# ---------------------------------------------------------------------------------------------
# Numerical construction from the Cayley table
# ---------------------------------------------------------------------------------------------
def _clusters(values: torch.Tensor, tol: float) -> List[List[int]]:
    """Indices of sorted ``values`` grouped where neighbours differ by at most ``tol``."""
    order = torch.argsort(values).tolist()
    groups = [[order[0]]]
    for a, b in zip(order, order[1:]):
        if float(values[b] - values[a]) <= tol:
            groups[-1].append(b)
        else:
            groups.append([b])
    return groups


def numeric(cayley: torch.Tensor, name: str, seed: int = 0) -> Basis:
    """A real orthogonal block-diagonalising basis of any finite group's regular representation."""
    n = cayley.shape[0]
    R = right_regular(cayley)
    # left regular representation, (L[h] s)[g] = s[h⁻¹·g]: it commutes with R
    inv = [int((cayley[h] == 0).nonzero()) for h in range(n)]
    L = torch.zeros(n, n, n, dtype=torch.float64)
    g = torch.arange(n)
    for h in range(n):
        L[h, g, cayley[inv[h]][g]] = 1.0
    # conjugacy classes
    classes, seen = [], set()
    for a in range(n):
        if a in seen:
            continue
        cls = sorted({int(cayley[cayley[x][a]][inv[x]]) for x in range(n)})
        seen.update(cls)
        classes.append(cls)
    gen = torch.Generator().manual_seed(seed)
    last_error = "no attempt"
    for _attempt in range(4):
        try:
            return _numeric_once(R, L, classes, name, gen)
        except BasisError as exc:   # an unlucky random draw merged eigenvalues: draw again
            last_error = str(exc)
    raise BasisError(f"fourier: could not block-diagonalise the regular representation of group {name}: "
                     f"{last_error}")


def _numeric_once(R, L, classes, name, gen) -> Basis:
    n = R.shape[0]
    # 1. isotypic components: eigenspaces of a random symmetric central element Σ_C c_C Σ_{g∈C} R(g)
    Z = torch.zeros(n, n, dtype=torch.float64)
    for cls in classes:
        Z += (1 + torch.rand((), generator=gen, dtype=torch.float64)) * R[cls].sum(0)
    vals, vecs = torch.linalg.eigh(Z + Z.t())
    components = [vecs[:, idx] for idx in _clusters(vals, 1e-7 * n)]
    irreps = []        # (rho [n, d, d], [basis [n, d] per copy])
    for E in components:
        # 2. copies: eigenspaces of a random symmetric element of the commutant (left regular)
        A = torch.einsum("h,hij->ij", torch.rand(n, generator=gen, dtype=torch.float64), L)
        Ar = E.t() @ (A + A.t()) @ E
        avals, avecs = torch.linalg.eigh(Ar)
        copies = [E @ avecs[:, idx] for idx in _clusters(avals, 1e-7 * n)]
        d = copies[0].shape[1]
        if any(c.shape[1] != d for c in copies):
            raise BasisError(f"copies of unequal dimension {[c.shape[1] for c in copies]}")
        B1 = copies[0]
        # 3. matching bases: copy k = normalised image of copy 1 under an intertwiner P_k T P_1
        T = torch.einsum("h,hij->ij", torch.randn(n, generator=gen, dtype=torch.float64), L)
        bases = [B1]
        for Ck in copies[1:]:
            M = Ck @ (Ck.t() @ (T @ B1))
            gram = M.t() @ M
            scale = float(gram.diagonal().mean())
            eye = torch.eye(d, dtype=torch.float64)
            if scale < 1e-8 or not torch.allclose(gram, scale * eye, atol=1e-9 * scale):
                raise BasisError("an intertwiner between two copies is not a scaled isometry")
            bases.append(M / math.sqrt(scale))
        rho = torch.einsum("ga,hgk,kb->hab", B1, R, B1)
        irreps.append((rho, bases))
    by_dim: Dict[int, list] = {}
    for rho, bases in irreps:
        by_dim.setdefault(rho.shape[1], []).append((rho, bases))
    blocks = []
    for d, items in sorted(by_dim.items()):
        cols, t_w = [], []
        for rho, bases in items:
            for Bk in bases:
                cols.append(Bk)
                t_w.append(rho.permute(1, 2, 0))
        t_out = torch.cat(cols, 1)
        blocks.append(_block(d, t_out.t().contiguous(), torch.stack(t_w), t_out))
    basis = Basis(name, n, tuple(blocks), "numeric")
    check(basis, R)
    return basis


# ---------------------------------------------------------------------------------------------
# Verification and cache
# ---------------------------------------------------------------------------------------------
def check(basis: Basis, R: torch.Tensor) -> None:
    """Raise BasisError unless the basis block-diagonalises R exactly (to TOLERANCE): with Q = the
    columns of every t_out (no Gauss blocks), QᵀQ = QQᵀ = I and QᵀR(h)Q = ⊕ρ(h) for every h,
    ρ(h)[a, b] = t_w[..., a, b, h]."""
    n = basis.order
    Q = torch.cat([b.t_out for b in basis.blocks], 1)
    expected = torch.zeros(n, n, n, dtype=torch.float64)
    off = 0
    for b in basis.blocks:
        for s in range(b.units):
            expected[:, off:off + b.d, off:off + b.d] = b.t_w[s].permute(2, 0, 1)
            off += b.d
    eye = torch.eye(n, dtype=torch.float64)
    err = max(float((Q.t() @ Q - eye).abs().max()), float((Q @ Q.t() - eye).abs().max()),
              float((torch.einsum("ga,hgk,kb->hab", Q, R, Q) - expected).abs().max()))
    if not err <= TOLERANCE:
        raise BasisError(f"basis of group {basis.group_name} is off by {err:.2e} (> {TOLERANCE:g}): "
                         f"QᵀR(g)Q is not the block-diagonal ⊕ρ(g) for every g")


def check_operator(basis: Basis, R: torch.Tensor) -> None:
    """The identity the backend relies on, Gauss blocks included: Σ_blocks t_out · ρ(h) · t_in = R(h)
    for every h (``operator``)."""
    err = float((operator(basis) - R).abs().max())
    if not err <= TOLERANCE:
        raise BasisError(f"basis of group {basis.group_name} is off by {err:.2e} (> {TOLERANCE:g})")


def operator(basis: Basis) -> torch.Tensor:
    """Σ over blocks of t_out · ρ(h) · t_in as [n(h), n(g), n(k)]: equals R(h) for a correct basis."""
    total = 0
    for b in basis.blocks:
        S, d = b.units, b.d
        t_in = b.t_in.view(S, d, -1)
        t_out = b.t_out.view(-1, S, d)
        total = total + torch.einsum("gsa,sabh,sbk->hgk", t_out, b.t_w, t_in)
    return total


_CACHE: Dict[str, Tuple[object, object]] = {}   # name -> (group, Basis or BasisError)
_LOCK = threading.Lock()


def _cyclic_or_dihedral(group) -> Optional[Tuple[str, int]]:
    """("C", n) / ("D", n) when ``group``'s Cayley table is the built-in C_n / D_n numbering."""
    n = group.order
    if group.cayley == tuple(tuple((a + b) % n for b in range(n)) for a in range(n)):
        return "C", n
    if n % 2 == 0 and n >= 2:
        m = n // 2

        def mul(a, b):
            i, p, j, q = a % m, a // m, b % m, b // m
            return (i + (j if p == 0 else -j)) % m + m * ((p + q) % 2)
        if group.cayley == tuple(tuple(mul(a, b) for b in range(n)) for a in range(n)):
            return "D", m
    return None


def get(group) -> Basis:
    """The basis of ``group`` (an equifast Group), built once per group object and cached."""
    with _LOCK:
        hit = _CACHE.get(group.name)
    if hit is None or hit[0] is not group:
        try:
            hit = (group, _build(group))
        except BasisError as exc:        # remembered: ``supports`` asks on every call
            hit = (group, exc)
        with _LOCK:
            _CACHE[group.name] = hit
    if isinstance(hit[1], BasisError):
        raise hit[1]
    return hit[1]


def _build(group) -> Basis:
    cayley = group.cayley_tensor()
    R = right_regular(cayley)
    kind = _cyclic_or_dihedral(group)
    if kind is not None and kind[0] == "C":
        basis = cyclic(kind[1], group.name)      # Gauss blocks: Q is not orthogonal, only the operator is checked
    elif kind is not None:
        basis = dihedral(kind[1], group.name)
        check(basis, R)
    else:
        basis = numeric(cayley, group.name)      # checked inside
    check_operator(basis, R)
    return basis
