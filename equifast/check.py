"""``python -m equifast check``: every available backend against the reference backend.

``CHECK_CASES`` covers lift and group convolutions over C2, C4, D4 and C8, both frames, strides,
padding, dilation, even kernels and channels_last inputs. For each backend and case,
``compare_with_reference`` runs the forward and the backward (gradients of input, weight and bias)
with both backends and returns the errors relative to the reference's largest magnitude; ``main``
prints them as a table and returns 1 when one exceeds ``--rtol``.
"""
from __future__ import annotations

import argparse

import torch

import equifast
from equifast import backends as B
from equifast._args import make_plan
from equifast._runtime import describe_machine, pick_device

CHECK_CASES = (
    # op, group, frame, H, k, stride, padding, dilation, channels_last
    ("lift_conv", "C4", "view", 9, 3, 1, 1, 1, False),
    ("lift_conv", "C4", "canonical", 8, 3, 2, 1, 1, False),
    ("lift_conv", "D4", "view", 8, 4, 2, 1, 1, True),
    ("lift_conv", "C8", "view", 9, 3, 1, 1, 1, False),
    ("group_conv", "C4", "view", 8, 3, 1, 1, 1, False),
    ("group_conv", "C4", "canonical", 9, 3, 2, 0, 1, True),
    ("group_conv", "D4", "canonical", 7, 3, 1, 2, 2, False),
    ("group_conv", "C2", "view", 6, 2, 1, 0, 1, False),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--backends", default=None, help="comma-separated backends (default: all available)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="tolerance relative to the output's max magnitude")


def make_inputs(op: str, group, H: int, k: int, channels_last: bool, seed: int, device):
    """(x, weight, bias) of a small problem: batch 2, 3 input and 4 output channels."""
    n = group.order
    gen = torch.Generator().manual_seed(seed)
    if op == "lift_conv":
        x = torch.randn(2, 3, H, H, generator=gen)
        w = torch.randn(4, 3, k, k, generator=gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = torch.randn(2, n, 3, H, H, generator=gen)
        w = torch.randn(4, n, 3, k, k, generator=gen)
        if channels_last:
            x = x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    b = torch.randn(4, generator=gen)
    return x.to(device), w.to(device), b.to(device)


def compare_with_reference(backend: str, op: str, x, w, b, **kw):
    """Errors of ``backend`` vs the reference, each relative to max|reference|: [out, grad x, grad w, grad b]."""
    results = {}
    for name in ("reference", backend):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
        out = getattr(equifast, op)(*leaves, backend=name, **kw)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out)
        out.backward(grad)
        results[name] = [out.detach()] + [t.grad for t in leaves]
    errs = []
    for r, o in zip(results["reference"], results[backend]):
        scale = max(r.abs().max().item(), 1e-12)
        errs.append((r.double() - o.double()).abs().max().item() / scale)
    return errs


def main(args) -> int:
    device = pick_device(args.device)
    names = args.backends.split(",") if args.backends else equifast.available_backends(device)
    others = [b for b in names if b != "reference"]
    print(f"equifast check on {device} ({describe_machine(device)})")
    print(f"backends: {', '.join(names)}; reference is the oracle; float32, errors relative to max|reference|")
    print(f"{'backend':>9} {'op':>10} {'group':>5} {'frame':>9} {'shape':>30} {'forward':>9} {'grad x':>9} "
          f"{'grad w':>9} {'grad b':>9}  status")
    failures = 0
    rows = 0
    for backend in others:
        ok, reason = B.availability(backend, device)
        if not ok:
            print(f"{backend:>9}  unavailable on {device}: {reason}")
            continue
        for op, group, frame, H, k, stride, padding, dilation, cl in CHECK_CASES:
            G = equifast.groups.get(group)
            x, w, b = make_inputs(op, G, H, k, cl, seed=rows, device=device)
            shape = f"{list(x.shape)} k{k} s{stride} p{padding} d{dilation}" + (" cl" if cl else "")
            plan = make_plan(G, stride, padding, dilation, frame, k, k, op)
            sup, why = B.module(backend).supports(plan, x, w)
            if not sup:
                print(f"{backend:>9} {op:>10} {group:>5} {frame:>9} {shape:>30}  skipped: {why}")
                continue
            rows += 1
            errs = compare_with_reference(backend, op, x, w, b, group=group, stride=stride, padding=padding,
                                          dilation=dilation, frame=frame)
            bad = any(e > args.rtol or e != e for e in errs)
            failures += bad
            print(f"{backend:>9} {op:>10} {group:>5} {frame:>9} {shape:>30} "
                  + " ".join(f"{e:>9.1e}" for e in errs) + ("  MISMATCH" if bad else "  ok"))
    if not others:
        print("only the reference backend is available: nothing to compare")
    print(f"\n{rows} comparisons, {failures} mismatches")
    return 1 if failures else 0


def run(args) -> int:
    return main(args)
