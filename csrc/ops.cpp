// Torch bindings of the dropclass_fast CPU kernels.
//
// Converts tensors to raw pointers, validates arguments (ValueError /
// TypeError naming the argument) and calls the torch-free kernels in
// csrc/kernels/, passing a parallel-for functor that runs on the calling
// thread and torch's inter-op pool (see torch_parallel_for).
//
// Schemas (namespace dropclass_fast):
//   channel_mask(Tensor features, Tensor weight, Tensor keep) -> Tensor
//   channel_mask_backward(Tensor grad_out, Tensor features, Tensor weight,
//                         Tensor keep) -> (Tensor, Tensor)
//   seg_cross_entropy(Tensor logits, Tensor target, Tensor? keep,
//                     int ignore_index, bool align_corners, bool compute_grad)
//                     -> (Tensor, Tensor)
//   dropped_class_prob(Tensor logits, Tensor keep, bool compute_grad)
//                      -> (Tensor, Tensor)
//   dropclass_loss(Tensor logits, Tensor drop_logits, Tensor target,
//                  Tensor keep, int ignore_index, bool align_corners,
//                  bool compute_grad)
//                  -> (Tensor ce, Tensor ce_drop, Tensor sup, Tensor grad,
//                      Tensor grad_drop, Tensor grad_sup)
//     The three unweighted terms of the DropClass loss and their gradients
//     (grad_drop: of ce_drop, grad_sup: of sup, both w.r.t. drop_logits).
//     The CUDA kernels get ce_drop and sup from one pass over drop_logits;
//     on the CPU it is the seg_cross_entropy and dropped_class_prob kernels.
// Only CPU kernels are registered here; fake (meta) kernels and autograd are
// registered from Python (torch.library.register_fake / register_autograd).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>

#include "kernels/channel_mask.h"
#include "kernels/common.h"
#include "kernels/dropped_class_prob.h"
#include "kernels/seg_cross_entropy.h"
#include "op_checks.h"

namespace dropclass_fast {
namespace {

namespace kn = ::dropclass_fast::kernels;

// The kernels' parallel-for: splits [begin, end) into chunks of at least
// `grain` (about 4 per thread) that worker threads claim dynamically, which
// balances the load when threads are slowed down unevenly; the kernels'
// results do not depend on which thread runs which chunk.  The workers are
// the calling thread plus tasks on torch's inter-op pool (at::launch): the
// build has no -fopenmp, under which at::parallel_for (a header template
// whose OpenMP path is compiled into the including file) would bring a second
// OpenMP runtime, with its own threads, beside torch's.  Since chunks are
// claimed, the caller never waits for a chunk that has not started: no
// deadlock when called from a pool thread.  The number of threads follows
// torch.set_num_threads, and nested calls (inside a parallel region) run
// serially.
void torch_parallel_for(int64_t begin, int64_t end, int64_t grain, const kn::RangeFn& body) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t nthreads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (nthreads <= 1 || n <= grain) {
    body(begin, end);
    return;
  }
  const int64_t chunk = std::max<int64_t>(grain, (n + 4 * nthreads - 1) / (4 * nthreads));
  const int64_t nchunks = (n + chunk - 1) / chunk;
  const int64_t nworkers = std::min<int64_t>(nthreads, nchunks);
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
    std::exception_ptr error;
    std::atomic_flag error_set = ATOMIC_FLAG_INIT;
  };
  auto state = std::make_shared<State>();
  const kn::RangeFn* fn = &body;  // dereferenced only while the caller waits
  auto work = [state, fn, begin, end, chunk, nchunks]() {
    for (;;) {
      const int64_t i = state->next.fetch_add(1);
      if (i >= nchunks) return;
      try {
        const int64_t b = begin + i * chunk;
        (*fn)(b, std::min(end, b + chunk));
      } catch (...) {
        if (!state->error_set.test_and_set()) state->error = std::current_exception();
      }
      if (state->done.fetch_add(1) + 1 == nchunks) {
        { std::lock_guard<std::mutex> lock(state->mu); }
        state->cv.notify_all();
      }
    }
  };
  for (int64_t t = 1; t < nworkers; ++t) at::launch(work);
  work();
  {
    std::unique_lock<std::mutex> lock(state->mu);
    state->cv.wait(lock, [&] { return state->done.load() == nchunks; });
  }
  if (state->error) std::rethrow_exception(state->error);
}

const kn::ParallelFor& parallel_for() {
  static const kn::ParallelFor pf = torch_parallel_for;
  return pf;
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "dropclass_fast CPU kernel: ", name,
                    " must be a CPU tensor, got device ", t.device());
}

kn::DType float_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return kn::DType::Float32;
    case at::kDouble: return kn::DType::Float64;
    case at::kHalf: return kn::DType::Float16;
    case at::kBFloat16: return kn::DType::BFloat16;
    default: break;
  }
  TORCH_CHECK_TYPE(false, name,
                   " must be a floating-point tensor (float32, float64, float16 or bfloat16), "
                   "got ",
                   t.scalar_type());
  return kn::DType::Float32;
}

// Compute dtype of the kernels' float outputs: float64 for float64 input,
// float32 otherwise.
at::ScalarType opmath_dtype(kn::DType d) { return d == kn::DType::Float64 ? at::kDouble : at::kFloat; }

// Validates a keep mask ([K] or [Bk, K], Bk in {1, B}; values 0/1; every row
// keeps a class) and returns it as a contiguous uint8 [rows, K] tensor.
at::Tensor keep_to_mask(const at::Tensor& keep, int64_t B, int64_t K, const char* ref_name,
                        int64_t* rows) {
  check_cpu(keep, "keep");
  const at::Tensor k2 = checks::keep_rows(keep, B, K, ref_name);
  at::Tensor mask;
  if (k2.scalar_type() == at::kBool) {
    mask = k2.to(at::kByte).contiguous();
  } else {
    at::Tensor kd = k2.detach();
    const at::Tensor not_binary = kd.ne(0).logical_and(kd.ne(1));
    if (not_binary.any().item<bool>()) {
      const double value = kd.masked_select(not_binary).flatten()[0].item<double>();
      TORCH_CHECK_VALUE(false, "keep must contain only 0 and 1 values, got ", checks::shortest_repr(value));
    }
    mask = kd.ne(0).to(at::kByte).contiguous();
  }
  if (mask.numel() > 0) {
    const at::Tensor per_row = mask.sum(1);
    const bool all_rows = per_row.gt(0).all().item<bool>();
    TORCH_CHECK_VALUE(all_rows, "keep drops every class in row ",
                      per_row.eq(0).nonzero().flatten()[0].item<int64_t>(),
                      "; at least one class must be kept");
  }
  *rows = mask.size(0);
  return mask;
}

// ---------------------------------------------------------------------------
// channel_mask
// ---------------------------------------------------------------------------
struct MaskSetup {
  kn::ChannelMaskArgs args;
  at::Tensor features;  // NCHW-contiguous or channels-last-contiguous
  at::Tensor weight;    // [K, C, T] contiguous, compute dtype
  at::Tensor mask;      // uint8 keep
  at::MemoryFormat format = at::MemoryFormat::Contiguous;
};

MaskSetup setup_channel_mask(const at::Tensor& features, const at::Tensor& weight,
                             const at::Tensor& keep) {
  check_cpu(features, "features");
  check_cpu(weight, "weight");
  MaskSetup s;
  const kn::DType dt = float_dtype(features, "features");
  float_dtype(weight, "weight");
  const auto [B, C, K, T] = checks::channel_mask_sizes(features, weight);
  s.features = checks::channel_mask_layout(features, &s.format);
  s.weight = weight.detach().to(opmath_dtype(dt)).contiguous().view({K, C, T});
  int64_t keep_rows = 1;
  s.mask = keep_to_mask(keep, B, K, "features / weight", &keep_rows);
  s.args = checks::channel_mask_args(dt, s.features, s.format, s.weight, s.mask, keep_rows);
  return s;
}

at::Tensor channel_mask_cpu(const at::Tensor& features, const at::Tensor& weight,
                            const at::Tensor& keep) {
  MaskSetup s = setup_channel_mask(features, weight, keep);
  at::Tensor out = at::empty(s.features.sizes(), s.features.options(), s.format);
  if (out.numel() == 0) return out;
  kn::channel_mask_forward(s.args, s.features.data_ptr(), out.data_ptr(), parallel_for());
  return out;
}

std::tuple<at::Tensor, at::Tensor> channel_mask_backward_cpu(const at::Tensor& grad_out,
                                                             const at::Tensor& features,
                                                             const at::Tensor& weight,
                                                             const at::Tensor& keep) {
  MaskSetup s = setup_channel_mask(features, weight, keep);
  check_cpu(grad_out, "grad_out");
  checks::grad_out_like(grad_out, features);
  at::Tensor go = grad_out.contiguous(s.format);
  at::Tensor grad_features = at::empty(s.features.sizes(), s.features.options(), s.format);
  at::Tensor gw = at::empty({s.args.K, s.args.C, s.args.T}, s.weight.options());
  if (grad_features.numel() == 0) {
    gw.zero_();
  } else {
    kn::channel_mask_backward(s.args, go.data_ptr(), s.features.data_ptr(),
                              grad_features.data_ptr(), gw.data_ptr(), parallel_for());
  }
  at::Tensor grad_weight = gw.view(weight.sizes()).to(weight.scalar_type());
  return std::make_tuple(grad_features, grad_weight);
}

// ---------------------------------------------------------------------------
// seg_cross_entropy
// ---------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> seg_cross_entropy_cpu(const at::Tensor& logits_in,
                                                         const at::Tensor& target_in,
                                                         const std::optional<at::Tensor>& keep,
                                                         int64_t ignore_index,
                                                         bool align_corners,
                                                         bool compute_grad) {
  check_cpu(logits_in, "logits");
  check_cpu(target_in, "target");
  const kn::DType dt = float_dtype(logits_in, "logits");
  checks::label_type(target_in);
  const checks::SegCrossEntropySizes n = checks::seg_cross_entropy_sizes(logits_in, target_in);

  at::Tensor mask;
  int64_t keep_rows = 1;
  if (keep.has_value() && keep->defined()) mask = keep_to_mask(*keep, n.B, n.K, "logits", &keep_rows);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const auto opts = logits.options().dtype(opmath_dtype(dt));
  at::Tensor grad = compute_grad ? at::empty({n.B, n.K, n.h, n.w}, opts) : at::empty({0}, opts);
  const kn::SegCrossEntropyArgs a = checks::seg_cross_entropy_args(
      dt, logits, target, n, mask, keep_rows, ignore_index, align_corners, compute_grad ? grad.data_ptr() : nullptr);
  const kn::SegCrossEntropyResult r = kn::seg_cross_entropy(a, parallel_for());
  TORCH_CHECK_VALUE(!r.bad_label, "target contains label ", r.bad_value, " outside [0, ", n.K,
                    ") that is not ignore_index=", ignore_index);
  at::Tensor loss = at::scalar_tensor(r.loss, opts);
  return std::make_tuple(loss, grad);
}

// ---------------------------------------------------------------------------
// dropped_class_prob
// ---------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> dropped_class_prob_cpu(const at::Tensor& logits_in,
                                                          const at::Tensor& keep,
                                                          bool compute_grad) {
  check_cpu(logits_in, "logits");
  const kn::DType dt = float_dtype(logits_in, "logits");
  const checks::LogitsSizes n = checks::logits_sizes(logits_in);

  int64_t keep_rows = 1;
  const at::Tensor mask = keep_to_mask(keep, n.B, n.K, "logits", &keep_rows);
  const at::Tensor logits = logits_in.contiguous();
  const auto opts = logits.options().dtype(opmath_dtype(dt));
  at::Tensor grad = compute_grad ? at::empty({n.B, n.K, n.h, n.w}, opts) : at::empty({0}, opts);
  const kn::DroppedClassProbArgs a =
      checks::dropped_class_prob_args(dt, logits, n, mask, keep_rows, compute_grad ? grad.data_ptr() : nullptr);
  const double loss = kn::dropped_class_prob(a, parallel_for());
  return std::make_tuple(at::scalar_tensor(loss, opts), grad);
}

// ---------------------------------------------------------------------------
// dropclass_loss
// ---------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dropclass_loss_cpu(
    const at::Tensor& logits, const at::Tensor& drop_logits, const at::Tensor& target,
    const at::Tensor& keep, int64_t ignore_index, bool align_corners, bool compute_grad) {
  check_cpu(drop_logits, "drop_logits");
  checks::drop_logits_like(drop_logits, logits);
  auto [ce, grad] = seg_cross_entropy_cpu(logits, target, std::nullopt, ignore_index, align_corners,
                                          compute_grad);
  auto [ce_drop, grad_drop] =
      seg_cross_entropy_cpu(drop_logits, target, keep, ignore_index, align_corners, compute_grad);
  auto [sup, grad_sup] = dropped_class_prob_cpu(drop_logits, keep, compute_grad);
  return std::make_tuple(ce, ce_drop, sup, grad, grad_drop, grad_sup);
}

}  // namespace
}  // namespace dropclass_fast

TORCH_LIBRARY(dropclass_fast, m) {
  m.def("channel_mask(Tensor features, Tensor weight, Tensor keep) -> Tensor");
  m.def(
      "channel_mask_backward(Tensor grad_out, Tensor features, Tensor weight, Tensor keep) "
      "-> (Tensor, Tensor)");
  m.def(
      "seg_cross_entropy(Tensor logits, Tensor target, Tensor? keep, int ignore_index, "
      "bool align_corners, bool compute_grad) -> (Tensor, Tensor)");
  m.def("dropped_class_prob(Tensor logits, Tensor keep, bool compute_grad) -> (Tensor, Tensor)");
  m.def(
      "dropclass_loss(Tensor logits, Tensor drop_logits, Tensor target, Tensor keep, "
      "int ignore_index, bool align_corners, bool compute_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dropclass_fast, CPU, m) {
  m.impl("channel_mask", &dropclass_fast::channel_mask_cpu);
  m.impl("channel_mask_backward", &dropclass_fast::channel_mask_backward_cpu);
  m.impl("seg_cross_entropy", &dropclass_fast::seg_cross_entropy_cpu);
  m.impl("dropped_class_prob", &dropclass_fast::dropped_class_prob_cpu);
  m.impl("dropclass_loss", &dropclass_fast::dropclass_loss_cpu);
}
