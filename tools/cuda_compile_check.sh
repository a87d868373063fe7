#!/usr/bin/env bash
# Compile equifast's CUDA sources without a GPU, so that a broken .cu fails CI, then read the SASS of
# the compiled kernels and fail if any equifast kernel uses local memory (a stack frame, LDL/STL: spilled
# registers or an array the compiler could not keep in registers) or calls a 64-bit integer division
# routine (CALL to __cuda_sm*_div_s64 / rem_s64 / div_u64 / rem_u64: a subroutine of about 80
# instructions); prints registers, stack and shared memory per kernel.
#
# Creates (or reuses) a separate venv .venv-cuda with torch==2.14.1 (a CUDA 13.0 build) and compiles
# csrc/ (CPU + CUDA sources) with the machine's nvcc into .venv-cuda/equifast-build (incremental); the in-place
# CPU build of the main venv is left alone. Env: CUDA_HOME (default /usr/local/cuda),
# TORCH_CUDA_ARCH_LIST (default 9.0), PYTHON (default python3), MAX_JOBS (default: cores),
# EQUIFAST_CUDA_VENV (default .venv-cuda), CLEAN=1 rebuilds from scratch. The SASS tools (cuobjdump,
# nvdisasm) come from $CUDA_HOME/bin, PATH, or the copies Triton ships (triton/backends/nvidia/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
say() { echo "[cuda-compile-check +$(( $(date +%s) - start ))s] $*"; }

if ! ls csrc/cuda/*.cu >/dev/null 2>&1; then say "no CUDA sources under csrc/cuda: nothing to do"; exit 0; fi
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
NVCC="$CUDA_HOME/bin/nvcc"
if [ ! -x "$NVCC" ]; then say "ERROR: nvcc not found at $NVCC (set CUDA_HOME)"; exit 2; fi
say "nvcc: $("$NVCC" --version | tail -n 2 | head -n 1)"

VENV="${EQUIFAST_CUDA_VENV:-.venv-cuda}"
PY="$VENV/bin/python"
TORCH_VERSION=2.14.1
if [ ! -x "$PY" ]; then
  say "creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') and torch.version.cuda else 1)" 2>/dev/null; then
  say "installing torch==$TORCH_VERSION (CUDA build), numpy, ninja, setuptools, wheel into $VENV"
  "$PY" -m pip install -q "torch==$TORCH_VERSION" numpy ninja setuptools wheel
fi
say "torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"

# Headers torch's CUDA build expects from the nvidia-* wheels (cu13 layout); setup.py adds them too.
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for inc in "$SITE"/nvidia/cu[0-9]*/include; do
  if [ -d "$inc" ]; then export CPATH="${CPATH:+$CPATH:}$inc"; fi
done

# Build directory inside the (git-ignored) venv, so that reruns are incremental (ninja); CLEAN=1 wipes it.
BUILD="${EQUIFAST_CUDA_BUILD_DIR:-$VENV/equifast-build}"
if [ "${CLEAN:-0}" = "1" ]; then rm -rf "$BUILD"; fi
mkdir -p "$BUILD"
rm -rf "$BUILD/lib"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
say "compiling $(ls csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu 2>/dev/null | tr '\n' ' ')for sm_${TORCH_CUDA_ARCH_LIST/./} (MAX_JOBS=$MAX_JOBS) into $BUILD"
EQUIFAST_BUILD_CUDA=1 PATH="$(dirname "$PY"):$CUDA_HOME/bin:$PATH" \
  "$PY" setup.py -q build_ext --build-temp "$BUILD/temp" --build-lib "$BUILD/lib" >"$BUILD/build.log" 2>&1 || {
  grep -E "error" "$BUILD/build.log" | sort | uniq | head -n 60 || true
  echo "---- last lines of the build log ($BUILD/build.log) ----"; tail -n 25 "$BUILD/build.log"
  say "FAILED: the CUDA sources do not compile"; exit 1; }
SO=$(find "$BUILD/lib" -name '_C*.so' | head -n 1)
if [ -z "$SO" ]; then say "FAILED: no equifast/_C*.so produced"; exit 1; fi
SYMS="$BUILD/symbols.txt"
nm -D "$SO" >"$SYMS" || true
if ! grep -q "__cudaRegisterFatBinary" "$SYMS"; then say "FAILED: $SO contains no CUDA kernels"; exit 1; fi
for src in csrc/cuda/*.cu; do
  obj=$(basename "$src" .cu)
  if [ -z "$(find "$BUILD/temp" -path "*csrc/cuda/$obj.o" | head -n 1)" ]; then say "FAILED: $src was not compiled"; exit 1; fi
done
say "OK: built $(basename "$SO") ($(du -h "$SO" | cut -f1)) with the CUDA kernels for sm_${TORCH_CUDA_ARCH_LIST/./}; $(grep -c -i "warning" "$BUILD/build.log" || true) warning lines in $BUILD/build.log"

# ---------------------------------------------------------------- SASS: local memory, 64-bit division
find_tool() {  # $1: cuobjdump or nvdisasm
  local cand
  for cand in "$CUDA_HOME/bin/$1" "$(command -v "$1" 2>/dev/null || true)" \
              "$VENV"/lib/python3*/site-packages/triton/backends/nvidia/bin/"$1" \
              .venv/lib/python3*/site-packages/triton/backends/nvidia/bin/"$1"; do
    if [ -n "$cand" ] && [ -x "$cand" ]; then realpath "$cand"; return 0; fi
  done
  return 1
}
CUOBJDUMP=$(find_tool cuobjdump) || { say "FAILED: cuobjdump not found (CUDA_HOME/bin, PATH, triton's bundle)"; exit 1; }
NVDISASM=$(find_tool nvdisasm) || { say "FAILED: nvdisasm not found (CUDA_HOME/bin, PATH, triton's bundle)"; exit 1; }
SASS="$BUILD/sass"
rm -rf "$SASS"; mkdir -p "$SASS"
for src in csrc/cuda/*.cu; do
  name=$(basename "$src" .cu)
  obj=$(realpath "$(find "$BUILD/temp" -path "*csrc/cuda/$name.o" | head -n 1)")
  "$CUOBJDUMP" -res-usage "$obj" >"$SASS/$name.res.txt"
  mkdir -p "$SASS/$name"
  (cd "$SASS/$name" && "$CUOBJDUMP" -xelf all "$obj" >/dev/null)
  for cubin in "$SASS/$name"/*.cubin; do "$NVDISASM" -c "$cubin" >>"$SASS/$name.sass"; done
done
say "SASS of $(ls "$SASS"/*.sass | wc -l) object(s) in $SASS (tools: $CUOBJDUMP, $NVDISASM)"
"$PY" - "$SASS" <<'PYEOF'
import glob, os, re, subprocess, sys

sass_dir = sys.argv[1]
div64 = re.compile(r"\bCALL\b.*__cuda_sm\w*_(div|rem)_[su]64")
local = re.compile(r"\b(LDL|STL)(\.\w+)*\b")
kernels = {}  # mangled name -> dict
for res in sorted(glob.glob(os.path.join(sass_dir, "*.res.txt"))):
    name = None
    for line in open(res):
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and name and "equifast" in name:
            reg, stack, shared, loc = map(int, m.groups())
            kernels[name] = dict(reg=reg, stack=stack, shared=shared, local=loc, div64=0, ldl_stl=0)
for sass in sorted(glob.glob(os.path.join(sass_dir, "*.sass"))):
    fn = None
    for line in open(sass):
        m = re.match(r"\s*\.type\s+([^,]+),@function", line)
        if m:
            fn = m.group(1) if m.group(1) in kernels else None
            continue
        if fn is None or "/*" not in line:
            continue
        if div64.search(line):
            kernels[fn]["div64"] += 1
        if local.search(line):
            kernels[fn]["ldl_stl"] += 1
if not kernels:
    sys.exit("[cuda-compile-check] FAILED: no equifast kernels found in the SASS")
try:
    names = subprocess.run(["c++filt"], input="\n".join(kernels), capture_output=True, text=True,
                           check=True).stdout.splitlines()
except (OSError, subprocess.CalledProcessError):
    names = list(kernels)

def short(demangled):
    s = re.sub(r"equifast::cuda::\(anonymous namespace\)::", "", demangled)
    s = re.sub(r"\(.*\)$", "", s)  # drop the parameter list
    return s.replace("c10::", "").replace("equifast::cuda::", "")

flagged = 0
print(f"{'kernel':<70} {'regs':>5} {'stack':>6} {'local':>6} {'shared':>7} {'LDL/STL':>8} {'div64 calls':>12}")
for (mangled, k), demangled in sorted(zip(kernels.items(), names), key=lambda t: short(t[1])):
    bad = k["stack"] or k["local"] or k["ldl_stl"] or k["div64"]
    flagged += bool(bad)
    print(f"{short(demangled):<70} {k['reg']:>5} {k['stack']:>6} {k['local']:>6} {k['shared']:>7} {k['ldl_stl']:>8} "
          f"{k['div64']:>12}{'  <- FLAGGED' if bad else ''}")
print(f"[cuda-compile-check] {len(kernels)} equifast kernels, {flagged} flagged "
      f"(local memory: stack/local/LDL/STL; div64: calls to a 64-bit division or remainder routine)")
sys.exit(1 if flagged else 0)
PYEOF
say "OK: no equifast kernel uses local memory or calls a 64-bit division routine"
