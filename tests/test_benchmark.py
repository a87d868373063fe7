"""The benchmark command keeps working: ``equifast.benchmark.main(["--quick", ...])`` on CPU.

Checks the structure of results.json (a record for every op, mode and backend; finite positive
times; speedups equal to the ratios of the times; roofline fractions in (0, 1.5]), and that
results.md and the PNG plot are written. Runs in well under a minute on 2 cores. Also the order in
which ``equifast.benchmark.compare`` calls its contenders (interleaved, rotated each round).
"""
import json
import math
import os

import pytest

from equifast import benchmark as eb


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert eb.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    with open(out / "results.json") as f:
        return out, json.load(f)


def test_files_written(quick_run):
    out, result = quick_run
    assert (out / "results.md").stat().st_size > 0
    assert (out / "results.png").stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "python -m equifast bench --quick" in md and "copy bandwidth" in md
    assert result["plots"][0] == "results.png"


def test_meta(quick_run):
    meta = quick_run[1]["meta"]
    for key in ("date", "command", "device", "device_name", "torch", "triton", "cpu_count", "backends",
                "scale", "backends_run"):
        assert key in meta, key
    assert meta["command"].startswith("python -m equifast bench --quick")
    assert meta["scale"] == "quick" and meta["device"] == "cpu"
    assert {"reference", "torch"} <= set(meta["backends_run"])


def test_rooflines_measured(quick_run):
    roof = quick_run[1]["rooflines"]
    assert roof["copy"]["bytes_per_s"] > 1e8
    assert roof["matmul"]["float32"]["flops_per_s"] > 1e8


def test_every_op_mode_backend_has_records(quick_run):
    result = quick_run[1]
    records = result["records"]
    backends = result["meta"]["backends_run"]
    seen = {(r["op"], r["mode"], r["backend"]) for r in records}
    for op in ("lift_conv", "group_conv"):
        for mode in eb.MODES:
            for backend in backends:
                assert (op, mode, backend) in seen, (op, mode, backend)
    # the plain-PyTorch backends run everywhere: every one of their records is a measurement
    for r in records:
        if r["backend"] in ("reference", "torch"):
            assert r["status"] == "ok", r
        else:
            assert r["status"] in ("ok", "skipped"), r
            assert r["status"] == "ok" or r["reason"]
    for key in ("op", "case", "shape", "group", "dtype", "layout", "mode", "backend", "median_ms",
                "speedup_vs_reference", "speedup_vs_torch", "memory_roofline_fraction",
                "compute_roofline_fraction", "flops", "bytes"):
        assert all(key in r for r in records), key
    assert {r["layout"] for r in records} == {"contiguous", "channels_last"}
    assert {r["group"] for r in records} >= {"C4", "D4", "C8"}


def test_times_speedups_and_rooflines_consistent(quick_run):
    records = [r for r in quick_run[1]["records"] if r["status"] == "ok"]
    assert records
    by = {(r["case"], r["dtype"], r["layout"], r["mode"], r["backend"]): r for r in records}
    for r in records:
        t = r["median_ms"]
        assert math.isfinite(t) and t > 0
        assert 0 < r["min_ms"] <= t
        k = (r["case"], r["dtype"], r["layout"], r["mode"])
        for base, field in (("reference", "speedup_vs_reference"), ("torch", "speedup_vs_torch")):
            assert r[field] == pytest.approx(by[k + (base,)]["median_ms"] / t, rel=1e-9)
        if r["backend"] == "reference":
            assert r["speedup_vs_reference"] == pytest.approx(1.0)
        for field in ("memory_roofline_fraction", "compute_roofline_fraction"):
            assert 0 < r[field] <= 1.5, (field, r)
        assert r["flops"] > 0 and r["bytes"] > 0


def test_training_step_recorded(quick_run):
    training = quick_run[1]["training"]
    assert training, "a Figure3Net training-step record (or one saying why it was skipped) is expected"
    for r in training:
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "ok":
            assert r["median_ms"] > 0
        else:
            assert r["reason"]


def test_case_definitions():
    names = {c.name for c in eb.CASES}
    assert {"mnist_c4_b128", "mnist_c4_b1024", "cifar_c4", "cifar_d4", "imagenet_stem_c4", "deep_c4",
            "group_conv_c4", "cifar_c8_interp"} <= names
    full = {c.name: c for c in eb.cases_for("full")}
    assert full["mnist_c4_b1024"].input_shape == (1024, 1, 28, 28)
    assert full["group_conv_c4"].input_shape == (64, 4, 32, 32, 32)
    assert full["imagenet_stem_c4"].output_shape == (32, 4, 64, 112, 112)
    c = full["cifar_c4"]
    assert c.flops("forward") == 2 * 128 * 4 * 64 * 32 * 32 * 3 * 9
    assert c.flops("forward+backward") == 3 * c.flops("forward")
    with pytest.raises(ValueError):
        eb.cases_for("full", ["no_such_case"])


def test_compare_interleaves_contenders_and_rotates_the_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    stats = eb.compare(fns, "cpu", repeat=4, min_sample_s=0.0)
    # warm-up (a, b, c), one calibration call each (a, b, c), then 4 rounds rotated by one each round
    assert calls == ["a", "b", "c"] * 2 + ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert set(stats) == {"a", "b", "c"}
    for s in stats.values():
        assert s["samples"] == 4 and s["inner"] == 1
        assert 0 <= s["min_s"] <= s["p20_s"] <= s["median_s"] <= s["p80_s"]


def test_compare_settle_calls_each_contender_untimed_right_before_its_sample():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    stats = eb.compare(fns, "cpu", repeat=2, min_sample_s=0.0, settle=2)
    # warm-up, calibration, then per round and contender: two settling calls and the timed one
    assert calls == ["a", "b"] * 2 + ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3
    assert all(s["samples"] == 2 and s["inner"] == 1 for s in stats.values())
    with pytest.raises(ValueError, match="settle"):
        eb.compare(fns, "cpu", settle=-1)


def test_compare_budget_keeps_at_least_three_rounds_and_rejects_bad_input():
    stats = eb.compare({"x": lambda: None}, "cpu", repeat=50, min_sample_s=0.0, budget_s=0.0)
    assert stats["x"]["samples"] == 3
    with pytest.raises(ValueError, match="fns"):
        eb.compare({}, "cpu")
    with pytest.raises(ValueError, match="repeat"):
        eb.compare({"x": lambda: None}, "cpu", repeat=0)


def test_allocator_records_preloads_and_malloc_tunables(monkeypatch):
    from equifast.benchmark.machine import allocator
    for k in [k for k in os.environ
              if k.startswith("MALLOC_") or k in ("LD_PRELOAD", "GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE")]:
        monkeypatch.delenv(k)
    assert allocator() == "glibc malloc defaults"
    monkeypatch.setenv("LD_PRELOAD", "/x/libjemalloc.so.2")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1073741824")
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    assert allocator() == "LD_PRELOAD=/x/libjemalloc.so.2 MALLOC_TRIM_THRESHOLD_=1073741824 THP_MEM_ALLOC_ENABLE=1"
