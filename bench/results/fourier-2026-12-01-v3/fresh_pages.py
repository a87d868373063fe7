"""Cost of writing fresh anonymous pages on this machine: 8 MiB mmapped and written one page fault at a
time, against the same populated first with one madvise(MADV_POPULATE_WRITE) (Linux 5.14+), and a
write of memory already resident. ms, three rounds each (Linux x86-64 only).

    python bench/results/fourier-2026-12-01-v3/fresh_pages.py
"""
import ctypes
import mmap
import time

import numpy as np

N = 8 << 20
MADV_POPULATE_WRITE = 23
libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def fresh(populate):
    m = mmap.mmap(-1, N, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    a = np.frombuffer(m, dtype=np.uint8)
    t0 = time.perf_counter()
    if populate and libc.madvise(a.ctypes.data, N, MADV_POPULATE_WRITE) != 0:
        raise OSError(ctypes.get_errno(), "madvise(MADV_POPULATE_WRITE)")
    t1 = time.perf_counter()
    a[:] = 1
    t2 = time.perf_counter()
    del a
    m.close()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


for _ in range(3):
    _, touch = fresh(False)
    pop, write = fresh(True)
    print(f"fresh pages written: {touch:.2f} ms; populated {pop:.2f} ms + written {write:.2f} ms")
warm = np.ones(N, dtype=np.uint8)
t = time.perf_counter()
warm[:] = 2
print(f"resident pages written: {(time.perf_counter() - t) * 1e3:.2f} ms")
