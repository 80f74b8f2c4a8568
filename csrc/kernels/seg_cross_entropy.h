// Fused bilinear upsample + softmax cross-entropy (+ gradient), CPU.
//
// Semantics (equal to the eager expression):
//   up    = F.interpolate(logits.float(), size=(H, W), mode="bilinear",
//                         align_corners=align_corners)
//   valid = target != ignore_index  and  (keep is None or keep[b, target] != 0)
//   loss  = mean over valid pixels of logsumexp_c up[b,:,Y,X] - up[b,t,Y,X]
//           (0 when no pixel is valid)
//   grad  = d loss / d logits, [B, K, h, w]
// Nothing of size B*K*H*W is allocated: the upsample is separable, rows of
// the horizontally upsampled logits are computed once per source row and
// blended per output row, and the gradient is reduced back to low resolution
// inside the same pass.
#pragma once

#include <cstdint>

#include "common.h"

namespace dropclass_fast {
namespace kernels {

struct SegCrossEntropyArgs {
  const void* logits = nullptr;   // [B, K, h, w] contiguous, element type `dtype`
  DType dtype = DType::Float32;
  const void* target = nullptr;   // [B, H, W] contiguous, element type `label_type`
  LabelType label_type = LabelType::Int64;
  const uint8_t* keep = nullptr;  // [keep_rows, K] of 0/1, or nullptr (keep all)
  int64_t keep_rows = 1;          // 1 (shared mask) or B (per sample)
  int64_t B = 0, K = 0, h = 0, w = 0, H = 0, W = 0;
  int64_t ignore_index = 255;
  bool align_corners = false;
  // nullptr: loss only.  Otherwise [B, K, h, w] contiguous, float (double when
  // dtype == Float64); fully overwritten.
  void* grad = nullptr;
};

struct SegCrossEntropyResult {
  double loss = 0.0;        // mean over valid pixels (0 when count == 0)
  int64_t count = 0;        // number of valid pixels
  bool bad_label = false;   // a label outside [0, K) that is not ignore_index
  int64_t bad_value = 0;    // the first such label (in task order)
};

// Runs the fused pass.  When bad_label is set, loss and grad are unspecified
// (the caller raises).
SegCrossEntropyResult seg_cross_entropy(const SegCrossEntropyArgs& args,
                                        const ParallelFor& parallel_for);

// Interpolation coefficients of one axis, exactly as PyTorch's
// upsample_bilinear2d computes them (area_pixel_compute_scale /
// area_pixel_compute_source_index / guard_index_and_lambda), in the
// compute type T (float for float/half/bf16 logits, double for double).
template <typename T>
void bilinear_coefficients(int64_t in, int64_t out, bool align_corners, int32_t* i0,
                           int32_t* i1, T* l0, T* l1);

}  // namespace kernels
}  // namespace dropclass_fast
