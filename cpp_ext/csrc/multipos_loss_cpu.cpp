// CPU implementation of the fused multi-positive contrastive loss.
//
// Both passes stream over tiles of T keys. For every tile the [B, T] dot products come from one
// multi-threaded BLAS call (at::mm_out into a reused buffer); the per-row work on that tile runs
// in parallel over query rows with at::parallel_for.
//
// Forward: online log-sum-exp over all keys, and count / logit sum / online log-sum-exp over the
// positives. With with_row_grad it also accumulates, flash-attention style, the per-row gradient
// row_grad_i = d loss_i / d q_i = (E_softmax[k] - E_target[k]) / tau: the tile is overwritten
// with exp(logit - running max) and fed back into BLAS (acc += tile @ k_tile, after rescaling
// the row's accumulator when its max moved); the positives' part is added row by row (there are
// few). Autograd then needs no second sweep for grad_q.
//
// Backward (multipos_loss_bwd): recomputes each tile, turns it into the weights
// W = g/tau * (softmax - target) from the saved per-row statistics, in place, and feeds it back
// into BLAS: grad_q += W @ k_tile (when asked for) and grad_k[tile] = W^T @ q.
//
// No B x M matrix is ever stored: extra memory is O(B*T) plus O(B*D) accumulators and, for
// reduced-precision inputs, float32 copies of q and of one key tile.
//
// (BLAS is deliberately called outside the parallel regions: PyTorch's OpenMP runtime allows
// nested parallelism and MKL would otherwise start a second team per thread and oversubscribe.)
//
// Per-row reductions use a fixed lane layout and rows do not interact, so results do not depend
// on how rows are split across threads: repeated runs are bit-identical.
#include "multipos_loss.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

namespace pruneopt {
namespace {

// The float row kernels get an AVX2 clone next to the baseline one (runtime dispatch through
// an ifunc), so a prebuilt binary stays portable while the hot loops run 8 floats wide.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PRUNEOPT_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PRUNEOPT_CPU_CLONES
#endif

constexpr int kLanes = 16;

// exp(x) for x <= 88 with ~1 ulp error (Cephes expf: 2^n * poly(r), |r| <= ln2/2), written
// without calls or branches so the loops that use it vectorise. Returns 0 for x < -87
// (including -inf), where the true value is below 1.7e-38 and irrelevant next to the row max.
inline float exp_vec(float x) {
  float xc = x > -87.0f ? x : -87.0f;
  xc = xc < 88.0f ? xc : 88.0f;
  const float fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = xc - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  y *= scale;
  return x < -87.0f ? 0.0f : y;
}

inline float fold_max(const float* lane) {
  float m = lane[0];
  for (int l = 1; l < kLanes; ++l) m = lane[l] > m ? lane[l] : m;
  return m;
}

inline float fold_sum(float* lane) {
  // Fixed pairwise tree: deterministic and a little more accurate than a running sum.
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) lane[l] += lane[l + w];
  return lane[0];
}

// x[j] *= scale for j < n; returns max_j x[j] (-inf when n == 0).
PRUNEOPT_CPU_CLONES float scale_and_max_f32(float* __restrict__ x, int64_t n, float scale) {
  float lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float v = x[j + l] * scale;
      x[j + l] = v;
      lane[l] = v > lane[l] ? v : lane[l];
    }
  }
  for (int l = 0; j < n; ++j, ++l) {
    const float v = x[j] * scale;
    x[j] = v;
    lane[l] = v > lane[l] ? v : lane[l];
  }
  return fold_max(lane);
}

// sum_j exp(x[j] - shift).
PRUNEOPT_CPU_CLONES float sum_exp_f32(const float* __restrict__ x, int64_t n, float shift) {
  float lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += exp_vec(x[j + l] - shift);
  for (int l = 0; j < n; ++j, ++l) lane[l] += exp_vec(x[j] - shift);
  return fold_sum(lane);
}

// x[j] = coef * exp(x[j] * scale - shift).
PRUNEOPT_CPU_CLONES void softmax_weights_f32(float* __restrict__ x, int64_t n, float scale, float shift,
                                             float coef) {
  for (int64_t j = 0; j < n; ++j) x[j] = coef * exp_vec(x[j] * scale - shift);
}

// exp_inplace_sum: x[j] = exp(x[j] - shift), returns the sum of the new values.
PRUNEOPT_CPU_CLONES float exp_inplace_sum_f32(float* __restrict__ x, int64_t n, float shift) {
  float lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float e = exp_vec(x[j + l] - shift);
      x[j + l] = e;
      lane[l] += e;
    }
  }
  for (int l = 0; j < n; ++j, ++l) {
    const float e = exp_vec(x[j] - shift);
    x[j] = e;
    lane[l] += e;
  }
  return fold_sum(lane);
}

// y[d] = y[d] * alpha + w * x[d] over a D-long accumulator row (x and y must not overlap).
PRUNEOPT_CPU_CLONES void scale_axpy_f32(float* __restrict__ y, const float* __restrict__ x, int64_t n, float alpha,
                                        float w) {
  for (int64_t d = 0; d < n; ++d) y[d] = y[d] * alpha + w * x[d];
}

// y[d] *= alpha.
PRUNEOPT_CPU_CLONES void scale_f32(float* __restrict__ y, int64_t n, float alpha) {
  for (int64_t d = 0; d < n; ++d) y[d] *= alpha;
}

// Row kernels for each accumulation type: float uses the vectorised versions above, double
// uses std::exp (it only serves gradcheck-sized problems and must be accurate).
template <typename acc_t>
struct RowKernels;

template <>
struct RowKernels<float> {
  static float scale_and_max(float* x, int64_t n, float scale) { return scale_and_max_f32(x, n, scale); }
  static float sum_exp(const float* x, int64_t n, float shift) { return sum_exp_f32(x, n, shift); }
  static float exp_inplace_sum(float* x, int64_t n, float shift) { return exp_inplace_sum_f32(x, n, shift); }
  static void softmax_weights(float* x, int64_t n, float scale, float shift, float coef) {
    softmax_weights_f32(x, n, scale, shift, coef);
  }
  static void scale_axpy(float* y, const float* x, int64_t n, float alpha, float w) {
    scale_axpy_f32(y, x, n, alpha, w);
  }
  static void scale(float* y, int64_t n, float alpha) { scale_f32(y, n, alpha); }
};

template <>
struct RowKernels<double> {
  static double scale_and_max(double* x, int64_t n, double scale) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      x[j] *= scale;
      m = x[j] > m ? x[j] : m;
    }
    return m;
  }
  static double sum_exp(const double* x, int64_t n, double shift) {
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) s += std::exp(x[j] - shift);
    return s;
  }
  static double exp_inplace_sum(double* x, int64_t n, double shift) {
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      x[j] = std::exp(x[j] - shift);
      s += x[j];
    }
    return s;
  }
  static void softmax_weights(double* x, int64_t n, double scale, double shift, double coef) {
    for (int64_t j = 0; j < n; ++j) x[j] = coef * std::exp(x[j] * scale - shift);
  }
  static void scale_axpy(double* y, const double* x, int64_t n, double alpha, double w) {
    for (int64_t d = 0; d < n; ++d) y[d] = y[d] * alpha + w * x[d];
  }
  static void scale(double* y, int64_t n, double alpha) {
    for (int64_t d = 0; d < n; ++d) y[d] *= alpha;
  }
};

// Running statistics of one query row over the key tiles seen so far.
template <typename acc_t>
struct RowState {
  acc_t max_all = -std::numeric_limits<acc_t>::infinity();  // max logit over non-self keys
  acc_t sum_all = 0;                                         // sum exp(l - max_all)
  acc_t max_pos = -std::numeric_limits<acc_t>::infinity();  // max logit over positives
  acc_t sum_pos = 0;                                         // sum exp(l - max_pos) over positives
  acc_t sum_logit_pos = 0;                                   // sum of positive logits
  int64_t count_pos = 0;
};

// Keys per tile: the [B, T] logits tile stays within a few MiB (last-level cache) while the
// BLAS calls stay wide enough to run at full speed; fewer tiles also means fewer parallel regions.
int64_t key_tile_size(int64_t B, int64_t M) {
  const int64_t t = std::clamp<int64_t>((int64_t{1} << 22) / std::max<int64_t>(B, 1), 256, 8192);
  return std::max<int64_t>(1, std::min(t, M));
}

// Rows per at::parallel_for chunk: enough work per chunk to amortise the scheduling.
int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)); }

// Everything the row kernels need to know about the problem.
template <typename acc_t>
struct Problem {
  const int64_t* q_labels;
  const int64_t* k_labels;
  const int64_t* self_index;
  acc_t inv_tau;
  LossMode mode;
  int64_t D;
};

// Row-gradient accumulators of one query row (forward with with_row_grad):
//   all_acc = sum_j exp(l_ij - max_all) k_j
//   pos_acc = sum_{p in P} k_p                       (mean_log)
//           = sum_{p in P} exp(l_ip - max_pos) k_p   (log_sum)
template <typename acc_t>
struct RowGradAcc {
  acc_t* all_acc;
  acc_t* pos_acc;
};

// Folds one row of a tile (raw dot products of query i with keys j0 .. j0+n-1) into the row's
// running statistics. The row is overwritten: with the scaled logits, or, when `grad` is given,
// with exp(logit - new max_all), ready for the all_acc += row @ k_tile BLAS call that follows.
template <typename acc_t>
void update_row(RowState<acc_t>& st, acc_t* row, int64_t n, int64_t j0, int64_t i, const Problem<acc_t>& pb,
                const acc_t* k_tile, const RowGradAcc<acc_t>* grad) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  const int64_t self_rel = pb.self_index[i] - j0;  // outside [0, n) when self is not in this tile
  if (self_rel >= 0 && self_rel < n) row[self_rel] = -kInf;
  const acc_t tile_max = RowKernels<acc_t>::scale_and_max(row, n, pb.inv_tau);

  // Positives (usually few): count, logit sum, online log-sum-exp and their row-gradient part.
  const int64_t label = pb.q_labels[i];
  const int64_t* kl = pb.k_labels + j0;
  for (int64_t j = 0; j < n; ++j) {
    if (kl[j] != label || j == self_rel) continue;
    const acc_t v = row[j];
    ++st.count_pos;
    st.sum_logit_pos += v;
    acc_t rescale = 1;
    acc_t weight = 1;
    if (v > st.max_pos) {
      rescale = st.sum_pos > 0 ? std::exp(st.max_pos - v) : acc_t(0);
      st.sum_pos = st.sum_pos * rescale + acc_t(1);
      st.max_pos = v;
    } else {
      weight = std::exp(v - st.max_pos);
      st.sum_pos += weight;
    }
    if (grad != nullptr) {
      if (pb.mode == LossMode::MeanLog) rescale = weight = 1;
      RowKernels<acc_t>::scale_axpy(grad->pos_acc, k_tile + j * pb.D, pb.D, rescale, weight);
    }
  }

  const acc_t new_max = std::max(st.max_all, tile_max);
  const acc_t shift = new_max == -kInf ? acc_t(0) : new_max;  // all -inf: every exp is 0
  const acc_t rescale = st.sum_all > 0 ? std::exp(st.max_all - shift) : acc_t(0);
  if (grad != nullptr) {
    st.sum_all = st.sum_all * rescale + RowKernels<acc_t>::exp_inplace_sum(row, n, shift);
    if (rescale != acc_t(1)) RowKernels<acc_t>::scale(grad->all_acc, pb.D, rescale);
  } else {
    st.sum_all = st.sum_all * rescale + RowKernels<acc_t>::sum_exp(row, n, shift);
  }
  st.max_all = new_max;
}

// Turns one row of raw dot products into W_ij = g_i / tau * (softmax_ij - target_ij), in place.
// `targets` is scratch space reused across rows.
template <typename acc_t>
void weights_row(acc_t* row, int64_t n, int64_t j0, int64_t i, const acc_t* stats, acc_t grad,
                 const Problem<acc_t>& pb, std::vector<std::pair<int64_t, acc_t>>& targets) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  const acc_t lse_all = stats[3 * i + 0];
  const acc_t lse_pos = stats[3 * i + 1];
  const acc_t count = stats[3 * i + 2];
  const acc_t coef = count > 0 ? grad * pb.inv_tau : acc_t(0);  // invalid rows contribute nothing
  if (coef == acc_t(0)) {
    std::fill(row, row + n, acc_t(0));
    return;
  }
  const int64_t self_rel = pb.self_index[i] - j0;
  if (self_rel >= 0 && self_rel < n) row[self_rel] = -kInf;
  // Targets of the positives, read before the row is overwritten with the weights.
  targets.clear();
  const int64_t label = pb.q_labels[i];
  const int64_t* kl = pb.k_labels + j0;
  const acc_t inv_count = acc_t(1) / count;
  for (int64_t j = 0; j < n; ++j) {
    if (kl[j] != label || j == self_rel) continue;
    const acc_t t = pb.mode == LossMode::MeanLog ? inv_count : std::exp(row[j] * pb.inv_tau - lse_pos);
    targets.emplace_back(j, t);
  }
  RowKernels<acc_t>::softmax_weights(row, n, pb.inv_tau, lse_all, coef);  // coef * softmax
  for (const auto& [j, t] : targets) row[j] -= coef * t;
}

template <typename acc_t>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_labels,
                  const at::Tensor& k_labels, const at::Tensor& self_index, double tau, LossMode mode,
                  at::Tensor& loss, at::Tensor& valid, at::Tensor& stats, at::Tensor& row_grad) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t B = q.size(0);
  const int64_t M = k.size(0);
  const int64_t D = q.size(1);
  const bool with_grad = row_grad.size(0) == B && B > 0;
  const at::Tensor qa = q.to(acc_type);
  const Problem<acc_t> pb{q_labels.data_ptr<int64_t>(), k_labels.data_ptr<int64_t>(),
                          self_index.data_ptr<int64_t>(), static_cast<acc_t>(1.0 / tau), mode, D};
  std::vector<RowState<acc_t>> state(static_cast<size_t>(B));
  // all_acc lives in row_grad (finalised in place at the end); pos_acc is a second [B, D] buffer.
  at::Tensor pos_acc = with_grad ? at::zeros({B, D}, qa.options()) : at::Tensor();
  if (with_grad) row_grad.zero_();
  acc_t* all_acc_p = with_grad ? row_grad.data_ptr<acc_t>() : nullptr;
  acc_t* pos_acc_p = with_grad ? pos_acc.data_ptr<acc_t>() : nullptr;

  const int64_t T = key_tile_size(B, M);
  at::Tensor buffer = at::empty({B * T}, qa.options());
  for (int64_t j0 = 0; j0 < M; j0 += T) {
    const int64_t n = std::min(T, M - j0);
    const at::Tensor kt = k.narrow(0, j0, n).to(acc_type).contiguous();
    at::Tensor tile = buffer.narrow(0, 0, B * n).view({B, n});
    at::mm_out(tile, qa, kt.t());  // multi-threaded BLAS
    acc_t* logits = tile.data_ptr<acc_t>();
    const acc_t* k_tile = kt.data_ptr<acc_t>();
    at::parallel_for(0, B, row_grain(n), [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) {
        if (with_grad) {
          const RowGradAcc<acc_t> acc{all_acc_p + i * D, pos_acc_p + i * D};
          update_row(state[static_cast<size_t>(i)], logits + i * n, n, j0, i, pb, k_tile, &acc);
        } else {
          update_row<acc_t>(state[static_cast<size_t>(i)], logits + i * n, n, j0, i, pb, k_tile, nullptr);
        }
      }
    });
    if (with_grad) row_grad.addmm_(tile, kt);  // all_acc += exp(l - max_all) @ k_tile
  }

  acc_t* loss_p = loss.data_ptr<acc_t>();
  bool* valid_p = valid.data_ptr<bool>();
  acc_t* stats_p = stats.data_ptr<acc_t>();
  for (int64_t i = 0; i < B; ++i) {
    const RowState<acc_t>& st = state[static_cast<size_t>(i)];
    const acc_t lse_all = st.sum_all > 0 ? st.max_all + std::log(st.sum_all) : -kInf;
    const acc_t lse_pos = st.sum_pos > 0 ? st.max_pos + std::log(st.sum_pos) : -kInf;
    const bool ok = st.count_pos > 0;
    acc_t value = 0;
    if (ok) {
      value = mode == LossMode::MeanLog ? lse_all - st.sum_logit_pos / static_cast<acc_t>(st.count_pos)
                                        : lse_all - lse_pos;
    }
    loss_p[i] = value;
    valid_p[i] = ok;
    stats_p[3 * i + 0] = lse_all;
    stats_p[3 * i + 1] = lse_pos;
    stats_p[3 * i + 2] = static_cast<acc_t>(st.count_pos);
    if (with_grad) {
      // d loss_i / d q_i = (E_softmax[k] - E_target[k]) / tau; zero for rows without positives.
      acc_t* out = all_acc_p + i * D;
      const acc_t a = ok ? pb.inv_tau / st.sum_all : acc_t(0);
      const acc_t z = mode == LossMode::MeanLog ? static_cast<acc_t>(st.count_pos) : st.sum_pos;
      const acc_t b = ok ? -pb.inv_tau / z : acc_t(0);
      RowKernels<acc_t>::scale_axpy(out, pos_acc_p + i * D, D, a, b);
    }
  }
}

template <typename acc_t>
void backward_impl(const at::Tensor& grad_loss, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& q_labels, const at::Tensor& k_labels, const at::Tensor& self_index,
                   const at::Tensor& stats, double tau, LossMode mode, bool need_grad_q, bool need_grad_k,
                   at::Tensor& grad_q_acc, at::Tensor& grad_k) {
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t B = q.size(0);
  const int64_t M = k.size(0);
  const at::Tensor qa = q.to(acc_type);
  const at::Tensor g = grad_loss.to(acc_type).contiguous();
  const at::Tensor st = stats.contiguous();
  const acc_t* g_p = g.data_ptr<acc_t>();
  const acc_t* st_p = st.data_ptr<acc_t>();
  const Problem<acc_t> pb{q_labels.data_ptr<int64_t>(), k_labels.data_ptr<int64_t>(),
                          self_index.data_ptr<int64_t>(), static_cast<acc_t>(1.0 / tau), mode, q.size(1)};
  const bool k_is_acc = k.scalar_type() == acc_type;
  const int64_t T = key_tile_size(B, M);
  at::Tensor buffer = at::empty({B * T}, qa.options());
  for (int64_t j0 = 0; j0 < M; j0 += T) {
    const int64_t n = std::min(T, M - j0);
    const at::Tensor kt = k.narrow(0, j0, n).to(acc_type);
    at::Tensor tile = buffer.narrow(0, 0, B * n).view({B, n});
    at::mm_out(tile, qa, kt.t());  // recompute the logits tile
    acc_t* w = tile.data_ptr<acc_t>();
    at::parallel_for(0, B, row_grain(n), [&](int64_t b0, int64_t b1) {
      std::vector<std::pair<int64_t, acc_t>> targets;
      for (int64_t i = b0; i < b1; ++i) weights_row(w + i * n, n, j0, i, st_p, g_p[i], pb, targets);
    });
    if (need_grad_q) grad_q_acc.addmm_(tile, kt);  // += W @ k_tile
    if (need_grad_k) {
      at::Tensor gk = grad_k.narrow(0, j0, n);
      if (k_is_acc) {
        at::mm_out(gk, tile.t(), qa);  // = W^T @ q
      } else {
        gk.copy_(at::mm(tile.t(), qa));
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multipos_loss_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_labels, const at::Tensor& k_labels,
    const at::Tensor& self_index, double tau, std::string_view mode, bool with_row_grad) {
  check_forward_inputs(q, k, q_labels, k_labels, self_index, tau);
  const LossMode md = parse_mode(mode);
  TORCH_INTERNAL_ASSERT(q.device().is_cpu());
  const at::ScalarType acc_type = accumulation_type(q.scalar_type());
  const int64_t B = q.size(0);
  const int64_t D = q.size(1);
  const auto acc_opts = q.options().dtype(acc_type);
  at::Tensor loss = at::empty({B}, acc_opts);
  at::Tensor valid = at::empty({B}, q.options().dtype(at::kBool));
  at::Tensor stats = at::empty({B, 3}, acc_opts);
  at::Tensor row_grad = at::empty({with_row_grad ? B : 0, D}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES(acc_type, "multipos_loss_fwd_cpu", [&] {
    forward_impl<scalar_t>(q, k, q_labels, k_labels, self_index, tau, md, loss, valid, stats, row_grad);
  });
  return {loss, valid, stats, row_grad};
}

std::tuple<at::Tensor, at::Tensor> multipos_loss_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& q,
                                                         const at::Tensor& k, const at::Tensor& q_labels,
                                                         const at::Tensor& k_labels, const at::Tensor& self_index,
                                                         const at::Tensor& stats, double tau, std::string_view mode,
                                                         bool need_grad_q, bool need_grad_k) {
  check_forward_inputs(q, k, q_labels, k_labels, self_index, tau);
  check_backward_inputs(grad_loss, q, stats);
  const LossMode md = parse_mode(mode);
  TORCH_INTERNAL_ASSERT(q.device().is_cpu());
  const at::ScalarType acc_type = accumulation_type(q.scalar_type());
  const int64_t B = q.size(0);
  const int64_t M = k.size(0);
  const int64_t D = q.size(1);
  at::Tensor grad_q_acc = at::zeros({need_grad_q ? B : 0, D}, q.options().dtype(acc_type));
  // Every key tile writes its own rows of grad_k, so it needs no zero fill.
  at::Tensor grad_k = at::empty({need_grad_k ? M : 0, D}, k.options());
  if (need_grad_q || need_grad_k) {
    AT_DISPATCH_FLOATING_TYPES(acc_type, "multipos_loss_bwd_cpu", [&] {
      backward_impl<scalar_t>(grad_loss, q, k, q_labels, k_labels, self_index, stats, tau, md, need_grad_q,
                              need_grad_k, grad_q_acc, grad_k);
    });
  }
  at::Tensor grad_q = grad_q_acc.scalar_type() == q.scalar_type() ? grad_q_acc : grad_q_acc.to(q.scalar_type());
  return {grad_q, grad_k};
}

}  // namespace
}  // namespace pruneopt

TORCH_LIBRARY_IMPL(pruneopt, CPU, m) {
  m.impl("multipos_loss_fwd", &pruneopt::multipos_loss_fwd_cpu);
  m.impl("multipos_loss_bwd", &pruneopt::multipos_loss_bwd_cpu);
}
