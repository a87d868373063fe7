"""Shared test configuration.

* Without a CUDA device, Triton kernels run in Triton's interpreter on CPU tensors: the variable
  must be set before any kernel module is imported, hence here, at the top of conftest.
* Tests marked ``gpu`` are skipped without CUDA. On CUDA, TF32 is switched off for convolutions and
  matmuls: float32 results are checked at float32 tolerances against the float64 oracle (cuDNN's
  default, ``torch.backends.cudnn.allow_tf32 = True``, rounds inputs to 10 mantissa bits).
* Hypothesis: no deadline (first calls compile), a modest number of examples (CI is 2 cores).
* ``one_thread``: modules of tiny problems run with one torch thread
  (``pytestmark = pytest.mark.usefixtures("one_thread")``).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()
if HAS_CUDA:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: on the 2 shared cores, OpenMP threads competing with other
    processes spin-wait and make tiny problems up to 10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
