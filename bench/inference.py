"""Eval-mode inference of an MNIST-size C4 / D4 G-CNN: equifast vs escnn, batch 1 and 64, CPU.

The network (escnn's usual MNIST G-CNN shape, canonical frame as escnn computes it):
    lift 1->16 k5 ('same') -> BN -> ReLU
    group conv 16->32 k3 -> BN -> ReLU -> 2x2 max pool          (28 -> 14)
    group conv 32->32 k3 -> BN -> ReLU
    group conv 32->32 k3 -> BN -> ReLU -> 2x2 max pool          (14 -> 7)
    GroupPool (max over the copies) -> global average pool -> Linear(32, 10)
(channel counts are fields: the activations have n times as many channels).

Contenders, every one under ``torch.no_grad()``, one torch thread, float32, 28x28 inputs:

* ``escnn eval``       the escnn network in eval mode (escnn caches its expanded filters in eval);
* ``escnn export``     ``SequentialModule.export()`` (plain torch.nn.Sequential) + the same head;
* ``equifast eval``    ``equifast.interop.from_escnn`` of that network (the same weights and outputs)
                       in eval mode: the layers' cached-bank fast path;
* ``equifast export``  ``equifast.nn.export`` of it (a torch.fx GraphModule of plain torch ops);
* ``equifast op``      the equifast network with the fast path switched off (every call goes through
                       the ``equifast::lift_conv`` / ``group_conv`` ops, re-expanding the filters):
                       what equifast did before the cache;
* ``equifast view eval`` the same architecture built natively in equifast's default frame ("view",
                       its own weights: a different function, timed but not compared), eval mode with
                       ``backend="auto"``: where auto picks ``fourier`` for a group convolution, the
                       cached group-Fourier filters run (the canonical frame cannot use them).

When escnn cannot be imported, the equifast network is built directly (random weights) and only the
equifast contenders run; results.md says so. Timing: ``equifast.benchmark.timing.compare`` (all
contenders interleaved, the order rotated every round, medians of ``--repeat`` samples). The load
average is recorded before and after (the machine may be shared).

    python bench/inference.py [--repeat 9] [--groups C4 D4] [--batches 1 64] [--out DIR]

escnn needs numpy<2; see tests/test_interop.py for the side environment (.venv-escnn) that runs it:
    .venv-escnn/bin/python bench/inference.py
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import warnings

import torch
from torch import nn

import equifast
import equifast.nn as enn
from equifast._runtime import cpu_model, loadavg
from equifast.benchmark.timing import compare
from equifast.interop import from_escnn

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import escnn
        from escnn import gspaces
        from escnn import nn as escnn_nn
    ESCNN = escnn.__version__
    ESCNN_ERROR = None
except Exception as exc:   # not installed, or broken by numpy 2 inside its dependencies
    ESCNN = None
    ESCNN_ERROR = f"{type(exc).__name__}: {exc}"

FIELDS = (16, 32, 32, 32)
# contenders that compute a different function (their own weights): timed, not compared
OTHER_FUNCTION = ("equifast view eval",)


def head() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(FIELDS[-1], 10))


class EscnnNet(nn.Module):
    def __init__(self, group: str):
        super().__init__()
        gs = gspaces.rot2dOnR2(4) if group == "C4" else gspaces.flipRot2dOnR2(4)
        self.in_type = escnn_nn.FieldType(gs, [gs.trivial_repr])
        types = [escnn_nn.FieldType(gs, [gs.regular_repr] * c) for c in FIELDS]
        t0, t1, t2, t3 = types
        self.body = escnn_nn.SequentialModule(
            escnn_nn.R2Conv(self.in_type, t0, 5, padding=2, bias=False), escnn_nn.InnerBatchNorm(t0), escnn_nn.ReLU(t0),
            escnn_nn.R2Conv(t0, t1, 3, padding=1, bias=False), escnn_nn.InnerBatchNorm(t1), escnn_nn.ReLU(t1),
            escnn_nn.PointwiseMaxPool2D(t1, 2),
            escnn_nn.R2Conv(t1, t2, 3, padding=1, bias=False), escnn_nn.InnerBatchNorm(t2), escnn_nn.ReLU(t2),
            escnn_nn.R2Conv(t2, t3, 3, padding=1, bias=False), escnn_nn.InnerBatchNorm(t3), escnn_nn.ReLU(t3),
            escnn_nn.PointwiseMaxPool2D(t3, 2), escnn_nn.GroupPooling(t3))
        self.head = head()

    def forward(self, x):
        return self.head(self.body(escnn_nn.GeometricTensor(x, self.in_type)).tensor)


def equifast_net(group: str, frame: str = "canonical") -> nn.Module:
    """The same network written with equifast layers (canonical frame: escnn's function, used when
    escnn is missing; view frame: equifast's default, a G-CNN of the same architecture)."""
    kw = dict(group=group, frame=frame, bias=False)
    a, b, c, d = FIELDS
    body = nn.Sequential(
        enn.LiftConv2d(1, a, 5, padding=2, **kw), enn.GroupBatchNorm2d(a), nn.ReLU(),
        enn.GroupConv2d(a, b, 3, padding=1, **kw), enn.GroupBatchNorm2d(b), nn.ReLU(), enn.PerCopy(nn.MaxPool2d(2)),
        enn.GroupConv2d(b, c, 3, padding=1, **kw), enn.GroupBatchNorm2d(c), nn.ReLU(),
        enn.GroupConv2d(c, d, 3, padding=1, **kw), enn.GroupBatchNorm2d(d), nn.ReLU(), enn.PerCopy(nn.MaxPool2d(2)),
        enn.GroupPool("max"))
    return nn.Sequential(body, head())


def _train_batchnorm(model: nn.Module, steps: int = 2) -> None:
    """A few training-mode batches so the running statistics are not the identity."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(16, 1, 28, 28))
    model.eval()


def _op_only(model: nn.Module) -> nn.Module:
    """Switch the eval fast path off in every conv layer of ``model`` (the op on every call)."""
    for m in model.modules():
        if isinstance(m, (enn.LiftConv2d, enn.GroupConv2d)):
            m._fast_path = lambda x: None
    return model


def contenders(group: str):
    """name -> eval-mode module, all computing the same function."""
    import copy
    torch.manual_seed(0)
    out = {}
    if ESCNN:
        net = EscnnNet(group)
        _train_batchnorm(net)
        out["escnn eval"] = net
        out["escnn export"] = nn.Sequential(net.body.export(), copy.deepcopy(net.head)).eval()
        make = lambda: nn.Sequential(from_escnn(net.body), copy.deepcopy(net.head)).eval()   # noqa: E731
    else:
        state = equifast_net(group)
        _train_batchnorm(state)
        state = state.state_dict()

        def make():
            m = equifast_net(group)
            m.load_state_dict(state)
            return m.eval()
    ours = make()
    out["equifast eval"] = ours
    out["equifast export"] = enn.export(ours)
    out["equifast op"] = _op_only(make())
    view = equifast_net(group, "view")
    _train_batchnorm(view)
    out["equifast view eval"] = view
    return out


def run(groups, batches, repeat: int):
    torch.set_num_threads(1)
    rows = []
    for group in groups:
        models = contenders(group)
        for batch in batches:
            x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                outs = {name: m(x) for name, m in models.items()}
            ref = outs["escnn eval" if ESCNN else "equifast op"]
            diffs = {name: float((o - ref).abs().max()) for name, o in outs.items() if name not in OTHER_FUNCTION}

            def call(m):
                def f():
                    with torch.no_grad():
                        return m(x)
                return f
            timings = compare({name: call(m) for name, m in models.items()}, "cpu", repeat=repeat,
                              min_sample_s=0.05)
            row = {"group": group, "batch": batch, "max_abs_diff_vs_reference": diffs,
                   "median_ms": {name: t["median_s"] * 1e3 for name, t in timings.items()},
                   "p20_p80_ms": {name: [t["p20_s"] * 1e3, t["p80_s"] * 1e3] for name, t in timings.items()},
                   "samples": {name: t["samples"] for name, t in timings.items()},
                   "calls_per_sample": {name: t["inner"] for name, t in timings.items()}}
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


def _format_row(row) -> str:
    med = row["median_ms"]
    parts = [f"{row['group']} batch {row['batch']:>3}:"] + [f"{k} {v:8.3f} ms" for k, v in med.items()]
    return "  ".join(parts)


def _speedups(row):
    med = row["median_ms"]
    pairs = [("equifast eval", "escnn eval"), ("equifast eval", "escnn export"),
             ("equifast export", "escnn export"), ("equifast eval", "equifast op"),
             ("equifast view eval", "escnn eval"), ("equifast view eval", "escnn export")]
    return {f"{a} vs {b}": med[b] / med[a] for a, b in pairs if a in med and b in med}


def markdown(env, rows) -> str:
    lines = ["# Eval inference, MNIST-size C4 / D4 G-CNN (CPU, one thread, float32)", "",
             f"Command: `{env['command']}`", "",
             f"Machine: {env['cpu']} ({env['cpu_count']} cores, shared), torch {env['torch']}, "
             f"python {env['python']}, equifast {env['equifast']} at {env['git_commit'][:10]}, "
             f"{'escnn ' + env['escnn'] if env['escnn'] else 'escnn NOT installed: ' + env['escnn_error']}, "
             f"numpy {env['numpy']}; "
             f"torch threads: 1; load average before {env['loadavg_start']}, after {env['loadavg_end']}.", "",
             "Network: lift 1->16 k5, group convs 16->32->32->32 k3, BN + ReLU after each, 2x2 max pools after "
             "the second and fourth conv, GroupPool, global average pool, Linear(32, 10); 28x28 inputs. "
             "All contenders but `equifast view eval` compute the same function (max |difference| to the reference below); times are "
             "medians of interleaved samples (`equifast.benchmark.timing.compare`).", ""]
    loads = [l[0] for l in (env["loadavg_start"], env["loadavg_end"]) if l]
    if loads and max(loads) > env["cpu_count"]:
        lines += [f"**The machine was oversubscribed** (1-minute load average up to {max(loads):.1f} on "
                  f"{env['cpu_count']} cores, from other jobs): absolute times are inflated and noisy; compare "
                  f"the contenders within a row (they were interleaved) and read differences smaller than the "
                  f"spread below as ties.", ""]
    names = list(rows[0]["median_ms"])
    lines.append("| group | batch | " + " | ".join(f"{n} (ms)" for n in names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for r in rows:
        lines.append(f"| {r['group']} | {r['batch']} | " + " | ".join(f"{r['median_ms'][n]:.3f}" for n in names) + " |")
    lines += ["", "Spread of the samples (20th - 80th percentile, ms):", ""]
    lines.append("| group | batch | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for r in rows:
        lines.append(f"| {r['group']} | {r['batch']} | " + " | ".join(
            f"{r['p20_p80_ms'][n][0]:.3f} - {r['p20_p80_ms'][n][1]:.3f}" for n in names) + " |")
    lines += ["", "Speed-ups (ratio of medians, > 1 means the first is faster):", ""]
    keys = list(_speedups(rows[0]))
    lines.append("| group | batch | " + " | ".join(keys) + " |")
    lines.append("|---|---|" + "---|" * len(keys))
    for r in rows:
        s = _speedups(r)
        lines.append(f"| {r['group']} | {r['batch']} | " + " | ".join(f"{s[k]:.2f}x" for k in keys) + " |")
    lines += ["", "`equifast op` differs from `equifast eval` only in the conv layers (the ops, re-expanding the "
              "filters on every call, instead of the cached operands).",
              "", "`equifast view eval` is not the ported network: it is the same architecture built natively "
              "in equifast's default frame (`frame=\"view\"`, its own random weights, batch norm statistics "
              "from two training batches), so it computes a different function and is not in the difference "
              "list. It has the same parameter count and the same dense FLOPs; in the view frame `auto` may "
              "run a group convolution in the group-Fourier basis (`fourier`), which the canonical frame "
              "(escnn's) cannot use.",
              "", "Max |output difference| to the reference "
              f"({'escnn eval' if env['escnn'] else 'equifast op'}):", ""]
    for r in rows:
        d = ", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_diff_vs_reference"].items())
        lines.append(f"* {r['group']} batch {r['batch']}: {d}")
    return "\n".join(lines) + "\n"


def rewrite_markdown(folder: str) -> None:
    """Regenerate results.md from results.json (after a change of the report format)."""
    with open(os.path.join(folder, "results.json")) as f:
        data = json.load(f)
    with open(os.path.join(folder, "results.md"), "w") as f:
        f.write(markdown(data["environment"], data["rows"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", nargs="+", default=["C4", "D4"], choices=["C4", "D4"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--out", default=None, help="results folder (default bench/results/inference-<date>)")
    args = p.parse_args(argv)
    date = datetime.datetime.now(datetime.timezone.utc)
    env = {"date": date.strftime("%Y-%m-%dT%H:%M:%SZ"),
           "command": " ".join([os.path.relpath(sys.executable, os.path.dirname(os.path.dirname(
               os.path.abspath(__file__))))] + sys.argv),
           "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": 1,
           "python": platform.python_version(), "torch": torch.__version__, "equifast": equifast.__version__,
           "escnn": ESCNN, "escnn_error": ESCNN_ERROR, "numpy": __import__("numpy").__version__,
           "git_commit": os.popen(f"git -C {os.path.dirname(os.path.abspath(__file__))} rev-parse HEAD").read().strip(),
           "loadavg_start": loadavg()}
    if not ESCNN:
        print(f"escnn could not be imported ({ESCNN_ERROR}); timing equifast's contenders only", flush=True)
    rows = run(args.groups, args.batches, args.repeat)
    env["loadavg_end"] = loadavg()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"inference-{date.strftime('%Y-%m-%d')}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(env, rows))
    print(markdown(env, rows))


if __name__ == "__main__":
    main()
