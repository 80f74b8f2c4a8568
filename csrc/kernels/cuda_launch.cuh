// Host API of the CUDA kernels of dropclass_fast: torch-free launchers that
// take device pointers, the argument structs shared with the CPU kernels
// (channel_mask.h, seg_cross_entropy.h, dropped_class_prob.h) and a
// cudaStream_t.  Host-only declarations: includable from a .cpp file compiled
// by the host compiler (the torch bindings in csrc/cuda/).
//
// Every pointer in the argument structs is a device pointer here.  Inputs are
// float32, float16 or bfloat16 (DType::Float64 is not supported on the GPU);
// results and gradients are float32.  Launchers only enqueue work on
// `stream` and return the launch error (cudaSuccess when all went well);
// input errors found on the device (bad labels, bad keep values) are written
// to a CudaStatus that the caller copies back once, after the op.
// Scratch memory comes from the caller: `*_workspace_bytes` says how much.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "channel_mask.h"
#include "dropped_class_prob.h"
#include "seg_cross_entropy.h"

namespace dropclass_fast {
namespace kernels {
namespace cuda {

// Input errors found on the device: the smallest offending flat index, or
// kNoIndex when there is none.  Reset with cuda_status_reset before use.
constexpr unsigned long long kNoIndex = ~0ull;
struct CudaStatus {
  unsigned long long bad_label_index;  // into the target tensor
  unsigned long long bad_keep_index;   // into the [rows, K] keep values
  unsigned long long empty_keep_row;   // a keep row with no class kept
};

cudaError_t cuda_status_reset(CudaStatus* status, cudaStream_t stream);

// Validates keep values ([rows, K] contiguous, float32 or float64: 0 or 1,
// every row with a 1) into `status` and writes mask[r, k] = keep[r, k] != 0.
cudaError_t keep_mask_cuda(const void* keep, bool keep_is_double, int64_t rows, int64_t K,
                           uint8_t* mask, CudaStatus* status, cudaStream_t stream);

// channel_mask: args.weight is [K, C, T] float32, args.keep a device mask.
size_t channel_mask_workspace_bytes(const ChannelMaskArgs& args, bool backward);
cudaError_t channel_mask_forward_cuda(const ChannelMaskArgs& args, const void* features,
                                      void* out, void* workspace, cudaStream_t stream);
// grad_weight: [K, C, T] float32.
cudaError_t channel_mask_backward_cuda(const ChannelMaskArgs& args, const void* grad_out,
                                       const void* features, void* grad_features,
                                       float* grad_weight, void* workspace, cudaStream_t stream);

// seg_cross_entropy: writes the mean loss to *loss (float32, device) and, when
// args.grad is set, the float32 gradient [B, K, h, w].  Label errors go to
// status->bad_label_index (loss and gradient are then unspecified).
size_t seg_cross_entropy_workspace_bytes(const SegCrossEntropyArgs& args);
cudaError_t seg_cross_entropy_cuda(const SegCrossEntropyArgs& args, float* loss,
                                   CudaStatus* status, void* workspace, cudaStream_t stream);

// The combined pass over drop_logits of dropclass_loss: seg_cross_entropy_cuda
// plus, from the same kernel, L_sup (dropped_class_prob.h) of args.logits with
// args.keep (required) to *sup_loss (float32, device) and, when sup_grad is
// set, its float32 gradient [B, K, h, w].  Same workspace size.
cudaError_t seg_cross_entropy_sup_cuda(const SegCrossEntropyArgs& args, float* loss,
                                       float* sup_loss, float* sup_grad, CudaStatus* status,
                                       void* workspace, cudaStream_t stream);

// dropped_class_prob: *loss (float32, device) and, when args.grad is set, the
// float32 gradient [B, K, P].
size_t dropped_class_prob_workspace_bytes(const DroppedClassProbArgs& args);
cudaError_t dropped_class_prob_cuda(const DroppedClassProbArgs& args, float* loss,
                                    void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace kernels
}  // namespace dropclass_fast
