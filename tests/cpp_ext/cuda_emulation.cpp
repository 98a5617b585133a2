// CPU emulation of the CUDA kernels in cpp_ext/csrc/multipos_loss_cuda_kernels.h (tests only).
//
// The kernels are compiled as plain C++: every CUDA thread of a block is a std::thread,
// __syncthreads() is a std::barrier over the block, __shfl_xor_sync exchanges values through a
// per-block buffer between two barriers, and the dynamic shared memory is a per-block byte
// buffer. Blocks run one after another. The host functions below mirror the launch logic of
// multipos_loss_cuda.cu (split planning, workspaces, combine / split sums) with an explicit SM
// count so the multi-split paths can be exercised. Registered as pruneopt_cuda_emu::fwd / ::bwd.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <barrier>
#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#define PRUNEOPT_CUDA_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define CUDART_INF_F std::numeric_limits<float>::infinity()
#define CUDART_INF std::numeric_limits<double>::infinity()

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
thread_local EmuDim3 threadIdx;
thread_local EmuDim3 blockIdx;
thread_local EmuDim3 blockDim;

namespace emu {

struct Block {
  Block(int threads, size_t smem_bytes)
      : barrier(threads), smem(smem_bytes + 16), exchange(static_cast<size_t>(threads)) {}
  std::barrier<> barrier;
  std::vector<unsigned char> smem;
  std::vector<double> exchange;
};

thread_local Block* current = nullptr;

inline void sync() { current->barrier.arrive_and_wait(); }

template <typename T>
T shfl_xor(T v, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(double), "emulated shuffle handles up to 8 bytes");
  const unsigned tid = threadIdx.x;
  std::memcpy(&current->exchange[tid], &v, sizeof(T));
  sync();
  T other;
  std::memcpy(&other, &current->exchange[tid ^ static_cast<unsigned>(lane_mask)], sizeof(T));
  sync();
  return other;
}

// Runs `body` for every thread of every block of `grid` (x fastest).
template <typename F>
void launch(unsigned grid_x, unsigned grid_y, int threads, size_t smem_bytes, F body) {
  for (unsigned by = 0; by < grid_y; ++by) {
    for (unsigned bx = 0; bx < grid_x; ++bx) {
      Block block(threads, smem_bytes);
      std::vector<std::thread> pool;
      pool.reserve(static_cast<size_t>(threads));
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          threadIdx = {static_cast<unsigned>(t), 0, 0};
          blockIdx = {bx, by, 0};
          blockDim = {static_cast<unsigned>(threads), 1, 1};
          current = &block;
          body();
        });
      }
      for (auto& th : pool) th.join();
    }
  }
}

}  // namespace emu

#define __syncthreads() emu::sync()
#define PRUNEOPT_DYNAMIC_SMEM(name) unsigned char* name = emu::current->smem.data()

template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask) {
  return emu::shfl_xor(v, lane_mask);
}

using std::exp;
using std::fma;
using std::log;

#include "multipos_loss_cuda_kernels.h"

namespace pruneopt_emu {

using namespace pruneopt::cuda_kernels;
using pruneopt::LossMode;

// Local copies of the helpers in multipos_loss.cpp (not linked here: that file registers the
// pruneopt schema, which the real extension owns). Inputs are validated by the Python tests.
at::ScalarType accumulation_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

LossMode parse_mode(std::string_view mode) {
  TORCH_CHECK(mode == "mean_log" || mode == "log_sum", "unknown mode");
  return mode == "mean_log" ? LossMode::MeanLog : LossMode::LogSum;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& q_labels, const at::Tensor& k_labels,
                                                   const at::Tensor& self_index, double tau, std::string_view mode,
                                                   int64_t sms) {
  const LossMode md = parse_mode(mode);
  const at::ScalarType acc_type = accumulation_type(q.scalar_type());
  const int64_t B = q.size(0);
  const int64_t M = k.size(0);
  const int64_t D = q.size(1);
  const auto acc_opts = q.options().dtype(acc_type);
  at::Tensor loss = at::empty({B}, acc_opts);
  at::Tensor valid = at::empty({B}, q.options().dtype(at::kBool));
  at::Tensor stats = at::empty({B, 3}, acc_opts);
  if (B == 0) return {loss, valid, stats};
  const int64_t row_blocks = ceil_div(B, kBM);
  const auto plan = plan_splits(ceil_div(M, kBN), row_blocks, static_cast<int>(sms), 1 << 16);
  const int64_t splits = plan.first;
  const int64_t tiles_per_split = plan.second;
  at::Tensor partial = at::empty({std::max<int64_t>(splits, 1), B, kStatsPerRow}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "emu_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (splits > 0) {
      emu::launch(static_cast<unsigned>(row_blocks), static_cast<unsigned>(splits), kThreads,
                  Smem<acc_t>::kForward, [&] {
                    fwd_partial_kernel<scalar_t, acc_t>(
                        q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), q_labels.data_ptr<int64_t>(),
                        k_labels.data_ptr<int64_t>(), self_index.data_ptr<int64_t>(), B, M, D,
                        static_cast<acc_t>(1.0 / tau), tiles_per_split, partial.data_ptr<acc_t>());
                  });
    }
    emu::launch(static_cast<unsigned>(ceil_div(B, 256)), 1, 256, 0, [&] {
      fwd_combine_kernel<acc_t>(partial.data_ptr<acc_t>(), splits, B, static_cast<int>(md), loss.data_ptr<acc_t>(),
                                valid.data_ptr<bool>(), stats.data_ptr<acc_t>());
    });
  });
  return {loss, valid, stats};
}

std::tuple<at::Tensor, at::Tensor> bwd(const at::Tensor& grad_loss, const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& q_labels, const at::Tensor& k_labels,
                                       const at::Tensor& self_index, const at::Tensor& stats, double tau,
                                       std::string_view mode, bool need_grad_k, int64_t sms) {
  const LossMode md = parse_mode(mode);
  const at::ScalarType acc_type = accumulation_type(q.scalar_type());
  const int64_t B = q.size(0);
  const int64_t M = k.size(0);
  const int64_t D = q.size(1);
  const auto acc_opts = q.options().dtype(acc_type);
  const at::Tensor g = grad_loss.to(acc_type).contiguous();
  const at::Tensor st = stats.contiguous();
  const auto q_plan = plan_splits(ceil_div(M, kBN), ceil_div(B, kBM), static_cast<int>(sms), kMaxSplits);
  const auto k_plan = need_grad_k ? plan_splits(ceil_div(B, kBM), ceil_div(M, kBN), static_cast<int>(sms), kMaxSplits)
                                  : std::pair<int64_t, int64_t>{0, 0};
  at::Tensor gq_work = q_plan.first > 1 ? at::zeros({q_plan.first, B, D}, acc_opts) : at::zeros({B, D}, acc_opts);
  at::Tensor gk_work;
  if (need_grad_k) {
    gk_work = k_plan.first > 1 ? at::zeros({k_plan.first, M, D}, acc_opts) : at::zeros({M, D}, acc_opts);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "emu_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_tau = static_cast<acc_t>(1.0 / tau);
    if (q_plan.first > 0 && B > 0) {
      emu::launch(static_cast<unsigned>(ceil_div(B, kBM)), static_cast<unsigned>(q_plan.first), kThreads,
                  Smem<acc_t>::kBackward, [&] {
                    bwd_q_kernel<scalar_t, acc_t>(g.data_ptr<acc_t>(), st.data_ptr<acc_t>(), q.data_ptr<scalar_t>(),
                                                  k.data_ptr<scalar_t>(), q_labels.data_ptr<int64_t>(),
                                                  k_labels.data_ptr<int64_t>(), self_index.data_ptr<int64_t>(), B, M,
                                                  D, inv_tau, static_cast<int>(md), q_plan.second,
                                                  gq_work.data_ptr<acc_t>());
                  });
    }
    if (need_grad_k && k_plan.first > 0 && M > 0) {
      emu::launch(static_cast<unsigned>(ceil_div(M, kBN)), static_cast<unsigned>(k_plan.first), kThreads,
                  Smem<acc_t>::kBackward, [&] {
                    bwd_k_kernel<scalar_t, acc_t>(g.data_ptr<acc_t>(), st.data_ptr<acc_t>(), q.data_ptr<scalar_t>(),
                                                  k.data_ptr<scalar_t>(), q_labels.data_ptr<int64_t>(),
                                                  k_labels.data_ptr<int64_t>(), self_index.data_ptr<int64_t>(), B, M,
                                                  D, inv_tau, static_cast<int>(md), k_plan.second,
                                                  gk_work.data_ptr<acc_t>());
                  });
    }
  });
  at::Tensor grad_q = (q_plan.first > 1 ? gq_work.sum(0) : gq_work).to(q.scalar_type());
  at::Tensor grad_k = at::empty({0, D}, k.options());
  if (need_grad_k) grad_k = (k_plan.first > 1 ? gk_work.sum(0) : gk_work).to(k.scalar_type());
  return {grad_q, grad_k};
}

}  // namespace pruneopt_emu

TORCH_LIBRARY(pruneopt_cuda_emu, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor q_labels, Tensor k_labels, Tensor self_index, float tau, str mode, "
      "int sms) -> (Tensor, Tensor, Tensor)");
  m.def(
      "bwd(Tensor grad_loss, Tensor q, Tensor k, Tensor q_labels, Tensor k_labels, Tensor self_index, "
      "Tensor stats, float tau, str mode, bool need_grad_k, int sms) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pruneopt_cuda_emu, CPU, m) {
  m.impl("fwd", &pruneopt_emu::fwd);
  m.impl("bwd", &pruneopt_emu::bwd);
}
