"""Memory layouts of 4-D images and 5-D group stacks [B, n, C, H, W].

A stack is *channels_last* when its memory order is (B, H, W, n, C): then
``s.reshape(B, n*C, H, W)`` is a zero-copy channels_last image whose channels are (group, channel)
pairs, which is what a convolution over all copies reads, and each copy s[:, g] is a strided
channels_last image. Every op returns its output in one of two layouts, decided by the input
alone (so fake tensors and real kernels agree): channels_last when the input is channels_last
(and not also plain contiguous), contiguous otherwise.
"""
import torch


def is_channels_last(t: torch.Tensor) -> bool:
    """True for a channels_last 4-D image or a channels_last 5-D stack that is not plain contiguous."""
    if t.is_contiguous():
        return False
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        return t.permute(0, 3, 4, 1, 2).is_contiguous()
    return False


def empty_stack(shape, channels_last: bool, *, dtype, device) -> torch.Tensor:
    """An uninitialised [B, n, C, H, W] stack in the given layout."""
    B, n, C, H, W = shape
    if channels_last:
        return torch.empty(B, H, W, n, C, dtype=dtype, device=device).permute(0, 3, 4, 1, 2)
    return torch.empty(B, n, C, H, W, dtype=dtype, device=device)


def empty_grads(inp: torch.Tensor, weight: torch.Tensor, output_mask):
    """Uninitialised (grad_input, grad_weight) of an op's backward: grad_input in the layout of
    ``inp`` (4-D image or 5-D stack), grad_weight contiguous; an empty tensor where
    ``output_mask`` says the gradient is not needed (outputs of an op must not alias)."""
    gx, gw = inp.new_empty(0), inp.new_empty(0)
    if output_mask[0]:
        gx = empty_stack(inp.shape, is_channels_last(inp), dtype=inp.dtype, device=inp.device) if inp.dim() == 5 \
            else torch.empty_like(inp, memory_format=torch.channels_last if is_channels_last(inp)
                                  else torch.contiguous_format)
    if output_mask[1]:
        gw = torch.empty_like(weight, memory_format=torch.contiguous_format)
    return gx, gw


def stack_like(out: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``out`` in the layout an op promises (copies only when needed)."""
    if channels_last:
        if out.permute(0, 3, 4, 1, 2).is_contiguous():
            return out
        return out.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)  # (0,3,4,1,2) is an involution
    return out.contiguous()


def same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` (a gradient) in the layout of the input ``like`` (4-D image or 5-D stack)."""
    if t.dim() == 5:
        return stack_like(t, is_channels_last(like))
    fmt = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    return t.contiguous(memory_format=fmt)


def flatten_stack(s: torch.Tensor) -> torch.Tensor:
    """[B, n, C, H, W] -> [B, n*C, H, W] with (group, channel) channels; zero-copy for both layouts."""
    B, n, C, H, W = s.shape
    if is_channels_last(s):
        return s.permute(0, 3, 4, 1, 2).reshape(B, H, W, n * C).permute(0, 3, 1, 2)
    return s.reshape(B, n * C, H, W)


def unflatten_stack(y: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n*C, H, W] -> [B, n, C, H, W] (a view for contiguous and channels_last ``y``)."""
    B, nC, H, W = y.shape
    return y.reshape(B, n, nC // n, H, W) if y.is_contiguous() else \
        y.permute(0, 2, 3, 1).reshape(B, H, W, n, nC // n).permute(0, 3, 4, 1, 2)
