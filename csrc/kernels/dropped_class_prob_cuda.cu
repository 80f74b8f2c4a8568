// Mean softmax probability of the dropped classes (L_sup), CUDA.  Semantics
// in dropped_class_prob.h.
//
// One thread per VEC consecutive pixels of one sample (16-byte packets of
// logits when P % VEC == 0 and the buffers are aligned), classes looped over
// in three passes that re-read the thread's logits from L1: the maximum; the
// softmax denominator together with the dropped classes' numerators, so that
// dot = sum_k wgt_k p_k = scale * sum_dropped e_k / sum_k e_k; the gradient
// p_c * (wgt_c - dot).  Per-block loss partials are summed in block order by
// one final block: deterministic.
#include "cuda_common.cuh"

namespace dropclass_fast {
namespace kernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct DcpShape {
  int64_t B, K, P, keep_rows;
  int64_t blocks_per_sample;
};

template <int VEC>
__device__ __forceinline__ void store_floats(float* p, const float (&v)[VEC]) {
  if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int j = 0; j < VEC; j += 4)
      *reinterpret_cast<float4*>(p + j) = make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) p[j] = v[j];
  }
}

template <typename S, int VEC>
__global__ void __launch_bounds__(kThreads)
    dropped_class_prob_kernel(const S* __restrict__ logits, const uint8_t* __restrict__ keep,
                              DcpShape m, float* __restrict__ grad, double* __restrict__ partial) {
  __shared__ double scratch[32];
  const int64_t b = blockIdx.x / m.blocks_per_sample;
  const int64_t blk = blockIdx.x % m.blocks_per_sample;
  const uint8_t* kb = keep + keep_row_of(b, m.keep_rows) * m.K;

  const float scale = dropped_pair_scale(keep, m.keep_rows, m.K, m.B, m.P, scratch);
  bool sample_drops = false;
  for (int64_t k = 0; k < m.K; ++k) sample_drops |= kb[k] == 0;

  const int64_t p0 = (blk * blockDim.x + threadIdx.x) * VEC;
  const bool active = p0 < m.P;
  const S* base = logits + b * m.K * m.P + p0;
  float* gbase = grad ? grad + b * m.K * m.P + p0 : nullptr;
  float dot_sum = 0.f;
  if (active && !sample_drops) {
    if (gbase) {
      const float zero[VEC] = {};
      for (int64_t c = 0; c < m.K; ++c) store_floats<VEC>(gbase + c * m.P, zero);
    }
  } else if (active) {
    float mx[VEC], x[VEC], sum[VEC], dsum[VEC];
    load_packet<S, VEC>(base, mx);
    for (int64_t c = 1; c < m.K; ++c) {
      load_packet<S, VEC>(base + c * m.P, x);
#pragma unroll
      for (int j = 0; j < VEC; ++j) mx[j] = fmaxf(mx[j], x[j]);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum[j] = dsum[j] = 0.f;
    for (int64_t c = 0; c < m.K; ++c) {
      load_packet<S, VEC>(base + c * m.P, x);
      const float dropped = kb[c] ? 0.f : 1.f;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float e = __expf(x[j] - mx[j]);
        sum[j] += e;
        dsum[j] += dropped * e;
      }
    }
    float inv[VEC], dot[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      inv[j] = 1.f / sum[j];
      dot[j] = scale * dsum[j] * inv[j];
      dot_sum += dot[j];
    }
    if (gbase) {
      for (int64_t c = 0; c < m.K; ++c) {
        load_packet<S, VEC>(base + c * m.P, x);
        const float wc = kb[c] ? 0.f : scale;
        float g[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) g[j] = __expf(x[j] - mx[j]) * inv[j] * (wc - dot[j]);
        store_floats<VEC>(gbase + c * m.P, g);
      }
    }
  }
  const double total = block_sum(static_cast<double>(dot_sum), scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

struct DcpWorkspace {
  double* partial;
  int64_t nblocks;
};

DcpWorkspace carve(const DroppedClassProbArgs& a, int vec, void* base, size_t* bytes) {
  WorkspaceCarver wc(base);
  DcpWorkspace ws{};
  ws.nblocks = a.B * ceil_div(a.P, static_cast<int64_t>(kThreads) * vec);
  ws.partial = wc.take<double>(ws.nblocks);
  if (bytes) *bytes = wc.bytes();
  return ws;
}

template <typename S>
int packet_width(const DroppedClassProbArgs& a) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(S));
  const bool ok = a.P % kVec == 0 && aligned16(a.logits) && (a.grad == nullptr || aligned16(a.grad));
  return ok ? kVec : 1;
}

int packet_width_of(const DroppedClassProbArgs& a) {
  switch (a.dtype) {
    case DType::Float16: return packet_width<__half>(a);
    case DType::BFloat16: return packet_width<__nv_bfloat16>(a);
    default: return packet_width<float>(a);
  }
}

template <typename S, int VEC>
void launch_typed(const DroppedClassProbArgs& a, const DcpWorkspace& ws, cudaStream_t stream) {
  const DcpShape m{a.B, a.K, a.P, a.keep_rows, ws.nblocks / a.B};
  dropped_class_prob_kernel<S, VEC><<<static_cast<unsigned>(ws.nblocks), kThreads, 0, stream>>>(
      static_cast<const S*>(a.logits), a.keep, m, static_cast<float*>(a.grad), ws.partial);
}

template <typename S>
void launch_dtype(const DroppedClassProbArgs& a, const DcpWorkspace& ws, int vec,
                  cudaStream_t stream) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(S));
  if (vec == kVec)
    launch_typed<S, kVec>(a, ws, stream);
  else
    launch_typed<S, 1>(a, ws, stream);
}

}  // namespace

size_t dropped_class_prob_workspace_bytes(const DroppedClassProbArgs& a) {
  size_t bytes = 0;
  carve(a, packet_width_of(a), nullptr, &bytes);
  return bytes;
}

cudaError_t dropped_class_prob_cuda(const DroppedClassProbArgs& a, float* loss, void* workspace,
                                    cudaStream_t stream) {
  if (a.dtype == DType::Float64) return cudaErrorInvalidValue;
  if (a.B <= 0 || a.K <= 0 || a.P <= 0) {
    if (a.grad != nullptr && a.B * a.K * a.P > 0)
      cudaMemsetAsync(a.grad, 0, sizeof(float) * a.B * a.K * a.P, stream);
    return cudaMemsetAsync(loss, 0, sizeof(float), stream);
  }
  const int vec = packet_width_of(a);
  const DcpWorkspace ws = carve(a, vec, workspace, nullptr);
  switch (a.dtype) {
    case DType::Float16: launch_dtype<__half>(a, ws, vec, stream); break;
    case DType::BFloat16: launch_dtype<__nv_bfloat16>(a, ws, vec, stream); break;
    default: launch_dtype<float>(a, ws, vec, stream); break;
  }
  launch_finalize_loss(ws.partial, ws.nblocks, nullptr, loss, stream);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace kernels
}  // namespace dropclass_fast
