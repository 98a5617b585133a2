"""Opt-in: compile the CUDA source with nvcc against this torch's headers, even for a CPU-only torch.

Slow (1-3 minutes), so it only runs with PRUNEOPT_TEST_NVCC=1 and nvcc on PATH. A CPU wheel of
torch ships the c10/ATen CUDA headers but not the generated c10/cuda/impl/cuda_cmake_macros.h,
which is stubbed here; the result is compiled (through ptxas) but never linked or run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cpp_ext import _loader

pytestmark = pytest.mark.skipif(
    os.environ.get("PRUNEOPT_TEST_NVCC") != "1" or shutil.which("nvcc") is None,
    reason="set PRUNEOPT_TEST_NVCC=1 (and have nvcc on PATH) to compile the CUDA source",
)


@pytest.mark.slow
def test_cuda_source_compiles_with_nvcc(tmp_path: Path) -> None:
    from torch.utils import cpp_extension

    stub = tmp_path / "stub" / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [f"-I{_loader.CSRC_DIR}", "-isystem", str(tmp_path / "stub")]
    for path in cpp_extension.include_paths():
        includes += ["-isystem", path]
    arch = os.environ.get("PRUNEOPT_TEST_NVCC_ARCH", "90")
    cmd = [
        "nvcc",
        "-c",
        str(_loader.CSRC_DIR / "multipos_loss_cuda.cu"),
        "-o",
        str(tmp_path / "multipos_loss_cuda.o"),
        "-std=c++20",
        *_loader.EXTRA_CUDA_CFLAGS,
        *cpp_extension.COMMON_NVCC_FLAGS,
        "-Xcompiler",
        "-fPIC",
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-Xptxas",
        "-warn-spills",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-DTORCH_EXTENSION_NAME=pruneopt_nvcc_check",
        *includes,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "spill" not in proc.stderr.lower(), proc.stderr[-4000:]
    assert (tmp_path / "multipos_loss_cuda.o").stat().st_size > 0
