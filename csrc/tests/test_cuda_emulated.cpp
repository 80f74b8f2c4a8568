// The CUDA kernels (csrc/kernels/*.cu, run on the CPU through
// cuda_emulation.h) against the CPU kernels: seg_cross_entropy loss and
// gradient, the combined pass (seg_cross_entropy + dropped_class_prob of the
// same logits in one kernel), dropped_class_prob, channel_mask forward /
// backward, keep-mask validation and bad-label reporting.  Built and run by
// tests/test_cuda_build.py; prints one line per failure and a final
// "N passed, M failed" line, exits non-zero on failure.  An argument
// ("quick") restricts seg_cross_entropy to float32 logits and int64 labels.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "channel_mask.h"
#include "cuda_launch.cuh"
#include "dropped_class_prob.h"
#include "seg_cross_entropy.h"
#include "test_harness.h"

using namespace dropclass_fast::kernels;
namespace kc = dropclass_fast::kernels::cuda;
using test_harness::CeCase;
using test_harness::check;

namespace {

// max |got - want| / max |want| (absolute when want is all zero).
double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double scale = 0.0, err = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
    err = std::max(err, static_cast<double>(std::fabs(got[i] - want[i])));
  }
  return scale > 0.0 ? err / scale : err;
}

template <typename S> S to_storage(float v);
template <> float to_storage<float>(float v) { return v; }
template <> half_t to_storage<half_t>(float v) { return {float_to_half(v)}; }
template <> bf16_t to_storage<bf16_t>(float v) { return {float_to_bf16(v)}; }

template <typename S> DType dtype_of();
template <> DType dtype_of<float>() { return DType::Float32; }
template <> DType dtype_of<half_t>() { return DType::Float16; }
template <> DType dtype_of<bf16_t>() { return DType::BFloat16; }

template <typename L> LabelType label_type_of();
template <> LabelType label_type_of<int64_t>() { return LabelType::Int64; }
template <> LabelType label_type_of<int32_t>() { return LabelType::Int32; }
template <> LabelType label_type_of<uint8_t>() { return LabelType::UInt8; }

// keep_mode 0: all kept (1 row), 1: one row, 2: one row per sample.
std::vector<uint8_t> make_keep(int keep_mode, int B, int K, std::mt19937& rng, int* rows) {
  *rows = keep_mode == 2 ? B : 1;
  std::vector<uint8_t> keep(*rows * K, 1);
  if (keep_mode == 0) return keep;
  for (auto& v : keep) v = (rng() % 10) < 7;
  for (int r = 0; r < *rows; ++r) keep[r * K] = 1;
  return keep;
}

// sup: the combined pass (seg_cross_entropy_sup_cuda) against the CPU
// seg_cross_entropy and dropped_class_prob; needs a keep mask (keep_mode > 0).
template <typename S, typename L>
void test_seg_ce(const CeCase& cs, bool grad, bool sup, std::mt19937& rng) {
  char name[256];
  std::snprintf(name, sizeof(name), "seg_ce B%d K%d %dx%d->%dx%d ac=%d keep=%d grad=%d sup=%d S%zu L%zu",
                cs.B, cs.K, cs.h, cs.w, cs.H, cs.W, cs.align_corners, cs.keep_mode, grad, sup,
                sizeof(S), sizeof(L));
  std::normal_distribution<float> normal(0.f, 3.f);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<S> logits(cs.B * cs.K * cs.h * cs.w);
  for (auto& v : logits) v = to_storage<S>(normal(rng));
  std::vector<L> target(cs.B * cs.H * cs.W);
  for (auto& t : target)
    t = uniform(rng) < cs.p_ignore ? static_cast<L>(cs.ignore) : static_cast<L>(rng() % cs.K);
  int rows = 1;
  const std::vector<uint8_t> keep = make_keep(cs.keep_mode, cs.B, cs.K, rng, &rows);

  SegCrossEntropyArgs a;
  a.logits = logits.data();
  a.dtype = dtype_of<S>();
  a.target = target.data();
  a.label_type = label_type_of<L>();
  a.keep = cs.keep_mode ? keep.data() : nullptr;
  a.keep_rows = rows;
  a.B = cs.B; a.K = cs.K; a.h = cs.h; a.w = cs.w; a.H = cs.H; a.W = cs.W;
  a.ignore_index = cs.ignore;
  a.align_corners = cs.align_corners;
  std::vector<float> cpu_grad(logits.size(), 7.f), cuda_grad(logits.size(), 9.f);
  a.grad = grad ? cpu_grad.data() : nullptr;
  const SegCrossEntropyResult want = seg_cross_entropy(a, serial_parallel_for);

  std::vector<float> cpu_sup_grad(logits.size(), 7.f), cuda_sup_grad(logits.size(), 9.f);
  double want_sup = 0.0;
  if (sup) {
    DroppedClassProbArgs d;
    d.logits = a.logits;
    d.dtype = a.dtype;
    d.keep = a.keep;
    d.keep_rows = a.keep_rows;
    d.B = cs.B; d.K = cs.K; d.P = cs.h * cs.w;
    d.grad = grad ? cpu_sup_grad.data() : nullptr;
    want_sup = dropped_class_prob(d, serial_parallel_for);
  }

  a.grad = grad ? cuda_grad.data() : nullptr;
  std::vector<char> workspace(kc::seg_cross_entropy_workspace_bytes(a) + 1);
  kc::CudaStatus status;
  float loss = -1.f, sup_loss = -1.f;
  kc::cuda_status_reset(&status, nullptr);
  const cudaError_t launched =
      sup ? kc::seg_cross_entropy_sup_cuda(a, &loss, &sup_loss, grad ? cuda_sup_grad.data() : nullptr,
                                           &status, workspace.data(), nullptr)
          : kc::seg_cross_entropy_cuda(a, &loss, &status, workspace.data(), nullptr);
  check(launched == cudaSuccess, std::string(name) + " launch");
  check(status.bad_label_index == kc::kNoIndex, std::string(name) + " no bad label");
  const double loss_err = std::fabs(loss - want.loss) / std::max(1.0, std::fabs(want.loss));
  check(loss_err < 2e-6, std::string(name) + " loss " + std::to_string(loss) + " vs " +
                             std::to_string(want.loss));
  if (grad) {
    const double err = relative_error(cuda_grad, cpu_grad);
    check(err < 2e-5, std::string(name) + " grad rel err " + std::to_string(err));
  }
  if (!sup) return;
  check(std::fabs(sup_loss - want_sup) <= 2e-6 * std::max(1e-3, std::fabs(want_sup)),
        std::string(name) + " L_sup " + std::to_string(sup_loss) + " vs " + std::to_string(want_sup));
  if (grad) {
    const double err = relative_error(cuda_sup_grad, cpu_sup_grad);
    check(err < 2e-5, std::string(name) + " L_sup grad rel err " + std::to_string(err));
  }
}

void test_seg_ce_bad_label() {
  std::vector<float> logits(2 * 3 * 4 * 4, 0.5f), grad(logits.size());
  std::vector<int64_t> target(2 * 9 * 9, 1);
  target[100] = 7;
  target[150] = -3;
  target[20] = 255;  // ignore_index
  SegCrossEntropyArgs a;
  a.logits = logits.data();
  a.target = target.data();
  a.B = 2; a.K = 3; a.h = 4; a.w = 4; a.H = 9; a.W = 9;
  for (bool with_grad : {false, true}) {
    a.grad = with_grad ? grad.data() : nullptr;
    std::vector<char> workspace(kc::seg_cross_entropy_workspace_bytes(a) + 1);
    kc::CudaStatus status;
    float loss = 0.f;
    kc::cuda_status_reset(&status, nullptr);
    kc::seg_cross_entropy_cuda(a, &loss, &status, workspace.data(), nullptr);
    check(status.bad_label_index == 100,
          "seg_ce first bad label index " + std::to_string(status.bad_label_index));
  }
}

template <typename S>
void test_dropped_class_prob(int B, int K, int h, int w, int keep_mode, std::mt19937& rng) {
  char name[128];
  std::snprintf(name, sizeof(name), "dcp B%d K%d %dx%d keep=%d S%zu", B, K, h, w, keep_mode,
                sizeof(S));
  std::normal_distribution<float> normal(0.f, 2.f);
  std::vector<S> logits(B * K * h * w);
  for (auto& v : logits) v = to_storage<S>(normal(rng));
  int rows = 1;
  std::vector<uint8_t> keep = make_keep(keep_mode, B, K, rng, &rows);
  if (keep_mode == 1) keep[1 % K] = 0;
  DroppedClassProbArgs a;
  a.logits = logits.data();
  a.dtype = dtype_of<S>();
  a.keep = keep.data();
  a.keep_rows = rows;
  a.B = B; a.K = K; a.P = h * w;
  std::vector<float> cpu_grad(logits.size(), 7.f), cuda_grad(logits.size(), 9.f);
  a.grad = cpu_grad.data();
  const double want = dropped_class_prob(a, serial_parallel_for);
  a.grad = cuda_grad.data();
  std::vector<char> workspace(kc::dropped_class_prob_workspace_bytes(a) + 1);
  float loss = -1.f;
  check(kc::dropped_class_prob_cuda(a, &loss, workspace.data(), nullptr) == cudaSuccess,
        std::string(name) + " launch");
  check(std::fabs(loss - want) <= 2e-6 * std::max(1e-3, std::fabs(want)),
        std::string(name) + " loss " + std::to_string(loss) + " vs " + std::to_string(want));
  const double err = relative_error(cuda_grad, cpu_grad);
  check(err < 2e-5, std::string(name) + " grad rel err " + std::to_string(err));
}

template <typename S>
void test_channel_mask(int B, int C, int h, int w, int K, int T, bool channels_last,
                       int keep_mode, std::mt19937& rng) {
  char name[128];
  std::snprintf(name, sizeof(name), "channel_mask B%d C%d %dx%d K%d T%d cl=%d keep=%d S%zu", B, C,
                h, w, K, T, channels_last, keep_mode, sizeof(S));
  std::normal_distribution<float> normal(0.f, 1.f);
  const size_t n = static_cast<size_t>(B) * C * h * w;
  std::vector<S> features(n), grad_out(n);
  for (auto& v : features) v = to_storage<S>(normal(rng));
  for (auto& v : grad_out) v = to_storage<S>(normal(rng));
  std::vector<float> weight(K * C * T);
  for (auto& v : weight) v = normal(rng);
  int rows = 1;
  const std::vector<uint8_t> keep = make_keep(keep_mode, B, K, rng, &rows);
  ChannelMaskArgs a;
  a.dtype = dtype_of<S>();
  a.channels_last = channels_last;
  a.B = B; a.C = C; a.HW = h * w;
  a.weight = weight.data();
  a.K = K; a.T = T;
  a.keep = keep.data();
  a.keep_rows = rows;
  std::vector<S> cpu_out(n), cuda_out(n), cpu_gf(n), cuda_gf(n);
  std::vector<float> cpu_gw(K * C * T), cuda_gw(K * C * T, 5.f);
  channel_mask_forward(a, features.data(), cpu_out.data(), serial_parallel_for);
  channel_mask_backward(a, grad_out.data(), features.data(), cpu_gf.data(), cpu_gw.data(),
                        serial_parallel_for);
  std::vector<char> workspace(kc::channel_mask_workspace_bytes(a, true) + 1);
  check(kc::channel_mask_forward_cuda(a, features.data(), cuda_out.data(), workspace.data(),
                                      nullptr) == cudaSuccess,
        std::string(name) + " forward launch");
  check(kc::channel_mask_backward_cuda(a, grad_out.data(), features.data(), cuda_gf.data(),
                                       cuda_gw.data(), workspace.data(), nullptr) == cudaSuccess,
        std::string(name) + " backward launch");
  check(std::memcmp(cpu_out.data(), cuda_out.data(), n * sizeof(S)) == 0,
        std::string(name) + " forward (bit-identical)");
  check(std::memcmp(cpu_gf.data(), cuda_gf.data(), n * sizeof(S)) == 0,
        std::string(name) + " grad_features (bit-identical)");
  const double err = relative_error(cuda_gw, cpu_gw);
  check(err < 1e-5, std::string(name) + " grad_weight rel err " + std::to_string(err));
}

void test_keep_mask() {
  const std::vector<float> keep = {1, 0, 1, 0, 0, 0, 1, 0.5f, 1};
  std::vector<uint8_t> mask(keep.size());
  kc::CudaStatus status;
  kc::cuda_status_reset(&status, nullptr);
  kc::keep_mask_cuda(keep.data(), false, 3, 3, mask.data(), &status, nullptr);
  check(status.bad_keep_index == 7, "keep first non-binary index " + std::to_string(status.bad_keep_index));
  check(status.empty_keep_row == 1, "keep first empty row " + std::to_string(status.empty_keep_row));
  check(mask[0] == 1 && mask[1] == 0 && mask[7] == 1, "keep mask values");
}

}  // namespace

// The tile plan leaves room for the kernel's static shared memory: with the
// opt-in limit above a case's dynamic tables but below tables plus static
// scratch, the kernel still launches (fewer rows per tile) and is correct.
void test_seg_ce_static_shared_memory(std::mt19937& rng) {
  const CeCase cs = {1, 150, 4, 6, 13, 22, false, 2, 255, 0.1};
  const int before = test_harness::g_failed;
  emu::largest_dynamic_smem = 0;
  test_seg_ce<float, int64_t>(cs, true, false, rng);
  const size_t tables = emu::largest_dynamic_smem;
  check(tables + emu::kStaticShared > 48 * 1024, "K=150 tables need the opt-in shared memory");
  const size_t saved = emu::max_shared_optin;
  emu::max_shared_optin = tables + emu::kStaticShared / 2;
  emu::largest_dynamic_smem = 0;
  test_seg_ce<float, int64_t>(cs, true, false, rng);
  emu::max_shared_optin = saved;
  check(emu::largest_dynamic_smem < tables, "smaller tiles under a lower shared-memory limit: " +
                                                std::to_string(emu::largest_dynamic_smem) + " vs " +
                                                std::to_string(tables) + " bytes");
  if (test_harness::g_failed != before) std::printf("FAIL (the cases above) static shared memory left out of the tile plan\n");
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  std::mt19937 rng(7);
  test_keep_mask();
  test_seg_ce_bad_label();
  test_seg_ce_static_shared_memory(rng);

  std::vector<CeCase> cases = test_harness::shared_ce_cases();
  cases.insert(cases.end(), {
      {1, 2, 2, 3, 40, 700, false, 0, 255, 0.1},  // a column spans several block passes
      {1, 2, 2, 3, 40, 700, true, 0, 255, 0.1},
      {1, 9, 20, 30, 80, 120, false, 1, 255, 0.1},
      {1, 30, 20, 33, 21, 35, true, 2, 255, 0.1},
      {1, 12, 17, 9, 68, 36, false, 2, 255, 0.1},
      {1, 40, 4, 6, 13, 22, false, 2, 255, 0.1},  // K > 32: shared-memory class storage
  });
  for (const CeCase& cs : cases)
    for (bool grad : {true, false}) {
      test_seg_ce<float, int64_t>(cs, grad, false, rng);
      if (cs.keep_mode > 0) test_seg_ce<float, int64_t>(cs, grad, true, rng);
      if (quick) continue;
      test_seg_ce<half_t, int32_t>(cs, grad, cs.keep_mode > 0, rng);
      if (cs.ignore == 255) test_seg_ce<bf16_t, uint8_t>(cs, grad, false, rng);
    }

  for (int keep_mode : {0, 1, 2}) {
    test_dropped_class_prob<float>(2, 19, 7, 9, keep_mode, rng);    // one element per thread
    test_dropped_class_prob<float>(2, 19, 8, 16, keep_mode, rng);   // 16-byte packets
    test_dropped_class_prob<half_t>(3, 5, 4, 8, keep_mode, rng);
    test_dropped_class_prob<bf16_t>(3, 5, 3, 11, keep_mode, rng);
    test_dropped_class_prob<float>(2, 150, 5, 7, keep_mode, rng);
  }
  for (bool channels_last : {false, true})
    for (int keep_mode : {1, 2}) {
      test_channel_mask<float>(2, 13, 5, 7, 6, 1, channels_last, keep_mode, rng);
      test_channel_mask<float>(2, 16, 8, 8, 6, 9, channels_last, keep_mode, rng);
      test_channel_mask<half_t>(2, 16, 8, 8, 6, 1, channels_last, keep_mode, rng);
      test_channel_mask<bf16_t>(3, 9, 4, 3, 5, 9, channels_last, keep_mode, rng);
      test_channel_mask<float>(2, 8, 100, 90, 4, 1, channels_last, keep_mode, rng);  // several chunks
    }
  return test_harness::summary();
}
