// Register-blocked inner loops of the CPU kernels, on raw pointers only (no library calls), so that
// this header can be compiled twice: once for the baseline ISA and once with AVX2+FMA (see
// equiconv_cpu.h, which picks one at run time). No include guard on purpose.
//
// EQUIFAST_MK_NS: namespace of this copy;  EQUIFAST_MK_JB: column block (a multiple of the SIMD width);
// every N passed in is a multiple of JB (callers pad their row buffers with zeros).
namespace EQUIFAST_MK_NS {

constexpr int64_t kJB = EQUIFAST_MK_JB;

// C[o, j] += Σ_k A[o, k] · B[k, j]      (o < M, k < Kd, j < N)
template <typename T>
void gemm_acc(int64_t M, int64_t Kd, int64_t N, const T* __restrict__ A, int64_t lda, const T* __restrict__ B,
              int64_t ldb, T* __restrict__ C, int64_t ldc) {
  constexpr int64_t JB = kJB;
  int64_t o = 0;
  for (; o + 4 <= M; o += 4) {
    const T* a0 = A + o * lda;
    const T* a1 = a0 + lda;
    const T* a2 = a1 + lda;
    const T* a3 = a2 + lda;
    T* c0 = C + o * ldc;
    T* c1 = c0 + ldc;
    T* c2 = c1 + ldc;
    T* c3 = c2 + ldc;
    for (int64_t j = 0; j < N; j += JB) {
      T r0[JB], r1[JB], r2[JB], r3[JB];
      for (int64_t l = 0; l < JB; ++l) { r0[l] = c0[j + l]; r1[l] = c1[j + l]; r2[l] = c2[j + l]; r3[l] = c3[j + l]; }
      for (int64_t k = 0; k < Kd; ++k) {
        const T w0 = a0[k], w1 = a1[k], w2 = a2[k], w3 = a3[k];
        const T* b = B + k * ldb + j;
        for (int64_t l = 0; l < JB; ++l) {
          const T bv = b[l];
          r0[l] += w0 * bv; r1[l] += w1 * bv; r2[l] += w2 * bv; r3[l] += w3 * bv;
        }
      }
      for (int64_t l = 0; l < JB; ++l) { c0[j + l] = r0[l]; c1[j + l] = r1[l]; c2[j + l] = r2[l]; c3[j + l] = r3[l]; }
    }
  }
  for (; o < M; ++o) {
    const T* a0 = A + o * lda;
    T* c0 = C + o * ldc;
    for (int64_t j = 0; j < N; j += JB) {
      T r0[JB];
      for (int64_t l = 0; l < JB; ++l) r0[l] = c0[j + l];
      for (int64_t k = 0; k < Kd; ++k) {
        const T w0 = a0[k];
        const T* b = B + k * ldb + j;
        for (int64_t l = 0; l < JB; ++l) r0[l] += w0 * b[l];
      }
      for (int64_t l = 0; l < JB; ++l) c0[j + l] = r0[l];
    }
  }
}

// C[o, k] += Σ_j A[o, j] · B[k, j]      (o < M, k < Nk, j < L); fixed summation order (deterministic)
template <typename T>
void dots_acc(int64_t M, int64_t Nk, int64_t L, const T* __restrict__ A, int64_t lda, const T* __restrict__ B,
              int64_t ldb, T* __restrict__ C, int64_t ldc) {
  constexpr int64_t JB = kJB;
  int64_t o = 0;
  for (; o + 4 <= M; o += 4) {
    const T* a0 = A + o * lda;
    const T* a1 = a0 + lda;
    const T* a2 = a1 + lda;
    const T* a3 = a2 + lda;
    for (int64_t k = 0; k < Nk; ++k) {
      const T* b = B + k * ldb;
      T r0[JB], r1[JB], r2[JB], r3[JB];
      for (int64_t l = 0; l < JB; ++l) { r0[l] = 0; r1[l] = 0; r2[l] = 0; r3[l] = 0; }
      for (int64_t j = 0; j < L; j += JB) {
        for (int64_t l = 0; l < JB; ++l) {
          const T bv = b[j + l];
          r0[l] += a0[j + l] * bv; r1[l] += a1[j + l] * bv; r2[l] += a2[j + l] * bv; r3[l] += a3[j + l] * bv;
        }
      }
      T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t l = 0; l < JB; ++l) { s0 += r0[l]; s1 += r1[l]; s2 += r2[l]; s3 += r3[l]; }
      C[o * ldc + k] += s0; C[(o + 1) * ldc + k] += s1; C[(o + 2) * ldc + k] += s2; C[(o + 3) * ldc + k] += s3;
    }
  }
  for (; o < M; ++o) {
    const T* a0 = A + o * lda;
    for (int64_t k = 0; k < Nk; ++k) {
      const T* b = B + k * ldb;
      T r0[JB];
      for (int64_t l = 0; l < JB; ++l) r0[l] = 0;
      for (int64_t j = 0; j < L; j += JB)
        for (int64_t l = 0; l < JB; ++l) r0[l] += a0[j + l] * b[j + l];
      T s0 = 0;
      for (int64_t l = 0; l < JB; ++l) s0 += r0[l];
      C[o * ldc + k] += s0;
    }
  }
}

}  // namespace EQUIFAST_MK_NS
