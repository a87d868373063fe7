"""pytest-benchmark: equifast.group_conv per case, dtype, layout, mode and backend (see conftest.py)."""
OP = "group_conv"


def test_group_conv(bench_op, bench_config):
    bench_op(bench_config)
