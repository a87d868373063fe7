# equifast: `make demo` runs the main job, `make test` the whole test suite; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch (installs from local disk here); triton 3.8 runs its interpreter on CPU tensors.
DEPS := torch==2.13.0 numpy triton==3.8.0 pytest hypothesis pytest-benchmark scikit-learn matplotlib tqdm ninja
PYTEST_ARGS ?=
ESCNN_VENV ?= .venv-escnn

STUDY_ARGS ?=

.PHONY: setup build test test-escnn demo study check bench bench-quick cuda-compile-check gpu-static-check gpu-test gpu-session sanitize sanitize-cpu clean

$(VENV)/.deps-stamp: Makefile pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(DEPS)
	EQUIFAST_NO_EXTENSION=1 $(PY) -m pip install -q -e . --no-build-isolation --no-deps
	touch $@

setup: $(VENV)/.deps-stamp build

# Builds equifast._C in place (incremental with ninja); nothing to do when csrc/ has no sources.
build: $(VENV)/.deps-stamp
	$(PY) setup.py -q build_ext --inplace

# The whole suite in .venv, then the tests that compare with escnn in $(ESCNN_VENV) (they skip in .venv).
test: setup $(ESCNN_VENV)/.deps-stamp
	$(PY) -m pytest -q tests $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-escnn

# escnn (the library users migrate from) in a side environment that reuses .venv: escnn's own pins
# (numpy 1.x for lie_learn's wheel, scikit-learn 1.5 for its kernel setup) cannot live in .venv;
# py3nj needs Fortran and is not needed for the regular-field layers equifast converts.
$(ESCNN_VENV)/.deps-stamp: $(VENV)/.deps-stamp
	test -x $(ESCNN_VENV)/bin/python || $(PYTHON) -m venv $(ESCNN_VENV)
	echo 'import site; site.addsitedir("'"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"'")' \
		> "$$($(ESCNN_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/main_venv.pth"
	$(ESCNN_VENV)/bin/python -m pip install -q "numpy<2" "scikit-learn==1.5.2"
	$(ESCNN_VENV)/bin/python -m pip install -q --no-deps escnn==1.0.11 lie_learn==0.0.2 pymanopt==2.2.1 requests urllib3 idna certifi
	touch $@

# The migration tests against escnn itself (they skip in .venv, where escnn is not installed).
test-escnn: setup $(ESCNN_VENV)/.deps-stamp
	$(ESCNN_VENV)/bin/python -m pytest -q tests/test_interop.py tests/test_nn.py -k "escnn or docs or interop"

demo: setup
	$(PY) -m equifast demo

# The paper's study (equivariance vs augmentation, scarce data, larger groups): STUDY_ARGS=--quick for a 2-minute run.
study: setup
	$(PY) -m equifast study $(STUDY_ARGS)

check: setup
	$(PY) -m equifast check

bench-quick: setup
	$(PY) -m equifast bench --quick --out runs/bench-quick

bench: setup
	$(PY) -m equifast bench --out runs/bench

# Compiles the CUDA sources with torch 2.14.1's CUDA build and the machine's nvcc (no GPU needed),
# then reads the SASS: fails on local memory or calls to a 64-bit division routine in the kernels.
cuda-compile-check:
	bash tools/cuda_compile_check.sh

# Compiles every Triton kernel for sm_90 (no GPU needed) over the benchmark shapes and autotuning
# configs and reads the SASS; fails on a compile error, a forward spill or an unlaunchable config.
# STATIC_ARGS="--subset" is the CI subset (a few minutes); "--out DIR" writes report.md/report.json.
gpu-static-check: setup
	$(PY) tools/gpu_static_check.py $(STATIC_ARGS)

# On a machine with a GPU and torch already installed (the lent device): build and run the GPU tests.
gpu-test:
	bash tools/gpu_test.sh

# On a lent GPU machine: everything above that needs a GPU, most needed first, within one command's
# 10 minutes (tools/gpu_session.sh: fourier vs cuDNN, fourier's CUDA tests, gpu-test, bench/run_gpu.sh).
gpu-session:
	bash tools/gpu_session.sh

# On a machine with a GPU: compute-sanitizer memcheck and racecheck over the GPU tests.
sanitize:
	bash tools/sanitize.sh

# The CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer (in build/sanitize-cpu, the
# in-place build is left alone) under the CPU-extension, reliability and fuzz tests, every ISA cap.
sanitize-cpu: $(VENV)/.deps-stamp
	bash tools/sanitize_cpu.sh

clean:
	rm -rf build *.egg-info equifast/_C*.so runs
