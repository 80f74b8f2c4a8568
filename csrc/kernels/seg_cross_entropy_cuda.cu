// Fused bilinear upsample + softmax cross-entropy (+ gradient), CUDA.
// Semantics in seg_cross_entropy.h; nothing of size B*K*H*W is allocated.
//
// Ownership instead of atomics.  A block owns a tile of TY x TX low-resolution
// pixels of one sample and writes their gradient (final values, once); it
// visits every full-resolution pixel whose bilinear stencil touches the tile
// (the tile's footprint plus a halo of about one upsampling factor), so
// neighbouring blocks recompute their shared halo pixels instead of adding
// into each other's gradient.  Each full-resolution pixel adds to the loss in
// exactly one block: the one owning its top-left source pixel.
//
// Inside a block, a thread owns one full-resolution column X and walks the
// rows Y in order, keeping in registers, per class, the horizontally
// interpolated logits of the two source rows in use (slots A, B) and the
// gradient of those two rows accumulated over the rows Y seen so far:
// R^T G in registers, one output row at a time.  When a source row leaves
// the slots (the walk only moves down) its accumulated gradient goes through
// shared memory and the transposed horizontal interpolation G C, in a fixed
// order, into the block's low-resolution gradient tile.  Every sum has a fixed
// order: results are bit-identical from run to run.
//
// The gradient is d(mean)/d logits, so the number of valid pixels is counted
// first (a pass over the labels that also finds bad labels) and the main pass
// reads it from device memory: no host round trip between the passes.
//
// Per-class storage: registers (K <= 32; KMAX in {8, 16, 24, 32}, loops fully
// unrolled), or shared memory for larger K (32 threads per block).
//
// The combined pass over drop_logits (seg_cross_entropy_sup_cuda): after its
// walk each block also computes L_sup (dropped_class_prob.h) over the pixels
// of its own low-resolution tile, which it has just read (the second read
// comes from cache), and writes their L_sup gradient: one kernel, one pass
// over drop_logits from memory for both terms.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "cuda_common.cuh"

namespace dropclass_fast {
namespace kernels {
namespace cuda {
namespace {

constexpr int kThreadsRegisters = 128;  // output columns per block pass, K <= 32
constexpr int kThreadsShared = 32;      // the same for K > 32
constexpr int64_t kTileRows = 8;        // low-resolution rows per block
constexpr int kCountThreads = 256;

// One axis of the interpolation, exactly as PyTorch's upsample_bilinear2d and
// the CPU kernel's bilinear_coefficients<float> compute it (no contraction
// into fused multiply-adds, so host and device agree bit for bit).
struct Axis {
  int64_t in = 0, out = 0;
  float scale = 0.f;
  bool align_corners = false;
};

Axis make_axis(int64_t in, int64_t out, bool align_corners) {
  Axis a;
  a.in = in;
  a.out = out;
  a.align_corners = align_corners;
  if (align_corners)
    a.scale = out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.f;
  else
    a.scale = static_cast<float>(in) / static_cast<float>(out);
  return a;
}

struct Source {
  int64_t i0, i1;
  float l0, l1;
};

__host__ __device__ inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

__host__ __device__ inline Source source_of(const Axis& a, int64_t d) {
  if (a.in == a.out) return {d, d, 1.f, 0.f};  // PyTorch copies
  float src;
  if (a.align_corners) {
    src = mul_rn(a.scale, static_cast<float>(d));
  } else {
    src = mul_rn(a.scale, static_cast<float>(d) + 0.5f) - 0.5f;
    src = src < 0.f ? 0.f : src;
  }
  int64_t idx = static_cast<int64_t>(floorf(src));
  idx = idx < a.in - 1 ? idx : a.in - 1;
  float lam = src - static_cast<float>(idx);
  lam = lam < 0.f ? 0.f : (lam > 1.f ? 1.f : lam);
  return {idx, idx < a.in - 1 ? idx + 1 : idx, 1.f - lam, lam};
}

// First output index d whose source i1 (kSecond) or i0 is >= target (out when
// none); both are non-decreasing in d.
template <bool kSecond>
__host__ __device__ inline int64_t first_source_at_least(const Axis& a, int64_t target) {
  int64_t lo = 0, hi = a.out;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    const Source s = source_of(a, mid);
    if ((kSecond ? s.i1 : s.i0) >= target)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

struct CeParams {
  const void* logits;
  DType dtype;
  const void* target;
  LabelType label_type;
  const uint8_t* keep;
  int64_t keep_rows;
  int64_t B, K, h, w, H, W, ignore_index;
  Axis ay, ax;
  int64_t TY, TX, tiles_y, tiles_x;
  float* grad;                          // nullptr: loss only
  const unsigned long long* count_in;   // gradient runs: counted beforehand
  unsigned long long* count_out;        // loss-only runs: counted here
  unsigned long long* bad_label;
  double* partial;                      // per-block loss sums
  double* sup_partial;                  // per-block L_sup sums; nullptr: no L_sup (needs keep)
  float* sup_grad;                      // L_sup gradient [B, K, h, w]; nullptr: none
};

// Per-thread class storage: five arrays of K floats.
template <int KMAX>
struct ClassStore {
  float ha[KMAX], hb[KMAX], va[KMAX], vb[KMAX], e[KMAX];
  __device__ explicit ClassStore(float*, int64_t) {}
  __device__ float& HA(int c) { return ha[c]; }
  __device__ float& HB(int c) { return hb[c]; }
  __device__ float& VA(int c) { return va[c]; }
  __device__ float& VB(int c) { return vb[c]; }
  __device__ float& E(int c) { return e[c]; }
};

template <>
struct ClassStore<0> {
  float* base;  // shared memory: array j, class c of this thread at base[(j*K + c) * kThreadsShared]
  int64_t K;
  __device__ ClassStore(float* shared, int64_t k) : base(shared + threadIdx.x), K(k) {}
  __device__ float& at(int j, int c) { return base[(j * K + c) * kThreadsShared]; }
  __device__ float& HA(int c) { return at(0, c); }
  __device__ float& HB(int c) { return at(1, c); }
  __device__ float& VA(int c) { return at(2, c); }
  __device__ float& VB(int c) { return at(3, c); }
  __device__ float& E(int c) { return at(4, c); }
};

template <int KMAX>
__host__ __device__ constexpr int threads_for() {
  return KMAX > 0 ? kThreadsRegisters : kThreadsShared;
}

// Resident blocks per SM to aim for: caps the registers per thread of the
// register-resident variants (65536 / (128 * blocks)) without spilling.
template <int KMAX>
__host__ __device__ constexpr int min_blocks_for() {
  return KMAX == 0 ? 1 : (KMAX <= 16 ? 4 : (KMAX <= 24 ? 3 : 2));
}

// Class loops: fully unrolled over KMAX registers, or a plain loop over K.
#define DCF_FOR_CLASSES(c)                                  \
  _Pragma("unroll") for (int c = 0; c < (KMAX > 0 ? KMAX : K); ++c) \
    if (KMAX > 0 && c >= K) break;                          \
    else

struct SharedLayout {
  int64_t gacc, vrow, cols, ranges, classes, total;  // offsets in 4-byte words
};

__host__ __device__ inline SharedLayout shared_layout(int64_t K, int64_t TY, int64_t TX, int nthreads,
                                                      bool class_arrays) {
  SharedLayout s;
  s.gacc = 0;
  s.vrow = s.gacc + K * TY * TX;
  s.cols = s.vrow + K * nthreads;
  s.ranges = s.cols + 4 * nthreads;
  s.classes = s.ranges + 2 * TX;
  s.total = s.classes + (class_arrays ? 5 * K * nthreads : 0);
  return s;
}

template <int KMAX>
__global__ void __launch_bounds__(threads_for<KMAX>(), min_blocks_for<KMAX>())
    seg_ce_kernel(const CeParams p) {
  constexpr int NT = threads_for<KMAX>();
  extern __shared__ float smem[];
  __shared__ double scratch[32];
  const int tid = threadIdx.x;
  const int K = static_cast<int>(p.K);
  const int64_t tx = blockIdx.x % p.tiles_x;
  const int64_t ty = (blockIdx.x / p.tiles_x) % p.tiles_y;
  const int64_t b = blockIdx.x / (p.tiles_x * p.tiles_y);
  const int64_t ya = ty * p.TY, yb = ya + p.TY < p.h ? ya + p.TY : p.h;
  const int64_t xa = tx * p.TX, xb = xa + p.TX < p.w ? xa + p.TX : p.w;
  const int TXc = static_cast<int>(xb - xa);
  const bool with_grad = p.grad != nullptr;

  const SharedLayout lay = shared_layout(p.K, p.TY, p.TX, NT, KMAX == 0);
  float* gacc = smem + lay.gacc;  // [K][TY][TX]
  float* vrow = smem + lay.vrow;  // [K][NT]
  int* cx0 = reinterpret_cast<int*>(smem + lay.cols);
  int* cx1 = cx0 + NT;
  float* cl0 = smem + lay.cols + 2 * NT;
  float* cl1 = cl0 + NT;
  int* xs = reinterpret_cast<int*>(smem + lay.ranges);
  int* xe = xs + p.TX;
  ClassStore<KMAX> cs(smem + lay.classes, p.K);

  if (with_grad)
    for (int64_t i = tid; i < p.K * p.TY * p.TX; i += NT) gacc[i] = 0.f;
  const float inv_count =
      with_grad && *p.count_in > 0 ? static_cast<float>(1.0 / static_cast<double>(*p.count_in)) : 0.f;
  const uint8_t* keep_b = p.keep ? p.keep + keep_row_of(b, p.keep_rows) * p.K : nullptr;

  const int64_t Ylo = first_source_at_least<true>(p.ay, ya);
  const int64_t Yhi = first_source_at_least<false>(p.ay, yb);
  const int64_t Xlo = first_source_at_least<true>(p.ax, xa);
  const int64_t Xhi = first_source_at_least<false>(p.ax, xb);
  const int64_t plane = p.h * p.w;
  const int64_t logit_base = b * p.K * plane;

  float loss = 0.f;
  unsigned count = 0;
  for (int64_t Xc = Xlo; Xc < Xhi; Xc += NT) {
    const int ncol = static_cast<int>(Xhi - Xc < NT ? Xhi - Xc : NT);
    const int64_t X = Xc + tid;
    const bool active = tid < ncol;
    const Source sx = active ? source_of(p.ax, X) : Source{0, 0, 0.f, 0.f};
    const bool own_x = active && sx.i0 >= xa && sx.i0 < xb;
    if (with_grad) {
      __syncthreads();  // the previous chunk is done with the column tables
      cx0[tid] = static_cast<int>(sx.i0 - xa);
      cx1[tid] = static_cast<int>(sx.i1 - xa);
      cl0[tid] = sx.l0;
      cl1[tid] = sx.l1;
      __syncthreads();
      // Columns of this chunk that touch low-resolution column xa + i: [xs, xe).
      for (int i = tid; i < TXc; i += NT) {
        int lo = 0, hi = ncol;
        while (lo < hi) {
          const int mid = (lo + hi) / 2;
          if (cx1[mid] >= i) hi = mid; else lo = mid + 1;
        }
        xs[i] = lo;
        hi = ncol;
        while (lo < hi) {
          const int mid = (lo + hi) / 2;
          if (cx0[mid] > i) hi = mid; else lo = mid + 1;
        }
        xe[i] = lo;
      }
      __syncthreads();
    }

    // Transposed horizontal interpolation of the gradient of source row r (in
    // slot B when kSlotB) into the tile.  Called by every thread at once.
    auto flush = [&](int64_t r, bool slot_b) {
      if (!with_grad || r < ya || r >= yb) return;
      DCF_FOR_CLASSES(c) { vrow[c * NT + tid] = slot_b ? cs.VB(c) : cs.VA(c); }
      __syncthreads();
      const int64_t yi = r - ya;
      for (int item = tid; item < K * TXc; item += NT) {
        const int c = item / TXc, i = item % TXc;
        float acc = 0.f;
        for (int j = xs[i]; j < xe[i]; ++j) {
          const float wgt = (cx0[j] == i ? cl0[j] : 0.f) + (cx1[j] == i ? cl1[j] : 0.f);
          acc += wgt * vrow[c * NT + j];
        }
        gacc[(c * p.TY + yi) * p.TX + i] += acc;
      }
      __syncthreads();
    };
    // Horizontal interpolation of source row y into slot A or B (the dtype
    // switch outside the class loop).
    auto load_row = [&](int64_t y, bool slot_b) {
      const bool ok = active && y < p.h;
      const int64_t r0 = logit_base + y * p.w + sx.i0, r1 = logit_base + y * p.w + sx.i1;
      auto fill = [&](auto storage_tag) {
        using S = decltype(storage_tag);
        const S* __restrict__ src = static_cast<const S*>(p.logits);
        DCF_FOR_CLASSES(c) {
          float v = 0.f;
          if (ok) v = to_float(src[r0 + c * plane]) * sx.l0 + to_float(src[r1 + c * plane]) * sx.l1;
          if (slot_b) {
            cs.HB(c) = v;
            cs.VB(c) = 0.f;
          } else {
            cs.HA(c) = v;
            cs.VA(c) = 0.f;
          }
        }
      };
      switch (p.dtype) {
        case DType::Float16: fill(__half{}); break;
        case DType::BFloat16: fill(__nv_bfloat16{}); break;
        default: fill(0.f); break;
      }
    };

    int64_t rowA = -1;  // slot A holds source row rowA, slot B row rowA + 1
    for (int64_t Y = Ylo; Y < Yhi; ++Y) {
      const Source sy = source_of(p.ay, Y);
      if (sy.i0 != rowA) {
        if (rowA >= 0 && sy.i0 == rowA + 1) {
          flush(rowA, false);
          DCF_FOR_CLASSES(c) {
            cs.HA(c) = cs.HB(c);
            cs.VA(c) = cs.VB(c);
          }
          rowA = sy.i0;
          load_row(rowA + 1, true);
        } else {
          if (rowA >= 0) {
            flush(rowA, false);
            flush(rowA + 1, true);
          }
          rowA = sy.i0;
          load_row(rowA, false);
          load_row(rowA + 1, true);
        }
      }
      if (!active) continue;
      const int64_t lidx = (b * p.H + Y) * p.W + X;
      const int64_t label = load_label(p.target, p.label_type, lidx);
      if (label == p.ignore_index) continue;
      if (label < 0 || label >= p.K) {
        atomicMin(p.bad_label, static_cast<unsigned long long>(lidx));
        continue;
      }
      const int t = static_cast<int>(label);
      if (keep_b && !keep_b[t]) continue;
      // Softmax over the classes at (Y, X), loss, and the pixel's gradient
      // added to the two source rows' accumulators.  When both source rows
      // are the same (i1 == i0) slot A takes both weights.
      auto pixel = [&](auto one_row_tag) {
        constexpr bool kOneRow = decltype(one_row_tag)::value;
        const float wa = sy.l0, wb = sy.l1;
        // Maximum, denominator and target logit in four interleaved lanes
        // (class c in lane c % 4): short dependency chains.
        float m4[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
        DCF_FOR_CLASSES(c) {
          float& mc = m4[c & 3];
          mc = fmaxf(mc, cs.HA(c) * wa + (kOneRow ? cs.HA(c) : cs.HB(c)) * wb);
        }
        const float m = fmaxf(fmaxf(m4[0], m4[1]), fmaxf(m4[2], m4[3]));
        float s4[4] = {0.f, 0.f, 0.f, 0.f}, zt4[4] = {0.f, 0.f, 0.f, 0.f};
        DCF_FOR_CLASSES(c) {
          const float z = cs.HA(c) * wa + (kOneRow ? cs.HA(c) : cs.HB(c)) * wb;
          const float e = __expf(z - m);
          cs.E(c) = e;
          s4[c & 3] += e;
          zt4[c & 3] = c == t ? z : zt4[c & 3];
        }
        const float s = (s4[0] + s4[1]) + (s4[2] + s4[3]);
        const float zt = (zt4[0] + zt4[1]) + (zt4[2] + zt4[3]);  // one lane holds z_t, the others 0
        if (own_x && sy.i0 >= ya && sy.i0 < yb) {
          loss += logf(s) + m - zt;
          ++count;
        }
        if (!with_grad) return;
        const float r = inv_count / s;
        DCF_FOR_CLASSES(c) {
          const float g = cs.E(c) * r - (c == t ? inv_count : 0.f);
          if (kOneRow) {
            cs.VA(c) += g * (wa + wb);
          } else {
            cs.VA(c) += g * wa;
            cs.VB(c) += g * wb;
          }
        }
      };
      if (sy.i1 == sy.i0)
        pixel(std::true_type{});
      else
        pixel(std::false_type{});
    }
    if (rowA >= 0) {
      flush(rowA, false);
      flush(rowA + 1, true);
    }
  }

  if (with_grad) {
    __syncthreads();
    const int TYc = static_cast<int>(yb - ya);
    for (int item = tid; item < K * TYc * TXc; item += NT) {
      const int c = item / (TYc * TXc), rem = item % (TYc * TXc);
      const int yi = rem / TXc, i = rem % TXc;
      p.grad[logit_base + c * plane + (ya + yi) * p.w + xa + i] = gacc[(c * p.TY + yi) * p.TX + i];
    }
  }
  const double block_loss = block_sum(static_cast<double>(loss), scratch);
  const double block_count = block_sum(static_cast<double>(count), scratch);
  if (tid == 0) {
    p.partial[blockIdx.x] = block_loss;
    if (!with_grad) atomicAdd(p.count_out, static_cast<unsigned long long>(block_count));
  }
  if (p.sup_partial == nullptr) return;

  // L_sup of the tile's pixels, as dropped_class_prob_cuda computes it:
  // dot = scale * sum_dropped e_k / sum_k e_k, grad_c = p_c * (wgt_c - dot).
  const float scale = dropped_pair_scale(p.keep, p.keep_rows, p.K, p.B, plane, scratch);
  bool sample_drops = false;
  for (int c = 0; c < K; ++c) sample_drops |= keep_b[c] == 0;
  const int tile_pixels = static_cast<int>(yb - ya) * TXc;
  auto tile_dropped_prob = [&](auto storage_tag) {
    using S = decltype(storage_tag);
    const S* __restrict__ src = static_cast<const S*>(p.logits) + logit_base;
    float total = 0.f;
    for (int item = tid; item < tile_pixels; item += NT) {
      const int64_t px = (ya + item / TXc) * p.w + xa + item % TXc;
      float* g = p.sup_grad ? p.sup_grad + logit_base + px : nullptr;
      if (!sample_drops) {
        if (g) {
          DCF_FOR_CLASSES(c) { g[c * plane] = 0.f; }
        }
        continue;
      }
      float m = -INFINITY;
      DCF_FOR_CLASSES(c) {
        cs.E(c) = to_float(src[c * plane + px]);
        m = fmaxf(m, cs.E(c));
      }
      float sum = 0.f, dropped_sum = 0.f;
      DCF_FOR_CLASSES(c) {
        const float e = __expf(cs.E(c) - m);
        cs.E(c) = e;
        sum += e;
        dropped_sum += keep_b[c] ? 0.f : e;
      }
      const float inv = 1.f / sum;
      const float dot = scale * dropped_sum * inv;
      total += dot;
      if (g) {
        DCF_FOR_CLASSES(c) { g[c * plane] = cs.E(c) * inv * ((keep_b[c] ? 0.f : scale) - dot); }
      }
    }
    return total;
  };
  float sup = 0.f;
  switch (p.dtype) {
    case DType::Float16: sup = tile_dropped_prob(__half{}); break;
    case DType::BFloat16: sup = tile_dropped_prob(__nv_bfloat16{}); break;
    default: sup = tile_dropped_prob(0.f); break;
  }
  const double block_sup = block_sum(static_cast<double>(sup), scratch);
  if (tid == 0) p.sup_partial[blockIdx.x] = block_sup;
}

#undef DCF_FOR_CLASSES

// Valid-pixel count and first bad label, VEC labels per 16-byte packet.
template <typename L, int VEC>
__global__ void __launch_bounds__(kCountThreads)
    count_kernel(const L* __restrict__ target, int64_t n, int64_t HW, int64_t K, int64_t ignore,
                 const uint8_t* __restrict__ keep, int64_t keep_rows,
                 unsigned long long* count, unsigned long long* bad_label) {
  __shared__ double scratch[32];
  unsigned local = 0;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v * VEC < n;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = v * VEC;
    const Packet<L, VEC> pk = *reinterpret_cast<const Packet<L, VEC>*>(target + e);
    const uint8_t* kb = keep ? keep + keep_row_of(e / HW, keep_rows) * K : nullptr;  // HW % VEC == 0
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int64_t label = static_cast<int64_t>(pk.v[j]);
      if (label == ignore) continue;
      if (label < 0 || label >= K) {
        atomicMin(bad_label, static_cast<unsigned long long>(e + j));
        continue;
      }
      local += (kb == nullptr || kb[label]) ? 1u : 0u;
    }
  }
  const double total = block_sum(static_cast<double>(local), scratch);
  if (threadIdx.x == 0 && total > 0) atomicAdd(count, static_cast<unsigned long long>(total));
}

template <typename L>
void launch_count(const SegCrossEntropyArgs& a, unsigned long long* count, unsigned long long* bad,
                  cudaStream_t stream) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(L));
  const int64_t n = a.B * a.H * a.W, HW = a.H * a.W;
  const L* t = static_cast<const L*>(a.target);
  if (HW % kVec == 0 && aligned16(t)) {
    count_kernel<L, kVec><<<grid_for(n / kVec, kCountThreads * 4), kCountThreads, 0, stream>>>(
        t, n, HW, a.K, a.ignore_index, a.keep, a.keep_rows, count, bad);
  } else {
    count_kernel<L, 1><<<grid_for(n, kCountThreads * 4), kCountThreads, 0, stream>>>(
        t, n, HW, a.K, a.ignore_index, a.keep, a.keep_rows, count, bad);
  }
}

void launch_count_any(const SegCrossEntropyArgs& a, unsigned long long* count,
                      unsigned long long* bad, cudaStream_t stream) {
  switch (a.label_type) {
    case LabelType::UInt8: return launch_count<uint8_t>(a, count, bad, stream);
    case LabelType::Int8: return launch_count<int8_t>(a, count, bad, stream);
    case LabelType::Int16: return launch_count<int16_t>(a, count, bad, stream);
    case LabelType::Int32: return launch_count<int32_t>(a, count, bad, stream);
    case LabelType::Int64: return launch_count<int64_t>(a, count, bad, stream);
  }
}

// Tile sizes: TY source rows, and the widest TX source columns whose
// full-resolution footprint fits one pass of `nthreads` columns (narrower
// tiles when no width fits leave the rest to extra passes), balanced so that
// all column tiles have about the same width.
struct TilePlan {
  int64_t TY, TX, tiles_y, tiles_x;
};

int64_t widest_footprint(const Axis& ax, int64_t TX, const std::vector<int64_t>& i0,
                         const std::vector<int64_t>& i1) {
  int64_t widest = 0;
  for (int64_t xa = 0; xa < ax.in; xa += TX) {
    const int64_t xb = std::min(ax.in, xa + TX);
    const int64_t lo = std::lower_bound(i1.begin(), i1.end(), xa) - i1.begin();
    const int64_t hi = std::lower_bound(i0.begin(), i0.end(), xb) - i0.begin();
    widest = std::max(widest, hi - lo);
  }
  return widest;
}

TilePlan plan_tiles(const Axis& ay, const Axis& ax, int nthreads, int64_t rows) {
  TilePlan t;
  t.TY = std::min(rows, ay.in);
  std::vector<int64_t> i0(ax.out), i1(ax.out);
  for (int64_t X = 0; X < ax.out; ++X) {
    const Source s = source_of(ax, X);
    i0[X] = s.i0;
    i1[X] = s.i1;
  }
  const double ratio = static_cast<double>(ax.out) / static_cast<double>(ax.in);
  int64_t TX = static_cast<int64_t>((nthreads - 2.0 * std::ceil(ratio) - 2.0) / ratio);
  TX = std::max<int64_t>(1, std::min(TX, ax.in));
  while (TX > 1 && widest_footprint(ax, TX, i0, i1) > nthreads) --TX;
  t.tiles_x = ceil_div(ax.in, TX);
  t.TX = ceil_div(ax.in, t.tiles_x);
  t.tiles_y = ceil_div(ay.in, t.TY);
  return t;
}

struct CeWorkspace {
  unsigned long long* count;
  double* partial;
  double* sup_partial;
};

int class_slots(int64_t K) {
  if (K <= 8) return 8;
  if (K <= 16) return 16;
  if (K <= 24) return 24;
  if (K <= 32) return 32;
  return 0;
}

int threads_for_k(int64_t K) { return class_slots(K) > 0 ? kThreadsRegisters : kThreadsShared; }

CeWorkspace carve(const SegCrossEntropyArgs& a, const TilePlan& t, void* base, size_t* bytes) {
  WorkspaceCarver wc(base);
  CeWorkspace ws{};
  ws.count = wc.take<unsigned long long>(1);
  ws.partial = wc.take<double>(a.B * a.h * t.tiles_x);  // enough for any rows per tile
  ws.sup_partial = wc.take<double>(a.B * a.h * t.tiles_x);
  if (bytes) *bytes = wc.bytes();
  return ws;
}

TilePlan plan_for(const SegCrossEntropyArgs& a) {
  return plan_tiles(make_axis(a.h, a.H, a.align_corners), make_axis(a.w, a.W, a.align_corners),
                    threads_for_k(a.K), kTileRows);
}

// Calls `visit(std::integral_constant<int, KMAX>{})` for the kernel variant of `slots` class slots.
template <typename Visitor>
cudaError_t with_variant(int slots, Visitor&& visit) {
  switch (slots) {
    case 8: return visit(std::integral_constant<int, 8>{});
    case 16: return visit(std::integral_constant<int, 16>{});
    case 24: return visit(std::integral_constant<int, 24>{});
    case 32: return visit(std::integral_constant<int, 32>{});
    default: return visit(std::integral_constant<int, 0>{});
  }
}

// The variant's static shared memory (the reductions' scratch), which counts
// against the same per-block limit as the dynamic tile tables.
template <int KMAX>
cudaError_t static_shared_bytes(size_t* bytes) {
  cudaFuncAttributes attributes{};
  const cudaError_t err = cudaFuncGetAttributes(&attributes, seg_ce_kernel<KMAX>);
  *bytes = attributes.sharedSizeBytes;
  return err;
}

// `dynamic_bytes` of dynamic shared memory: past the default 48 KB per block
// (static included) the kernel must opt in to more.
template <int KMAX>
cudaError_t launch_main(const CeParams& p, size_t dynamic_bytes, size_t static_bytes, cudaStream_t stream) {
  constexpr int NT = threads_for<KMAX>();
  if (dynamic_bytes + static_bytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        seg_ce_kernel<KMAX>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dynamic_bytes));
    if (err != cudaSuccess) return err;
  }
  const unsigned grid = static_cast<unsigned>(p.B * p.tiles_y * p.tiles_x);
  seg_ce_kernel<KMAX><<<grid, NT, dynamic_bytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

size_t seg_cross_entropy_workspace_bytes(const SegCrossEntropyArgs& a) {
  if (a.B <= 0 || a.K <= 0 || a.h <= 0 || a.w <= 0 || a.H <= 0 || a.W <= 0) return 0;
  size_t bytes = 0;
  carve(a, plan_for(a), nullptr, &bytes);
  return bytes;
}

namespace {

// The launch behind both entry points; `sup`: the L_sup outputs, or nullptr.
struct SupOutputs {
  float* loss;
  float* grad;
};

cudaError_t run_seg_cross_entropy(const SegCrossEntropyArgs& a, float* loss, const SupOutputs* sup,
                                  CudaStatus* status, void* workspace, cudaStream_t stream) {
  if (a.dtype == DType::Float64) return cudaErrorInvalidValue;
  if (sup != nullptr && a.keep == nullptr) return cudaErrorInvalidValue;
  if (a.B <= 0 || a.K <= 0 || a.h <= 0 || a.w <= 0 || a.H <= 0 || a.W <= 0) {
    const size_t grad_bytes = sizeof(float) * static_cast<size_t>(std::max<int64_t>(0, a.B * a.K * a.h * a.w));
    cudaError_t err = cudaSuccess;
    if (a.grad != nullptr && grad_bytes > 0) err = cudaMemsetAsync(a.grad, 0, grad_bytes, stream);
    if (err == cudaSuccess && sup != nullptr && sup->grad != nullptr && grad_bytes > 0)
      err = cudaMemsetAsync(sup->grad, 0, grad_bytes, stream);
    if (err == cudaSuccess && sup != nullptr) err = cudaMemsetAsync(sup->loss, 0, sizeof(float), stream);
    if (err != cudaSuccess) return err;
    return cudaMemsetAsync(loss, 0, sizeof(float), stream);
  }
  TilePlan t = plan_for(a);
  const int slots = class_slots(a.K);
  const int nthreads = threads_for_k(a.K);
  int device = 0, max_shared = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  size_t static_bytes = 0;
  if (err == cudaSuccess)
    err = with_variant(slots, [&](auto kmax) { return static_shared_bytes<decltype(kmax)::value>(&static_bytes); });
  if (err != cudaSuccess) return err;
  // Fewer rows per tile when the tile's shared memory does not fit (large K).
  auto shared_bytes = [&](const TilePlan& tp) {
    return sizeof(float) * static_cast<size_t>(shared_layout(a.K, tp.TY, tp.TX, nthreads, slots == 0).total);
  };
  auto fits = [&](const TilePlan& tp) { return shared_bytes(tp) + static_bytes <= static_cast<size_t>(max_shared); };
  while (!fits(t) && t.TY > 1) {
    t.TY = (t.TY + 1) / 2;
    t.tiles_y = ceil_div(a.h, t.TY);
  }
  if (!fits(t)) return cudaErrorInvalidConfiguration;

  const CeWorkspace ws = carve(a, t, workspace, nullptr);
  err = cudaMemsetAsync(ws.count, 0, sizeof(unsigned long long), stream);
  if (err != cudaSuccess) return err;
  if (a.grad != nullptr) launch_count_any(a, ws.count, &status->bad_label_index, stream);

  CeParams p{};
  p.logits = a.logits;
  p.dtype = a.dtype;
  p.target = a.target;
  p.label_type = a.label_type;
  p.keep = a.keep;
  p.keep_rows = a.keep_rows;
  p.B = a.B; p.K = a.K; p.h = a.h; p.w = a.w; p.H = a.H; p.W = a.W;
  p.ignore_index = a.ignore_index;
  p.ay = make_axis(a.h, a.H, a.align_corners);
  p.ax = make_axis(a.w, a.W, a.align_corners);
  p.TY = t.TY; p.TX = t.TX; p.tiles_y = t.tiles_y; p.tiles_x = t.tiles_x;
  p.grad = static_cast<float*>(a.grad);
  p.count_in = ws.count;
  p.count_out = ws.count;
  p.bad_label = &status->bad_label_index;
  p.partial = ws.partial;
  p.sup_partial = sup != nullptr ? ws.sup_partial : nullptr;
  p.sup_grad = sup != nullptr ? sup->grad : nullptr;
  const size_t smem = shared_bytes(t);
  err = with_variant(slots, [&](auto kmax) {
    return launch_main<decltype(kmax)::value>(p, smem, static_bytes, stream);
  });
  if (err != cudaSuccess) return err;
  const int64_t blocks = a.B * t.tiles_y * t.tiles_x;
  launch_finalize_loss(ws.partial, blocks, ws.count, loss, stream);
  if (sup != nullptr) launch_finalize_loss(ws.sup_partial, blocks, nullptr, sup->loss, stream);
  return cudaGetLastError();
}

}  // namespace

cudaError_t seg_cross_entropy_cuda(const SegCrossEntropyArgs& a, float* loss, CudaStatus* status,
                                   void* workspace, cudaStream_t stream) {
  return run_seg_cross_entropy(a, loss, nullptr, status, workspace, stream);
}

cudaError_t seg_cross_entropy_sup_cuda(const SegCrossEntropyArgs& a, float* loss, float* sup_loss,
                                       float* sup_grad, CudaStatus* status, void* workspace,
                                       cudaStream_t stream) {
  const SupOutputs sup{sup_loss, sup_grad};
  return run_seg_cross_entropy(a, loss, &sup, status, workspace, stream);
}

}  // namespace cuda
}  // namespace kernels
}  // namespace dropclass_fast
