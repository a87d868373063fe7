"""conv2d with explicit (top, bottom, left, right) padding, shared by the plain-PyTorch backends."""
import torch
import torch.nn.functional as F


def conv2d(x, weight, bias, plan):
    """``conv2d`` of ``x`` zero-padded by ``plan.padding``, with ``plan``'s stride and dilation."""
    if x.dtype == torch.float16 and x.device.type == "cpu":
        # oneDNN's CPU float16 convolution (torch 2.13) reads out of bounds for some strided, dilated
        # shapes -- garbage or a segfault, e.g. stride (1, 2) with dilation (1, 2): compute in
        # float32 (forward and backward) and round once, as the fp16 kernel means to
        up = lambda t: None if t is None else t.float()  # noqa: E731
        return conv2d(up(x), up(weight), up(bias), plan).to(x.dtype)
    pt, pb, pl, pr = plan.padding
    if pt == pb and pl == pr:
        return F.conv2d(x, weight, bias, plan.stride, (pt, pl), plan.dilation)
    return F.conv2d(F.pad(x, (pl, pr, pt, pb)), weight, bias, plan.stride, 0, plan.dilation)


def conv2d_backward(grad_y, x, weight, plan, need_x, need_w):
    """Gradients of ``conv2d(x, weight, None, plan)`` w.r.t. x and weight from ``grad_y``, without
    recomputing the convolution (one ``aten.convolution_backward``); None where not needed."""
    if x.dtype == torch.float16 and x.device.type == "cpu":  # see conv2d: oneDNN fp16 on CPU
        gx, gw = conv2d_backward(grad_y.float(), x.float(), weight.float(), plan, need_x, need_w)
        return (None if gx is None else gx.to(x.dtype)), (None if gw is None else gw.to(weight.dtype))
    pt, pb, pl, pr = plan.padding
    symmetric = pt == pb and pl == pr
    inp = x if symmetric else F.pad(x, (pl, pr, pt, pb))
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad_y, inp, weight, None, list(plan.stride), [pt, pl] if symmetric else [0, 0], list(plan.dilation),
        False, [0, 0], 1, [bool(need_x), bool(need_w), False])
    if gx is not None and not symmetric:
        gx = gx[..., pt:pt + x.shape[-2], pl:pl + x.shape[-1]]
    return gx, gw
