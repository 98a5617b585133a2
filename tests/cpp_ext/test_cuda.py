"""The CUDA kernels on a real GPU (skipped without one)."""

from __future__ import annotations

import pytest
import torch

import cpp_ext
from cpp_ext import _loader
from cpp_ext.reference import multi_positive_loss_reference

from .conftest import make_problem

pytestmark = pytest.mark.gpu  # skipped without a CUDA device (tests/conftest.py)


@pytest.fixture(scope="module")
def cuda_backend(compiled_backend: str) -> str:
    state = _loader.state()
    assert state.has_cuda, f"CUDA is available but the operator library has no CUDA kernels: {state.reason}"
    return state.name


def _run(fn, prob, mode: str, tau: float, weights: torch.Tensor):
    p = prob.leaves()
    loss, valid = fn(*p.args(), tau=tau, mode=mode)
    (loss * weights.to(loss.dtype)).sum().backward()
    grads = (p.q.grad,) if p.in_batch else (p.q.grad, p.k.grad)
    return loss.detach(), valid, grads


# (B, M, D, n_labels, in_batch, dtype, mode)
CASES = [
    (1, 7, 5, 2, False, torch.float64, "mean_log"),
    (9, 4, 6, 2, False, torch.float64, "log_sum"),
    (67, 67, 40, 9, True, torch.float32, "mean_log"),
    (300, 5000, 130, 60, False, torch.float32, "log_sum"),
    (130, 2000, 64, 2, False, torch.float32, "mean_log"),
    (96, 3000, 128, 40, False, torch.float16, "mean_log"),
    (96, 96, 256, 12, True, torch.bfloat16, "log_sum"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"B{c[0]}-M{c[1]}-D{c[2]}-{c[5]}-{c[6]}" for c in CASES])
def test_cuda_matches_reference(cuda_backend: str, case) -> None:
    B, M, D, n_labels, in_batch, dtype, mode = case
    prob = make_problem(B, M, D, n_labels, in_batch=in_batch, dtype=dtype, seed=B).to(device="cuda")
    weights = torch.rand(B, device="cuda") + 0.5
    loss, valid, grads = _run(cpp_ext.multi_positive_loss, prob, mode, 0.07, weights)
    ref_loss, ref_valid, ref_grads = _run(multi_positive_loss_reference, prob, mode, 0.07, weights)
    assert loss.is_cuda and torch.equal(valid, ref_valid)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=5e-5)
    torch.testing.assert_close(loss, ref_loss, **tol)
    for g, ref_g in zip(grads, ref_grads, strict=True):
        assert g.dtype == dtype
        if dtype in (torch.float16, torch.bfloat16):
            scale = ref_g.float().abs().max().item()
            torch.testing.assert_close(g.float(), ref_g.float(), rtol=2e-2, atol=2e-2 * scale)
        else:
            torch.testing.assert_close(g, ref_g, **tol)


def test_cuda_gradcheck(cuda_backend: str) -> None:
    prob = make_problem(5, 70, 3, 2, seed=3).to(device="cuda").leaves()

    def fn(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return cpp_ext.multi_positive_loss(q, k, prob.q_labels, prob.k_labels, prob.self_index, 0.5, "log_sum")[0]

    assert torch.autograd.gradcheck(fn, (prob.q, prob.k))


def test_cuda_is_deterministic(cuda_backend: str) -> None:
    prob = make_problem(200, 30000, 64, 300, dtype=torch.float32, seed=4).to(device="cuda")
    outs = []
    for _ in range(2):
        p = prob.leaves()
        loss, _ = cpp_ext.multi_positive_loss(*p.args(), tau=0.05)
        loss.sum().backward()
        outs.append((loss.detach(), p.q.grad, p.k.grad))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


def test_cuda_opcheck(cuda_backend: str) -> None:
    prob = make_problem(70, 90, 20, 5, dtype=torch.float32, seed=5).to(device="cuda").leaves()
    torch.library.opcheck(torch.ops.pruneopt.multipos_loss_fwd.default, (*prob.args(), 0.1, "mean_log", True))


def test_cuda_peak_memory_is_far_below_eager(cuda_backend: str) -> None:
    B, M, D = 512, 65536, 128
    prob = make_problem(B, M, D, 2000, dtype=torch.float32, seed=6).to(device="cuda")

    def peak(fn) -> int:
        q = prob.q.clone().requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(q, prob.k, prob.q_labels, prob.k_labels, prob.self_index, tau=0.05).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    ext = peak(cpp_ext.multi_positive_loss_mean)
    eager = peak(cpp_ext.multi_positive_loss_reference_mean)
    assert eager > B * M * 4
    assert ext < B * M * 4 / 4, (ext, eager)
