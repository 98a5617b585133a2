// Fused multi-positive contrastive loss: shared declarations.
//
// Operators (namespace pruneopt, schema in multipos_loss.cpp):
//
//   multipos_loss_fwd(q[B,D], k[M,D], q_labels[B], k_labels[M], self_index[B], tau, mode,
//                     with_row_grad) -> (loss[B], valid[B], stats[B,3], row_grad[B,D] or [0,D])
//   multipos_loss_bwd(grad_loss[B], q, k, q_labels, k_labels, self_index, stats, tau, mode,
//                     need_grad_q, need_grad_k) -> (grad_q[B,D] or [0,D], grad_k[M,D] or [0,D])
//
// logits l_ij = q_i . k_j / tau for keys j != self_index[i]; P_i = keys with q's label, minus self.
// stats[i] = (lse_all_i, lse_pos_i, |P_i|) in the accumulation dtype (float32, or float64 for
// float64 inputs):  lse_all_i = log sum_{j != self} exp(l_ij)   (-inf when row i has no key),
//                   lse_pos_i = log sum_{p in P_i} exp(l_ip)      (-inf when P_i is empty).
// mean_log: loss_i = lse_all_i - (1/|P_i|) sum_{p in P_i} l_ip
// log_sum:  loss_i = lse_all_i - lse_pos_i
// Rows with |P_i| = 0 have loss 0 and valid = false.
//
// Backward with g_i = grad_loss_i (0 for invalid rows) and p_ij = exp(l_ij - lse_all_i):
//   dL/dl_ij = g_i * (p_ij - t_ij),  t_ij = 1[j in P_i] / |P_i|               (mean_log)
//                                    t_ij = 1[j in P_i] exp(l_ij - lse_pos_i)   (log_sum)
//   grad_q_i = (1/tau) sum_j dL/dl_ij k_j,   grad_k_j = (1/tau) sum_i dL/dl_ij q_i.
// loss_i depends on q only through q_i, so grad_q_i = g_i * row_grad_i with
//   row_grad_i = d loss_i / d q_i = (1/tau) sum_j (p_ij - t_ij) k_j,
// which the forward can produce on request (with_row_grad, accumulation dtype): the CPU kernel
// accumulates it during the forward sweep (flash-attention style, with online rescaling), so the
// backward for a memory bank that needs no gradient is a mere broadcast multiply.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string_view>
#include <tuple>

namespace pruneopt {

enum class LossMode : int { MeanLog = 0, LogSum = 1 };

// Parses "mean_log" / "log_sum"; TORCH_CHECK-fails (ValueError) on anything else.
LossMode parse_mode(std::string_view mode);

// Validates the forward inputs (shapes, dtypes, devices, contiguity, tau, self_index range).
void check_forward_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_labels,
                          const at::Tensor& k_labels, const at::Tensor& self_index, double tau);

// Validates the extra backward inputs on top of check_forward_inputs.
void check_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& q, const at::Tensor& stats);

// Accumulation dtype: double for double inputs, float otherwise.
at::ScalarType accumulation_type(at::ScalarType input);

}  // namespace pruneopt
