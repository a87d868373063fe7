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
