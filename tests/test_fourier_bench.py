"""bench/fourier_group_conv.py, the script behind the fourier backend's committed measurements: its
``ops`` section produces consistent rows on CPU, ``ops`` and ``memory`` on CUDA (marked ``gpu``), its
two contenders compute the same function, the summary names the device it ran on, and bad arguments
are refused with the argument named. No timing is asserted: only that each row's ratio is the ratio
of its own medians."""
import argparse
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "fourier_group_conv.py")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("fourier_group_conv", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(device, **kw):
    base = dict(device=device, groups=["C4"], threads=[1], dtype="float32", layout="contiguous", warmup=0,
                wait_quiet=0.0, repeat=3, budget=0.1, settle=0)
    base.update(kw)
    return argparse.Namespace(**base)


def _check_ops_rows(rows, device, threads):
    assert [(r["group"], r["C"], r["B"]) for r in rows] == [("C4", 32, 8), ("C4", 64, 4)]
    for r in rows:
        assert r["device"] == device and r["threads"] == threads and r["dtype"] == "float32"
        assert r["torch_ms"] > 0 and r["fourier_ms"] > 0 and r["samples"] >= 3
        assert math.isclose(r["speedup"], r["torch_ms"] / r["fourier_ms"])


def test_ops_rows_on_cpu(script):
    old = torch.get_num_threads()
    try:
        rows = script.ops(_args("cpu"))
    finally:
        torch.set_num_threads(old)
    _check_ops_rows(rows, "cpu", 1)


def test_op_callable_runs_both_backends_to_the_same_results(script):
    """The two contenders of a row compute the same function: output and gradients agree (float64)."""
    (out, grads), (want, want_grads) = (script.op_callable(be, "D4", 3, 4, 2, 8, dtype=torch.float64)()
                                        for be in ("fourier", "torch"))
    for got, ref in zip((out,) + grads, (want,) + want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_summary_names_the_device(script):
    meta = dict(command="python bench/fourier_group_conv.py --device cuda", cpu="x", cpu_count=16, torch="2.11",
                python="3.12", date="today", allocator="glibc", device="cuda", device_name="NVIDIA H200", cuda="13.0",
                cudnn=91000, cudnn_allow_tf32=True, matmul_allow_tf32=False)
    row = dict(group="C4", C=32, B=8, threads=None, torch_ms=2.0, fourier_ms=1.0, speedup=2.0, load=(0.0, 0, 0),
               quiet_before=None, running_after=1, dtype="float32")
    text = script.summary({"ops": [row], "memory": [dict(group="C4", C=32, B=8, torch_mib=10, fourier_mib=8)]}, meta)
    assert text.startswith("# fourier vs torch backend (CUDA)")
    assert "NVIDIA H200, CUDA 13.0, cuDNN 91000 (cudnn.allow_tf32 True" in text
    assert "| C4 | 32->32 | 8 | - | 2.00 | 1.00 | 2.00x |" in text
    assert "torch.cuda.max_memory_allocated" in text and "GPU: none" not in text
    cpu = script.summary({}, dict(meta, device="cpu"))
    assert cpu.startswith("# fourier vs torch backend (CPU)") and "GPU: none" in cpu


@pytest.mark.parametrize("argv, message", [
    (["--sections", "ops,speed"], "--sections: unknown speed"),
    (["--groups", "C4,Q9"], "--groups: 'Q9' is not a group"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
])
def test_bad_arguments_name_the_argument(argv, message, tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path)] + argv, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and message in r.stderr, r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no CUDA device")
def test_cuda_without_a_gpu_is_refused(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path), "--device", "cuda"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "--device cuda: torch" in r.stderr and "sees no CUDA device" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop where torch sees no CUDA device")
def test_gpu_session_without_a_gpu_stops_at_once(tmp_path):
    session = os.path.join(ROOT, "tools", "gpu_session.sh")
    r = subprocess.run(["bash", session], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert r.returncode == 1 and "no CUDA device visible to torch: nothing to do" in r.stdout, r.stdout + r.stderr
    assert os.listdir(tmp_path / "gpu-session") == ["session.log"]


@pytest.mark.gpu
def test_ops_and_memory_on_cuda(script):
    _check_ops_rows(script.ops(_args("cuda")), "cuda", None)
    for backend in ("torch", "fourier"):
        assert script.peak_cuda(backend, "C4", 32, 8, "cuda") > 0
