"""The record of where a benchmark ran: date, device, CPU, load average, versions, git commit,
backend availability (``environment(device)``), stored in results.json and results.md."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from typing import Dict, Sequence

import torch

from .._runtime import cpu_model, loadavg
from .cases import backend_status


def _run_quiet(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except Exception:
        return ""


def allocator() -> str:
    """The host allocator of this process as set from outside: an LD_PRELOAD library (jemalloc,
    tcmalloc), glibc's MALLOC_* tunables and PyTorch's THP_MEM_ALLOC_ENABLE (huge pages for large CPU
    allocations), or "glibc malloc defaults". CPU timings depend on it: glibc hands freed multi-MiB
    blocks back to the kernel, and every later use faults them in again."""
    parts = [f"LD_PRELOAD={os.environ['LD_PRELOAD']}"] if os.environ.get("LD_PRELOAD") else []
    parts += [f"{k}={v}" for k, v in sorted(os.environ.items())
              if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE")]
    return " ".join(parts) or "glibc malloc defaults"


def environment(device: str) -> Dict[str, object]:
    import equifast
    from .. import backends as _backends
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    env: Dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "allocator": allocator(),
        "loadavg_start": loadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": triton_version,
        "equifast": equifast.__version__,
        "git_commit": _run_quiet(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"]),
        "backends": {name: backend_status(name, device) for name in _backends.NAMES},
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        smi = _run_quiet(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env.update({
            "device_name": props.name,
            "driver": smi.splitlines()[0].strip() if smi else None,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "compute_capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        })
    else:
        env.update({"device_name": cpu_model(), "driver": None, "cuda": None,
                    "mkldnn": bool(torch.backends.mkldnn.is_available())})
    return env

