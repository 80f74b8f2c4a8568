// Torch bindings of the dropclass_fast CUDA kernels.
//
// Registers CUDA implementations of the ops that csrc/ops.cpp defines
// (TORCH_LIBRARY(dropclass_fast)), so that one op name dispatches on the
// tensors' device; the fake kernels and autograd formulas registered from
// Python apply to both.  Built only against a CUDA build of torch (setup.py /
// the JIT loader add this file when torch.version.cuda and nvcc are present).
//
// Argument errors raise the same TypeError / ValueError messages as the CPU
// bindings.  Value errors found by the kernels (labels outside [0, K) that are
// not ignore_index, keep values other than 0/1, a keep row without a kept
// class) are written to a device status block and read back once per op,
// after the kernels are queued: one synchronisation, no device-side assert.
// CUDA inputs are float32, float16 or bfloat16 (float64 runs on the CPU
// kernels); losses and gradients are float32.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "../kernels/cuda_launch.cuh"
#include "../op_checks.h"

namespace dropclass_fast {
namespace {

namespace kn = ::dropclass_fast::kernels;
namespace kc = ::dropclass_fast::kernels::cuda;

void check_on_device(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_VALUE(t.is_cuda(), "dropclass_fast CUDA kernel: ", name,
                    " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK_VALUE(t.device() == device, "dropclass_fast CUDA kernel: ", name, " is on ",
                    t.device(), " but the other inputs are on ", device);
}

// Element type of a floating input of the CUDA kernels (float64 excluded).
kn::DType cuda_float_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() != at::kDouble, name,
                   " must be float32, float16 or bfloat16 for the CUDA kernels, got Double "
                   "(float64 runs on the CPU kernels and the eager backend)");
  switch (t.scalar_type()) {
    case at::kFloat: return kn::DType::Float32;
    case at::kHalf: return kn::DType::Float16;
    case at::kBFloat16: return kn::DType::BFloat16;
    default: break;
  }
  TORCH_CHECK_TYPE(false, name,
                   " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
                   t.scalar_type());
  return kn::DType::Float32;
}

cudaStream_t current_stream(const at::Device& device) {
  return c10::cuda::getCurrentCUDAStream(device.index()).stream();
}

// The status block of one op call and the tensors its indices refer to.
struct Status {
  at::Tensor block;        // sizeof(CudaStatus) bytes on the device
  at::Tensor keep_values;  // [rows, K] floating keep values (undefined without keep)
  kc::CudaStatus* device() { return reinterpret_cast<kc::CudaStatus*>(block.data_ptr()); }
};

Status make_status(const at::Device& device, cudaStream_t stream) {
  Status s;
  s.block = at::empty({static_cast<int64_t>(sizeof(kc::CudaStatus))},
                      at::TensorOptions().device(device).dtype(at::kByte));
  C10_CUDA_CHECK(kc::cuda_status_reset(s.device(), stream));
  return s;
}

// Validates the keep shape (as the CPU bindings do) and queues the value
// checks; returns the uint8 [rows, K] device mask.
at::Tensor keep_to_mask(const at::Tensor& keep, int64_t B, int64_t K, const char* ref_name,
                        const at::Device& device, Status* status, cudaStream_t stream,
                        int64_t* rows) {
  check_on_device(keep, "keep", device);
  const at::Tensor k2 = checks::keep_rows(keep, B, K, ref_name);
  const bool is_double = k2.scalar_type() == at::kDouble;
  status->keep_values = (is_double ? k2 : k2.to(at::kFloat)).detach().contiguous();
  *rows = k2.size(0);
  at::Tensor mask = at::empty({*rows, K}, at::TensorOptions().device(device).dtype(at::kByte));
  C10_CUDA_CHECK(kc::keep_mask_cuda(status->keep_values.data_ptr(), is_double, *rows, K,
                                    mask.data_ptr<uint8_t>(), status->device(), stream));
  return mask;
}

// Reads the status block back (the op's one synchronisation) and raises the
// CPU bindings' errors, keep errors first.
void raise_status(const Status& status, const at::Tensor* target, int64_t K, int64_t ignore_index) {
  const at::Tensor host = status.block.to(at::kCPU);
  kc::CudaStatus st;
  std::memcpy(&st, host.data_ptr(), sizeof(st));
  if (st.bad_keep_index != kc::kNoIndex) {
    const double value =
        status.keep_values.flatten()[static_cast<int64_t>(st.bad_keep_index)].item<double>();
    TORCH_CHECK_VALUE(false, "keep must contain only 0 and 1 values, got ", checks::shortest_repr(value));
  }
  TORCH_CHECK_VALUE(st.empty_keep_row == kc::kNoIndex, "keep drops every class in row ",
                    static_cast<int64_t>(st.empty_keep_row), "; at least one class must be kept");
  if (target != nullptr && st.bad_label_index != kc::kNoIndex) {
    const int64_t value = target->flatten()[static_cast<int64_t>(st.bad_label_index)].item<int64_t>();
    TORCH_CHECK_VALUE(false, "target contains label ", value, " outside [0, ", K,
                      ") that is not ignore_index=", ignore_index);
  }
}

at::Tensor workspace(size_t bytes, const at::Device& device) {
  return at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().device(device).dtype(at::kByte));
}

// ---------------------------------------------------------------------------
// channel_mask
// ---------------------------------------------------------------------------
struct MaskSetup {
  kn::ChannelMaskArgs args;
  at::Tensor features;  // NCHW-contiguous or channels-last-contiguous
  at::Tensor weight;    // [K, C, T] float32 contiguous
  at::Tensor mask;      // uint8 keep
  at::MemoryFormat format = at::MemoryFormat::Contiguous;
  Status status;
  cudaStream_t stream = nullptr;
};

MaskSetup setup_channel_mask(const at::Tensor& features, const at::Tensor& weight,
                             const at::Tensor& keep) {
  const at::Device device = features.device();
  check_on_device(features, "features", device);
  check_on_device(weight, "weight", device);
  MaskSetup s;
  const kn::DType dt = cuda_float_dtype(features, "features");
  TORCH_CHECK_TYPE(weight.is_floating_point(),
                   "weight must be a floating-point tensor (float32, float64, float16 or bfloat16), "
                   "got ", weight.scalar_type());
  const auto [B, C, K, T] = checks::channel_mask_sizes(features, weight);
  s.features = checks::channel_mask_layout(features, &s.format);
  s.stream = current_stream(device);
  s.status = make_status(device, s.stream);
  s.weight = weight.detach().to(at::kFloat).contiguous().view({K, C, T});
  int64_t keep_rows = 1;
  s.mask = keep_to_mask(keep, B, K, "features / weight", device, &s.status, s.stream, &keep_rows);
  s.args = checks::channel_mask_args(dt, s.features, s.format, s.weight, s.mask, keep_rows);
  return s;
}

at::Tensor channel_mask_cuda(const at::Tensor& features, const at::Tensor& weight,
                             const at::Tensor& keep) {
  const c10::cuda::CUDAGuard guard(features.device());
  MaskSetup s = setup_channel_mask(features, weight, keep);
  at::Tensor out = at::empty(s.features.sizes(), s.features.options(), s.format);
  at::Tensor ws = workspace(kc::channel_mask_workspace_bytes(s.args, false), features.device());
  C10_CUDA_CHECK(kc::channel_mask_forward_cuda(s.args, s.features.data_ptr(), out.data_ptr(),
                                               ws.data_ptr(), s.stream));
  raise_status(s.status, nullptr, s.args.K, 0);
  return out;
}

std::tuple<at::Tensor, at::Tensor> channel_mask_backward_cuda(const at::Tensor& grad_out,
                                                              const at::Tensor& features,
                                                              const at::Tensor& weight,
                                                              const at::Tensor& keep) {
  const c10::cuda::CUDAGuard guard(features.device());
  MaskSetup s = setup_channel_mask(features, weight, keep);
  check_on_device(grad_out, "grad_out", features.device());
  checks::grad_out_like(grad_out, features);
  const at::Tensor go = grad_out.contiguous(s.format);
  at::Tensor grad_features = at::empty(s.features.sizes(), s.features.options(), s.format);
  at::Tensor gw = at::empty({s.args.K, s.args.C, s.args.T}, s.weight.options());
  at::Tensor ws = workspace(kc::channel_mask_workspace_bytes(s.args, true), features.device());
  C10_CUDA_CHECK(kc::channel_mask_backward_cuda(s.args, go.data_ptr(), s.features.data_ptr(),
                                                grad_features.data_ptr(), gw.data_ptr<float>(),
                                                ws.data_ptr(), s.stream));
  raise_status(s.status, nullptr, s.args.K, 0);
  at::Tensor grad_weight = gw.view(weight.sizes()).to(weight.scalar_type());
  return std::make_tuple(grad_features, grad_weight);
}

// ---------------------------------------------------------------------------
// seg_cross_entropy, and the combined pass of dropclass_loss
// ---------------------------------------------------------------------------
struct CrossEntropyOutputs {
  at::Tensor loss, grad;          // float32 0-dim; [B, K, h, w] float32, or [0] without gradient
  at::Tensor sup_loss, sup_grad;  // the same for L_sup (combined pass only)
};

// Checks `logits_in` against `target` (contiguous, on the same device) and
// queues the fused pass over it: with `keep_mask` ([keep_rows, K] uint8) or
// without, and with L_sup of the same logits when `sup` (keep_mask needed).
// Value errors go to `status`, for the caller to raise.
CrossEntropyOutputs queue_seg_cross_entropy(const at::Tensor& logits_in, const char* logits_name,
                                            const at::Tensor& target, const at::Tensor& keep_mask,
                                            int64_t keep_rows, int64_t ignore_index,
                                            bool align_corners, bool compute_grad, bool sup,
                                            Status* status, cudaStream_t stream) {
  const at::Device device = target.device();
  check_on_device(logits_in, logits_name, device);
  const kn::DType dt = cuda_float_dtype(logits_in, logits_name);
  const checks::SegCrossEntropySizes n = checks::seg_cross_entropy_sizes(logits_in, target, logits_name);
  const at::Tensor logits = logits_in.contiguous();
  const auto opts = logits.options().dtype(at::kFloat);
  const std::vector<int64_t> grad_shape = compute_grad ? std::vector<int64_t>{n.B, n.K, n.h, n.w}
                                                       : std::vector<int64_t>{0};
  CrossEntropyOutputs out;
  out.loss = at::empty({}, opts);
  out.grad = at::empty(grad_shape, opts);

  const kn::SegCrossEntropyArgs a =
      checks::seg_cross_entropy_args(dt, logits, target, n, keep_mask, keep_rows, ignore_index, align_corners,
                                     compute_grad ? out.grad.data_ptr() : nullptr);
  at::Tensor ws = workspace(kc::seg_cross_entropy_workspace_bytes(a), device);
  cudaError_t err;
  if (sup) {
    out.sup_loss = at::empty({}, opts);
    out.sup_grad = at::empty(grad_shape, opts);
    err = kc::seg_cross_entropy_sup_cuda(a, out.loss.data_ptr<float>(), out.sup_loss.data_ptr<float>(),
                                         compute_grad ? out.sup_grad.data_ptr<float>() : nullptr,
                                         status->device(), ws.data_ptr(), stream);
  } else {
    err = kc::seg_cross_entropy_cuda(a, out.loss.data_ptr<float>(), status->device(), ws.data_ptr(), stream);
  }
  TORCH_CHECK_VALUE(err != cudaErrorInvalidConfiguration, "seg_cross_entropy: K=", n.K,
                    " classes need more shared memory per block than this GPU has");
  C10_CUDA_CHECK(err);
  return out;
}

std::tuple<at::Tensor, at::Tensor> seg_cross_entropy_cuda(const at::Tensor& logits,
                                                          const at::Tensor& target_in,
                                                          const std::optional<at::Tensor>& keep,
                                                          int64_t ignore_index,
                                                          bool align_corners,
                                                          bool compute_grad) {
  const at::Device device = logits.device();
  const c10::cuda::CUDAGuard guard(device);
  check_on_device(logits, "logits", device);
  check_on_device(target_in, "target", device);
  cuda_float_dtype(logits, "logits");
  checks::label_type(target_in);
  const auto sizes = checks::seg_cross_entropy_sizes(logits, target_in);

  const cudaStream_t stream = current_stream(device);
  Status status = make_status(device, stream);
  at::Tensor mask;
  int64_t keep_rows = 1;
  if (keep.has_value() && keep->defined())
    mask = keep_to_mask(*keep, sizes.B, sizes.K, "logits", device, &status, stream, &keep_rows);
  const at::Tensor target = target_in.contiguous();
  CrossEntropyOutputs out = queue_seg_cross_entropy(logits, "logits", target, mask, keep_rows, ignore_index,
                                                    align_corners, compute_grad, false, &status, stream);
  raise_status(status, &target, sizes.K, ignore_index);
  return std::make_tuple(out.loss, out.grad);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dropclass_loss_cuda(
    const at::Tensor& logits, const at::Tensor& drop_logits, const at::Tensor& target_in,
    const at::Tensor& keep, int64_t ignore_index, bool align_corners, bool compute_grad) {
  const at::Device device = logits.device();
  const c10::cuda::CUDAGuard guard(device);
  check_on_device(logits, "logits", device);
  check_on_device(drop_logits, "drop_logits", device);
  check_on_device(target_in, "target", device);
  cuda_float_dtype(logits, "logits");
  checks::drop_logits_like(drop_logits, logits);
  checks::label_type(target_in);
  const auto sizes = checks::seg_cross_entropy_sizes(logits, target_in);

  const cudaStream_t stream = current_stream(device);
  Status status = make_status(device, stream);
  int64_t keep_rows = 1;
  const at::Tensor mask = keep_to_mask(keep, sizes.B, sizes.K, "logits", device, &status, stream, &keep_rows);
  const at::Tensor target = target_in.contiguous();
  CrossEntropyOutputs plain = queue_seg_cross_entropy(logits, "logits", target, at::Tensor(), 1, ignore_index,
                                                      align_corners, compute_grad, false, &status, stream);
  CrossEntropyOutputs dropped = queue_seg_cross_entropy(drop_logits, "drop_logits", target, mask, keep_rows,
                                                        ignore_index, align_corners, compute_grad, true,
                                                        &status, stream);
  raise_status(status, &target, sizes.K, ignore_index);
  return std::make_tuple(plain.loss, dropped.loss, dropped.sup_loss, plain.grad, dropped.grad,
                         dropped.sup_grad);
}

// ---------------------------------------------------------------------------
// dropped_class_prob
// ---------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> dropped_class_prob_cuda(const at::Tensor& logits_in,
                                                           const at::Tensor& keep,
                                                           bool compute_grad) {
  const at::Device device = logits_in.device();
  const c10::cuda::CUDAGuard guard(device);
  check_on_device(logits_in, "logits", device);
  const kn::DType dt = cuda_float_dtype(logits_in, "logits");
  const checks::LogitsSizes n = checks::logits_sizes(logits_in);

  const cudaStream_t stream = current_stream(device);
  Status status = make_status(device, stream);
  int64_t keep_rows = 1;
  const at::Tensor mask = keep_to_mask(keep, n.B, n.K, "logits", device, &status, stream, &keep_rows);
  const at::Tensor logits = logits_in.contiguous();
  const auto opts = logits.options().dtype(at::kFloat);
  at::Tensor grad = compute_grad ? at::empty({n.B, n.K, n.h, n.w}, opts) : at::empty({0}, opts);
  at::Tensor loss = at::empty({}, opts);
  const kn::DroppedClassProbArgs a =
      checks::dropped_class_prob_args(dt, logits, n, mask, keep_rows, compute_grad ? grad.data_ptr() : nullptr);
  at::Tensor ws = workspace(kc::dropped_class_prob_workspace_bytes(a), device);
  C10_CUDA_CHECK(kc::dropped_class_prob_cuda(a, loss.data_ptr<float>(), ws.data_ptr(), stream));
  raise_status(status, nullptr, n.K, 0);
  return std::make_tuple(loss, grad);
}

}  // namespace
}  // namespace dropclass_fast

TORCH_LIBRARY_IMPL(dropclass_fast, CUDA, m) {
  m.impl("channel_mask", &dropclass_fast::channel_mask_cuda);
  m.impl("channel_mask_backward", &dropclass_fast::channel_mask_backward_cuda);
  m.impl("seg_cross_entropy", &dropclass_fast::seg_cross_entropy_cuda);
  m.impl("dropped_class_prob", &dropclass_fast::dropped_class_prob_cuda);
  m.impl("dropclass_loss", &dropclass_fast::dropclass_loss_cuda);
}
