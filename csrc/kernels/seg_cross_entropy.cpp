// Fused bilinear upsample + softmax cross-entropy (+ gradient), CPU.
// See seg_cross_entropy.h for the semantics.
//
// Work decomposition
//   task   = (sample b, band of consecutive output rows).  The number of
//            tasks depends on the shape only, and every floating-point sum
//            has a fixed order, so results are bit-identical whatever the
//            number of threads or the order in which tasks run.
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
// reduced horizontally into the gradient.
//
// Gradient runs first count the valid pixels (a cheap pass over the labels
// that also finds bad labels), so the main pass writes final values: source
// rows touched by one band only go straight into the gradient tensor; rows
// shared by two bands go to small per-task halo rows that are summed in band
// order at the end.
//
// For integer upsampling factors the strips keep their columns in
// phase-major order (see Strip), which turns the horizontal interpolation and
// its transpose into contiguous, vectorisable loops.
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
constexpr int64_t kCountPixels = 32768;   // output pixels per task of the counting pass

template <typename T>
struct Strip {
  int64_t Xs = 0, Xe = 0;    // output columns [Xs, Xe)
  int64_t xlo = 0, xhi = 0;  // source columns [xlo, xhi]
  // Plain strips keep the output columns in order (slot index i <-> X = Xs + i).
  // Transposed horizontal interpolation: source column xlo + j receives
  // lx0[X] * g[X] for X - Xs in [r0[2j], r0[2j+1]) (the columns with
  // x0[X] == xlo + j, contiguous since x0 is monotone) and lx1[X] * g[X] for
  // X - Xs in [r1[2j], r1[2j+1]).
  std::vector<int32_t> r0, r1;

  // Phased strips (integer upsampling factor s): the slots hold the output
  // columns in phase-major order, so that runs of slots read consecutive
  // source columns: slots [off, off + len) of a run are the columns
  // X, X + s, X + 2s, ... with x0 = x, x + 1, x + 2, ... and x1 = x0 + 1.
  // Then the horizontal interpolation and its transpose are contiguous,
  // vectorisable loops.  Slots [edge_off, n) are the few remaining columns
  // (image borders), handled one by one.  Per-pixel work does not care about
  // the column order; the labels are read through `order`.
  bool phased = false;
  struct Run {
    int32_t off, len, x;
  };
  std::vector<Run> runs;
  int32_t edge_off = 0;
  std::vector<int32_t> order;     // slot -> X
  std::vector<int32_t> px0, px1;  // slot -> source columns
  std::vector<T> pl0, pl1;        // slot -> weights
};

// Tries to lay out the strip [Xs, Xe) phase-major with stride s; returns
// false (leaving the strip plain) when too few columns fall into long runs.
template <typename T>
bool make_phased(Strip<T>& st, int64_t s, const std::vector<int32_t>& x0,
                 const std::vector<int32_t>& x1, const std::vector<T>& l0,
                 const std::vector<T>& l1) {
  const int64_t n = st.Xe - st.Xs;
  constexpr int64_t kMinRun = 8;
  std::vector<typename Strip<T>::Run> runs;
  std::vector<int32_t> order, edges;
  std::vector<uint8_t> used(n, 0);
  for (int64_t j = 0; j < s && j < n; ++j) {
    int64_t X = st.Xs + j;
    while (X < st.Xe) {
      // Longest run starting at X with stride s.
      int64_t len = 0;
      if (x1[X] == x0[X] + 1) {
        len = 1;
        while (X + len * s < st.Xe && x1[X + len * s] == x0[X + len * s] + 1 &&
               x0[X + len * s] == x0[X] + len)
          ++len;
      }
      if (len >= kMinRun) {
        runs.push_back({static_cast<int32_t>(order.size()), static_cast<int32_t>(len), x0[X]});
        for (int64_t k = 0; k < len; ++k) {
          order.push_back(static_cast<int32_t>(X + k * s));
          used[X + k * s - st.Xs] = 1;
        }
        X += len * s;
      } else {
        X += s;
      }
    }
  }
  if (static_cast<int64_t>(order.size()) * 4 < n * 3) return false;  // < 75% in runs
  st.edge_off = static_cast<int32_t>(order.size());
  for (int64_t i = 0; i < n; ++i)
    if (!used[i]) order.push_back(static_cast<int32_t>(st.Xs + i));
  st.phased = true;
  st.runs = std::move(runs);
  st.order = std::move(order);
  st.px0.resize(n); st.px1.resize(n); st.pl0.resize(n); st.pl1.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t X = st.order[i];
    st.px0[i] = x0[X];
    st.px1[i] = x1[X];
    st.pl0[i] = l0[X];
    st.pl1[i] = l1[X];
  }
  return true;
}

template <typename T>
struct Plan {
  int64_t B, K, h, w, H, W;
  bool identity_x = false;  // W == w: the horizontal interpolation is a copy
  std::vector<int32_t> y0, y1, x0, x1;
  std::vector<T> ly0, ly1, lx0, lx1;
  int64_t band_rows, nbands, ntasks;
  std::vector<int64_t> band_ylo, band_yhi;  // source rows touched by each band
  // Gradient rows.  A source row touched by one band only is written by that
  // band's task straight into the gradient; a row shared by several bands is
  // written by each of them into a halo row, and the halo rows are summed in
  // band order after the pass.  halo_index[band_row_off[band] + y - ylo] is
  // the halo row of (band, y) within a sample, or -1 for an exclusive row.
  std::vector<int64_t> band_row_off;
  std::vector<int32_t> halo_index;
  int64_t halo_rows = 0;                    // halo rows per sample
  std::vector<int64_t> first_band, last_band;  // bands touching each source row
  std::vector<int64_t> fix_rows;            // shared or untouched source rows
  int64_t strip_w = 0;
  std::vector<Strip<T>> strips;
};

template <typename T>
Plan<T> make_plan(const SegCrossEntropyArgs& a, bool grad) {
  Plan<T> p;
  p.B = a.B; p.K = a.K; p.h = a.h; p.w = a.w; p.H = a.H; p.W = a.W;
  p.identity_x = a.W == a.w;
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
  for (int64_t band = 0; band < p.nbands; ++band) {
    const int64_t Ya = band * p.band_rows;
    const int64_t Yb = std::min(a.H, Ya + p.band_rows);
    p.band_ylo[band] = p.y0[Ya];
    p.band_yhi[band] = p.y1[Yb - 1];
  }
  if (grad) {
    p.first_band.assign(a.h, p.nbands);
    p.last_band.assign(a.h, -1);
    for (int64_t band = 0; band < p.nbands; ++band)
      for (int64_t y = p.band_ylo[band]; y <= p.band_yhi[band]; ++y) {
        p.first_band[y] = std::min(p.first_band[y], band);
        p.last_band[y] = std::max(p.last_band[y], band);
      }
    p.band_row_off.resize(p.nbands);
    int64_t off = 0;
    for (int64_t band = 0; band < p.nbands; ++band) {
      p.band_row_off[band] = off;
      for (int64_t y = p.band_ylo[band]; y <= p.band_yhi[band]; ++y)
        p.halo_index.push_back(p.first_band[y] == p.last_band[y]
                                   ? -1
                                   : static_cast<int32_t>(p.halo_rows++));
      off += p.band_yhi[band] - p.band_ylo[band] + 1;
    }
    for (int64_t y = 0; y < a.h; ++y)
      if (p.first_band[y] != p.last_band[y]) p.fix_rows.push_back(y);
  }

  int64_t sw = ceil_div(kStripElems / std::max<int64_t>(a.K, 1), 16) * 16;
  sw = std::max<int64_t>(sw, 64);
  // Balance the strips: same width up to rounding.
  const int64_t nstrips = ceil_div(a.W, std::min(sw, a.W));
  sw = ceil_div(ceil_div(a.W, nstrips), 4) * 4;
  p.strip_w = std::min(sw, a.W);
  // Integer upsampling factor of the columns (phase-major strips).
  int64_t phase_stride = 0;
  if (a.W >= 2 * a.w && a.W % a.w == 0 && !a.align_corners) phase_stride = a.W / a.w;
  if (a.align_corners && a.w > 1 && a.W > 1 && (a.W - 1) % (a.w - 1) == 0 &&
      a.W - 1 >= 2 * (a.w - 1))
    phase_stride = (a.W - 1) / (a.w - 1);
  for (int64_t Xs = 0; Xs < a.W; Xs += p.strip_w) {
    Strip<T> s;
    s.Xs = Xs;
    s.Xe = std::min(a.W, Xs + p.strip_w);
    s.xlo = p.x0[Xs];
    s.xhi = p.x1[s.Xe - 1];
    if (phase_stride >= 2 && make_phased<T>(s, phase_stride, p.x0, p.x1, p.lx0, p.lx1)) {
      p.strips.push_back(std::move(s));
      continue;
    }
    if (grad && !p.identity_x) {
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

// Valid-pixel flag of a label (and bad-label flag).
template <typename L, bool kKeep>
inline bool classify(L label, int64_t ignore, uint64_t uK, const uint8_t* keep_b, bool* bad,
                     int32_t* cls) {
  const int64_t v = static_cast<int64_t>(label);
  const bool ign = v == ignore;
  const bool inr = static_cast<uint64_t>(v) < uK;
  *bad = !ign && !inr;
  const int32_t t = inr ? static_cast<int32_t>(v) : 0;
  bool val = !ign && inr;
  if (kKeep) val = val && keep_b[t] != 0;
  *cls = t;
  return val;
}

// Counting pass (gradient runs only): number of valid pixels, so that the
// main pass can write the final, scaled gradient, and the first bad label.
template <typename L, bool kKeep>
TaskOut count_valid(const SegCrossEntropyArgs& a, const ParallelFor& pf) {
  const int64_t HW = a.H * a.W;
  const int64_t per_sample = ceil_div(HW, kCountPixels);
  const int64_t ntasks = a.B * per_sample;
  std::vector<TaskOut> outs(ntasks);
  const L* target = static_cast<const L*>(a.target);
  const uint64_t uK = static_cast<uint64_t>(a.K);
  pf(0, ntasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / per_sample;
      const int64_t p0 = (task % per_sample) * kCountPixels;
      const int64_t p1 = std::min(HW, p0 + kCountPixels);
      const uint8_t* keep_b = kKeep ? a.keep + keep_row(b, a.keep_rows) * a.K : nullptr;
      const L* lab = target + b * HW;
      int64_t count = 0;
      bool any_bad = false;
      for (int64_t i = p0; i < p1; ++i) {
        bool bad;
        int32_t cls;
        count += classify<L, kKeep>(lab[i], a.ignore_index, uK, keep_b, &bad, &cls) ? 1 : 0;
        any_bad = any_bad || bad;
      }
      TaskOut& o = outs[task];
      o.count = count;
      if (any_bad) {
        for (int64_t i = p0; i < p1; ++i) {
          const int64_t v = static_cast<int64_t>(lab[i]);
          if (v != a.ignore_index && static_cast<uint64_t>(v) >= uK) {
            o.bad = true;
            o.bad_value = v;
            break;
          }
        }
      }
    }
  });
  TaskOut total;
  for (const TaskOut& o : outs) {
    total.count += o.count;
    if (o.bad && !total.bad) {
      total.bad = true;
      total.bad_value = o.bad_value;
    }
  }
  return total;
}

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
    const S* __restrict row = logits + ((b * p.K + c) * p.h + y) * p.w;
    T* __restrict d = dst + c * p.strip_w;
    if (p.identity_x) {  // W == w (PyTorch copies; lambda0 = 1, lambda1 = 0)
      for (int64_t i = 0; i < n; ++i) d[i] = load_as<T>(row[st.Xs + i]);
      continue;
    }
    const T* __restrict src;
    if constexpr (std::is_same<S, T>::value) {
      src = row;
    } else {
      T* __restrict rb = sc.rowbuf.data();
      for (int64_t x = st.xlo; x <= st.xhi; ++x) rb[x] = load_as<T>(row[x]);
      src = rb;
    }
    if (st.phased) {
      const T* __restrict pl0 = st.pl0.data();
      const T* __restrict pl1 = st.pl1.data();
      for (const auto& run : st.runs) {
        const T* __restrict sa = src + run.x;
        const T* __restrict sb = src + run.x + 1;
        T* __restrict dd = d + run.off;
        const T* __restrict w0 = pl0 + run.off;
        const T* __restrict w1 = pl1 + run.off;
        for (int32_t k = 0; k < run.len; ++k) dd[k] = sa[k] * w0[k] + sb[k] * w1[k];
      }
      const int32_t* __restrict px0 = st.px0.data();
      const int32_t* __restrict px1 = st.px1.data();
      for (int64_t i = st.edge_off; i < n; ++i)
        d[i] = src[px0[i]] * pl0[i] + src[px1[i]] * pl1[i];
      continue;
    }
    for (int64_t i = 0; i < n; ++i) d[i] = src[x0[i]] * l0[i] + src[x1[i]] * l1[i];
  }
}

// Transposed horizontal interpolation of a gradient row slot, added into the
// gradient row `out` (class c at out + c * cstride).
template <typename T>
void flush_row(const Plan<T>& p, const Strip<T>& st, const T* __restrict g, T* __restrict out,
               int64_t cstride) {
  if (p.identity_x) {
    const int64_t n = st.Xe - st.Xs;
    for (int64_t c = 0; c < p.K; ++c) {
      const T* __restrict gc = g + c * p.strip_w;
      T* __restrict oc = out + c * cstride + st.Xs;
      for (int64_t i = 0; i < n; ++i) oc[i] += gc[i];
    }
    return;
  }
  if (st.phased) {
    const int64_t n = st.Xe - st.Xs;
    const T* __restrict pl0 = st.pl0.data();
    const T* __restrict pl1 = st.pl1.data();
    const int32_t* __restrict px0 = st.px0.data();
    const int32_t* __restrict px1 = st.px1.data();
    for (int64_t c = 0; c < p.K; ++c) {
      const T* __restrict gc = g + c * p.strip_w;
      T* __restrict oc = out + c * cstride;
      for (const auto& run : st.runs) {
        const T* __restrict gg = gc + run.off;
        const T* __restrict w0 = pl0 + run.off;
        const T* __restrict w1 = pl1 + run.off;
        T* __restrict oa = oc + run.x;
#pragma GCC ivdep
        for (int32_t k = 0; k < run.len; ++k) oa[k] += w0[k] * gg[k];
        T* __restrict ob = oc + run.x + 1;
#pragma GCC ivdep
        for (int32_t k = 0; k < run.len; ++k) ob[k] += w1[k] * gg[k];
      }
      for (int64_t i = st.edge_off; i < n; ++i) {
        oc[px0[i]] += pl0[i] * gc[i];
        oc[px1[i]] += pl1[i] * gc[i];
      }
    }
    return;
  }
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

// One task: sample b, one band of output rows.  With kGrad, `inv_count` is
// 1 / (number of valid pixels) and the task writes its exclusive gradient rows
// (final values) and its halo rows.
template <typename S, typename L, bool kKeep, bool kGrad>
void run_task(const SegCrossEntropyArgs& a, const Plan<typename OpMath<S>::type>& p,
              int64_t task, Scratch<typename OpMath<S>::type>& sc, TaskOut& out,
              typename OpMath<S>::type inv_count, typename OpMath<S>::type* halo_all) {
  using T = typename OpMath<S>::type;
  const S* logits = static_cast<const S*>(a.logits);
  const L* target = static_cast<const L*>(a.target);
  const int64_t K = p.K;
  const int64_t b = task / p.nbands;
  const int64_t band = task % p.nbands;
  const int64_t Ya = band * p.band_rows;
  const int64_t Yb = std::min(p.H, Ya + p.band_rows);
  const int64_t ylo = p.band_ylo[band];
  const int64_t yhi = p.band_yhi[band];
  T* grad = static_cast<T*>(a.grad);
  const int32_t* halo_idx = kGrad ? p.halo_index.data() + p.band_row_off[band] : nullptr;
  T* halo_b = kGrad ? halo_all + b * p.halo_rows * K * p.w : nullptr;
  // Destination of gradient row y: (pointer to class 0, class stride).
  auto dest = [&](int64_t y, int64_t* cstride) -> T* {
    const int32_t hi = halo_idx[y - ylo];
    if (hi < 0) {
      *cstride = p.h * p.w;
      return grad + (b * K * p.h + y) * p.w;
    }
    *cstride = p.w;
    return halo_b + hi * K * p.w;
  };
  if (kGrad) {
    for (int64_t y = ylo; y <= yhi; ++y) {
      int64_t cs;
      T* d = dest(y, &cs);
      for (int64_t c = 0; c < K; ++c) std::fill(d + c * cs, d + c * cs + p.w, static_cast<T>(0));
    }
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
      if (kGrad && slot_row[s] >= 0) {
        int64_t cs;
        T* d = dest(slot_row[s], &cs);
        flush_row<T>(p, st, sc.grow[s].data(), d, cs);
      }
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
        // Labels -> class index (or -1), valid flag.
        int64_t nvalid = 0;
        auto label_loop = [&](auto label_at) {
          for (int64_t i = 0; i < n; ++i) {
            bool is_bad;
            int32_t t;
            const L lv = label_at(i);
            const bool val = classify<L, kKeep>(lv, ignore, uK, keep_b, &is_bad, &t);
            if (is_bad && !bad) {
              bad = true;
              bad_value = static_cast<int64_t>(lv);
            }
            tc[i] = val ? t : -1;
            vf[i] = val ? static_cast<T>(1) : static_cast<T>(0);
            nvalid += val ? 1 : 0;
          }
        };
        if (st.phased) {
          const int32_t* __restrict ord = st.order.data() + xs;
          label_loop([&](int64_t i) { return lab_row[ord[i]]; });
        } else {
          const L* __restrict lab = lab_row + X0;
          label_loop([&](int64_t i) { return lab[i]; });
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
        exp_shifted_inplace(U, m, ssum, K, n, kTile);
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
          // d loss / d U[c] = (softmax_c - [c == t]) / count on valid pixels.
          for (int64_t i = 0; i < n; ++i) {
            const T inv = inv_count / ssum[i];
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
                const T g = u[i] * r[i] - mask_if(tc[i] == ci, inv_count);
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
                const T g = u[i] * r[i] - mask_if(tc[i] == ci, inv_count);
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
  SegCrossEntropyResult res;
  T* grad = static_cast<T*>(a.grad);
  T inv_count = static_cast<T>(0);
  if (kGrad) {
    // Count first: the main pass then writes the final gradient directly.
    const TaskOut c = count_valid<L, kKeep>(a, pf);
    res.count = c.count;
    if (c.bad) {
      res.bad_label = true;
      res.bad_value = c.bad_value;
      return res;
    }
    if (c.count == 0) {  // no valid pixel: loss 0, gradient 0
      const int64_t n = a.B * a.K * a.h * a.w;
      pf(0, n, 65536, [&](int64_t begin, int64_t end) {
        std::fill(grad + begin, grad + end, static_cast<T>(0));
      });
      return res;
    }
    inv_count = static_cast<T>(1.0 / static_cast<double>(c.count));
  }

  const Plan<T> p = make_plan<T>(a, kGrad);
  std::vector<T> halo;
  if (kGrad) halo.resize(static_cast<size_t>(p.B * p.halo_rows * p.K * p.w));
  std::vector<TaskOut> outs(p.ntasks);
  pf(0, p.ntasks, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> sc(p, kGrad);
    for (int64_t t = begin; t < end; ++t)
      run_task<S, L, kKeep, kGrad>(a, p, t, sc, outs[t], inv_count, halo.data());
  });

  double total = 0.0;
  int64_t count = 0;
  for (const TaskOut& o : outs) {
    total += o.loss;
    count += o.count;
    if (o.bad && !res.bad_label) {
      res.bad_label = true;
      res.bad_value = o.bad_value;
    }
  }
  res.count = count;
  res.loss = count > 0 ? total / static_cast<double>(count) : 0.0;
  if (!kGrad || res.bad_label) return res;

  // Rows shared by several bands: sum the halo rows in band order.  Rows no
  // band touches (downsampling): zero.
  const int64_t nfix = static_cast<int64_t>(p.fix_rows.size());
  pf(0, p.B * nfix, std::max<int64_t>(1, 4096 / std::max<int64_t>(p.K * p.w, 1)),
     [&](int64_t begin, int64_t end) {
       for (int64_t job = begin; job < end; ++job) {
         const int64_t b = job / nfix;
         const int64_t y = p.fix_rows[job % nfix];
         const int64_t f = p.first_band[y], l = p.last_band[y];
         for (int64_t c = 0; c < p.K; ++c) {
           T* __restrict dst = grad + ((b * p.K + c) * p.h + y) * p.w;
           if (f > l) {
             std::fill(dst, dst + p.w, static_cast<T>(0));
             continue;
           }
           for (int64_t band = f; band <= l; ++band) {
             const int64_t hi =
                 p.halo_index[p.band_row_off[band] + y - p.band_ylo[band]];
             const T* __restrict src = halo.data() + ((b * p.halo_rows + hi) * p.K + c) * p.w;
             if (band == f) {
               for (int64_t x = 0; x < p.w; ++x) dst[x] = src[x];
             } else {
#pragma GCC ivdep
               for (int64_t x = 0; x < p.w; ++x) dst[x] += src[x];
             }
           }
         }
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
