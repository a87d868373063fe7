"""``python -m equifast demo``: the paper's experiment (Bao et al., Section 5).

Train ``Figure3Net`` on upright digits, test it on digits rotated by random multiples of 90°, and
report the (number, angle) accuracy, the invariant number accuracy, a plain CNN for contrast, the
measured equivariance error, the strided/even-size exactness table and the time per epoch of every
backend; write metrics.json, a plot and a checkpoint under ``--out`` (default runs/demo).

Plain functions, in the style of torchvision's reference training scripts:

* ``load_data(args, group)``: the training split and the rotated test set;
* ``train_one_epoch(model, optimizer, batches, device, ...)`` and ``fit(model, x, y, ...)``;
* ``predict(model, x, device)`` and ``evaluate(model, plain, test, split, group, num_classes, device)``;
* ``time_backends(...)``: seconds per training epoch for every backend (reported; training uses --backend);
* ``main(args)``: the whole experiment; ``add_arguments(parser)`` and ``run(args)`` for the CLI.

Progress: tqdm bars when stdout is a terminal, one line per epoch otherwise (``equifast._progress``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import equifast
from equifast import data as edata
from equifast._progress import end_epoch, progress, set_postfix
from equifast._runtime import describe_machine, pick_device, set_threads
from equifast.models import Figure3Net, PlainCNN
from equifast.nn import (decode_scores, encode_labels, equivariance_error, exactness_comparison,
                         format_exactness_table, invariant_scores)

NUM_CLASSES = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits",
                        help="digits: scikit-learn's 8x8 digits, no download (default); "
                             "mnist: IDX files from --mnist-dir")
    parser.add_argument("--mnist-dir", default=None, help="directory with the four MNIST IDX files (raw or .gz)")
    parser.add_argument("--size", type=int, default=8,
                        help="digits only: upsample the 8x8 digits to this size (multiple of 8; default 8: "
                             "no upsampling)")
    parser.add_argument("--backend", default="auto",
                        help="backend for training (default auto: equifast's per-layer choice)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when present)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default 15 for digits, 2 for mnist)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=16, help="Figure3Net / plain CNN width (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N training and N test images (quick runs and tests)")
    parser.add_argument("--timing-batches", type=int, default=None,
                        help="batches per backend for the epoch-time comparison (default 10, extrapolated "
                             "to an epoch)")
    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are drawn only when stdout is a terminal; otherwise, "
                             "and with this option, one line per epoch is printed)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, or 1 when the machine is already "
                             "busy: OpenMP threads competing for busy cores slow small convolutions down by 10x)")


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def load_data(args, group):
    """(split, rotated test set, epochs): the upright training/test split and the test images, each
    rotated by a random element of ``group`` drawn from ``args.seed + 1``."""
    if args.data == "mnist":
        split = edata.load_mnist(args.mnist_dir)
        epochs = 2 if args.epochs is None else args.epochs
    else:
        split = edata.load_digits(size=args.size, seed=args.seed)
        epochs = 15 if args.epochs is None else args.epochs
    if args.limit:
        split = split.limit(args.limit, args.limit)
    test = edata.RotatedDataset(split.x_test, split.y_test, group, seed=args.seed + 1)
    return split, test, epochs


def shuffled_indices(n: int, batch_size: int, generator: torch.Generator):
    """Index tensors of the mini-batches of one epoch, in an order drawn from ``generator``."""
    perm = torch.randperm(n, generator=generator)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


class ShuffledBatches:
    """(x, y) mini-batches, reshuffled from ``generator`` each time it is iterated (one epoch)."""

    def __init__(self, x, y, batch_size: int, generator: torch.Generator):
        self.x, self.y, self.batch_size, self.generator = x, y, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        for idx in shuffled_indices(len(self.y), self.batch_size, self.generator):
            yield self.x[idx], self.y[idx]


# ---------------------------------------------------------------------------
# models, training, evaluation
# ---------------------------------------------------------------------------
def make_figure3net(group, backend: str, width: int, seed: int, device):
    torch.manual_seed(seed)
    return Figure3Net(group=group, backend=backend, width=width).to(device)


def train_one_epoch(model, optimizer, batches, device, scheduler=None, desc: str = "", no_progress: bool = False):
    """One pass over ``batches`` ((x, y) pairs): cross-entropy, backward, optimizer (and scheduler)
    step per batch. Returns (mean loss, accuracy) over the epoch's samples."""
    model.train()
    total, correct, loss_sum = 0, 0, 0.0
    bar = progress(batches, desc=desc, unit="batch", disable=no_progress)
    for xb, yb in bar:
        xb, yb = xb.to(device), yb.to(device)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.item() * len(yb)
        total += len(yb)
        correct += (out.argmax(1) == yb).sum().item()
        set_postfix(bar, loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    return loss_sum / max(total, 1), correct / max(total, 1)


def fit(model, x, y, *, epochs: int, batch_size: int, lr: float, seed: int, device, name: str,
        no_progress: bool = False):
    """Adam with a one-cycle learning rate over ``epochs`` epochs of shuffled mini-batches (order drawn
    from ``seed``). Returns (seconds per epoch, last epoch's loss, last epoch's accuracy)."""
    batches = ShuffledBatches(x, y, batch_size, torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, epochs * len(batches)))
    times, loss, acc = [], float("nan"), float("nan")
    bar = progress(range(epochs), desc=name, unit="epoch", disable=no_progress)
    for epoch in bar:
        t0 = time.perf_counter()
        loss, acc = train_one_epoch(model, optimizer, batches, device, scheduler,
                                    desc=f"  epoch {epoch + 1}/{epochs}", no_progress=no_progress)
        times.append(time.perf_counter() - t0)
        end_epoch(bar, name, epoch + 1, epochs, loss, acc, times[-1])
    return times, loss, acc


def predict(model, x, device, batch_size: int = 512):
    """The model's outputs on ``x`` (eval mode, no grad), as float32 on the CPU."""
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(model(x[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(outs)


def evaluate(model, plain, test, split, group, num_classes: int, device):
    """Accuracies on the rotated test set (overall and per rotation angle) and on the upright one."""
    scores = predict(model, test.x, device)                               # [N, |G| * num_classes]
    pred_cls, pred_k = decode_scores(scores, num_classes)
    inv_cls = invariant_scores(scores, num_classes).argmax(1)
    plain_cls = predict(plain, test.x, device).argmax(1)
    y, k = test.y, test.k
    both = (pred_cls == y) & (pred_k == k)
    metrics = {
        "number_angle_accuracy": both.float().mean().item(),
        "invariant_accuracy": (inv_cls == y).float().mean().item(),
        "plain_cnn_accuracy": (plain_cls == y).float().mean().item(),
        "angle_accuracy": (pred_k == k).float().mean().item(),
        "number_accuracy_argmax": (pred_cls == y).float().mean().item(),
    }
    upright_scores = predict(model, split.x_test, device)
    metrics["upright_number_angle_accuracy"] = (upright_scores.argmax(1) == split.y_test).float().mean().item()
    metrics["plain_cnn_upright_accuracy"] = (predict(plain, split.x_test, device).argmax(1)
                                             == split.y_test).float().mean().item()
    per_angle = {}
    for g in range(group.order):
        m = k == g
        per_angle[str(90 * g)] = {
            "count": int(m.sum()),
            "number_angle": both[m].float().mean().item() if m.any() else float("nan"),
            "invariant": (inv_cls[m] == y[m]).float().mean().item() if m.any() else float("nan"),
            "plain_cnn": (plain_cls[m] == y[m]).float().mean().item() if m.any() else float("nan")}
    metrics["per_angle"] = per_angle
    return metrics


def figure4(model, split, group, num_classes: int, device):
    """The paper's Figure 4: a test digit 7 and its rotations; the predictions move by 10 slots."""
    idx = int((split.y_test == 7).nonzero()[0]) if bool((split.y_test == 7).any()) else 0
    x7 = split.x_test[idx:idx + 1]
    rots = torch.cat([group.act(x7, g) for g in range(group.order)])
    with torch.no_grad():
        probs = torch.softmax(model(rots.to(device)).float().cpu(), 1)
    rows = []
    for g in range(group.order):
        c, e = decode_scores(probs[g:g + 1], num_classes)
        rows.append({"rotation": 90 * g, "predicted_number": int(c), "predicted_angle": 90 * int(e),
                     "argmax_slot": int(probs[g].argmax()), "p_max": float(probs[g].max())})
    return rows


def time_backends(args, x, targets, device, group, backends_here, budget_s: float = 4.0):
    """Seconds per training epoch (forward, backward, Adam step) of Figure3Net for every backend that runs
    on the device (triton only on CUDA, where it compiles): the median time of up to ``--timing-batches``
    steps (at least 2, and no more than ``budget_s`` seconds of steps per backend) times the number of
    batches in an epoch. ``auto`` is timed too (it may mix backends per layer)."""
    n_batches = math.ceil(len(targets) / args.batch_size)
    k = max(2, args.timing_batches or 10)
    names = [b for b in backends_here if not (b == "triton" and device.type != "cuda")] + ["auto"]
    if args.backend not in names:
        names.append(args.backend)
    out = {}
    for name in progress(names, desc="  timing backends", unit="backend", disable=args.no_progress):
        try:
            m = make_figure3net(group, name, args.width, args.seed, device)
            m.train()
            opt = torch.optim.Adam(m.parameters(), lr=args.lr)
            batches = shuffled_indices(len(targets), args.batch_size, torch.Generator().manual_seed(args.seed))
            steps = []
            for i in range(k + 1):
                idx = batches[i % len(batches)]
                xb, yb = x[idx].to(device), targets[idx].to(device)
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


# ---------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------
def plot_per_angle(per_angle, path, title) -> bool:
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


def print_report(metrics, exact_rows, fig4, timing) -> None:
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
            print(f"  {name:>10}: cannot train this model (reason above)")
            continue
        speed = f"  ({ref / t:.1f}x the reference)" if ref and name != "reference" else ""
        star = "  <- fastest" if name == fastest else ""
        print(f"  {name:>10}: {t:.2f} s/epoch{speed}{star}")


# ---------------------------------------------------------------------------
# the experiment
# ---------------------------------------------------------------------------
def main(args) -> int:
    t_start = time.perf_counter()
    if args.data == "mnist" and not args.mnist_dir:
        print("equifast demo: --data mnist needs --mnist-dir PATH (a directory with the MNIST IDX files)",
              file=sys.stderr)
        return 2
    set_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    G = equifast.groups.get("C4")
    K = NUM_CLASSES
    quiet = args.no_progress

    split, test, epochs = load_data(args, G)
    H = split.x_train.shape[-1]
    backends_here = equifast.available_backends(device)
    machine = describe_machine(device)
    print("equifast demo — the paper's experiment (Bao et al., Section 5, Figure 3 network)")
    print(f"  machine: {machine}; device {device}")
    print(f"  data: {split.name}: {len(split.y_train)} upright training images, {len(test)} test images "
          f"rotated by random multiples of 90 deg; {H}x{H}")
    print(f"  backends available: {', '.join(backends_here)}; training with backend={args.backend!r}")

    # speed per backend (reported only: training uses --backend, so a run's results do not depend on
    # which backend happened to time fastest)
    # the paper trains on upright images: group element 0, target index = class (slot 0 of the 40 scores)
    targets = encode_labels(split.y_train, torch.zeros_like(split.y_train), K)
    timing = time_backends(args, split.x_train, targets, device, G, backends_here)
    train_backend = args.backend

    train = dict(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=device,
                 no_progress=quiet)
    model = make_figure3net(G, train_backend, args.width, args.seed, device)
    fig3_times, fig3_loss, _ = fit(model, split.x_train, targets, name="Figure3Net (equivariant)", **train)
    print(f"  Figure3Net: {epochs} epochs, {sum(fig3_times) / len(fig3_times):.2f} s/epoch, "
          f"final train loss {fig3_loss:.3f}")

    torch.manual_seed(args.seed)
    plain = PlainCNN(width=args.width).to(device)
    plain_times, plain_loss, _ = fit(plain, split.x_train, split.y_train, name="plain CNN", **train)
    print(f"  plain CNN:  {epochs} epochs, {sum(plain_times) / len(plain_times):.2f} s/epoch, "
          f"final train loss {plain_loss:.3f}")

    metrics = evaluate(model, plain, test, split, G, K, device)

    # equivariance of the trained networks, and where G-CNNs break
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
    fig4 = figure4(model, split, G, K, device)

    metrics["seconds_per_epoch"] = timing
    metrics["train_seconds_per_epoch"] = {"figure3net": sum(fig3_times) / len(fig3_times),
                                          "plain_cnn": sum(plain_times) / len(plain_times)}
    metrics["config"] = {"data": split.name, "n_train": len(split.y_train), "n_test": len(test), "epochs": epochs,
                         "batch_size": args.batch_size, "lr": args.lr, "width": args.width, "seed": args.seed,
                         "backend": args.backend, "train_backend": train_backend, "device": str(device),
                         "machine": machine,
                         "parameters_figure3net": sum(p.numel() for p in model.parameters()),
                         "parameters_plain_cnn": sum(p.numel() for p in plain.parameters()),
                         "torch": torch.__version__, "equifast": equifast.__version__}
    metrics["figure4"] = fig4

    ckpt = os.path.join(args.out, "figure3net.pt")
    torch.save({"model": model.state_dict(), "plain_cnn": plain.state_dict(), "config": metrics["config"],
                "class": "equifast.models.Figure3Net", "kwargs": {"group": "C4", "width": args.width}}, ckpt)
    plot = os.path.join(args.out, "accuracy_per_angle.png")
    plot_ok = plot_per_angle(metrics["per_angle"], plot, split.name)
    metrics["total_seconds"] = time.perf_counter() - t_start
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)

    print_report(metrics, exact_rows, fig4, timing)
    print(f"\n  wrote {os.path.join(args.out, 'metrics.json')}, {ckpt}" + (f", {plot}" if plot_ok else "")
          + f"  (total {metrics['total_seconds']:.1f} s)")
    return 0


def run(args) -> int:
    return main(args)
