#!/usr/bin/env bash
# Build equifast._C's CPU kernels with AddressSanitizer + UndefinedBehaviorSanitizer and run the
# CPU-extension, native-hardening, geometry, reliability and fuzz tests under them, once per
# instruction-set cap (EQUIFAST_CPU_ISA unset = the best copy this CPU runs, then avx2, baseline).
# Any sanitizer report aborts the test process and is written to $SANITIZE_DIR/reports/ (pytest's
# output capture would swallow it), printed at the end of that ISA's run, which then fails.
# See docs/reliability.md for how to read a report.
#
#   bash tools/sanitize_cpu.sh            (make sanitize-cpu)
# Env: PYTHON (default .venv/bin/python), SANITIZE_DIR (default build/sanitize-cpu: a copy of the
# package, tests and csrc is built there, so the in-place build of the working tree is left alone),
# SANITIZE_ISAS (default "native avx2 baseline"), SANITIZE_PYTEST_ARGS (extra pytest arguments),
# SANITIZE_CAPPED=all runs every test for the capped ISAs too; by default (SANITIZE_CAPPED=fuzz) the
# capped ISAs (avx2, baseline), whose kernels differ from the native run only in the copy of the GEMM,
# run tests/test_native_hardening.py and the "cpu" fuzz tests (shapes, strides, layouts, both ops,
# gradients), which keeps `make sanitize-cpu` within CI's time budget.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DIR="${SANITIZE_DIR:-$ROOT/build/sanitize-cpu}"
start=$(date +%s)
say() { echo "[sanitize-cpu +$(( $(date +%s) - start ))s] $*"; }

ASAN_LIB="$(gcc -print-file-name=libasan.so)"
UBSAN_LIB="$(gcc -print-file-name=libubsan.so)"
for lib in "$ASAN_LIB" "$UBSAN_LIB"; do
  if [ ! -e "$lib" ]; then say "ERROR: $lib not found (gcc with libasan / libubsan is needed)"; exit 2; fi
done

say "copying the package, tests and csrc into $DIR/src"
mkdir -p "$DIR/src"
for path in equifast tests csrc setup.py pyproject.toml; do
  rm -rf "$DIR/src/$path.new" && cp -rp "$path" "$DIR/src/$path.new"   # -p: mtimes kept, ninja stays incremental
  rm -rf "$DIR/src/$path" && mv "$DIR/src/$path.new" "$DIR/src/$path"
done
find "$DIR/src/equifast" -name '_C*.so' -delete
find "$DIR/src" -name __pycache__ -prune -exec rm -rf {} +

say "building equifast._C with -fsanitize=address,undefined -fno-wrapv"
(cd "$DIR/src" && EQUIFAST_SANITIZE=1 EQUIFAST_BUILD_CUDA=0 "$PY" setup.py -q build_ext --inplace \
   --build-temp "$DIR/temp" >"$DIR/build.log" 2>&1) || { tail -n 30 "$DIR/build.log"; say "FAILED to build"; exit 1; }
say "built $(ls "$DIR"/src/equifast/_C*.so)"

export PYTHONPATH="$DIR/src${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB"
# detect_leaks=0: CPython and torch keep allocations alive at exit by design (not our leaks).
REPORTS="$DIR/reports"
mkdir -p "$REPORTS"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:symbolize=1:allocator_may_return_null=1:log_path=$REPORTS/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan"
cd "$DIR/src"
where=$("$PY" -c 'import equifast, equifast.backends.cpu as c; ok, why = c.availability("cpu"); assert ok, why; print(equifast.__file__)')
case "$where" in "$DIR/src/"*) ;; *) say "ERROR: imported equifast from $where, not from the sanitizer copy"; exit 1;; esac

# Whole files for the compiled kernels; the backend-parametrised suites for the "cpu" backend only
# (the plain-PyTorch and Triton backends run no C++ of ours).
# Left out: gradcheck (hundreds of calls of kernels the other tests already run) and the memory
# measurements (ASan's shadow memory and quarantine are not the kernels' memory).
SKIP='not gradcheck and not peak_memory and not staging_is_sized'
WHOLE=(tests/test_extension_cpu.py tests/test_native_hardening.py)
FILTERED=(tests/test_geometry.py tests/test_reliability.py tests/test_fuzz.py)
K_FILTER="cpu and not triton and $SKIP"
status=0
for isa in ${SANITIZE_ISAS:-native avx2 baseline}; do
  if [ "$isa" = native ]; then unset EQUIFAST_CPU_ISA; else export EQUIFAST_CPU_ISA="$isa"; fi
  got=$("$PY" -c 'import equifast.backends.cpu as c; print(c.isa())')
  t0=$(date +%s)
  rm -f "$REPORTS"/*
  say "EQUIFAST_CPU_ISA=${EQUIFAST_CPU_ISA:-<unset>} (kernels: $got)"
  ok=1
  if [ "$isa" = native ] || [ "${SANITIZE_CAPPED:-fuzz}" = all ]; then
    "$PY" -m pytest -q -p no:cacheprovider "${WHOLE[@]}" -k "$SKIP" ${SANITIZE_PYTEST_ARGS:-} || ok=0
    "$PY" -m pytest -q -p no:cacheprovider "${FILTERED[@]}" -k "$K_FILTER" ${SANITIZE_PYTEST_ARGS:-} || ok=0
  else
    "$PY" -m pytest -q -p no:cacheprovider tests/test_native_hardening.py -k "$SKIP" ${SANITIZE_PYTEST_ARGS:-} || ok=0
    "$PY" -m pytest -q -p no:cacheprovider tests/test_fuzz.py -k "$K_FILTER" ${SANITIZE_PYTEST_ARGS:-} || ok=0
  fi
  # Errors fail the run; warnings (e.g. "failed to allocate" for the huge requests some tests make on
  # purpose: allocator_may_return_null=1 turns them into the bad_alloc PyTorch reports) are only shown.
  for report in "$REPORTS"/*; do
    [ -e "$report" ] || continue
    if grep -q -E "ERROR: AddressSanitizer|runtime error:|SUMMARY: " "$report"; then
      ok=0; echo "==== sanitizer report $report"; cat "$report"
    else
      echo "==== sanitizer warnings $report: $(sort "$report" | uniq -c | head -n 3 | tr -s ' ' | tr '\n' ';')"
    fi
  done
  if [ $ok = 1 ]; then
    say "ISA $got: passed in $(( $(date +%s) - t0 ))s"
  else
    status=1; say "ISA $got: FAILED in $(( $(date +%s) - t0 ))s (failing tests, or a sanitizer report printed above: see docs/reliability.md)"
  fi
done
if [ $status = 0 ]; then say "OK: no sanitizer report"; else say "FAILED"; fi
exit $status
