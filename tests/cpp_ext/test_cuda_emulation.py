"""The CUDA kernels, compiled as C++ and run on CPU threads (see cuda_emulation.cpp), against the
reference. This checks the kernel logic (tiling, masking, online statistics, split merging,
gradient accumulation) on machines without a GPU; test_cuda.py runs them for real."""

from __future__ import annotations

import pytest
import torch

from cpp_ext.reference import multi_positive_loss_reference

from .conftest import make_problem

# (B, M, D, n_labels, in_batch, dtype, sms, mode): `sms` drives the split planning, so small
# values force several key splits (forward, grad_q) and row splits (grad_k).
CASES = [
    (70, 130, 37, 5, False, torch.float64, 4, "log_sum"),
    (65, 65, 17, 8, True, torch.float32, 132, "mean_log"),
    (1, 1, 3, 1, True, torch.float64, 2, "mean_log"),
    (5, 200, 9, 3, False, torch.float16, 2, "mean_log"),
    (20, 70, 33, 4, False, torch.bfloat16, 1, "log_sum"),
    (3, 0, 5, 2, False, torch.float64, 2, "log_sum"),
]


def _tolerance(dtype: torch.dtype) -> dict:
    return dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("case", CASES, ids=[f"B{c[0]}-M{c[1]}-D{c[2]}-{c[5]}-{c[7]}" for c in CASES])
def test_emulated_cuda_kernels_match_reference(cuda_emulation, case) -> None:
    B, M, D, n_labels, in_batch, dtype, sms, mode = case
    prob = make_problem(B, M, D, n_labels, in_batch=in_batch, dtype=dtype, seed=B + M)
    tau = 0.1
    loss, valid, stats = cuda_emulation.fwd(*prob.args(), tau, mode, sms)

    # Forward and saved statistics: same semantics as the CPU operator.
    cpu_loss, cpu_valid, cpu_stats, _ = torch.ops.pruneopt.multipos_loss_fwd(*prob.args(), tau, mode, False)
    ref = prob.leaves()
    ref_loss, ref_valid = multi_positive_loss_reference(*ref.args(), tau=tau, mode=mode)
    assert torch.equal(valid, ref_valid) and torch.equal(valid, cpu_valid)
    torch.testing.assert_close(loss, ref_loss.detach(), **_tolerance(dtype))
    torch.testing.assert_close(stats, cpu_stats, **_tolerance(dtype))

    # Backward with a non-uniform upstream gradient.
    g = torch.rand(B, generator=torch.Generator().manual_seed(3), dtype=loss.dtype) + 0.5
    grad_q, grad_k = cuda_emulation.bwd(g, *prob.args(), stats, tau, mode, True, sms)
    (ref_loss * g).sum().backward()
    if in_batch:
        got, expected = [grad_q + grad_k], [ref.q.grad]
    else:
        got, expected = [grad_q, grad_k], [ref.q.grad, ref.k.grad]
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == dtype and a.shape == b.shape
        if dtype in (torch.float16, torch.bfloat16):
            scale = b.float().abs().max().item()
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * scale + 1e-6)
        else:
            torch.testing.assert_close(a, b, **_tolerance(dtype))


def test_emulated_backward_without_grad_k(cuda_emulation) -> None:
    prob = make_problem(9, 40, 6, 3, dtype=torch.float32, seed=1)
    loss, _, stats = cuda_emulation.fwd(*prob.args(), 0.2, "mean_log", 2)
    grad_q, grad_k = cuda_emulation.bwd(torch.ones(9), *prob.args(), stats, 0.2, "mean_log", False, 2)
    cpu_q, cpu_k = torch.ops.pruneopt.multipos_loss_bwd(
        torch.ones(9), *prob.args(), stats, 0.2, "mean_log", True, False
    )
    assert grad_k.shape == cpu_k.shape == (0, 6)
    torch.testing.assert_close(grad_q, cpu_q, rtol=1e-4, atol=2e-5)
