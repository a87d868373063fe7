// Index helpers of the CUDA kernels (csrc/cuda/equiconv_kernel.cu): division by a loop-invariant divisor
// as a multiply-high and a shift, a mixed-radix counter that walks (hi, mid, lo) positions by a fixed
// step without dividing, and the affine pixel maps (rotations / flips by multiples of 90°) with their
// inverses. Built on the host once per launch, used on the device; with the index
// type I = int32_t or int64_t the device code has no division instruction and no call to a 64-bit
// division routine. No torch dependency, so that tests/test_cuda_index.py checks these on the host
// with a plain C++ compiler.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define EQUIFAST_HD __host__ __device__ __forceinline__
#else
#define EQUIFAST_HD inline
#endif

namespace equifast {
namespace cuda {

EQUIFAST_HD uint32_t mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

EQUIFAST_HD uint64_t mulhi(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

// n / d and n % d for 0 <= n < 2^(N-1) and 1 <= d < 2^(N-1) (N: the bits of I), as
//   q = (mulhi(n, magic) + n) >> shift,   shift = ceil(log2 d),   magic = floor(2^N·(2^shift − d) / d) + 1
// (Granlund & Montgomery's round-up method with an (N+1)-bit multiplier 2^N + magic; the form of
// PyTorch's IntDivider). magic < 2^N, and mulhi(n, magic) + n < 2^N because n < 2^(N-1).
template <typename I>
struct FastDiv {
  static_assert(std::is_same<I, int32_t>::value || std::is_same<I, int64_t>::value, "int32_t or int64_t");
  using U = typename std::make_unsigned<I>::type;
  static constexpr int kBits = 8 * static_cast<int>(sizeof(I));

  U magic = 0;
  int shift = 0;
  I d = 1;

  FastDiv() = default;
  // host: the divisor must be >= 1 (callers check)
  explicit FastDiv(I divisor) : d(divisor) {
    while ((U(1) << shift) < static_cast<U>(divisor)) ++shift;  // terminates: divisor < 2^(N-1)
    // (2^shift − d) < d <= 2^(N-1), so the product fits the double-width type
    using Wide = typename std::conditional<sizeof(I) == 4, uint64_t, unsigned __int128>::type;
    const Wide num = (Wide(1) << kBits) * ((Wide(1) << shift) - static_cast<Wide>(divisor));
    magic = static_cast<U>(num / static_cast<Wide>(divisor) + 1);
  }

  EQUIFAST_HD I div(I n) const {
    return static_cast<I>((mulhi(static_cast<U>(n), magic) + static_cast<U>(n)) >> shift);
  }
  EQUIFAST_HD void divmod(I n, I& q, I& r) const {
    q = div(n);
    r = n - q * d;
  }
};

// A position (hi, mid, lo) in mixed radix (mid < nm, lo < nl), e.g. (image, row, column) of a flat
// index, advanced by a fixed step with two conditional carries: lo + step_lo < 2·nl and
// mid + step_mid + 1 < 2·nm, so one subtraction per digit suffices.
template <typename I>
struct MixedRadix3 {
  FastDiv<I> by_lo, by_mid;  // divide by nl, by nm
  I nm = 1, nl = 1;
  I step_hi = 0, step_mid = 0, step_lo = 0;

  MixedRadix3() = default;
  // host: nm, nl >= 1, step >= 0
  MixedRadix3(I nm_, I nl_, I step) : by_lo(nl_), by_mid(nm_), nm(nm_), nl(nl_) {
    step_lo = step % nl;
    step_mid = (step / nl) % nm;
    step_hi = (step / nl) / nm;
  }

  EQUIFAST_HD void split(I pos, I& hi, I& mid, I& lo) const {
    I t;
    by_lo.divmod(pos, t, lo);
    by_mid.divmod(t, hi, mid);
  }
  EQUIFAST_HD void advance(I& hi, I& mid, I& lo) const {
    lo += step_lo;
    I carry = 0;
    if (lo >= nl) { lo -= nl; carry = 1; }
    mid += step_mid + carry;
    carry = 0;
    if (mid >= nm) { mid -= nm; carry = 1; }
    hi += step_hi + carry;
  }
};

// ------------------------------------------------------------------ affine pixel maps
constexpr int kMaxAffineCopies = 16;  // copies whose affine maps a kernel takes by value

// Where copy e reads view pixel (r, q) of an input plane, in two forms: the pixel index in a dense
// H × W plane (the shared-memory copy) and the element offset in the input plane (strides xs3, xs4).
// Both split into a row part (per kernel row) and a column step (per tap), so the inner loop adds.
template <typename I>
struct AffineView {
  I p0, pr, pq;    // pixel index     p0 + r·pr + q·pq
  I o0, orow, oq;  // element offset  o0 + r·orow + q·oq
  EQUIFAST_HD I plane_row(I r) const { return p0 + r * pr; }
  EQUIFAST_HD I plane_at(I row, I q) const { return row + q * pq; }
  EQUIFAST_HD I input_row(I r) const { return o0 + r * orow; }
  EQUIFAST_HD I input_at(I row, I q) const { return row + q * oq; }
};

// Copy e reads input pixel (R, Q) = (a0·r + a1·q + a2, a3·r + a4·q + a5) of view pixel (r, q), the 2 × 2
// part a signed permutation matrix. `copies` is n, or 1 for the identity (every copy reads row 0). For
// an in-image (r, q), p0 + r·pr is the pixel of (r, 0), also in the image, so no partial sum leaves the
// plane's range (the int32 instantiation relies on it).
template <typename I>
struct AffineMaps {
  I a[kMaxAffineCopies][6];
  I copies, W, xs3, xs4;
  EQUIFAST_HD AffineView<I> view(I e) const {
    const I* c = a[copies == 1 ? 0 : e];
    AffineView<I> v;
    v.p0 = c[2] * W + c[5]; v.pr = c[0] * W + c[3]; v.pq = c[1] * W + c[4];
    v.o0 = c[2] * xs3 + c[5] * xs4; v.orow = c[0] * xs3 + c[3] * xs4; v.oq = c[1] * xs3 + c[4] * xs4;
    return v;
  }
  // the coordinates form (grad input reads the inverse maps this way)
  EQUIFAST_HD void map(I e, I r, I q, I& R, I& Q) const {
    const I* c = a[copies == 1 ? 0 : e];
    R = c[0] * r + c[1] * q + c[2];
    Q = c[3] * r + c[4] * q + c[5];
  }
};

// The inverse of one affine map c (host): the matrix part of a signed permutation is orthogonal, so
// A⁻¹ = Aᵀ and the offset is −Aᵀ·t: (r, q) = Aᵀ·((R, Q) − t). Entries are 0 / ±1 and the offsets lie
// inside the image, so nothing overflows.
inline void invert_affine(const int64_t c[6], int64_t inv[6]) {
  inv[0] = c[0]; inv[1] = c[3];
  inv[3] = c[1]; inv[4] = c[4];
  inv[2] = -(c[0] * c[2] + c[3] * c[5]);
  inv[5] = -(c[1] * c[2] + c[4] * c[5]);
}

}  // namespace cuda
}  // namespace equifast
