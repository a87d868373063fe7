"""Permutation-invariant set regression with equifast.parameter_sharing (Deep Sets).

Parameter estimation is permutation-invariant: from a set {X_1, ..., X_n} of samples of a
Gamma(shape k, scale theta) distribution, predict (log k, log theta). A DeepSets model

    x [B, n, 1] -> phi: Linear -> ReLU -> EquivariantLinear(S_n) -> ReLU -> Linear -> ReLU
                -> mean over the set -> rho: MLP -> (log k, log theta)

(one S_n parameter-sharing layer inside phi, i.e. lambda*x + gamma*sum(x), so every element
sees the set's context) is compared with a plain MLP on the flattened set (not invariant) and
with the classical method-of-moments estimator (k = mean^2 / var, theta = var / mean), on the
test sets as drawn and on randomly permuted copies of them.

    python examples/deep_sets_regression.py [--steps 800] [--train-sets 4000] [--seed 0] [--threads 1]
"""
import argparse
import os
import sys
import time

import torch
from torch import nn

try:
    import equifast  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from equifast.parameter_sharing import DeepSets, EquivariantLinear, symmetric


def make_sets(num, n, gen):
    shape = torch.empty(num).uniform_(0.5, 5.0, generator=gen)
    scale = torch.empty(num).uniform_(0.5, 2.0, generator=gen)
    # torch.distributions samples from the global RNG: seed it from our generator (reproducible)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    x = torch.distributions.Gamma(shape[:, None].expand(num, n), torch.ones(num, n)).sample() * scale[:, None]
    y = torch.stack([shape.log(), scale.log()], dim=1)
    return x[..., None], y


def deep_sets(n, width=32):
    s = symmetric(n)
    phi = nn.Sequential(nn.Linear(1, width), nn.ReLU(),
                        EquivariantLinear(s, s, width, width), nn.ReLU(),
                        nn.Linear(width, 64), nn.ReLU())
    rho = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    return DeepSets(phi, rho, pool="mean")


class FlatMLP(nn.Module):
    def __init__(self, n, width=128):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 2))

    def forward(self, x):
        return self.net(x)


def train(model, x, y, steps, batch, lr, gen):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def moments(x):
    m, v = x[..., 0].mean(1), x[..., 0].var(1)
    return torch.stack([(m * m / v).log(), (v / m).log()], dim=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50, help="samples per set")
    p.add_argument("--train-sets", type=int, default=4000)
    p.add_argument("--test-sets", type=int, default=2000)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (these models are tiny: 1 is fastest and robust on a busy machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    gen = torch.Generator().manual_seed(args.seed)
    xtr, ytr = make_sets(args.train_sets, args.n, gen)
    xte, yte = make_sets(args.test_sets, args.n, gen)
    perm = torch.argsort(torch.rand(args.test_sets, args.n, generator=gen), dim=1)
    xte_perm = torch.gather(xte, 1, perm[..., None])
    # normalise the inputs by a constant (the training sets' overall scale); invariance is kept
    scale = xtr.mean()
    xtr, xte, xte_perm = xtr / scale, xte / scale, xte_perm / scale

    results = {}
    torch.manual_seed(args.seed)
    models = {"DeepSets (S_n EquivariantLinear)": deep_sets(args.n), "MLP on the flattened set": FlatMLP(args.n)}
    for name, model in models.items():
        t = time.time()
        train(model, xtr, ytr, args.steps, args.batch, 2e-3, torch.Generator().manual_seed(args.seed + 1))
        with torch.no_grad():
            pa, pb = model(xte), model(xte_perm)
        results[name] = (nn.functional.mse_loss(pa, yte).item(), nn.functional.mse_loss(pb, yte).item(),
                         (pa - pb).abs().max().item(), time.time() - t)
    mom = moments(xte * scale)
    mom_mse = nn.functional.mse_loss(mom, yte).item()

    print(f"Gamma(k, theta) parameter estimation from sets of n={args.n} samples; "
          f"{args.train_sets} training sets, {args.test_sets} test sets, {args.steps} Adam steps")
    print(f"{'model':36s} {'test MSE':>10s} {'MSE permuted':>13s} {'max |change|':>13s} {'train s':>8s}")
    for name, (a, b, d, s) in results.items():
        print(f"{name:36s} {a:10.4f} {b:13.4f} {d:13.2e} {s:8.1f}")
    print(f"{'method of moments (no training)':36s} {mom_mse:10.4f} {mom_mse:13.4f} {0.0:13.2e} {0.0:8.1f}")
    print(f"(MSE of (log k, log theta); 'max |change|' = largest change of a prediction when the test sets "
          f"are permuted). Total {time.time() - t0:.1f}s")
    return results, mom_mse


if __name__ == "__main__":
    main()
