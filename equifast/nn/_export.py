"""``export(model)``: a whole network as plain PyTorch (no equifast needed to run it).

Every equifast layer becomes plain torch modules and ops:

* ``LiftConv2d``: one ``nn.Conv2d`` with the expanded filter bank (canonical frame), or the views
  ``rot90`` / ``flip`` of the input stacked on the batch and one ``nn.Conv2d`` (view frame, exact
  groups, any stride); the output is read back as [B, n, C_out, H', W'];
* ``GroupConv2d``: ``flatten(1, 2)`` -> one ``nn.Conv2d`` with the block-permuted bank -> ``unflatten``;
* ``GroupBatchNorm2d``: ``nn.BatchNorm2d(C)`` on [B*n, C, H, W] (the same statistics);
* ``GroupPool``: ``amax`` / ``mean`` over dim 1; ``PerCopy(m)``: m on [B*n, ...] (2-D pooling on [B, n*C, H, W]);
  ``OrientationHead``: ``nn.Linear`` per copy; ``Equivarify``: the views by plain ops, then F.

The model's own ``forward`` (ReLUs, residual sums, reshapes, plain torch modules) is kept, by
tracing it with ``torch.fx``. The result is a ``torch.fx.GraphModule`` whose code calls torch only:
it computes the same function (to float rounding), works with ``torch.jit.script`` and
``torch.export.export``, and a ``torch.save``-d / scripted / exported copy loads without equifast.
It does not depend on the backend the layers use (none is called).
"""
from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["export", "check_stack_flow"]


def _exportable(m: nn.Module) -> bool:
    return callable(getattr(m, "_export_module", None))


class _EquifastLeaves(fx.Tracer):
    """Keeps equifast layers (anything with ``_export_module``) as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _exportable(m) or super().is_leaf_module(m, qualname)


def _trace_model(model: nn.Module, class_name: str, fold_batchnorm: bool = True) -> fx.GraphModule:
    tracer = _EquifastLeaves()
    try:
        graph = tracer.trace(model)
    except Exception as exc:   # data-dependent control flow and other untraceable Python
        raise ValueError(f"export: could not trace {type(model).__name__}.forward with torch.fx ({exc}); "
                         f"export its equifast layers one by one with layer.export() and call them from "
                         f"your own code") from exc
    check_stack_flow(model, graph)
    folds = _fold_batchnorms(model, graph) if fold_batchnorm else {}
    parts = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target not in parts:
            sub = model.get_submodule(node.target)
            if node.target in folds:
                plain = sub._export_module(folds[node.target])
                plain.train(sub.training)
                parts[node.target] = _trace_model(plain, type(sub).__name__)
            else:
                parts[node.target] = export(sub, fold_batchnorm) if _exportable(sub) else copy.deepcopy(sub)
        elif node.op == "get_attr" and node.target not in parts:
            value = _get_attr(model, node.target)
            parts[node.target] = value.detach().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
    staged = fx.GraphModule(parts, graph, class_name=class_name)
    flat = fx.symbolic_trace(staged)           # inlines the exported layers: one graph of torch ops
    for node in flat.graph.nodes:              # forward's annotations (strings under postponed
        node.type = None                       # evaluation) would not script
    flat.recompile()
    flat.training = model.training
    return flat


def _get_attr(model: nn.Module, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _fold_batchnorms(model: nn.Module, graph: fx.Graph):
    """Fold every eval-mode ``GroupBatchNorm2d`` whose input is a conv layer used by it alone into that
    conv: returns {conv target: (scale, shift)} and removes the batch-norm nodes from ``graph``."""
    from .conv import GroupConv2d, LiftConv2d
    from .norm import GroupBatchNorm2d
    folds = {}
    for node in list(graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn = model.get_submodule(node.target)
        src = node.args[0]
        if not (type(bn) is GroupBatchNorm2d and not bn.training and bn.running_var is not None
                and isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and src.target not in folds):
            continue
        conv = model.get_submodule(src.target)
        if type(conv) not in (LiftConv2d, GroupConv2d) or conv.out_channels != bn.num_features:
            continue
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.affine:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.affine:
                shift = shift + bn.bias
        folds[src.target] = (scale.detach().clone(), shift.detach().clone())
        node.replace_all_uses_with(src)
        graph.erase_node(node)
    return folds


def export(model: nn.Module, fold_batchnorm: bool = True) -> fx.GraphModule:
    """A plain-PyTorch copy of ``model`` (an equifast layer or any network using them).

    Returns a ``torch.fx.GraphModule`` of torch ops and torch.nn modules (``nn.Conv2d``,
    ``nn.BatchNorm2d``, pooling, ``nn.Linear``...) that computes ``model``'s function: the same
    outputs to float rounding, in the same train / eval mode (batch-norm layers keep their running
    statistics and mode). Parameters are copied (the export does not change when ``model`` trains
    further). The result is scriptable (``torch.jit.script``), exportable (``torch.export.export``),
    and runs without importing equifast (also after ``torch.save`` / ``torch.load``).

    ``model.forward`` is traced with ``torch.fx``: it may use any torch ops, modules and Python
    control flow that does not depend on tensor values. A plain image module applied to a 5-D stack
    is reported here (see ``check_stack_flow``). A view-frame ``LiftConv2d`` with an interpolated
    group (C8, ...) has no plain form and raises.

    ``fold_batchnorm=True``: an eval-mode ``GroupBatchNorm2d`` that directly follows a conv layer (its
    only user) is folded into that conv's filter bank and bias (one pass less at inference). The folded
    export is then an inference module: its ``train()`` does not bring batch statistics back. Models
    exported in training mode keep every batch norm.

    Example::

        >>> import torch, equifast.nn as enn
        >>> net = torch.nn.Sequential(enn.LiftConv2d(1, 4, 3, padding=1), torch.nn.ReLU(), enn.GroupPool())
        >>> plain = enn.export(net.eval())
        >>> x = torch.randn(2, 1, 8, 8)
        >>> bool(torch.allclose(plain(x), net(x), atol=1e-6))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export: model must be a torch.nn.Module, got {type(model).__name__}")
    if _exportable(model):
        plain = model._export_module()
        plain.train(model.training)
        return _trace_model(plain, type(model).__name__, fold_batchnorm)
    return _trace_model(model, type(model).__name__, fold_batchnorm)


# ---------------------------------------------------------------------------
# Stacks reaching image modules
# ---------------------------------------------------------------------------
_STACK_TYPES = ("LiftConv2d", "GroupConv2d", "GroupBatchNorm2d", "PerCopy", "Equivarify")
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
                        nn.Identity, nn.Dropout, nn.Mish, nn.Softplus, nn.CELU, nn.SELU, nn.Hardswish)
_ELEMENTWISE_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.sigmoid, torch.tanh,
                          F.dropout, torch.add, torch.mul, torch.sub, operator.add, operator.mul, operator.sub,
                          operator.iadd, operator.truediv, torch.clamp)
_ELEMENTWISE_METHODS = ("relu", "relu_", "add", "add_", "mul", "mul_", "sigmoid", "tanh", "clamp", "contiguous",
                        "clone", "to", "float", "double", "half")
_NORM_2D = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm2d)
_IMAGE_2D = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
             nn.Dropout2d, nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ConstantPad2d, nn.Upsample,
             nn.PixelShuffle, nn.ConvTranspose2d)


def check_stack_flow(model: nn.Module, graph: fx.Graph = None) -> None:
    """Raise a ValueError naming the fix when a 5-D stack made by an equifast layer reaches a plain
    image module in ``model.forward`` (as far as ``torch.fx`` can follow it, through elementwise ops):
    ``nn.BatchNorm2d`` -> ``equifast.nn.GroupBatchNorm2d``; pooling, ``nn.Conv2d``, dropout and
    padding modules -> wrap them in ``equifast.nn.PerCopy``. ``export`` runs this check."""
    if graph is None:
        graph = _EquifastLeaves().trace(model)
    stacks = {}
    for node in graph.nodes:
        args = [a for a in node.all_input_nodes]
        from_stack = [a for a in args if a in stacks]
        if node.op == "call_module":
            sub = model.get_submodule(node.target)
            if type(sub).__name__ in _STACK_TYPES and _exportable(sub):
                stacks[node] = node.target
                continue
            if from_stack and isinstance(sub, _NORM_2D):
                raise ValueError(f"{type(sub).__name__} at '{node.target}' receives the 5-D stack [B, n, C, H, W] "
                                 f"made by '{stacks[from_stack[0]]}'; use equifast.nn.GroupBatchNorm2d({_features(sub)}) "
                                 f"(statistics shared by the copies, equivariant)")
            if from_stack and isinstance(sub, _IMAGE_2D):
                raise ValueError(f"{type(sub).__name__} at '{node.target}' receives the 5-D stack [B, n, C, H, W] "
                                 f"made by '{stacks[from_stack[0]]}'; wrap it: equifast.nn.PerCopy({sub!r}) applies "
                                 f"it to every copy" + (" (or use equifast.nn.GroupConv2d to convolve the stack)"
                                                        if isinstance(sub, nn.Conv2d) else ""))
            if from_stack and isinstance(sub, _ELEMENTWISE_MODULES):
                stacks[node] = stacks[from_stack[0]]
        elif node.op == "call_function" and from_stack and node.target in _ELEMENTWISE_FUNCTIONS:
            stacks[node] = stacks[from_stack[0]]
        elif node.op == "call_method" and from_stack and node.target in _ELEMENTWISE_METHODS \
                and node.args and node.args[0] in stacks:
            stacks[node] = stacks[node.args[0]]


def _features(m: nn.Module) -> str:
    return str(getattr(m, "num_features", "C"))
