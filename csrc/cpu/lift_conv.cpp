// CPU lifting convolution (equifast_C::lift_conv, lift_conv_backward).
//
//   view frame:      out[b, g, o] = conv2d(act(x, g⁻¹), weight)[b, o]  — x read through the pixel table
//                    XP[g] = perm[g⁻¹] (xperm), weight shared;
//   canonical frame: out[b, g, o] = conv2d(x, act(weight, g))[b, o]   — weight taps read through
//                    KP[g] = perm_k[g] (kperm), x read directly.
//   grad x[b, c, p]       = Σ_{g, o, i, j, u, v: XP[g][pos(i, j, u, v)] = p} gy[b, g, o, i, j] · w[o, c, KP[g][u, v]]
//   grad w[o, c, KP[g][t]] = Σ_{b, g, i, j} gy[b, g, o, i, j] · x[b, c, XP[g][pos(i, j, t)]]
// All |G| copies are computed in one pass; see cpu/equiconv_cpu.h for the loop structure.
#include <torch/library.h>

#include "cpu/equiconv_cpu.h"

namespace equifast {
namespace cpu {
namespace {

at::Tensor lift_conv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     const at::Tensor& xperm, const at::Tensor& kperm, int64_t order, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "equifast_C::lift_conv (cpu)";
  check_cpu(op, x);
  TORCH_CHECK(x.dim() == 4, op, ": expected x of shape [B, C_in, H, W], got ", x.sizes());
  Prepared p = prepare(op, x, weight, zeros_slot(order), xperm, kperm, order, stride, padding, dilation);
  return run_forward(op, p, bias);
}

std::tuple<at::Tensor, at::Tensor> lift_conv_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                      const at::Tensor& weight, const at::Tensor& xperm,
                                                      const at::Tensor& kperm, int64_t order, at::IntArrayRef stride,
                                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                                      const c10::List<bool>& output_mask) {
  const char* op = "equifast_C::lift_conv_backward (cpu)";
  check_cpu(op, x);
  TORCH_CHECK(x.dim() == 4, op, ": expected x of shape [B, C_in, H, W], got ", x.sizes());
  Prepared p = prepare(op, x, weight, zeros_slot(order), xperm, kperm, order, stride, padding, dilation);
  return run_backward(op, p, grad_out, weight, mask_pair(op, output_mask));
}

}  // namespace
}  // namespace cpu
}  // namespace equifast

// Which copy of the CPU GEMM runs here ("avx512", "avx2" or "baseline"; EQUIFAST_CPU_ISA caps it).
std::string cpu_isa() { return equifast::cpu::isa(); }

TORCH_LIBRARY_FRAGMENT(equifast_C, m) { m.def("cpu_isa() -> str", &cpu_isa); }

TORCH_LIBRARY_IMPL(equifast_C, CPU, m) {
  m.impl("lift_conv", &equifast::cpu::lift_conv);
  m.impl("lift_conv_backward", &equifast::cpu::lift_conv_backward);
}
