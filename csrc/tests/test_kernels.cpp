// Tests of the torch-free CPU kernels against naive double-precision loops.
//
// Built and registered by the top-level CMakeLists.txt (ctest).  Prints one
// line per failure and a final "N passed, M failed" line; exits non-zero on
// failure.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "channel_mask.h"
#include "common.h"
#include "dropped_class_prob.h"
#include "seg_cross_entropy.h"
#include "test_harness.h"

using namespace dropclass_fast::kernels;
using test_harness::CeCase;
using test_harness::check;

namespace {

std::string fmt(const char* f, double a, double b = 0, double c = 0) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), f, a, b, c);
  return buf;
}

// ---------------------------------------------------------------------------
// Parallel-for functors.
// ---------------------------------------------------------------------------
ParallelFor threaded_parallel_for(int nthreads) {
  return [nthreads](int64_t begin, int64_t end, int64_t grain, const RangeFn& body) {
    const int64_t n = end - begin;
    if (n <= 0) return;
    const int64_t chunks =
        std::min<int64_t>(nthreads, std::max<int64_t>(1, n / std::max<int64_t>(grain, 1)));
    std::vector<std::thread> ts;
    for (int64_t i = 0; i < chunks; ++i) {
      const int64_t b = begin + n * i / chunks, e = begin + n * (i + 1) / chunks;
      ts.emplace_back([&body, b, e] { body(b, e); });
    }
    for (auto& t : ts) t.join();
  };
}

// Calls the body one index at a time, last index first.
void reversed_parallel_for(int64_t begin, int64_t end, int64_t, const RangeFn& body) {
  for (int64_t i = end - 1; i >= begin; --i) body(i, i + 1);
}

// ---------------------------------------------------------------------------
// Storage helpers.
// ---------------------------------------------------------------------------
template <typename S> S to_storage(double v);
template <> float to_storage<float>(double v) { return static_cast<float>(v); }
template <> double to_storage<double>(double v) { return v; }
template <> half_t to_storage<half_t>(double v) { return half_t{float_to_half(static_cast<float>(v))}; }
template <> bf16_t to_storage<bf16_t>(double v) { return bf16_t{float_to_bf16(static_cast<float>(v))}; }

double to_double(float v) { return v; }
double to_double(double v) { return v; }
double to_double(half_t v) { return half_to_float(v.bits); }
double to_double(bf16_t v) { return bf16_to_float(v.bits); }

template <typename S> DType dtype_of();
template <> DType dtype_of<float>() { return DType::Float32; }
template <> DType dtype_of<double>() { return DType::Float64; }
template <> DType dtype_of<half_t>() { return DType::Float16; }
template <> DType dtype_of<bf16_t>() { return DType::BFloat16; }

template <typename L> LabelType label_type_of();
template <> LabelType label_type_of<uint8_t>() { return LabelType::UInt8; }
template <> LabelType label_type_of<int8_t>() { return LabelType::Int8; }
template <> LabelType label_type_of<int16_t>() { return LabelType::Int16; }
template <> LabelType label_type_of<int32_t>() { return LabelType::Int32; }
template <> LabelType label_type_of<int64_t>() { return LabelType::Int64; }

const char* type_name(DType d) { return dtype_name(d); }

// max |a - b| / max(max |b|, tiny)
double rel_max_err(const std::vector<double>& a, const std::vector<double>& b) {
  double e = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    e = std::max(e, std::fabs(a[i] - b[i]));
    m = std::max(m, std::fabs(b[i]));
  }
  if (!(e == e)) return std::numeric_limits<double>::infinity();
  return e / std::max(m, 1e-300);
}

// ---------------------------------------------------------------------------
// Reference bilinear coefficients (PyTorch's formulas, in double).
// ---------------------------------------------------------------------------
struct RefAxis {
  std::vector<int> i0, i1;
  std::vector<double> l0, l1;
};

RefAxis ref_axis(int in, int out, bool align_corners) {
  RefAxis r;
  for (int d = 0; d < out; ++d) {
    int i0, i1;
    double lam;
    if (in == out) {
      i0 = i1 = d;
      lam = 0;
    } else {
      double src;
      if (align_corners) {
        src = out > 1 ? static_cast<double>(in - 1) / (out - 1) * d : 0.0;
      } else {
        src = static_cast<double>(in) / out * (d + 0.5) - 0.5;
        if (src < 0) src = 0;
      }
      i0 = std::min(static_cast<int>(std::floor(src)), in - 1);
      lam = std::min(std::max(src - i0, 0.0), 1.0);
      i1 = i0 + (i0 < in - 1 ? 1 : 0);
    }
    r.i0.push_back(i0);
    r.i1.push_back(i1);
    r.l0.push_back(1 - lam);
    r.l1.push_back(lam);
  }
  return r;
}

// ---------------------------------------------------------------------------
// seg_cross_entropy
// ---------------------------------------------------------------------------
void ref_seg_ce(const std::vector<double>& L, const std::vector<int64_t>& t,
                const std::vector<uint8_t>* keep, int keep_rows, const CeCase& cs,
                double* loss, std::vector<double>* grad, int64_t* count) {
  const int B = cs.B, K = cs.K, h = cs.h, w = cs.w, H = cs.H, W = cs.W;
  const RefAxis ry = ref_axis(h, H, cs.align_corners), rx = ref_axis(w, W, cs.align_corners);
  grad->assign(static_cast<size_t>(B) * K * h * w, 0.0);
  double sum = 0;
  int64_t n = 0;
  std::vector<double> up(K), g(K);
  // First pass: count.
  for (int b = 0; b < B; ++b)
    for (int p = 0; p < H * W; ++p) {
      const int64_t v = t[static_cast<size_t>(b) * H * W + p];
      bool valid = v != cs.ignore && v >= 0 && v < K;
      if (valid && keep) valid = (*keep)[(keep_rows == 1 ? 0 : b) * K + v] != 0;
      n += valid ? 1 : 0;
    }
  for (int b = 0; b < B; ++b)
    for (int Y = 0; Y < H; ++Y)
      for (int X = 0; X < W; ++X) {
        const int64_t v = t[(static_cast<size_t>(b) * H + Y) * W + X];
        bool valid = v != cs.ignore && v >= 0 && v < K;
        if (valid && keep) valid = (*keep)[(keep_rows == 1 ? 0 : b) * K + v] != 0;
        if (!valid) continue;
        auto at = [&](int c, int y, int x) {
          return L[((static_cast<size_t>(b) * K + c) * h + y) * w + x];
        };
        double mx = -1e300;
        for (int c = 0; c < K; ++c) {
          up[c] = ry.l0[Y] * (rx.l0[X] * at(c, ry.i0[Y], rx.i0[X]) + rx.l1[X] * at(c, ry.i0[Y], rx.i1[X])) +
                  ry.l1[Y] * (rx.l0[X] * at(c, ry.i1[Y], rx.i0[X]) + rx.l1[X] * at(c, ry.i1[Y], rx.i1[X]));
          mx = std::max(mx, up[c]);
        }
        double s = 0;
        for (int c = 0; c < K; ++c) s += std::exp(up[c] - mx);
        sum += std::log(s) + mx - up[v];
        for (int c = 0; c < K; ++c) {
          const double gc = (std::exp(up[c] - mx) / s - (c == v ? 1.0 : 0.0)) / static_cast<double>(n);
          auto add = [&](int y, int x, double wgt) {
            (*grad)[((static_cast<size_t>(b) * K + c) * h + y) * w + x] += gc * wgt;
          };
          add(ry.i0[Y], rx.i0[X], ry.l0[Y] * rx.l0[X]);
          add(ry.i0[Y], rx.i1[X], ry.l0[Y] * rx.l1[X]);
          add(ry.i1[Y], rx.i0[X], ry.l1[Y] * rx.l0[X]);
          add(ry.i1[Y], rx.i1[X], ry.l1[Y] * rx.l1[X]);
        }
      }
  *loss = n > 0 ? sum / static_cast<double>(n) : 0.0;
  *count = n;
}

template <typename S, typename L>
void test_seg_ce(const CeCase& cs, std::mt19937& rng) {
  using T = typename OpMath<S>::type;
  const int B = cs.B, K = cs.K, h = cs.h, w = cs.w, H = cs.H, W = cs.W;
  std::normal_distribution<double> nd(0.0, 2.0);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  std::vector<S> logits(static_cast<size_t>(B) * K * h * w);
  std::vector<double> Ld(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    logits[i] = to_storage<S>(nd(rng));
    Ld[i] = to_double(logits[i]);
  }
  std::vector<L> target(static_cast<size_t>(B) * H * W);
  std::vector<int64_t> t64(target.size());
  for (size_t i = 0; i < target.size(); ++i) {
    int64_t v = static_cast<int64_t>(ud(rng) * K);
    if (ud(rng) < cs.p_ignore) v = cs.ignore;
    target[i] = static_cast<L>(v);
    t64[i] = static_cast<int64_t>(target[i]);
  }
  std::vector<uint8_t> keep;
  int keep_rows = 1;
  if (cs.keep_mode) {
    keep_rows = cs.keep_mode == 1 ? 1 : B;
    keep.resize(static_cast<size_t>(keep_rows) * K);
    for (int r = 0; r < keep_rows; ++r)
      for (int k = 0; k < K; ++k) keep[r * K + k] = (k == r % K || ud(rng) < 0.6) ? 1 : 0;
  }
  double rloss;
  int64_t rcount;
  std::vector<double> rgrad;
  ref_seg_ce(Ld, t64, cs.keep_mode ? &keep : nullptr, keep_rows, cs, &rloss, &rgrad, &rcount);

  SegCrossEntropyArgs a;
  a.logits = logits.data();
  a.dtype = dtype_of<S>();
  a.target = target.data();
  a.label_type = label_type_of<L>();
  a.keep = cs.keep_mode ? keep.data() : nullptr;
  a.keep_rows = keep_rows;
  a.B = B; a.K = K; a.h = h; a.w = w; a.H = H; a.W = W;
  a.ignore_index = cs.ignore;
  a.align_corners = cs.align_corners;
  std::vector<T> grad(rgrad.size(), static_cast<T>(12345));
  a.grad = grad.data();
  const SegCrossEntropyResult r = seg_cross_entropy(a, serial_parallel_for);

  char name[256];
  std::snprintf(name, sizeof(name), "seg_ce[%s B=%d K=%d %dx%d->%dx%d ac=%d keep=%d label=%d ign=%.2f]",
                type_name(a.dtype), B, K, h, w, H, W, cs.align_corners ? 1 : 0, cs.keep_mode,
                static_cast<int>(a.label_type), cs.p_ignore);
  const bool dbl = std::is_same<S, double>::value;
  const double tol_loss = dbl ? 1e-12 : 2e-6;
  const double tol_grad = dbl ? 1e-11 : 2e-5;
  std::vector<double> gd(grad.begin(), grad.end());
  check(!r.bad_label, std::string(name) + " bad_label");
  check(r.count == rcount, std::string(name) + " count", fmt("%g vs %g", r.count, rcount));
  check(std::fabs(r.loss - rloss) <= tol_loss * std::max(1.0, std::fabs(rloss)),
        std::string(name) + " loss", fmt("%.10g vs %.10g", r.loss, rloss));
  const double ge = rel_max_err(gd, rgrad);
  check(ge <= tol_grad, std::string(name) + " grad", fmt("rel err %.3g", ge));
  if (rcount == 0) {
    bool zero = r.loss == 0.0;
    for (double v : gd) zero = zero && v == 0.0;
    check(zero, std::string(name) + " no valid pixel -> zero loss and grad");
  }

  // Loss-only call gives the same loss; threaded and reversed orders are bit-identical.
  SegCrossEntropyArgs a2 = a;
  a2.grad = nullptr;
  const SegCrossEntropyResult r2 = seg_cross_entropy(a2, serial_parallel_for);
  check(r2.loss == r.loss && r2.count == r.count, std::string(name) + " loss-only == loss+grad");
  for (int nt : {2, 3}) {
    std::vector<T> g2(grad.size());
    SegCrossEntropyArgs a3 = a;
    a3.grad = g2.data();
    const SegCrossEntropyResult r3 = seg_cross_entropy(a3, threaded_parallel_for(nt));
    check(r3.loss == r.loss && std::memcmp(g2.data(), grad.data(), grad.size() * sizeof(T)) == 0,
          std::string(name) + " bit-identical with " + std::to_string(nt) + " threads");
  }
  {
    std::vector<T> g2(grad.size());
    SegCrossEntropyArgs a3 = a;
    a3.grad = g2.data();
    const SegCrossEntropyResult r3 = seg_cross_entropy(a3, reversed_parallel_for);
    check(r3.loss == r.loss && std::memcmp(g2.data(), grad.data(), grad.size() * sizeof(T)) == 0,
          std::string(name) + " bit-identical with reversed task order");
  }
}

void test_seg_ce_bad_label() {
  const int B = 2, K = 5, h = 3, w = 4, H = 7, W = 9;
  std::vector<float> logits(B * K * h * w, 0.5f);
  std::vector<int16_t> target(B * H * W, 1);
  target[B * H * W - 5] = 7;     // out of range
  target[B * H * W - 3] = -2;    // out of range (later)
  target[3] = 255;               // ignore: fine
  target[4] = 4;                 // largest class: fine
  SegCrossEntropyArgs a;
  a.logits = logits.data();
  a.target = target.data();
  a.label_type = LabelType::Int16;
  a.B = B; a.K = K; a.h = h; a.w = w; a.H = H; a.W = W;
  std::vector<float> grad(logits.size());
  a.grad = grad.data();
  SegCrossEntropyResult r = seg_cross_entropy(a, serial_parallel_for);
  check(r.bad_label && r.bad_value == 7, "seg_ce bad label detected (first = 7)",
        fmt("bad=%g value=%g", r.bad_label, r.bad_value));
  target[B * H * W - 5] = 1;
  target[B * H * W - 3] = 1;
  r = seg_cross_entropy(a, serial_parallel_for);
  check(!r.bad_label, "seg_ce no bad label after fix");
  target[B * H * W - 1] = K;  // one past the largest class
  r = seg_cross_entropy(a, serial_parallel_for);
  check(r.bad_label && r.bad_value == K, "seg_ce bad label K detected", fmt("bad=%g value=%g", r.bad_label, r.bad_value));
  target[B * H * W - 1] = 1;
  // ignore_index inside [0, K): class 2 pixels are ignored, not flagged.
  target[3] = 1;
  target[10] = 2;
  a.ignore_index = 2;
  r = seg_cross_entropy(a, serial_parallel_for);
  check(!r.bad_label && r.count == B * H * W - 1, "seg_ce ignore_index inside [0, K)",
        fmt("count=%g", r.count));
  // Negative ignore index with uint8 labels never matches; 255 is then out of range.
  std::vector<uint8_t> t8(B * H * W, 0);
  t8[5] = 255;
  a.target = t8.data();
  a.label_type = LabelType::UInt8;
  a.ignore_index = -100;
  r = seg_cross_entropy(a, serial_parallel_for);
  check(r.bad_label && r.bad_value == 255, "seg_ce uint8 label 255 with ignore=-100 is bad");
}

// ---------------------------------------------------------------------------
// dropped_class_prob
// ---------------------------------------------------------------------------
template <typename S>
void test_dcp(int B, int K, int h, int w, int keep_mode, std::mt19937& rng) {
  using T = typename OpMath<S>::type;
  const int P = h * w;
  std::normal_distribution<double> nd(0.0, 2.0);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  std::vector<S> logits(static_cast<size_t>(B) * K * P);
  std::vector<double> Ld(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    logits[i] = to_storage<S>(nd(rng));
    Ld[i] = to_double(logits[i]);
  }
  const int rows = keep_mode == 2 ? B : 1;
  std::vector<uint8_t> keep(static_cast<size_t>(rows) * K, 1);
  if (keep_mode != 0)
    for (int r = 0; r < rows; ++r)
      for (int k = 0; k < K; ++k) keep[r * K + k] = (k == (r + 1) % K || ud(rng) < 0.5) ? 1 : 0;
  // Reference.
  double N = 0;
  for (int b = 0; b < B; ++b)
    for (int k = 0; k < K; ++k) N += keep[(rows == 1 ? 0 : b) * K + k] ? 0 : 1;
  std::vector<double> rgrad(Ld.size(), 0.0);
  double rloss = 0;
  if (N > 0) {
    std::vector<double> pr(K), wg(K);
    for (int b = 0; b < B; ++b) {
      for (int k = 0; k < K; ++k) wg[k] = keep[(rows == 1 ? 0 : b) * K + k] ? 0.0 : 1.0 / (N * P);
      for (int p = 0; p < P; ++p) {
        double mx = -1e300, s = 0, dot = 0;
        for (int c = 0; c < K; ++c) mx = std::max(mx, Ld[(static_cast<size_t>(b) * K + c) * P + p]);
        for (int c = 0; c < K; ++c) s += (pr[c] = std::exp(Ld[(static_cast<size_t>(b) * K + c) * P + p] - mx));
        for (int c = 0; c < K; ++c) dot += wg[c] * (pr[c] /= s);
        rloss += dot;
        for (int c = 0; c < K; ++c) rgrad[(static_cast<size_t>(b) * K + c) * P + p] = pr[c] * (wg[c] - dot);
      }
    }
  }
  DroppedClassProbArgs a;
  a.logits = logits.data();
  a.dtype = dtype_of<S>();
  a.keep = keep.data();
  a.keep_rows = rows;
  a.B = B; a.K = K; a.P = P;
  std::vector<T> grad(Ld.size(), static_cast<T>(777));
  a.grad = grad.data();
  const double loss = dropped_class_prob(a, serial_parallel_for);
  char name[160];
  std::snprintf(name, sizeof(name), "dropped_class_prob[%s B=%d K=%d %dx%d keep=%d]",
                type_name(a.dtype), B, K, h, w, keep_mode);
  const bool dbl = std::is_same<S, double>::value;
  std::vector<double> gd(grad.begin(), grad.end());
  check(std::fabs(loss - rloss) <= (dbl ? 1e-13 : 2e-6) * std::max(std::fabs(rloss), 1e-3),
        std::string(name) + " loss", fmt("%.10g vs %.10g", loss, rloss));
  if (N > 0) {
    const double ge = rel_max_err(gd, rgrad);
    check(ge <= (dbl ? 1e-11 : 2e-5), std::string(name) + " grad", fmt("rel err %.3g", ge));
  } else {
    bool zero = loss == 0.0;
    for (double v : gd) zero = zero && v == 0.0;
    check(zero, std::string(name) + " nothing dropped -> zero loss and grad");
  }
  std::vector<T> g2(grad.size());
  a.grad = g2.data();
  const double loss2 = dropped_class_prob(a, threaded_parallel_for(3));
  check(loss2 == loss && std::memcmp(g2.data(), grad.data(), grad.size() * sizeof(T)) == 0,
        std::string(name) + " bit-identical with 3 threads");
}

// ---------------------------------------------------------------------------
// channel_mask
// ---------------------------------------------------------------------------
template <typename S>
void test_channel_mask(int B, int C, int h, int w, int K, int Tt, bool channels_last,
                       bool per_sample, std::mt19937& rng) {
  using T = typename OpMath<S>::type;
  const int HW = h * w;
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  std::vector<T> weight(static_cast<size_t>(K) * C * Tt);
  for (auto& v : weight) v = static_cast<T>(nd(rng));
  const int rows = per_sample ? B : 1;
  std::vector<uint8_t> keep(static_cast<size_t>(rows) * K);
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < K; ++k) keep[r * K + k] = (k == r % K || ud(rng) < 0.5) ? 1 : 0;
  const size_t n = static_cast<size_t>(B) * C * HW;
  std::vector<S> f(n), go(n);
  std::vector<double> fd(n), gd(n);
  for (size_t i = 0; i < n; ++i) {
    f[i] = to_storage<S>(nd(rng));
    fd[i] = to_double(f[i]);
    go[i] = to_storage<S>(nd(rng));
    gd[i] = to_double(go[i]);
  }
  auto idx = [&](int b, int c, int p) -> size_t {
    return channels_last ? (static_cast<size_t>(b) * HW + p) * C + c
                         : (static_cast<size_t>(b) * C + c) * HW + p;
  };
  // Reference.
  std::vector<double> weff(static_cast<size_t>(K) * C), s(static_cast<size_t>(B) * C, 0.0);
  for (int k = 0; k < K; ++k)
    for (int c = 0; c < C; ++c) {
      double acc = 0;
      for (int t = 0; t < Tt; ++t) acc += weight[(static_cast<size_t>(k) * C + c) * Tt + t];
      weff[k * C + c] = acc;
    }
  // s_abs: s summed with every kept class's taps taken in absolute value. The kernel sums the taps and the kept
  // classes in T, so its rounding error in s is of order eps * s_abs, however small s is after taps that cancel.
  std::vector<double> nb(B, 0.0), s_abs(static_cast<size_t>(B) * C, 0.0);
  for (int b = 0; b < B; ++b) {
    const uint8_t* kr = keep.data() + (rows == 1 ? 0 : b) * K;
    for (int k = 0; k < K; ++k) nb[b] += kr[k];
    for (int c = 0; c < C; ++c) {
      double acc = 0, acc_abs = 0;
      for (int k = 0; k < K; ++k) {
        acc += kr[k] * std::max(weff[k * C + c], 0.0);
        for (int t = 0; t < Tt; ++t) acc_abs += kr[k] * std::fabs(weight[(static_cast<size_t>(k) * C + c) * Tt + t]);
      }
      s[b * C + c] = acc / nb[b];
      s_abs[b * C + c] = acc_abs / nb[b];
    }
  }
  std::vector<double> rout(n), rgf(n), rgw(static_cast<size_t>(K) * C * Tt, 0.0);
  std::vector<double> r(static_cast<size_t>(B) * C, 0.0);
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c)
      for (int p = 0; p < HW; ++p) {
        const size_t i = idx(b, c, p);
        rout[i] = fd[i] * s[b * C + c];
        rgf[i] = gd[i] * s[b * C + c];
        r[b * C + c] += gd[i] * fd[i];
      }
  for (int k = 0; k < K; ++k)
    for (int c = 0; c < C; ++c) {
      double acc = 0;
      for (int b = 0; b < B; ++b)
        acc += keep[(rows == 1 ? 0 : b) * K + k] / nb[b] * (weff[k * C + c] > 0 ? 1.0 : 0.0) * r[b * C + c];
      for (int t = 0; t < Tt; ++t) rgw[(static_cast<size_t>(k) * C + c) * Tt + t] = acc;
    }

  ChannelMaskArgs a;
  a.dtype = dtype_of<S>();
  a.channels_last = channels_last;
  a.B = B; a.C = C; a.HW = HW;
  a.weight = weight.data();
  a.K = K; a.T = Tt;
  a.keep = keep.data();
  a.keep_rows = rows;
  std::vector<S> out(n), gf(n);
  std::vector<T> gw(rgw.size());
  channel_mask_forward(a, f.data(), out.data(), serial_parallel_for);
  channel_mask_backward(a, go.data(), f.data(), gf.data(), gw.data(), serial_parallel_for);
  char name[200];
  std::snprintf(name, sizeof(name), "channel_mask[%s B=%d C=%d %dx%d K=%d T=%d %s %s]",
                type_name(a.dtype), B, C, h, w, K, Tt, channels_last ? "NHWC" : "NCHW",
                per_sample ? "per-sample" : "per-batch");
  double tol = 1e-6;
  if (std::is_same<S, double>::value) tol = 1e-13;
  if (std::is_same<S, half_t>::value) tol = 1e-3;
  if (std::is_same<S, bf16_t>::value) tol = 8e-3;
  std::vector<double> od(n), gfd(n), gwd(gw.begin(), gw.end());
  for (size_t i = 0; i < n; ++i) {
    od[i] = to_double(out[i]);
    gfd[i] = to_double(gf[i]);
  }
  // Element-wise check of the masked outputs, relative to |input| * s_abs, and absolute below the smallest normal
  // float16 (2^-14), where float16 outputs round to a fixed step.
  const double least = std::is_same<S, half_t>::value ? std::ldexp(1.0, -14) : 1e-30;
  double eo = 0, eg = 0;
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c)
      for (int p = 0; p < HW; ++p) {
        const size_t i = idx(b, c, p);
        const double sa = s_abs[b * C + c];
        eo = std::max(eo, std::fabs(od[i] - rout[i]) / std::max(std::fabs(fd[i]) * sa, least));
        eg = std::max(eg, std::fabs(gfd[i] - rgf[i]) / std::max(std::fabs(gd[i]) * sa, least));
      }
  check(eo <= tol, std::string(name) + " forward", fmt("rel err %.3g", eo));
  check(eg <= tol, std::string(name) + " grad_features", fmt("rel err %.3g", eg));
  const double ew = rel_max_err(gwd, rgw);
  check(ew <= (std::is_same<S, double>::value ? 1e-12 : 1e-5), std::string(name) + " grad_weight",
        fmt("rel err %.3g", ew));
  std::vector<S> gf2(n);
  std::vector<T> gw2(gw.size());
  channel_mask_backward(a, go.data(), f.data(), gf2.data(), gw2.data(), threaded_parallel_for(3));
  check(std::memcmp(gf2.data(), gf.data(), n * sizeof(S)) == 0 &&
            std::memcmp(gw2.data(), gw.data(), gw.size() * sizeof(T)) == 0,
        std::string(name) + " backward bit-identical with 3 threads");
}

// ---------------------------------------------------------------------------
// Conversions and math helpers.
// ---------------------------------------------------------------------------
void test_conversions(std::mt19937& rng) {
  // half -> float -> half round trip for every bit pattern.
  int bad = 0;
  std::vector<double> pos;  // finite non-negative halves, increasing
  for (uint32_t hbits = 0; hbits < 65536; ++hbits) {
    const uint16_t hb = static_cast<uint16_t>(hbits);
    const float f = half_to_float(hb);
    const bool nan = (hb & 0x7C00) == 0x7C00 && (hb & 0x03FF) != 0;
    if (nan) {
      bad += (f == f) ? 1 : 0;
      bad += (float_to_half(f) & 0x7C00) == 0x7C00 && (float_to_half(f) & 0x3FF) ? 0 : 1;
      continue;
    }
    bad += float_to_half(f) == hb ? 0 : 1;
    // Value check against the definition.
    const int e = (hb >> 10) & 0x1F, m = hb & 0x3FF;
    double v = e == 0 ? std::ldexp(m, -24) : (e == 31 ? INFINITY : std::ldexp(1024 + m, e - 25));
    if (hb & 0x8000) v = -v;
    bad += static_cast<double>(f) == v ? 0 : 1;
    if (!(hb & 0x8000) && e < 31) pos.push_back(v);
  }
  check(bad == 0, "half<->float round trip / values", fmt("%g mismatches", bad));
  // float -> half rounding (nearest, ties to even) on random floats.
  std::uniform_real_distribution<double> ue(-26.0, 17.0);
  bad = 0;
  for (int i = 0; i < 200000; ++i) {
    const float f = static_cast<float>((i & 1 ? -1 : 1) * std::exp2(ue(rng)));
    const double a = std::fabs(static_cast<double>(f));
    uint16_t expect;
    if (a >= 65520.0) {
      expect = 0x7C00;
    } else {
      const size_t hi = std::lower_bound(pos.begin(), pos.end(), a) - pos.begin();
      size_t pick = hi;
      if (hi == pos.size()) {  // (65504, 65520): rounds down to the largest half
        pick = hi - 1;
      } else if (pos[hi] != a) {
        const size_t lo = hi - 1;
        const double dl = a - pos[lo], dh = pos[hi] - a;
        pick = dl < dh ? lo : (dh < dl ? hi : ((lo & 1) == 0 ? lo : hi));
      }
      expect = static_cast<uint16_t>(pick);
    }
    if (f < 0) expect |= 0x8000;
    bad += float_to_half(f) == expect ? 0 : 1;
  }
  // Exact ties.
  bad += float_to_half(65520.0f) == 0x7C00 ? 0 : 1;                 // tie above max -> inf
  bad += float_to_half(65504.0f) == 0x7BFF ? 0 : 1;
  bad += float_to_half(std::ldexp(1.0f, -25)) == 0x0000 ? 0 : 1;    // tie to even (0)
  bad += float_to_half(std::ldexp(3.0f, -25)) == 0x0002 ? 0 : 1;    // tie to even (2)
  bad += float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3C00 ? 0 : 1;
  bad += float_to_half(INFINITY) == 0x7C00 && float_to_half(-INFINITY) == 0xFC00 ? 0 : 1;
  check(bad == 0, "float->half round to nearest even", fmt("%g mismatches", bad));

  // bf16.
  bad = 0;
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_float(static_cast<uint16_t>(b));
    if (f != f) {
      bad += float_to_bf16(f) == float_to_bf16(f) && bf16_to_float(float_to_bf16(f)) != bf16_to_float(float_to_bf16(f)) ? 0 : 1;
      continue;
    }
    bad += float_to_bf16(f) == b ? 0 : 1;
  }
  std::uniform_int_distribution<uint32_t> ub;
  for (int i = 0; i < 200000; ++i) {
    const uint32_t u = ub(rng);
    const float f = fp32_from_bits(u);
    if (f != f || std::isinf(f)) continue;
    const uint32_t lo = u & 0xFFFF0000u;
    const double dlo = std::fabs(static_cast<double>(f) - fp32_from_bits(lo));
    const uint32_t upb = (lo & 0x7FFFFFFFu) + 0x10000u;  // next magnitude (inf -> 2^128)
    const double up = std::copysign(upb == 0x7F800000u ? std::ldexp(1.0, 128)
                                                        : static_cast<double>(fp32_from_bits(upb)),
                                    static_cast<double>(f));
    const double dhi = std::fabs(up - static_cast<double>(f));
    uint16_t expect = static_cast<uint16_t>(lo >> 16);
    if (dhi < dlo || (dhi == dlo && (expect & 1))) expect = static_cast<uint16_t>((lo + 0x10000u) >> 16);
    bad += float_to_bf16(f) == expect ? 0 : 1;
  }
  check(bad == 0, "bf16<->float conversions", fmt("%g mismatches", bad));
}

void test_math() {
  double emax = 0, lmax = 0;
  for (double x = -87.0; x < 88.0; x += 0.00137) {
    const float xf = static_cast<float>(x);
    const double ref = std::exp(static_cast<double>(xf));
    emax = std::max(emax, std::fabs(fast_expf(xf) - ref) / ref);
    if (xf <= 0) emax = std::max(emax, std::fabs(fast_expf_nonpos(xf) - ref) / ref);
  }
  for (double x = 1.0; x < 1e30; x *= 1.00173) {
    const float xf = static_cast<float>(x);
    const double ref = std::log(static_cast<double>(xf));
    lmax = std::max(lmax, std::fabs(fast_logf(xf) - ref) / std::max(std::fabs(ref), 1.0));
  }
  check(emax < 2e-7, "fast_expf relative error", fmt("%.3g", emax));
  check(lmax < 2e-7, "fast_logf error", fmt("%.3g", lmax));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  check(fast_expf(nan) != fast_expf(nan) && fast_expf_nonpos(nan) != fast_expf_nonpos(nan),
        "fast_expf(NaN) is NaN");
  check(fast_expf(-INFINITY) >= 0 && fast_expf(-INFINITY) < 1e-37f &&
            fast_expf_nonpos(-1e30f) < 1e-37f,
        "fast_expf(-inf) ~ 0");
  check(fast_logf(INFINITY) == INFINITY && fast_logf(nan) != fast_logf(nan),
        "fast_logf(inf/NaN) passes through");
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  test_conversions(rng);
  test_math();

  // seg_cross_entropy: odd sizes, both align_corners, keep modes, label types.
  std::vector<CeCase> cases = test_harness::shared_ce_cases();
  cases.insert(cases.end(), {
      // Integer factors (phase-major strips), both align_corners conventions.
      {1, 3, 5, 24, 9, 47, true, 0, 255, 0.1},      // x2, align_corners
      {1, 2, 4, 300, 8, 1200, false, 2, 255, 0.1},  // x4, several strips
      {1, 40, 4, 300, 8, 900, false, 0, 255, 0.1},  // x3 (inexact weights), several strips
      {1, 512, 2, 17, 4, 102, false, 0, 255, 0.1},  // x6 at K=512: narrow strips, phases under 8 columns
  });
  for (const CeCase& cs : cases) {
    test_seg_ce<float, int64_t>(cs, rng);
    test_seg_ce<double, int64_t>(cs, rng);
    test_seg_ce<half_t, int32_t>(cs, rng);
    test_seg_ce<bf16_t, int16_t>(cs, rng);
    if (cs.ignore >= 0 && cs.ignore <= 255 && cs.K < 128) {
      test_seg_ce<float, uint8_t>(cs, rng);
      if (cs.ignore <= 127) test_seg_ce<float, int8_t>(cs, rng);
    }
    if (cs.ignore < 0 && cs.K < 128) test_seg_ce<float, int8_t>(cs, rng);
  }
  {
    CeCase big{1, 19, 21, 37, 83, 149, false, 1, 255, 0.1};
    test_seg_ce<float, int64_t>(big, rng);
    big.align_corners = true;
    test_seg_ce<float, int32_t>(big, rng);
  }
  test_seg_ce_bad_label();

  // dropped_class_prob.
  for (int km : {0, 1, 2}) {
    test_dcp<float>(2, 19, 7, 9, km, rng);
    test_dcp<double>(2, 19, 7, 9, km, rng);
    test_dcp<half_t>(3, 5, 3, 11, km, rng);
    test_dcp<bf16_t>(3, 5, 3, 11, km, rng);
  }
  test_dcp<float>(2, 21, 67, 71, 2, rng);  // several chunks per sample

  // channel_mask.
  for (bool cl : {false, true})
    for (bool ps : {false, true}) {
      test_channel_mask<float>(2, 13, 5, 7, 6, 1, cl, ps, rng);
      test_channel_mask<float>(3, 9, 4, 3, 5, 9, cl, ps, rng);
      test_channel_mask<double>(2, 13, 5, 7, 6, 9, cl, ps, rng);
      test_channel_mask<half_t>(2, 13, 5, 7, 6, 1, cl, ps, rng);
      test_channel_mask<bf16_t>(2, 13, 5, 7, 6, 1, cl, ps, rng);
    }
  test_channel_mask<float>(2, 5, 150, 131, 4, 1, false, true, rng);  // several chunks per plane
  test_channel_mask<float>(2, 33, 37, 29, 4, 1, true, false, rng);  // channels_last, several chunks
  test_channel_mask<float>(2, 33, 37, 29, 4, 1, true, true, rng);   // the same, per-sample keep

  return test_harness::summary();
}
