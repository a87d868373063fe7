// CUDA group convolution (equifast_C::group_conv, group_conv_backward).
//
//   view frame:      out[b, g, o] = Σ_h conv2d(s[b, g·h], w[:, h])          = Σ_h' conv2d(s[b, h'], w[:, g⁻¹·h'])
//   canonical frame: out[b, g, o] = Σ_h conv2d(s[b, h], act(w[:, g⁻¹·h], g))
// i.e. out[b, g, o, i, j] = Σ_{h, c, u, v} w[o, slot[g][h], c, KP[g][u, v]] · s[b, h, c, i·sh − pt + u·dh, j·sw − pl + v·dw]
//   grad s[b, h, c, p]                 = Σ_{g, o, u, v} gy[b, g, o, i, j] · w[o, slot[g][h], c, KP[g][u, v]]  (gather)
//   grad w[o, slot[g][h], c, KP[g][t]] = Σ_{b, g, i, j} gy[b, g, o, i, j] · s[b, h, c, pos(i, j, t)]
// Each (h, c) plane is staged in shared memory once per block for all n output copies; kernels in
// cuda/equiconv_cuda.cuh.
#include <torch/library.h>

#include "cuda/equiconv_cuda.cuh"

namespace equifast {
namespace cuda {
namespace {

at::Tensor group_conv(const at::Tensor& s, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      const at::Tensor& slot, const at::Tensor& kperm, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation) {
  const char* op = "equifast_C::group_conv (cuda)";
  check_cuda(op, s);
  TORCH_CHECK(s.dim() == 5, op, ": expected s of shape [B, n, C_in, H, W], got ", s.sizes());
  Prepared p = prepare(op, s, weight, slot, at::Tensor(), kperm, s.size(1), stride, padding, dilation);
  return run_forward(op, p, bias);
}

std::tuple<at::Tensor, at::Tensor> group_conv_backward(const at::Tensor& grad_out, const at::Tensor& s,
                                                       const at::Tensor& weight, const at::Tensor& slot,
                                                       const at::Tensor& kperm, at::IntArrayRef stride,
                                                       at::IntArrayRef padding, at::IntArrayRef dilation,
                                                       const c10::List<bool>& output_mask) {
  const char* op = "equifast_C::group_conv_backward (cuda)";
  check_cuda(op, s);
  TORCH_CHECK(s.dim() == 5, op, ": expected s of shape [B, n, C_in, H, W], got ", s.sizes());
  Prepared p = prepare(op, s, weight, slot, at::Tensor(), kperm, s.size(1), stride, padding, dilation);
  return run_backward(op, p, grad_out, weight, mask_pair(op, output_mask));
}

}  // namespace
}  // namespace cuda
}  // namespace equifast

TORCH_LIBRARY_IMPL(equifast_C, CUDA, m) {
  m.impl("group_conv", &equifast::cuda::group_conv);
  m.impl("group_conv_backward", &equifast::cuda::group_conv_backward);
}
