// Op schemas of equifast's compiled kernels (namespace equifast_C), declared once here; the CPU
// implementations are registered in csrc/cpu/, the CUDA ones in csrc/cuda/ (TORCH_LIBRARY_IMPL).
// These are kernel-level ops called by the user-facing custom ops equifast::lift_conv / group_conv
// (equifast/ops.py) through the "cpu" and "cuda" backends (equifast/extension/).
//
// Tables (int64, built in Python from a validated exact group, see csrc/equiconv.h):
//   xperm [n, H*W]  pixel permutation of the view of copy g (empty: identity)
//   kperm [n, kh*kw] kernel-tap permutation of copy g (empty: identity)
//   slot  [n, n]    group_conv: weight slot of input copy h for output copy g (g⁻¹·h)
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
  m.def("lift_conv(Tensor x, Tensor weight, Tensor? bias, Tensor xperm, Tensor kperm, int order, int[] stride, "
        "int[] padding, int[] dilation) -> Tensor");
  m.def("lift_conv_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor xperm, Tensor kperm, int order, "
        "int[] stride, int[] padding, int[] dilation, bool[] output_mask) -> (Tensor, Tensor)");
  m.def("group_conv(Tensor s, Tensor weight, Tensor? bias, Tensor slot, Tensor kperm, int[] stride, "
        "int[] padding, int[] dilation) -> Tensor");
  m.def("group_conv_backward(Tensor grad_out, Tensor s, Tensor weight, Tensor slot, Tensor kperm, int[] stride, "
        "int[] padding, int[] dilation, bool[] output_mask) -> (Tensor, Tensor)");
}
