// The register-tiled GEMM of the CPU kernels, on raw pointers only (no library calls), so that this
// header can be compiled once per instruction set: baseline, AVX2+FMA and AVX-512 (equiconv_cpu.h
// includes it under `#pragma GCC target` and picks a copy at run time). No include guard on purpose.
//
//   C[r, j] = init(r, j) + Σ_{k < Kd} A[r·ars + k·aks] · B[k·ldb + j]      (r < M, j < N)
//
// init: C's old value (kAccumulate), 0 (kZero), bias[r] (kRowBias) or bias[j] (kColBias).
// A is read one scalar at a time (any strides), B in vectors: callers keep B's rows (and a kColBias
// bias) readable up to round_up(N, block_n<T>()) columns; C is written only at j < N.
// A tile of MR rows × 2 vectors stays in registers for the whole k loop (GCC vector types; the
// sources are compiled with -ffp-contract=fast, so `acc += a * b` becomes one FMA).
//
// Needs GCC or Clang (vector extensions); the in-register transpose uses GCC's __builtin_shuffle.
// EQUIFAST_MK_NS: namespace of this copy;  EQUIFAST_MK_VBYTES: vector width in bytes;
// EQUIFAST_MK_MR: rows per tile (MR·2 accumulators + 3 must fit the register file).
namespace EQUIFAST_MK_NS {

enum Init { kAccumulate = 0, kZero = 1, kRowBias = 2, kColBias = 3 };

constexpr int kVBytes = EQUIFAST_MK_VBYTES;
constexpr int kMR = EQUIFAST_MK_MR;
constexpr int kNV = 2;  // vectors per tile row

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVBytes)));
  static constexpr int64_t lanes = kVBytes / sizeof(T);
};

template <typename T>
constexpr int64_t block_n() { return kNV * Vec<T>::lanes; }

template <typename T, int MR>
inline void tile(int64_t Kd, const T* __restrict__ A, int64_t ars, int64_t aks, const T* __restrict__ B, int64_t ldb,
                 T* __restrict__ C, int64_t ldc, int init, const T* __restrict__ bias) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::lanes;
  V acc[MR][kNV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) {
      if (init == kAccumulate) __builtin_memcpy(&acc[r][v], C + r * ldc + v * L, sizeof(V));
      else if (init == kColBias) __builtin_memcpy(&acc[r][v], bias + v * L, sizeof(V));
      else acc[r][v] = V{} + (init == kRowBias ? bias[r] : T(0));
    }
  for (int64_t k = 0; k < Kd; ++k) {
    V b[kNV];
    for (int v = 0; v < kNV; ++v) __builtin_memcpy(&b[v], B + k * ldb + v * L, sizeof(V));
    const T* a = A + k * aks;
    for (int r = 0; r < MR; ++r) {
      const T ar = a[r * ars];
      for (int v = 0; v < kNV; ++v) acc[r][v] += ar * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) __builtin_memcpy(C + r * ldc + v * L, &acc[r][v], sizeof(V));
}

template <typename T>
inline void tile_rows(int mr, int64_t Kd, const T* A, int64_t ars, int64_t aks, const T* B, int64_t ldb, T* C,
                      int64_t ldc, int init, const T* bias) {
  switch (mr) {
    case 1: return tile<T, 1>(Kd, A, ars, aks, B, ldb, C, ldc, init, bias);
    case 2: return tile<T, 2>(Kd, A, ars, aks, B, ldb, C, ldc, init, bias);
    case 3: return tile<T, 3>(Kd, A, ars, aks, B, ldb, C, ldc, init, bias);
    case 4: return tile<T, 4>(Kd, A, ars, aks, B, ldb, C, ldc, init, bias);
    case 5: return tile<T, 5>(Kd, A, ars, aks, B, ldb, C, ldc, init, bias);
    case 6: return tile<T, 6>(Kd, A, ars, aks, B, ldb, C, ldc, init, bias);
#if EQUIFAST_MK_MR > 6
    case 7: return tile<T, 7>(Kd, A, ars, aks, B, ldb, C, ldc, init, bias);
    case 8: return tile<T, 8>(Kd, A, ars, aks, B, ldb, C, ldc, init, bias);
#endif
    default: return;
  }
}

// The whole product, column strips outside (a strip of B stays in L1 across the row tiles).
// Partial column strips go through a small buffer, so C is never written past column N.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t Kd, const T* A, int64_t ars, int64_t aks, const T* B, int64_t ldb, T* C,
          int64_t ldc, int init, const T* bias) {
  constexpr int64_t NB = block_n<T>();
  T buf[kMR * NB] = {};
  for (int64_t j0 = 0; j0 < N; j0 += NB) {
    const int64_t nb = N - j0 < NB ? N - j0 : NB;
    const T* bias_j = init == kColBias ? bias + j0 : bias;
    for (int64_t r0 = 0; r0 < M; r0 += kMR) {
      const int mr = static_cast<int>(M - r0 < kMR ? M - r0 : kMR);
      const T* a = A + r0 * ars;
      const T* bias_r = init == kRowBias ? bias + r0 : bias_j;
      T* c = C + r0 * ldc + j0;
      if (nb == NB) {
        tile_rows<T>(mr, Kd, a, ars, aks, B + j0, ldb, c, ldc, init, bias_r);
        continue;
      }
      if (init == kAccumulate)
        for (int r = 0; r < mr; ++r)
          for (int64_t j = 0; j < nb; ++j) buf[r * NB + j] = c[r * ldc + j];
      tile_rows<T>(mr, Kd, a, ars, aks, B + j0, ldb, buf, NB, init, bias_r);
      for (int r = 0; r < mr; ++r)
        for (int64_t j = 0; j < nb; ++j) c[r * ldc + j] = buf[r * NB + j];
    }
  }
}

template <typename T>
struct IndexVec {  // shuffle masks: integers of T's width
  typedef typename std::conditional<sizeof(T) == 8, int64_t, int32_t>::type I;
  typedef I type __attribute__((vector_size(kVBytes)));
};

// Shuffle masks of the transpose below, round s (d = L >> (s + 1)): lo takes a's and b's low
// halves of every 2d-wide group, hi the high halves (indices >= L select from b).
template <typename T>
struct TransposeMasks {
  typedef typename IndexVec<T>::I I;
  static constexpr int L = static_cast<int>(Vec<T>::lanes);
  I lo[8][L], hi[8][L];
  constexpr TransposeMasks() : lo(), hi() {
    for (int s = 0, d = L / 2; d >= 1; ++s, d /= 2)
      for (int j = 0; j < L; ++j) {
        lo[s][j] = (j & d) ? L + j - d : j;
        hi[s][j] = (j & d) ? L + j : j + d;
      }
  }
};

// An L × L block (L = lanes) transposed in registers: log2(L) rounds of two-vector shuffles, each
// swapping the off-diagonal d × d blocks (d = L/2, ..., 1).
template <typename T>
inline void transpose_block(const T* __restrict__ src, int64_t lds, T* __restrict__ dst, int64_t ldd) {
  constexpr int L = static_cast<int>(Vec<T>::lanes);
#if defined(__clang__)  // clang's shuffles take constant indices only: plain loops there
  for (int i = 0; i < L; ++i)
    for (int j = 0; j < L; ++j) dst[j * ldd + i] = src[i * lds + j];
#else
  using V = typename Vec<T>::type;
  using M = typename IndexVec<T>::type;
  static constexpr TransposeMasks<T> masks{};
  V r[L];
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) __builtin_memcpy(&r[i], src + i * lds, sizeof(V));
#pragma GCC unroll 4
  for (int s = 0, d = L / 2; d >= 1; ++s, d /= 2) {
    M lo, hi;
    __builtin_memcpy(&lo, masks.lo[s], sizeof(M));
    __builtin_memcpy(&hi, masks.hi[s], sizeof(M));
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i)
      if ((i & d) == 0) {
        const V a = r[i], b = r[i + d];
        r[i] = __builtin_shuffle(a, b, lo);
        r[i + d] = __builtin_shuffle(a, b, hi);
      }
  }
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) __builtin_memcpy(dst + i * ldd, &r[i], sizeof(V));
#endif
}

// dst[j·ldd + i] = src[i·lds + j]   (i < rows, j < cols)
template <typename T>
void transpose(int64_t rows, int64_t cols, const T* __restrict__ src, int64_t lds, T* __restrict__ dst, int64_t ldd) {
  constexpr int64_t L = Vec<T>::lanes;
  const int64_t rb = rows / L * L, cb = cols / L * L;
  for (int64_t i0 = 0; i0 < rb; i0 += L)
    for (int64_t j0 = 0; j0 < cb; j0 += L) transpose_block<T>(src + i0 * lds + j0, lds, dst + j0 * ldd + i0, ldd);
  for (int64_t i = 0; i < rows; ++i)  // the ragged edges
    for (int64_t j = (i < rb ? cb : 0); j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
}

}  // namespace EQUIFAST_MK_NS
