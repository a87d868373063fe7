// equifast_C::group_mix (schema in csrc/ops.cpp): a small matrix applied across a list of planes,
//
//   outputs[r] = (accumulate ? outputs[r] : 0) + Σ_g t[r, g] · inputs[g]       (t: [R, G])
//
// every input and output a 2-D [P, Q] plane with unit column stride (any row stride). It is the
// group-axis mix of the group-Fourier backend (equifast/backends/fourier/group_conv.py): the copies of
// a stack into the rows of its convolutions, and the convolutions' outputs back into a stack, each in
// one pass that reads its planes where they are (strided copies of a stack, a list of separate conv
// outputs) and writes the result in place: no gathering copy, no packing, no layout change.
// One task per (block of rows p, block of at most kQB columns); the g loop runs over L1-resident
// blocks (cpu/mix_kernel.h, compiled for the baseline ISA, AVX2+FMA and AVX-512).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include <torch/library.h>

#include "cpu/isa.h"

#define EQUIFAST_MK_NS mix_base
#define EQUIFAST_MK_VBYTES 16
#include "cpu/mix_kernel.h"
#undef EQUIFAST_MK_NS
#undef EQUIFAST_MK_VBYTES

#ifdef EQUIFAST_HAVE_X86_COPIES
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define EQUIFAST_MK_NS mix_avx2
#define EQUIFAST_MK_VBYTES 32
#include "cpu/mix_kernel.h"
#undef EQUIFAST_MK_NS
#undef EQUIFAST_MK_VBYTES
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#define EQUIFAST_MK_NS mix_avx512
#define EQUIFAST_MK_VBYTES 64
#include "cpu/mix_kernel.h"
#undef EQUIFAST_MK_NS
#undef EQUIFAST_MK_VBYTES
#pragma GCC pop_options
#endif

namespace equifast {
namespace cpu {
namespace {

constexpr int64_t kQB = 1024;        // columns per task block (G + R blocks of it stay in L2)
constexpr int64_t kTaskElems = 1024;  // short rows are grouped so that a task covers about this many

template <typename T>
using MixFn = void (*)(int64_t, int64_t, const T*, const T* const*, T* const*, int64_t, bool);

template <typename T>
MixFn<T> mix_fn() {
#ifdef EQUIFAST_HAVE_X86_COPIES
  const std::string which = isa();
  if (which == "avx512") return &mix_avx512::mix<T>;
  if (which == "avx2") return &mix_avx2::mix<T>;
#endif
  return &mix_base::mix<T>;
}

void check_plane(const at::Tensor& p, const at::Tensor& t, const char* what, size_t i, int64_t P, int64_t Q) {
  TORCH_CHECK(p.dim() == 2 && p.size(0) == P && p.size(1) == Q, "group_mix: ", what, "[", i,
              "] must be a [", P, ", ", Q, "] plane like ", what, "[0], got shape ", p.sizes());
  TORCH_CHECK(p.device().is_cpu() && p.scalar_type() == t.scalar_type(), "group_mix: ", what, "[", i,
              "] must be a CPU tensor of t's dtype ", t.scalar_type(), ", got ", p.scalar_type(), " on ", p.device());
  TORCH_CHECK(Q <= 1 || p.stride(1) == 1, "group_mix: ", what, "[", i, "] must have unit column stride, got strides ",
              p.strides());
  TORCH_CHECK(P <= 1 || p.stride(0) >= Q, "group_mix: ", what, "[", i, "] has overlapping rows (row stride ",
              p.stride(0), " < ", Q, " columns)");
}

template <typename T>
void run(const at::Tensor& t, at::TensorList inputs, at::TensorList outputs, bool accumulate, int64_t P, int64_t Q) {
  const int64_t R = t.size(0), G = t.size(1);
  const int64_t Rp = (R + 3) / 4 * 4;  // mix_kernel.h's kMR rows per pass: zero rows past R
  std::vector<T> tp(static_cast<size_t>(Rp * G), T(0));
  const at::Tensor tc = t.contiguous();
  std::copy(tc.data_ptr<T>(), tc.data_ptr<T>() + R * G, tp.begin());
  std::vector<const T*> in_base(G);
  std::vector<int64_t> in_stride(G), out_stride(R);
  std::vector<T*> out_base(R);
  for (int64_t g = 0; g < G; ++g) in_base[g] = inputs[g].data_ptr<T>(), in_stride[g] = inputs[g].stride(0);
  for (int64_t r = 0; r < R; ++r) out_base[r] = outputs[r].data_ptr<T>(), out_stride[r] = outputs[r].stride(0);
  const int64_t qb = std::min(Q, kQB), nqb = (Q + qb - 1) / qb;
  const int64_t pb = std::max<int64_t>(1, kTaskElems / qb);  // rows per task
  const int64_t tasks = (P + pb - 1) / pb * nqb;
  const MixFn<T> mix = mix_fn<T>();
  at::parallel_for(0, tasks, std::max<int64_t>(1, 32768 / (pb * qb)), [&](int64_t a, int64_t b) {
    std::vector<const T*> ip(G);
    std::vector<T*> op(R);
    for (int64_t task = a; task < b; ++task) {
      const int64_t p0 = task / nqb * pb, q0 = task % nqb * qb, len = std::min(qb, Q - q0);
      for (int64_t p = p0; p < std::min(P, p0 + pb); ++p) {
        for (int64_t g = 0; g < G; ++g) ip[g] = in_base[g] + p * in_stride[g] + q0;
        for (int64_t r = 0; r < R; ++r) op[r] = out_base[r] + p * out_stride[r] + q0;
        mix(R, G, tp.data(), ip.data(), op.data(), len, accumulate);
      }
    }
  });
}

void group_mix(const at::Tensor& t, at::TensorList inputs, at::TensorList outputs, bool accumulate) {
  TORCH_CHECK(t.dim() == 2, "group_mix: t must be a 2-D matrix [R, G], got shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble),
              "group_mix: t must be a float32 or float64 CPU tensor, got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(static_cast<int64_t>(outputs.size()) == t.size(0) && static_cast<int64_t>(inputs.size()) == t.size(1),
              "group_mix: t [R, G] must have one row per output and one column per input: t is ", t.sizes(), " for ",
              inputs.size(), " inputs and ", outputs.size(), " outputs");
  if (outputs.empty()) return;
  const at::Tensor& ref = outputs[0];
  TORCH_CHECK(ref.dim() == 2, "group_mix: outputs[0] must be a 2-D plane [P, Q], got shape ", ref.sizes());
  const int64_t P = ref.size(0), Q = ref.size(1);
  for (size_t i = 0; i < outputs.size(); ++i) check_plane(outputs[i], t, "outputs", i, P, Q);
  for (size_t i = 0; i < inputs.size(); ++i) check_plane(inputs[i], t, "inputs", i, P, Q);
  if (P == 0 || Q == 0) return;
  if (t.scalar_type() == at::kFloat) run<float>(t, inputs, outputs, accumulate, P, Q);
  else run<double>(t, inputs, outputs, accumulate, P, Q);
}

}  // namespace
}  // namespace cpu
}  // namespace equifast

TORCH_LIBRARY_IMPL(equifast_C, CPU, m) { m.impl("group_mix", &equifast::cpu::group_mix); }
