"""Python side of the ``pruneopt::multipos_loss_*`` operators: validation, fake and autograd.

The operators themselves (schema, CPU and CUDA kernels) live in ``csrc/`` and are registered by
loading the compiled library (see :mod:`cpp_ext._loader`); :func:`register` is called once after
that. The fake (meta) implementations let the ops run under ``torch.compile`` / FakeTensor. The autograd
formula uses the per-row gradient ``d loss_i / d q_i`` returned by the forward (requested when ``q``
needs a gradient) for ``grad_q``, and calls ``multipos_loss_bwd`` for ``grad_k``, which recomputes
the similarity tiles from the per-row statistics saved by the forward.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .reference import MODES, accumulation_dtype

__all__ = ["FLOAT_DTYPES", "register", "validate_inputs"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_registered = False


def validate_inputs(q: Any, k: Any, q_labels: Any, k_labels: Any, self_index: Any, tau: Any, mode: Any) -> None:
    """Raise TypeError/ValueError, naming the argument, for anything the operator rejects.

    Only metadata is inspected (no device synchronisation); the range of ``self_index`` values
    is checked by the kernels (and by the reference path).
    """
    tensors = {"q": q, "k": k, "q_labels": q_labels, "k_labels": k_labels}
    if self_index is not None:
        tensors["self_index"] = self_index
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(f"q must be float16, bfloat16, float32 or float64, got {q.dtype}")
    if k.dtype != q.dtype:
        raise TypeError(f"k has dtype {k.dtype} but q has dtype {q.dtype}; pass both in the same dtype")
    for name in ("q_labels", "k_labels", "self_index"):
        if name in tensors and tensors[name].dtype != torch.int64:
            raise TypeError(f"{name} must be int64, got {tensors[name].dtype}")
    if q.dim() != 2:
        raise ValueError(f"q must be 2-D [B, D], got shape {tuple(q.shape)}")
    if k.dim() != 2:
        raise ValueError(f"k must be 2-D [M, D], got shape {tuple(k.shape)}")
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"k has D={k.shape[1]} but q has D={q.shape[1]}")
    expected = {"q_labels": q.shape[0], "k_labels": k.shape[0], "self_index": q.shape[0]}
    for name, length in expected.items():
        if name in tensors and (tensors[name].dim() != 1 or tensors[name].shape[0] != length):
            raise ValueError(f"{name} must have shape [{length}], got {tuple(tensors[name].shape)}")
    for name, value in tensors.items():
        if value.device != q.device:
            raise ValueError(f"{name} is on {value.device} but q is on {q.device} (mixed devices)")
    for name, value in tensors.items():
        if not value.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau must be a Python float, got {type(tau).__name__}")
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _fwd_fake(
    q: Tensor,
    k: Tensor,
    q_labels: Tensor,
    k_labels: Tensor,
    self_index: Tensor,
    tau: float,
    mode: str,
    with_row_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    torch._check(q.dim() == 2 and k.dim() == 2, lambda: "q and k must be 2-D")
    torch._check(q.shape[1] == k.shape[1], lambda: "q and k must have the same D")
    acc = accumulation_dtype(q.dtype)
    batch, dim = q.shape
    return (
        q.new_empty((batch,), dtype=acc),
        q.new_empty((batch,), dtype=torch.bool),
        q.new_empty((batch, 3), dtype=acc),
        q.new_empty((batch if with_row_grad else 0, dim), dtype=acc),
    )


def _bwd_fake(
    grad_loss: Tensor,
    q: Tensor,
    k: Tensor,
    q_labels: Tensor,
    k_labels: Tensor,
    self_index: Tensor,
    stats: Tensor,
    tau: float,
    mode: str,
    need_grad_q: bool,
    need_grad_k: bool,
) -> tuple[Tensor, Tensor]:
    grad_q = torch.empty_like(q) if need_grad_q else q.new_empty((0, q.shape[1]))
    grad_k = torch.empty_like(k) if need_grad_k else k.new_empty((0, k.shape[1]))
    return grad_q, grad_k


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
    q, k, q_labels, k_labels, self_index, tau, mode, with_row_grad = inputs
    _, valid, stats, row_grad = output
    ctx.save_for_backward(q, k, q_labels, k_labels, self_index, stats, row_grad)
    ctx.tau = tau
    ctx.mode = mode
    ctx.with_row_grad = with_row_grad
    ctx.mark_non_differentiable(valid, stats, row_grad)


@once_differentiable  # no double backward: it raises instead of silently dropping terms
def _backward(
    ctx: Any, grad_loss: Tensor, grad_valid: Any, grad_stats: Any, grad_row_grad: Any
) -> tuple[Tensor | None, ...]:
    q, k, q_labels, k_labels, self_index, stats, row_grad = ctx.saved_tensors
    need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_q = grad_k = None
    # loss_i depends on q only through q_i: grad_q = g[:, None] * d loss_i / d q_i when the forward
    # already produced that per-row gradient; the kernels recompute everything else tile by tile.
    if need_q and ctx.with_row_grad:
        grad_q = (grad_loss.unsqueeze(1) * row_grad).to(q.dtype)
    recompute_q = need_q and not ctx.with_row_grad
    if recompute_q or need_k:
        op_grad_q, op_grad_k = torch.ops.pruneopt.multipos_loss_bwd(
            grad_loss.contiguous(), q, k, q_labels, k_labels, self_index, stats, ctx.tau, ctx.mode, recompute_q, need_k
        )
        if recompute_q:
            grad_q = op_grad_q
        if need_k:
            grad_k = op_grad_k
    return (grad_q, grad_k, None, None, None, None, None, None)


def register() -> None:
    """Attach the fake and autograd implementations to the loaded C++ operators (idempotent)."""
    global _registered
    if _registered:
        return
    torch.library.register_fake("pruneopt::multipos_loss_fwd")(_fwd_fake)
    torch.library.register_fake("pruneopt::multipos_loss_bwd")(_bwd_fake)
    torch.library.register_autograd("pruneopt::multipos_loss_fwd", _backward, setup_context=_setup_context)
    _registered = True
