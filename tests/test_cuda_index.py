"""The index helpers of the CUDA kernels (csrc/cuda/index_math.h: division by a multiply-high and a
shift, the mixed-radix counter, the affine pixel maps and their inverses), checked on the host: the
header is plain C++ (its device branch only swaps the multiply-high for the __umulhi / __umul64hi
intrinsics), so a small program compiled here compares it with ``/`` and ``%`` over edge cases and
random values, and the affine maps with brute-force coordinates (every rotation / flip by 90° that
maps the image onto itself, odd strides, the inverse composed with the map), for int32 and int64.
Runs without a GPU; skipped when no C++ compiler is found."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = r"""
#include "cuda/index_math.h"
#include <algorithm>
#include <cstdio>
#include <limits>
#include <cstdlib>
#include <random>
#include <vector>
using equifast::cuda::FastDiv;
using equifast::cuda::MixedRadix3;
using equifast::cuda::AffineMaps;
using equifast::cuda::invert_affine;

static long failures = 0;
template <typename I> void check_div(I n, I d) {
  FastDiv<I> f(d);
  I q, r;
  f.divmod(n, q, r);
  if (q != n / d || r != n % d) {
    if (failures++ < 10) std::printf("FAIL %d-bit %lld / %lld: got %lld rem %lld\n", int(8 * sizeof(I)),
                                     (long long)n, (long long)d, (long long)q, (long long)r);
  }
}

template <typename I> void divisions(std::mt19937_64& rng) {
  const I top = std::numeric_limits<I>::max();  // 2^(N-1) - 1
  std::vector<I> special;
  for (int s = 0; s < 8 * int(sizeof(I)) - 1; ++s) {
    const I p = I(1) << s;
    for (I v : {I(p - 1), p, I(p + 1)}) if (v >= 1 && v <= top) special.push_back(v);
  }
  for (I v : {I(3), I(5), I(7), I(9), I(25), I(28), I(224), I(4095), I(4096), I(16777216), I(top - 1), top})
    special.push_back(v);
  for (I d : special) {
    for (I n : special) check_div<I>(n, d);
    for (I n = 0; n < 300; ++n) check_div<I>(n, d);
    for (int k = 0; k < 200; ++k) check_div<I>(I(rng() & uint64_t(top)), d);
    // around multiples of d, where rounding errors would show
    for (int k = 0; k < 50; ++k) {
      const I m = I((rng() & uint64_t(top)) / uint64_t(d));
      for (I off : {I(-1), I(0), I(1)}) {
        const I n = I(m * d + off);
        if (n >= 0 && (m == 0 || n / m >= 0)) check_div<I>(n, d);
      }
    }
    check_div<I>(I(top - top % d), d);
    check_div<I>(I(top - top % d - 1), d);
  }
  for (int k = 0; k < 200000; ++k) {
    const int bits = 1 + int(rng() % (8 * sizeof(I) - 1));
    const I d = I(std::max<uint64_t>(1, rng() & ((uint64_t(1) << bits) - 1) & uint64_t(top)));
    check_div<I>(I(rng() & uint64_t(top)), d);
  }
}

template <typename I> void counters(std::mt19937_64& rng) {
  for (int k = 0; k < 3000; ++k) {
    const I nm = I(1 + rng() % 70), nl = I(1 + rng() % 70), step = I(rng() % 1100);
    MixedRadix3<I> mr(nm, nl, step);
    I pos = I(rng() % 5000);
    I hi, mid, lo;
    mr.split(pos, hi, mid, lo);
    for (int it = 0; it < 60; ++it) {
      if (hi != pos / (nm * nl) || mid != (pos / nl) % nm || lo != pos % nl) {
        if (failures++ < 10) std::printf("FAIL counter nm=%lld nl=%lld step=%lld pos=%lld\n", (long long)nm,
                                         (long long)nl, (long long)step, (long long)pos);
        break;
      }
      mr.advance(hi, mid, lo);
      pos += step;
    }
  }
}

// Every signed permutation [A | t] that maps the H x W image onto itself, through AffineMaps' three
// forms (dense pixel index, strided element offset, coordinates) and the inverse maps.
template <typename I> void affine(I H, I W) {
  std::vector<std::vector<int64_t>> maps;
  const int64_t mats[8][4] = {{1, 0, 0, 1}, {-1, 0, 0, 1}, {1, 0, 0, -1}, {-1, 0, 0, -1},
                              {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, -1, 0}, {0, -1, -1, 0}};
  for (auto& m : mats) {
    if (m[0] == 0 && H != W) continue;  // a transposing map keeps the image only when square
    int64_t t0 = 0, t1 = 0;             // the offsets that bring the corners back into the image
    for (int64_t r : {int64_t(0), int64_t(H - 1)})
      for (int64_t q : {int64_t(0), int64_t(W - 1)}) {
        t0 = std::max(t0, -(m[0] * r + m[1] * q));
        t1 = std::max(t1, -(m[2] * r + m[3] * q));
      }
    maps.push_back({m[0], m[1], t0, m[2], m[3], t1});
  }
  const I xs3 = 3 * W + 5, xs4 = 2;  // a strided, padded plane
  AffineMaps<I> fwd{}, inv{};
  fwd.copies = inv.copies = I(maps.size());
  fwd.W = inv.W = W; fwd.xs3 = inv.xs3 = xs3; fwd.xs4 = inv.xs4 = xs4;
  for (size_t e = 0; e < maps.size(); ++e) {
    int64_t ia[6];
    invert_affine(maps[e].data(), ia);
    for (int k = 0; k < 6; ++k) { fwd.a[e][k] = I(maps[e][k]); inv.a[e][k] = I(ia[k]); }
  }
  for (I e = 0; e < fwd.copies; ++e) {
    const auto v = fwd.view(e);
    std::vector<int> seen(size_t(H * W), 0);
    for (I r = 0; r < H; ++r)
      for (I q = 0; q < W; ++q) {
        const int64_t* c = maps[size_t(e)].data();
        const int64_t R = c[0] * r + c[1] * q + c[2], Q = c[3] * r + c[4] * q + c[5];
        I R2, Q2, r2, q2;
        fwd.map(e, r, q, R2, Q2);
        inv.map(e, R2, Q2, r2, q2);
        const bool inside = R >= 0 && R < H && Q >= 0 && Q < W;
        const bool ok = inside && R2 == R && Q2 == Q && r2 == r && q2 == q &&
                        v.plane_at(v.plane_row(r), q) == R * W + Q &&
                        v.input_at(v.input_row(r), q) == R * xs3 + Q * xs4 && v.plane_row(r) >= 0 &&
                        v.plane_row(r) < H * W && !seen[size_t(R * W + Q)]++;
        if (!ok && failures++ < 10)
          std::printf("FAIL affine %lldx%lld copy %lld at (%lld, %lld)\n", (long long)H, (long long)W, (long long)e,
                      (long long)r, (long long)q);
      }
  }
  AffineMaps<I> id{};  // the identity: one copy serves every e
  id.copies = 1; id.W = W; id.xs3 = xs3; id.xs4 = xs4;
  id.a[0][0] = 1; id.a[0][4] = 1;
  const auto v = id.view(I(7));
  if (v.input_at(v.input_row(H - 1), W - 1) != (H - 1) * xs3 + (W - 1) * xs4 && failures++ < 10)
    std::printf("FAIL identity\n");
}

int main() {
  std::mt19937_64 rng(12345);
  divisions<int32_t>(rng);
  divisions<int64_t>(rng);
  counters<int32_t>(rng);
  counters<int64_t>(rng);
  for (int hw : {1, 2, 5, 8}) { affine<int32_t>(hw, hw); affine<int64_t>(hw, hw); }
  affine<int32_t>(4, 7); affine<int64_t>(7, 4); affine<int32_t>(1, 6);
  std::printf("failures %ld\n", failures);
  return failures ? 1 : 0;
}
"""


def _compiler():
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def test_index_math_host(tmp_path):
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++, c++, clang++ or $CXX) to build the host check of csrc/cuda/index_math.h")
    src = tmp_path / "index_math_check.cpp"
    src.write_text(PROGRAM)
    exe = tmp_path / "index_math_check"
    build = subprocess.run([cxx, "-std=c++17", "-O1", "-I", os.path.join(ROOT, "csrc"), str(src), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "failures 0" in run.stdout, run.stdout + run.stderr
