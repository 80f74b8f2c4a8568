// Class-importance channel masking, CUDA.  Semantics in channel_mask.h.
//
// forward : s[r, c] (one thread per entry), then out = features * s with
//           16-byte packets whenever a packet stays inside one (b, c) plane
//           (NCHW: HW % VEC == 0) or one pixel (NHWC: C % VEC == 0).
// backward: grad_features = grad_out * s in the same pass that reduces
//           r[b, c] = sum_p grad_out * features: float32 per thread over a
//           fixed chunk of pixels, a fixed-tree block sum in double per chunk,
//           chunks summed in order (no atomics: deterministic), then
//           grad_weight[k, c, t] = [W_eff > 0] * sum_b keep[b,k] / n_b * r[b,c].
#include "cuda_common.cuh"

namespace dropclass_fast {
namespace kernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kPlaneChunk = 8192;  // NCHW: elements of one plane per block
constexpr int64_t kPixelChunk = 64;    // NHWC: pixels per block

struct MaskShape {
  int64_t B, C, HW, K, T, keep_rows;
};

MaskShape shape_of(const ChannelMaskArgs& a) { return {a.B, a.C, a.HW, a.K, a.T, a.keep_rows}; }

__device__ __forceinline__ float effective_weight(const float* __restrict__ w, int64_t k, int64_t c,
                                                  const MaskShape& m) {
  float acc = 0.f;
  const float* wp = w + (k * m.C + c) * m.T;
  for (int64_t t = 0; t < m.T; ++t) acc += wp[t];
  return acc;
}

// s[r, c] = sum_{k kept} ReLU(W_eff[k, c]) / n_r, summed in class order.
__global__ void importance_kernel(const float* __restrict__ w, const uint8_t* __restrict__ keep,
                                  MaskShape m, float* __restrict__ s) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= m.keep_rows * m.C) return;
  const int64_t r = i / m.C, c = i % m.C;
  const uint8_t* kr = keep + r * m.K;
  int64_t n = 0;
  float acc = 0.f;
  for (int64_t k = 0; k < m.K; ++k) {
    if (!kr[k]) continue;
    ++n;
    const float we = effective_weight(w, k, c, m);
    acc += we > 0.f ? we : 0.f;
  }
  const float inv = n > 0 ? 1.f / static_cast<float>(n) : 0.f;
  s[i] = acc * inv;
}

// out = features * s, VEC elements per step.
template <typename S, int VEC, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const S* __restrict__ f, S* __restrict__ out, const float* __restrict__ s,
                   MaskShape m) {
  const int64_t nvec = m.B * m.C * m.HW / VEC;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = v * VEC;
    float x[VEC];
    load_packet<S, VEC>(f + e, x);
    if (kChannelsLast) {
      const int64_t c0 = e % m.C;
      const float* sb = s + keep_row_of(e / (m.HW * m.C), m.keep_rows) * m.C + c0;
#pragma unroll
      for (int j = 0; j < VEC; ++j) x[j] *= sb[j];
    } else {
      const int64_t plane = e / m.HW;
      const float sc = s[keep_row_of(plane / m.C, m.keep_rows) * m.C + plane % m.C];
#pragma unroll
      for (int j = 0; j < VEC; ++j) x[j] *= sc;
    }
    store_packet<S, VEC>(out + e, x);
  }
}

// NCHW backward: block = (plane, chunk).  partial[plane * nchunks + chunk].
template <typename S, int VEC>
__global__ void __launch_bounds__(kThreads)
    backward_nchw_kernel(const S* __restrict__ go, const S* __restrict__ f, S* __restrict__ gf,
                         const float* __restrict__ s, MaskShape m, int64_t nchunks,
                         double* __restrict__ partial) {
  __shared__ double scratch[32];
  const int64_t task = blockIdx.x;
  const int64_t plane = task / nchunks, chunk = task % nchunks;
  const float sc = s[keep_row_of(plane / m.C, m.keep_rows) * m.C + plane % m.C];
  const int64_t p0 = chunk * kPlaneChunk;
  const int64_t p1 = p0 + kPlaneChunk < m.HW ? p0 + kPlaneChunk : m.HW;
  const int64_t base = plane * m.HW;
  float acc = 0.f;
  for (int64_t p = p0 + threadIdx.x * VEC; p < p1; p += static_cast<int64_t>(blockDim.x) * VEC) {
    float g[VEC], x[VEC];
    load_packet<S, VEC>(go + base + p, g);
    load_packet<S, VEC>(f + base + p, x);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc += g[j] * x[j];
      g[j] *= sc;
    }
    store_packet<S, VEC>(gf + base + p, g);
  }
  const double total = block_sum(static_cast<double>(acc), scratch);
  if (threadIdx.x == 0) partial[task] = total;
}

// NHWC backward: block = (sample, chunk of pixels), a thread per VEC
// channels.  partial[(b * nchunks + chunk) * C + c].
template <typename S, int VEC>
__global__ void __launch_bounds__(kThreads)
    backward_nhwc_kernel(const S* __restrict__ go, const S* __restrict__ f, S* __restrict__ gf,
                         const float* __restrict__ s, MaskShape m, int64_t nchunks,
                         double* __restrict__ partial) {
  const int64_t task = blockIdx.x;
  const int64_t b = task / nchunks, chunk = task % nchunks;
  const int64_t p0 = chunk * kPixelChunk;
  const int64_t p1 = p0 + kPixelChunk < m.HW ? p0 + kPixelChunk : m.HW;
  const float* sb = s + keep_row_of(b, m.keep_rows) * m.C;
  for (int64_t c0 = threadIdx.x * static_cast<int64_t>(VEC); c0 < m.C;
       c0 += static_cast<int64_t>(blockDim.x) * VEC) {
    float acc[VEC], sv[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc[j] = 0.f;
      sv[j] = sb[c0 + j];
    }
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t e = (b * m.HW + p) * m.C + c0;
      float g[VEC], x[VEC];
      load_packet<S, VEC>(go + e, g);
      load_packet<S, VEC>(f + e, x);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        acc[j] += g[j] * x[j];
        g[j] *= sv[j];
      }
      store_packet<S, VEC>(gf + e, g);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) partial[task * m.C + c0 + j] = static_cast<double>(acc[j]);
  }
}

// r[b, c] = sum of the chunk partials in chunk order.
__global__ void reduce_partials_kernel(const double* __restrict__ partial, MaskShape m,
                                       int64_t nchunks, bool channels_last,
                                       double* __restrict__ r) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= m.B * m.C) return;
  const int64_t b = i / m.C, c = i % m.C;
  double acc = 0.0;
  for (int64_t ch = 0; ch < nchunks; ++ch)
    acc += channels_last ? partial[(b * nchunks + ch) * m.C + c] : partial[i * nchunks + ch];
  r[i] = acc;
}

// grad_weight[k, c, :] = [W_eff[k, c] > 0] * sum_b keep[b, k] / n_b * r[b, c].
__global__ void grad_weight_kernel(const float* __restrict__ w, const uint8_t* __restrict__ keep,
                                   const double* __restrict__ r, MaskShape m,
                                   float* __restrict__ gw) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= m.K * m.C) return;
  const int64_t k = i / m.C, c = i % m.C;
  double acc = 0.0;
  if (effective_weight(w, k, c, m) > 0.f) {
    for (int64_t b = 0; b < m.B; ++b) {
      const uint8_t* kr = keep + keep_row_of(b, m.keep_rows) * m.K;
      if (!kr[k]) continue;
      int64_t n = 0;
      for (int64_t j = 0; j < m.K; ++j) n += kr[j] ? 1 : 0;
      acc += 1.0 / static_cast<double>(n) * r[b * m.C + c];
    }
  }
  for (int64_t t = 0; t < m.T; ++t) gw[i * m.T + t] = static_cast<float>(acc);
}

struct MaskWorkspace {
  float* s;
  double* partial;
  double* r;
  int64_t nchunks;
};

MaskWorkspace carve(const ChannelMaskArgs& a, bool backward, void* base, size_t* bytes) {
  WorkspaceCarver wc(base);
  MaskWorkspace ws{};
  ws.s = wc.take<float>(a.keep_rows * a.C);
  if (backward) {
    ws.nchunks = a.channels_last ? ceil_div(a.HW, kPixelChunk) : ceil_div(a.HW, kPlaneChunk);
    ws.partial = wc.take<double>(a.B * a.C * ws.nchunks);
    ws.r = wc.take<double>(a.B * a.C);
  }
  if (bytes) *bytes = wc.bytes();
  return ws;
}

// Packet width: 16 bytes when packets stay inside a plane (NCHW) or a pixel
// (NHWC) and every buffer is 16-byte aligned, else one element.
template <typename S>
int packet_width(const ChannelMaskArgs& a, std::initializer_list<const void*> ptrs) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(S));
  const int64_t inner = a.channels_last ? a.C : a.HW;
  if (inner % kVec != 0) return 1;
  for (const void* p : ptrs)
    if (!aligned16(p)) return 1;
  return kVec;
}

void launch_importance(const ChannelMaskArgs& a, float* s, cudaStream_t stream) {
  const int64_t n = a.keep_rows * a.C;
  importance_kernel<<<grid_for(n, kThreads, INT32_MAX), kThreads, 0, stream>>>(
      static_cast<const float*>(a.weight), a.keep, shape_of(a), s);
}

template <typename S, int VEC>
void forward_typed(const ChannelMaskArgs& a, const S* f, S* out, const float* s,
                   cudaStream_t stream) {
  const unsigned grid = grid_for(a.B * a.C * a.HW / VEC, kThreads);
  if (a.channels_last)
    forward_kernel<S, VEC, true><<<grid, kThreads, 0, stream>>>(f, out, s, shape_of(a));
  else
    forward_kernel<S, VEC, false><<<grid, kThreads, 0, stream>>>(f, out, s, shape_of(a));
}

template <typename S>
void forward_dispatch(const ChannelMaskArgs& a, const void* f, void* out, const float* s,
                      cudaStream_t stream) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(S));
  if (packet_width<S>(a, {f, out}) == kVec)
    forward_typed<S, kVec>(a, static_cast<const S*>(f), static_cast<S*>(out), s, stream);
  else
    forward_typed<S, 1>(a, static_cast<const S*>(f), static_cast<S*>(out), s, stream);
}

template <typename S, int VEC>
void backward_typed(const ChannelMaskArgs& a, const S* go, const S* f, S* gf,
                    const MaskWorkspace& ws, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(
      (a.channels_last ? a.B : a.B * a.C) * ws.nchunks);
  if (a.channels_last)
    backward_nhwc_kernel<S, VEC><<<grid, kThreads, 0, stream>>>(go, f, gf, ws.s, shape_of(a),
                                                               ws.nchunks, ws.partial);
  else
    backward_nchw_kernel<S, VEC><<<grid, kThreads, 0, stream>>>(go, f, gf, ws.s, shape_of(a),
                                                               ws.nchunks, ws.partial);
}

template <typename S>
void backward_dispatch(const ChannelMaskArgs& a, const void* go, const void* f, void* gf,
                       const MaskWorkspace& ws, cudaStream_t stream) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(S));
  const S* g = static_cast<const S*>(go);
  const S* x = static_cast<const S*>(f);
  S* d = static_cast<S*>(gf);
  if (packet_width<S>(a, {go, f, gf}) == kVec)
    backward_typed<S, kVec>(a, g, x, d, ws, stream);
  else
    backward_typed<S, 1>(a, g, x, d, ws, stream);
}

}  // namespace

size_t channel_mask_workspace_bytes(const ChannelMaskArgs& a, bool backward) {
  size_t bytes = 0;
  carve(a, backward, nullptr, &bytes);
  return bytes;
}

cudaError_t channel_mask_forward_cuda(const ChannelMaskArgs& a, const void* features, void* out,
                                      void* workspace, cudaStream_t stream) {
  if (a.dtype == DType::Float64) return cudaErrorInvalidValue;
  if (a.B * a.C * a.HW == 0) return cudaSuccess;
  const MaskWorkspace ws = carve(a, false, workspace, nullptr);
  launch_importance(a, ws.s, stream);
  switch (a.dtype) {
    case DType::Float16: forward_dispatch<__half>(a, features, out, ws.s, stream); break;
    case DType::BFloat16: forward_dispatch<__nv_bfloat16>(a, features, out, ws.s, stream); break;
    default: forward_dispatch<float>(a, features, out, ws.s, stream); break;
  }
  return cudaGetLastError();
}

cudaError_t channel_mask_backward_cuda(const ChannelMaskArgs& a, const void* grad_out,
                                       const void* features, void* grad_features,
                                       float* grad_weight, void* workspace, cudaStream_t stream) {
  if (a.dtype == DType::Float64) return cudaErrorInvalidValue;
  const MaskWorkspace ws = carve(a, true, workspace, nullptr);
  if (a.B * a.C * a.HW == 0) {
    if (a.K * a.C * a.T > 0)
      return cudaMemsetAsync(grad_weight, 0, sizeof(float) * a.K * a.C * a.T, stream);
    return cudaSuccess;
  }
  launch_importance(a, ws.s, stream);
  switch (a.dtype) {
    case DType::Float16:
      backward_dispatch<__half>(a, grad_out, features, grad_features, ws, stream);
      break;
    case DType::BFloat16:
      backward_dispatch<__nv_bfloat16>(a, grad_out, features, grad_features, ws, stream);
      break;
    default: backward_dispatch<float>(a, grad_out, features, grad_features, ws, stream); break;
  }
  reduce_partials_kernel<<<grid_for(a.B * a.C, kThreads, INT32_MAX), kThreads, 0, stream>>>(
      ws.partial, shape_of(a), ws.nchunks, a.channels_last, ws.r);
  grad_weight_kernel<<<grid_for(a.K * a.C, kThreads, INT32_MAX), kThreads, 0, stream>>>(
      static_cast<const float*>(a.weight), a.keep, ws.r, shape_of(a), grad_weight);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace kernels
}  // namespace dropclass_fast
