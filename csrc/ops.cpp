// Op schemas of equifast's compiled kernels (namespace equifast_C), declared once here. Each device
// registers its kernels in its own file (TORCH_LIBRARY_IMPL): csrc/cpu/equiconv_kernel.cpp and
// csrc/cuda/equiconv_kernel.cu; the entry points and checks they share are in csrc/equiconv.h.
// These are kernel-level ops called by the user-facing custom ops equifast::lift_conv / group_conv
// (equifast/ops.py) through the "cpu" and "cuda" backends (equifast/backends/_compiled.py).
//
// Tables (built in Python from a validated exact group, see csrc/equiconv.h):
//   xmap  pixel map of the view of copy g: empty (identity), [n, 2, 3] int64 affine map (rotations
//         and flips by 90°) or [n, H*W] int32/int64 pixel table
//   kperm [n, kh*kw] int32/int64 kernel-tap permutation of copy g (empty: identity)
//   slot  [n, n] int32/int64, group_conv: weight slot of input copy h for output copy g (g⁻¹·h)
// padding is explicit (top, bottom, left, right). Backward ops return (grad_input, grad_weight),
// each an empty tensor when output_mask says it is not needed; grad bias is left to the caller.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import equifast._C` loads this library, whose static initialisers register the ops below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "equifast compiled kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(equifast_C, m) {
  m.def("lift_conv(Tensor x, Tensor weight, Tensor? bias, Tensor xmap, Tensor kperm, int order, int[] stride, "
        "int[] padding, int[] dilation) -> Tensor");
  m.def("lift_conv_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor xmap, Tensor kperm, int order, "
        "int[] stride, int[] padding, int[] dilation, bool[] output_mask) -> (Tensor, Tensor)");
  m.def("group_conv(Tensor s, Tensor weight, Tensor? bias, Tensor slot, Tensor kperm, int[] stride, "
        "int[] padding, int[] dilation) -> Tensor");
  m.def("group_conv_backward(Tensor grad_out, Tensor s, Tensor weight, Tensor slot, Tensor kperm, int[] stride, "
        "int[] padding, int[] dilation, bool[] output_mask) -> (Tensor, Tensor)");
  // outputs[r] (=|+=) Σ_g t[r, g] · inputs[g] over 2-D planes (CPU only; csrc/cpu/group_mix.cpp)
  m.def("group_mix(Tensor t, Tensor[] inputs, Tensor(a!)[] outputs, bool accumulate) -> ()");
}
