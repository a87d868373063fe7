"""pytest-benchmark: equifast.lift_conv per case, dtype, layout, mode and backend (see conftest.py)."""
OP = "lift_conv"


def test_lift_conv(bench_op, bench_config):
    bench_op(bench_config)
