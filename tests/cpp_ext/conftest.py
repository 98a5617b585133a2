from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cpp_ext import _loader

HERE = Path(__file__).resolve().parent

# Reasons for which the compiled operator may legitimately be missing (tests then skip);
# any other fallback to the reference (e.g. a compile error) makes the tests fail.
_ACCEPTABLE_MISSING = {"disabled", "no_compiler", "no_ninja"}


@dataclass
class Problem:
    """One random loss problem; ``k`` is ``q`` itself in in-batch mode."""

    q: torch.Tensor
    k: torch.Tensor
    q_labels: torch.Tensor
    k_labels: torch.Tensor
    self_index: torch.Tensor
    in_batch: bool

    def args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q, self.k, self.q_labels, self.k_labels, self.self_index

    def leaves(self, requires_grad: bool = True) -> Problem:
        """Fresh leaf copies (k aliases q again in in-batch mode)."""
        q = self.q.detach().clone().requires_grad_(requires_grad)
        k = q if self.in_batch else self.k.detach().clone().requires_grad_(requires_grad)
        return Problem(q, k, self.q_labels, self.k_labels, self.self_index, self.in_batch)

    def to(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> Problem:
        q = self.q.detach().to(device=device, dtype=dtype)
        k = q if self.in_batch else self.k.detach().to(device=device, dtype=dtype)
        return Problem(
            q,
            k,
            self.q_labels.to(device),
            self.k_labels.to(device),
            self.self_index.to(device),
            self.in_batch,
        )


def make_problem(
    B: int,
    M: int,
    D: int,
    n_labels: int,
    *,
    in_batch: bool = False,
    dtype: torch.dtype = torch.float64,
    self_fraction: float = 0.5,
    unique_labels: bool = False,
    seed: int = 0,
) -> Problem:
    """Random L2-normalised problem. In-batch: ``k = q``, ``self_index = arange(B)``. Memory bank:
    a ``self_fraction`` of the queries have their own entry somewhere in ``k``."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1).to(dtype)
    if unique_labels:
        q_labels = torch.arange(B)
    else:
        q_labels = torch.randint(0, n_labels, (B,), generator=g)
    if in_batch:
        return Problem(q, q, q_labels, q_labels, torch.arange(B), True)
    k = F.normalize(torch.randn(M, D, generator=g, dtype=torch.float64), dim=1).to(dtype)
    if unique_labels:
        k_labels = torch.arange(B, B + M)
    else:
        k_labels = torch.randint(0, n_labels, (M,), generator=g)
    own = torch.randint(0, max(M, 1), (B,), generator=g)
    has_self = torch.rand(B, generator=g) < self_fraction
    self_index = torch.where(has_self & (M > 0), own, torch.full_like(own, -1))
    return Problem(q, k, q_labels, k_labels, self_index, False)


@pytest.fixture(scope="session")
def compiled_backend() -> str:
    """The compiled operator must be active; skip only when no toolchain exists at all."""
    state = _loader.state()
    if state.name == "reference":
        if state.reason_kind in _ACCEPTABLE_MISSING:
            pytest.skip(f"compiled operator unavailable: {state.reason}")
        pytest.fail(f"the compiled operator failed to build or load: {state.reason}")
    return state.name


@pytest.fixture(scope="session")
def cuda_emulation(compiled_backend: str):
    """torch.ops.pruneopt_cuda_emu: the CUDA kernels compiled as C++ and run on CPU threads."""
    from torch.utils import cpp_extension

    source = HERE / "cuda_emulation.cpp"
    h = hashlib.sha256()
    for path in (source, _loader.CSRC_DIR / "multipos_loss.h", _loader.CSRC_DIR / "multipos_loss_cuda_kernels.h"):
        h.update(path.read_bytes())
    h.update(torch.__version__.encode())
    key = h.hexdigest()[:16]
    root = _loader.cache_root()
    build_dir = root / f"cuda_emulation_{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    with _loader.file_lock(root / f"cuda_emulation_{key}.lock"):
        # as in cpp_ext._loader: torch's baton left by a killed build would make load() wait forever; every
        # builder of this directory holds our lock, so one found here is stale
        (build_dir / "lock").unlink(missing_ok=True)
        cpp_extension.load(
            name=f"pruneopt_cuda_emu_{key}",
            sources=[str(source)],
            extra_include_paths=[str(_loader.CSRC_DIR)],
            extra_cflags=["-O2"],
            build_directory=str(build_dir),
            is_python_module=False,
        )
    return torch.ops.pruneopt_cuda_emu
