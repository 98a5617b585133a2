// Device code of the CUDA implementation (see multipos_loss_cuda.cu for the algorithm).
//
// Kept apart from the host code so that the very same kernels can also be compiled as plain C++
// by the CPU emulation harness in tests/cpp_ext (which defines PRUNEOPT_CUDA_EMULATION and
// provides threadIdx/blockIdx, __syncthreads, __shfl_xor_sync and the dynamic shared memory with
// one std::thread per CUDA thread). That lets the kernels be checked against the reference on a
// machine without a GPU.
#pragma once

#include "multipos_loss.h"

#ifndef PRUNEOPT_CUDA_EMULATION
#include <cuda_runtime.h>
#include <math_constants.h>
#define PRUNEOPT_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#include <algorithm>
#include <cstdint>
#include <utility>

namespace pruneopt {
namespace cuda_kernels {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits of a range of `tiles` work items so that blocks * splits roughly fills the GPU twice.
inline std::pair<int64_t, int64_t> plan_splits(int64_t tiles, int64_t blocks, int sms, int64_t max_splits) {
  if (tiles <= 0) return {0, 0};
  int64_t splits = std::clamp<int64_t>(ceil_div(2 * static_cast<int64_t>(sms), std::max<int64_t>(blocks, 1)), 1,
                                       std::min<int64_t>(tiles, max_splits));
  const int64_t per_split = ceil_div(tiles, splits);
  splits = ceil_div(tiles, per_split);  // every split gets at least one tile
  return {splits, per_split};
}

constexpr int kBM = 64;        // query rows per tile
constexpr int kBN = 64;        // keys per tile
constexpr int kBK = 16;        // feature chunk of the logits GEMM
constexpr int kDC = 64;        // feature chunk of the gradient GEMMs
constexpr int kThreads = 256;  // 16 x 16 threads
constexpr int kTM = 4;         // micro-tile rows per thread
constexpr int kTN = 4;         // micro-tile columns per thread
constexpr int kPadA = kBM + 4;
constexpr int kPadW = kBN + 1;
constexpr int kPadX = kDC + 4;
constexpr int kMaxSplits = 16;
constexpr int kStatsPerRow = 6;  // partial: max_all, sum_all, max_pos, sum_pos, count, sum_logit_pos
static_assert(kBM == kBN, "the tile loaders assume square tiles");
static_assert(kBM == 16 * kTM && kBN == 16 * kTN && kDC == 16 * kTN, "16 x 16 threads cover a tile");
static_assert(kThreads == 256, "16 x 16 threads");

// Dynamic shared memory layout: int64 arrays first (8-byte aligned), then acc_t arrays.
template <typename acc_t>
struct Smem {
  static constexpr size_t kLabels = (2 * kBM + kBN) * sizeof(int64_t);  // q labels, self, k labels
  static constexpr size_t kGemm = (kBK * kPadA * 2) * sizeof(acc_t);     // A and B chunks
  static constexpr size_t kRowInfo = 4 * kBM * sizeof(acc_t);            // lse_all, lse_pos, 1/cnt, coef
  static constexpr size_t kWeights = kBM * kPadW * sizeof(acc_t);
  static constexpr size_t kX = kBN * kPadX * sizeof(acc_t);
  static constexpr size_t kForward = kLabels + kGemm;
  static constexpr size_t kBackward = kLabels + kGemm + kRowInfo + kWeights + kX;
};

template <typename acc_t>
struct SmemPtrs {
  int64_t* qlab;
  int64_t* self;
  int64_t* klab;
  acc_t* a;       // [kBK][kPadA]   q chunk, transposed
  acc_t* b;       // [kBK][kPadA]   k chunk, transposed
  acc_t* lse;     // [kBM]
  acc_t* lsp;     // [kBM]
  acc_t* invcnt;  // [kBM]
  acc_t* coef;    // [kBM]
  acc_t* w;       // [kBM][kPadW]   weights of the current tile
  acc_t* x;       // [kBN][kPadX]   rows of k (grad_q) or q (grad_k), one feature chunk
};

template <typename acc_t>
__device__ __forceinline__ SmemPtrs<acc_t> carve_smem(unsigned char* raw) {
  SmemPtrs<acc_t> p;
  p.qlab = reinterpret_cast<int64_t*>(raw);
  p.self = p.qlab + kBM;
  p.klab = p.self + kBM;
  p.a = reinterpret_cast<acc_t*>(p.klab + kBN);
  p.b = p.a + kBK * kPadA;
  p.lse = p.b + kBK * kPadA;
  p.lsp = p.lse + kBM;
  p.invcnt = p.lsp + kBM;
  p.coef = p.invcnt + kBM;
  p.w = p.coef + kBM;
  p.x = p.w + kBM * kPadW;
  return p;
}

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }

template <typename T>
__device__ __forceinline__ T neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() {
  return -CUDART_INF_F;
}
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return -CUDART_INF;
}

// Reductions over the 16 lanes of a half-warp (the 16 threads sharing one micro-tile row).
// Butterfly: every lane ends with the same, order-independent-of-scheduling result.
template <typename T>
__device__ __forceinline__ T half_warp_sum(T v) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__device__ __forceinline__ T half_warp_max(T v) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) {
    const T o = __shfl_xor_sync(0xffffffffu, v, off);
    v = o > v ? o : v;
  }
  return v;
}

// acc[i][j] = q[row0 + ty + 16 i] . k[key0 + tx + 16 j] (0 outside the matrices).
// Starts and ends with all threads synchronised.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void logits_tile(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                            int64_t row0, int64_t key0, int64_t B, int64_t M, int64_t D,
                                            acc_t* __restrict__ sa, acc_t* __restrict__ sb,
                                            acc_t (&acc)[kTM][kTN]) {
  const int tid = threadIdx.x;
  const int tx = tid % 16;
  const int ty = tid / 16;
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) acc[i][j] = acc_t(0);
  for (int64_t d0 = 0; d0 < D; d0 += kBK) {
    for (int e = tid; e < kBM * kBK; e += kThreads) {
      const int r = e / kBK;
      const int c = e % kBK;
      const int64_t d = d0 + c;
      const int64_t gq = row0 + r;
      const int64_t gk = key0 + r;
      sa[c * kPadA + r] = (gq < B && d < D) ? static_cast<acc_t>(q[gq * D + d]) : acc_t(0);
      sb[c * kPadA + r] = (gk < M && d < D) ? static_cast<acc_t>(k[gk * D + d]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < kBK; ++c) {
      acc_t a[kTM];
      acc_t b[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) a[i] = sa[c * kPadA + ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kTN; ++j) b[j] = sb[c * kPadA + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    fwd_partial_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                       const int64_t* __restrict__ q_labels, const int64_t* __restrict__ k_labels,
                       const int64_t* __restrict__ self_index, int64_t B, int64_t M, int64_t D, acc_t inv_tau,
                       int64_t tiles_per_split, acc_t* __restrict__ partial) {
  PRUNEOPT_DYNAMIC_SMEM(smem_raw);
  const SmemPtrs<acc_t> sm = carve_smem<acc_t>(smem_raw);
  const int tid = threadIdx.x;
  const int tx = tid % 16;
  const int ty = tid / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t split = blockIdx.y;
  const int64_t tiles = (M + kBN - 1) / kBN;
  const int64_t t_begin = split * tiles_per_split;
  const int64_t t_end = t_begin + tiles_per_split < tiles ? t_begin + tiles_per_split : tiles;

  if (tid < kBM) {
    const int64_t gr = row0 + tid;
    sm.qlab[tid] = gr < B ? q_labels[gr] : 0;
    sm.self[tid] = gr < B ? self_index[gr] : -1;
  }

  acc_t m_all[kTM], s_all[kTM], m_pos[kTM], s_pos[kTM], count[kTM], sum_l[kTM];
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    m_all[i] = neg_inf<acc_t>();
    s_all[i] = acc_t(0);
    m_pos[i] = neg_inf<acc_t>();
    s_pos[i] = acc_t(0);
    count[i] = acc_t(0);
    sum_l[i] = acc_t(0);
  }

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t key0 = t * kBN;
    __syncthreads();  // everyone is done with the previous tile's key labels
    if (tid < kBN) sm.klab[tid] = key0 + tid < M ? k_labels[key0 + tid] : 0;
    __syncthreads();
    acc_t acc[kTM][kTN];
    logits_tile<scalar_t, acc_t>(q, k, row0, key0, B, M, D, sm.a, sm.b, acc);

#pragma unroll
    for (int i = 0; i < kTM; ++i) {
      const int r = ty + 16 * i;
      const int64_t label = sm.qlab[r];
      const int64_t self = sm.self[r];
      acc_t v[kTN];
      bool pos[kTN];
      acc_t tile_max = neg_inf<acc_t>();
      acc_t tile_pmax = neg_inf<acc_t>();
#pragma unroll
      for (int j = 0; j < kTN; ++j) {
        const int c = tx + 16 * j;
        const int64_t key = key0 + c;
        const bool usable = key < M && key != self;
        v[j] = usable ? acc[i][j] * inv_tau : neg_inf<acc_t>();
        pos[j] = usable && sm.klab[c] == label;
        tile_max = v[j] > tile_max ? v[j] : tile_max;
        if (pos[j]) tile_pmax = v[j] > tile_pmax ? v[j] : tile_pmax;
      }
      tile_max = half_warp_max(tile_max);
      tile_pmax = half_warp_max(tile_pmax);
      const acc_t new_max = m_all[i] > tile_max ? m_all[i] : tile_max;
      const acc_t shift = new_max == neg_inf<acc_t>() ? acc_t(0) : new_max;
      const acc_t new_pmax = m_pos[i] > tile_pmax ? m_pos[i] : tile_pmax;
      const acc_t pshift = new_pmax == neg_inf<acc_t>() ? acc_t(0) : new_pmax;
      acc_t se = 0, pe = 0, pc = 0, pl = 0;
#pragma unroll
      for (int j = 0; j < kTN; ++j) {
        se += dev_exp(v[j] - shift);
        if (pos[j]) {
          pe += dev_exp(v[j] - pshift);
          pc += acc_t(1);
          pl += v[j];
        }
      }
      se = half_warp_sum(se);
      pe = half_warp_sum(pe);
      pc = half_warp_sum(pc);
      pl = half_warp_sum(pl);
      s_all[i] = s_all[i] * dev_exp(m_all[i] - shift) + se;
      m_all[i] = new_max;
      s_pos[i] = s_pos[i] * dev_exp(m_pos[i] - pshift) + pe;
      m_pos[i] = new_pmax;
      count[i] += pc;
      sum_l[i] += pl;
    }
  }

  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < kTM; ++i) {
      const int64_t gr = row0 + ty + 16 * i;
      if (gr < B) {
        acc_t* p = partial + (split * B + gr) * kStatsPerRow;
        p[0] = m_all[i];
        p[1] = s_all[i];
        p[2] = m_pos[i];
        p[3] = s_pos[i];
        p[4] = count[i];
        p[5] = sum_l[i];
      }
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ void merge_lse(acc_t& m, acc_t& s, acc_t m2, acc_t s2) {
  const acc_t nm = m > m2 ? m : m2;
  if (nm == neg_inf<acc_t>()) return;
  s = s * dev_exp(m - nm) + s2 * dev_exp(m2 - nm);
  m = nm;
}

template <typename acc_t>
__global__ void fwd_combine_kernel(const acc_t* __restrict__ partial, int64_t splits, int64_t B, int mode,
                                   acc_t* __restrict__ loss, bool* __restrict__ valid, acc_t* __restrict__ stats) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B) return;
  acc_t m_all = neg_inf<acc_t>(), s_all = 0, m_pos = neg_inf<acc_t>(), s_pos = 0, count = 0, sum_l = 0;
  for (int64_t s = 0; s < splits; ++s) {
    const acc_t* p = partial + (s * B + i) * kStatsPerRow;
    merge_lse(m_all, s_all, p[0], p[1]);
    merge_lse(m_pos, s_pos, p[2], p[3]);
    count += p[4];
    sum_l += p[5];
  }
  const acc_t lse_all = s_all > 0 ? m_all + dev_log(s_all) : neg_inf<acc_t>();
  const acc_t lse_pos = s_pos > 0 ? m_pos + dev_log(s_pos) : neg_inf<acc_t>();
  const bool ok = count > 0;
  acc_t value = 0;
  if (ok) value = mode == static_cast<int>(LossMode::MeanLog) ? lse_all - sum_l / count : lse_all - lse_pos;
  loss[i] = value;
  valid[i] = ok;
  stats[3 * i + 0] = lse_all;
  stats[3 * i + 1] = lse_pos;
  stats[3 * i + 2] = count;
}

// Loads the saved statistics of query rows [row0, row0 + kBM) into shared memory.
template <typename acc_t>
__device__ __forceinline__ void load_row_info(const SmemPtrs<acc_t>& sm, int64_t row0, int64_t B,
                                              const acc_t* __restrict__ grad, const acc_t* __restrict__ stats,
                                              const int64_t* __restrict__ q_labels,
                                              const int64_t* __restrict__ self_index, acc_t inv_tau) {
  const int tid = threadIdx.x;
  if (tid < kBM) {
    const int64_t gr = row0 + tid;
    const bool in = gr < B;
    const acc_t cnt = in ? stats[3 * gr + 2] : acc_t(0);
    sm.lse[tid] = in ? stats[3 * gr + 0] : acc_t(0);
    sm.lsp[tid] = in ? stats[3 * gr + 1] : acc_t(0);
    sm.invcnt[tid] = cnt > 0 ? acc_t(1) / cnt : acc_t(0);
    sm.coef[tid] = cnt > 0 ? grad[gr] * inv_tau : acc_t(0);  // invalid rows contribute nothing
    sm.qlab[tid] = in ? q_labels[gr] : 0;
    sm.self[tid] = in ? self_index[gr] : -1;
  }
}

// Turns the logits micro-tiles into W = coef_r * (softmax - target) and stores them in sm.w.
template <typename acc_t>
__device__ __forceinline__ void weights_to_smem(const SmemPtrs<acc_t>& sm, const acc_t (&acc)[kTM][kTN],
                                                int64_t key0, int64_t M, acc_t inv_tau, int mode) {
  const int tx = threadIdx.x % 16;
  const int ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int r = ty + 16 * i;
    const acc_t coef = sm.coef[r];
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int c = tx + 16 * j;
      const int64_t key = key0 + c;
      acc_t w = 0;
      if (coef != acc_t(0) && key < M && key != sm.self[r]) {
        const acc_t l = acc[i][j] * inv_tau;
        const acc_t p = dev_exp(l - sm.lse[r]);
        acc_t target = 0;
        if (sm.klab[c] == sm.qlab[r]) {
          target = mode == static_cast<int>(LossMode::MeanLog) ? sm.invcnt[r] : dev_exp(l - sm.lsp[r]);
        }
        w = coef * (p - target);
      }
      sm.w[r * kPadW + c] = w;
    }
  }
}

// grad_q partial for (row block, key split): out[split][rows] += W @ k[tile keys].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    bwd_q_kernel(const acc_t* __restrict__ grad, const acc_t* __restrict__ stats, const scalar_t* __restrict__ q,
                 const scalar_t* __restrict__ k, const int64_t* __restrict__ q_labels,
                 const int64_t* __restrict__ k_labels, const int64_t* __restrict__ self_index, int64_t B, int64_t M,
                 int64_t D, acc_t inv_tau, int mode, int64_t tiles_per_split, acc_t* __restrict__ out) {
  PRUNEOPT_DYNAMIC_SMEM(smem_raw);
  const SmemPtrs<acc_t> sm = carve_smem<acc_t>(smem_raw);
  const int tid = threadIdx.x;
  const int tx = tid % 16;
  const int ty = tid / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t split = blockIdx.y;
  const int64_t tiles = (M + kBN - 1) / kBN;
  const int64_t t_begin = split * tiles_per_split;
  const int64_t t_end = t_begin + tiles_per_split < tiles ? t_begin + tiles_per_split : tiles;
  acc_t* out_split = out + split * B * D;

  load_row_info(sm, row0, B, grad, stats, q_labels, self_index, inv_tau);
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t key0 = t * kBN;
    __syncthreads();
    if (tid < kBN) sm.klab[tid] = key0 + tid < M ? k_labels[key0 + tid] : 0;
    __syncthreads();
    acc_t acc[kTM][kTN];
    logits_tile<scalar_t, acc_t>(q, k, row0, key0, B, M, D, sm.a, sm.b, acc);
    weights_to_smem(sm, acc, key0, M, inv_tau, mode);
    for (int64_t d0 = 0; d0 < D; d0 += kDC) {
      __syncthreads();  // weights written / previous chunk consumed
      for (int e = tid; e < kBN * kDC; e += kThreads) {
        const int c = e / kDC;
        const int col = e % kDC;
        const int64_t key = key0 + c;
        const int64_t d = d0 + col;
        sm.x[c * kPadX + col] = (key < M && d < D) ? static_cast<acc_t>(k[key * D + d]) : acc_t(0);
      }
      __syncthreads();
      acc_t part[kTM][kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) part[i][j] = acc_t(0);
#pragma unroll 8
      for (int c = 0; c < kBN; ++c) {
        acc_t a[kTM];
        acc_t b[kTN];
#pragma unroll
        for (int i = 0; i < kTM; ++i) a[i] = sm.w[(ty + 16 * i) * kPadW + c];
#pragma unroll
        for (int j = 0; j < kTN; ++j) b[j] = sm.x[c * kPadX + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < kTM; ++i)
#pragma unroll
          for (int j = 0; j < kTN; ++j) part[i][j] = fma(a[i], b[j], part[i][j]);
      }
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
        const int64_t gr = row0 + ty + 16 * i;
        if (gr >= B) continue;
#pragma unroll
        for (int j = 0; j < kTN; ++j) {
          const int64_t d = d0 + tx + 16 * j;
          if (d < D) out_split[gr * D + d] += part[i][j];
        }
      }
    }
  }
}

// grad_k partial for (key block, row split): out[split][keys] += W^T @ q[tile rows].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    bwd_k_kernel(const acc_t* __restrict__ grad, const acc_t* __restrict__ stats, const scalar_t* __restrict__ q,
                 const scalar_t* __restrict__ k, const int64_t* __restrict__ q_labels,
                 const int64_t* __restrict__ k_labels, const int64_t* __restrict__ self_index, int64_t B, int64_t M,
                 int64_t D, acc_t inv_tau, int mode, int64_t row_tiles_per_split, acc_t* __restrict__ out) {
  PRUNEOPT_DYNAMIC_SMEM(smem_raw);
  const SmemPtrs<acc_t> sm = carve_smem<acc_t>(smem_raw);
  const int tid = threadIdx.x;
  const int tx = tid % 16;
  const int ty = tid / 16;
  const int64_t key0 = static_cast<int64_t>(blockIdx.x) * kBN;
  const int64_t split = blockIdx.y;
  const int64_t row_tiles = (B + kBM - 1) / kBM;
  const int64_t t_begin = split * row_tiles_per_split;
  const int64_t t_end = t_begin + row_tiles_per_split < row_tiles ? t_begin + row_tiles_per_split : row_tiles;
  acc_t* out_split = out + split * M * D;

  if (tid < kBN) sm.klab[tid] = key0 + tid < M ? k_labels[key0 + tid] : 0;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t row0 = t * kBM;
    __syncthreads();
    load_row_info(sm, row0, B, grad, stats, q_labels, self_index, inv_tau);
    __syncthreads();
    acc_t acc[kTM][kTN];
    logits_tile<scalar_t, acc_t>(q, k, row0, key0, B, M, D, sm.a, sm.b, acc);
    weights_to_smem(sm, acc, key0, M, inv_tau, mode);
    for (int64_t d0 = 0; d0 < D; d0 += kDC) {
      __syncthreads();
      for (int e = tid; e < kBM * kDC; e += kThreads) {
        const int r = e / kDC;
        const int col = e % kDC;
        const int64_t gr = row0 + r;
        const int64_t d = d0 + col;
        sm.x[r * kPadX + col] = (gr < B && d < D) ? static_cast<acc_t>(q[gr * D + d]) : acc_t(0);
      }
      __syncthreads();
      acc_t part[kTM][kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) part[i][j] = acc_t(0);
#pragma unroll 8
      for (int r = 0; r < kBM; ++r) {
        acc_t a[kTM];
        acc_t b[kTN];
#pragma unroll
        for (int i = 0; i < kTM; ++i) a[i] = sm.w[r * kPadW + ty + 16 * i];
#pragma unroll
        for (int j = 0; j < kTN; ++j) b[j] = sm.x[r * kPadX + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < kTM; ++i)
#pragma unroll
          for (int j = 0; j < kTN; ++j) part[i][j] = fma(a[i], b[j], part[i][j]);
      }
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
        const int64_t key = key0 + ty + 16 * i;
        if (key >= M) continue;
#pragma unroll
        for (int j = 0; j < kTN; ++j) {
          const int64_t d = d0 + tx + 16 * j;
          if (d < D) out_split[key * D + d] += part[i][j];
        }
      }
    }
  }
}

}  // namespace cuda_kernels
}  // namespace pruneopt
