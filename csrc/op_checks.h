// Argument checks shared by the CPU (csrc/ops.cpp) and CUDA (csrc/cuda/ops_cuda.cpp) bindings,
// so both raise the same TypeError / ValueError messages for the same bad input, and the kernel
// argument structs both fill from the checked tensors.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/channel_mask.h"
#include "kernels/common.h"
#include "kernels/dropped_class_prob.h"
#include "kernels/seg_cross_entropy.h"

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

// `value` as Python's repr prints a float (the eager path's messages): the fewest significant digits
// that read back as the same double, in fixed notation with at least one decimal for exponents
// -4 to 15 and in exponent notation otherwise. A keep value of 1 + 1e-12 must not print as "1" in
// a message saying it is not 0 or 1.
inline std::string shortest_repr(double value) {
  if (!std::isfinite(value)) return std::isnan(value) ? "nan" : (value < 0 ? "-inf" : "inf");
  char text[64];
  int digits = 1;
  for (; digits < 17; ++digits) {
    std::snprintf(text, sizeof(text), "%.*e", digits - 1, value);
    if (std::strtod(text, nullptr) == value) break;
  }
  std::snprintf(text, sizeof(text), "%.*e", digits - 1, value);
  const int exponent = std::atoi(std::strchr(text, 'e') + 1);
  if (exponent < -4 || exponent >= 16) return text;
  const int decimals = std::max(digits - 1 - exponent, 1);
  std::snprintf(text, sizeof(text), "%.*f", decimals, value);
  return text;
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

// Sizes of logits [B, K, h, w] (K > 0).
struct LogitsSizes {
  int64_t B, K, h, w;
};

inline LogitsSizes logits_sizes(const at::Tensor& logits, const char* logits_name = "logits") {
  TORCH_CHECK_VALUE(logits.dim() == 4, logits_name, " must have shape [B, K, h, w], got ",
                    logits.sizes());
  TORCH_CHECK_VALUE(logits.size(1) > 0, logits_name, " must have at least one class, got ",
                    logits.sizes());
  return {logits.size(0), logits.size(1), logits.size(2), logits.size(3)};
}

// Sizes of a seg_cross_entropy call: logits [B, K, h, w] (K, h, w > 0), target [B, H, W].
struct SegCrossEntropySizes {
  int64_t B, K, h, w, H, W;
};

inline SegCrossEntropySizes seg_cross_entropy_sizes(const at::Tensor& logits, const at::Tensor& target,
                                                    const char* logits_name = "logits") {
  const LogitsSizes n = logits_sizes(logits, logits_name);
  TORCH_CHECK_VALUE(target.dim() == 3, "target must have shape [B, H, W], got ", target.sizes());
  TORCH_CHECK_VALUE(target.size(0) == n.B, "target batch size ", target.size(0), " does not match ",
                    logits_name, " batch size ", n.B, " (target ", target.sizes(), ", ", logits_name, " ",
                    logits.sizes(), ")");
  TORCH_CHECK_VALUE(n.h > 0 && n.w > 0, logits_name, " must have non-empty spatial size, got ",
                    logits.sizes());
  return {n.B, n.K, n.h, n.w, target.size(1), target.size(2)};
}

// The kernels' arguments for contiguous `logits` and `target` of sizes `n`, the uint8 keep mask
// [keep_rows, K] (undefined: keep all) and the gradient buffer `grad` (nullptr: loss only).
inline kernels::SegCrossEntropyArgs seg_cross_entropy_args(kernels::DType dtype, const at::Tensor& logits,
                                                           const at::Tensor& target,
                                                           const SegCrossEntropySizes& n,
                                                           const at::Tensor& keep_mask, int64_t keep_rows,
                                                           int64_t ignore_index, bool align_corners,
                                                           void* grad) {
  kernels::SegCrossEntropyArgs a;
  if (keep_mask.defined()) {
    a.keep = keep_mask.data_ptr<uint8_t>();
    a.keep_rows = keep_rows;
  }
  a.logits = logits.data_ptr();
  a.dtype = dtype;
  a.target = target.data_ptr();
  a.label_type = label_type(target);
  a.B = n.B; a.K = n.K; a.h = n.h; a.w = n.w; a.H = n.H; a.W = n.W;
  a.ignore_index = ignore_index;
  a.align_corners = align_corners;
  a.grad = grad;
  return a;
}

// The kernels' arguments for contiguous `logits` of sizes `n`, the uint8 keep mask [keep_rows, K]
// and the gradient buffer `grad` (nullptr: loss only).
inline kernels::DroppedClassProbArgs dropped_class_prob_args(kernels::DType dtype, const at::Tensor& logits,
                                                             const LogitsSizes& n, const at::Tensor& keep_mask,
                                                             int64_t keep_rows, void* grad) {
  kernels::DroppedClassProbArgs a;
  a.logits = logits.data_ptr();
  a.dtype = dtype;
  a.keep = keep_mask.data_ptr<uint8_t>();
  a.keep_rows = keep_rows;
  a.B = n.B; a.K = n.K; a.P = n.h * n.w;
  a.grad = grad;
  return a;
}

// drop_logits of a dropclass_loss call: [B, K, h', w'] with the B and K of logits, the same dtype.
inline void drop_logits_like(const at::Tensor& drop_logits, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(drop_logits.dim() == 4 && drop_logits.size(0) == logits.size(0) &&
                        drop_logits.size(1) == logits.size(1),
                    "drop_logits must have the batch and class sizes of logits ", logits.sizes(),
                    ", got ", drop_logits.sizes());
  TORCH_CHECK_TYPE(drop_logits.scalar_type() == logits.scalar_type(), "drop_logits must have dtype ",
                   logits.scalar_type(), " (the dtype of logits), got ", drop_logits.scalar_type());
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

// The kernels' arguments for `features` in `format` (from channel_mask_layout), the [K, C, T]
// contiguous `weight` and the uint8 keep mask [keep_rows, K].
inline kernels::ChannelMaskArgs channel_mask_args(kernels::DType dtype, const at::Tensor& features,
                                                  at::MemoryFormat format, const at::Tensor& weight,
                                                  const at::Tensor& keep_mask, int64_t keep_rows) {
  kernels::ChannelMaskArgs a;
  a.dtype = dtype;
  a.channels_last = format == at::MemoryFormat::ChannelsLast;
  a.B = features.size(0);
  a.C = features.size(1);
  a.HW = features.size(2) * features.size(3);
  a.weight = weight.data_ptr();
  a.K = weight.size(0);
  a.T = weight.size(2);
  a.keep = keep_mask.data_ptr<uint8_t>();
  a.keep_rows = keep_rows;
  return a;
}

// grad_out of channel_mask_backward: the shape and dtype of `features`.
inline void grad_out_like(const at::Tensor& grad_out, const at::Tensor& features) {
  TORCH_CHECK_VALUE(grad_out.sizes() == features.sizes(), "grad_out must have the shape of ",
                    "features ", features.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == features.scalar_type(), "grad_out must have dtype ",
                   features.scalar_type(), " (the dtype of features), got ", grad_out.scalar_type());
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
