// The inner loop of equifast_C::group_mix (csrc/cpu/group_mix.cpp), on raw pointers only, so that
// this header can be compiled once per instruction set (group_mix.cpp includes it under
// `#pragma GCC target` and picks a copy at run time, as cpu/microkernels.h). No include guard on purpose.
//
//   out[r][j] = (accumulate ? out[r][j] : 0) + Σ_{g < G} t[r·G + g] · in[g][j]      (r < R, j < len)
//
// t holds round_up(R, kMR) rows (the rows past R are zero), so every pass computes kMR rows and
// stores the valid ones. A pass keeps kMR × 2 vectors of out in registers for the whole g loop: one
// load of in[g] per kMR FMAs, 2·kMR independent FMA chains.
// EQUIFAST_MK_NS: namespace of this copy;  EQUIFAST_MK_VBYTES: vector width in bytes.
namespace EQUIFAST_MK_NS {

constexpr int kVBytes = EQUIFAST_MK_VBYTES;
constexpr int kMR = 4;   // output rows per pass
constexpr int kNV = 2;   // vectors per row per step

template <typename T>
void mix(int64_t R, int64_t G, const T* __restrict__ t, const T* const* in, T* const* out, int64_t len,
         bool accumulate) {
  typedef T V __attribute__((vector_size(kVBytes)));
  constexpr int64_t L = kVBytes / sizeof(T);
  constexpr int64_t S = kNV * L;
  const int64_t lv = len / S * S;
  for (int64_t r0 = 0; r0 < R; r0 += kMR) {
    const int mr = static_cast<int>(R - r0 < kMR ? R - r0 : kMR);
    const T* tr = t + r0 * G;
    for (int64_t j = 0; j < lv; j += S) {
      V acc[kMR][kNV];
      for (int i = 0; i < kMR; ++i)
        for (int v = 0; v < kNV; ++v) {
          if (accumulate && i < mr) __builtin_memcpy(&acc[i][v], out[r0 + i] + j + v * L, sizeof(V));
          else acc[i][v] = V{};
        }
      for (int64_t g = 0; g < G; ++g) {
        V x[kNV];
        for (int v = 0; v < kNV; ++v) __builtin_memcpy(&x[v], in[g] + j + v * L, sizeof(V));
        for (int i = 0; i < kMR; ++i) {
          const T c = tr[i * G + g];
          for (int v = 0; v < kNV; ++v) acc[i][v] += c * x[v];
        }
      }
      for (int i = 0; i < mr; ++i)
        for (int v = 0; v < kNV; ++v) __builtin_memcpy(out[r0 + i] + j + v * L, &acc[i][v], sizeof(V));
    }
    for (int64_t j = lv; j < len; ++j)  // the ragged end
      for (int i = 0; i < mr; ++i) {
        T a = accumulate ? out[r0 + i][j] : T(0);
        for (int64_t g = 0; g < G; ++g) a += tr[i * G + g] * in[g][j];
        out[r0 + i][j] = a;
      }
  }
}

}  // namespace EQUIFAST_MK_NS
