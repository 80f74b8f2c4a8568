// Host emulation of the CUDA constructs that csrc/kernels/*.cu use, so that the
// CUDA kernels run (slowly) on a machine without a GPU and can be compared
// with the CPU kernels: tests/test_cuda_build.py rewrites each kernel launch
// `k<<<grid, block, smem, stream>>>(args)` into `emu::launch(grid, block, smem,
// stream, k, args)` and `extern __shared__` into the dynamic buffer below,
// puts one-line cuda_runtime.h / cuda_fp16.h / ... headers that include this
// file first on the include path, and builds test_cuda_emulated.cpp.
//
// A launch runs blockDim.x std::threads (kept from launch to launch) that
// execute the blocks one after the other; __syncthreads is a std::barrier of
// the block, __shfl_down_sync one of its warp (every lane of the warp must call
// it, as on the GPU), atomics take a mutex, and __shared__ variables are
// function statics (one block at a time).
// Dynamic shared memory starts as NaN so that reads of unwritten entries show.
// 1-D launches only.  Needs C++20 (<barrier>).
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1) : x(a) {}
};
namespace emu {
inline thread_local dim3 tIdx, bIdx;
inline dim3 bDim, gDim;
inline std::vector<float> dyn_smem;
inline std::vector<double> shfl_buf;
inline std::barrier<>* bar = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_bars;  // one per warp of the running launch
inline std::mutex& atomic_mutex() { static std::mutex m; return m; }
}  // namespace emu
#define threadIdx emu::tIdx
#define blockIdx emu::bIdx
#define blockDim emu::bDim
#define gridDim emu::gDim

inline void __syncthreads() { emu::bar->arrive_and_wait(); }
// A shuffle synchronises its warp only (as on the GPU), so that a block-level
// race hidden behind a shuffle still shows under ThreadSanitizer.
template <typename T>
T __shfl_down_sync(unsigned, T v, int o) {
  const unsigned t = threadIdx.x;
  std::barrier<>& warp = *emu::warp_bars[t >> 5];
  emu::shfl_buf[t] = static_cast<double>(v);
  warp.arrive_and_wait();
  const unsigned lane = t & 31u;
  T r = (lane + o < 32 && t + o < blockDim.x) ? static_cast<T>(emu::shfl_buf[t + o]) : v;
  warp.arrive_and_wait();
  return r;
}
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  std::lock_guard<std::mutex> g(emu::atomic_mutex());
  const unsigned long long old = *p;
  if (v < old) *p = v;
  return old;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  std::lock_guard<std::mutex> g(emu::atomic_mutex());
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}
inline int atomicOr(int* p, int v) {
  std::lock_guard<std::mutex> g(emu::atomic_mutex());
  const int old = *p;
  *p = old | v;
  return old;
}
template <typename T> inline T __ldg(const T* p) { return *p; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fmul_rn(float a, float b) { return a * b; }

struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };
inline float __half2float(__half h) { return dropclass_fast::kernels::half_to_float(h.bits); }
inline __half __float2half_rn(float f) { return {dropclass_fast::kernels::float_to_half(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return dropclass_fast::kernels::bf16_to_float(h.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {dropclass_fast::kernels::float_to_bf16(f)}; }

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaFuncAttributes { size_t sharedSizeBytes = 0; };

// The driver's shared-memory rules: a block's static plus dynamic shared
// memory is at most 48 KB unless cudaFuncSetAttribute raised the kernel's
// dynamic limit to n, which needs static + n within the opt-in limit (227 KB
// on an H100; tests may lower it).  Every kernel is taken to have
// kStaticShared bytes of static shared memory (ptxas: 272 for seg_ce_kernel).
// A launch past its limit fails: cudaGetLastError reports it.
namespace emu {
inline constexpr size_t kStaticShared = 272;
inline size_t max_shared_optin = 227 * 1024;
inline std::map<std::uintptr_t, size_t> dynamic_limit;
inline size_t largest_dynamic_smem = 0;  // of the launches since a test reset it
inline cudaError_t last_error = cudaSuccess;
template <typename F> std::uintptr_t kernel_key(F f) { return reinterpret_cast<std::uintptr_t>(f); }
}  // namespace emu
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return cudaSuccess; }
inline cudaError_t cudaGetLastError() {
  const cudaError_t err = emu::last_error;
  emu::last_error = cudaSuccess;
  return err;
}
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = static_cast<int>(emu::max_shared_optin);
  return cudaSuccess;
}
template <typename F> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, F) {
  attributes->sharedSizeBytes = emu::kStaticShared;
  return cudaSuccess;
}
template <typename F> cudaError_t cudaFuncSetAttribute(F f, cudaFuncAttribute, int bytes) {
  if (bytes < 0 || emu::kStaticShared + static_cast<size_t>(bytes) > emu::max_shared_optin)
    return cudaErrorInvalidValue;
  emu::dynamic_limit[emu::kernel_key(f)] = static_cast<size_t>(bytes);
  return cudaSuccess;
}

namespace emu {
// The threads of the emulated blocks, kept from launch to launch: starting
// blockDim.x new threads for every launch took most of the sanitizer runs'
// time (a 256-thread launch cost about 0.35 s under ThreadSanitizer).  The
// pool's own lock orders a launch after the previous one, as starting and
// joining the threads did; within a launch the threads meet only at the
// block's and the warps' barriers.
class BlockThreads {
 public:
  ~BlockThreads() {
    {
      std::lock_guard<std::mutex> g(m_);
      stopping_ = true;
      ++generation_;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  // Runs body(t) for t = 0 .. n-1, each on its own thread, all at once;
  // returns when every one has returned.
  void run(unsigned n, const std::function<void(unsigned)>& body) {
    std::unique_lock<std::mutex> g(m_);
    while (threads_.size() < n) {
      const unsigned index = static_cast<unsigned>(threads_.size());
      threads_.emplace_back([this, index, seen = generation_] { work(index, seen); });
    }
    body_ = &body;
    active_ = n;
    remaining_ = n;
    ++generation_;
    wake_.notify_all();
    done_.wait(g, [&] { return remaining_ == 0; });
  }

 private:
  void work(unsigned index, uint64_t seen) {
    for (;;) {
      const std::function<void(unsigned)>* body;
      {
        std::unique_lock<std::mutex> g(m_);
        wake_.wait(g, [&] { return generation_ != seen; });
        seen = generation_;
        if (stopping_) return;
        if (index >= active_) continue;
        body = body_;
      }
      (*body)(index);
      std::lock_guard<std::mutex> g(m_);
      if (--remaining_ == 0) done_.notify_one();
    }
  }

  std::mutex m_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(unsigned)>* body_ = nullptr;
  unsigned active_ = 0, remaining_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};
inline BlockThreads& block_threads() {
  static BlockThreads threads;
  return threads;
}

// blockDim.x threads run the blocks one after the other.
template <typename Kernel, typename... Args>
void launch(unsigned grid, unsigned block, size_t smem, cudaStream_t, Kernel k, Args... args) {
  const auto raised = dynamic_limit.find(kernel_key(k));
  if (smem > (raised != dynamic_limit.end() ? raised->second : 48 * 1024 - kStaticShared)) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  largest_dynamic_smem = std::max(largest_dynamic_smem, smem);
  gDim = dim3(grid);
  bDim = dim3(block);
  shfl_buf.assign(block, 0.0);
  std::barrier<> barrier(block);
  bar = &barrier;
  warp_bars.clear();
  for (unsigned w = 0; w * 32 < block; ++w)
    warp_bars.push_back(std::make_unique<std::barrier<>>(std::min(32u, block - w * 32)));
  block_threads().run(block, [=, &barrier](unsigned t) {
    tIdx = dim3(t);
    for (unsigned b = 0; b < grid; ++b) {
      if (t == 0) dyn_smem.assign(smem / sizeof(float) + 1, std::nanf(""));
      barrier.arrive_and_wait();
      bIdx = dim3(b);
      k(args...);
      barrier.arrive_and_wait();
    }
  });
}
}  // namespace emu
