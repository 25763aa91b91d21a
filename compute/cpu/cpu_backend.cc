#include "compute/cpu/cpu_backend.h"
#include "base/cpus.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <oneapi/dnnl/dnnl.hpp>
#include <optional>
#include <string>
#include <unordered_map>

#include "base/error.h"
#include "compute/kernel_math.h"
#include "compute/rng.h"

namespace shoal {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

memory::desc plain_desc(const memory::dims& dims) {
  switch (dims.size()) {
    case 1:
      return memory::desc(dims, dt::f32, tag::a);
    case 2:
      return memory::desc(dims, dt::f32, tag::ab);
    case 4:
      return memory::desc(dims, dt::f32, tag::abcd);
    case 5:
      return memory::desc(dims, dt::f32, tag::abcde);
    default:
      SHOAL_ASSERT(false, "unsupported rank " << dims.size());
  }
}

void check_cpu_f32(const Tensor& t, const char* what) {
  SHOAL_ASSERT(t.is_cpu() && t.dtype() == DType::f32, what << " must be a CPU f32 tensor, got " << t.describe());
}

// An opaque output the backend allocates on first use: reusable when it already has memory
// for `numel` elements (a default Tensor has shape [] and numel 1, but no memory).
bool holds(const Tensor& t, std::int64_t numel) { return t.raw() != nullptr && t.numel() == numel; }

void check_same_numel(const Tensor& a, const Tensor& b) {
  SHOAL_ASSERT(a.numel() == b.numel(), "size mismatch: " << a.describe() << " vs " << b.describe());
}

// Builds cache keys like "conv:64,1,28,28:32,3:1,1".
std::string make_key(const char* op, std::initializer_list<std::int64_t> values) {
  std::string key(op);
  for (auto v : values) {
    key += ':';
    key += std::to_string(v);
  }
  return key;
}

// One primitive argument that the user holds in a plain layout and the primitive may want in
// another (blocked) one. Reorders go through a scratch buffer owned here.
class Staged {
 public:
  Staged() = default;
  Staged(const memory::desc& user, const memory::desc& internal, const dnnl::engine& engine)
      : user_(user), internal_(internal), engine_(engine), same_(user == internal) {
    if (!same_) {
      scratch_ = memory(internal_, engine_);
    }
  }

  // Memory holding the user's bytes in the internal layout (reorders when needed).
  memory input(dnnl::stream& stream, const void* data) {
    memory user(user_, engine_, const_cast<void*>(data));
    if (same_) return user;
    if (!to_internal_) to_internal_ = dnnl::reorder(user, scratch_);
    to_internal_->execute(stream, user, scratch_);
    return scratch_;
  }

  // Memory a primitive writes into; call finish() afterwards to land it in the user's buffer.
  memory output(void* data) { return same_ ? memory(user_, engine_, data) : scratch_; }

  void finish(dnnl::stream& stream, void* data) {
    if (same_) return;
    memory user(user_, engine_, data);
    if (!to_user_) to_user_ = dnnl::reorder(scratch_, user);
    to_user_->execute(stream, scratch_, user);
  }

 private:
  memory::desc user_, internal_;
  dnnl::engine engine_;
  bool same_ = true;
  memory scratch_;
  std::optional<dnnl::reorder> to_internal_, to_user_;
};

struct ConvEntry {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  Staged fwd_src, fwd_wei, fwd_dst;
  bool has_bwd_data = false;
  dnnl::convolution_backward_data bwd_data;
  Staged bd_diff_dst, bd_wei, bd_diff_src;
  bool has_bwd_weights = false;
  dnnl::convolution_backward_weights bwd_weights;
  Staged bw_src, bw_diff_dst, bw_diff_wei;
  bool bwd_weights_bias = false;
};

struct LinearEntry {
  dnnl::inner_product_forward::primitive_desc fwd_pd;
  dnnl::inner_product_forward fwd;
  std::optional<dnnl::inner_product_backward_data> bwd_data;
  std::optional<dnnl::inner_product_backward_weights> bwd_weights;
  bool bwd_weights_bias = false;
};

struct PoolEntry {
  dnnl::pooling_forward::primitive_desc fwd_pd;
  dnnl::pooling_forward fwd;
  std::optional<dnnl::pooling_backward> bwd;
  Staged src, dst, diff_dst, diff_src;  // the plain tensors <-> the layout the primitives use
};

struct NormEntry {
  dnnl::batch_normalization_forward::primitive_desc fwd_pd;
  dnnl::batch_normalization_forward fwd;
  std::optional<dnnl::batch_normalization_backward> bwd;
  Tensor zero_shift;  // oneDNN's backward asks for the shift argument although it does not read it
};

struct EltwiseEntry {
  dnnl::eltwise_forward fwd;
  dnnl::eltwise_backward bwd;
};

// Loops this long or shorter run on the calling thread. Entering an OpenMP region costs
// libgomp futex calls even when its `if` clause keeps it on one thread (about 7 per parameter
// server round trip of a 4 KB model, measured with perf), so a short loop never enters one.
constexpr std::int64_t kParallelElements = 65536;

template <typename Body>
void elementwise(std::int64_t n, Body body) {
  if (n <= kParallelElements) {
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for simd
  for (std::int64_t i = 0; i < n; ++i) body(i);
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
    threads_ = threads > 0 ? threads : usable_cpus();  // affinity and cgroup quota (base/cpus.h)
    max_threads_ = threads_;
    use_threads();
  }

  void limit_threads(int threads) override { threads_ = std::clamp(threads, 1, max_threads_); }

  Device device() const override { return Device::cpu(); }

  std::string describe() const override {
    const dnnl_version_t* v = dnnl_version();
    return "cpu (oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
           ", " + std::to_string(threads_) + " threads)";
  }

  Tensor allocate(const Shape& shape, DType dtype) override { return Tensor::zeros(shape, dtype); }

  void copy(const Tensor& src, Tensor& dst) override {
    use_threads();
    SHOAL_ASSERT(src.bytes() == dst.bytes(), "copy of " << src.describe() << " into " << dst.describe());
    if (src.raw() != dst.raw() && src.bytes() > 0) std::memcpy(dst.raw(), src.raw(), src.bytes());
  }
  void copy_from_host(const void* src, Tensor& dst) override {
    use_threads();
    if (dst.bytes() > 0) std::memcpy(dst.raw(), src, dst.bytes());
  }
  void copy_to_host(const Tensor& src, void* dst) override {
    use_threads();
    if (src.bytes() > 0) std::memcpy(dst, src.raw(), src.bytes());
  }
  void fill(Tensor& t, float value) override {
    use_threads();
    check_cpu_f32(t, "fill target");
    float* p = t.data<float>();
    std::int64_t n = t.numel();
    elementwise(n, [&](std::int64_t i) { p[i] = value; });
  }
  void synchronize() override {}

  // ---- convolution ----------------------------------------------------------------------

  // oneDNN's weights of a grouped convolution are [G, K/G, C/G, R, R]: the same bytes as ours
  // ([K, C/G, R, R]) with the output channels split by group.
  static memory::dims conv_weight_dims(const Shape& ws, int groups) {
    if (groups == 1) return {ws[0], ws[1], ws[2], ws[3]};
    return {groups, ws[0] / groups, ws[1], ws[2], ws[3]};
  }

  ConvEntry& conv_entry(const Shape& xs, const Shape& ws, bool bias, const Conv2dParams& p) {
    SHOAL_ASSERT(xs.rank() == 4 && ws.rank() == 4 && p.groups >= 1 && xs[1] == ws[1] * p.groups &&
                     ws[0] % p.groups == 0 && ws[2] == ws[3],
                 "bad convolution shapes x " << xs.str() << " w " << ws.str() << " groups " << p.groups);
    std::string key =
        make_key("conv", {xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], p.stride, p.pad, p.groups, bias});
    auto it = convs_.find(key);
    if (it != convs_.end()) return *it->second;

    std::int64_t out_h = window_output_size(xs[2], static_cast<int>(ws[2]), p.stride, p.pad);
    std::int64_t out_w = window_output_size(xs[3], static_cast<int>(ws[3]), p.stride, p.pad);
    memory::dims src{xs[0], xs[1], xs[2], xs[3]}, wei = conv_weight_dims(ws, p.groups),
                 dst{xs[0], ws[0], out_h, out_w};
    memory::dims strides{p.stride, p.stride}, pad{p.pad, p.pad};
    memory::desc src_any(src, dt::f32, tag::any), wei_any(wei, dt::f32, tag::any), dst_any(dst, dt::f32, tag::any);
    memory::desc bias_md({ws[0]}, dt::f32, tag::a);
    auto entry = std::make_unique<ConvEntry>();
    auto desc =
        bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                               src_any, wei_any, bias_md, dst_any, strides, pad, pad)
             : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                               src_any, wei_any, dst_any, strides, pad, pad);
    entry->fwd_pd = dnnl::convolution_forward::primitive_desc(desc, engine_);
    entry->fwd = dnnl::convolution_forward(entry->fwd_pd);
    entry->fwd_src = Staged(plain_desc(src), entry->fwd_pd.src_desc(), engine_);
    entry->fwd_wei = Staged(plain_desc(wei), entry->fwd_pd.weights_desc(), engine_);
    entry->fwd_dst = Staged(plain_desc(dst), entry->fwd_pd.dst_desc(), engine_);
    return *convs_.emplace(key, std::move(entry)).first->second;
  }

  Shape conv_output_shape(const Tensor& x, const Tensor& w, const Conv2dParams& p) {
    return Shape{x.shape()[0], w.shape()[0],
                 window_output_size(x.shape()[2], static_cast<int>(w.shape()[2]), p.stride, p.pad),
                 window_output_size(x.shape()[3], static_cast<int>(w.shape()[3]), p.stride, p.pad)};
  }

  void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y, const Conv2dParams& p) override {
    use_threads();
    check_cpu_f32(x, "conv input");
    SHOAL_ASSERT(y.shape() == conv_output_shape(x, w, p), "conv output " << y.describe());
    ConvEntry& e = conv_entry(x.shape(), w.shape(), bias != nullptr, p);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, e.fwd_src.input(stream_, x.raw())},
                                         {DNNL_ARG_WEIGHTS, e.fwd_wei.input(stream_, w.raw())},
                                         {DNNL_ARG_DST, e.fwd_dst.output(y.raw())}};
    if (bias != nullptr) args.emplace(DNNL_ARG_BIAS, memory(e.fwd_pd.bias_desc(), engine_, bias->raw()));
    e.fwd.execute(stream_, args);
    e.fwd_dst.finish(stream_, y.raw());
    stream_.wait();
  }

  void conv2d_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx, const Conv2dParams& p) override {
    use_threads();
    ConvEntry& e = conv_entry(dx.shape(), w.shape(), false, p);
    if (!e.has_bwd_data) {
      auto fd = e.fwd_pd.src_desc().dims();
      memory::desc src_any(e.fwd_pd.src_desc().dims(), dt::f32, tag::any);
      memory::desc wei_any(e.fwd_pd.weights_desc().dims(), dt::f32, tag::any);
      memory::desc dst_any(e.fwd_pd.dst_desc().dims(), dt::f32, tag::any);
      memory::dims strides{p.stride, p.stride}, pad{p.pad, p.pad};
      dnnl::convolution_backward_data::primitive_desc pd(
          dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, src_any, wei_any, dst_any, strides,
                                                pad, pad),
          engine_, e.fwd_pd);
      e.bwd_data = dnnl::convolution_backward_data(pd);
      e.bd_diff_dst = Staged(plain_desc(e.fwd_pd.dst_desc().dims()), pd.diff_dst_desc(), engine_);
      e.bd_wei = Staged(plain_desc(e.fwd_pd.weights_desc().dims()), pd.weights_desc(), engine_);
      e.bd_diff_src = Staged(plain_desc(fd), pd.diff_src_desc(), engine_);
      e.has_bwd_data = true;
    }
    e.bwd_data.execute(stream_, {{DNNL_ARG_DIFF_DST, e.bd_diff_dst.input(stream_, dy.raw())},
                                 {DNNL_ARG_WEIGHTS, e.bd_wei.input(stream_, w.raw())},
                                 {DNNL_ARG_DIFF_SRC, e.bd_diff_src.output(dx.raw())}});
    e.bd_diff_src.finish(stream_, dx.raw());
    stream_.wait();
  }

  void conv2d_backward_weights(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* dbias,
                               const Conv2dParams& p) override {
    use_threads();
    // The forward entry is keyed with the bias flag; backward weights follows it.
    ConvEntry& e = conv_entry(x.shape(), dw.shape(), dbias != nullptr, p);
    if (!e.has_bwd_weights) {
      memory::desc src_any(e.fwd_pd.src_desc().dims(), dt::f32, tag::any);
      memory::desc wei_any(e.fwd_pd.weights_desc().dims(), dt::f32, tag::any);
      memory::desc dst_any(e.fwd_pd.dst_desc().dims(), dt::f32, tag::any);
      memory::desc bias_md({dw.shape()[0]}, dt::f32, tag::a);
      memory::dims strides{p.stride, p.stride}, pad{p.pad, p.pad};
      auto desc = dbias != nullptr
                      ? dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, src_any, wei_any,
                                                                 bias_md, dst_any, strides, pad, pad)
                      : dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, src_any, wei_any,
                                                                 dst_any, strides, pad, pad);
      dnnl::convolution_backward_weights::primitive_desc pd(desc, engine_, e.fwd_pd);
      e.bwd_weights = dnnl::convolution_backward_weights(pd);
      e.bw_src = Staged(plain_desc(e.fwd_pd.src_desc().dims()), pd.src_desc(), engine_);
      e.bw_diff_dst = Staged(plain_desc(e.fwd_pd.dst_desc().dims()), pd.diff_dst_desc(), engine_);
      e.bw_diff_wei = Staged(plain_desc(e.fwd_pd.weights_desc().dims()), pd.diff_weights_desc(), engine_);
      e.bwd_weights_bias = dbias != nullptr;
      e.has_bwd_weights = true;
    }
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, e.bw_src.input(stream_, x.raw())},
                                         {DNNL_ARG_DIFF_DST, e.bw_diff_dst.input(stream_, dy.raw())},
                                         {DNNL_ARG_DIFF_WEIGHTS, e.bw_diff_wei.output(dw.raw())}};
    if (dbias != nullptr)
      args.emplace(DNNL_ARG_DIFF_BIAS, memory({{dw.shape()[0]}, dt::f32, tag::a}, engine_, dbias->raw()));
    e.bwd_weights.execute(stream_, args);
    e.bw_diff_wei.finish(stream_, dw.raw());
    stream_.wait();
  }

  // ---- inner product ----------------------------------------------------------------------

  LinearEntry& linear_entry(std::int64_t n, std::int64_t in, std::int64_t out, bool bias) {
    std::string key = make_key("ip", {n, in, out, bias});
    auto it = linears_.find(key);
    if (it != linears_.end()) return *it->second;
    memory::desc src({n, in}, dt::f32, tag::ab), wei({out, in}, dt::f32, tag::ab), dst({n, out}, dt::f32, tag::ab);
    memory::desc bias_md({out}, dt::f32, tag::a);
    auto desc = bias ? dnnl::inner_product_forward::desc(dnnl::prop_kind::forward_training, src, wei, bias_md, dst)
                     : dnnl::inner_product_forward::desc(dnnl::prop_kind::forward_training, src, wei, dst);
    auto entry = std::make_unique<LinearEntry>();
    entry->fwd_pd = dnnl::inner_product_forward::primitive_desc(desc, engine_);
    entry->fwd = dnnl::inner_product_forward(entry->fwd_pd);
    return *linears_.emplace(key, std::move(entry)).first->second;
  }

  static std::int64_t rows(const Tensor& t) { return t.shape()[0]; }
  static std::int64_t cols(const Tensor& t) { return t.numel() / std::max<std::int64_t>(1, t.shape()[0]); }

  void linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    use_threads();
    SHOAL_ASSERT(w.shape().rank() == 2 && cols(x) == w.shape()[1] && y.numel() == rows(x) * w.shape()[0],
                 "bad linear shapes x " << x.describe() << " w " << w.describe() << " y " << y.describe());
    std::int64_t n = rows(x), in = w.shape()[1], out = w.shape()[0];
    LinearEntry& e = linear_entry(n, in, out, bias != nullptr);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory({{n, in}, dt::f32, tag::ab}, engine_, x.raw())},
                                         {DNNL_ARG_WEIGHTS, memory({{out, in}, dt::f32, tag::ab}, engine_, w.raw())},
                                         {DNNL_ARG_DST, memory({{n, out}, dt::f32, tag::ab}, engine_, y.raw())}};
    if (bias != nullptr) args.emplace(DNNL_ARG_BIAS, memory({{out}, dt::f32, tag::a}, engine_, bias->raw()));
    e.fwd.execute(stream_, args);
    stream_.wait();
  }

  void linear_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx) override {
    use_threads();
    std::int64_t n = rows(dx), in = w.shape()[1], out = w.shape()[0];
    SHOAL_ASSERT(cols(dx) == in && dy.numel() == n * out, "bad linear backward shapes");
    // The forward pd is only a hint; any cached forward of these sizes will do.
    LinearEntry& e = linear_entry(n, in, out, true);
    memory::desc src({n, in}, dt::f32, tag::ab), wei({out, in}, dt::f32, tag::ab), dst({n, out}, dt::f32, tag::ab);
    if (!e.bwd_data) {
      dnnl::inner_product_backward_data::primitive_desc pd(dnnl::inner_product_backward_data::desc(src, wei, dst),
                                                           engine_, e.fwd_pd);
      e.bwd_data = dnnl::inner_product_backward_data(pd);
    }
    e.bwd_data->execute(stream_, {{DNNL_ARG_DIFF_DST, memory(dst, engine_, dy.raw())},
                                  {DNNL_ARG_WEIGHTS, memory(wei, engine_, w.raw())},
                                  {DNNL_ARG_DIFF_SRC, memory(src, engine_, dx.raw())}});
    stream_.wait();
  }

  void linear_backward_weights(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* dbias) override {
    use_threads();
    std::int64_t n = rows(x), in = dw.shape()[1], out = dw.shape()[0];
    SHOAL_ASSERT(cols(x) == in && dy.numel() == n * out, "bad linear backward shapes");
    LinearEntry& e = linear_entry(n, in, out, true);
    memory::desc src({n, in}, dt::f32, tag::ab), wei({out, in}, dt::f32, tag::ab), dst({n, out}, dt::f32, tag::ab);
    memory::desc bias_md({out}, dt::f32, tag::a);
    if (!e.bwd_weights || e.bwd_weights_bias != (dbias != nullptr)) {
      auto desc = dbias != nullptr ? dnnl::inner_product_backward_weights::desc(src, wei, bias_md, dst)
                                   : dnnl::inner_product_backward_weights::desc(src, wei, dst);
      dnnl::inner_product_backward_weights::primitive_desc pd(desc, engine_, e.fwd_pd);
      e.bwd_weights = dnnl::inner_product_backward_weights(pd);
      e.bwd_weights_bias = dbias != nullptr;
    }
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(src, engine_, x.raw())},
                                         {DNNL_ARG_DIFF_DST, memory(dst, engine_, dy.raw())},
                                         {DNNL_ARG_DIFF_WEIGHTS, memory(wei, engine_, dw.raw())}};
    if (dbias != nullptr) args.emplace(DNNL_ARG_DIFF_BIAS, memory(bias_md, engine_, dbias->raw()));
    e.bwd_weights->execute(stream_, args);
    stream_.wait();
  }

  // ---- ReLU ------------------------------------------------------------------------------

  EltwiseEntry& relu_entry(std::int64_t n) {
    std::string key = make_key("relu", {n});
    auto it = relus_.find(key);
    if (it != relus_.end()) return *it->second;
    memory::desc md({n}, dt::f32, tag::a);
    dnnl::eltwise_forward::primitive_desc fpd(
        dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_relu_use_dst_for_bwd,
                                    md, 0.f, 0.f),
        engine_);
    dnnl::eltwise_backward::primitive_desc bpd(
        dnnl::eltwise_backward::desc(dnnl::algorithm::eltwise_relu_use_dst_for_bwd, md, md, 0.f, 0.f), engine_, fpd);
    auto entry = std::make_unique<EltwiseEntry>(EltwiseEntry{dnnl::eltwise_forward(fpd), dnnl::eltwise_backward(bpd)});
    return *relus_.emplace(key, std::move(entry)).first->second;
  }

  void relu_forward(const Tensor& x, Tensor& y) override {
    use_threads();
    check_same_numel(x, y);
    memory::desc md({x.numel()}, dt::f32, tag::a);
    relu_entry(x.numel()).fwd.execute(
        stream_, {{DNNL_ARG_SRC, memory(md, engine_, x.raw())}, {DNNL_ARG_DST, memory(md, engine_, y.raw())}});
    stream_.wait();
  }

  void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) override {
    use_threads();
    check_same_numel(y, dy);
    check_same_numel(y, dx);
    memory::desc md({y.numel()}, dt::f32, tag::a);
    relu_entry(y.numel()).bwd.execute(stream_, {{DNNL_ARG_DST, memory(md, engine_, y.raw())},
                                                {DNNL_ARG_DIFF_DST, memory(md, engine_, dy.raw())},
                                                {DNNL_ARG_DIFF_SRC, memory(md, engine_, dx.raw())}});
    stream_.wait();
  }

  // ---- clip (ReLU6) and channel concatenation ------------------------------------------------

  void clip_forward(const Tensor& x, Tensor& y, float lo, float hi) override {
    use_threads();
    check_same_numel(x, y);
    const float* xs = x.data<float>();
    float* ys = y.data<float>();
    elementwise(x.numel(), [&](std::int64_t i) { ys[i] = std::min(std::max(xs[i], lo), hi); });
  }

  void clip_backward(const Tensor& y, const Tensor& dy, Tensor& dx, float lo, float hi) override {
    use_threads();
    check_same_numel(y, dy);
    check_same_numel(y, dx);
    const float* ys = y.data<float>();
    const float* g = dy.data<float>();
    float* out = dx.data<float>();
    elementwise(y.numel(), [&](std::int64_t i) { out[i] = ys[i] > lo && ys[i] < hi ? g[i] : 0.f; });
  }

  // Rows of [N, C_i * inner] floats interleaved into [N, sum C_i * inner].
  template <typename Copy>
  static void for_each_part_row(const Shape& whole, const std::vector<const Shape*>& parts, Copy copy) {
    const std::int64_t n = whole[0], whole_row = whole.numel() / std::max<std::int64_t>(1, n);
    std::int64_t offset = 0;
    for (std::size_t i = 0; i < parts.size(); ++i) {
      const std::int64_t row = parts[i]->numel() / std::max<std::int64_t>(1, n);
      SHOAL_ASSERT((*parts[i])[0] == n, "concat part " << parts[i]->str() << " vs " << whole.str());
#pragma omp parallel for if (n * row > 65536)
      for (std::int64_t r = 0; r < n; ++r) copy(i, r * row, r * whole_row + offset, row);
      offset += row;
    }
    SHOAL_ASSERT(offset == whole_row, "concat parts do not fill " << whole.str());
  }

  void concat_channels(const std::vector<const Tensor*>& parts, Tensor& y) override {
    use_threads();
    std::vector<const Shape*> shapes;
    for (const Tensor* t : parts) shapes.push_back(&t->shape());
    float* out = y.data<float>();
    for_each_part_row(y.shape(), shapes, [&](std::size_t i, std::int64_t from, std::int64_t to, std::int64_t count) {
      std::memcpy(out + to, parts[i]->data<float>() + from, static_cast<std::size_t>(count) * sizeof(float));
    });
  }

  void split_channels(const Tensor& dy, const std::vector<Tensor*>& parts) override {
    use_threads();
    std::vector<const Shape*> shapes;
    for (const Tensor* t : parts) shapes.push_back(&t->shape());
    const float* in = dy.data<float>();
    for_each_part_row(dy.shape(), shapes, [&](std::size_t i, std::int64_t from, std::int64_t to, std::int64_t count) {
      std::memcpy(parts[i]->data<float>() + from, in + to, static_cast<std::size_t>(count) * sizeof(float));
    });
  }

  // ---- pooling ---------------------------------------------------------------------------

  PoolEntry& pool_entry(const Shape& xs, const PoolParams& p) {
    SHOAL_ASSERT(xs.rank() == 4, "pooling needs NCHW input, got " << xs.str());
    std::string key =
        make_key("pool", {xs[0], xs[1], xs[2], xs[3], static_cast<int>(p.kind), p.kernel, p.stride, p.pad});
    auto it = pools_.find(key);
    if (it != pools_.end()) return *it->second;
    memory::dims src{xs[0], xs[1], xs[2], xs[3]};
    memory::dims dst{xs[0], xs[1], window_output_size(xs[2], p.kernel, p.stride, p.pad),
                     window_output_size(xs[3], p.kernel, p.stride, p.pad)};
    auto algo = p.kind == PoolKind::max ? dnnl::algorithm::pooling_max : dnnl::algorithm::pooling_avg_exclude_padding;
    auto entry = std::make_unique<PoolEntry>();
    auto build = [&](const memory::desc& s, const memory::desc& d) {
      entry->fwd_pd = dnnl::pooling_forward::primitive_desc(
          dnnl::pooling_forward::desc(dnnl::prop_kind::forward_training, algo, s, d, {p.stride, p.stride},
                                      {p.kernel, p.kernel}, {p.pad, p.pad}, {p.pad, p.pad}),
          engine_);
    };
    build(plain_desc(src), plain_desc(dst));
    // Where oneDNN has no vectorised pooling for plain NCHW (2.6 on AVX2: "simple_nchw", 25x
    // slower than its JIT kernel on 8-channel blocks, and half of a `cnn` step), pool in the
    // blocked layout and reorder at the edges.
    const std::string impl = entry->fwd_pd.impl_info_str();
    if ((impl.find("simple") != std::string::npos || impl.find("ref") != std::string::npos) && xs[1] % 8 == 0)
      build(memory::desc(src, dt::f32, tag::aBcd8b), memory::desc(dst, dt::f32, tag::aBcd8b));
    entry->fwd = dnnl::pooling_forward(entry->fwd_pd);
    dnnl::pooling_backward::primitive_desc bpd(
        dnnl::pooling_backward::desc(algo, entry->fwd_pd.src_desc(), entry->fwd_pd.dst_desc(), {p.stride, p.stride},
                                     {p.kernel, p.kernel}, {p.pad, p.pad}, {p.pad, p.pad}),
        engine_, entry->fwd_pd);
    entry->bwd = dnnl::pooling_backward(bpd);
    entry->src = Staged(plain_desc(src), entry->fwd_pd.src_desc(), engine_);
    entry->dst = Staged(plain_desc(dst), entry->fwd_pd.dst_desc(), engine_);
    entry->diff_dst = Staged(plain_desc(dst), bpd.diff_dst_desc(), engine_);
    entry->diff_src = Staged(plain_desc(src), bpd.diff_src_desc(), engine_);
    return *pools_.emplace(key, std::move(entry)).first->second;
  }

  // Max pooling with non-overlapping windows and no padding (2x2 stride 2, the zoo's pooling):
  // a plain loop over NCHW, 8x faster here than oneDNN 2.6's kernels with the reorders they
  // need on AVX2 (measured: 0.5 vs 4.2 ms forward for 64x32x28x28). The workspace holds each
  // output's winning offset within its window; the first maximum wins, as in oneDNN.
  static bool simple_max_pool(const PoolParams& p) {
    return p.kind == PoolKind::max && p.kernel == p.stride && p.pad == 0 && p.kernel <= 15;
  }

  void simple_max_pool_forward(const Tensor& x, Tensor& y, Tensor& workspace, int k) {
    const Shape& xs = x.shape();
    const std::int64_t planes = xs[0] * xs[1], h = xs[2], w = xs[3];
    const std::int64_t oh = window_output_size(h, k, k, 0), ow = window_output_size(w, k, k, 0);
    SHOAL_ASSERT(y.numel() == planes * oh * ow, "pool output " << y.describe());
    if (!holds(workspace, y.numel())) workspace = Tensor::zeros(Shape{y.numel()}, DType::u8);
    const float* in = x.data<float>();
    float* out = y.data<float>();
    std::uint8_t* arg = static_cast<std::uint8_t*>(workspace.raw());
#pragma omp parallel for if (planes * h * w > 32768)
    for (std::int64_t pl = 0; pl < planes; ++pl) {
      const float* src = in + pl * h * w;
      for (std::int64_t r = 0; r < oh; ++r)
        for (std::int64_t c = 0; c < ow; ++c) {
          const float* win = src + r * k * w + c * k;
          float best = win[0];
          int at = 0;
          for (int i = 0; i < k; ++i)
            for (int j = 0; j < k; ++j)
              if (win[i * w + j] > best) {
                best = win[i * w + j];
                at = i * k + j;
              }
          const std::int64_t o = (pl * oh + r) * ow + c;
          out[o] = best;
          arg[o] = static_cast<std::uint8_t>(at);
        }
    }
  }

  void simple_max_pool_backward(const Tensor& dy, const Tensor& workspace, Tensor& dx, int k) {
    const Shape& xs = dx.shape();
    const std::int64_t planes = xs[0] * xs[1], h = xs[2], w = xs[3];
    const std::int64_t oh = window_output_size(h, k, k, 0), ow = window_output_size(w, k, k, 0);
    SHOAL_ASSERT(workspace.numel() == dy.numel() && dy.numel() == planes * oh * ow, "pool workspace missing");
    const float* g = dy.data<float>();
    const std::uint8_t* arg = static_cast<const std::uint8_t*>(workspace.raw());
    float* out = dx.data<float>();
#pragma omp parallel for if (planes * h * w > 32768)
    for (std::int64_t pl = 0; pl < planes; ++pl) {
      float* dst = out + pl * h * w;
      std::fill(dst, dst + h * w, 0.f);
      for (std::int64_t r = 0; r < oh; ++r)
        for (std::int64_t c = 0; c < ow; ++c) {
          const std::int64_t o = (pl * oh + r) * ow + c;
          dst[(r * k + arg[o] / k) * w + c * k + arg[o] % k] = g[o];
        }
    }
  }

  void pool_forward(const Tensor& x, Tensor& y, Tensor& workspace, const PoolParams& p, bool /*training*/) override {
    use_threads();
    if (simple_max_pool(p)) return simple_max_pool_forward(x, y, workspace, p.kernel);
    PoolEntry& e = pool_entry(x.shape(), p);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, e.src.input(stream_, x.raw())},
                                         {DNNL_ARG_DST, e.dst.output(y.raw())}};
    SHOAL_ASSERT(y.numel() * 4 == static_cast<std::int64_t>(e.fwd_pd.dst_desc().get_size()),
                 "pool output " << y.describe());
    std::size_t ws_bytes = e.fwd_pd.workspace_desc().get_size();
    if (ws_bytes > 0) {
      if (workspace.bytes() != ws_bytes)
        workspace = Tensor::zeros(Shape{static_cast<std::int64_t>(ws_bytes)}, DType::u8);
      args.emplace(DNNL_ARG_WORKSPACE, memory(e.fwd_pd.workspace_desc(), engine_, workspace.raw()));
    }
    e.fwd.execute(stream_, args);
    e.dst.finish(stream_, y.raw());
    stream_.wait();
  }

  void pool_backward(const Tensor& x, const Tensor& /*y*/, const Tensor& dy, const Tensor& workspace, Tensor& dx,
                     const PoolParams& p) override {
    use_threads();
    if (simple_max_pool(p)) return simple_max_pool_backward(dy, workspace, dx, p.kernel);
    PoolEntry& e = pool_entry(x.shape(), p);
    std::unordered_map<int, memory> args{{DNNL_ARG_DIFF_DST, e.diff_dst.input(stream_, dy.raw())},
                                         {DNNL_ARG_DIFF_SRC, e.diff_src.output(dx.raw())}};
    if (e.fwd_pd.workspace_desc().get_size() > 0) {
      SHOAL_ASSERT(workspace.bytes() == e.fwd_pd.workspace_desc().get_size(), "pool workspace missing");
      args.emplace(DNNL_ARG_WORKSPACE, memory(e.fwd_pd.workspace_desc(), engine_, workspace.raw()));
    }
    e.bwd->execute(stream_, args);
    e.diff_src.finish(stream_, dx.raw());
    stream_.wait();
  }

  // ---- batch norm ------------------------------------------------------------------------

  static memory::dims norm_dims(const Shape& s) {
    SHOAL_ASSERT(s.rank() == 2 || s.rank() == 4, "batch norm needs [N, C] or [N, C, H, W], got " << s.str());
    return s.rank() == 2 ? memory::dims{s[0], s[1], 1, 1} : memory::dims{s[0], s[1], s[2], s[3]};
  }

  NormEntry& norm_entry(const Shape& xs, float eps, bool training) {
    auto d = norm_dims(xs);
    std::string key =
        make_key(training ? "bn_train" : "bn_infer", {d[0], d[1], d[2], d[3]}) + ":" + std::to_string(eps);
    auto it = norms_.find(key);
    if (it != norms_.end()) return *it->second;
    auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
    if (!training) flags = flags | dnnl::normalization_flags::use_global_stats;
    auto kind = training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    auto entry = std::make_unique<NormEntry>();
    entry->fwd_pd = dnnl::batch_normalization_forward::primitive_desc(
        dnnl::batch_normalization_forward::desc(kind, plain_desc(d), eps, flags), engine_);
    entry->fwd = dnnl::batch_normalization_forward(entry->fwd_pd);
    if (training) {
      dnnl::batch_normalization_backward::primitive_desc bpd(
          dnnl::batch_normalization_backward::desc(dnnl::prop_kind::backward, plain_desc(d), plain_desc(d), eps, flags),
          engine_, entry->fwd_pd);
      entry->bwd = dnnl::batch_normalization_backward(bpd);
      entry->zero_shift = Tensor::zeros(Shape{d[1]});
    }
    return *norms_.emplace(key, std::move(entry)).first->second;
  }

  void batch_norm_forward_training(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y,
                                   Tensor& running_mean, Tensor& running_var, Tensor& saved_mean, Tensor& saved_var,
                                   float momentum, float eps) override {
    use_threads();
    auto d = norm_dims(x.shape());
    std::int64_t channels = d[1];
    if (!holds(saved_mean, channels)) saved_mean = Tensor::zeros(Shape{channels});
    if (!holds(saved_var, channels)) saved_var = Tensor::zeros(Shape{channels});
    NormEntry& e = norm_entry(x.shape(), eps, true);
    memory::desc md = plain_desc(d), cmd({channels}, dt::f32, tag::a);
    e.fwd.execute(stream_, {{DNNL_ARG_SRC, memory(md, engine_, x.raw())},
                            {DNNL_ARG_DST, memory(md, engine_, y.raw())},
                            {DNNL_ARG_SCALE, memory(cmd, engine_, gamma.raw())},
                            {DNNL_ARG_SHIFT, memory(cmd, engine_, beta.raw())},
                            {DNNL_ARG_MEAN, memory(cmd, engine_, saved_mean.raw())},
                            {DNNL_ARG_VARIANCE, memory(cmd, engine_, saved_var.raw())}});
    stream_.wait();
    double per_channel = static_cast<double>(d[0] * d[2] * d[3]);
    float unbias = per_channel > 1 ? static_cast<float>(per_channel / (per_channel - 1)) : 1.f;
    float* rm = running_mean.data<float>();
    float* rv = running_var.data<float>();
    const float* sm = saved_mean.data<float>();
    const float* sv = saved_var.data<float>();
    for (std::int64_t c = 0; c < channels; ++c) {
      rm[c] = (1 - momentum) * rm[c] + momentum * sm[c];
      rv[c] = (1 - momentum) * rv[c] + momentum * sv[c] * unbias;
    }
  }

  void batch_norm_forward_inference(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                    const Tensor& running_mean, const Tensor& running_var, Tensor& y,
                                    float eps) override {
    use_threads();
    auto d = norm_dims(x.shape());
    NormEntry& e = norm_entry(x.shape(), eps, false);
    memory::desc md = plain_desc(d), cmd({d[1]}, dt::f32, tag::a);
    e.fwd.execute(stream_, {{DNNL_ARG_SRC, memory(md, engine_, x.raw())},
                            {DNNL_ARG_DST, memory(md, engine_, y.raw())},
                            {DNNL_ARG_SCALE, memory(cmd, engine_, gamma.raw())},
                            {DNNL_ARG_SHIFT, memory(cmd, engine_, beta.raw())},
                            {DNNL_ARG_MEAN, memory(cmd, engine_, running_mean.raw())},
                            {DNNL_ARG_VARIANCE, memory(cmd, engine_, running_var.raw())}});
    stream_.wait();
  }

  void batch_norm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& saved_mean,
                           const Tensor& saved_var, Tensor& dx, Tensor& dgamma, Tensor& dbeta, float eps) override {
    use_threads();
    auto d = norm_dims(x.shape());
    NormEntry& e = norm_entry(x.shape(), eps, true);
    memory::desc md = plain_desc(d), cmd({d[1]}, dt::f32, tag::a);
    e.bwd->execute(stream_, {{DNNL_ARG_SRC, memory(md, engine_, x.raw())},
                             {DNNL_ARG_DIFF_DST, memory(md, engine_, dy.raw())},
                             {DNNL_ARG_SCALE, memory(cmd, engine_, gamma.raw())},
                             {DNNL_ARG_SHIFT, memory(cmd, engine_, e.zero_shift.raw())},
                             {DNNL_ARG_MEAN, memory(cmd, engine_, saved_mean.raw())},
                             {DNNL_ARG_VARIANCE, memory(cmd, engine_, saved_var.raw())},
                             {DNNL_ARG_DIFF_SRC, memory(md, engine_, dx.raw())},
                             {DNNL_ARG_DIFF_SCALE, memory(cmd, engine_, dgamma.raw())},
                             {DNNL_ARG_DIFF_SHIFT, memory(cmd, engine_, dbeta.raw())}});
    stream_.wait();
  }

  // ---- dropout, loss, element-wise -----------------------------------------------------------

  void dropout_forward(const Tensor& x, Tensor& y, Tensor& mask, float p, std::uint64_t seed,
                       std::uint64_t first_index) override {
    use_threads();
    check_same_numel(x, y);
    if (!holds(mask, x.numel())) mask = Tensor::zeros(x.shape());
    const float* xs = x.data<float>();
    float* ys = y.data<float>();
    float* ms = mask.data<float>();
    const float keep_scale = math::dropout_keep_scale(p);
    std::int64_t n = x.numel();
#pragma omp parallel for if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
      float m = math::dropout_mask(seed, first_index + static_cast<std::uint64_t>(i), p, keep_scale);
      ms[i] = m;
      ys[i] = xs[i] * m;
    }
  }

  void dropout_backward(const Tensor& dy, const Tensor& mask, Tensor& dx) override {
    use_threads();
    check_same_numel(dy, mask);
    check_same_numel(dy, dx);
    const float* g = dy.data<float>();
    const float* m = mask.data<float>();
    float* out = dx.data<float>();
    std::int64_t n = dy.numel();
    elementwise(n, [&](std::int64_t i) { out[i] = g[i] * m[i]; });
  }

  LossStats softmax_cross_entropy(const Tensor& logits, const Tensor& labels, Tensor* dlogits, float grad_scale,
                                  float label_smoothing) override {
    use_threads();
    SHOAL_ASSERT(logits.shape().rank() == 2 && labels.numel() == logits.shape()[0],
                 "loss shapes " << logits.describe() << " / " << labels.describe());
    std::int64_t n = logits.shape()[0], k = logits.shape()[1];
    const float* z = logits.data<float>();
    const std::int32_t* y = labels.data<std::int32_t>();
    float* g = dlogits != nullptr ? dlogits->data<float>() : nullptr;
    LossStats stats;
    stats.count = n;
    for (std::int64_t i = 0; i < n; ++i) {
      std::int32_t label = y[i];
      SHOAL_ASSERT(label >= 0 && label < k, "label " << label << " outside [0, " << k << ")");
      math::RowLoss r = math::softmax_xent_row(z + i * k, k, label, grad_scale, g != nullptr ? g + i * k : nullptr,
                                                    label_smoothing);
      stats.loss_sum += r.loss;
      stats.correct += r.correct;
    }
    return stats;
  }

  void add(const Tensor& a, const Tensor& b, Tensor& out) override {
    use_threads();
    check_same_numel(a, b);
    check_same_numel(a, out);
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    float* po = out.data<float>();
    std::int64_t n = a.numel();
    elementwise(n, [&](std::int64_t i) { po[i] = pa[i] + pb[i]; });
  }

  void axpy(float alpha, const Tensor& x, Tensor& y) override {
    use_threads();
    check_same_numel(x, y);
    const float* px = x.data<float>();
    float* py = y.data<float>();
    std::int64_t n = x.numel();
    elementwise(n, [&](std::int64_t i) { py[i] += alpha * px[i]; });
  }

  void scale(Tensor& x, float alpha) override {
    use_threads();
    float* px = x.data<float>();
    std::int64_t n = x.numel();
    elementwise(n, [&](std::int64_t i) { px[i] *= alpha; });
  }

  double sum_squares(const Tensor& x) override {
    use_threads();
    const float* px = x.data<float>();
    std::int64_t n = x.numel();
    double total = 0;
    if (n <= kParallelElements) {
      for (std::int64_t i = 0; i < n; ++i) total += static_cast<double>(px[i]) * px[i];
      return total;
    }
#pragma omp parallel for reduction(+ : total)
    for (std::int64_t i = 0; i < n; ++i) total += static_cast<double>(px[i]) * px[i];
    return total;
  }

  bool all_finite(const Tensor& x) override {
    use_threads();
    check_cpu_f32(x, "finite check input");
    const auto* bits = static_cast<const std::uint32_t*>(x.raw());
    std::int64_t n = x.numel();
    std::uint32_t bad = 0;
    // Exponent bits all ones is exactly NaN or infinity; an integer test vectorises.
    if (n <= 1 << 20) {
#pragma omp simd reduction(| : bad)
      for (std::int64_t i = 0; i < n; ++i) bad |= static_cast<std::uint32_t>(math::non_finite_bits(bits[i]));
      return bad == 0;
    }
#pragma omp parallel for simd reduction(| : bad)
    for (std::int64_t i = 0; i < n; ++i) bad |= static_cast<std::uint32_t>(math::non_finite_bits(bits[i]));
    return bad == 0;
  }

  void sgd_update(Tensor& param, const Tensor& grad, Tensor* velocity, const SgdHyper& h) override {
    use_threads();
    check_same_numel(param, grad);
    float* w = param.data<float>();
    const float* g = grad.data<float>();
    std::int64_t n = param.numel();
    const math::SgdCoeffs c{h.lr, h.momentum, h.weight_decay, h.nesterov};
    if (velocity == nullptr || h.momentum == 0.f) {
      elementwise(n, [&](std::int64_t i) { math::sgd_step(w[i], g[i], c); });
      return;
    }
    check_same_numel(param, *velocity);
    float* v = velocity->data<float>();
    elementwise(n, [&](std::int64_t i) { math::momentum_step(w[i], g[i], v[i], c); });
  }

  void adam_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamHyper& h) override {
    use_threads();
    check_same_numel(param, grad);
    check_same_numel(param, m);
    check_same_numel(param, v);
    SHOAL_ASSERT(h.step >= 1, "adam step must be >= 1");
    float* w = param.data<float>();
    const float* g = grad.data<float>();
    float* pm = m.data<float>();
    float* pv = v.data<float>();
    std::int64_t n = param.numel();
    const math::AdamCoeffs c = math::adam_coeffs(h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.decoupled, h.step);
    elementwise(n, [&](std::int64_t i) { math::adam_step(w[i], g[i], pm[i], pv[i], c); });
  }

 private:
  dnnl::engine engine_;
  dnnl::stream stream_;
  int threads_ = 1;
  int max_threads_ = 1;

  // OpenMP's thread count is per calling thread (omp_set_num_threads), and oneDNN reads it
  // when a primitive runs: a backend made on one thread and used on another (a parameter
  // server in a test, a role run as a thread) would otherwise use every core.
  void use_threads() const {
    thread_local int applied = 0;
    if (applied != threads_) {
      omp_set_num_threads(threads_);
      applied = threads_;
    }
  }
  std::unordered_map<std::string, std::unique_ptr<ConvEntry>> convs_;
  std::unordered_map<std::string, std::unique_ptr<LinearEntry>> linears_;
  std::unordered_map<std::string, std::unique_ptr<PoolEntry>> pools_;
  std::unordered_map<std::string, std::unique_ptr<NormEntry>> norms_;
  std::unordered_map<std::string, std::unique_ptr<EltwiseEntry>> relus_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace shoal
