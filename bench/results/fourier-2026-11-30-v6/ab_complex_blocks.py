# Usage: python ab_complex_blocks.py THREADS [N] [CHANNELS]  (from the repository root with the .venv python; B=8 at 32 channels, else 4)
import sys, torch, equifast
from equifast import groups
from equifast._args import make_plan
from equifast.benchmark.timing import compare
from equifast.backends.fourier import group_conv as gc, basis
t = int(sys.argv[1]); n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
torch.set_num_threads(t)
perm = list(range(n)); perm[1], perm[2] = 2, 1          # relabel elements 1 <-> 2: same group, other numbering
inv = [perm.index(i) for i in range(n)]
cay = [[perm[(inv[a] + inv[b]) % n] for b in range(n)] for a in range(n)]
name = f"C{n}-relabelled"
if name not in groups.names():
    groups.custom(name, cay, lambda g, H, W: torch.arange(H * W), exact=True)
B = basis.get(groups.get(name))
print("blocks:", [(b.d, b.units) for b in B.blocks], "filter blocks", B.filter_blocks, file=sys.stderr)
C = int(sys.argv[3]) if len(sys.argv) > 3 else 32; Bt = 8 if C == 32 else 4
gen = torch.Generator().manual_seed(0)
s = torch.randn(Bt, n, C, 32, 32, generator=gen); w = torch.randn(C, n, C, 3, 3, generator=gen) / (n * C * 9) ** 0.5
go = torch.randn(Bt, n, C, 32, 32, generator=gen)
plans = {g: make_plan(g, 1, 1, 1, "view", 3, 3, "group_conv") for g in (f"C{n}", name)}
def step(g):
    def f():
        out = gc.group_conv_forward(s, w, None, plans[g])
        gc.group_conv_backward(go, s, w, plans[g], (True, True, False))
        del out
    return f
s_req, w_req = s.clone().requires_grad_(), w.clone().requires_grad_()
def dense():
    out = equifast.group_conv(s_req, w_req, None, group=f"C{n}", padding=1, backend="torch")
    torch.autograd.grad(out, (s_req, w_req), go)
fns = {"torch": dense, "gauss": step(f"C{n}"), "blocks": step(name)}
for f in fns.values():
    for _ in range(3): f()
st = compare(fns, "cpu", repeat=11, budget_s=60, settle=1)
m = {k: v["median_s"] * 1e3 for k, v in st.items()}
print(f"C{n} {C}ch {t}t torch {m['torch']:.1f} gauss {m['gauss']:.1f} blocks {m['blocks']:.1f} | gauss/blocks {m['gauss']/m['blocks']:.2f} | torch/gauss {m['torch']/m['gauss']:.2f} torch/blocks {m['torch']/m['blocks']:.2f}", flush=True)
