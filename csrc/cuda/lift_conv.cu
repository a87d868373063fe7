// CUDA lifting convolution (equifast_C::lift_conv, lift_conv_backward).
//
//   view frame:      out[b, g, o] = conv2d(act(x, g⁻¹), weight)[b, o]  — x read through the pixel table
//                    XP[g] = perm[g⁻¹] from the shared-memory copy of each input plane;
//   canonical frame: out[b, g, o] = conv2d(x, act(weight, g))[b, o]   — taps permuted by KP[g] = perm_k[g].
//   grad x[b, c, p]        = Σ_{g, o, u, v} gy[b, g, o, i, j] · w[o, c, KP[g][u, v]]  over the (i, j) whose
//                            tap (u, v) reads view pixel XP[g]⁻¹[p]   (a gather: no atomics)
//   grad w[o, c, KP[g][t]] = Σ_{b, g, i, j} gy[b, g, o, i, j] · x[b, c, XP[g][pos(i, j, t)]]
// One launch writes every copy to its slot; kernels in cuda/equiconv_cuda.cuh.
#include <torch/library.h>

#include "cuda/equiconv_cuda.cuh"

namespace equifast {
namespace cuda {
namespace {

at::Tensor lift_conv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     const at::Tensor& xperm, const at::Tensor& kperm, int64_t order, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "equifast_C::lift_conv (cuda)";
  check_cuda(op, x);
  TORCH_CHECK(x.dim() == 4, op, ": expected x of shape [B, C_in, H, W], got ", x.sizes());
  Prepared p = prepare(op, x, weight, zeros_slot(order), xperm, kperm, order, stride, padding, dilation);
  return run_forward(op, p, bias);
}

std::tuple<at::Tensor, at::Tensor> lift_conv_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                      const at::Tensor& weight, const at::Tensor& xperm,
                                                      const at::Tensor& kperm, int64_t order, at::IntArrayRef stride,
                                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                                      const c10::List<bool>& output_mask) {
  const char* op = "equifast_C::lift_conv_backward (cuda)";
  check_cuda(op, x);
  TORCH_CHECK(x.dim() == 4, op, ": expected x of shape [B, C_in, H, W], got ", x.sizes());
  Prepared p = prepare(op, x, weight, zeros_slot(order), xperm, kperm, order, stride, padding, dilation);
  return run_backward(op, p, grad_out, weight, mask_pair(op, output_mask));
}

}  // namespace
}  // namespace cuda
}  // namespace equifast

TORCH_LIBRARY_IMPL(equifast_C, CUDA, m) {
  m.impl("lift_conv", &equifast::cuda::lift_conv);
  m.impl("lift_conv_backward", &equifast::cuda::lift_conv_backward);
}
