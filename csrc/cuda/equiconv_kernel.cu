// The CUDA device of equifast_C::lift_conv, group_conv and their backward ops: struct Cuda (the device
// interface of csrc/equiconv.h) and its registration. The kernels, their design and the launch planning
// are in csrc/cuda/kernels.cuh; this file adds the CUDA runtime: device guard, stream, launch and
// launch check.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <torch/library.h>

#include <utility>

#include "cuda/kernels.cuh"
#include "equiconv.h"

namespace equifast {
namespace cuda {
namespace {

// launch(kernel, grid, dynamic shared bytes, args...) on the current stream, checked.
struct CudaLaunch {
  cudaStream_t stream;
  template <typename... KArgs, typename... Args>
  void operator()(void (*kernel)(KArgs...), dim3 grid, size_t smem, Args&&... args) const {
    kernel<<<grid, kThreads, smem, stream>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

struct Cuda {
  static constexpr const char* kName = "cuda";
  static void check_input(const std::string& op, const at::Tensor& x);
  static at::Tensor forward(const std::string& op, const Prepared& p, const c10::optional<at::Tensor>& bias);
  static std::tuple<at::Tensor, at::Tensor> backward(const std::string& op, const Prepared& p,
                                                     const at::Tensor& grad_out, const at::Tensor& weight,
                                                     std::array<bool, 2> output_mask);
};

void Cuda::check_input(const std::string& op, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), op, ": the CUDA kernel got a tensor on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16 ||
              x.scalar_type() == at::kDouble, op,
              ": the CUDA kernel supports float32, float16, bfloat16 and float64, got ", x.scalar_type());
}

at::Tensor Cuda::forward(const std::string& op, const Prepared& p, const c10::optional<at::Tensor>& bias) {
  c10::cuda::CUDAGuard guard(p.x.device());
  return forward_impl(op, p, bias, CudaLaunch{at::cuda::getCurrentCUDAStream()});
}

std::tuple<at::Tensor, at::Tensor> Cuda::backward(const std::string& op, const Prepared& p,
                                                  const at::Tensor& grad_out, const at::Tensor& weight,
                                                  std::array<bool, 2> output_mask) {
  c10::cuda::CUDAGuard guard(p.x.device());
  return backward_impl(op, p, grad_out, weight, output_mask, CudaLaunch{at::cuda::getCurrentCUDAStream()});
}

}  // namespace cuda
}  // namespace equifast

TORCH_LIBRARY_IMPL(equifast_C, CUDA, m) { equifast::register_kernels<equifast::cuda::Cuda>(m); }
