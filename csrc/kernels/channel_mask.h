// Class-importance channel masking (DropClass steps 1-4), CPU.
//
//   W_eff[k,c] = sum_t weight[k,c,t]
//   s[b,c]     = sum_k keep[b,k] * ReLU(W_eff[k,c]) / sum_k keep[b,k]
//   out        = features * s[b,c]            (broadcast over space)
// Backward (one pass over grad_out and features):
//   grad_features    = grad_out * s[b,c]
//   r[b,c]           = sum_p grad_out[b,c,p] * features[b,c,p]
//   grad_weight[k,c,t] = [W_eff[k,c] > 0] * sum_b keep[b,k] / sum_k' keep[b,k'] * r[b,c]
// Features are [B, C, h, w] in contiguous NCHW or channels-last (NHWC)
// memory; the outputs use the same layout.
#pragma once

#include <cstdint>

#include "common.h"

namespace dropclass_fast {
namespace kernels {

struct ChannelMaskArgs {
  DType dtype = DType::Float32;   // features / grad_out / outputs element type
  bool channels_last = false;     // false: [B][C][HW]; true: [B][HW][C]
  int64_t B = 0, C = 0, HW = 0;
  // [K, C, T] contiguous in the compute type (float; double when dtype is
  // Float64).
  const void* weight = nullptr;
  int64_t K = 0, T = 1;
  const uint8_t* keep = nullptr;  // [keep_rows, K] of 0/1, every row with a 1
  int64_t keep_rows = 1;          // 1 or B
};

// s[keep_rows][C] in the compute type.
void class_importance(const ChannelMaskArgs& args, void* s);

void channel_mask_forward(const ChannelMaskArgs& args, const void* features, void* out,
                          const ParallelFor& parallel_for);

// grad_features: same layout and type as features (required).
// grad_weight: [K, C, T] in the compute type (may be nullptr to skip it).
void channel_mask_backward(const ChannelMaskArgs& args, const void* grad_out,
                           const void* features, void* grad_features, void* grad_weight,
                           const ParallelFor& parallel_for);

}  // namespace kernels
}  // namespace dropclass_fast
