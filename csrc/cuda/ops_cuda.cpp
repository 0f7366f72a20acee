// CUDA glue: checks tensors, allocates outputs and scratch through torch's caching allocator,
// and calls the launchers of kernels.cu on the current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "epi_fast/cuda_launch.h"

namespace epi_fast {
namespace {

cuda::DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::Float32;
    case at::kHalf: return cuda::DType::Float16;
    case at::kBFloat16: return cuda::DType::BFloat16;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", t);
  }
}

struct RowTable {
  std::vector<at::Tensor> keep_alive;
  std::vector<cuda::RowTensor> rows;
};

RowTable row_table(at::TensorList tensors, at::TensorList grads, const std::vector<int64_t>& offsets) {
  RowTable table;
  for (size_t i = 0; i < tensors.size(); ++i) {
    at::Tensor t = tensors[i].contiguous();
    table.keep_alive.push_back(t);
    const void* grad = nullptr;
    if (!grads.empty()) {
      at::Tensor g = grads[i].contiguous();
      table.keep_alive.push_back(g);
      grad = g.data_ptr();
    }
    const int64_t rows = t.size(0);
    table.rows.push_back({t.data_ptr(), grad, rows, rows ? t.numel() / rows : 0, offsets[i]});
  }
  return table;
}

at::Tensor device_vector(const std::vector<int64_t>& values, const at::Device& device) {
  // Pinned and non-blocking: the copy joins the stream without a host synchronisation (the
  // caching host allocator keeps the buffer alive until the copy has run).
  at::Tensor host = at::tensor(values, at::TensorOptions().dtype(at::kLong)).pin_memory();
  return host.to(device, /*non_blocking=*/true);
}

at::Tensor channel_scores_cuda(at::TensorList tensors, c10::string_view criterion) {
  check_float_list(tensors, "tensors");
  const ScoreKind kind = parse_score_kind(criterion);
  if (kind == ScoreKind::Abs) check_abs_rows(tensors);
  c10::cuda::CUDAGuard guard(tensors[0].device());
  const std::vector<int64_t> offsets = check_offsets(tensors, {}, INT64_MAX);
  RowTable table = row_table(tensors, {}, offsets);
  int64_t total = 0;
  for (const auto& t : tensors) total += t.size(0);
  at::Tensor out = at::empty({total}, tensors[0].options().dtype(at::kFloat));
  cuda::channel_scores(table.rows.data(), static_cast<int64_t>(table.rows.size()),
                       to_dtype(tensors[0].scalar_type()), kind, out.data_ptr<float>(),
                       at::cuda::getCurrentCUDAStream());
  return out;
}

at::Tensor taylor_raw_cuda(at::TensorList params, at::TensorList grads, at::IntArrayRef offsets,
                           int64_t channels) {
  check_pairs(params, grads);
  TORCH_CHECK_VALUE(channels >= 0, "num_channels must be non-negative, got ", channels);
  const std::vector<int64_t> offs = check_offsets(params, offsets, channels);
  RowTable table = row_table(params, grads, offs);
  at::Tensor raw = at::zeros({channels}, params[0].options().dtype(at::kFloat));
  cuda::taylor_raw(table.rows.data(), static_cast<int64_t>(table.rows.size()),
                   to_dtype(params[0].scalar_type()), raw.data_ptr<float>(),
                   at::cuda::getCurrentCUDAStream());
  return raw;
}

at::Tensor taylor_scores_cuda(at::TensorList params, at::TensorList grads, at::IntArrayRef offsets,
                              int64_t channels, c10::string_view mode) {
  const TaylorMode m = parse_taylor_mode(mode);
  check_pairs(params, grads);
  c10::cuda::CUDAGuard guard(params[0].device());
  at::Tensor raw = taylor_raw_cuda(params, grads, offsets, channels);
  cuda::taylor_finish(raw.data_ptr<float>(), channels, m, at::cuda::getCurrentCUDAStream());
  return raw;
}

void taylor_accumulate_cuda(const at::Tensor& acc, const at::Tensor& skipped, at::TensorList params,
                            at::TensorList grads, at::IntArrayRef offsets,
                            const c10::optional<at::Tensor>& inv_scale, c10::string_view mode) {
  const TaylorMode m = parse_taylor_mode(mode);
  check_pairs(params, grads);
  check_accumulators(acc, skipped, params[0]);
  check_inv_scale(inv_scale, acc);
  c10::cuda::CUDAGuard guard(params[0].device());
  at::Tensor scale;
  if (inv_scale.has_value()) scale = inv_scale->to(at::kFloat).contiguous();
  TORCH_CHECK_VALUE(skipped.is_contiguous(), "skipped must be contiguous");
  at::Tensor raw = taylor_raw_cuda(params, grads, offsets, acc.numel());
  at::Tensor flag = at::empty({1}, acc.options().dtype(at::kInt));
  cuda::taylor_accumulate(raw.data_ptr<float>(), acc.numel(),
                          scale.defined() ? scale.data_ptr<float>() : nullptr, m,
                          acc.data_ptr<float>(), skipped.data_ptr<int64_t>(), flag.data_ptr<int>(),
                          at::cuda::getCurrentCUDAStream());
}

at::Tensor group_reduce_cuda(const at::Tensor& scores_in, const at::Tensor& group_ptr_in,
                             const at::Tensor& member_idx_in, c10::string_view reduce) {
  check_scores(scores_in);
  const Reduce red = parse_reduce(reduce);
  TORCH_CHECK_TYPE(group_ptr_in.scalar_type() == at::kLong && member_idx_in.scalar_type() == at::kLong,
                   "group_ptr and member_idx must be int64");
  TORCH_CHECK_VALUE(group_ptr_in.device() == scores_in.device() && member_idx_in.device() == scores_in.device(),
                    "group_ptr and member_idx must be on the scores' device ", scores_in.device());
  const int64_t groups = group_ptr_in.numel() - 1;
  TORCH_CHECK_VALUE(groups >= 1, "group_ptr needs at least two entries (one group)");
  // The index is validated by the Python wrapper; checking it here would cost a device sync
  // on every call.
  c10::cuda::CUDAGuard guard(scores_in.device());
  at::Tensor scores = scores_in.contiguous(), ptr = group_ptr_in.contiguous(), idx = member_idx_in.contiguous();
  at::Tensor out = at::empty({groups}, scores.options());
  cuda::group_reduce(scores.data_ptr<float>(), ptr.data_ptr<int64_t>(), idx.data_ptr<int64_t>(),
                     groups, red, out.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
  return out;
}

std::tuple<at::Tensor, at::Tensor> global_masks_cuda(const at::Tensor& scores_in,
                                                     at::ArrayRef<double> ratios,
                                                     at::IntArrayRef segment_sizes,
                                                     int64_t min_keep) {
  check_scores(scores_in);
  c10::cuda::CUDAGuard guard(scores_in.device());
  at::Tensor scores = scores_in.contiguous();
  const int64_t n = scores.numel();
  TORCH_CHECK_VALUE(n < (int64_t{1} << 31), "global_masks supports up to 2^31 - 1 channels, got ", n);
  const std::vector<int64_t> offsets = segment_offsets(segment_sizes, n);
  const int64_t segments = static_cast<int64_t>(segment_sizes.size());
  const std::vector<int64_t> ks = removal_counts(ratios, n, segment_sizes, min_keep);
  const int64_t m = static_cast<int64_t>(ks.size());
  TORCH_CHECK_VALUE(m <= 65535, "at most 65535 ratios per call, got ", m);
  auto stream = at::cuda::getCurrentCUDAStream();

  at::Tensor keys = at::empty({n}, scores.options().dtype(at::kLong));
  at::Tensor nan_count = at::zeros({1}, scores.options().dtype(at::kInt));
  cuda::channel_keys(scores.data_ptr<float>(), n, reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()),
                     nan_count.data_ptr<int>(), stream);
  // The one host synchronisation: NaN scores must raise, and the error needs the count.
  const int nans = nan_count.item<int>();
  TORCH_CHECK_VALUE(nans == 0, "scores contain ", nans, " NaN value", nans == 1 ? "" : "s",
                    "; masks are undefined");

  at::Tensor ks_dev = device_vector(ks, scores.device());
  at::Tensor offsets_dev;
  if (segments > 0) offsets_dev = device_vector(offsets, scores.device());
  const size_t bytes = cuda::select_masks_workspace(n, segments);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, scores.options().dtype(at::kByte));
  at::Tensor masks = at::empty({m, n}, scores.options().dtype(at::kBool));
  at::Tensor thresholds = at::empty({m}, scores.options());
  cuda::select_masks(reinterpret_cast<const uint64_t*>(keys.data_ptr<int64_t>()), n,
                     segments > 0 ? offsets_dev.data_ptr<int64_t>() : nullptr, segments, min_keep,
                     ks_dev.data_ptr<int64_t>(), m, masks.data_ptr<bool>(),
                     thresholds.data_ptr<float>(), workspace.data_ptr(), bytes, stream);
  return {masks, thresholds};
}

at::Tensor layer_counts_cuda(const at::Tensor& masks_in, at::IntArrayRef segment_sizes) {
  check_masks(masks_in, "masks");
  TORCH_CHECK_VALUE(!segment_sizes.empty(), "segment_sizes is empty");
  c10::cuda::CUDAGuard guard(masks_in.device());
  at::Tensor masks = masks_in.contiguous();
  const int64_t m = masks.size(0), n = masks.size(1);
  TORCH_CHECK_VALUE(m <= 65535, "at most 65535 mask rows per call, got ", m);
  const std::vector<int64_t> offsets = segment_offsets(segment_sizes, n);
  const int64_t segments = static_cast<int64_t>(segment_sizes.size());
  at::Tensor offsets_dev = device_vector(offsets, masks.device());
  at::Tensor counts = at::empty({m, segments}, masks.options().dtype(at::kLong));
  cuda::segment_counts(masks.data_ptr<bool>(), nullptr, m, n, offsets_dev.data_ptr<int64_t>(),
                       segments, counts.data_ptr<int64_t>(), nullptr, at::cuda::getCurrentCUDAStream());
  return counts;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_cuda(const at::Tensor& scores,
                                                                        at::ArrayRef<double> ratios,
                                                                        at::IntArrayRef segment_sizes,
                                                                        int64_t min_keep) {
  return masks_then_counts(global_masks_cuda, layer_counts_cuda, scores, ratios, segment_sizes, min_keep);
}

std::tuple<at::Tensor, at::Tensor> mask_overlap_cuda(const at::Tensor& a_in, const at::Tensor& b_in,
                                                     at::IntArrayRef segment_sizes) {
  check_masks(a_in, "a");
  check_masks(b_in, "b");
  TORCH_CHECK_VALUE(a_in.sizes() == b_in.sizes(), "a has shape ", a_in.sizes(), " but b ", b_in.sizes());
  TORCH_CHECK_VALUE(a_in.device() == b_in.device(), "a is on ", a_in.device(), " but b on ", b_in.device());
  c10::cuda::CUDAGuard guard(a_in.device());
  at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t m = a.size(0), n = a.size(1);
  TORCH_CHECK_VALUE(m <= 65535, "at most 65535 mask rows per call, got ", m);
  std::vector<int64_t> whole{n};
  const std::vector<int64_t> offsets =
      segment_offsets(segment_sizes.empty() ? at::IntArrayRef(whole) : segment_sizes, n);
  const int64_t segments = static_cast<int64_t>(offsets.size()) - 1;
  at::Tensor offsets_dev = device_vector(offsets, a.device());
  at::Tensor both = at::empty({m, segments}, a.options().dtype(at::kLong));
  at::Tensor diff = at::empty({m, segments}, a.options().dtype(at::kLong));
  cuda::segment_counts(a.data_ptr<bool>(), b.data_ptr<bool>(), m, n, offsets_dev.data_ptr<int64_t>(),
                       segments, both.data_ptr<int64_t>(), diff.data_ptr<int64_t>(),
                       at::cuda::getCurrentCUDAStream());
  return {both, diff};
}

}  // namespace

TORCH_LIBRARY_IMPL(epi_fast, CUDA, m) {
  m.impl("channel_scores", &channel_scores_cuda);
  m.impl("taylor_scores", &taylor_scores_cuda);
  m.impl("taylor_accumulate_", &taylor_accumulate_cuda);
  m.impl("group_reduce", &group_reduce_cuda);
  m.impl("global_masks", &global_masks_cuda);
  m.impl("layer_counts", &layer_counts_cuda);
  m.impl("global_masks_counts", &global_masks_counts_cuda);
  m.impl("mask_overlap", &mask_overlap_cuda);
}

}  // namespace epi_fast
