// Argument checks shared by the CPU (csrc/ops.cpp) and CUDA (csrc/cuda/ops_cuda.cpp) bindings,
// so both raise the same TypeError / ValueError messages for the same bad input.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "kernels/common.h"

namespace dropclass_fast {
namespace checks {

// Label element type of `target` (integer dtypes only).
inline kernels::LabelType label_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kByte: return kernels::LabelType::UInt8;
    case at::kChar: return kernels::LabelType::Int8;
    case at::kShort: return kernels::LabelType::Int16;
    case at::kInt: return kernels::LabelType::Int32;
    case at::kLong: return kernels::LabelType::Int64;
    default: break;
  }
  TORCH_CHECK_TYPE(false,
                   "target must be an integer tensor (uint8, int8, int16, int32 or int64), got ",
                   t.scalar_type());
  return kernels::LabelType::Int64;
}

// A keep mask's dtype and shape ([K] or [Bk, K], Bk in {1, B}), as [Bk, K]; its values are the
// backend's to check.
inline at::Tensor keep_rows(const at::Tensor& keep, int64_t B, int64_t K, const char* ref_name) {
  TORCH_CHECK_TYPE(keep.is_floating_point() || keep.scalar_type() == at::kBool,
                   "keep must be a floating-point or bool tensor, got ", keep.scalar_type());
  TORCH_CHECK_VALUE(keep.dim() == 1 || keep.dim() == 2,
                    "keep must have shape [K] or [B, K] (K=", K, ", B=", B, "), got ",
                    keep.sizes());
  at::Tensor rows = keep.dim() == 1 ? keep.unsqueeze(0) : keep;
  TORCH_CHECK_VALUE(rows.size(1) == K && (rows.size(0) == 1 || rows.size(0) == B),
                    "keep must have shape [K], [1, K] or [B, K] with K=", K, " and B=", B,
                    " (from ", ref_name, "), got ", keep.sizes());
  return rows;
}

// Sizes of a channel_mask call: features [B, C, h, w], weight [K, C, T...] (T taps).
struct ChannelMaskSizes {
  int64_t B, C, K, T;
};

inline ChannelMaskSizes channel_mask_sizes(const at::Tensor& features, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(features.dim() == 4, "features must have shape [B, C, h, w], got ",
                    features.sizes());
  TORCH_CHECK_VALUE(weight.dim() >= 2 && weight.dim() <= 4,
                    "weight must have shape [K, C], [K, C, T] or [K, C, kh, kw], got ",
                    weight.sizes());
  const int64_t B = features.size(0), C = features.size(1);
  const int64_t K = weight.size(0);
  TORCH_CHECK_VALUE(weight.size(1) == C, "weight has ", weight.size(1),
                    " input channels but features have C=", C, " (weight ", weight.sizes(),
                    ", features ", features.sizes(), ")");
  TORCH_CHECK_VALUE(K > 0, "weight must have at least one class, got ", weight.sizes());
  return {B, C, K, C > 0 ? weight.numel() / (K * C) : 1};
}

// `features` in a layout the channel_mask kernels read: NCHW- or channels-last-contiguous as
// given, anything else made NCHW-contiguous; `*format` says which.
inline at::Tensor channel_mask_layout(const at::Tensor& features, at::MemoryFormat* format) {
  if (features.is_contiguous()) {
    *format = at::MemoryFormat::Contiguous;
    return features;
  }
  if (features.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    *format = at::MemoryFormat::ChannelsLast;
    return features;
  }
  *format = at::MemoryFormat::Contiguous;
  return features.contiguous();
}

}  // namespace checks
}  // namespace dropclass_fast
