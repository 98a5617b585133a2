// Operator schema and input validation shared by the CPU and CUDA implementations.
#include "multipos_loss.h"

#include <ATen/ops/aminmax.h>
#include <torch/library.h>

#include <cmath>

namespace pruneopt {

LossMode parse_mode(std::string_view mode) {
  if (mode == "mean_log") return LossMode::MeanLog;
  if (mode == "log_sum") return LossMode::LogSum;
  TORCH_CHECK_VALUE(false, "multipos_loss: mode must be 'mean_log' or 'log_sum', got '", std::string(mode), "'");
  return LossMode::MeanLog;  // unreachable
}

at::ScalarType accumulation_type(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_same_device(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "multipos_loss: ", name, " is on ", t.device(),
                    " but q is on ", ref.device(), " (mixed devices)");
}

void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_contiguous(), "multipos_loss: ", name, " must be contiguous");
}

}  // namespace

void check_forward_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_labels,
                          const at::Tensor& k_labels, const at::Tensor& self_index, double tau) {
  TORCH_CHECK_TYPE(is_supported_float(q.scalar_type()),
                   "multipos_loss: q must be float16, bfloat16, float32 or float64, got ", q.scalar_type());
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type(), "multipos_loss: k has dtype ", k.scalar_type(),
                   " but q has dtype ", q.scalar_type());
  TORCH_CHECK_TYPE(q_labels.scalar_type() == at::kLong, "multipos_loss: q_labels must be int64, got ",
                   q_labels.scalar_type());
  TORCH_CHECK_TYPE(k_labels.scalar_type() == at::kLong, "multipos_loss: k_labels must be int64, got ",
                   k_labels.scalar_type());
  TORCH_CHECK_TYPE(self_index.scalar_type() == at::kLong, "multipos_loss: self_index must be int64, got ",
                   self_index.scalar_type());
  TORCH_CHECK_VALUE(q.dim() == 2, "multipos_loss: q must be 2-D [B, D], got shape ", q.sizes());
  TORCH_CHECK_VALUE(k.dim() == 2, "multipos_loss: k must be 2-D [M, D], got shape ", k.sizes());
  TORCH_CHECK_VALUE(k.size(1) == q.size(1), "multipos_loss: k has D=", k.size(1), " but q has D=", q.size(1));
  TORCH_CHECK_VALUE(q_labels.dim() == 1 && q_labels.size(0) == q.size(0),
                    "multipos_loss: q_labels must have shape [", q.size(0), "], got ", q_labels.sizes());
  TORCH_CHECK_VALUE(k_labels.dim() == 1 && k_labels.size(0) == k.size(0),
                    "multipos_loss: k_labels must have shape [", k.size(0), "], got ", k_labels.sizes());
  TORCH_CHECK_VALUE(self_index.dim() == 1 && self_index.size(0) == q.size(0),
                    "multipos_loss: self_index must have shape [", q.size(0), "], got ", self_index.sizes());
  check_same_device(q, k, "k");
  check_same_device(q, q_labels, "q_labels");
  check_same_device(q, k_labels, "k_labels");
  check_same_device(q, self_index, "self_index");
  check_contiguous(q, "q");
  check_contiguous(k, "k");
  check_contiguous(q_labels, "q_labels");
  check_contiguous(k_labels, "k_labels");
  check_contiguous(self_index, "self_index");
  TORCH_CHECK_VALUE(std::isfinite(tau) && tau > 0.0, "multipos_loss: tau must be a finite number > 0, got ",
                    tau);
  if (self_index.numel() > 0) {
    auto [lo, hi] = at::aminmax(self_index);
    const int64_t lo_v = lo.item<int64_t>();
    const int64_t hi_v = hi.item<int64_t>();
    TORCH_CHECK_VALUE(lo_v >= -1 && hi_v < k.size(0), "multipos_loss: self_index values must lie in [-1, ",
                      k.size(0), "), got range [", lo_v, ", ", hi_v, "]");
  }
}

void check_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& q, const at::Tensor& stats) {
  TORCH_CHECK_VALUE(grad_loss.dim() == 1 && grad_loss.size(0) == q.size(0),
                    "multipos_loss_bwd: grad_loss must have shape [", q.size(0), "], got ", grad_loss.sizes());
  TORCH_CHECK_VALUE(grad_loss.device() == q.device(), "multipos_loss_bwd: grad_loss is on ",
                    grad_loss.device(), " but q is on ", q.device());
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(0) == q.size(0) && stats.size(1) == 3,
                    "multipos_loss_bwd: stats must have shape [", q.size(0), ", 3], got ", stats.sizes());
  TORCH_CHECK_TYPE(stats.scalar_type() == accumulation_type(q.scalar_type()),
                   "multipos_loss_bwd: stats must have dtype ", accumulation_type(q.scalar_type()), ", got ",
                   stats.scalar_type());
  TORCH_CHECK_VALUE(stats.device() == q.device(), "multipos_loss_bwd: stats is on ", stats.device(),
                    " but q is on ", q.device());
}

}  // namespace pruneopt

TORCH_LIBRARY(pruneopt, m) {
  m.def(
      "multipos_loss_fwd(Tensor q, Tensor k, Tensor q_labels, Tensor k_labels, Tensor self_index, "
      "float tau, str mode, bool with_row_grad) -> (Tensor loss, Tensor valid, Tensor stats, Tensor row_grad)");
  m.def(
      "multipos_loss_bwd(Tensor grad_loss, Tensor q, Tensor k, Tensor q_labels, Tensor k_labels, "
      "Tensor self_index, Tensor stats, float tau, str mode, bool need_grad_q, bool need_grad_k) "
      "-> (Tensor grad_q, Tensor grad_k)");
}
