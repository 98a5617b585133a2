// CUDA implementation of the fused multi-positive contrastive loss.
//
// Same algorithm as the CPU path, with the similarity tiles computed in shared memory:
//
// * forward: CTA (x = block of kBM query rows, y = split of the key range). For each tile of kBN
//   keys the kBM x kBN dot products are accumulated over the feature dimension in chunks of kBK
//   staged through shared memory (16 x 16 threads, 4 x 4 register micro-tile each, float32
//   accumulation for half/bfloat16/float32 inputs, float64 for float64). The epilogue folds the
//   tile into per-row online statistics with half-warp shuffles (max / sum-exp over all keys,
//   count / logit sum / max / sum-exp over positives). Every (split, row) writes its partial
//   statistics once; a second kernel merges the splits in a fixed order and writes loss, valid
//   and the saved stats (lse_all, lse_pos, count).
// * backward: two kernels recompute the logits tiles and turn them into the weights
//   W = dL/dlogit / tau in shared memory, then
//     grad_q[rows] += W   @ k[keys]   (grid over row blocks x key splits)
//     grad_k[keys] += W^T @ q[rows]   (grid over key blocks x row splits)
//   Each CTA owns its output rows within its split, so there are no atomics; splits are summed
//   by at::sum in a fixed order. Results are therefore deterministic. The per-row gradient
//   d loss_i / d q_i that the forward returns when asked (with_row_grad) is the grad_q kernel
//   run with an upstream gradient of ones.
//
// Nothing of size B x M is ever stored; workspaces are O(splits * (B + M) * D) with splits <= 16.
#include "multipos_loss.h"
#include "multipos_loss_cuda_kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

namespace pruneopt {
namespace {

using namespace cuda_kernels;

int device_attribute(cudaDeviceAttr attr, const at::Tensor& t) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, t.get_device()));
  return value;
}

int sm_count(const at::Tensor& t) { return device_attribute(cudaDevAttrMultiProcessorCount, t); }

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes, const at::Tensor& t) {
  if (bytes <= 48 * 1024) return;
  const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, t);
  TORCH_CHECK(bytes <= static_cast<size_t>(optin), "multipos_loss: needs ", bytes,
              " bytes of shared memory per block for ", t.scalar_type(), " but the device allows ", optin);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Launches bwd_q_kernel: returns sum_j W_ij(g) k_j / tau as a [B, D] tensor in the accumulation
// dtype, with W recomputed tile by tile from `stats` (g must be in the accumulation dtype).
at::Tensor grad_q_cuda(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_labels,
                       const at::Tensor& k_labels, const at::Tensor& self_index, const at::Tensor& stats, double tau,
                       LossMode md) {
  const int64_t B = q.size(0);
  const int64_t M = k.size(0);
  const int64_t D = q.size(1);
  const auto acc_opts = q.options().dtype(accumulation_type(q.scalar_type()));
  int64_t splits = 0;
  int64_t tiles_per_split = 0;
  std::tie(splits, tiles_per_split) = plan_splits(ceil_div(M, kBN), ceil_div(B, kBM), sm_count(q), kMaxSplits);
  // One split writes the [B, D] result directly; several get a leading split dimension.
  at::Tensor work = splits > 1 ? at::zeros({splits, B, D}, acc_opts) : at::zeros({B, D}, acc_opts);
  if (splits == 0 || B == 0) return work;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "multipos_loss_grad_q_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = Smem<acc_t>::kBackward;
    auto kernel = bwd_q_kernel<scalar_t, acc_t>;
    allow_smem(kernel, smem, q);
    kernel<<<dim3(static_cast<unsigned>(ceil_div(B, kBM)), static_cast<unsigned>(splits)), kThreads, smem, stream>>>(
        g.data_ptr<acc_t>(), stats.data_ptr<acc_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
        q_labels.data_ptr<int64_t>(), k_labels.data_ptr<int64_t>(), self_index.data_ptr<int64_t>(), B, M, D,
        static_cast<acc_t>(1.0 / tau), static_cast<int>(md), tiles_per_split, work.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return splits > 1 ? work.sum(0) : work;  // splits summed in a fixed order (no atomics)
}

// Launches bwd_k_kernel: returns sum_i W_ij(g) q_i / tau as an [M, D] tensor (accumulation dtype).
at::Tensor grad_k_cuda(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_labels,
                       const at::Tensor& k_labels, const at::Tensor& self_index, const at::Tensor& stats, double tau,
                       LossMode md) {
  const int64_t B = q.size(0);
  const int64_t M = k.size(0);
  const int64_t D = q.size(1);
  const auto acc_opts = q.options().dtype(accumulation_type(q.scalar_type()));
  int64_t splits = 0;
  int64_t tiles_per_split = 0;
  std::tie(splits, tiles_per_split) = plan_splits(ceil_div(B, kBM), ceil_div(M, kBN), sm_count(q), kMaxSplits);
  at::Tensor work = splits > 1 ? at::zeros({splits, M, D}, acc_opts) : at::zeros({M, D}, acc_opts);
  if (splits == 0 || M == 0) return work;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "multipos_loss_grad_k_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = Smem<acc_t>::kBackward;
    auto kernel = bwd_k_kernel<scalar_t, acc_t>;
    allow_smem(kernel, smem, q);
    kernel<<<dim3(static_cast<unsigned>(ceil_div(M, kBN)), static_cast<unsigned>(splits)), kThreads, smem, stream>>>(
        g.data_ptr<acc_t>(), stats.data_ptr<acc_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
        q_labels.data_ptr<int64_t>(), k_labels.data_ptr<int64_t>(), self_index.data_ptr<int64_t>(), B, M, D,
        static_cast<acc_t>(1.0 / tau), static_cast<int>(md), tiles_per_split, work.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return splits > 1 ? work.sum(0) : work;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multipos_loss_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_labels, const at::Tensor& k_labels,
    const at::Tensor& self_index, double tau, std::string_view mode, bool with_row_grad) {
  check_forward_inputs(q, k, q_labels, k_labels, self_index, tau);
  const LossMode md = parse_mode(mode);
  TORCH_INTERNAL_ASSERT(q.is_cuda());
  const c10::cuda::CUDAGuard guard(q.device());
  const at::ScalarType acc_type = accumulation_type(q.scalar_type());
  const int64_t B = q.size(0);
  const int64_t M = k.size(0);
  const int64_t D = q.size(1);
  const auto acc_opts = q.options().dtype(acc_type);
  at::Tensor loss = at::empty({B}, acc_opts);
  at::Tensor valid = at::empty({B}, q.options().dtype(at::kBool));
  at::Tensor stats = at::empty({B, 3}, acc_opts);
  if (B == 0) return {loss, valid, stats, at::empty({0, D}, acc_opts)};

  const int64_t row_blocks = ceil_div(B, kBM);
  int64_t splits = 0;
  int64_t tiles_per_split = 0;
  std::tie(splits, tiles_per_split) = plan_splits(ceil_div(M, kBN), row_blocks, sm_count(q), 1 << 16);
  at::Tensor partial = at::empty({std::max<int64_t>(splits, 1), B, kStatsPerRow}, acc_opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "multipos_loss_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (splits > 0) {
      const size_t smem = Smem<acc_t>::kForward;
      auto kernel = fwd_partial_kernel<scalar_t, acc_t>;
      allow_smem(kernel, smem, q);
      kernel<<<dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(splits)), kThreads, smem, stream>>>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), q_labels.data_ptr<int64_t>(), k_labels.data_ptr<int64_t>(),
          self_index.data_ptr<int64_t>(), B, M, D, static_cast<acc_t>(1.0 / tau), tiles_per_split,
          partial.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    fwd_combine_kernel<acc_t><<<static_cast<unsigned>(ceil_div(B, 256)), 256, 0, stream>>>(
        partial.data_ptr<acc_t>(), splits, B, static_cast<int>(md), loss.data_ptr<acc_t>(), valid.data_ptr<bool>(),
        stats.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // d loss_i / d q_i is the q-gradient for an upstream gradient of ones; on the GPU it comes from
  // the same recomputing kernel as backward (the CPU path accumulates it during the forward pass).
  at::Tensor row_grad = with_row_grad ? grad_q_cuda(at::ones({B}, acc_opts), q, k, q_labels, k_labels, self_index,
                                                    stats, tau, md)
                                      : at::empty({0, D}, acc_opts);
  return {loss, valid, stats, row_grad};
}

std::tuple<at::Tensor, at::Tensor> multipos_loss_bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& q,
                                                          const at::Tensor& k, const at::Tensor& q_labels,
                                                          const at::Tensor& k_labels, const at::Tensor& self_index,
                                                          const at::Tensor& stats, double tau, std::string_view mode,
                                                          bool need_grad_q, bool need_grad_k) {
  check_forward_inputs(q, k, q_labels, k_labels, self_index, tau);
  check_backward_inputs(grad_loss, q, stats);
  const LossMode md = parse_mode(mode);
  TORCH_INTERNAL_ASSERT(q.is_cuda());
  const c10::cuda::CUDAGuard guard(q.device());
  const at::ScalarType acc_type = accumulation_type(q.scalar_type());
  const int64_t D = q.size(1);
  const at::Tensor g = grad_loss.to(acc_type).contiguous();
  const at::Tensor st = stats.contiguous();
  at::Tensor grad_q = at::empty({0, D}, q.options());
  at::Tensor grad_k = at::empty({0, D}, k.options());
  if (need_grad_q) grad_q = grad_q_cuda(g, q, k, q_labels, k_labels, self_index, st, tau, md).to(q.scalar_type());
  if (need_grad_k) grad_k = grad_k_cuda(g, q, k, q_labels, k_labels, self_index, st, tau, md).to(k.scalar_type());
  return {grad_q, grad_k};
}

}  // namespace
}  // namespace pruneopt

TORCH_LIBRARY_IMPL(pruneopt, CUDA, m) {
  m.impl("multipos_loss_fwd", &pruneopt::multipos_loss_fwd_cuda);
  m.impl("multipos_loss_bwd", &pruneopt::multipos_loss_bwd_cuda);
}
