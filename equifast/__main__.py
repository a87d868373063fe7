"""Command line: ``python -m equifast {demo,check,bench}`` (also the ``equifast`` script).

* ``demo``  — the paper's experiment (Bao et al., Section 5): train ``Figure3Net`` on upright digits,
  test on digits rotated by random multiples of 90°, report (number, angle) accuracy, invariant
  number accuracy, a plain CNN for contrast, the measured equivariance error, the strided/even-size
  exactness table and the time per epoch of every backend; writes metrics.json, a plot and a
  checkpoint under ``--out`` (default runs/demo).
* ``check`` — every available backend against the reference (forward and backward), as a table;
  exit status 1 on a mismatch.
* ``bench`` — the benchmark suite (``equifast.benchmark``); arguments are passed through.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

DESCRIPTION = "equifast: fast equivariant CNNs (equivarification, lift_conv, group_conv)."


# ---------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equifast", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="{demo,check,bench}")
    sub.required = True

    d = sub.add_parser("demo", help="the paper's experiment: Figure 3 network on rotated digits",
                       description="Train the paper's Figure 3 network on upright digits and test it on digits "
                                   "rotated by random multiples of 90 degrees (Bao et al., Section 5).")
    d.add_argument("--data", choices=("digits", "mnist"), default="digits",
                   help="digits: scikit-learn's 8x8 digits, no download (default); mnist: IDX files from --mnist-dir")
    d.add_argument("--mnist-dir", default=None, help="directory with the four MNIST IDX files (raw or .gz)")
    d.add_argument("--size", type=int, default=8,
                   help="digits only: upsample the 8x8 digits to this size (multiple of 8; default 8: no upsampling)")
    d.add_argument("--backend", default="auto", help="backend for training (default auto: the fastest available)")
    d.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when present)")
    d.add_argument("--epochs", type=int, default=None, help="training epochs (default 15 for digits, 2 for mnist)")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--lr", type=float, default=3e-3)
    d.add_argument("--width", type=int, default=16, help="Figure3Net / plain CNN width (default 16)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--limit", type=int, default=None,
                   help="use only the first N training and N test images (quick runs and tests)")
    d.add_argument("--timing-batches", type=int, default=None,
                   help="batches per backend for the epoch-time comparison (default 10, extrapolated to an epoch)")
    d.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    d.add_argument("--no-progress", action="store_true", help="disable the progress bars")
    d.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, or 1 when the machine is already busy: "
                        "OpenMP threads competing for busy cores slow small convolutions down by 10x)")

    c = sub.add_parser("check", help="verify every available backend against the reference",
                       description="Compare every available backend with the reference backend on a few "
                                   "shapes, groups and frames, forward and backward; print a table and exit "
                                   "nonzero on a mismatch.")
    c.add_argument("--device", default="auto", help="cpu, cuda or auto")
    c.add_argument("--backends", default=None, help="comma-separated backends (default: all available)")
    c.add_argument("--rtol", type=float, default=1e-4, help="tolerance relative to the output's max magnitude")

    sub.add_parser("bench", help="benchmark suite (equifast.benchmark); `equifast bench --help` for its options",
                   add_help=False)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return demo(args)
    if args.command == "check":
        return check(args)
    return 2


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------
def _bench(rest) -> int:
    try:
        from equifast.benchmark import main as bench_main
    except ModuleNotFoundError as exc:
        if exc.name in ("equifast.benchmark",):
            print("equifast bench: the benchmark suite (equifast/benchmark.py) is not installed in this "
                  "checkout; nothing to run.", file=sys.stderr)
            return 2
        raise
    except ImportError as exc:
        print(f"equifast bench: could not import equifast.benchmark.main: {exc}", file=sys.stderr)
        return 2
    rc = bench_main(rest)
    return 0 if rc is None else int(rc)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _set_threads(threads):
    import torch
    if threads:
        torch.set_num_threads(threads)
        return
    try:
        busy = os.getloadavg()[0] + 1 > (os.cpu_count() or 1)
    except OSError:
        busy = False
    if busy:
        torch.set_num_threads(1)


def _device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _machine(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def _progress(iterable, disable, **kw):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return iterable
    return tqdm(iterable, disable=disable, dynamic_ncols=True, leave=False, **kw)


def _batches(n, batch_size, generator):
    import torch
    perm = torch.randperm(n, generator=generator)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def _train_epoch(model, x, y, opt, batch_size, generator, device, desc, disable, max_batches=None, sched=None):
    import torch.nn.functional as F
    model.train()
    batches = _batches(len(y), batch_size, generator)[:max_batches]
    total, correct, loss_sum = 0, 0, 0.0
    bar = _progress(batches, disable, desc=desc, unit="batch")
    for idx in bar:
        xb, yb = x[idx].to(device), y[idx].to(device)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        loss_sum += loss.item() * len(idx)
        total += len(idx)
        correct += (out.argmax(1) == yb).sum().item()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    return loss_sum / max(total, 1), correct / max(total, 1)


def _predict(model, x, device, batch_size=512):
    import torch
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(model(x[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(outs)


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------
def demo(args) -> int:
    t_start = time.perf_counter()
    import torch

    import equifast
    from equifast import data as edata
    from equifast.models import Figure3Net, PlainCNN
    from equifast.nn import (decode_scores, encode_labels, equivariance_error, exactness_comparison,
                             format_exactness_table, invariant_scores)

    _set_threads(args.threads)
    device = _device(args.device)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    G = equifast.groups.get("C4")
    n, K = G.order, 10
    quiet = args.no_progress

    # ------------------------------------------------------------------ data
    if args.data == "mnist":
        if not args.mnist_dir:
            print("equifast demo: --data mnist needs --mnist-dir PATH (a directory with the MNIST IDX files)",
                  file=sys.stderr)
            return 2
        split = edata.load_mnist(args.mnist_dir)
        epochs = 2 if args.epochs is None else args.epochs
    else:
        split = edata.load_digits(size=args.size, seed=args.seed)
        epochs = 15 if args.epochs is None else args.epochs
    if args.limit:
        split = split.limit(args.limit, args.limit)
    test = edata.RotatedDataset(split.x_test, split.y_test, G, seed=args.seed + 1)
    H = split.x_train.shape[-1]
    backends_here = equifast.available_backends(device)
    print(f"equifast demo — the paper's experiment (Bao et al., Section 5, Figure 3 network)")
    print(f"  machine: {_machine(device)}; device {device}")
    print(f"  data: {split.name}: {len(split.y_train)} upright training images, {len(test)} test images "
          f"rotated by random multiples of 90 deg; {H}x{H}")
    print(f"  backends available: {', '.join(backends_here)}; training with backend={args.backend!r}")

    # ------------------------------------------------------------------ train
    def make_fig3(backend):
        torch.manual_seed(args.seed)
        return Figure3Net(group=G, backend=backend, width=args.width).to(device)

    def fit(model, targets, name):
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(
            1, epochs * len(_batches(len(targets), args.batch_size, torch.Generator()))))
        gen = torch.Generator().manual_seed(args.seed)
        times = []
        bar = _progress(range(epochs), quiet, desc=f"{name}", unit="epoch")
        for ep in bar:
            t0 = time.perf_counter()
            loss, acc = _train_epoch(model, split.x_train, targets, opt, args.batch_size, gen, device,
                                     f"  epoch {ep + 1}/{epochs}", quiet, sched=sched)
            times.append(time.perf_counter() - t0)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss:.3f}", train_acc=f"{acc:.3f}", s_per_epoch=f"{times[-1]:.2f}")
        return times, loss, acc

    # ------------------------------------------------------------------ speed per backend (picks the training backend)
    targets = encode_labels(split.y_train, torch.zeros_like(split.y_train), K)
    timing = _time_backends(args, split, targets, device, make_fig3, backends_here)
    timed = {b: t for b, t in timing.items() if t is not None and b != "reference"}
    train_backend = args.backend
    if args.backend == "auto" and timed:
        train_backend = min(timed, key=timed.get)
        print(f"  fastest measured backend: {train_backend} (used for training)")

    model = make_fig3(train_backend)
    # the paper trains on upright images: group element 0, target index = class (slot 0 of the 40 scores)
    fig3_times, fig3_loss, fig3_train_acc = fit(model, targets, "Figure3Net (equivariant)")
    print(f"  Figure3Net: {epochs} epochs, {sum(fig3_times) / len(fig3_times):.2f} s/epoch, "
          f"final train loss {fig3_loss:.3f}")

    torch.manual_seed(args.seed)
    plain = PlainCNN(width=args.width).to(device)
    plain_times, plain_loss, _ = fit(plain, split.y_train, "plain CNN")
    print(f"  plain CNN:  {epochs} epochs, {sum(plain_times) / len(plain_times):.2f} s/epoch, "
          f"final train loss {plain_loss:.3f}")

    # ------------------------------------------------------------------ evaluate
    scores = _predict(model, test.x, device)                               # [N, 40]
    pred_cls, pred_k = decode_scores(scores, K)
    inv_cls = invariant_scores(scores, K).argmax(1)
    plain_cls = _predict(plain, test.x, device).argmax(1)
    y, k = test.y, test.k
    both = (pred_cls == y) & (pred_k == k)
    metrics = {
        "number_angle_accuracy": both.float().mean().item(),
        "invariant_accuracy": (inv_cls == y).float().mean().item(),
        "plain_cnn_accuracy": (plain_cls == y).float().mean().item(),
        "angle_accuracy": (pred_k == k).float().mean().item(),
        "number_accuracy_argmax": (pred_cls == y).float().mean().item(),
    }
    upright_scores = _predict(model, split.x_test, device)
    metrics["upright_number_angle_accuracy"] = ((upright_scores.argmax(1) == split.y_test)).float().mean().item()
    metrics["plain_cnn_upright_accuracy"] = (_predict(plain, split.x_test, device).argmax(1)
                                             == split.y_test).float().mean().item()
    per_angle = {}
    for g in range(n):
        m = k == g
        per_angle[str(90 * g)] = {
            "count": int(m.sum()),
            "number_angle": both[m].float().mean().item() if m.any() else float("nan"),
            "invariant": (inv_cls[m] == y[m]).float().mean().item() if m.any() else float("nan"),
            "plain_cnn": (plain_cls[m] == y[m]).float().mean().item() if m.any() else float("nan")}
    metrics["per_angle"] = per_angle

    # ------------------------------------------------------------------ equivariance
    xb = test.x[:256].to(device)
    model.eval()
    metrics["equivariance_error"] = equivariance_error(model, xb, G, "image", "scores")
    metrics["equivariance_error_plain_cnn"] = equivariance_error(plain.eval(), xb, G, "image", "invariant")
    try:
        exact_rows = exactness_comparison(sizes=(32, 33), group=G, backend=args.backend)
    except (RuntimeError, TypeError) as exc:   # e.g. a backend without float64: measure with the torch backend
        print(f"  (exactness table measured with the torch backend: {args.backend} cannot run it: {exc})")
        exact_rows = exactness_comparison(sizes=(32, 33), group=G, backend="torch")
    metrics["exactness"] = exact_rows

    # the paper's Figure 4: one test digit and its rotations, predictions shift by 10 slots
    idx = int((split.y_test == 7).nonzero()[0]) if bool((split.y_test == 7).any()) else 0
    x7 = split.x_test[idx:idx + 1]
    rots = torch.cat([G.act(x7, g) for g in range(n)])
    with torch.no_grad():
        probs = torch.softmax(model(rots.to(device)).float().cpu(), 1)
    fig4 = []
    for g in range(n):
        c, e = decode_scores(probs[g:g + 1], K)
        fig4.append({"rotation": 90 * g, "predicted_number": int(c), "predicted_angle": 90 * int(e),
                     "argmax_slot": int(probs[g].argmax()), "p_max": float(probs[g].max())})

    metrics["seconds_per_epoch"] = timing
    metrics["train_seconds_per_epoch"] = {"figure3net": sum(fig3_times) / len(fig3_times),
                                          "plain_cnn": sum(plain_times) / len(plain_times)}

    metrics["config"] = {"data": split.name, "n_train": len(split.y_train), "n_test": len(test), "epochs": epochs,
                         "batch_size": args.batch_size, "lr": args.lr, "width": args.width, "seed": args.seed,
                         "backend": args.backend, "train_backend": train_backend, "device": str(device), "machine": _machine(device),
                         "parameters_figure3net": sum(p.numel() for p in model.parameters()),
                         "parameters_plain_cnn": sum(p.numel() for p in plain.parameters()),
                         "torch": torch.__version__, "equifast": equifast.__version__}
    metrics["figure4"] = fig4

    # ------------------------------------------------------------------ outputs
    ckpt = os.path.join(args.out, "figure3net.pt")
    torch.save({"model": model.state_dict(), "plain_cnn": plain.state_dict(), "config": metrics["config"],
                "class": "equifast.models.Figure3Net", "kwargs": {"group": "C4", "width": args.width}}, ckpt)
    plot = os.path.join(args.out, "accuracy_per_angle.png")
    plot_ok = _plot(per_angle, plot, split.name)
    metrics["total_seconds"] = time.perf_counter() - t_start
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)

    _report(metrics, exact_rows, fig4, timing, format_exactness_table)
    print(f"\n  wrote {os.path.join(args.out, 'metrics.json')}, {ckpt}" + (f", {plot}" if plot_ok else "")
          + f"  (total {metrics['total_seconds']:.1f} s)")
    return 0


def _time_backends(args, split, targets, device, make_fig3, backends_here, budget_s=4.0):
    """Seconds per training epoch (forward, backward, Adam step) of Figure3Net for every backend that runs
    on the device (triton only on CUDA, where it compiles): the median time of up to ``--timing-batches``
    steps (at least 2, and no more than ``budget_s`` seconds of steps per backend) times the number of
    batches in an epoch. ``auto`` is timed too (it may mix backends per layer)."""
    import statistics

    import torch
    import torch.nn.functional as F
    n_batches = len(_batches(len(targets), args.batch_size, torch.Generator()))
    k = max(2, args.timing_batches or 10)
    names = [b for b in backends_here if not (b == "triton" and device.type != "cuda")] + ["auto"]
    if args.backend not in names:
        names.append(args.backend)
    out = {}
    for name in _progress(names, args.no_progress, desc="  timing backends", unit="backend"):
        try:
            m = make_fig3(name)
            m.train()
            opt = torch.optim.Adam(m.parameters(), lr=args.lr)
            batches = _batches(len(targets), args.batch_size, torch.Generator().manual_seed(args.seed))
            steps = []
            for i in range(k + 1):
                idx = batches[i % len(batches)]
                xb, yb = split.x_train[idx].to(device), targets[idx].to(device)
                t0 = time.perf_counter()
                loss = F.cross_entropy(m(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i:  # the first step warms up (caches, compilation)
                    steps.append(time.perf_counter() - t0)
                if len(steps) >= 2 and sum(steps) > budget_s:
                    break
            out[name] = statistics.median(steps) * n_batches
        except Exception as exc:  # a backend that cannot train this model is reported, not fatal
            out[name] = None
            print(f"  (backend {name} could not be timed: {type(exc).__name__}: {exc})")
    return out


def _plot(per_angle, path, title) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib not installed: no plot)")
        return False
    angles = list(per_angle)
    xs = range(len(angles))
    wdt = 0.27
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    series = (("plain_cnn", "plain CNN (number)", "#999999"),
              ("invariant", "Figure3Net, number (GroupPool)", "#1f77b4"),
              ("number_angle", "Figure3Net, number and angle", "#ff7f0e"))
    for i, (key, label, color) in enumerate(series):
        vals = [per_angle[a][key] for a in angles]
        ax.bar([x + (i - 1) * wdt for x in xs], vals, wdt, label=label, color=color)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{a}°" for a in angles])
    ax.set_xlabel("rotation of the test digit")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"trained on upright digits only ({title})", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=7.5, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def _report(metrics, exact_rows, fig4, timing, format_exactness_table):
    pa = metrics["per_angle"]
    print("\nResults on the rotated test set (trained on upright digits only)")
    print(f"  {'model':<44} {'accuracy':>8}   " + "  ".join(f"{a + '°':>5}" for a in pa))
    rows = (("Figure3Net: (number, angle) argmax of 40", "number_angle_accuracy", "number_angle"),
            ("Figure3Net: number after GroupPool", "invariant_accuracy", "invariant"),
            ("plain CNN: number", "plain_cnn_accuracy", "plain_cnn"))
    for label, key, sub in rows:
        print(f"  {label:<44} {metrics[key]:>8.3f}   " + "  ".join(f"{pa[a][sub]:>5.3f}" for a in pa))
    print(f"  (upright test set: Figure3Net (number, angle) {metrics['upright_number_angle_accuracy']:.3f}, "
          f"plain CNN {metrics['plain_cnn_upright_accuracy']:.3f})")
    print(f"\nEquivariance error of the trained Figure3Net, max_g |f(g x) - g f(x)| / max|f(x)|: "
          f"{metrics['equivariance_error']:.1e} (float32); plain CNN invariance error "
          f"{metrics['equivariance_error_plain_cnn']:.1e}")
    print("Paper's Figure 4 — a test digit 7 and its rotations (the argmax moves by 10 slots per 90°):")
    for r in fig4:
        print(f"  rotated {r['rotation']:>3}°: predicted number {r['predicted_number']}, angle "
              f"{r['predicted_angle']:>3}°, slot {r['argmax_slot']:>2}, p={r['p_max']:.3f}")
    print("\nExactness where G-CNNs break (invariance error of a 2-layer C4 network, float64, same weights):")
    print(format_exactness_table(exact_rows, markdown=False))
    print("\nTime per training epoch of Figure3Net (forward + backward + Adam):")
    ref = timing.get("reference")
    timed = {k: v for k, v in timing.items() if v is not None}
    fastest = min(timed, key=timed.get) if timed else None
    for name, t in timing.items():
        if t is None:
            print(f"  {name:>10}: failed")
            continue
        speed = f"  ({ref / t:.1f}x the reference)" if ref and name != "reference" else ""
        star = "  <- fastest" if name == fastest else ""
        print(f"  {name:>10}: {t:.2f} s/epoch{speed}{star}")


# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------
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


def check(args) -> int:
    import torch

    import equifast
    from equifast import backends as B
    from equifast._args import make_plan

    device = _device(args.device)
    names = args.backends.split(",") if args.backends else equifast.available_backends(device)
    others = [b for b in names if b != "reference"]
    print(f"equifast check on {device} ({_machine(device)})")
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
            n = G.order
            gen = torch.Generator().manual_seed(rows)
            if op == "lift_conv":
                x = torch.randn(2, 3, H, H, generator=gen)
                w = torch.randn(4, 3, k, k, generator=gen)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
            else:
                x = torch.randn(2, n, 3, H, H, generator=gen)
                w = torch.randn(4, n, 3, k, k, generator=gen)
                if cl:
                    x = x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
            b = torch.randn(4, generator=gen)
            x, w, b = x.to(device), w.to(device), b.to(device)
            shape = f"{list(x.shape)} k{k} s{stride} p{padding} d{dilation}" + (" cl" if cl else "")
            plan = make_plan(G, stride, padding, dilation, frame, k, k, op)
            sup, why = B.module(backend).supports(plan, x, w)
            if not sup:
                print(f"{backend:>9} {op:>10} {group:>5} {frame:>9} {shape:>30}  skipped: {why}")
                continue
            rows += 1
            kw = dict(group=group, stride=stride, padding=padding, dilation=dilation, frame=frame)
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
            bad = any(e > args.rtol or e != e for e in errs)
            failures += bad
            print(f"{backend:>9} {op:>10} {group:>5} {frame:>9} {shape:>30} "
                  + " ".join(f"{e:>9.1e}" for e in errs) + ("  MISMATCH" if bad else "  ok"))
    if not others:
        print("only the reference backend is available: nothing to compare")
    print(f"\n{rows} comparisons, {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
