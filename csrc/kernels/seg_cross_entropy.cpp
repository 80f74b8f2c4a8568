// Fused bilinear upsample + softmax cross-entropy (+ gradient), CPU.
// See seg_cross_entropy.h for the semantics.
//
// Work decomposition
//   task   = (sample b, band of consecutive output rows).  The number of
//            tasks depends on the shape only, so results are bit-identical
//            whatever the number of threads.
//   strip  = a range of output columns, sized so that the per-strip row
//            buffers (K x strip width) stay in L2.
//   tile   = kTile output pixels of one output row; all per-pixel work runs
//            over [class][pixel] structure-of-arrays tiles (L1-resident), with
//            inner loops over pixels that GCC vectorises.
// Per task and strip, output rows are visited in order.  The upsample is
// separable (PyTorch evaluates it as wy0*(wx0*x00 + wx1*x01) + wy1*(...)), so
// each source row needed by the band is upsampled horizontally once into one
// of two row slots, and every output row is a blend of the two slots.  The
// gradient goes the other way: each output row adds its pixel gradient into
// two full-width gradient slots, and when a source row leaves its slot it is
// reduced horizontally (a small CSR gather) into the task's band buffer
// [K][band source rows][w].  After all tasks, the band buffers are summed in
// task order into the gradient and scaled by 1 / count.
#include "seg_cross_entropy.h"

#include <algorithm>
#include <vector>

namespace dropclass_fast {
namespace kernels {

template <typename T>
void bilinear_coefficients(int64_t in, int64_t out, bool align_corners, int32_t* i0,
                           int32_t* i1, T* l0, T* l1) {
  T scale;
  if (align_corners) {
    scale = out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : static_cast<T>(0);
  } else {
    scale = static_cast<T>(in) / static_cast<T>(out);
  }
  for (int64_t d = 0; d < out; ++d) {
    int64_t idx;
    T lam;
    int64_t off;
    if (in == out) {  // PyTorch copies in this case
      idx = d;
      lam = static_cast<T>(0);
      off = 0;
    } else {
      T src;
      if (align_corners) {
        src = scale * static_cast<T>(d);
      } else {
        src = scale * (static_cast<T>(d) + static_cast<T>(0.5)) - static_cast<T>(0.5);
        src = src < static_cast<T>(0) ? static_cast<T>(0) : src;
      }
      // guard_index_and_lambda uses floorf (also for double opmath).
      idx = std::min(static_cast<int64_t>(std::floor(static_cast<float>(src))), in - 1);
      lam = std::min(std::max(src - static_cast<T>(idx), static_cast<T>(0)), static_cast<T>(1));
      off = idx < in - 1 ? 1 : 0;
    }
    i0[d] = static_cast<int32_t>(idx);
    i1[d] = static_cast<int32_t>(idx + off);
    l1[d] = lam;
    l0[d] = static_cast<T>(1) - lam;
  }
}

template void bilinear_coefficients<float>(int64_t, int64_t, bool, int32_t*, int32_t*, float*,
                                           float*);
template void bilinear_coefficients<double>(int64_t, int64_t, bool, int32_t*, int32_t*,
                                            double*, double*);

namespace {

constexpr int64_t kTile = 128;            // output pixels per inner tile
constexpr int64_t kStripElems = 32768;    // target K * strip width
constexpr int64_t kTargetTasks = 32;      // tasks per call (shape-only choice)
constexpr int64_t kMinBandRows = 32;      // output rows per band, at least

template <typename T>
struct Strip {
  int64_t Xs = 0, Xe = 0;    // output columns [Xs, Xe)
  int64_t xlo = 0, xhi = 0;  // source columns [xlo, xhi]
  // Transposed horizontal interpolation restricted to the strip: source
  // column xlo + j receives lx0[X] * g[X] for X - Xs in [r0[2j], r0[2j+1])
  // (the columns with x0[X] == xlo + j, contiguous since x0 is monotone) and
  // lx1[X] * g[X] for X - Xs in [r1[2j], r1[2j+1]).
  std::vector<int32_t> r0, r1;
};

template <typename T>
struct Plan {
  int64_t B, K, h, w, H, W;
  std::vector<int32_t> y0, y1, x0, x1;
  std::vector<T> ly0, ly1, lx0, lx1;
  int64_t band_rows, nbands, ntasks;
  std::vector<int64_t> band_ylo, band_yhi;  // source rows touched by each band
  std::vector<int64_t> band_off;            // buffer offset of band within a sample
  int64_t sample_buf = 0;                   // buffer elements per sample
  int64_t strip_w = 0;
  std::vector<Strip<T>> strips;
};

template <typename T>
Plan<T> make_plan(const SegCrossEntropyArgs& a, bool grad) {
  Plan<T> p;
  p.B = a.B; p.K = a.K; p.h = a.h; p.w = a.w; p.H = a.H; p.W = a.W;
  p.y0.resize(a.H); p.y1.resize(a.H); p.ly0.resize(a.H); p.ly1.resize(a.H);
  p.x0.resize(a.W); p.x1.resize(a.W); p.lx0.resize(a.W); p.lx1.resize(a.W);
  bilinear_coefficients<T>(a.h, a.H, a.align_corners, p.y0.data(), p.y1.data(), p.ly0.data(),
                           p.ly1.data());
  bilinear_coefficients<T>(a.w, a.W, a.align_corners, p.x0.data(), p.x1.data(), p.lx0.data(),
                           p.lx1.data());

  p.band_rows = std::max(std::min(kMinBandRows, a.H), ceil_div(a.B * a.H, kTargetTasks));
  p.band_rows = std::min(p.band_rows, a.H);
  p.nbands = ceil_div(a.H, p.band_rows);
  p.ntasks = a.B * p.nbands;
  p.band_ylo.resize(p.nbands);
  p.band_yhi.resize(p.nbands);
  p.band_off.resize(p.nbands);
  int64_t off = 0;
  for (int64_t band = 0; band < p.nbands; ++band) {
    const int64_t Ya = band * p.band_rows;
    const int64_t Yb = std::min(a.H, Ya + p.band_rows);
    p.band_ylo[band] = p.y0[Ya];
    p.band_yhi[band] = p.y1[Yb - 1];
    p.band_off[band] = off;
    if (grad) off += a.K * (p.band_yhi[band] - p.band_ylo[band] + 1) * a.w;
  }
  p.sample_buf = off;

  int64_t sw = ceil_div(kStripElems / std::max<int64_t>(a.K, 1), 16) * 16;
  sw = std::max<int64_t>(sw, 64);
  // Balance the strips: same width up to rounding.
  const int64_t nstrips = ceil_div(a.W, std::min(sw, a.W));
  sw = ceil_div(ceil_div(a.W, nstrips), 4) * 4;
  p.strip_w = std::min(sw, a.W);
  for (int64_t Xs = 0; Xs < a.W; Xs += p.strip_w) {
    Strip<T> s;
    s.Xs = Xs;
    s.Xe = std::min(a.W, Xs + p.strip_w);
    s.xlo = p.x0[Xs];
    s.xhi = p.x1[s.Xe - 1];
    if (grad) {
      const int64_t nx = s.xhi - s.xlo + 1;
      s.r0.assign(2 * nx, 0);
      s.r1.assign(2 * nx, 0);
      std::vector<uint8_t> seen0(nx, 0), seen1(nx, 0);
      for (int64_t X = s.Xs; X < s.Xe; ++X) {
        const int32_t rel = static_cast<int32_t>(X - s.Xs);
        const int64_t j0 = p.x0[X] - s.xlo, j1 = p.x1[X] - s.xlo;
        if (!seen0[j0]) { seen0[j0] = 1; s.r0[2 * j0] = rel; }
        s.r0[2 * j0 + 1] = rel + 1;
        if (!seen1[j1]) { seen1[j1] = 1; s.r1[2 * j1] = rel; }
        s.r1[2 * j1 + 1] = rel + 1;
      }
    }
    p.strips.push_back(std::move(s));
  }
  return p;
}

template <typename T>
struct Scratch {
  std::vector<T> hrow[2], grow[2];  // row slots [K][strip_w]
  std::vector<T> U;                 // [K][kTile]
  std::vector<T> m, s, zt, vf, r, rowbuf;
  std::vector<int32_t> tc;
  explicit Scratch(const Plan<T>& p, bool grad) {
    for (int i = 0; i < 2; ++i) {
      hrow[i].resize(p.K * p.strip_w);
      if (grad) grow[i].resize(p.K * p.strip_w);
    }
    U.resize(p.K * kTile);
    m.resize(kTile); s.resize(kTile); zt.resize(kTile); vf.resize(kTile); r.resize(kTile);
    tc.resize(kTile);
    rowbuf.resize(p.w);
  }
};

struct TaskOut {
  double loss = 0.0;
  int64_t count = 0;
  bool bad = false;
  int64_t bad_value = 0;
};

// Horizontal upsample of source row y (all classes) into a row slot.
template <typename S, typename T>
void fill_row(const S* logits, int64_t b, int64_t y, const Plan<T>& p, const Strip<T>& st,
              Scratch<T>& sc, T* __restrict dst) {
  const int64_t n = st.Xe - st.Xs;
  const int32_t* __restrict x0 = p.x0.data() + st.Xs;
  const int32_t* __restrict x1 = p.x1.data() + st.Xs;
  const T* __restrict l0 = p.lx0.data() + st.Xs;
  const T* __restrict l1 = p.lx1.data() + st.Xs;
  for (int64_t c = 0; c < p.K; ++c) {
    const S* row = logits + ((b * p.K + c) * p.h + y) * p.w;
    const T* __restrict src;
    if constexpr (std::is_same<S, T>::value) {
      src = row;
    } else {
      T* __restrict rb = sc.rowbuf.data();
      for (int64_t x = st.xlo; x <= st.xhi; ++x) rb[x] = load_as<T>(row[x]);
      src = rb;
    }
    T* __restrict d = dst + c * p.strip_w;
    for (int64_t i = 0; i < n; ++i) d[i] = src[x0[i]] * l0[i] + src[x1[i]] * l1[i];
  }
}

// Transposed horizontal interpolation of a gradient row slot into the band
// buffer row of source row y.
template <typename T>
void flush_row(const Plan<T>& p, const Strip<T>& st, const T* __restrict g, T* __restrict out,
               int64_t cstride) {
  const int64_t nx = st.xhi - st.xlo + 1;
  const int32_t* __restrict r0 = st.r0.data();
  const int32_t* __restrict r1 = st.r1.data();
  const T* __restrict l0 = p.lx0.data() + st.Xs;
  const T* __restrict l1 = p.lx1.data() + st.Xs;
  for (int64_t c = 0; c < p.K; ++c) {
    const T* __restrict gc = g + c * p.strip_w;
    T* __restrict oc = out + c * cstride + st.xlo;
    for (int64_t x = 0; x < nx; ++x) {
      T acc0 = static_cast<T>(0), acc1 = static_cast<T>(0);
      for (int32_t X = r0[2 * x]; X < r0[2 * x + 1]; ++X) acc0 += l0[X] * gc[X];
      for (int32_t X = r1[2 * x]; X < r1[2 * x + 1]; ++X) acc1 += l1[X] * gc[X];
      oc[x] += acc0 + acc1;
    }
  }
}

template <typename S, typename L, bool kKeep, bool kGrad>
void run_task(const SegCrossEntropyArgs& a, const Plan<typename OpMath<S>::type>& p,
              int64_t task, Scratch<typename OpMath<S>::type>& sc, TaskOut& out,
              typename OpMath<S>::type* buf_all) {
  using T = typename OpMath<S>::type;
  const S* logits = static_cast<const S*>(a.logits);
  const L* target = static_cast<const L*>(a.target);
  const int64_t K = p.K;
  const int64_t b = task / p.nbands;
  const int64_t band = task % p.nbands;
  const int64_t Ya = band * p.band_rows;
  const int64_t Yb = std::min(p.H, Ya + p.band_rows);
  const int64_t ylo = p.band_ylo[band];
  const int64_t nrows = p.band_yhi[band] - ylo + 1;
  const int64_t cstride = nrows * p.w;  // class stride in the band buffer
  T* buf = nullptr;
  if (kGrad) {
    buf = buf_all + b * p.sample_buf + p.band_off[band];
    std::fill(buf, buf + K * cstride, static_cast<T>(0));
  }
  const uint8_t* keep_b = kKeep ? a.keep + keep_row(b, a.keep_rows) * K : nullptr;
  const int64_t ignore = a.ignore_index;
  const uint64_t uK = static_cast<uint64_t>(K);

  double loss = 0.0;
  int64_t count = 0;
  bool bad = false;
  int64_t bad_value = 0;

  for (const Strip<T>& st : p.strips) {
    int64_t slot_row[2] = {-1, -1};
    auto flush = [&](int s) {
      if (kGrad && slot_row[s] >= 0)
        flush_row<T>(p, st, sc.grow[s].data(), buf + (slot_row[s] - ylo) * p.w, cstride);
    };
    auto load = [&](int s, int64_t y) {
      flush(s);
      slot_row[s] = y;
      fill_row<S, T>(logits, b, y, p, st, sc, sc.hrow[s].data());
      if (kGrad) std::fill(sc.grow[s].begin(), sc.grow[s].end(), static_cast<T>(0));
    };

    for (int64_t Y = Ya; Y < Yb; ++Y) {
      const int64_t y0 = p.y0[Y], y1 = p.y1[Y];
      const T wa = p.ly0[Y], wb = p.ly1[Y];
      // Make rows y0 and y1 resident.  Rows are visited in increasing order, so
      // an evicted row is never needed again by this task and strip.
      int sA;
      if (slot_row[0] == y0) {
        sA = 0;
      } else if (slot_row[1] == y0) {
        sA = 1;
      } else {
        sA = (slot_row[0] == y1) ? 1 : (slot_row[1] == y1 ? 0 : (slot_row[0] < slot_row[1] ? 0 : 1));
        load(sA, y0);
      }
      int sB = sA;
      if (y1 != y0) {
        sB = 1 - sA;
        if (slot_row[sB] != y1) load(sB, y1);
      }
      const T* hA = sc.hrow[sA].data();
      const T* hB = sc.hrow[sB].data();
      T* gA = kGrad ? sc.grow[sA].data() : nullptr;
      T* gB = kGrad ? sc.grow[sB].data() : nullptr;
      const L* lab_row = target + (b * p.H + Y) * p.W;

      for (int64_t X0 = st.Xs; X0 < st.Xe; X0 += kTile) {
        const int64_t n = std::min(kTile, st.Xe - X0);
        const int64_t xs = X0 - st.Xs;
        T* __restrict U = sc.U.data();
        T* __restrict m = sc.m.data();
        T* __restrict ssum = sc.s.data();
        T* __restrict zt = sc.zt.data();
        T* __restrict vf = sc.vf.data();
        T* __restrict r = sc.r.data();
        int32_t* __restrict tc = sc.tc.data();
        const L* __restrict lab = lab_row + X0;

        // Labels -> class index (or -1), valid flag.
        int64_t nvalid = 0;
        for (int64_t i = 0; i < n; ++i) {
          const int64_t v = static_cast<int64_t>(lab[i]);
          const bool ign = v == ignore;
          const bool inr = static_cast<uint64_t>(v) < uK;
          if (!ign && !inr && !bad) {
            bad = true;
            bad_value = v;
          }
          const int32_t t = inr ? static_cast<int32_t>(v) : 0;
          bool val = !ign && inr;
          if (kKeep) val = val && keep_b[t] != 0;
          tc[i] = val ? t : -1;
          vf[i] = val ? static_cast<T>(1) : static_cast<T>(0);
          nvalid += val ? 1 : 0;
        }
        if (nvalid == 0) continue;  // nothing to add to loss or gradient
        count += nvalid;

        // Vertical blend of the two horizontally upsampled rows, running max.
        {
          const T* __restrict ha = hA + xs;
          const T* __restrict hb = hB + xs;
#pragma GCC ivdep
          for (int64_t i = 0; i < n; ++i) {
            const T v = ha[i] * wa + hb[i] * wb;
            U[i] = v;
            m[i] = v;
          }
        }
        for (int64_t c = 1; c < K; ++c) {
          const T* __restrict ha = hA + c * p.strip_w + xs;
          const T* __restrict hb = hB + c * p.strip_w + xs;
          T* __restrict u = U + c * kTile;
#pragma GCC ivdep
          for (int64_t i = 0; i < n; ++i) {
            const T v = ha[i] * wa + hb[i] * wb;
            u[i] = v;
            m[i] = v > m[i] ? v : m[i];
          }
        }
        // Target logit.
        for (int64_t i = 0; i < n; ++i) {
          const int32_t t = tc[i] < 0 ? 0 : tc[i];
          zt[i] = U[t * kTile + i];
        }
        // exp(U - m) in place, denominators.
        for (int64_t i = 0; i < n; ++i) ssum[i] = static_cast<T>(0);
        for (int64_t c = 0; c < K; ++c) {
          T* __restrict u = U + c * kTile;
#pragma GCC ivdep
          for (int64_t i = 0; i < n; ++i) {
            const T e = exp_nonpos(u[i] - m[i]);
            u[i] = e;
            ssum[i] += e;
          }
        }
        // Loss: log S + m - z_t over valid pixels (8 partial sums).
        {
          T lane[8] = {};
          int64_t i = 0;
          for (; i + 8 <= n; i += 8) {
            for (int j = 0; j < 8; ++j) {
              const T li = log_op(ssum[i + j]) + m[i + j] - zt[i + j];
              lane[j] += mask_if(vf[i + j] != static_cast<T>(0), li);
            }
          }
          for (; i < n; ++i) {
            const T li = log_op(ssum[i]) + m[i] - zt[i];
            lane[0] += mask_if(vf[i] != static_cast<T>(0), li);
          }
          double tsum = 0.0;
          for (int j = 0; j < 8; ++j) tsum += static_cast<double>(lane[j]);
          loss += tsum;
        }
        if (kGrad) {
          for (int64_t i = 0; i < n; ++i) {
            const T inv = static_cast<T>(1) / ssum[i];
            r[i] = mask_if(vf[i] != static_cast<T>(0), inv);
          }
          if (sA != sB) {
            for (int64_t c = 0; c < K; ++c) {
              const T* __restrict u = U + c * kTile;
              T* __restrict ga = gA + c * p.strip_w + xs;
              T* __restrict gb = gB + c * p.strip_w + xs;
              const int32_t ci = static_cast<int32_t>(c);
#pragma GCC ivdep
              for (int64_t i = 0; i < n; ++i) {
                const T g = u[i] * r[i] - mask_if(tc[i] == ci, static_cast<T>(1));
                ga[i] += g * wa;
                gb[i] += g * wb;
              }
            }
          } else {
            const T wab = wa + wb;
            for (int64_t c = 0; c < K; ++c) {
              const T* __restrict u = U + c * kTile;
              T* __restrict ga = gA + c * p.strip_w + xs;
              const int32_t ci = static_cast<int32_t>(c);
#pragma GCC ivdep
              for (int64_t i = 0; i < n; ++i) {
                const T g = u[i] * r[i] - mask_if(tc[i] == ci, static_cast<T>(1));
                ga[i] += g * wab;
              }
            }
          }
        }
      }
    }
    flush(0);
    flush(1);
  }
  out.loss = loss;
  out.count = count;
  out.bad = bad;
  out.bad_value = bad_value;
}

template <typename S, typename L, bool kKeep, bool kGrad>
SegCrossEntropyResult run(const SegCrossEntropyArgs& a, const ParallelFor& pf) {
  using T = typename OpMath<S>::type;
  const Plan<T> p = make_plan<T>(a, kGrad);
  std::vector<T> bufs;
  if (kGrad) bufs.resize(static_cast<size_t>(p.B * p.sample_buf));
  std::vector<TaskOut> outs(p.ntasks);
  T* buf_all = kGrad ? bufs.data() : nullptr;
  pf(0, p.ntasks, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> sc(p, kGrad);
    for (int64_t t = begin; t < end; ++t) run_task<S, L, kKeep, kGrad>(a, p, t, sc, outs[t], buf_all);
  });

  SegCrossEntropyResult res;
  double total = 0.0;
  for (const TaskOut& o : outs) {
    total += o.loss;
    res.count += o.count;
    if (o.bad && !res.bad_label) {
      res.bad_label = true;
      res.bad_value = o.bad_value;
    }
  }
  res.loss = res.count > 0 ? total / static_cast<double>(res.count) : 0.0;
  if (!kGrad || res.bad_label) return res;

  // Reduce the band buffers into the gradient, in band order, times 1/count.
  T* grad = static_cast<T*>(a.grad);
  const T inv = res.count > 0 ? static_cast<T>(1.0 / static_cast<double>(res.count))
                              : static_cast<T>(0);
  // Bands covering each source row: [first_band[y], last_band[y]] (empty if first > last).
  std::vector<int64_t> first_band(p.h, p.nbands), last_band(p.h, -1);
  for (int64_t band = 0; band < p.nbands; ++band) {
    for (int64_t y = p.band_ylo[band]; y <= p.band_yhi[band]; ++y) {
      first_band[y] = std::min(first_band[y], band);
      last_band[y] = std::max(last_band[y], band);
    }
  }
  const int64_t nrows_total = p.B * p.K * p.h;
  pf(0, nrows_total, std::max<int64_t>(1, 4096 / std::max<int64_t>(p.w, 1)),
     [&](int64_t begin, int64_t end) {
       for (int64_t row = begin; row < end; ++row) {
         const int64_t y = row % p.h;
         const int64_t c = (row / p.h) % p.K;
         const int64_t b = row / (p.h * p.K);
         T* __restrict dst = grad + row * p.w;
         const int64_t f = first_band[y], l = last_band[y];
         if (f > l || res.count == 0) {
           std::fill(dst, dst + p.w, static_cast<T>(0));
           continue;
         }
         for (int64_t band = f; band <= l; ++band) {
           const int64_t nr = p.band_yhi[band] - p.band_ylo[band] + 1;
           const T* __restrict src = bufs.data() + b * p.sample_buf + p.band_off[band] +
                                     (c * nr + (y - p.band_ylo[band])) * p.w;
           if (band == f) {
             for (int64_t x = 0; x < p.w; ++x) dst[x] = src[x];
           } else {
#pragma GCC ivdep
             for (int64_t x = 0; x < p.w; ++x) dst[x] += src[x];
           }
         }
#pragma GCC ivdep
         for (int64_t x = 0; x < p.w; ++x) dst[x] *= inv;
       }
     });
  return res;
}

template <typename S, typename L>
SegCrossEntropyResult dispatch_flags(const SegCrossEntropyArgs& a, const ParallelFor& pf) {
  const bool keep = a.keep != nullptr;
  const bool grad = a.grad != nullptr;
  if (keep) return grad ? run<S, L, true, true>(a, pf) : run<S, L, true, false>(a, pf);
  return grad ? run<S, L, false, true>(a, pf) : run<S, L, false, false>(a, pf);
}

template <typename S>
SegCrossEntropyResult dispatch_label(const SegCrossEntropyArgs& a, const ParallelFor& pf) {
  switch (a.label_type) {
    case LabelType::UInt8: return dispatch_flags<S, uint8_t>(a, pf);
    case LabelType::Int8: return dispatch_flags<S, int8_t>(a, pf);
    case LabelType::Int16: return dispatch_flags<S, int16_t>(a, pf);
    case LabelType::Int32: return dispatch_flags<S, int32_t>(a, pf);
    case LabelType::Int64: return dispatch_flags<S, int64_t>(a, pf);
  }
  return {};
}

}  // namespace

SegCrossEntropyResult seg_cross_entropy(const SegCrossEntropyArgs& a, const ParallelFor& pf) {
  if (a.B <= 0 || a.K <= 0 || a.H <= 0 || a.W <= 0 || a.h <= 0 || a.w <= 0) {
    // No output pixel (or nothing to interpolate from): loss 0, gradient 0.
    if (a.grad != nullptr) {
      const size_t n = static_cast<size_t>(std::max<int64_t>(a.B * a.K * a.h * a.w, 0));
      if (a.dtype == DType::Float64)
        std::fill(static_cast<double*>(a.grad), static_cast<double*>(a.grad) + n, 0.0);
      else
        std::fill(static_cast<float*>(a.grad), static_cast<float*>(a.grad) + n, 0.0f);
    }
    return {};
  }
  switch (a.dtype) {
    case DType::Float32: return dispatch_label<float>(a, pf);
    case DType::Float64: return dispatch_label<double>(a, pf);
    case DType::Float16: return dispatch_label<half_t>(a, pf);
    case DType::BFloat16: return dispatch_label<bf16_t>(a, pf);
  }
  return {};
}

}  // namespace kernels
}  // namespace dropclass_fast
