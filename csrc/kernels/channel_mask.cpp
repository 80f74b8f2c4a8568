// Class-importance channel masking, CPU.  See the header.
//
// Element-wise work is split into tasks fixed by the shape; the reductions of
// the backward pass (r[b,c]) accumulate in the compute type within blocks of
// pixels, in double across blocks, and per-task partials are combined in
// task order, so results do not depend on the number of threads.
#include "channel_mask.h"

#include <algorithm>
#include <vector>

namespace dropclass_fast {
namespace kernels {
namespace {

constexpr int64_t kChunk = 16384;  // elements per task (NCHW) / per task row block (NHWC)
constexpr int64_t kBlock = 256;    // pixels per compute-type partial sum

template <typename T>
void importance(const ChannelMaskArgs& a, T* s, std::vector<T>* weff_out) {
  const int64_t K = a.K, C = a.C, Tt = a.T;
  const T* w = static_cast<const T*>(a.weight);
  std::vector<T> weff(K * C);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) {
      T acc = static_cast<T>(0);
      const T* wp = w + (k * C + c) * Tt;
      for (int64_t t = 0; t < Tt; ++t) acc += wp[t];
      weff[k * C + c] = acc;
    }
  for (int64_t r = 0; r < a.keep_rows; ++r) {
    const uint8_t* kr = a.keep + r * K;
    T* sr = s + r * C;
    std::fill(sr, sr + C, static_cast<T>(0));
    int64_t n = 0;
    for (int64_t k = 0; k < K; ++k) {
      if (!kr[k]) continue;
      ++n;
      const T* wk = weff.data() + k * C;
      for (int64_t c = 0; c < C; ++c) sr[c] += wk[c] > static_cast<T>(0) ? wk[c] : static_cast<T>(0);
    }
    const T inv = n > 0 ? static_cast<T>(1) / static_cast<T>(n) : static_cast<T>(0);
    for (int64_t c = 0; c < C; ++c) sr[c] *= inv;
  }
  if (weff_out) *weff_out = std::move(weff);
}

template <typename S>
void forward(const ChannelMaskArgs& a, const S* f, S* out, const ParallelFor& pf) {
  using T = typename OpMath<S>::type;
  const int64_t B = a.B, C = a.C, HW = a.HW;
  std::vector<T> s(a.keep_rows * C);
  importance<T>(a, s.data(), nullptr);
  if (!a.channels_last) {
    const int64_t nchunks = ceil_div(HW, kChunk);
    pf(0, B * C * nchunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t plane = task / nchunks;
        const int64_t p0 = (task % nchunks) * kChunk;
        const int64_t p1 = std::min(HW, p0 + kChunk);
        const int64_t b = plane / C, c = plane % C;
        const T sc = s[keep_row(b, a.keep_rows) * C + c];
        const S* __restrict src = f + plane * HW;
        S* __restrict dst = out + plane * HW;
        for (int64_t p = p0; p < p1; ++p) dst[p] = Store<S>::from(load_as<T>(src[p]) * sc);
      }
    });
  } else {
    const int64_t pix = std::max<int64_t>(1, kChunk / std::max<int64_t>(C, 1));
    const int64_t nchunks = ceil_div(HW, pix);
    pf(0, B * nchunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / nchunks;
        const int64_t p0 = (task % nchunks) * pix;
        const int64_t p1 = std::min(HW, p0 + pix);
        const T* __restrict sb = s.data() + keep_row(b, a.keep_rows) * C;
        for (int64_t p = p0; p < p1; ++p) {
          const S* __restrict src = f + (b * HW + p) * C;
          S* __restrict dst = out + (b * HW + p) * C;
          for (int64_t c = 0; c < C; ++c) dst[c] = Store<S>::from(load_as<T>(src[c]) * sb[c]);
        }
      }
    });
  }
}

template <typename S>
void backward(const ChannelMaskArgs& a, const S* go, const S* f, S* gf,
              typename OpMath<S>::type* gw, const ParallelFor& pf) {
  using T = typename OpMath<S>::type;
  const int64_t B = a.B, C = a.C, HW = a.HW, K = a.K;
  std::vector<T> s(a.keep_rows * C), weff;
  importance<T>(a, s.data(), &weff);
  std::vector<double> r(B * C, 0.0);  // r[b][c]

  if (!a.channels_last) {
    const int64_t nchunks = ceil_div(HW, kChunk);
    std::vector<double> partial(B * C * nchunks, 0.0);
    pf(0, B * C * nchunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t plane = task / nchunks;
        const int64_t p0 = (task % nchunks) * kChunk;
        const int64_t p1 = std::min(HW, p0 + kChunk);
        const int64_t b = plane / C, c = plane % C;
        const T sc = s[keep_row(b, a.keep_rows) * C + c];
        const S* __restrict gp = go + plane * HW;
        const S* __restrict fp = f + plane * HW;
        S* __restrict dp = gf + plane * HW;
        double acc = 0.0;
        for (int64_t q0 = p0; q0 < p1; q0 += kBlock) {
          const int64_t q1 = std::min(p1, q0 + kBlock);
          T lane[8] = {};
          int64_t p = q0;
          for (; p + 8 <= q1; p += 8) {
            for (int j = 0; j < 8; ++j) {
              const T g = load_as<T>(gp[p + j]);
              lane[j] += g * load_as<T>(fp[p + j]);
              dp[p + j] = Store<S>::from(g * sc);
            }
          }
          for (; p < q1; ++p) {
            const T g = load_as<T>(gp[p]);
            lane[0] += g * load_as<T>(fp[p]);
            dp[p] = Store<S>::from(g * sc);
          }
          T bs = static_cast<T>(0);
          for (int j = 0; j < 8; ++j) bs += lane[j];
          acc += static_cast<double>(bs);
        }
        partial[task] = acc;
      }
    });
    for (int64_t plane = 0; plane < B * C; ++plane) {
      double acc = 0.0;
      for (int64_t ch = 0; ch < nchunks; ++ch) acc += partial[plane * nchunks + ch];
      r[plane] = acc;
    }
  } else {
    const int64_t pix = std::max<int64_t>(1, kChunk / std::max<int64_t>(C, 1));
    const int64_t nchunks = ceil_div(HW, pix);
    std::vector<double> partial(B * nchunks * C, 0.0);
    pf(0, B * nchunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> blk(C);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / nchunks;
        const int64_t p0 = (task % nchunks) * pix;
        const int64_t p1 = std::min(HW, p0 + pix);
        const T* __restrict sb = s.data() + keep_row(b, a.keep_rows) * C;
        double* __restrict part = partial.data() + task * C;
        T* __restrict bk = blk.data();
        for (int64_t q0 = p0; q0 < p1; q0 += kBlock) {
          const int64_t q1 = std::min(p1, q0 + kBlock);
          std::fill(bk, bk + C, static_cast<T>(0));
          for (int64_t p = q0; p < q1; ++p) {
            const S* __restrict gp = go + (b * HW + p) * C;
            const S* __restrict fp = f + (b * HW + p) * C;
            S* __restrict dp = gf + (b * HW + p) * C;
            for (int64_t c = 0; c < C; ++c) {
              const T g = load_as<T>(gp[c]);
              bk[c] += g * load_as<T>(fp[c]);
              dp[c] = Store<S>::from(g * sb[c]);
            }
          }
          for (int64_t c = 0; c < C; ++c) part[c] += static_cast<double>(bk[c]);
        }
      }
    });
    for (int64_t b = 0; b < B; ++b)
      for (int64_t ch = 0; ch < nchunks; ++ch) {
        const double* part = partial.data() + (b * nchunks + ch) * C;
        for (int64_t c = 0; c < C; ++c) r[b * C + c] += part[c];
      }
  }

  if (gw) {
    // coef[b][k] = keep[b,k] / sum_k' keep[b,k'].
    std::vector<double> coef(B * K, 0.0);
    for (int64_t b = 0; b < B; ++b) {
      const uint8_t* kr = a.keep + keep_row(b, a.keep_rows) * K;
      int64_t n = 0;
      for (int64_t k = 0; k < K; ++k) n += kr[k] ? 1 : 0;
      for (int64_t k = 0; k < K; ++k)
        coef[b * K + k] = (kr[k] && n > 0) ? 1.0 / static_cast<double>(n) : 0.0;
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < C; ++c) {
        double acc = 0.0;
        if (weff[k * C + c] > static_cast<T>(0))
          for (int64_t b = 0; b < B; ++b) acc += coef[b * K + k] * r[b * C + c];
        T* g = gw + (k * C + c) * a.T;
        for (int64_t t = 0; t < a.T; ++t) g[t] = static_cast<T>(acc);
      }
  }
}

}  // namespace

void class_importance(const ChannelMaskArgs& a, void* s) {
  if (a.dtype == DType::Float64)
    importance<double>(a, static_cast<double*>(s), nullptr);
  else
    importance<float>(a, static_cast<float*>(s), nullptr);
}

void channel_mask_forward(const ChannelMaskArgs& a, const void* features, void* out,
                          const ParallelFor& pf) {
  switch (a.dtype) {
    case DType::Float32:
      return forward<float>(a, static_cast<const float*>(features), static_cast<float*>(out), pf);
    case DType::Float64:
      return forward<double>(a, static_cast<const double*>(features), static_cast<double*>(out),
                             pf);
    case DType::Float16:
      return forward<half_t>(a, static_cast<const half_t*>(features), static_cast<half_t*>(out),
                             pf);
    case DType::BFloat16:
      return forward<bf16_t>(a, static_cast<const bf16_t*>(features), static_cast<bf16_t*>(out),
                             pf);
  }
}

void channel_mask_backward(const ChannelMaskArgs& a, const void* grad_out, const void* features,
                           void* grad_features, void* grad_weight, const ParallelFor& pf) {
  switch (a.dtype) {
    case DType::Float32:
      return backward<float>(a, static_cast<const float*>(grad_out),
                             static_cast<const float*>(features),
                             static_cast<float*>(grad_features),
                             static_cast<float*>(grad_weight), pf);
    case DType::Float64:
      return backward<double>(a, static_cast<const double*>(grad_out),
                              static_cast<const double*>(features),
                              static_cast<double*>(grad_features),
                              static_cast<double*>(grad_weight), pf);
    case DType::Float16:
      return backward<half_t>(a, static_cast<const half_t*>(grad_out),
                              static_cast<const half_t*>(features),
                              static_cast<half_t*>(grad_features),
                              static_cast<float*>(grad_weight), pf);
    case DType::BFloat16:
      return backward<bf16_t>(a, static_cast<const bf16_t*>(grad_out),
                              static_cast<const bf16_t*>(features),
                              static_cast<bf16_t*>(grad_features),
                              static_cast<float*>(grad_weight), pf);
  }
}

}  // namespace kernels
}  // namespace dropclass_fast
