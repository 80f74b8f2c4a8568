// Mean softmax probability of the dropped classes (DropClass's L_sup), CPU.
//
// With d[b,k] = 1 - keep[b,k] (keep broadcast to [B, K]), N = sum d, P = h*w
// and wgt[b,k] = d[b,k] / (N * P):
//   loss          = sum_{b,k,p} wgt[b,k] * softmax(logits[b,:,p])_k
//   grad[b,c,p]   = p_c * (wgt[b,c] - sum_k wgt[b,k] * p_k)
// loss = 0 and grad = 0 when nothing is dropped.  One pass over the logits.
#pragma once

#include <cstdint>

#include "common.h"

namespace dropclass_fast {
namespace kernels {

struct DroppedClassProbArgs {
  const void* logits = nullptr;   // [B, K, P] contiguous, element type `dtype`
  DType dtype = DType::Float32;
  const uint8_t* keep = nullptr;  // [keep_rows, K] of 0/1 (required)
  int64_t keep_rows = 1;          // 1 (shared mask) or B (per sample)
  int64_t B = 0, K = 0, P = 0;
  // nullptr: loss only.  Otherwise [B, K, P] contiguous, float (double when
  // dtype == Float64); fully overwritten.
  void* grad = nullptr;
};

double dropped_class_prob(const DroppedClassProbArgs& args, const ParallelFor& parallel_for);

}  // namespace kernels
}  // namespace dropclass_fast
