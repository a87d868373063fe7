"""Where a command runs: the device, the CPU thread count and a one-line description of the machine.

Shared by the command-line tools (``equifast.demo``, ``equifast.check``, ``equifast.study``) and the
benchmark's environment record (``equifast.benchmark.machine``). Nothing here runs on import.

* ``pick_device(name)``: ``"auto"`` -> CUDA when present, else CPU; any other name -> ``torch.device(name)``.
* ``set_threads(threads)``: ``torch.set_num_threads(threads)`` when given; otherwise 1 thread when the
  machine is already busy (load average + 1 > cores), else torch's choice.
* ``describe_machine(device)``: the GPU name, or "<cpu model>, <n> cores, torch <version> (<t> threads)".
* ``cpu_model()``, ``loadavg()``: the CPU's model name; the 1/5/15-minute load average (None if unknown).
"""
from __future__ import annotations

import os
import platform
from typing import List, Optional


def pick_device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(threads: Optional[int]) -> None:
    """``threads`` torch CPU threads; by default 1 on a busy machine (OpenMP threads competing for busy
    cores slow small convolutions down by 10x), torch's choice otherwise."""
    import torch
    if threads:
        torch.set_num_threads(threads)
        return
    try:
        busy = os.getloadavg()[0] + 1 > (os.cpu_count() or 1)
    except OSError:
        busy = False
    if busy:
        torch.set_num_threads(1)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def describe_machine(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
