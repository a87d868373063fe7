"""Benchmark of the ``fourier`` backend against the ``torch`` backend (the dense filter bank), on CPU
(oneDNN) or CUDA (cuDNN: ``--device cuda``).

Sections (each writes one JSON file under --out, plus a summary.md):

* ``ops``: group_conv forward+backward, fourier vs torch, C4 / D4 / C8 / C16 (``--groups``), 32->32
  (B=8) and 64->64 (B=4) channels on 32x32, 3x3, padding 1, float32 (``--dtype``), 1 and 2 threads
  (``--threads``; CUDA: one row per case);
* ``sweep``: small shapes (C4 / D4, 4-32 channels, 8x8-32x32, 3x3 and 1x1) at 1 thread, from which
  ``equifast.backends.fourier.preferred`` (what ``auto`` takes) is set;
* ``memory``: CPU: extra peak resident memory of one forward+backward, each contender in its own
  process with glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_), so that every tensor
  buffer is mapped on allocation and unmapped on free: the peak then follows the live tensors instead
  of what the heap happened to keep from the first call (without it the same run varied by 2x).
  CUDA: the peak of ``torch.cuda.max_memory_allocated`` during a second forward+backward above what
  was allocated before it (exact: the caching allocator counts live tensors);
* ``networks``: one SGD training step of ResGCNN (C4, D4; widths 32/64/128) and of Figure3Net on 8x8
  digit-sized inputs, with every op on backend="auto" vs backend="torch" (on CUDA, whatever ``auto``
  picks there: ``equifast.backends.fourier.preferred`` keeps fourier to the CPU until it is measured).

Contenders are interleaved round by round (``equifast.benchmark.timing.compare``; on CUDA each sample
is one call between CUDA events after an L2 flush), medians reported. The machine is shared: the load
average is recorded before and after every section.

    .venv/bin/python bench/fourier_group_conv.py --out bench/results/fourier-<date> [--sections ops,sweep,...]
    python bench/fourier_group_conv.py --device cuda --out bench/results/fourier-<gpu>-<date>
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

import equifast
from equifast.benchmark.machine import environment
from equifast.benchmark.timing import compare

GROUPS = ("C4", "D4", "C8", "C16")
SHAPES = ((32, 8), (64, 4))         # (channels, batch) of the ops and memory sections
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def op_cases(args):
    return [(g, c, b) for g in args.groups for c, b in SHAPES]


def machine(device="cpu"):
    """Where the run happened (``equifast.benchmark.machine.environment``: CPU, versions, allocator,
    GPU, CUDA, cuDNN and its TF32 switch) and the command line."""
    return dict(environment(device), command=" ".join([os.path.basename(sys.executable)] + sys.argv))


def load():
    return os.getloadavg()


def running_tasks():
    """Tasks running or runnable right now, this process included (/proc/loadavg)."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0])


def wait_quiet(seconds):
    """Wait up to ``seconds`` for 3 consecutive seconds with no other runnable task (other jobs on a
    shared machine: at two threads every parallel region may wait for a preempted thread). Returns
    whether it was quiet."""
    quiet, end = 0, time.time() + seconds
    while time.time() < end:
        quiet = quiet + 1 if running_tasks() <= 1 else 0
        if quiet >= 3:
            return True
        time.sleep(1)
    return False


def op_callable(backend, group, C_in, C_out, B, HW, k=3, dtype=torch.float32, channels_last=False, device="cpu"):
    """One group_conv forward+backward (grad input and grad weight) with ``backend``, on fixed inputs."""
    n = equifast.groups.get(group).order
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(B, n, C_in, HW, HW, generator=gen).to(device, dtype)
    if channels_last:     # memory (B, H, W, n, C)
        s = s.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    s.requires_grad_()
    w = (torch.randn(C_out, n, C_in, k, k, generator=gen) / (n * C_in * k * k) ** 0.5).to(device, dtype)
    w.requires_grad_()
    go = torch.randn(B, n, C_out, HW, HW, generator=gen).to(device, dtype)
    if channels_last:     # the output's layout, as autograd would hand it over
        go = go.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)

    def run():
        out = equifast.group_conv(s, w, None, group=group, padding=k // 2, backend=backend)
        return out, torch.autograd.grad(out, (s, w), go)
    return run


def _threads(args):
    """The thread counts to run (CPU), or [None] on CUDA (one row per case)."""
    return args.threads if args.device == "cpu" else [None]


def _set_threads(threads):
    if threads is not None:
        torch.set_num_threads(threads)


def ops(args):
    rows = []
    for threads in _threads(args):
        _set_threads(threads)
        for group, C, B in op_cases(args):
            fns = {be: op_callable(be, group, C, C, B, 32, dtype=DTYPES[args.dtype],
                                   channels_last=args.layout == "channels_last", device=args.device)
                   for be in ("torch", "fourier")}
            for fn in fns.values():         # warm-up beyond compare's one call: primitives, allocator state
                for _ in range(args.warmup):
                    fn()
            quiet = wait_quiet(args.wait_quiet) if args.wait_quiet else None
            st = compare(fns, args.device, repeat=args.repeat, budget_s=args.budget, settle=args.settle)
            row = {"group": group, "C": C, "B": B, "HW": 32, "threads": threads, "layout": args.layout,
                   "dtype": args.dtype, "device": args.device,
                   "torch_ms": st["torch"]["median_s"] * 1e3, "fourier_ms": st["fourier"]["median_s"] * 1e3,
                   "samples": st["torch"]["samples"], "settle": args.settle, "load": load(), "quiet_before": quiet,
                   "running_after": running_tasks()}
            row["speedup"] = row["torch_ms"] / row["fourier_ms"]
            rows.append(row)
            print(f"ops {args.device} t={threads} {group} {C}->{C} B={B}: torch {row['torch_ms']:.2f} ms, fourier "
                  f"{row['fourier_ms']:.2f} ms, x{row['speedup']:.2f}  (load {row['load'][0]:.1f})", flush=True)
    _set_threads(1 if args.device == "cpu" else None)
    return rows


SWEEP = [(g, c, b, hw, k) for g in ("C4", "D4") for c in (4, 8, 16, 32)
         for b, hw in ((8, 8), (1, 16), (8, 16), (1, 32)) for k in (3, 1)]


def sweep(args):
    _set_threads(1 if args.device == "cpu" else None)
    rows = []
    for group, C, B, HW, k in SWEEP:
        st = compare({be: op_callable(be, group, C, C, B, HW, k, device=args.device) for be in ("torch", "fourier")},
                     args.device, repeat=args.repeat, budget_s=min(args.budget, 2.0))
        n = equifast.groups.get(group).order
        row = {"group": group, "C": C, "B": B, "HW": HW, "k": k,
               "dense_mflop": 2 * B * HW * HW * (n * C) ** 2 * k * k / 1e6,
               "torch_ms": st["torch"]["median_s"] * 1e3, "fourier_ms": st["fourier"]["median_s"] * 1e3}
        row["speedup"] = row["torch_ms"] / row["fourier_ms"]
        rows.append(row)
        print(f"sweep {group} C={C} B={B} {HW}x{HW} k={k} ({row['dense_mflop']:.0f} MFLOP dense fwd): "
              f"x{row['speedup']:.2f}", flush=True)
    return rows


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_child(backend, group, C, B):
    """Peak RSS of a second forward+backward above the resident set before it (Linux: clear_refs 5
    resets the peak, VmHWM)."""
    torch.set_num_threads(1)
    run = op_callable(backend, group, C, C, B, 32)
    run()                                   # first call: one-time primitive / kernel set-up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    run()
    print(json.dumps({"extra_peak_mib": (_status_kib("VmHWM") - before) / 1024}))


MEMORY_ENV = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024))


def peak_cuda(backend, group, C, B, device):
    """MiB allocated at the peak of a second forward+backward on ``device`` above what was allocated
    before it (the caching allocator's exact count of live tensors)."""
    run = op_callable(backend, group, C, C, B, 32, device=device)
    run()                                   # first call: cuDNN algorithm choice, workspaces
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20


def memory(args):
    rows = []
    for group, C, B in op_cases(args):
        row = {"group": group, "C": C, "B": B, "device": args.device}
        samples = {"torch": [], "fourier": []}
        for _ in range(3):                      # CPU: RSS varies with the allocator's state: median of 3 processes
            for be in samples:
                if args.device != "cpu":
                    samples[be].append(peak_cuda(be, group, C, B, args.device))
                    continue
                out = subprocess.run([sys.executable, __file__, "--peak-child", be, group, str(C), str(B)],
                                     capture_output=True, text=True, check=True, env=MEMORY_ENV)
                samples[be].append(json.loads(out.stdout.strip().splitlines()[-1])["extra_peak_mib"])
        for be, values in samples.items():
            row[be + "_mib"] = sorted(values)[1]
            row[be + "_samples_mib"] = values
        rows.append(row)
        print(f"memory {args.device} {group} {C}->{C} B={B}: extra peak torch {row['torch_mib']:.0f} MiB, "
              f"fourier {row['fourier_mib']:.0f} MiB", flush=True)
    return rows


class _Invariant(torch.nn.Module):
    """Figure3Net's invariant class scores [B, 10] as the forward."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.invariant(x)


def _train_step(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def networks(args):
    from equifast import models
    rows = []
    _set_threads(1 if args.device == "cpu" else None)
    nets = [("ResGCNN", g, dict(widths=(32, 64, 128)), (8, 3, 32, 32)) for g in ("C4", "D4")] + \
           [("Figure3Net", g, dict(), (32, 1, 8, 8)) for g in ("C4", "D4")]
    for name, group, kw, shape in nets:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).to(args.device)
        steps = {}
        for be in ("torch", "auto"):
            torch.manual_seed(0)
            model = getattr(models, name)(group=group, backend=be, **kw).to(args.device)
            if name == "Figure3Net":
                model = _Invariant(model)
            y = torch.randint(0, 10, (shape[0],), generator=gen).to(args.device)
            steps[be] = _train_step(model, x, y)
        st = compare(steps, args.device, repeat=args.repeat, budget_s=args.budget * 2)
        row = {"net": name, "group": group, "input": list(shape), "kwargs": {k: list(v) for k, v in kw.items()},
               "device": args.device,
               "torch_ms": st["torch"]["median_s"] * 1e3, "auto_ms": st["auto"]["median_s"] * 1e3, "load": load()}
        row["speedup"] = row["torch_ms"] / row["auto_ms"]
        rows.append(row)
        print(f"network {name} {group} {shape}: torch {row['torch_ms']:.1f} ms, auto {row['auto_ms']:.1f} ms, "
              f"x{row['speedup']:.2f}", flush=True)
    return rows


def summary(results, meta):
    cuda = meta.get("device", "cpu") != "cpu"
    lines = [f"# fourier vs torch backend ({'CUDA' if cuda else 'CPU'})", "", f"- command: `{meta['command']}`",
             f"- machine: {meta['cpu']}, {meta['cpu_count']} cores (shared with other jobs: load averages recorded "
             f"per row), torch {meta['torch']}, Python {meta['python']}", f"- date: {meta['date']}",
             f"- allocator: {meta.get('allocator', 'not recorded')}"]
    if cuda:
        lines += [f"- GPU: {meta['device_name']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']} (cudnn.allow_tf32 "
                  f"{meta['cudnn_allow_tf32']}, matmul.allow_tf32 {meta['matmul_allow_tf32']}); each sample one "
                  f"call between CUDA events after an L2 flush", ""]
    else:
        lines += ["- GPU: none (this run is CPU only: `--device cuda` measures the CUDA ratios)", ""]
    if "ops" in results:
        settle = results["ops"][0].get("settle", 0) if results["ops"] else 0
        dtype = results["ops"][0].get("dtype", "float32") if results["ops"] else "float32"
        lines += [f"## group_conv forward+backward, {dtype}, 32x32, 3x3 (medians, interleaved)", "",
                  f"Each sample follows {settle} untimed call(s) of the same contender" if settle else
                  "Each sample follows the other contender's call (no settling calls)", "",
                  "| group | C_in->C_out | B | threads | torch ms | fourier ms | speedup | load (1 min) | "
                  "quiet before | runnable after |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['group']} | {r['C']}->{r['C']} | {r['B']} | {r['threads'] or '-'} | {r['torch_ms']:.2f} | "
                  f"{r['fourier_ms']:.2f} | {r['speedup']:.2f}x | {r['load'][0]:.1f} | "
                  f"{ {True: 'yes', False: 'no', None: '-'}[r.get('quiet_before')] } | {r.get('running_after', '-')} |"
                  for r in results["ops"]]
        lines.append("")
    if "memory" in results:
        lines += ["## extra peak allocated CUDA memory of one forward+backward after a first one "
                  "(torch.cuda.max_memory_allocated, median of 3)" if cuda else
                  "## extra peak RSS of one forward+backward after a first one (1 thread, own process, "
                  "MALLOC_MMAP_THRESHOLD_=65536, median of 3 processes)", "",
                  "| group | C | B | torch MiB | fourier MiB |", "|---|---|---|---|---|"]
        lines += [f"| {r['group']} | {r['C']} | {r['B']} | {r['torch_mib']:.0f} | {r['fourier_mib']:.0f} |"
                  for r in results["memory"]]
        lines.append("")
    if "networks" in results:
        lines += [f"## training step (forward, cross-entropy, backward, SGD), {'CUDA' if cuda else '1 thread'}", "",
                  "| network | group | input | torch ms | auto ms | speedup |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['net']} {r['kwargs'] or ''} | {r['group']} | {r['input']} | {r['torch_ms']:.1f} | "
                  f"{r['auto_ms']:.1f} | {r['speedup']:.2f}x |" for r in results["networks"]]
        lines.append("")
    if "sweep" in results:
        lines += [f"## small shapes, {'CUDA' if cuda else '1 thread'} (sets `preferred`)", "",
                  "| group | C | B | HxW | k | dense fwd MFLOP | torch ms | fourier ms | speedup |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['group']} | {r['C']} | {r['B']} | {r['HW']} | {r['k']} | {r['dense_mflop']:.0f} | "
                  f"{r['torch_ms']:.2f} | {r['fourier_ms']:.2f} | {r['speedup']:.2f}x |" for r in results["sweep"]]
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--peak-child":
        _peak_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    p.add_argument("--sections", default="ops,memory,networks,sweep")
    p.add_argument("--groups", type=lambda v: v.split(","), default=list(GROUPS),
                   help="ops and memory: comma-separated groups (default C4,D4,C8,C16)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="ops: dtype of inputs and weights")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--budget", type=float, default=10.0, help="seconds per comparison (at least 3 rounds)")
    p.add_argument("--threads", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2],
                   help="thread counts of the ops section (default 1,2)")
    p.add_argument("--warmup", type=int, default=0, help="ops: extra untimed calls of each contender per row")
    p.add_argument("--layout", choices=("contiguous", "channels_last"), default="contiguous",
                   help="ops: memory layout of the input stack and of grad_out")
    p.add_argument("--settle", type=int, default=0,
                   help="ops: untimed calls of a contender right before each of its samples (0: a sample "
                        "follows the other contender's call; see equifast.benchmark.timing.compare)")
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="ops: before each row wait up to this many seconds for no other runnable task")
    args = p.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda[:index], got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    unknown = [s for s in args.sections.split(",") if s not in ("ops", "memory", "networks", "sweep")]
    if unknown:
        p.error(f"--sections: unknown {', '.join(unknown)} (choose from ops, memory, networks, sweep)")
    for g in args.groups:
        try:
            equifast.groups.get(g)
        except Exception as exc:
            p.error(f"--groups: {g!r} is not a group equifast knows ({exc})")
    os.makedirs(args.out, exist_ok=True)
    meta = machine(args.device)
    meta["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    ran = {}
    for section in args.sections.split(","):
        before = load()
        ran[section] = globals()[section](args)
        with open(os.path.join(args.out, f"{section}.json"), "w") as f:
            json.dump({"machine": meta, "load_before": before, "load_after": load(), "rows": ran[section]}, f,
                      indent=1)
        write_summary(args.out, ran, meta)      # after every section: a run cut short keeps its summary


def write_summary(out, ran, meta):
    """summary.md of the sections just run, and of earlier runs' sections found in the same folder."""
    results = {}
    for section in ("ops", "memory", "networks", "sweep"):
        path = os.path.join(out, f"{section}.json")
        if section in ran:
            results[section] = ran[section]
        elif os.path.exists(path):
            with open(path) as f:
                results[section] = json.load(f)["rows"]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary(results, meta))

if __name__ == "__main__":
    main()
