// Shared helpers of the torch-free CPU kernels of dropclass_fast.
//
// Plain C++17: no torch / ATen includes.  Everything here is header-only and
// written so that GCC -O3 auto-vectorises the element-wise helpers on the
// SSE2 baseline (no -march flags, no -ffast-math).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>

namespace dropclass_fast {
namespace kernels {

// ---------------------------------------------------------------------------
// Parallelism.  The kernels never create threads themselves: the caller passes
// a parallel-for functor.  `pf(begin, end, grain, body)` must call
// `body(b, e)` on disjoint sub-ranges that cover [begin, end) exactly once
// (in any order, on any threads).  The torch bindings pass a wrapper around
// at::parallel_for; the C++ tests pass a serial or a std::thread one.
// Results never depend on how the range is split: every kernel splits its
// work into tasks whose number depends on the problem shape only and reduces
// per-task partial results in task order.
// ---------------------------------------------------------------------------
using RangeFn = std::function<void(int64_t begin, int64_t end)>;
using ParallelFor =
    std::function<void(int64_t begin, int64_t end, int64_t grain, const RangeFn& body)>;

inline void serial_parallel_for(int64_t begin, int64_t end, int64_t /*grain*/,
                                const RangeFn& body) {
  if (begin < end) body(begin, end);
}

// ---------------------------------------------------------------------------
// Element types.
// ---------------------------------------------------------------------------
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };
enum class LabelType : int { UInt8 = 0, Int8 = 1, Int16 = 2, Int32 = 3, Int64 = 4 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "?";
}

// Storage tags for the 16-bit float formats (bit patterns).  Same size and
// alignment as uint16_t, so c10::Half / c10::BFloat16 buffers can be
// reinterpreted as arrays of these.
struct half_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };
static_assert(sizeof(half_t) == 2 && sizeof(bf16_t) == 2, "16-bit storage tags");

inline uint32_t fp32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float fp32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// IEEE half -> float, exact, branch-free (normal, subnormal, inf, NaN).
inline float half_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & UINT32_C(0x80000000);
  const uint32_t two_w = w + w;
  // Normal (and inf/NaN): shift exponent+mantissa into place, rebias by 2^-112.
  const uint32_t exp_offset = UINT32_C(0xE0) << 23;
  const float normalized = fp32_from_bits((two_w >> 4) + exp_offset) * 0x1.0p-112f;
  // Subnormal: mantissa as the low bits of 0.5f's significand, minus 0.5f.
  const uint32_t magic_mask = UINT32_C(126) << 23;
  const float denormalized = fp32_from_bits((two_w >> 17) | magic_mask) - 0.5f;
  const uint32_t cutoff = UINT32_C(1) << 27;
  const uint32_t result =
      sign | (two_w < cutoff ? fp32_to_bits(denormalized) : fp32_to_bits(normalized));
  return fp32_from_bits(result);
}

// float -> IEEE half, round to nearest even; overflow -> inf, NaN -> quiet NaN.
inline uint16_t float_to_half(float f) {
  uint32_t u = fp32_to_bits(f);
  const uint32_t sign = u & UINT32_C(0x80000000);
  u ^= sign;
  uint32_t o;
  if (u >= (UINT32_C(143) << 23)) {           // |f| >= 65536, inf or NaN
    o = (u > (UINT32_C(255) << 23)) ? 0x7E00u : 0x7C00u;
  } else if (u < (UINT32_C(113) << 23)) {           // half subnormal or zero
    const float magic = fp32_from_bits(UINT32_C(126) << 23);  // 0.5f
    const float t = fp32_from_bits(u) + magic;
    o = fp32_to_bits(t) - (UINT32_C(126) << 23);
  } else {                                           // half normal (may round to inf)
    const uint32_t mant_odd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu;
    u += mant_odd;
    o = u >> 13;
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

inline float bf16_to_float(uint16_t b) { return fp32_from_bits(static_cast<uint32_t>(b) << 16); }

// float -> bfloat16, round to nearest even, NaN stays a (quiet) NaN.
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = fp32_to_bits(f);
  if (f != f) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  const uint32_t rounding_bias = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding_bias) >> 16);
}

// Load an element of storage type S as compute type T, and store back.
template <typename T> inline T load_as(float v) { return static_cast<T>(v); }
template <typename T> inline T load_as(double v) { return static_cast<T>(v); }
template <typename T> inline T load_as(half_t v) { return static_cast<T>(half_to_float(v.bits)); }
template <typename T> inline T load_as(bf16_t v) { return static_cast<T>(bf16_to_float(v.bits)); }

template <typename S> struct Store;
template <> struct Store<float> { static inline float from(float v) { return v; } };
template <> struct Store<double> { static inline double from(double v) { return v; } };
template <> struct Store<half_t> { static inline half_t from(float v) { return half_t{float_to_half(v)}; } };
template <> struct Store<bf16_t> { static inline bf16_t from(float v) { return bf16_t{float_to_bf16(v)}; } };

// Compute type of a storage type: double for double, float otherwise.
template <typename S> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };

// ---------------------------------------------------------------------------
// Branch-free selects.  `c ? x : 0` written with integer masks: with the
// default -ftrapping-math, GCC refuses to if-convert (and so to vectorise)
// loops in which a floating-point operation would become conditionally
// executed, and it readily turns `y - (c ? 1 : 0)` or `c ? 1/s : 0` into
// exactly that.  Integer selects are always if-converted.
// ---------------------------------------------------------------------------
inline float mask_if(bool c, float x) {
  return fp32_from_bits(fp32_to_bits(x) & (UINT32_C(0) - static_cast<uint32_t>(c)));
}
inline double mask_if(bool c, double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof(u));
  u &= UINT64_C(0) - static_cast<uint64_t>(c);
  double r;
  std::memcpy(&r, &u, sizeof(r));
  return r;
}
// c ? x : y, bitwise.
inline float select_bits(bool c, float x, float y) {
  const uint32_t m = UINT32_C(0) - static_cast<uint32_t>(c);
  return fp32_from_bits((fp32_to_bits(x) & m) | (fp32_to_bits(y) & ~m));
}

// ---------------------------------------------------------------------------
// exp / log.  The float versions are branch-free polynomials that GCC
// vectorises; relative error ~1e-7.  Double uses libm.
// ---------------------------------------------------------------------------
namespace detail {
// exp(x) for x already clamped to [-87.34, 88.37] (or NaN).
inline float expf_clamped(float x) {
  // n = round(x * log2(e)) by the 1.5*2^23 trick: the addition rounds to an
  // integer (current rounding mode, nearest-even by default) and the low
  // mantissa bits of t hold n as a two's-complement integer.
  const float magic = 12582912.0f;
  const float t = x * 1.44269504088896341f + magic;
  const float n = t - magic;
  // r = x - n*ln2 in [-ln2/2, ln2/2] (Cody-Waite hi/lo split).
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  // exp(r) = 1 + r + r^2 * p(r), p of degree 4: minimax (relative error) fit
  // on [-ln2/2, ln2/2]; max relative error of the float evaluation 6.7e-8,
  // the same as Cephes' degree-7 polynomial.
  const float r2 = r * r;
  float p = 1.3814599951729178e-3f;
  p = p * r + 8.368710055947304e-3f;
  p = p * r + 4.166838899254799e-2f;
  p = p * r + 1.666652113199234e-1f;
  p = p * r + 4.999999403953552e-1f;
  const float y = p * r2 + r + 1.0f;
  // Scale by 2^n through the exponent bits.
  const int32_t ni = static_cast<int32_t>(fp32_to_bits(t) - fp32_to_bits(magic));
  return y * fp32_from_bits(static_cast<uint32_t>(ni + 127) << 23);
}
}  // namespace detail

// Branch-free expf (Cephes-style range reduction).  Clamped to [-87.34, 88.376]: below, the result
// is ~1.2e-38 instead of a subnormal or 0; above, ~2.4e38 instead of up to
// FLT_MAX / inf.  NaN propagates.
inline float fast_expf(float x) {
  x = select_bits(x < -87.3365478515625f, -87.3365478515625f, x);
  x = select_bits(x > 88.376f, 88.376f, x);
  return detail::expf_clamped(x);
}

// The same for arguments that are <= 0 or NaN (softmax terms x - max):
// skips the upper clamp.
inline float fast_expf_nonpos(float x) {
  x = select_bits(x < -87.3365478515625f, -87.3365478515625f, x);
  return detail::expf_clamped(x);
}

// Natural log for positive normal floats (the softmax denominators, >= 1).
// +inf and NaN pass through; zero / negative / subnormal inputs are not
// supported (never happen at the call sites).
inline float fast_logf(float x) {
  const uint32_t u = fp32_to_bits(x);
  // x = m * 2^e with m in [sqrt(1/2), sqrt(2)).
  int32_t e = static_cast<int32_t>((u >> 23) & 0xFFu) - 127;
  const uint32_t mbits = (u & UINT32_C(0x007FFFFF)) | UINT32_C(0x3F800000);  // [1,2)
  const bool big = mbits > UINT32_C(0x3FB504F3);                            // > sqrt(2)
  const float m = fp32_from_bits(mbits - (big ? UINT32_C(0x00800000) : 0u));  // halve if big
  e = e + (big ? 1 : 0);
  const float f = m - 1.0f;
  const float f2 = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = p * f * f2;
  const float fe = static_cast<float>(e);
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * f2;
  float r = f + y;
  r = r + fe * 0.693359375f;
  // inf / NaN (exponent field all ones): return the input.
  return select_bits((u & UINT32_C(0x7F800000)) == UINT32_C(0x7F800000), x, r);
}

inline float exp_op(float x) { return fast_expf(x); }
inline double exp_op(double x) { return std::exp(x); }
// exp for arguments <= 0 (or NaN).
inline float exp_nonpos(float x) { return fast_expf_nonpos(x); }
inline double exp_nonpos(double x) { return std::exp(x); }

// Softmax numerators of a class-major tile, in place: x[c*stride + i] <- exp(x - m[i]) for
// c < K, i < n, and sum[i] = their sum over c. m[i] must be the maximum over c (so the
// exponent is <= 0).
template <typename T>
inline void exp_shifted_inplace(T* __restrict x, const T* __restrict m, T* __restrict sum,
                                int64_t K, int64_t n, int64_t stride) {
  for (int64_t i = 0; i < n; ++i) sum[i] = static_cast<T>(0);
  for (int64_t c = 0; c < K; ++c) {
    T* __restrict xc = x + c * stride;
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) {
      const T v = exp_nonpos(xc[i] - m[i]);
      xc[i] = v;
      sum[i] += v;
    }
  }
}
inline float log_op(float x) { return fast_logf(x); }
inline double log_op(double x) { return std::log(x); }

// ---------------------------------------------------------------------------
// Small utilities.
// ---------------------------------------------------------------------------
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Row of the keep mask that applies to sample b (keep has 1 or B rows).
inline int64_t keep_row(int64_t b, int64_t keep_rows) { return keep_rows == 1 ? 0 : b; }

}  // namespace kernels
}  // namespace dropclass_fast
