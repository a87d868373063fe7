"""Training-system integration of equifast layers, for every backend present.

* DistributedDataParallel: a small network of equifast layers (``equifast.nn.LiftConv2d`` /
  ``GroupConv2d``, both frames) trained for a few SGD-with-momentum steps under DDP (gloo,
  2 CPU processes started here with ``torch.multiprocessing.spawn``, rendezvous on a free port of
  127.0.0.1) ends with the same weights as single-process training on the whole batch.
* state_dict: save / load round-trips bit for bit (also a DDP checkpoint into a plain model).
* torch.compile (inductor, fullgraph=True): the compiled model matches eager, forward and grads.

One spawn trains every backend (the processes' start-up is the expensive part); the tests then
compare per backend.
"""
import io
import os
import socket
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import equifast



def _runs_the_net(name):
    """Whether backend ``name`` runs both layers of ``Net`` (a view lift and a canonical 3x3 group conv;
    e.g. the group_conv-only "fourier" backend does not: its refusals are tested elsewhere)."""
    from equifast import backends
    from equifast._args import make_plan
    mod = backends.module(name)
    lift = make_plan("C4", 1, 1, 1, "view", 3, 3, "lift_conv")
    gconv = make_plan("C4", 1, 1, 1, "canonical", 3, 3, "group_conv")
    return (backends.supports(mod, lift, torch.zeros(1, 1, 8, 8), torch.zeros(3, 1, 3, 3))[0]
            and backends.supports(mod, gconv, torch.zeros(1, 4, 3, 8, 8), torch.zeros(4, 4, 3, 3, 3))[0])


BACKENDS = [name for name in equifast.available_backends("cpu") if _runs_the_net(name)]
WORLD = 2
STEPS = 3
GLOBAL_BATCH = 4
INTERPRETED = {"triton"} if os.environ.get("TRITON_INTERPRET") == "1" else set()


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------
# the network and its training loop (module level: the spawned processes import them)
# ---------------------------------------------------------------------------
def _layers():
    """equifast.nn's layers when present, else minimal modules over the public ops."""
    try:
        from equifast.nn import GroupConv2d, LiftConv2d
        return LiftConv2d, GroupConv2d
    except ImportError:  # pragma: no cover - equifast.nn not there yet
        class _Conv(nn.Module):
            def __init__(self, op, shape, group, padding, frame, backend):
                super().__init__()
                self.op, self.group, self.padding, self.frame, self.backend = op, group, padding, frame, backend
                self.weight = nn.Parameter(torch.randn(*shape) / shape[1] ** 0.5)
                self.bias = nn.Parameter(torch.zeros(shape[0]))

            def forward(self, x):
                return self.op(x, self.weight, self.bias, group=self.group, padding=self.padding,
                               frame=self.frame, backend=self.backend)

        def lift(cin, cout, k, padding=0, group="C4", frame="view", backend="auto"):
            return _Conv(equifast.lift_conv, (cout, cin, k, k), group, padding, frame, backend)

        def gconv(cin, cout, k, padding=0, group="C4", frame="view", backend="auto"):
            n = equifast.groups.get(group).order
            return _Conv(equifast.group_conv, (cout, n, cin, k, k), group, padding, frame, backend)
        return lift, gconv


class Net(nn.Module):
    """lift (view frame) -> relu -> group conv (canonical frame, strided) -> relu -> invariant pool -> linear."""

    def __init__(self, backend, group="C4"):
        super().__init__()
        Lift, GConv = _layers()
        self.lift = Lift(1, 3, 3, padding=1, group=group, backend=backend)
        self.gconv = GConv(3, 4, 3, padding=1, group=group, frame="canonical", backend=backend)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        s = F.relu(self.lift(x))
        s = F.relu(self.gconv(s))
        return self.head(s.mean(dim=(3, 4)).amax(dim=1))


def make_model(backend, seed=0):
    torch.manual_seed(seed)
    return Net(backend)


def make_data(steps=STEPS, batch=GLOBAL_BATCH, size=6):
    gen = torch.Generator().manual_seed(1234)
    xs = torch.randn(steps, batch, 1, size, size, generator=gen)
    ys = torch.randint(0, 3, (steps, batch), generator=gen)
    return xs, ys


def train(model, xs, ys, rank=0, world=1):
    """SGD with momentum; each process takes its contiguous share of every global batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    per = xs.shape[1] // world
    losses = []
    for x, y in zip(xs, ys):
        x, y = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def _ddp_worker(rank, world, port, backends, out_path):
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        xs, ys = make_data()
        results = {}
        for backend in backends:
            model = make_model(backend)
            ddp = nn.parallel.DistributedDataParallel(model)
            losses = train(ddp, xs, ys, rank, world)
            results[backend] = {"state_dict": {k: v.detach().clone() for k, v in ddp.module.state_dict().items()},
                                "losses": losses}
            dist.barrier()
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results():
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "ddp.pt")
        mp.spawn(_ddp_worker, args=(WORLD, _free_port(), list(BACKENDS), out_path), nprocs=WORLD, join=True)
        return torch.load(out_path)


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_matches_single_process(ddp_results, backend):
    xs, ys = make_data()
    model = make_model(backend)
    train(model, xs, ys)
    got = ddp_results[backend]["state_dict"]
    want = model.state_dict()
    assert set(got) == set(want), f"state_dict keys differ: {sorted(set(got) ^ set(want))}"
    initial = make_model(backend).state_dict()
    for name, value in want.items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{backend}: DDP and single-process {name} differ: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip(ddp_results, backend):
    torch.manual_seed(5)
    x = torch.randn(2, 1, 6, 6)
    model = make_model(backend)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = make_model(backend, seed=1)
    assert not torch.equal(other(x), model(x))
    other.load_state_dict(torch.load(buf), strict=True)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(other(x), model(x)), f"{backend}: a reloaded model computes something else"
    # a DDP checkpoint (saved from ddp.module) loads into a plain model, strict
    ckpt = ddp_results[backend]["state_dict"]
    assert not any(k.startswith("module.") for k in ckpt)
    plain = make_model(backend, seed=2)
    plain.load_state_dict(ckpt, strict=True)
    with tempfile.TemporaryDirectory() as tmp:  # and through a file
        path = os.path.join(tmp, "model.pt")
        torch.save(plain.state_dict(), path)
        again = make_model(backend, seed=3)
        again.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert torch.equal(again(x), plain(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_model_matches_eager(backend):
    torch._dynamo.reset()
    torch.manual_seed(7)
    x = torch.randn(2, 1, 6, 6)
    y = torch.randint(0, 3, (2,))
    eager = make_model(backend)
    compiled_src = make_model(backend)
    compiled = torch.compile(compiled_src, backend="inductor", fullgraph=True)

    def step(m, params):
        loss = F.cross_entropy(m(x), y)
        grads = torch.autograd.grad(loss, params)
        return loss.detach(), grads

    le, ge = step(eager, list(eager.parameters()))
    lc, gc = step(compiled, list(compiled_src.parameters()))
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-6)
    for (name, _), a, b in zip(eager.named_parameters(), gc, ge):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{backend}: grad of {name}: {m}")
