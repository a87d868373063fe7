"""Rooflines, measured in the same run on the same device as the ops, and the derived columns.

* ``measure_copy_bandwidth``: 2·N bytes / best time of ``dst.copy_(src)`` on N-byte buffers larger
  than the caches.
* ``measure_matmul``: 2·n³ / best time of an n x n ``torch.mm`` of the dtype (float32 on CUDA with TF32
  allowed exactly when cuDNN convolutions may use it, ``torch.backends.cudnn.allow_tf32``).
* ``add_derived``: speedups vs the ``reference`` and ``torch`` backends of the same case, dtype, layout
  and mode, and the memory / compute roofline fractions of every record.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Sequence

import torch

from .cases import DTYPES, PEER, REFERENCE
from .timing import measure


def measure_copy_bandwidth(device: str, nbytes: int, repeat: int = 5) -> Dict[str, float]:
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, repeat=repeat, min_sample_s=0.0, budget_s=5.0)
    return {"bytes_per_s": 2 * src.numel() * 4 / t["min_s"], "buffer_bytes": src.numel() * 4,
            "median_bytes_per_s": 2 * src.numel() * 4 / t["median_s"],
            "method": "dst.copy_(src): 2 * buffer bytes (read + write) / best time"}


@contextlib.contextmanager
def _matmul_tf32_like_convs(device: str, dtype: torch.dtype):
    if torch.device(device).type != "cuda" or dtype != torch.float32:
        yield None
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(torch.backends.cudnn.allow_tf32)
    try:
        yield torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def measure_matmul(device: str, dtype: str, n: int, repeat: int = 5) -> Dict[str, object]:
    dt = DTYPES[dtype]
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dt)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dt)
    c = torch.empty(n, n, device=device, dtype=dt)
    with _matmul_tf32_like_convs(device, dt) as tf32:
        t = measure(lambda: torch.mm(a, b, out=c), device, repeat=repeat, min_sample_s=0.0, budget_s=5.0)
    out = {"flops_per_s": 2 * n ** 3 / t["min_s"], "median_flops_per_s": 2 * n ** 3 / t["median_s"], "n": n,
           "method": f"torch.mm of {n}x{n} {dtype}: 2 n^3 / best time"}
    if tf32 is not None:
        out["allow_tf32"] = tf32
    return out


def measure_rooflines(device: str, dtypes: Sequence[str], scale: str) -> Dict[str, object]:
    cuda = torch.device(device).type == "cuda"
    if cuda:
        nbytes, n = 1 << 30, 8192
    elif scale == "quick":
        nbytes, n = 64 << 20, 1024
    else:
        nbytes, n = 256 << 20, 2048
    return {"copy": measure_copy_bandwidth(device, nbytes),
            "matmul": {d: measure_matmul(device, d, n) for d in dtypes}}



def add_derived(records: List[Dict[str, object]], rooflines: Dict[str, object]) -> None:
    """Speedups vs the reference and torch backends of the same case/dtype/layout/mode; roofline fractions."""
    def key(r):
        return (r["op"], r["case"], r.get("dtype"), r.get("layout"), r.get("mode"))
    base = {}
    for r in records:
        if r["status"] == "ok" and r["backend"] in (REFERENCE, PEER):
            base[key(r) + (r["backend"],)] = r["median_ms"]
    copy_bw = rooflines.get("copy", {}).get("bytes_per_s")
    for r in records:
        if r["status"] != "ok":
            continue
        for name, field in ((REFERENCE, "speedup_vs_reference"), (PEER, "speedup_vs_torch")):
            ref = base.get(key(r) + (name,))
            r[field] = ref / r["median_ms"] if ref else None
        if "bytes" in r and copy_bw:
            r["memory_roofline_fraction"] = r["bytes"] / (r["median_ms"] / 1e3) / copy_bw
        peak = rooflines.get("matmul", {}).get(r.get("dtype"), {}).get("flops_per_s")
        if "flops" in r and peak:
            r["compute_roofline_fraction"] = r["flops"] / (r["median_ms"] / 1e3) / peak

