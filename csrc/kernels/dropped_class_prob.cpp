// Mean softmax probability of the dropped classes, CPU.  See the header.
//
// Tasks = (sample, chunk of kChunk pixels); the split depends on the shape
// only and the per-task loss partials are summed in task order, so the
// result does not depend on the number of threads.  Inside a task, tiles of
// kTile pixels are processed as [class][pixel] arrays (the logits' own
// layout), with inner loops over pixels.
#include "dropped_class_prob.h"

#include <algorithm>
#include <vector>

namespace dropclass_fast {
namespace kernels {
namespace {

constexpr int64_t kTile = 128;
constexpr int64_t kChunk = 4096;

template <typename S>
double run(const DroppedClassProbArgs& a, const ParallelFor& pf) {
  using T = typename OpMath<S>::type;
  const int64_t B = a.B, K = a.K, P = a.P;
  T* grad = static_cast<T*>(a.grad);
  const size_t total = static_cast<size_t>(B * K * P);

  // Dropped count N and per-(b, k) weights.
  int64_t N = 0;
  for (int64_t b = 0; b < B; ++b) {
    const uint8_t* kr = a.keep + keep_row(b, a.keep_rows) * K;
    for (int64_t k = 0; k < K; ++k) N += kr[k] ? 0 : 1;
  }
  if (N == 0 || P == 0 || K == 0) {
    if (grad) std::fill(grad, grad + total, static_cast<T>(0));
    return 0.0;
  }
  const T scale = static_cast<T>(1.0 / (static_cast<double>(N) * static_cast<double>(P)));
  std::vector<T> wgt(B * K);
  std::vector<uint8_t> any_drop(B, 0);
  for (int64_t b = 0; b < B; ++b) {
    const uint8_t* kr = a.keep + keep_row(b, a.keep_rows) * K;
    for (int64_t k = 0; k < K; ++k) {
      wgt[b * K + k] = kr[k] ? static_cast<T>(0) : scale;
      any_drop[b] |= kr[k] ? 0 : 1;
    }
  }

  const S* logits = static_cast<const S*>(a.logits);
  const int64_t nchunks = ceil_div(P, kChunk);
  const int64_t ntasks = B * nchunks;
  std::vector<double> partial(ntasks, 0.0);

  pf(0, ntasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> E(K * kTile), inv(kTile), dot(kTile), m(kTile);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nchunks;
      const int64_t p0 = (task % nchunks) * kChunk;
      const int64_t p1 = std::min(P, p0 + kChunk);
      if (!any_drop[b]) {  // this sample drops nothing: zero loss and gradient
        if (grad)
          for (int64_t c = 0; c < K; ++c)
            std::fill(grad + (b * K + c) * P + p0, grad + (b * K + c) * P + p1,
                      static_cast<T>(0));
        continue;
      }
      const T* __restrict wb = wgt.data() + b * K;
      double acc = 0.0;
      for (int64_t t0 = p0; t0 < p1; t0 += kTile) {
        const int64_t n = std::min(kTile, p1 - t0);
        T* __restrict e = E.data();
        T* __restrict mm = m.data();
        T* __restrict iv = inv.data();
        T* __restrict dt = dot.data();
        for (int64_t c = 0; c < K; ++c) {
          const S* __restrict src = logits + (b * K + c) * P + t0;
          T* __restrict ec = e + c * kTile;
          for (int64_t i = 0; i < n; ++i) ec[i] = load_as<T>(src[i]);
        }
        for (int64_t i = 0; i < n; ++i) mm[i] = e[i];
        for (int64_t c = 1; c < K; ++c) {
          const T* __restrict ec = e + c * kTile;
#pragma GCC ivdep
          for (int64_t i = 0; i < n; ++i) mm[i] = ec[i] > mm[i] ? ec[i] : mm[i];
        }
        exp_shifted_inplace(e, mm, iv, K, n, kTile);
        for (int64_t i = 0; i < n; ++i) {
          iv[i] = static_cast<T>(1) / iv[i];
          dt[i] = static_cast<T>(0);
        }
        // Probabilities in place; dot = sum_k wgt_k p_k.
        for (int64_t c = 0; c < K; ++c) {
          T* __restrict ec = e + c * kTile;
          const T wc = wb[c];
#pragma GCC ivdep
          for (int64_t i = 0; i < n; ++i) {
            const T pc = ec[i] * iv[i];
            ec[i] = pc;
            dt[i] += wc * pc;
          }
        }
        {
          T lane[8] = {};
          int64_t i = 0;
          for (; i + 8 <= n; i += 8)
            for (int j = 0; j < 8; ++j) lane[j] += dt[i + j];
          for (; i < n; ++i) lane[0] += dt[i];
          double s = 0.0;
          for (int j = 0; j < 8; ++j) s += static_cast<double>(lane[j]);
          acc += s;
        }
        if (grad) {
          for (int64_t c = 0; c < K; ++c) {
            const T* __restrict ec = e + c * kTile;
            T* __restrict gc = grad + (b * K + c) * P + t0;
            const T wc = wb[c];
#pragma GCC ivdep
            for (int64_t i = 0; i < n; ++i) gc[i] = ec[i] * (wc - dt[i]);
          }
        }
      }
      partial[task] = acc;
    }
  });
  double loss = 0.0;
  for (double v : partial) loss += v;
  return loss;
}

}  // namespace

double dropped_class_prob(const DroppedClassProbArgs& a, const ParallelFor& pf) {
  if (a.B <= 0) return 0.0;
  switch (a.dtype) {
    case DType::Float32: return run<float>(a, pf);
    case DType::Float64: return run<double>(a, pf);
    case DType::Float16: return run<half_t>(a, pf);
    case DType::BFloat16: return run<bf16_t>(a, pf);
  }
  return 0.0;
}

}  // namespace kernels
}  // namespace dropclass_fast
