"""Build equifast's C++ extension ``equifast._C``: the op schemas (csrc/*.cpp), the CPU kernels
(csrc/cpu/, always when the sources exist) and the CUDA kernels (csrc/cuda/, where torch has CUDA
and nvcc is found). Environment switches:

  EQUIFAST_NO_EXTENSION=1   compile nothing (pure-Python install; the package still works and says so)
  EQUIFAST_BUILD_CPU=0|1    leave the CPU kernels out / require them (default: on)
  EQUIFAST_BUILD_CUDA=0|1   force the CUDA kernels off / on (default: on when torch.version.cuda
                            and nvcc (CUDA_HOME) are found); =1 without them is an error
  TORCH_CUDA_ARCH_LIST      GPU architectures (torch's variable), e.g. "9.0"
  EQUIFAST_SANITIZE=1       build the CPU kernels with AddressSanitizer + UndefinedBehaviorSanitizer
                            (-fno-wrapv so that signed overflow is caught; -O1 -g); the library then
                            needs libasan / libubsan preloaded: use tools/sanitize_cpu.sh (make sanitize-cpu)

The CUDA headers that torch's CUDA wheels ship under site-packages/nvidia/cu13/include
are added to the include path when present, so a plain toolkit plus the torch wheel suffices.
"""
import glob
import os
import site
import sysconfig

from setuptools import setup


def _flag(name, default=None):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _nvidia_wheel_includes():
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    try:
        roots.update(site.getsitepackages())
    except AttributeError:
        pass
    found = []
    for root in sorted(roots):
        for inc in sorted(glob.glob(os.path.join(root, "nvidia", "cu[0-9]*", "include"))):
            if os.path.isdir(inc) and inc not in found:
                found.append(inc)
    return found


def extensions():
    if _flag("EQUIFAST_NO_EXTENSION", False):
        return [], {}
    schema_sources = sorted(glob.glob("csrc/*.cpp"))
    cpu_sources = sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    if not schema_sources:
        return [], {}
    import torch
    from torch.utils import cpp_extension

    want_cpu = _flag("EQUIFAST_BUILD_CPU", True)
    if want_cpu and _flag("EQUIFAST_BUILD_CPU", None) and not cpu_sources:
        raise RuntimeError("EQUIFAST_BUILD_CPU=1 but csrc/cpu/ has no sources")
    want_cuda = _flag("EQUIFAST_BUILD_CUDA", None)
    has_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None
    if want_cuda is None:
        want_cuda = has_cuda and bool(cuda_sources)
    if want_cuda and not has_cuda:
        raise RuntimeError("EQUIFAST_BUILD_CUDA=1 but torch has no CUDA (torch.version.cuda is None) "
                           "or nvcc was not found (set CUDA_HOME)")
    sources = schema_sources + (cpu_sources if want_cpu else [])
    if not (want_cpu and cpu_sources) and not (want_cuda and cuda_sources):
        return [], {}
    # The C++ standard is left to torch (C++17 up to torch 2.13, C++20 from 2.14). ISO C++ modes turn
    # floating-point contraction off; the CPU GEMM tiles (csrc/cpu/microkernels.h) rely on a * b + c
    # becoming one FMA.
    cxx = ["-O3", "-ffp-contract=fast"]
    openmp = ["-fopenmp"]  # at::parallel_for's OpenMP backend is inlined into our translation units
    link = list(openmp)
    if _flag("EQUIFAST_SANITIZE", False):
        # Python's own CFLAGS carry -fwrapv, under which signed overflow is defined and not reported.
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
        cxx = ["-O1", "-g", "-ffp-contract=fast", "-fno-wrapv"] + sanitize
        link += sanitize
    include_dirs = [os.path.abspath("csrc")]
    if want_cuda and cuda_sources:
        ext = cpp_extension.CUDAExtension(
            "equifast._C", sources + cuda_sources, include_dirs=include_dirs + _nvidia_wheel_includes(),
            define_macros=[("EQUIFAST_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx + openmp, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link)
    else:
        ext = cpp_extension.CppExtension("equifast._C", sources, include_dirs=include_dirs,
                                         extra_compile_args={"cxx": cxx + openmp}, extra_link_args=link)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
