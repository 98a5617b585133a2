"""Optional prebuilt build of the cpp_ext operator library (everything else is in pyproject.toml).

By default this adds nothing: the package installs as pure Python and cpp_ext compiles its
operator just in time on first use (or falls back to the eager reference). To ship a prebuilt
library instead, build with torch already installed and without build isolation:

    PRUNEOPT_BUILD_EXT=1 pip install --no-build-isolation .
    PRUNEOPT_BUILD_EXT=1 python setup.py build_ext --inplace     # in-tree, for development

That produces ``cpp_ext/_C*.so``, which cpp_ext loads first (backend "prebuilt"). CUDA sources are
included when this torch is a CUDA build and a CUDA toolkit is found (CUDA_HOME / nvcc);
PRUNEOPT_BUILD_CUDA=1 or 0 forces the choice. TORCH_CUDA_ARCH_LIST selects GPU architectures as
usual (default: the visible GPUs, or torch's list when none is visible).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup


def _extension_kwargs() -> dict:
    if os.environ.get("PRUNEOPT_BUILD_EXT", "").strip() != "1":
        return {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from cpp_ext._loader import CPU_SOURCES, CUDA_SOURCES, EXTRA_CFLAGS, EXTRA_CUDA_CFLAGS

    csrc = os.path.join("cpp_ext", "csrc")
    sources = [os.path.join(csrc, name) for name in CPU_SOURCES]
    choice = os.environ.get("PRUNEOPT_BUILD_CUDA", "auto").strip()
    use_cuda = choice == "1" or (choice == "auto" and torch.version.cuda is not None and CUDA_HOME is not None)
    include_dirs = [os.path.join(here, csrc)]
    if use_cuda:
        ext = CUDAExtension(
            "cpp_ext._C",
            sources + [os.path.join(csrc, name) for name in CUDA_SOURCES],
            include_dirs=include_dirs,
            extra_compile_args={"cxx": list(EXTRA_CFLAGS), "nvcc": list(EXTRA_CUDA_CFLAGS)},
        )
    else:
        ext = CppExtension(
            "cpp_ext._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": list(EXTRA_CFLAGS)}
        )
    print(f"cpp_ext: building the prebuilt operator library ({'CPU + CUDA' if use_cuda else 'CPU only'})")
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**_extension_kwargs())
