"""Command line: ``python -m equifast demo`` (placeholder showcase until the demo lands)."""
import argparse
import sys
import time


def main(argv=None):
    parser = argparse.ArgumentParser(prog="equifast")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="equivariance and speed of lift_conv vs the naive looped lifting")
    args = parser.parse_args(argv)
    import torch
    import equifast
    G = equifast.groups.get("C4")
    x, w = torch.randn(64, 1, 28, 28), torch.randn(32, 1, 3, 3)
    err = (equifast.lift_conv(G.act(x, 1), w, padding=1) - G.act_regular(equifast.lift_conv(x, w, padding=1), 1)).abs().max()
    print(f"equivariance error of lift_conv (C4, view frame): {err:.2e}")
    for backend in ("reference", "torch"):
        equifast.lift_conv(x, w, padding=1, backend=backend)
        t0 = time.perf_counter()
        for _ in range(10):
            equifast.lift_conv(x, w, padding=1, backend=backend)
        print(f"{backend:>10}: {(time.perf_counter() - t0) / 10 * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
