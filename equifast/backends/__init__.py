"""The backends of ``lift_conv`` and ``group_conv``: one module (or package) per backend, named
after it, and the registry that picks one per call (``_registry``).

======================  =========================================================================
``reference``           the naive looped lifting (rotate, conv2d, stack): the oracle of every test
``torch``               one conv2d over an expanded filter bank (cuDNN / oneDNN): the portable peer
``triton``              fused Triton kernels (CUDA; CPU under ``TRITON_INTERPRET=1``)
``cpu``                 fused C++ kernels (csrc/cpu/) through ``equifast._C``
``cuda``                fused CUDA C++ kernels (csrc/cuda/) through ``equifast._C``
``fourier``             group_conv in the group-Fourier basis of the group axis (plain PyTorch);
                        refuses lift_conv
======================  =========================================================================

A backend module defines

* ``NAME`` (= its module name) and ``INDEX_BITS``: 64 when every offset is 64-bit, 32 when offsets
  inside one sample are 32-bit (the registry then refuses calls past 2^31 with
  ``equifast._limits.int32_reason`` before anything runs);
* ``availability(device) -> (ok, reason)`` and ``supports(plan, x, weight) -> (ok, reason)``;
* ``lift_conv_forward(x, weight, bias, plan)`` and ``group_conv_forward(s, weight, bias, plan)``;

and optionally

* ``lift_conv_backward(grad_out, x, weight, plan, output_mask) -> (grad_x, grad_weight, grad_bias)``
  and ``group_conv_backward(...)``: ``output_mask`` = which of (input, weight, bias) gradients are
  needed; an entry may be None when not needed, and grad_bias None lets the op reduce grad_out.
  A backend without them is differentiated by ``torch.func.vjp`` through its forward;
* ``preferred(plan, x, weight) -> bool``: whether ``auto`` should pick it for this shape.

Inputs and weights arrive with any strides (backends handle or copy them); the bias arrives
contiguous; grad_out arrives contiguous or as a channels_last stack. ``plan`` is an
``equifast._args.ConvPlan`` (group, stride, explicit padding, dilation, frame).
"""
from ._registry import (AUTO_ORDER, ENV_VAR, MODULES, NAMES, availability, available_backends, check_name,
                        explain, load_error, module, resolve, supports)

__all__ = ["AUTO_ORDER", "ENV_VAR", "MODULES", "NAMES", "availability", "available_backends", "check_name",
           "explain", "load_error", "module", "resolve", "supports"]
