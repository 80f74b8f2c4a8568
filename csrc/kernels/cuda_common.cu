// Small CUDA kernels shared by the ops: status reset, keep-mask validation,
// final loss reduction.
#include "cuda_common.cuh"

namespace dropclass_fast {
namespace kernels {
namespace cuda {
namespace {

constexpr int kKeepThreads = 128;
constexpr int kFinalizeThreads = 256;

// One block per keep row: mask values, first non-binary value, empty rows.
template <typename F>
__global__ void __launch_bounds__(kKeepThreads)
    keep_mask_kernel(const F* __restrict__ keep, int64_t K, uint8_t* __restrict__ mask,
                     CudaStatus* status) {
  __shared__ int any_kept;
  if (threadIdx.x == 0) any_kept = 0;
  __syncthreads();
  const int64_t row = blockIdx.x;
  int kept = 0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const int64_t idx = row * K + k;
    const F v = keep[idx];
    if (!(v == F(0) || v == F(1))) atomicMin(&status->bad_keep_index, static_cast<unsigned long long>(idx));
    mask[idx] = v != F(0) ? 1 : 0;
    kept |= v != F(0) ? 1 : 0;
  }
  if (kept) atomicOr(&any_kept, 1);
  __syncthreads();
  if (threadIdx.x == 0 && !any_kept && K > 0)
    atomicMin(&status->empty_keep_row, static_cast<unsigned long long>(row));
}

// One block: partial sums in index order per thread, then a fixed tree.
__global__ void __launch_bounds__(kFinalizeThreads)
    finalize_loss_kernel(const double* __restrict__ partials, int64_t n,
                         const unsigned long long* count, float* out) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += partials[i];
  const double total = block_sum(acc, scratch);
  if (threadIdx.x == 0) {
    double loss = total;
    if (count != nullptr) loss = *count > 0 ? total / static_cast<double>(*count) : 0.0;
    *out = static_cast<float>(loss);
  }
}

}  // namespace

void launch_finalize_loss(const double* partials, int64_t n, const unsigned long long* count,
                          float* out, cudaStream_t stream) {
  finalize_loss_kernel<<<1, kFinalizeThreads, 0, stream>>>(partials, n, count, out);
}

cudaError_t cuda_status_reset(CudaStatus* status, cudaStream_t stream) {
  return cudaMemsetAsync(status, 0xFF, sizeof(CudaStatus), stream);
}

cudaError_t keep_mask_cuda(const void* keep, bool keep_is_double, int64_t rows, int64_t K,
                           uint8_t* mask, CudaStatus* status, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  const unsigned grid = static_cast<unsigned>(rows);
  if (keep_is_double)
    keep_mask_kernel<double><<<grid, kKeepThreads, 0, stream>>>(static_cast<const double*>(keep),
                                                                K, mask, status);
  else
    keep_mask_kernel<float><<<grid, kKeepThreads, 0, stream>>>(static_cast<const float*>(keep), K,
                                                               mask, status);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace kernels
}  // namespace dropclass_fast
