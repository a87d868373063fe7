"""The paper's study: equivarified networks vs data augmentation, with scarce data and larger groups.

``python -m equifast study`` trains, for every training-set fraction and seed,

* ``cnn``        the plain CNN (``PlainCNN``) on upright digits;
* ``cnn+rot90``  the plain CNN, every training batch rotated by random multiples of 90° (exact);
* ``cnn+rot``    the plain CNN, every training batch rotated by uniformly random angles (bilinear);
* ``C4``, ``D4``, ``C8``, ``C16``  the equivarified network (``Figure3Net``) on upright digits, with
  the same width per group element as the plain CNN (so |G| times the plain CNN's activations and
  about |G| times its parameters); C8 and C16 lift by interpolated (bilinear) rotations;
* ``C4=p``, ``D4=p``, ``C8=p``, ``C16=p``  the same networks with the width per group element chosen
  so that the parameter count is closest to the plain CNN's;

and tests each trained model on four fixed test sets: ``upright``; ``rot90`` (random multiples of 90°);
``angle`` (uniformly random angles in [0°, 360°), bilinear, zeros outside); ``flip`` (mirrored, then
rotated by random multiples of 90°: a random reflection of D4). Metrics: number accuracy (argmax of
the plain CNN's logits, or of the equivarified network's invariant readout, the max over copies),
number+angle accuracy for the equivarified networks (the argmax of the |G|·10 scores must be the
true class in the block of the group element nearest to the true transformation), the equivariance
error of every trained equivarified network under its own group, the invariance error of every
model's number scores under 90° rotations, and training time.

Digits (default): scikit-learn's 8x8 digits are upsampled bilinearly to ``--digit-size`` (12) and
zero-padded to ``--size`` (16), so that rotations by arbitrary angles interpolate on a finer grid and
keep the digit inside the frame. Bilinear upsampling and centred padding commute with 90° rotations
and flips, so the rot90 and flip test sets are exact transformations of the upright one.

Outputs under ``--out``: results.json (configuration, machine, every run, the summary), results.md
(tables) and accuracy.png (number accuracy vs training fraction, one line per model, one panel per
test set).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["add_arguments", "run", "ModelSpec", "model_specs", "build_model", "prepare_digits", "rotate",
           "augment_batch", "make_test_sets", "subset_indices", "train_model", "evaluate", "TEST_SETS"]

TEST_SETS = ("upright", "rot90", "angle", "flip")
NUM_CLASSES = 10
DEFAULT_MODELS = ("cnn", "cnn+rot90", "cnn+rot", "C4", "D4", "C8", "C16", "C4=p", "D4=p", "C8=p", "C16=p")
DEFAULT_FRACTIONS = (0.05, 0.1, 0.25, 1.0)
QUICK = dict(fractions=(0.1, 1.0), seeds=2, steps=25, test_limit=200, timing_rounds=2)


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """One contender: ``group`` None for the plain CNN; ``augment`` None, "rot90" or "angle"."""
    name: str
    group: Optional[str]
    width: int
    augment: Optional[str] = None
    variant: str = "plain"          # "plain", "same width" or "matched parameters"

    @property
    def equivariant(self) -> bool:
        return self.group is not None


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_width(group: str, width: int) -> int:
    """Width per group element whose Figure3Net has the parameter count closest to PlainCNN(width)."""
    from .models import Figure3Net, PlainCNN
    target = _count(PlainCNN(width=width))
    best = min(range(1, width + 1), key=lambda w: (abs(_count(Figure3Net(group=group, width=w)) - target), w))
    return best


def model_specs(names: Sequence[str], width: int) -> List[ModelSpec]:
    """The ModelSpecs for model names such as "cnn", "cnn+rot90", "cnn+rot", "C8" or "C8=p"."""
    specs = []
    for name in names:
        if name == "cnn":
            specs.append(ModelSpec(name, None, width))
        elif name == "cnn+rot90":
            specs.append(ModelSpec(name, None, width, augment="rot90"))
        elif name == "cnn+rot":
            specs.append(ModelSpec(name, None, width, augment="angle"))
        else:
            group, matched = (name[:-2], True) if name.endswith("=p") else (name, False)
            if not (len(group) > 1 and group[0] in "CD" and group[1:].isdigit() and int(group[1:]) >= 1):
                raise ValueError(f"--models: unknown model {name!r}; expected cnn, cnn+rot90, cnn+rot, a group "
                                 f"such as C4, D4, C8, C16 (same width per element) or C4=p (matched parameters)")
            if matched:
                specs.append(ModelSpec(name, group, matched_width(group, width), variant="matched parameters"))
            else:
                specs.append(ModelSpec(name, group, width, variant="same width"))
    return specs


def build_model(spec: ModelSpec, backend: str = "auto"):
    from .models import Figure3Net, PlainCNN
    if spec.equivariant:
        return Figure3Net(group=spec.group, width=spec.width, backend=backend)
    return PlainCNN(width=spec.width)


def describe(spec: ModelSpec) -> str:
    if not spec.equivariant:
        aug = {None: "no augmentation", "rot90": "augmented: random multiples of 90°",
               "angle": "augmented: random angles"}[spec.augment]
        return f"plain CNN, {aug}"
    interp = "" if spec.group in ("C1", "C2", "C4", "D1", "D2", "D4") else ", interpolated lift"
    return f"equivarified {spec.group}{interp}, {spec.variant}"


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def prepare_digits(x: Tensor, size: int = 16, digit_size: int = 12) -> Tensor:
    """8x8 digits [N, 1, 8, 8] -> [N, 1, size, size]: bilinear upsampling to digit_size x digit_size
    (align_corners=False, which is symmetric, so it commutes with 90° rotations and flips), then
    centred zero padding to size x size."""
    if digit_size < x.shape[-1]:
        raise ValueError(f"--digit-size must be at least the image size {x.shape[-1]}, got {digit_size}")
    if size < digit_size or (size - digit_size) % 2:
        raise ValueError(f"--size must be at least --digit-size ({digit_size}) and differ from it by an even "
                         f"number (centred padding), got {size}")
    if digit_size != x.shape[-1]:
        x = F.interpolate(x, size=(digit_size, digit_size), mode="bilinear", align_corners=False)
    p = (size - digit_size) // 2
    return F.pad(x, (p, p, p, p)).clamp(0, 1).contiguous()


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate every image x[i] [C, H, W] counter-clockwise by degrees[i] about the image centre, bilinear
    interpolation, zeros outside (the convention of ``equifast.groups``: C8's element 1 is rotate(x, 45))."""
    degrees = torch.as_tensor(degrees, dtype=torch.float32).reshape(-1)
    if x.dim() != 4 or degrees.numel() != x.shape[0]:
        raise ValueError(f"rotate: expected images [B, C, H, W] and B angles, got {list(x.shape)} and "
                         f"{degrees.numel()} angles")
    t = torch.deg2rad(degrees.double())
    c, s = torch.cos(t), torch.sin(t)
    zero = torch.zeros_like(c)
    # normalised coordinates (x right, y down): source = R(-angle) target, written for y pointing down
    theta = torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(x: Tensor, mode: Optional[str], generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """Training augmentation: (images, degrees [B]). ``mode`` None: unchanged (angles 0); "rot90": exact
    rotation by random multiples of 90° (``torch.rot90``); "angle": uniformly random angles in [0, 360)."""
    from .data import rotate_batch
    B = x.shape[0]
    if mode is None:
        return x, torch.zeros(B)
    if mode == "rot90":
        xr, k = rotate_batch(x, "C4", generator)
        return xr, 90.0 * k.float()
    if mode == "angle":
        deg = torch.rand(B, generator=generator) * 360.0
        return rotate(x, deg), deg
    raise ValueError(f"augment_batch: mode must be None, 'rot90' or 'angle', got {mode!r}")


@dataclass
class TestSet:
    """Images [N, 1, H, W], labels [N], the rotation of each image in degrees [N] and whether it was mirrored
    first (x = rotate(flip(x0), degrees))."""
    name: str
    x: Tensor
    y: Tensor
    degrees: Tensor
    flipped: bool


def make_test_sets(x: Tensor, y: Tensor, seed: int = 12345) -> Dict[str, TestSet]:
    """The four test sets, drawn once from ``seed`` (the same for every model, fraction and seed)."""
    gen = torch.Generator().manual_seed(seed)
    N = len(y)
    k = torch.randint(0, 4, (N,), generator=gen)
    deg = torch.rand(N, generator=gen) * 360.0
    kf = torch.randint(0, 4, (N,), generator=gen)
    rot90 = torch.stack([torch.rot90(x[i], int(k[i]), dims=(-2, -1)) for i in range(N)])
    mirrored = x.flip(-1)
    flip = torch.stack([torch.rot90(mirrored[i], int(kf[i]), dims=(-2, -1)) for i in range(N)])
    return {"upright": TestSet("upright", x, y, torch.zeros(N), False),
            "rot90": TestSet("rot90", rot90, y, 90.0 * k.float(), False),
            "angle": TestSet("angle", rotate(x, deg), y, deg, False),
            "flip": TestSet("flip", flip, y, 90.0 * kf.float(), True)}


def true_elements(group, test: TestSet) -> Optional[Tensor]:
    """The element of ``group`` nearest to each test image's transformation (rotation rounded to the nearest
    multiple of 360°/r), or None when the group cannot represent it (a mirror image for C_n)."""
    from . import groups as _groups
    G = _groups.get(group)
    dihedral = G.name.startswith("D")
    r = G.order // 2 if dihedral else G.order
    rot = torch.round(test.degrees / (360.0 / r)).long() % r
    if test.flipped:
        return rot + r if dihedral else None
    return rot


def subset_indices(y: Tensor, fraction: float, seed: int) -> Tensor:
    """A stratified random subset: round(fraction * count) (at least 1) images of every class, drawn from
    ``seed``; for one seed the subsets of growing fractions are nested."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fractions: every fraction must lie in (0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        out.append(idx[:max(1, round(fraction * len(idx)))])
    return torch.cat(out).sort().values


# ---------------------------------------------------------------------------
# training and evaluation
# ---------------------------------------------------------------------------
def train_model(model, x: Tensor, y: Tensor, steps: int, batch_size: int, lr: float, augment: Optional[str],
                seed: int) -> Dict:
    """Adam with a one-cycle learning rate for ``steps`` steps of cross-entropy on batches of ``batch_size``
    (epochs of a seeded permutation; upright targets: for an equivarified network the class slot of the
    identity block, the paper's training). Returns seconds per step (median, first step excluded) and the
    mean loss of the last 10 steps."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    bs = min(batch_size, len(y))
    model.train()
    order, pos, times, losses = torch.randperm(len(y), generator=gen), 0, [], []
    for _ in range(steps):
        if pos + bs > len(y):
            order, pos = torch.randperm(len(y), generator=gen), 0
        idx = order[pos:pos + bs]
        pos += bs
        t0 = time.perf_counter()
        xb, _ = augment_batch(x[idx], augment, gen)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    step_s = statistics.median(times[1:] if len(times) > 1 else times)
    return {"seconds_per_step": step_s, "train_seconds": sum(times), "final_loss": sum(losses[-10:]) / len(losses[-10:])}


def time_models(specs: Sequence[ModelSpec], x: Tensor, y: Tensor, batch_size: int, backend: str = "auto",
                rounds: int = 5, steps: int = 3) -> Dict[str, float]:
    """Median seconds per training step (forward, backward, Adam; augmentation included) of every model,
    measured side by side: ``rounds`` rounds, each timing ``steps`` steps of every model in turn (after one
    warm-up step each), so that a change of machine load hits all models alike."""
    gen = torch.Generator().manual_seed(0)
    models, opts, times = {}, {}, {s.name: [] for s in specs}
    for spec in specs:
        torch.manual_seed(0)
        models[spec.name] = build_model(spec, backend).train()
        opts[spec.name] = torch.optim.Adam(models[spec.name].parameters(), lr=1e-3)
    idx = torch.randperm(len(y), generator=gen)[:batch_size]
    xb, yb = x[idx], y[idx]

    def step(spec):
        xa, _ = augment_batch(xb, spec.augment, gen)
        loss = F.cross_entropy(models[spec.name](xa), yb)
        opts[spec.name].zero_grad(set_to_none=True)
        loss.backward()
        opts[spec.name].step()

    for spec in specs:
        step(spec)
    for _ in range(rounds):
        for spec in specs:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(spec)
            times[spec.name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _scores(model, x: Tensor, batch: int = 500) -> Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def number_scores(spec: ModelSpec, scores: Tensor) -> Tensor:
    """Class scores [B, 10]: the plain CNN's logits, or the invariant readout (max over copies)."""
    from .nn import invariant_scores
    return invariant_scores(scores, NUM_CLASSES) if spec.equivariant else scores


def evaluate(spec: ModelSpec, model, tests: Dict[str, TestSet], eq_images: int = 16) -> Dict:
    """Number accuracy and number+angle accuracy per test set, and the equivariance errors."""
    from .nn import decode_scores, equivariance_error
    out = {"accuracy": {}, "number_angle": {}}
    for name, t in tests.items():
        s = _scores(model, t.x)
        out["accuracy"][name] = (number_scores(spec, s).argmax(1) == t.y).float().mean().item()
        el = true_elements(spec.group, t) if spec.equivariant else None
        if el is None:
            out["number_angle"][name] = None
        else:
            cls, pred_el = decode_scores(s, NUM_CLASSES)
            out["number_angle"][name] = ((cls == t.y) & (pred_el == el)).float().mean().item()
    x = tests["upright"].x[:eq_images]
    model.eval()
    out["equivariance_error"] = (equivariance_error(model, x, spec.group, "image", "scores")
                                 if spec.equivariant else None)
    out["invariance_error_90"] = equivariance_error(lambda v: number_scores(spec, model(v)), x, "C4", "image",
                                                    "invariant")
    return out


# ---------------------------------------------------------------------------
# summary, table, plot
# ---------------------------------------------------------------------------
def _mean_std(values: List[float]) -> Dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(runs: List[Dict], specs: List[ModelSpec], fractions: Sequence[float]) -> Dict:
    summary = {}
    for spec in specs:
        per_fraction = {}
        for f in fractions:
            rs = [r for r in runs if r["model"] == spec.name and r["fraction"] == f]
            if not rs:
                continue
            entry = {"n_train": rs[0]["n_train"], "accuracy": {}, "number_angle": {}}
            for t in TEST_SETS:
                entry["accuracy"][t] = _mean_std([r["accuracy"][t] for r in rs])
                na = [r["number_angle"][t] for r in rs if r["number_angle"][t] is not None]
                entry["number_angle"][t] = _mean_std(na) if na else None
            per_fraction[str(f)] = entry
        rs = [r for r in runs if r["model"] == spec.name]
        eq = [r["equivariance_error"] for r in rs if r["equivariance_error"] is not None]
        summary[spec.name] = {
            "fractions": per_fraction,
            "seconds_per_epoch": statistics.median([r["seconds_per_epoch"] for r in rs]) if rs else None,
            "equivariance_error_max": max(eq) if eq else None,
            "equivariance_error_median": statistics.median(eq) if eq else None,
            "invariance_error_90_max": max(r["invariance_error_90"] for r in rs) if rs else None,
        }
    return summary


def _pct(f: float) -> str:
    return f"{100 * f:g}%"


def markdown(result: Dict) -> str:
    cfg, summary, models = result["config"], result["summary"], result["models"]
    fr = cfg["fractions"]
    lines = [f"# equifast study: equivarification vs data augmentation ({cfg['data']})", "",
             f"Command: `{cfg['command']}`  ",
             f"Machine: {cfg['machine']}; torch {cfg['torch']}, equifast {cfg['equifast']}, "
             f"{cfg['threads']} torch thread(s) x {cfg['jobs']} process(es); load average {cfg['load_before']} before, "
             f"{cfg['load_after']} after (1/5/15 min); total {result['total_seconds']:.0f} s wall clock, "
             f"{result['cpu_seconds']:.0f} s CPU time.  ",
             f"{len(cfg['seeds'])} seeds ({', '.join(map(str, cfg['seeds']))}), {cfg['steps']} Adam steps of batch "
             f"{cfg['batch_size']} per run (one-cycle lr {cfg['lr']}), {cfg['n_train_full']} training images at 100%, "
             f"{cfg['n_test']} test images per test set. Entries: mean ± standard deviation over seeds.", ""]
    titles = {"upright": "upright test digits", "rot90": "test digits rotated by random multiples of 90°",
              "angle": "test digits rotated by uniformly random angles (bilinear)",
              "flip": "test digits mirrored, then rotated by random multiples of 90°"}
    for t in TEST_SETS:
        lines += [f"### Number accuracy, {titles[t]}", "",
                  "| model | " + " | ".join(f"{_pct(f)} ({summary[next(iter(summary))]['fractions'].get(str(f), {}).get('n_train', '?')})"
                                            for f in fr) + " |",
                  "|---|" + "---:|" * len(fr)]
        for name, s in summary.items():
            cells = []
            for f in fr:
                e = s["fractions"].get(str(f))
                cells.append("" if e is None else f"{e['accuracy'][t]['mean']:.3f} ± {e['accuracy'][t]['std']:.3f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    full = str(max(fr))
    lines += ["### Models", "",
              f"Number+angle accuracy at {_pct(max(fr))} of the training data: the argmax of the |G|·10 scores is "
              f"the true class in the block of the group element nearest to the true transformation. Equivariance "
              f"error: max over g of |f(g·x) − g·f(x)| / max|f(x)| of the scores of the trained network under its "
              f"own group (float32; max over runs). 90° invariance error: the same for the number scores under "
              f"rotations by multiples of 90° (every model). Time: seconds per epoch of the full training set "
              f"({cfg['n_train_full']} images, batch {cfg['batch_size']}), from a side-by-side timing of all models "
              f"after the runs ({result['timing']['rounds']} interleaved rounds of {result['timing']['steps_per_round']} "
              f"steps, median; {result['timing']['threads']} thread(s), load average "
              f"{result['timing']['load_before']} before, {result['timing']['load_after']} after).", "",
              "| model | network | width per element | parameters | s / epoch | equivariance error | "
              "90° invariance error | number+angle rot90 | number+angle angle | number+angle flip |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in summary.items():
        m = models[name]
        e = s["fractions"].get(full)

        def na(t):
            v = e and e["number_angle"][t]
            return f"{v['mean']:.3f} ± {v['std']:.3f}" if v else "—"
        eq = s["equivariance_error_max"]
        lines.append(f"| {name} | {m['description']} | {m['width']} | {m['parameters']} | "
                     f"{result['timing']['seconds_per_epoch'][name]:.2f} | {'—' if eq is None else f'{eq:.1e}'} | "
                     f"{s['invariance_error_90_max']:.1e} | {na('rot90')} | {na('angle')} | {na('flip')} |")
    lines.append("")
    return "\n".join(lines)


STYLE = {"cnn": ("#000000", "-", "o"), "cnn+rot90": ("#7f7f7f", "-", "s"), "cnn+rot": ("#7f7f7f", ":", "^"),
         "C4": ("#1f77b4", "-", "o"), "D4": ("#9467bd", "-", "D"), "C8": ("#ff7f0e", "-", "s"),
         "C16": ("#d62728", "-", "^")}


def plot(result: Dict, path: str) -> bool:
    """accuracy vs training fraction, one line per model (mean, band = ± std over seeds), one panel per test set."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib not installed: no plot)")
        return False
    summary, fr = result["summary"], result["config"]["fractions"]
    titles = {"upright": "upright", "rot90": "rotated by multiples of 90°", "angle": "rotated by random angles",
              "flip": "mirrored (+ multiples of 90°)"}
    fig, axes = plt.subplots(2, 2, figsize=(10, 8), sharey=True)
    axes = axes.flatten()
    for ax, t in zip(axes, TEST_SETS):
        for name, s in summary.items():
            base = name[:-2] if name.endswith("=p") else name
            color, ls, marker = STYLE.get(base, (None, "-", "o"))
            if name.endswith("=p"):
                ls = "--"
            xs = [f for f in fr if str(f) in s["fractions"]]
            mean = [s["fractions"][str(f)]["accuracy"][t]["mean"] for f in xs]
            std = [s["fractions"][str(f)]["accuracy"][t]["std"] for f in xs]
            ax.plot(xs, mean, ls, color=color, marker=marker, ms=4, lw=1.5, label=name,
                    mfc="white" if name.endswith("=p") else color)
            ax.fill_between(xs, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                            color=color, alpha=0.08, lw=0)
        ax.set_xscale("log")
        ax.set_xticks(fr)
        ax.set_xticklabels([_pct(f) for f in fr])
        ax.minorticks_off()
        ax.set_title(titles[t], fontsize=10)
        ax.set_xlabel("training data used (log scale)")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.0)
    axes[0].set_ylabel("number accuracy")
    axes[2].set_ylabel("number accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=9, frameon=False)
    fig.suptitle(f"{result['config']['data']}: mean ± std over {len(result['config']['seeds'])} seeds "
                 f"(=p: parameter count matched to the plain CNN; dashed)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def _floats(text: str) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.05,0.1,1, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m equifast study``."""
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits",
                        help="digits: scikit-learn's 8x8 digits, upsampled (default); mnist: IDX files from --mnist-dir")
    parser.add_argument("--mnist-dir", default=None, help="directory with the four MNIST IDX files (raw or .gz)")
    parser.add_argument("--size", type=int, default=16, help="digits: image size after padding (default 16)")
    parser.add_argument("--digit-size", type=int, default=12,
                        help="digits: the 8x8 digits are upsampled bilinearly to this size, then zero-padded to --size "
                             "(default 12)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated models (default: all): cnn, cnn+rot90, cnn+rot, C4, D4, C8, C16 "
                             "(same width per element), C4=p ... (parameter count matched to the plain CNN)")
    parser.add_argument("--fractions", type=_floats, default=None,
                        help="training-set fractions (default 0.05,0.1,0.25,1)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps per run, at every fraction (default 100)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (default 32)")
    parser.add_argument("--lr", type=float, default=0.03, help="peak learning rate of the one-cycle Adam schedule (default 0.03)")
    parser.add_argument("--width", type=int, default=6, help="plain CNN width = width per group element (default 6)")
    parser.add_argument("--backend", default="auto", help="equifast backend of the equivarified networks (default auto)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="use only the first N training images as the 100%% set (e.g. for MNIST on a CPU)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes, one seed each (default 1; on a busy shared machine more processes get more "
                             "of it, and the times per step then include that contention)")
    parser.add_argument("--timing-rounds", type=int, default=None,
                        help="rounds of the side-by-side timing of all models at the end (default 5)")
    parser.add_argument("--eq-images", type=int, default=16, help="images for the equivariance errors (default 16)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: fractions 0.1,1, 2 seeds, 25 steps, 200 test images, 2 timing rounds (unless given)")
    parser.add_argument("--out", default="runs/study", help="output directory (default runs/study)")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def _command(args) -> str:
    """The command line that reproduces ``args`` (options that differ from the defaults)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    parts = ["python -m equifast study"]
    for key, value in vars(args).items():
        if key not in defaults or value == defaults[key] or key == "no_progress":
            continue
        opt = "--" + key.replace("_", "-")
        if value is True:
            parts.append(opt)
        elif key == "fractions":
            parts.append(f"{opt} {','.join(f'{v:g}' for v in value)}")
        else:
            parts.append(f"{opt} {value}")
    return " ".join(parts)


def _load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


class _Progress:
    """A tqdm bar over the runs on a terminal; otherwise (or without tqdm) one printed line per run."""

    def __init__(self, total: int, disable: bool):
        self.total, self.done, self.disable, self.bar = total, 0, disable, None
        if not disable and sys.stdout.isatty():
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, unit="run", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, line: str) -> None:
        self.done += 1
        if self.disable:
            return
        if self.bar is not None:
            self.bar.set_description_str(line.split(":")[0])
            self.bar.update(1)
        else:
            print(f"  [{self.done:>3}/{self.total}] {line}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load_data(args):
    from . import data as edata
    if args.data == "mnist":
        if not args.mnist_dir:
            raise ValueError("--data mnist needs --mnist-dir PATH (a directory with the four MNIST IDX files)")
        split = edata.load_mnist(args.mnist_dir)
        how = "MNIST 28x28 as stored (digits centred in a 20x20 box, 4-pixel margin)"
        xtr, xte = split.x_train, split.x_test
    else:
        split = edata.load_digits(size=8, seed=0)
        xtr = prepare_digits(split.x_train, args.size, args.digit_size)
        xte = prepare_digits(split.x_test, args.size, args.digit_size)
        how = (f"scikit-learn 8x8 digits, upsampled bilinearly to {args.digit_size}x{args.digit_size} "
               f"(align_corners=False) and zero-padded to {args.size}x{args.size}")
    ytr, yte = split.y_train, split.y_test
    if args.train_limit:
        xtr, ytr = xtr[:args.train_limit], ytr[:args.train_limit]
    if args.test_limit:
        xte, yte = xte[:args.test_limit], yte[:args.test_limit]
    name = "MNIST" if args.data == "mnist" else f"digits {args.size}x{args.size}"
    return xtr, ytr, xte, yte, name, how


def run(args: argparse.Namespace) -> int:
    """Run the study with parsed ``args`` (see ``add_arguments``); returns the exit status."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    import equifast
    args = argparse.Namespace(**vars(args))          # the defaults filled in below stay local
    args.command_line = _command(args)

    def pick(value, quick, default):
        return value if value is not None else (quick if args.quick else default)
    fractions = pick(args.fractions, QUICK["fractions"], DEFAULT_FRACTIONS)
    n_seeds = pick(args.seeds, QUICK["seeds"], 3)
    steps = pick(args.steps, QUICK["steps"], 100)
    args.timing_rounds = pick(args.timing_rounds, QUICK["timing_rounds"], 5)
    if args.quick and args.test_limit is None:
        args.test_limit = QUICK["test_limit"]
    for name, v in (("--seeds", n_seeds), ("--steps", steps), ("--batch-size", args.batch_size),
                    ("--width", args.width), ("--threads", args.threads), ("--eq-images", args.eq_images),
                    ("--jobs", args.jobs), ("--timing-rounds", args.timing_rounds)):
        if v < 1:
            print(f"equifast study: {name} must be a positive integer, got {v}", file=sys.stderr)
            return 2
    for name, v in (("--test-limit", args.test_limit), ("--train-limit", args.train_limit)):
        if v is not None and v < 1:
            print(f"equifast study: {name} must be a positive integer, got {v}", file=sys.stderr)
            return 2
    try:
        fractions = tuple(sorted(set(fractions)))
        for f in fractions:
            if not 0 < f <= 1:
                raise ValueError(f"--fractions: every fraction must lie in (0, 1], got {f}")
        specs = model_specs([m.strip() for m in args.models.split(",") if m.strip()], args.width)
        if not specs:
            raise ValueError("--models: no model given")
        xtr, ytr, xte, yte, data_name, how = _load_data(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"equifast study: {exc}", file=sys.stderr)
        return 2

    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, specs, fractions, n_seeds, steps, xtr, ytr, xte, yte, data_name, how, (t_start, cpu_start),
                    equifast)
    finally:
        torch.set_num_threads(old_threads)


def _print_line(line: str) -> None:
    print(f"  {line}", flush=True)


def _seed_runs(seed: int, w: Dict, report) -> Tuple[List[Dict], float]:
    """Every (fraction, model) run of one seed; returns the runs and the CPU seconds this process spent."""
    cpu0 = time.process_time()
    torch.set_num_threads(w["threads"])
    runs = []
    for f in w["fractions"]:
        idx = subset_indices(w["ytr"], f, seed)
        x, y = w["xtr"][idx], w["ytr"][idx]
        for i, spec in enumerate(w["specs"]):
            torch.manual_seed(1000 * seed + i)
            model = build_model(spec, w["backend"])
            tr = train_model(model, x, y, w["steps"], w["batch_size"], w["lr"], spec.augment, seed)
            ev = evaluate(spec, model, w["tests"], w["eq_images"])
            r = {"model": spec.name, "fraction": f, "n_train": len(y), "seed": seed, "steps": w["steps"], **tr,
                 "seconds_per_epoch": tr["seconds_per_step"] * w["steps_per_epoch"], **ev}
            runs.append(r)
            if report is not None:
                acc = "  ".join(f"{t} {r['accuracy'][t]:.3f}" for t in TEST_SETS)
                eq = "" if r["equivariance_error"] is None else f", eq. error {r['equivariance_error']:.0e}"
                report(f"{spec.name:<9} {_pct(f):>4} ({len(y)} images) seed {seed}: {acc}; "
                       f"{tr['seconds_per_step'] * 1000:.0f} ms/step{eq}; "
                       f"{time.perf_counter() - w['t_start']:.0f} s elapsed")
    return runs, time.process_time() - cpu0


def _run(args, specs, fractions, n_seeds, steps, xtr, ytr, xte, yte, data_name, how, clocks, equifast) -> int:
    t_start, cpu_start = clocks
    os.makedirs(args.out, exist_ok=True)
    tests = make_test_sets(xte, yte)
    seeds = list(range(n_seeds))
    models = {}
    for spec in specs:
        models[spec.name] = {"description": describe(spec), "group": spec.group, "width": spec.width,
                             "augment": spec.augment, "variant": spec.variant,
                             "parameters": _count(build_model(spec, args.backend))}
    cfg = {"command": args.command_line,
           "data": data_name, "preprocessing": how, "n_train_full": len(ytr), "n_test": len(yte),
           "image_size": list(xtr.shape[-2:]), "fractions": list(fractions), "seeds": seeds, "steps": steps,
           "batch_size": args.batch_size, "lr": args.lr, "width": args.width, "backend": args.backend,
           "jobs": min(args.jobs, n_seeds),
           "threads": torch.get_num_threads(), "machine": _machine(), "python": platform.python_version(),
           "torch": torch.__version__, "equifast": equifast.__version__, "load_before": _load(),
           "backends_available": list(equifast.available_backends("cpu")),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": bool(args.quick),
           "test_sets": {"upright": "the test images", "rot90": "rotated by random multiples of 90° (torch.rot90)",
                         "angle": "rotated by uniformly random angles in [0, 360), bilinear, zeros outside",
                         "flip": "mirrored left-right, then rotated by random multiples of 90°"}}
    quiet = args.no_progress
    if not quiet:
        print(f"equifast study on {data_name}: {len(specs)} models x {len(fractions)} fractions x {n_seeds} seeds, "
              f"{steps} steps each; {cfg['machine']}, {cfg['threads']} thread(s), load {cfg['load_before']}")
        print(f"  data: {how}; {len(ytr)} training images at 100%, {len(yte)} per test set")
    steps_per_epoch = math.ceil(len(ytr) / args.batch_size)
    work = dict(specs=specs, fractions=fractions, steps=steps, xtr=xtr, ytr=ytr, tests=tests,
                batch_size=args.batch_size, lr=args.lr, backend=args.backend, eq_images=args.eq_images,
                steps_per_epoch=steps_per_epoch, threads=args.threads, t_start=t_start)
    runs: List[Dict] = []
    jobs = min(args.jobs, n_seeds)
    if jobs == 1:
        progress = _Progress(len(specs) * len(fractions) * n_seeds, quiet)
        for seed in seeds:
            runs += _seed_runs(seed, work, progress.update)[0]
        progress.close()
        cpu = time.process_time() - cpu_start
    else:   # one process per seed (spawned: a fresh torch in each); every process prints its own lines
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_seed_runs, seed, work, None if quiet else _print_line) for seed in seeds]
            done = [fut.result() for fut in futures]
        runs = [r for rs, _ in done for r in rs]
        cpu = time.process_time() - cpu_start + sum(c for _, c in done)
    if not quiet:
        print("  timing every model side by side (interleaved rounds, medians)", flush=True)
    load_timing = _load()
    timing = time_models(specs, xtr, ytr, args.batch_size, args.backend, rounds=args.timing_rounds)
    timing = {"seconds_per_step": timing,
              "seconds_per_epoch": {k: v * steps_per_epoch for k, v in timing.items()},
              "rounds": args.timing_rounds, "steps_per_round": 3, "batch_size": args.batch_size,
              "threads": torch.get_num_threads(), "load_before": load_timing, "load_after": _load()}
    cfg["load_after"] = _load()
    result = {"config": cfg, "models": models, "runs": runs, "summary": summarize(runs, specs, fractions),
              "timing": timing,
              "total_seconds": time.perf_counter() - t_start, "cpu_seconds": cpu}
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    md = markdown(result)
    with open(os.path.join(args.out, "results.md"), "w") as fh:
        fh.write(md)
    wrote = ["results.json", "results.md"]
    if plot(result, os.path.join(args.out, "accuracy.png")):
        wrote.append("accuracy.png")
    if not quiet:
        print()
        print(md)
        print(f"wrote {', '.join(os.path.join(args.out, w) for w in wrote)} (total {result['total_seconds']:.0f} s wall clock, {result['cpu_seconds']:.0f} s CPU)")
    return 0
