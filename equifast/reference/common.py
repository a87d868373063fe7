"""conv2d with explicit (top, bottom, left, right) padding, shared by the plain-PyTorch backends."""
import torch.nn.functional as F


def conv2d(x, weight, bias, plan):
    """``conv2d`` of ``x`` zero-padded by ``plan.padding``, with ``plan``'s stride and dilation."""
    pt, pb, pl, pr = plan.padding
    if pt == pb and pl == pr:
        return F.conv2d(x, weight, bias, plan.stride, (pt, pl), plan.dilation)
    return F.conv2d(F.pad(x, (pl, pr, pt, pb)), weight, bias, plan.stride, 0, plan.dilation)
