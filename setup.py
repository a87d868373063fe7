"""Build equifast's C++ extension ``equifast._C`` (CPU kernels always; CUDA kernels where torch has
CUDA and nvcc is found). Environment switches:

  EQUIFAST_NO_EXTENSION=1   compile nothing (pure-Python install; the package still works)
  EQUIFAST_BUILD_CUDA=0|1   force the CUDA kernels off / on (default: on when torch.version.cuda
                            and nvcc are found)
"""
import glob
import os

from setuptools import setup


def _flag(name, default=None):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.lower() not in ("0", "false", "no", "off")


def extensions():
    if _flag("EQUIFAST_NO_EXTENSION", False):
        return [], {}
    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if not cpp_sources:
        return [], {}
    import torch
    from torch.utils import cpp_extension

    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    want_cuda = _flag("EQUIFAST_BUILD_CUDA", None)
    has_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None
    if want_cuda is None:
        want_cuda = has_cuda
    if want_cuda and not has_cuda:
        raise RuntimeError("EQUIFAST_BUILD_CUDA=1 but torch has no CUDA or nvcc (CUDA_HOME) was not found")
    cxx = ["-O3", "-std=c++17"]
    openmp = ["-fopenmp"]
    include_dirs = [os.path.abspath("csrc")]
    if want_cuda and cuda_sources:
        ext = cpp_extension.CUDAExtension(
            "equifast._C", cpp_sources + cuda_sources, include_dirs=include_dirs,
            define_macros=[("EQUIFAST_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx + openmp, "nvcc": ["-O3", "-std=c++17", "--use_fast_math",
                                                               "-lineinfo"]},
            extra_link_args=openmp)
    else:
        ext = cpp_extension.CppExtension("equifast._C", cpp_sources, include_dirs=include_dirs,
                                         extra_compile_args={"cxx": cxx + openmp}, extra_link_args=openmp)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
