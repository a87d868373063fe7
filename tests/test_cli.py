"""The command line: demo end to end (tiny), check, bench delegation, lazy dispatch (study), --help,
and the demo's progress output (bars only on a terminal, else one line per epoch)."""
import io
import json
import re
import subprocess
import sys
import types

import pytest
import torch

from equifast.__main__ import main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--epochs", "1", "--limit", "64", "--timing-batches", "1", "--no-progress", "--size", "8",
               "--width", "4", "--threads", "1", "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("number_angle_accuracy", "invariant_accuracy", "plain_cnn_accuracy", "equivariance_error"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["equivariance_error"] < 1e-5
    assert set(metrics["per_angle"]) == {"0", "90", "180", "270"}
    assert metrics["seconds_per_epoch"]["reference"] > 0
    assert all(r["view"] < 1e-12 for r in metrics["exactness"])
    assert (out / "figure3net.pt").exists() and (out / "accuracy_per_angle.png").exists()
    ckpt = torch.load(out / "figure3net.pt", weights_only=False)
    from equifast.models import Figure3Net
    Figure3Net(**ckpt["kwargs"]).load_state_dict(ckpt["model"])
    text = capsys.readouterr().out
    assert "number after GroupPool" in text and "s/epoch" in text


def test_demo_mnist_needs_dir(capsys):
    assert main(["demo", "--data", "mnist"]) == 2
    assert "--mnist-dir" in capsys.readouterr().err


def test_check_passes(capsys):
    rc = main(["check", "--backends", ",".join(b for b in __import__("equifast").available_backends("cpu")
                                              if b != "triton")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "0 mismatches" in text


def test_check_reports_mismatch(monkeypatch, capsys):
    import equifast.backends.torch as tb
    real = tb.lift_conv_forward
    monkeypatch.setattr(tb, "lift_conv_forward", lambda x, w, b, plan: real(x, w, b, plan) * 1.01)
    assert main(["check", "--backends", "torch"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_bench_delegates_or_explains(monkeypatch, capsys):
    import equifast
    try:
        import equifast.benchmark  # noqa: F401
    except ModuleNotFoundError:
        assert main(["bench"]) == 2
        assert "benchmark" in capsys.readouterr().err
    else:
        seen = {}
        monkeypatch.setattr(equifast.benchmark, "main", lambda argv: seen.setdefault("argv", argv) and 0)
        assert main(["bench", "--quick", "--out", "x"]) == 0
        assert seen["argv"] == ["--quick", "--out", "x"]
    monkeypatch.setitem(sys.modules, "equifast.benchmark", None)   # simulate a missing module
    assert main(["bench"]) == 2
    assert "benchmark" in capsys.readouterr().err


def test_demo_without_a_terminal_prints_one_line_per_epoch_and_no_bar(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--epochs", "2", "--limit", "64", "--timing-batches", "1", "--size", "8", "--width", "4",
               "--threads", "1", "--out", str(out)])     # no --no-progress: capsys's stdout is not a terminal
    assert rc == 0
    captured = capsys.readouterr()
    for name in ("Figure3Net (equivariant)", "plain CNN"):
        lines = [line for line in captured.out.splitlines() if line.startswith(f"{name}: epoch ")]
        pattern = re.escape(name) + r": epoch (\d)/2  loss \d+\.\d{3}  accuracy [01]\.\d{3}  \d+\.\d{2} s"
        assert [re.fullmatch(pattern, line).group(1) for line in lines] == ["1", "2"], lines
    for text in (captured.out, captured.err):
        assert "\r" not in text and "batch/s" not in text and "epoch/s" not in text and "%|" not in text


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from tqdm.auto import tqdm

    from equifast._progress import bars_enabled, epoch_line, progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    items = [1, 2, 3]
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert not bars_enabled() and progress(items, "x") is items
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert bars_enabled() and not bars_enabled(disable=True)
    assert progress(items, "x", disable=True) is items
    bar = progress(items, "x", unit="batch")
    try:
        assert isinstance(bar, tqdm) and list(bar) == items
    finally:
        bar.close()
    assert epoch_line("net", 3, 15, 0.12345, 0.9, 1.5, val=0.5) == \
        "net: epoch 3/15  loss 0.123  accuracy 0.900  1.50 s  val 0.500"


def test_dispatch_imports_a_command_only_when_it_runs(monkeypatch, capsys):
    for name in ("equifast.study", "equifast.demo", "equifast.check", "equifast.benchmark"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "study" in capsys.readouterr().out
    assert not {"equifast.study", "equifast.demo", "equifast.check", "equifast.benchmark"} & set(sys.modules)

    seen = {}
    fake = types.ModuleType("equifast.study")
    fake.add_arguments = lambda parser: parser.add_argument("--fractions", default="1")
    fake.run = lambda args: seen.setdefault("fractions", args.fractions) and 3
    monkeypatch.setitem(sys.modules, "equifast.study", fake)
    assert main(["study", "--fractions", "0.5"]) == 3
    assert seen["fractions"] == "0.5"
    with pytest.raises(SystemExit) as exc:
        main(["study", "--help"])
    assert exc.value.code == 0 and "--fractions" in capsys.readouterr().out

    monkeypatch.setitem(sys.modules, "equifast.study", None)   # simulate a checkout without the module
    assert main(["study"]) == 2
    assert "equifast.study" in capsys.readouterr().err


def test_unknown_or_missing_command_is_a_usage_error(capsys):
    for argv in (["nosuch"], []):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "demo" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["check", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: equifast" in text


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "equifast", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "demo" in r.stdout and "check" in r.stdout and "bench" in r.stdout
    assert "study" in r.stdout


def test_demo_on_mnist_idx_files(tmp_path):
    """--data mnist --mnist-dir PATH runs the same experiment (synthetic IDX files, 28x28)."""
    import gzip
    import struct

    import numpy as np
    rng = np.random.default_rng(0)

    def write(name, arr):
        header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(header + arr.tobytes())
    write("train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 28, 28), dtype=np.uint8))
    write("train-labels-idx1-ubyte.gz", (np.arange(40) % 10).astype(np.uint8))
    write("t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8))
    write("t10k-labels-idx1-ubyte.gz", (np.arange(20) % 10).astype(np.uint8))
    out = tmp_path / "out"
    assert main(["demo", "--data", "mnist", "--mnist-dir", str(tmp_path), "--epochs", "1", "--width", "2",
                 "--timing-batches", "2", "--no-progress", "--threads", "1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["data"] == "mnist-28x28" and metrics["config"]["n_train"] == 40
