"""pytest-benchmark suites of equifast (``pytest bench/``); not collected by ``pytest tests``.

The cases, the timed callables and the scale presets all come from ``equifast.benchmark`` (the same
code behind ``python -m equifast bench``). Selection (command-line option, or environment variable):

  --bench-scale     EQUIFAST_BENCH_SCALE     quick | cpu | full (default: full with CUDA, else cpu)
  --bench-device    EQUIFAST_BENCH_DEVICE    auto | cpu | cuda (default auto)
  --bench-backends  EQUIFAST_BENCH_BACKENDS  e.g. torch,cpu (default: the device's available backends)
  --bench-dtypes    EQUIFAST_BENCH_DTYPES    default float32,bfloat16 (quick: float32)
  --bench-layouts   EQUIFAST_BENCH_LAYOUTS   default contiguous,channels_last
  --bench-modes     EQUIFAST_BENCH_MODES     default forward,backward,forward+backward
  --bench-cases     EQUIFAST_BENCH_CASES     case names or globs (``python -m equifast bench --list``)
  --bench-rounds    EQUIFAST_BENCH_ROUNDS    timed rounds per benchmark (default: CUDA 20, CPU 5, quick 3)
  --bench-threads   EQUIFAST_BENCH_THREADS   torch.set_num_threads for the session (default: torch's; quick: 1)

Every benchmark runs its callable once untimed (compilation, autotuning, caches) before
``benchmark.pedantic``; on CUDA each round ends with ``torch.cuda.synchronize()`` and is preceded
(untimed) by an L2 flush. Backends that cannot run a configuration are reported as skipped, with the
backend's reason.
"""
import os

import pytest
import torch

from equifast import benchmark as eb

_OPTIONS = ("scale", "device", "backends", "dtypes", "layouts", "modes", "cases", "rounds", "threads")


def pytest_addoption(parser):
    group = parser.getgroup("equifast-bench", "equifast benchmark selection")
    for name in _OPTIONS:
        group.addoption(f"--bench-{name}", default=None,
                        help=f"(env EQUIFAST_BENCH_{name.upper()}); see bench/conftest.py")


def _opt(config, name):
    value = config.getoption(f"--bench-{name}")
    return value if value not in (None, "") else os.environ.get(f"EQUIFAST_BENCH_{name.upper()}") or None


def _csv(value):
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _device(config):
    device = _opt(config, "device") or "auto"
    return eb.default_device() if device == "auto" else device


def _scale(config):
    scale = _opt(config, "scale")
    if scale is None:
        scale = "full" if torch.device(_device(config)).type == "cuda" else "cpu"
    if scale not in eb.SCALES:
        raise pytest.UsageError(f"--bench-scale must be one of {eb.SCALES}, got {scale!r}")
    return scale


def pytest_configure(config):
    threads = _opt(config, "threads")
    if not threads and _opt(config, "scale") == "quick":
        threads = 1   # as `python -m equifast bench --quick`: smoke timings, robust on a shared machine
    if threads:
        torch.set_num_threads(int(threads))


def pytest_report_header(config):
    device = _device(config)
    return (f"equifast bench: device {device}, scale {_scale(config)}, "
            f"backends {_csv(_opt(config, 'backends')) or eb.default_backends(device)}, "
            f"torch threads {torch.get_num_threads()}")


def pytest_generate_tests(metafunc):
    config = metafunc.config
    device = _device(config)
    if "bench_config" in metafunc.fixturenames:
        op = getattr(metafunc.module, "OP")
        configs = eb.select(_scale(config), device, ops=[op], cases=_csv(_opt(config, "cases")),
                            backends=_csv(_opt(config, "backends")), dtypes=_csv(_opt(config, "dtypes")),
                            layouts=_csv(_opt(config, "layouts")), modes=_csv(_opt(config, "modes")))
        metafunc.parametrize("bench_config", configs, ids=[c.id for c in configs])
    if "train_backend" in metafunc.fixturenames:
        backends = _csv(_opt(config, "backends")) or eb.default_backends(device)
        dtypes = _csv(_opt(config, "dtypes")) or eb.default_dtypes(device, _scale(config))
        params = [(b, d) for d in dtypes for b in backends]
        metafunc.parametrize("train_backend,train_dtype", params, ids=[f"{d}-{b}" for b, d in params])


@pytest.fixture(scope="session")
def bench_device(pytestconfig):
    return _device(pytestconfig)


@pytest.fixture(scope="session")
def bench_scale(pytestconfig):
    return _scale(pytestconfig)


@pytest.fixture(scope="session")
def bench_rounds(pytestconfig, bench_device, bench_scale):
    rounds = _opt(pytestconfig, "rounds")
    if rounds:
        return int(rounds)
    return 3 if bench_scale == "quick" else (20 if torch.device(bench_device).type == "cuda" else 5)


@pytest.fixture
def time_callable(benchmark, bench_device, bench_rounds):
    """time_callable(fn, group, **extra_info): the first call untimed, then pedantic rounds (synchronised)."""
    cuda = torch.device(bench_device).type == "cuda"

    def run(fn, group, **extra_info):
        fn()                              # compile / autotune / caches: never timed
        eb.synchronize(bench_device)
        benchmark.group = group
        benchmark.extra_info.update(extra_info)
        if cuda:
            flush = torch.empty(256 * 2 ** 20, dtype=torch.int8, device=bench_device)

            def setup():                  # untimed: evict the previous round's data from L2
                flush.zero_()
                torch.cuda.synchronize()

            def target():
                fn()
                torch.cuda.synchronize()
            return benchmark.pedantic(target, setup=setup, rounds=bench_rounds, iterations=1, warmup_rounds=1)
        return benchmark.pedantic(fn, rounds=bench_rounds, iterations=1, warmup_rounds=1)
    return run


@pytest.fixture
def bench_op(time_callable, bench_device):
    """bench_op(config): time one equifast.benchmark.Config (skipped when its backend cannot run it)."""
    def run(config):
        try:
            fn = eb.prepare(config, bench_device)
        except eb.Unsupported as exc:
            pytest.skip(str(exc))
        case = config.case
        itemsize = torch.empty(0, dtype=eb.DTYPES[config.dtype]).element_size()
        return time_callable(fn, f"{case.op} {case.name} [{case.label()}] {config.dtype} {config.layout} {config.mode}",
                             backend=config.backend, shape=case.label(), flops=case.flops(config.mode),
                             bytes=case.bytes(config.mode, itemsize))
    return run
