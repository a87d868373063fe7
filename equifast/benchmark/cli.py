"""``python -m equifast bench`` (= ``python -m equifast.benchmark``): the options, the run that times
every selected configuration, the rooflines and the training step, and writes results.json (partial
results after every measurement, see ``--resume``), results.md and results*.png under ``--out``."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from .._runtime import loadavg
from .cases import (DTYPES, SCALES, Config, Unsupported, cases_for, default_backends, default_device, default_dtypes,
                    prepare, select)
from .machine import environment
from .report import progress_line, write_markdown, write_plots
from .rooflines import add_derived, measure_rooflines
from .timing import measure
from .train_step import time_train_steps

SCHEMA = "equifast-bench/1"


def _csv(value: Optional[str]) -> Optional[List[str]]:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m equifast bench",
        description="Time lift_conv and group_conv per backend (forward, backward, forward+backward), with "
                    "speedups vs the reference and torch backends and memory/compute roofline fractions, and "
                    "a training step of Figure3Net. Writes results.json, results.md and results*.png.")
    p.add_argument("--out", default=os.path.join("runs", "bench"), help="output folder (default runs/bench)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (CI; well under a minute on CPU)")
    p.add_argument("--scale", choices=SCALES, default=None,
                   help="full = standard shapes (default on CUDA), cpu = batch cut for CPUs (default on CPU), "
                        "quick = tiny (same as --quick)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--backends", help="comma-separated backends (default: available ones; CPU: reference,torch,cpu)")
    p.add_argument("--dtypes", help="comma-separated dtypes (default float32,bfloat16)")
    p.add_argument("--layouts", help="comma-separated: contiguous,channels_last (default both)")
    p.add_argument("--modes", help="comma-separated: forward,backward,forward+backward (default all)")
    p.add_argument("--cases", help="comma-separated case names or globs (default: all of the scale); see --list")
    p.add_argument("--repeat", type=int, default=None, help="timed samples per measurement "
                   "(default: CPU 5, CUDA 50, quick 3; CPU cuts to >= 3 samples to stay within --budget)")
    p.add_argument("--budget", type=float, default=None, help="seconds of samples per measurement (default CPU 1.5)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for the run (default: torch's choice; quick: 1, so that a shared "
                        "CI machine cannot stall OpenMP barriers)")
    p.add_argument("--resume", action="store_true",
                   help="keep the measured records of an earlier (interrupted or partial) run in --out and time only "
                        "the missing ones; rooflines are those of the first run")
    p.add_argument("--no-train", action="store_true", help="skip the Figure3Net training step")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument("--notes", default="", help="free text stored in results.json and results.md")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p


def run(args: argparse.Namespace, argv: Sequence[str]) -> Dict[str, object]:
    threads_before = torch.get_num_threads()
    threads = args.threads or (1 if args.quick or args.scale == "quick" else None)
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, argv: Sequence[str]) -> Dict[str, object]:
    device = default_device() if args.device == "auto" else args.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    cuda = torch.device(device).type == "cuda"
    scale = "quick" if args.quick else (args.scale or ("full" if cuda else "cpu"))
    backends = _csv(args.backends) or default_backends(device)
    dtypes = _csv(args.dtypes) or default_dtypes(device, scale)
    configs = select(scale, device, cases=_csv(args.cases), backends=backends, dtypes=dtypes,
                     layouts=_csv(args.layouts), modes=_csv(args.modes))
    repeat = args.repeat or (3 if scale == "quick" else (50 if cuda else 5))
    timing = {"repeat": repeat,
              "min_sample_s": 0.001 if scale == "quick" else 0.005,
              "budget_s": args.budget if args.budget is not None else (0.1 if scale == "quick" else 1.5)}
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "results.json")
    t_start = time.perf_counter()
    meta = environment(device)
    command = "python -m equifast bench " + shlex.join(list(argv))
    meta.update({"command": command, "argv": list(argv),
                 "scale": scale, "backends_run": backends, "dtypes": dtypes, "repeat": repeat,
                 "timing": timing, "notes": args.notes})
    previous = _load_previous(json_path, device, scale) if args.resume else None
    done: Dict[tuple, Dict[str, object]] = {}
    if previous:
        done = {_key(r): r for r in previous["records"] if r["status"] in ("ok", "skipped")}
        meta["runs"] = previous["meta"].get("runs", [{"date": previous["meta"]["date"],
                                                     "command": previous["meta"]["command"]}])
        meta["notes"] = args.notes or previous["meta"].get("notes", "")
    meta.setdefault("runs", []).append({"date": meta["date"], "command": command})
    todo = [c for c in configs if _config_key(c) not in done]
    print(f"equifast bench: {len(todo)} measurements on {meta['device_name']} ({device}), scale {scale}, "
          f"backends {', '.join(backends)}" + (f" ({len(configs) - len(todo)} kept from {json_path})"
                                                 if previous else ""), flush=True)
    if previous:
        rooflines = previous["rooflines"]      # keep the fractions of resumed records consistent
    else:
        rooflines = measure_rooflines(device, dtypes, scale)
    print(f"copy bandwidth {rooflines['copy']['bytes_per_s'] / 1e9:.1f} GB/s; matmul "
          + ", ".join(f"{d} {m['flops_per_s'] / 1e12:.3g} TFLOP/s" for d, m in rooflines["matmul"].items()),
          flush=True)
    result = {"schema": SCHEMA, "meta": meta, "rooflines": rooflines, "records": [], "training": []}
    for i, config in enumerate(configs):
        rec = done.get(_config_key(config))
        if rec is None:
            rec = time_config(config, device, scale, timing)
            print(f"[{todo.index(config) + 1}/{len(todo)}] " + progress_line(rec), flush=True)
        result["records"].append(rec)
        add_derived(result["records"], rooflines)
        _write_json(json_path, result)   # partial results survive an interrupted run (see --resume)
    add_derived(result["records"], rooflines)
    if not args.no_train:
        kept = [r for r in (previous or {}).get("training", []) if r["status"] in ("ok", "skipped")]
        if kept and {(r["backend"], r["dtype"]) for r in kept} >= {(b, d) for b in backends for d in dtypes}:
            result["training"] = kept
        else:
            result["training"] = time_train_steps(backends, device, dtypes, scale, timing)
    meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    meta["loadavg_end"] = loadavg()
    if not args.no_plot:
        try:
            result["plots"] = write_plots(args.out, result)
        except Exception as exc:  # a missing matplotlib must not lose the numbers
            meta["plot_error"] = f"{type(exc).__name__}: {exc}"
    _write_json(json_path, result)
    write_markdown(os.path.join(args.out, "results.md"), result)
    print(f"wrote {json_path}, results.md" + (", " + ", ".join(result.get("plots", [])) if result.get("plots") else "")
          + f" in {meta['elapsed_s']} s", flush=True)
    return result



def _record(config: Config, scale: str) -> Dict[str, object]:
    case = config.case
    return {"op": case.op, "case": case.name, "scale": scale, "shape": case.shape_dict(), "group": case.group,
            "frame": "view", "dtype": config.dtype, "layout": config.layout, "mode": config.mode,
            "backend": config.backend, "status": None, "reason": None, "median_ms": None, "min_ms": None,
            "p20_ms": None, "p80_ms": None, "samples": None,
            "flops": case.flops(config.mode),
            "bytes": case.bytes(config.mode, torch.empty(0, dtype=DTYPES[config.dtype]).element_size()),
            "tflops": None, "gbps": None, "speedup_vs_reference": None, "speedup_vs_torch": None,
            "memory_roofline_fraction": None, "compute_roofline_fraction": None}


def time_config(config: Config, device: str, scale: str, timing: Dict[str, float]) -> Dict[str, object]:
    rec = _record(config, scale)
    try:
        fn = prepare(config, device)
        t = measure(fn, device, **timing)
    except Unsupported as exc:
        rec.update(status="skipped", reason=str(exc))
        return rec
    except Exception as exc:  # one broken backend must not hide the others' numbers
        rec.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        return rec
    finally:
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    rec.update(status="ok", median_ms=t["median_s"] * 1e3, min_ms=t["min_s"] * 1e3, p20_ms=t["p20_s"] * 1e3,
               p80_ms=t["p80_s"] * 1e3, samples=t["samples"],
               tflops=rec["flops"] / t["median_s"] / 1e12, gbps=rec["bytes"] / t["median_s"] / 1e9)
    return rec



def _key(r: Dict[str, object]) -> tuple:
    return (r["case"], r["dtype"], r["layout"], r["mode"], r["backend"])


def _config_key(c: Config) -> tuple:
    return (c.case.name, c.dtype, c.layout, c.mode, c.backend)


def _load_previous(path: str, device: str, scale: str) -> Optional[Dict[str, object]]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        previous = json.load(f)
    meta = previous.get("meta", {})
    if previous.get("schema") != SCHEMA or meta.get("scale") != scale or \
            torch.device(meta.get("device", "cpu")).type != torch.device(device).type:
        raise SystemExit(f"--resume: {path} holds a run with schema {previous.get('schema')}, scale "
                         f"{meta.get('scale')} on {meta.get('device')}; this run is scale {scale} on {device}. "
                         f"Use another --out.")
    return previous


def _write_json(path: str, result: Dict[str, object]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = build_parser().parse_args(argv)
    if args.list:
        for scale in SCALES:
            print(f"scale {scale}:")
            for c in cases_for(scale):
                print(f"  {c.name:<18} {c.op:<10} {c.label():<36} {c.description}")
        return 0
    run(args, argv)
    return 0

