// CPU group convolution (equifast_C::group_conv, group_conv_backward).
//
//   view frame:      out[b, g, o] = Σ_h conv2d(s[b, g·h], w[:, h])          = Σ_h' conv2d(s[b, h'], w[:, g⁻¹·h'])
//   canonical frame: out[b, g, o] = Σ_h conv2d(s[b, h], act(w[:, g⁻¹·h], g))
// i.e. out[b, g, o, i, j] = Σ_{h, c, u, v} w[o, slot[g][h], c, KP[g][u, v]] · s[b, h, c, i·sh − pt + u·dh, j·sw − pl + v·dw]
// with slot[g][h] = g⁻¹·h and KP = identity (view) or the kernel permutation of g (canonical).
//   grad s[b, h, c, p]          = Σ_{g, o, u, v, i, j: pos = p} gy[b, g, o, i, j] · w[o, slot[g][h], c, KP[g][u, v]]
//   grad w[o, slot[g][h], c, KP[g][t]] = Σ_{b, g, i, j} gy[b, g, o, i, j] · s[b, h, c, pos(i, j, t)]
// All |G| output copies in one pass; see cpu/equiconv_cpu.h.
#include <torch/library.h>

#include "cpu/equiconv_cpu.h"

namespace equifast {
namespace cpu {
namespace {

at::Tensor group_conv(const at::Tensor& s, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      const at::Tensor& slot, const at::Tensor& kperm, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation) {
  const char* op = "equifast_C::group_conv (cpu)";
  check_cpu(op, s);
  TORCH_CHECK(s.dim() == 5, op, ": expected s of shape [B, n, C_in, H, W], got ", s.sizes());
  Prepared p = prepare(op, s, weight, slot, at::Tensor(), kperm, s.size(1), stride, padding, dilation);
  return run_forward(op, p, bias);
}

std::tuple<at::Tensor, at::Tensor> group_conv_backward(const at::Tensor& grad_out, const at::Tensor& s,
                                                       const at::Tensor& weight, const at::Tensor& slot,
                                                       const at::Tensor& kperm, at::IntArrayRef stride,
                                                       at::IntArrayRef padding, at::IntArrayRef dilation,
                                                       const c10::List<bool>& output_mask) {
  const char* op = "equifast_C::group_conv_backward (cpu)";
  check_cpu(op, s);
  TORCH_CHECK(s.dim() == 5, op, ": expected s of shape [B, n, C_in, H, W], got ", s.sizes());
  Prepared p = prepare(op, s, weight, slot, at::Tensor(), kperm, s.size(1), stride, padding, dilation);
  return run_backward(op, p, grad_out, weight, mask_pair(op, output_mask));
}

}  // namespace
}  // namespace cpu
}  // namespace equifast

TORCH_LIBRARY_IMPL(equifast_C, CPU, m) {
  m.impl("group_conv", &equifast::cpu::group_conv);
  m.impl("group_conv_backward", &equifast::cpu::group_conv_backward);
}
