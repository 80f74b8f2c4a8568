// Device helpers shared by the CUDA kernels of dropclass_fast.
//
// Torch-free: CUDA runtime and the toolkit's fp16 / bf16 headers only.  Every
// kernel computes in float32 whatever the storage type (float32, float16,
// bfloat16); reductions run in a fixed order (no floating-point atomics), so
// results are bit-identical from run to run.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "common.h"
#include "cuda_launch.cuh"

namespace dropclass_fast {
namespace kernels {
namespace cuda {

// ---------------------------------------------------------------------------
// Loads and stores of the storage types as float32.
// ---------------------------------------------------------------------------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename S> __device__ __forceinline__ S from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Row of the keep mask that applies to sample b (device twin of keep_row).
__device__ __forceinline__ int64_t keep_row_of(int64_t b, int64_t keep_rows) { return keep_rows == 1 ? 0 : b; }

// Label idx of a target buffer as int64 (runtime label type).
__device__ __forceinline__ int64_t load_label(const void* p, LabelType type, int64_t idx) {
  switch (type) {
    case LabelType::UInt8: return static_cast<const uint8_t*>(p)[idx];
    case LabelType::Int8: return static_cast<const int8_t*>(p)[idx];
    case LabelType::Int16: return static_cast<const int16_t*>(p)[idx];
    case LabelType::Int32: return static_cast<const int32_t*>(p)[idx];
    default: return static_cast<const int64_t*>(p)[idx];
  }
}

// VEC consecutive elements moved as one 16-byte (or smaller) transaction.
template <typename S, int VEC>
struct alignas(sizeof(S) * VEC) Packet {
  S v[VEC];
};

template <typename S, int VEC>
__device__ __forceinline__ void load_packet(const S* p, float (&out)[VEC]) {
  const Packet<S, VEC> pk = *reinterpret_cast<const Packet<S, VEC>*>(p);
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = to_float(pk.v[j]);
}

template <typename S, int VEC>
__device__ __forceinline__ void store_packet(S* p, const float (&in)[VEC]) {
  Packet<S, VEC> pk;
#pragma unroll
  for (int j = 0; j < VEC; ++j) pk.v[j] = from_float<S>(in[j]);
  *reinterpret_cast<Packet<S, VEC>*>(p) = pk;
}

// Whether every pointer is aligned for 16-byte packets.
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---------------------------------------------------------------------------
// Deterministic block reduction (fixed tree).  All threads of the block must
// call it; the result is valid in thread 0.  `scratch` holds 32 doubles.
// ---------------------------------------------------------------------------
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0) {
    const int nwarps = (blockDim.x + 31) >> 5;
    for (int w = 0; w < nwarps; ++w) total += scratch[w];
  }
  return total;
}

// L_sup's weight of one (sample, dropped class) pixel: 1 / (N * P), with N the
// dropped (sample, class) pairs of the batch (keep [keep_rows, K] of 0/1, one
// row broadcast over the B samples) and P the pixels per sample; 0 when
// nothing is dropped.  All threads of the block must call it; every thread
// gets the result.
__device__ __forceinline__ float dropped_pair_scale(const uint8_t* __restrict__ keep, int64_t keep_rows,
                                                   int64_t K, int64_t B, int64_t P, double* scratch) {
  double dropped = 0.0;
  for (int64_t i = threadIdx.x; i < keep_rows * K; i += blockDim.x) dropped += keep[i] ? 0.0 : 1.0;
  const double total = block_sum(dropped, scratch);
  __shared__ double shared_total;
  if (threadIdx.x == 0) shared_total = total;
  __syncthreads();
  const int64_t pairs = static_cast<int64_t>(shared_total) * (keep_rows == 1 ? B : 1);
  return pairs > 0 ? static_cast<float>(1.0 / (static_cast<double>(pairs) * static_cast<double>(P))) : 0.f;
}

// ---------------------------------------------------------------------------
// Launch helpers.
// ---------------------------------------------------------------------------
inline unsigned grid_for(int64_t work, int64_t per_block, int64_t cap = 65535LL * 32) {
  const int64_t g = ceil_div(work, per_block);
  return static_cast<unsigned>(g < 1 ? 1 : (g > cap ? cap : g));
}

// Sum of `n` per-block partials in index order, divided by *count when
// `count` is given (0 when *count == 0), written as float32 to *out.
void launch_finalize_loss(const double* partials, int64_t n, const unsigned long long* count,
                          float* out, cudaStream_t stream);

// Bump allocator over a caller-provided device workspace (256-byte aligned
// slices).  Used twice per op: once without a base to size the workspace,
// once with it to hand out the slices.
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base = nullptr) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* take(int64_t count) {
    offset_ = (offset_ + 255) & ~static_cast<size_t>(255);
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += static_cast<size_t>(count < 0 ? 0 : count) * sizeof(T);
    return p;
  }
  size_t bytes() const { return offset_; }

 private:
  char* base_;
  size_t offset_ = 0;
};

}  // namespace cuda
}  // namespace kernels
}  // namespace dropclass_fast
