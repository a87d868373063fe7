"""pytest-benchmark: one SGD training step (forward, cross-entropy, backward, step) of the paper's
network ``equifast.models.Figure3Net`` per backend; skipped (with the reason) when the model is missing."""
import pytest

from equifast import benchmark as eb


def test_train_step(time_callable, bench_device, bench_scale, train_backend, train_dtype):
    batch = eb.TRAIN_BATCH[bench_scale]
    try:
        step, info = eb.prepare_train_step(train_backend, bench_device, train_dtype, batch)
    except eb.Unsupported as exc:
        pytest.skip(str(exc))
    time_callable(step, f"train_step Figure3Net B={batch} {train_dtype}", backend=train_backend, **info)
