"""The compiled operator (CPU) against the eager reference, plus its operator plumbing."""

from __future__ import annotations

import ctypes
import sys

import pytest
import torch

import cpp_ext
from cpp_ext.reference import multi_positive_loss_reference

from .conftest import Problem, make_problem

MODES = ("mean_log", "log_sum")

# name -> (B, M, D, n_labels, in_batch)
SHAPES = {
    "B1": (1, 7, 5, 2, False),
    "M_lt_B": (9, 4, 6, 2, False),
    "odd_D": (13, 37, 19, 4, False),
    "in_batch": (12, 12, 8, 3, True),
    "heavy_duplication": (16, 40, 8, 2, False),
    "several_key_tiles": (3, 9000, 4, 40, False),
}


def run(fn, prob: Problem, mode: str, tau: float, weights: torch.Tensor):
    """Loss, valid mask and gradients of sum(weights * loss) w.r.t. the leaves of ``prob``."""
    p = prob.leaves()
    loss, valid = fn(*p.args(), tau=tau, mode=mode)
    (loss * weights.to(loss.dtype)).sum().backward()
    grads = (p.q.grad,) if p.in_batch else (p.q.grad, p.k.grad)
    return loss.detach(), valid, grads


def assert_close_to_reference(prob: Problem, mode: str, tau: float, rtol: float, atol: float) -> None:
    weights = torch.rand(prob.q.shape[0], generator=torch.Generator().manual_seed(1)) + 0.5
    loss, valid, grads = run(cpp_ext.multi_positive_loss, prob, mode, tau, weights)
    ref_loss, ref_valid, ref_grads = run(multi_positive_loss_reference, prob, mode, tau, weights)
    assert loss.dtype == ref_loss.dtype
    assert torch.equal(valid, ref_valid)
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    for g, ref_g in zip(grads, ref_grads, strict=True):
        assert g.dtype == ref_g.dtype and g.shape == ref_g.shape
        torch.testing.assert_close(g, ref_g, rtol=rtol, atol=atol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_reference_float64(compiled_backend: str, shape: str, mode: str) -> None:
    B, M, D, n_labels, in_batch = SHAPES[shape]
    prob = make_problem(B, M, D, n_labels, in_batch=in_batch, seed=list(SHAPES).index(shape))
    assert_close_to_reference(prob, mode, tau=0.1, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_float32_is_as_accurate_as_eager_float32(compiled_backend: str, shape: str, mode: str) -> None:
    """float32 results against the float64 truth: the fused operator's error stays within a small
    factor of the eager float32 reference's own error (plus a floor of 2e-5 of the largest entry)."""
    B, M, D, n_labels, in_batch = SHAPES[shape]
    prob64 = make_problem(B, M, D, n_labels, in_batch=in_batch, dtype=torch.float64, seed=7)
    prob32 = prob64.to(torch.float32)
    weights = torch.rand(B, generator=torch.Generator().manual_seed(1)) + 0.5
    truth = run(multi_positive_loss_reference, prob64, mode, 0.05, weights)
    ext = run(cpp_ext.multi_positive_loss, prob32, mode, 0.05, weights)
    eager = run(multi_positive_loss_reference, prob32, mode, 0.05, weights)
    assert ext[0].dtype == torch.float32 and torch.equal(ext[1], truth[1])
    for got, ref, exact in zip((ext[0], *ext[2]), (eager[0], *eager[2]), (truth[0], *truth[2]), strict=True):
        assert got.dtype == torch.float32
        scale = max(1.0, exact.abs().max().item())
        err = (got.double() - exact).abs().max().item()
        ref_err = (ref.double() - exact).abs().max().item()
        assert err <= 5 * ref_err + 2e-5 * scale, (err, ref_err)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("in_batch", [False, True])
def test_gradcheck_float64(compiled_backend: str, mode: str, in_batch: bool) -> None:
    prob = make_problem(5, 7, 3, 2, in_batch=in_batch, seed=3).leaves()
    assert bool(multi_positive_loss_reference(*prob.args(), tau=0.5, mode=mode)[1].any())
    if in_batch:

        def fn(q: torch.Tensor) -> torch.Tensor:
            return cpp_ext.multi_positive_loss(q, q, prob.q_labels, prob.k_labels, prob.self_index, 0.5, mode)[0]

        assert torch.autograd.gradcheck(fn, (prob.q,))
    else:

        def fn2(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return cpp_ext.multi_positive_loss(q, k, prob.q_labels, prob.k_labels, prob.self_index, 0.5, mode)[0]

        assert torch.autograd.gradcheck(fn2, (prob.q, prob.k))


def test_gradcheck_mean_over_valid_rows(compiled_backend: str) -> None:
    prob = make_problem(6, 9, 4, 3, seed=11).leaves()

    def fn(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return cpp_ext.multi_positive_loss_mean(q, k, prob.q_labels, prob.k_labels, prob.self_index, 0.3, "log_sum")

    assert torch.autograd.gradcheck(fn, (prob.q, prob.k))


@pytest.mark.parametrize("mode", MODES)
def test_unique_labels_give_no_valid_rows(compiled_backend: str, mode: str) -> None:
    prob = make_problem(6, 10, 4, 0, unique_labels=True).leaves()
    loss, valid = cpp_ext.multi_positive_loss(*prob.args(), tau=0.1, mode=mode)
    assert not valid.any()
    assert torch.equal(loss, torch.zeros_like(loss))
    mean = cpp_ext.multi_positive_loss_mean(*prob.args(), tau=0.1, mode=mode)
    mean.backward()
    assert mean.item() == 0.0
    assert torch.equal(prob.q.grad, torch.zeros_like(prob.q))
    assert torch.equal(prob.k.grad, torch.zeros_like(prob.k))


def test_in_batch_rows_whose_only_positive_is_self_are_invalid(compiled_backend: str) -> None:
    # labels 0,0,1,2: rows 2 and 3 only match themselves, which is excluded.
    prob = make_problem(4, 4, 3, 1, in_batch=True)
    labels = torch.tensor([0, 0, 1, 2])
    loss, valid = cpp_ext.multi_positive_loss(prob.q, prob.q, labels, labels, torch.arange(4), 0.1)
    assert valid.tolist() == [True, True, False, False]
    assert loss[2:].tolist() == [0.0, 0.0]
    assert (loss[:2] > 0).all()


def test_empty_memory_bank(compiled_backend: str) -> None:
    q = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1).requires_grad_()
    k = torch.empty(0, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.zeros(3, dtype=torch.int64)
    loss, valid = cpp_ext.multi_positive_loss(q, k, labels, labels[:0])
    assert not valid.any() and torch.equal(loss, torch.zeros(3, dtype=torch.float64))
    loss.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q)) and k.grad.shape == (0, 4)


def test_mean_is_the_mean_over_valid_rows(compiled_backend: str) -> None:
    prob = make_problem(24, 30, 6, 12, seed=5)
    loss, valid = cpp_ext.multi_positive_loss(*prob.args(), tau=0.2)
    assert 0 < int(valid.sum()) < 24  # the check below is only meaningful with a mix
    mean = cpp_ext.multi_positive_loss_mean(*prob.args(), tau=0.2)
    torch.testing.assert_close(mean, loss[valid].mean())


def test_memory_bank_without_grad_gets_no_grad(compiled_backend: str) -> None:
    prob = make_problem(8, 20, 5, 3, seed=2)
    q = prob.q.clone().requires_grad_()
    loss, _ = cpp_ext.multi_positive_loss(q, prob.k, prob.q_labels, prob.k_labels, prob.self_index, 0.1)
    loss.sum().backward()
    ref_q = prob.q.clone().requires_grad_()
    ref, _ = multi_positive_loss_reference(ref_q, prob.k, prob.q_labels, prob.k_labels, prob.self_index, 0.1)
    ref.sum().backward()
    assert prob.k.grad is None
    torch.testing.assert_close(q.grad, ref_q.grad, rtol=1e-9, atol=1e-10)


def test_default_self_index_excludes_nothing(compiled_backend: str) -> None:
    prob = make_problem(5, 9, 4, 2, seed=4)
    none = torch.full((5,), -1, dtype=torch.int64)
    a = cpp_ext.multi_positive_loss(prob.q, prob.k, prob.q_labels, prob.k_labels)
    b = cpp_ext.multi_positive_loss(prob.q, prob.k, prob.q_labels, prob.k_labels, none)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("in_batch", [False, True])
def test_reduced_precision_inputs(compiled_backend: str, dtype: torch.dtype, in_batch: bool) -> None:
    prob = make_problem(20, 300, 16, 5, in_batch=in_batch, dtype=dtype, seed=9)
    weights = torch.rand(20) + 0.5
    loss, valid, grads = run(cpp_ext.multi_positive_loss, prob, "mean_log", 0.1, weights)
    ref_loss, ref_valid, ref_grads = run(multi_positive_loss_reference, prob, "mean_log", 0.1, weights)
    assert loss.dtype == torch.float32  # accumulated and returned in float32
    assert torch.equal(valid, ref_valid)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for g, ref_g in zip(grads, ref_grads, strict=True):
        assert g.dtype == dtype
        scale = ref_g.float().abs().max().item()
        torch.testing.assert_close(g.float(), ref_g.float(), rtol=2e-2, atol=2e-2 * scale)


@pytest.mark.parametrize("mode", MODES)
def test_repeated_runs_are_bit_identical(compiled_backend: str, mode: str) -> None:
    prob = make_problem(64, 20000, 32, 200, dtype=torch.float32, seed=8)
    results = []
    for _ in range(2):
        p = prob.leaves()
        loss, valid = cpp_ext.multi_positive_loss(*p.args(), tau=0.05, mode=mode)
        loss.sum().backward()
        results.append((loss.detach(), valid, p.q.grad, p.k.grad))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# --- bad input --------------------------------------------------------------------------------


def _valid_kwargs() -> dict:
    prob = make_problem(4, 6, 3, 2, dtype=torch.float32)
    return dict(
        q=prob.q,
        k=prob.k,
        q_labels=prob.q_labels,
        k_labels=prob.k_labels,
        self_index=prob.self_index,
        tau=0.1,
        mode="mean_log",
    )


BAD_INPUTS = [
    ("q 1-D", lambda a: a.update(q=a["q"][0]), ValueError, "q must be 2-D"),
    ("D mismatch", lambda a: a.update(k=a["k"][:, :2].contiguous()), ValueError, "D="),
    ("dtype mismatch", lambda a: a.update(k=a["k"].double()), TypeError, "k has dtype"),
    ("integer q", lambda a: a.update(q=a["q"].long(), k=a["k"].long()), TypeError, "q must be float"),
    ("q not a tensor", lambda a: a.update(q=a["q"].tolist()), TypeError, "q must be a torch.Tensor"),
    ("int32 labels", lambda a: a.update(q_labels=a["q_labels"].int()), TypeError, "q_labels must be int64"),
    ("q_labels length", lambda a: a.update(q_labels=a["q_labels"][:3]), ValueError, "q_labels must have shape"),
    ("k_labels length", lambda a: a.update(k_labels=a["k_labels"][:5]), ValueError, "k_labels must have shape"),
    ("self_index length", lambda a: a.update(self_index=a["self_index"][:2]), ValueError, "self_index must have"),
    ("self_index range", lambda a: a.update(self_index=torch.full((4,), 6)), ValueError, "self_index values"),
    ("self_index below -1", lambda a: a.update(self_index=torch.full((4,), -2)), ValueError, "self_index values"),
    ("non-contiguous q", lambda a: a.update(q=a["q"].t().contiguous().t()), ValueError, "q must be contiguous"),
    ("non-contiguous k", lambda a: a.update(k=a["k"].t().contiguous().t()), ValueError, "k must be contiguous"),
    ("mixed devices", lambda a: a.update(k=a["k"].to("meta")), ValueError, "mixed devices"),
    ("tau zero", lambda a: a.update(tau=0.0), ValueError, "tau"),
    ("tau negative", lambda a: a.update(tau=-0.1), ValueError, "tau"),
    ("tau nan", lambda a: a.update(tau=float("nan")), ValueError, "tau"),
    ("tau string", lambda a: a.update(tau="0.1"), TypeError, "tau"),
    ("unknown mode", lambda a: a.update(mode="sum_log"), ValueError, "mode"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_before_dispatch(compiled_backend: str, case) -> None:
    _, mutate, exc, match = case
    kwargs = _valid_kwargs()
    mutate(kwargs)
    with pytest.raises(exc, match=match):
        cpp_ext.multi_positive_loss(**kwargs)


# The same mistakes sent straight to the C++ operator are caught by its TORCH_CHECKs.
CPP_BAD_INPUTS = [c for c in BAD_INPUTS if c[0] not in {"q not a tensor", "mixed devices", "tau string"}]


@pytest.mark.parametrize("case", CPP_BAD_INPUTS, ids=[c[0] for c in CPP_BAD_INPUTS])
def test_bad_input_raises_in_cpp(compiled_backend: str, case) -> None:
    _, mutate, exc, match = case
    kwargs = _valid_kwargs()
    mutate(kwargs)
    args = [kwargs[n] for n in ("q", "k", "q_labels", "k_labels", "self_index", "tau", "mode")]
    with pytest.raises(exc, match=match):
        torch.ops.pruneopt.multipos_loss_fwd(*args, True)


def test_backward_op_checks_stats(compiled_backend: str) -> None:
    kw = _valid_kwargs()
    args = [kw[n] for n in ("q", "k", "q_labels", "k_labels", "self_index")]
    with pytest.raises(ValueError, match="stats must have shape"):
        torch.ops.pruneopt.multipos_loss_bwd(torch.ones(4), *args, torch.zeros(4, 2), 0.1, "mean_log", True, True)


# --- operator plumbing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,in_batch,mode,with_row_grad",
    [
        (torch.float32, False, "mean_log", True),
        (torch.float64, True, "log_sum", True),
        (torch.bfloat16, False, "log_sum", False),
    ],
)
def test_opcheck_forward(
    compiled_backend: str, dtype: torch.dtype, in_batch: bool, mode: str, with_row_grad: bool
) -> None:
    prob = make_problem(6, 10, 5, 2, in_batch=in_batch, dtype=dtype, seed=12).leaves()
    torch.library.opcheck(torch.ops.pruneopt.multipos_loss_fwd.default, (*prob.args(), 0.1, mode, with_row_grad))


@pytest.mark.parametrize("need_grad_q,need_grad_k", [(True, True), (True, False), (False, True)])
def test_opcheck_backward(compiled_backend: str, need_grad_q: bool, need_grad_k: bool) -> None:
    prob = make_problem(6, 10, 5, 2, dtype=torch.float32, seed=13)
    _, _, stats, _ = torch.ops.pruneopt.multipos_loss_fwd(*prob.args(), 0.1, "log_sum", False)
    args = (torch.rand(6), *prob.args(), stats, 0.1, "log_sum", need_grad_q, need_grad_k)
    torch.library.opcheck(torch.ops.pruneopt.multipos_loss_bwd.default, args)
    grad_q, grad_k = torch.ops.pruneopt.multipos_loss_bwd(*args)
    assert grad_q.shape == ((6, 5) if need_grad_q else (0, 5))
    assert grad_k.shape == ((10, 5) if need_grad_k else (0, 5))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_row_grad_matches_recomputed_backward(compiled_backend: str, mode: str, dtype: torch.dtype) -> None:
    """The forward's fused d loss_i / d q_i equals the tile-recomputing backward with g = 1, and
    autograd gives the same q-gradient whichever of the two it uses."""
    prob = make_problem(40, 9000, 12, 30, dtype=dtype, seed=16)  # several key tiles
    _, _, stats, row_grad = torch.ops.pruneopt.multipos_loss_fwd(*prob.args(), 0.1, mode, True)
    ones = torch.ones(40, dtype=stats.dtype)
    recomputed, _ = torch.ops.pruneopt.multipos_loss_bwd(ones, *prob.args(), stats, 0.1, mode, True, False)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(row_grad, recomputed, **tol)

    g = torch.rand(40, dtype=stats.dtype) + 0.5
    grads = []
    for with_row_grad in (True, False):
        q = prob.q.clone().requires_grad_()
        loss = torch.ops.pruneopt.multipos_loss_fwd(q, *prob.args()[1:], 0.1, mode, with_row_grad)[0]
        (loss * g).sum().backward()
        grads.append(q.grad)
    torch.testing.assert_close(grads[0], grads[1], **tol)


def test_double_backward_is_refused_not_silently_wrong(compiled_backend: str) -> None:
    prob = make_problem(6, 6, 4, 3, in_batch=True).leaves()
    w = torch.rand(6, dtype=torch.float64)
    loss, _ = cpp_ext.multi_positive_loss(*prob.args(), tau=0.2)
    (grad,) = torch.autograd.grad((loss * w).sum(), prob.q, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


def test_torch_compile_smoke(compiled_backend: str) -> None:
    torch._dynamo.reset()
    prob = make_problem(10, 30, 8, 3, dtype=torch.float32, seed=14)
    compiled = torch.compile(cpp_ext.multi_positive_loss_mean, backend="aot_eager", fullgraph=True)
    p1, p2 = prob.leaves(), prob.leaves()
    out = compiled(*p1.args(), tau=0.1, mode="log_sum")
    out.backward()
    expected = cpp_ext.multi_positive_loss_mean(*p2.args(), tau=0.1, mode="log_sum")
    expected.backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(p1.q.grad, p2.q.grad)
    torch.testing.assert_close(p1.k.grad, p2.k.grad)


# --- memory ---------------------------------------------------------------------------------


def _peak_rss_increase(fn) -> int:
    """Bytes by which the process's resident set peaked above its level at the start of ``fn``."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")

    def read(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(field)

    start = read("VmRSS:")
    fn()
    return read("VmHWM:") - start


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc peak-RSS accounting")
def test_never_materialises_the_similarity_matrix(compiled_backend: str) -> None:
    B, M, D = 256, 120000, 16  # memory-bank shape: B x M float32 is 123 MB, k only 7.7 MB
    prob = make_problem(B, M, D, 6000, dtype=torch.float32, seed=15)
    bm_bytes = B * M * 4

    def step(fn) -> None:
        q = prob.q.clone().requires_grad_()  # created before the measurement starts
        args = (q, prob.k, prob.q_labels, prob.k_labels, prob.self_index)
        _peak.append(_peak_rss_increase(lambda: fn(*args, tau=0.05).backward()))

    _peak: list[int] = []
    step(cpp_ext.multi_positive_loss_mean)  # warm-up (first-call allocations, thread pools)
    step(cpp_ext.multi_positive_loss_mean)
    step(cpp_ext.multi_positive_loss_reference_mean)
    ext, eager = _peak[1], _peak[2]
    assert eager > bm_bytes  # the reference does hold B x M tensors
    print(f"peak RSS increase: ext {ext / 1e6:.1f} MB, eager {eager / 1e6:.1f} MB")
    assert ext < bm_bytes / 4, (ext, eager)
