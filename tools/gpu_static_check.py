#!/usr/bin/env python3
"""Static sm_90 analysis of the Triton kernels: compiles without a GPU and reads the SASS.

Every kernel is compiled for sm_90 (``triton.compile(..., target=GPUTarget("cuda", 90, 32))``)
with exactly the arguments the backend's host functions pass for the benchmark shapes
(``equifast.benchmark.cases.CASES``): the host functions run on ``meta`` tensors with the launcher
replaced by a recorder, and each recorded launch is compiled once per autotuning config. The
cubin is read with ``cuobjdump`` from Triton's own ``backends/nvidia/bin``. Reported per variant:
registers, stack/spill instructions, shared memory, MMA kind (HGMMA/HMMA/FFMA), global load and
store widths, the innermost MMA loop (instructions, integer share, integer-division sequences) and
the modelled warp-instructions per output.

Fails (exit 1) on a compile error, a config that needs more shared memory than sm_90 gives a block
(227 KB), or, in any kernel of an exact group (forward or backward), a spill (local-memory store)
or an integer-division sequence in the inner loop.

The "model" columns are static estimates, not measurements (see ``MODEL`` below for its
assumptions). Works with Triton 3.6 (the GPU machine's) and 3.8.

    python tools/gpu_static_check.py --out bench/results/static-<date>      # everything
    python tools/gpu_static_check.py --subset                                 # CI: a few minutes
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_LIMIT = 227 * 1024          # the most dynamic shared memory one block can get on sm_90
EXACT = ("C1", "C2", "C4", "D1", "D2", "D4")   # groups acting by exact pixel permutations

# The issue-bound model (static; every number below is an assumption, not a measurement):
# an H100 SXM (the peers below were measured on one): 132 SMs, 4 warp schedulers per SM, each
# issuing one warp-instruction per cycle at 1.755 GHz; HBM at 3.35 TB/s of which 90% is reachable;
# dense bf16/fp16 tensor cores at 990 TFLOP/s, tf32 at half of that. A kernel takes the largest
# of (a) issue time: all warp-instructions of the grid (instructions outside the inner loop once
# per outer trip, the inner loop body once per trip) spread evenly over all schedulers,
# (b) memory time: compulsory bytes (input, weight, output once) at the reachable bandwidth,
# (c) tensor-core time of the padded tiles; plus 3 us of launch latency. Ignored: stalls
# (latency not hidden by other warps), tail effects of the last wave, L2 misses beyond compulsory
# traffic, and the autotuner's choice (the best modelled config is taken).
MODEL = dict(sms=132, schedulers=4, clock_hz=1.755e9, hbm_bytes_s=3.35e12 * 0.9,
             mma_flops_s=990e12, launch_s=3e-6)

# Forward timings of peer implementations measured on an H100 by the issue's author (ms): the
# naive loop over group elements and filter rotation + cuDNN (one conv2d with n·C_out filters).
PEERS_H100_MS = {
    "mnist_c4_b1024": dict(naive=0.527, rotation_cudnn=0.262),
    "cifar_c4": dict(naive=0.239, rotation_cudnn=0.090),
    "imagenet_stem_c4": dict(naive=4.19, rotation_cudnn=2.87),
    "deep_c4": dict(naive=0.309, rotation_cudnn=0.036),
    "group_conv_c4": dict(naive=0.386, rotation_cudnn=0.180),
}

DTYPES = ("bfloat16", "float16", "float32")
FRAMES = ("view", "canonical")
LAYOUTS = ("contiguous", "channels_last")
PASSES = ("forward", "backward")
# Without selection flags: the forward of every shape in bfloat16 (both frames, both layouts) and of
# three shapes in float32 (tf32 MMA; view frame, contiguous; float16 compiles like bfloat16), the backward of every shape in bfloat16 (view,
# contiguous), each over its whole (pruned) autotuning space.
DEFAULT = (dict(cases=None, dtypes=("bfloat16",), frames=FRAMES, layouts=LAYOUTS, passes=("forward",), limit=0),
           dict(cases=("mnist_c4_b1024", "deep_c4", "group_conv_c4"), dtypes=("float32",), frames=("view",),
                layouts=("contiguous",), passes=("forward",), limit=0),
           dict(cases=None, dtypes=("bfloat16",), frames=("view",), layouts=("contiguous",),
                passes=("backward",), limit=0))
# The CI subset: the forward of five shapes over their whole (pruned) autotuning space, and the
# backward of two shapes over the first two configs of theirs.
SUBSET = (dict(cases=("mnist_c4_b1024", "cifar_d4", "deep_c4", "group_conv_c4", "cifar_c8_interp"),
               dtypes=("bfloat16",), frames=("view",), layouts=("channels_last",), passes=("forward",), limit=0),
          dict(cases=("mnist_c4_b1024", "group_conv_c4"), dtypes=("bfloat16",), frames=("view",),
               layouts=("contiguous",), passes=("backward",), limit=2))


# ---------------------------------------------------------------------------
# Recording the host functions' launches
# ---------------------------------------------------------------------------
class _Recorder:
    """Stands in for ``_common.launcher``'s kernel: records (kernel, args, kwargs, grid, configs)."""
    launches: list = []

    def __init__(self, kernel, key, configs=None):
        from equifast.backends.triton import _common
        self.fn = kernel if hasattr(kernel, "params") else kernel.fn     # the JITFunction
        self.configs = (configs or _common.gemm_configs)()

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            _Recorder.launches.append((self.fn, args, kwargs, grid, self.configs))
        return launch


def record_launches(case, dtype_name, frame, layout, pass_):
    """[(jit function, args, kwargs)] the triton backend launches for one benchmark call."""
    import torch
    from equifast._args import make_plan
    from equifast.backends.triton import _common, group_conv, lift_conv
    dtype = getattr(torch, dtype_name)
    x = torch.empty(case.input_shape, device="meta", dtype=dtype)
    w = torch.empty(case.weight_shape, device="meta", dtype=dtype)
    if layout == "channels_last":
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    plan = make_plan(case.group, case.stride, case.pad, 1, frame, case.kernel, case.kernel, case.op)
    from equifast.backends.triton import _forward
    mod = lift_conv if case.op == "lift_conv" else group_conv
    saved = _common.launcher, _forward.channels_last_copy
    _common.launcher = lambda kernel, key, configs=None: (_Recorder(kernel, key, configs), {})
    _Recorder.launches = []

    def copy(t):                                 # a layout copy: recorded as a memory-bound pseudo-launch
        _Recorder.launches.append((None, dict(bytes=2 * t.numel() * t.element_size()), {}, None, None))
        return saved[1](t)
    _forward.channels_last_copy = copy
    try:
        if pass_ == "forward":
            getattr(mod, f"{case.op}_forward")(x, w, None, plan)
        else:
            y = torch.empty(case.output_shape, device="meta", dtype=dtype)
            if layout == "channels_last":
                y = y.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
            getattr(mod, f"{case.op}_backward")(y, x, w, plan, (True, True, False))
    finally:
        _common.launcher, _forward.channels_last_copy = saved
    return list(_Recorder.launches)


def loop_trips(name, v, meta):
    """(outer trips per program, innermost-loop trips per outer trip) of a launch, for the model;
    ``v``: the launch's scalar arguments by name."""
    bk = meta["BLOCK_K"]
    cd = lambda a, b: -(-a // b)
    if name == "_conv_forward_kernel":
        steps = v["KH"] * v["KW"] * cd(v["C_in"], bk) if v["TAP_MODE"] else cd(v["KH"] * v["KW"] * v["C_in"], bk)
        return v["S"], steps
    if name == "_conv_grad_weight_kernel":       # copies x (image, row band) chunks of one split
        return v["copies"] * v["per_split"], cd(v["ROWS"] * v["Wo"], bk)
    raise ValueError(f"no loop model for kernel {name}")


# ---------------------------------------------------------------------------
# Compiling and reading SASS (runs in worker processes)
# ---------------------------------------------------------------------------
def _bin(tool):
    import triton
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool
    return str(path)


_LDST = re.compile(r"^(LDG|STG|LDGSTS|LDS|STS|LDSM|UTMALDG|UTMASTG|LDL|STL|ATOMG|RED)(\.|$)")
_INT = re.compile(r"^(IMAD|IADD3|IADD|LOP3|LOP|SHF|SHL|SHR|LEA|SEL|ISETP|ICMP|IABS|IMNMX|VIMNMX|VIADD|"
                  r"PRMT|I2F|F2I|FLO|POPC|BMSK|SGXT|IMUL|IMNMX|UIMAD|UIADD3|ULOP3|USHF|ULEA|USEL|UISETP|"
                  r"UPRMT|UMOV|MOV|PLOP3|P2R|R2P|UPLOP3|ULDC|S2R|S2UR|CS2R)(\.|$)")


def parse_sass(text):
    """[(address, opcode with modifiers, operands)] of the (single) function in cuobjdump -sass."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if not m:
            continue
        body = m.group(2).strip()
        body = re.sub(r"^@!?U?P[T0-9]+\s+", "", body)
        parts = body.split(None, 1)
        out.append((int(m.group(1), 16), parts[0], parts[1] if len(parts) > 1 else ""))
    return out


def _mma_kind(op):
    for kind in ("HGMMA", "HMMA", "QGMMA", "IMMA"):
        if op.startswith(kind):
            return kind
    return "FFMA" if op.startswith("FFMA") else None


def analyse(instrs):
    """Whole-kernel and innermost-MMA-loop statistics of parsed SASS."""
    loops = []
    for addr, op, args in instrs:
        if op.startswith("BRA"):
            m = re.search(r"0x([0-9a-f]+)", args)
            if m and int(m.group(1), 16) <= addr:
                loops.append((int(m.group(1), 16), addr))
    by_addr = {a: (op, args) for a, op, args in instrs}
    best = None
    for lo, hi in loops:
        body = [op for a, (op, _) in sorted(by_addr.items()) if lo <= a <= hi]
        mma = [o for o in body if _mma_kind(o) in ("HGMMA", "HMMA", "QGMMA")]
        score = (bool(mma), -len(body)) if mma else (False, sum(o.startswith("FFMA") for o in body))
        if best is None or score > best[0]:
            best = (score, lo, hi, body)
    kinds = collections.Counter(k for _, op, _ in instrs if (k := _mma_kind(op)))
    mma = next((k for k in ("HGMMA", "QGMMA", "HMMA") if kinds.get(k)), "FFMA" if kinds.get("FFMA") else "none")
    width = lambda ops, prefix: dict(sorted(collections.Counter(
        o for o in ops if o.split(".")[0] == prefix).items()))
    all_ops = [op for _, op, _ in instrs]
    res = dict(instructions=len(instrs), mma=mma,
               local_stores=sum(o.startswith("STL") for o in all_ops),
               local_loads=sum(o.startswith("LDL") for o in all_ops),
               stores=width(all_ops, "STG"), tma_stores=sum(o.startswith("UTMASTG") for o in all_ops))
    if best is None:
        body = all_ops
        res.update(loop=None)
    else:
        _, lo, hi, body = best
        res.update(loop=[lo, hi])
    res.update(loop_instructions=len(body),
               loop_int=sum(bool(_INT.match(o)) for o in body),
               # one quotient estimate (IMAD.HI) per integer division or modulo by a non-power-of-two
               loop_div=sum(o.startswith("IMAD.HI") for o in body),
               loop_mma=sum(_mma_kind(o) in ("HGMMA", "HMMA", "QGMMA") for o in body),
               loop_ffma=sum(o.startswith("FFMA") for o in body),
               loop_loads=width(body, "LDG"), loop_async=width(body, "LDGSTS"),
               loop_tma=sum(o.startswith("UTMALDG") for o in body),
               loop_local=sum(o.startswith(("LDL", "STL")) for o in body))
    return res


def compile_one(job):
    """Compile one (kernel, specialisation, options) for sm_90 and analyse its SASS."""
    import importlib
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    mod_name, fn_name, signature, constexprs, attrs, options = job
    fn = getattr(importlib.import_module(mod_name), fn_name)
    fn = fn if hasattr(fn, "params") else fn.fn
    t0 = time.time()
    try:
        target = GPUTarget("cuda", 90, 32)
        ck = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options)
    except Exception as exc:  # noqa: BLE001 - every failure is reported
        return dict(error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}")
    seconds = time.time() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(ck.asm["cubin"])
        usage = subprocess.run([_bin("cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([_bin("cuobjdump"), "-sass", path], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", usage)
    regs, stack, _, local = (int(v) for v in m.groups()) if m else (None, None, None, None)
    res = dict(registers=regs, stack=stack, local=local, shared=int(ck.metadata.shared),
               compile_s=round(seconds, 2))
    res.update(analyse(parse_sass(sass)))
    return res


def specialise(fn, args, kwargs):
    """(signature, constexprs, attrs, options) as Triton's launcher would compute them for sm_90."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    backend = make_backend(GPUTarget("cuda", 90, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    return signature, constexprs, attrs, dict(options.__dict__), dict(bound)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def _variant_kind(fn, pass_):
    name = fn.__name__.strip("_").replace("_kernel", "")
    if pass_ == "backward" and name.endswith("forward"):        # the forward GEMM computing a grad input
        name += "_as_grad_input"
    return name


def _copy_row(bytes_):
    """Model row of a layout copy (a memory-bound torch copy: read + write once, no kernel of ours)."""
    t = bytes_ / MODEL["hbm_bytes_s"]
    return dict(registers=0, stack=0, local=0, shared=0, compile_s=0, instructions=0, mma="-", local_stores=0,
                local_loads=0, stores={}, tma_stores=0, loop=None, loop_instructions=0, loop_int=0, loop_div=0,
                loop_mma=0, loop_ffma=0, loop_loads={}, loop_async={}, loop_tma=0, loop_local=0,
                issue_s=0.0, memory_s=t, mma_s=0.0, total_s=t + MODEL["launch_s"], warp_instr_per_output=0.0,
                bytes=bytes_)


def enumerate_jobs(cases, dtypes, frames, layouts, passes, config_limit):
    from equifast.backends.triton import _common
    variants, jobs = [], {}
    for case in cases:
        for dtype in dtypes:
            for frame in frames:
                for layout in layouts:
                    for pass_ in passes:
                        launches = record_launches(case, dtype, frame, layout, pass_)
                        counts = collections.Counter(fn.__name__ for fn, *_ in launches if fn is not None)
                        seen = collections.Counter()
                        for li, (fn, args, kwargs, grid, space) in enumerate(launches):
                            base = dict(case=case.name, op=case.op, group=case.group, dtype=dtype, frame=frame,
                                        layout=layout, pass_=pass_)
                            if fn is None:                              # a layout copy, for the next launch
                                user = next(f for f, *_ in launches[li + 1:] if f is not None)
                                name = _variant_kind(user, pass_).split("_as_")[-1].replace("conv_", "")
                                k = seen["copy_" + name]
                                seen["copy_" + name] += 1
                                variants.append(dict(base, kernel=f"channels_last_copy_for_{name}[{k}]", config=0, key=None,
                                                     meta=dict(BLOCK_M=0, BLOCK_N=0, BLOCK_K=0, num_warps=0,
                                                               num_stages=0), copy=args["bytes"], values={}))
                                continue
                            kind = _variant_kind(fn, pass_)
                            if counts[fn.__name__] > 1:                 # e.g. one launch per stride phase
                                kind += f"[{seen[fn.__name__]}]"
                                seen[fn.__name__] += 1
                            if hasattr(_common, "prune_configs"):     # what the autotuner would try
                                space = _common.prune_configs(space, dict(zip(fn.arg_names, args), **kwargs))
                            if config_limit:
                                space = space[:config_limit]
                            for ci, cfg in enumerate(space):
                                kw = dict(kwargs, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                                sig, cx, attrs, opts, values = specialise(fn, args, kw)
                                key = json.dumps([fn.__module__, fn.__name__, sig, sorted(map(str, cx.items())),
                                                  sorted(map(str, attrs.items())), sorted(map(str, opts.items()))])
                                jobs.setdefault(key, (fn.__module__, fn.__name__, sig, cx, attrs, opts))
                                meta = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                                scalars = {k: v for k, v in values.items() if isinstance(v, (int, bool, str))}
                                g = grid(dict(values, **meta))
                                meta["programs"] = math.prod(g)
                                out = next(values[k] for k in ("y_ptr", "gx_ptr", "gs_ptr", "gw_ptr") if k in values)
                                meta["outputs"] = out.numel()
                                meta["fn"] = fn.__name__
                                variants.append(dict(base, kernel=kind, config=ci, meta=meta, key=key,
                                                     values=scalars))
    return variants, jobs


def model(variant, stats, case):
    """Modelled time (s) of one launch; see MODEL."""
    meta, v = variant["meta"], variant["values"]
    outer, inner = loop_trips(meta["fn"], v, meta)
    programs, outputs = meta["programs"], meta["outputs"]
    body = stats["loop_instructions"]
    rest = max(stats["instructions"] - body, 0)
    per_program = (rest * outer + body * outer * inner) * meta["num_warps"]
    issue = programs * per_program / (MODEL["sms"] * MODEL["schedulers"] * MODEL["clock_hz"])
    itemsize = {"bfloat16": 2, "float16": 2, "float32": 4}[variant["dtype"]]
    if variant["pass_"] == "forward":
        memory = case.bytes("forward", itemsize) / MODEL["hbm_bytes_s"]
    else:                               # half of the backward's compulsory traffic per kernel
        memory = case.bytes("backward", itemsize) / 2 / MODEL["hbm_bytes_s"]
    mma_rate = MODEL["mma_flops_s"] / (2 if itemsize == 4 else 1)
    flops = 2 * programs * meta["BLOCK_M"] * meta["BLOCK_N"] * meta["BLOCK_K"] * inner * outer
    mma = flops / mma_rate
    return dict(issue_s=issue, memory_s=memory, mma_s=mma,
                total_s=max(issue, memory, mma) + MODEL["launch_s"],
                warp_instr_per_output=programs * per_program / max(outputs, 1))


def run(args):
    import triton
    from equifast.benchmark.cases import CASES
    by_name = {c.name: c for c in CASES}
    if args.subset:
        scopes = SUBSET
    elif any(getattr(args, k) is not None for k in ("cases", "dtypes", "frames", "layouts", "passes")):
        scopes = [dict(cases=args.cases, dtypes=args.dtypes or DTYPES, frames=args.frames or FRAMES,
                       layouts=args.layouts or LAYOUTS, passes=args.passes or PASSES, limit=args.configs or 0)]
    else:
        scopes = DEFAULT
    t0 = time.time()
    variants, jobs = [], {}
    for sc in scopes:
        names = sc["cases"] or [c.name for c in CASES]
        v, j = enumerate_jobs([by_name[n] for n in names], sc["dtypes"], sc["frames"], sc["layouts"],
                              sc["passes"], sc["limit"] or args.configs or 0)
        variants += v
        jobs.update(j)
    print(f"{len(variants)} variants, {len(jobs)} distinct compiles (triton {triton.__version__}, "
          f"{args.jobs} processes)", flush=True)
    keys = list(jobs)
    results = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, (key, res) in enumerate(zip(keys, pool.map(compile_one, [jobs[k] for k in keys]))):
            results[key] = res
            if (i + 1) % 25 == 0 or i + 1 == len(keys):
                print(f"  compiled {i + 1}/{len(keys)} ({time.time() - t0:.0f} s)", flush=True)
    failures = []
    rows = []
    for v in variants:
        row = {k: v[k] for k in ("case", "op", "group", "dtype", "frame", "layout", "pass_", "kernel", "config")}
        if v["key"] is None:                                     # layout copy: modelled, not compiled
            row.update(tile="-", **_copy_row(v["copy"]))
            rows.append(row)
            continue
        res = results[v["key"]]
        row["tile"] = "{BLOCK_M}x{BLOCK_N}x{BLOCK_K} w{num_warps} s{num_stages}".format(**v["meta"])
        row.update(res)
        if "error" in res:
            failures.append(f"compile error: {row['kernel']} {row['case']} {row['dtype']} {row['frame']} "
                            f"{row['layout']} {row['tile']}: {res['error']}")
        else:
            row.update(model(v, res, by_name[v["case"]]))
            exact = by_name[v["case"]].group in EXACT
            if res["shared"] > SHARED_LIMIT:
                failures.append(f"cannot launch ({res['shared']} B shared > {SHARED_LIMIT}): {row['kernel']} "
                                f"{row['case']} {row['dtype']} {row['frame']} {row['layout']} {row['tile']}")
            if res["local_stores"] and exact:
                failures.append(f"spill ({res['local_stores']} STL, stack {res['stack']} B): "
                                f"{row['kernel']} {row['case']} {row['dtype']} {row['frame']} {row['layout']} {row['tile']}")
            if res["loop_div"] and exact:
                failures.append(f"division sequence in the inner loop ({res['loop_div']} IMAD.HI): "
                                f"{row['kernel']} {row['case']} {row['dtype']} {row['frame']} {row['layout']} {row['tile']}")
        rows.append(row)
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                triton=triton.__version__, python=platform.python_version(), machine=platform.node(),
                commit=_git("rev-parse", "--short", "HEAD"), dirty=bool(_git("status", "--porcelain", "--",
                                                                              "equifast/backends/triton")),
                command=" ".join([Path(sys.executable).name] + sys.argv), seconds=round(time.time() - t0, 1),
                variants=len(variants), compiles=len(jobs), model=MODEL, shared_limit=SHARED_LIMIT)
    return info, rows, failures


def _git(*a):
    try:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def _fmt_w(d):
    return " ".join(f"{k.replace('LDGSTS.E.BYPASS', 'cp.async').replace('LDG.E', 'LDG')}:{n}"
                    for k, n in d.items()) or "-"


def summarise(info, rows, failures):
    """Markdown report: failures, per-kernel best config (by the model), forward estimates vs peers."""
    ok = [r for r in rows if "error" not in r]
    out = [f"# Static sm_90 analysis of the Triton kernels ({info['date']})", "",
           f"Commit {info['commit']}{' (with uncommitted kernel changes)' if info['dirty'] else ''}, Triton "
           f"{info['triton']}, Python {info['python']}; command `{info['command']}`; "
           f"{info['variants']} variants, {info['compiles']} distinct compiles, {info['seconds']} s.",
           "Compiled for `GPUTarget('cuda', 90, 32)` without a GPU; SASS read with cuobjdump. "
           "**Everything marked 'model' is a static estimate, not a measurement** (assumptions below).", ""]
    out += ["## Checks", ""]
    spills = [r for r in ok if r["local_stores"]]
    big = [r for r in ok if r["shared"] > SHARED_LIMIT]
    out += [f"- compile errors: {sum('error' in r for r in rows)}",
            f"- variants needing > 227 KB shared memory (cannot launch): {len(big)}",
            f"- variants with local-memory stores (spills): {len(spills)} "
            f"({sum(r['pass_'] == 'forward' for r in spills)} forward)",
            f"- variants whose inner loop has integer-division sequences: "
            f"{sum(r['loop_div'] > 0 for r in ok)} of {len(ok)} "
            f"({sum(r['loop_div'] > 0 for r in ok if r['pass_'] == 'forward' and r['group'] in EXACT)} forward and "
            f"{sum(r['loop_div'] > 0 for r in ok if r['pass_'] == 'backward' and r['group'] in EXACT)} backward "
            f"of exact groups)",
            f"- failures (exit status 1 if any): {len(failures)}", ""]
    out += [f"  - {f}" for f in failures[:40]]
    if len(failures) > 40:
        out.append(f"  - ... {len(failures) - 40} more (JSON)")
    out += ["", "## Best modelled config per kernel variant", "",
            "loop = innermost MMA loop: instructions / integer share / division sequences (IMAD.HI quotient estimates); "
            "loads: global load widths in that loop (LDG.U16 = 2 bytes per instruction, LDG.128 = 16, "
            "cp.async = LDGSTS); instr/out = modelled warp-instructions per output element.", "",
            "| case | dtype | frame | layout | kernel | tile | regs | spill STL | smem KB | MMA | loop instr | int % | div | loads in loop | stores | instr/out | model us |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = collections.defaultdict(list)
    for r in ok:
        groups[(r["case"], r["dtype"], r["frame"], r["layout"], r["pass_"], r["kernel"])].append(r)
    best = {}
    for key, rs in groups.items():
        launchable = [r for r in rs if r["shared"] <= SHARED_LIMIT] or rs
        b = min(launchable, key=lambda r: r["total_s"])
        best[key] = b
        loads = dict(b["loop_loads"], **b["loop_async"])
        if b["loop_tma"]:
            loads["TMA"] = b["loop_tma"]
        out.append(f"| {b['case']} | {b['dtype']} | {b['frame']} | {b['layout']} | {b['kernel']} | {b['tile']} | "
                   f"{b['registers']} | {b['local_stores']} | {b['shared'] / 1024:.0f} | {b['mma']} | "
                   f"{b['loop_instructions']} | {100 * b['loop_int'] / max(b['loop_instructions'], 1):.0f} | "
                   f"{b['loop_div']} | {_fmt_w(loads)} | {_fmt_w(b['stores'])} | "
                   f"{b['warp_instr_per_output']:.2f} | {1e6 * b['total_s']:.1f} |")
    out += ["", "## Forward: model vs peers measured on an H100", "",
            "Peers (forward, ms, H100, measured by the issue's author): naive loop over group elements, "
            "filter rotation + cuDNN. Ratio = peer time / modelled time (> 1: the model says faster). "
            "Best modelled config per case, dtype, frame and layout (the benchmarks use the view "
            "frame); a forward of several launches (a channels_last copy of a contiguous deep input, "
            "modelled as read + write at the model's bandwidth + launch latency) is their sum, the "
            "ms breakdown is the main kernel's. Filter pre-passes and the views of interpolated groups "
            "are not in the model.", "",
            "| case | dtype | kernel | frame/layout | model ms (issue / memory / MMA) | vs naive | vs rotation+cuDNN |",
            "|---|---|---|---|---|---|---|"]
    for (case, dtype, frame, layout), parts in sorted(_launch_totals(best, "forward").items()):
        total = sum(r["total_s"] for r in parts)
        main = max(parts, key=lambda r: r["total_s"])
        peer = PEERS_H100_MS.get(case)
        ms = 1e3 * total
        ratios = (f"{peer['naive'] / ms:.2f}x", f"{peer['rotation_cudnn'] / ms:.2f}x") if peer else ("-", "-")
        extra = "".join(f" + {r['kernel']} {1e3 * r['total_s']:.3f}" for r in parts if r is not main)
        out.append(f"| {case} | {dtype} | {main['kernel']}{extra} | {frame}/{layout} | {ms:.3f} "
                   f"({1e3 * main['issue_s']:.3f} / {1e3 * main['memory_s']:.3f} / {1e3 * main['mma_s']:.3f}) | "
                   f"{ratios[0]} | {ratios[1]} |")
    out += ["", "## Model (static, assumptions)", "",
            "An H100 SXM: {sms} SMs x {schedulers} schedulers issuing 1 warp-instruction/cycle at {ghz} GHz; "
            "HBM {bw} TB/s reachable; tensor cores {tf} TFLOP/s (bf16/fp16; tf32 half); {lat} us launch. "
            "Time = max(issue, memory, MMA) + launch, with issue = all warp-instructions of the grid "
            "(code outside the innermost MMA loop once per outer trip, the loop body once per K step) / "
            "(SMs x schedulers x clock); memory = compulsory bytes (inputs, weight, output once); "
            "MMA = FLOPs of the padded tiles. Not modelled: latency stalls, wave tails, cache misses "
            "beyond compulsory traffic, the autotuner's actual choice (the best modelled config is shown)."
            .format(sms=MODEL["sms"], schedulers=MODEL["schedulers"], ghz=MODEL["clock_hz"] / 1e9,
                    bw=MODEL["hbm_bytes_s"] / 1e12, tf=MODEL["mma_flops_s"] / 1e12, lat=MODEL["launch_s"] * 1e6)]
    return "\n".join(out) + "\n"


def _launch_totals(best, pass_):
    """{(case, dtype, frame, layout): [best row of each launch]} of one pass."""
    out = collections.defaultdict(list)
    for key, b in best.items():
        if key[4] == pass_:
            out[key[:4]].append(b)
    return out


def _best_per_launch(rows):
    """{(case, dtype, frame, layout, pass, launch kind): best modelled launchable variant}."""
    best = {}
    for r in rows:
        if "error" in r or r["shared"] > SHARED_LIMIT:
            continue
        key = (r["case"], r["dtype"], r["frame"], r["layout"], r["pass_"], r["kernel"])
        if key not in best or r["total_s"] < best[key]["total_s"]:
            best[key] = r
    merged = {}                  # one entry per launch kind: forward / input / weight (phases and copies summed)
    for key, r in sorted(best.items()):
        name = r["kernel"].split("[")[0]
        kind = "forward" if r["pass_"] == "forward" else name.rsplit("_", 1)[-1]     # input / weight
        mkey = key[:5] + (kind,)
        if mkey not in merged:
            merged[mkey] = dict(r, launches=1)
        else:
            m = merged[mkey]
            slow = r if r["total_s"] > m["total_s"] / m["launches"] else m
            merged[mkey] = dict(slow, launches=m["launches"] + 1, total_s=m["total_s"] + r["total_s"],
                                warp_instr_per_output=m["warp_instr_per_output"] + r["warp_instr_per_output"],
                                loop_div=max(m["loop_div"], r["loop_div"]),
                                local_stores=max(m["local_stores"], r["local_stores"]))
    for m in merged.values():
        if m["launches"] > 1:
            m["tile"] = f"{m['tile']} ({m['launches']} launches)"
    return merged


def compare(before, after, label):
    """Markdown: the best modelled config of each launch before (``label``) and now."""
    b, a = _best_per_launch(before), _best_per_launch(after)
    out = [f"## Before ({label}) and after", "",
           "Best modelled launchable config of each launch; loop = innermost MMA loop instructions, "
           "div = IMAD.HI quotient estimates in it, instr/out = warp-instructions per output, model in us "
           "(static estimates).", "",
           "| case | dtype | frame | layout | launch | tile before -> after | loop instr | div | loads in loop | "
           "instr/out | model us | spill STL |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(set(a) & set(b)):
        x, y = b[key], a[key]
        ld = lambda r: _fmt_w(dict(r["loop_loads"], **r["loop_async"]))
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[5]} | {x['tile']} -> {y['tile']} | "
                   f"{x['loop_instructions']} -> {y['loop_instructions']} | {x['loop_div']} -> {y['loop_div']} | "
                   f"{ld(x)} -> {ld(y)} | {x['warp_instr_per_output']:.2f} -> {y['warp_instr_per_output']:.2f} | "
                   f"{1e6 * x['total_s']:.1f} -> {1e6 * y['total_s']:.1f} | {x['local_stores']} -> {y['local_stores']} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    from equifast.benchmark.cases import CASES
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subset", action="store_true",
                   help="CI subset: forward of 5 shapes (bfloat16, view, channels_last, every config), "
                        "backward of 2 shapes (first 2 configs)")
    p.add_argument("--cases", nargs="*", choices=[c.name for c in CASES])
    p.add_argument("--dtypes", nargs="*", choices=DTYPES)
    p.add_argument("--frames", nargs="*", choices=FRAMES)
    p.add_argument("--layouts", nargs="*", choices=LAYOUTS)
    p.add_argument("--passes", nargs="*", choices=PASSES)
    p.add_argument("--configs", type=int, default=0, help="only the first N autotuning configs (0: all)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", help="folder for report.md and report.json")
    p.add_argument("--compare", nargs="*", default=[], metavar="REPORT_JSON",
                   help="earlier report.json files: add a before/after table (matching launches)")
    args = p.parse_args(argv)
    info, rows, failures = run(args)
    md = summarise(info, rows, failures)
    if args.compare:
        before, labels = [], []
        for path in args.compare:
            with open(path) as f:
                old = json.load(f)
            before += old["variants"]
            labels.append(f"commit {old['info']['commit']}, Triton {old['info']['triton']}")
        md += "\n" + compare(before, rows, "; ".join(sorted(set(labels))))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "report.md"), "w") as f:
            f.write(md)
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump(dict(info=info, failures=failures, variants=rows), f, indent=1)
        print(f"wrote {args.out}/report.md and report.json")
    else:
        print(md)
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
