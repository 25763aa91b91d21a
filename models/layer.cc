#include "models/layer.h"

#include <cmath>
#include <sstream>

#include "base/error.h"
#include "compute/rng.h"

namespace shoal {

std::string dims_text(const Shape& s) {
  std::string out;
  for (std::size_t i = 0; i < s.rank(); ++i) {
    if (i > 0) out += 'x';
    out += std::to_string(s[i]);
  }
  return out.empty() ? "scalar" : out;
}

std::string per_sample_text(const Shape& x) {
  return dims_text(Shape(std::vector<std::int64_t>(x.dims().begin() + (x.rank() > 1 ? 1 : 0), x.dims().end())));
}

Tensor& Layer::ensure(Backend& backend, Tensor& t, const Shape& shape) {
  if (!t.defined() || !(t.shape() == shape)) t = backend.allocate(shape);
  return t;
}

namespace {

class Conv2d final : public Layer {
  LayerSpec spec() const override {
    LayerSpec s;
    s.kind = LayerSpec::conv, s.in = spec_.in, s.out = spec_.out, s.kernel = spec_.kernel, s.stride = spec_.stride;
    s.pad = spec_.pad, s.groups = spec_.groups, s.bias = spec_.bias;
    return s;
  }
 public:
  explicit Conv2d(const ConvSpec& spec) : spec_(spec), params_conv_{spec.stride, spec.pad, spec.groups} {}

  std::string describe() const override {
    std::string d = "conv " + std::to_string(spec_.in) + "->" + std::to_string(spec_.out) + " " +
                    std::to_string(spec_.kernel) + "x" + std::to_string(spec_.kernel);
    if (spec_.stride != 1) d += " stride " + std::to_string(spec_.stride);
    if (spec_.pad != 0) d += " pad " + std::to_string(spec_.pad);
    if (spec_.groups == spec_.in && spec_.groups > 1) d += " depthwise";
    else if (spec_.groups != 1) d += " groups " + std::to_string(spec_.groups);
    return d;
  }

  Shape output_shape(const Shape& x) const override {
    SHOAL_REQUIRE(x.rank() == 4 && x[1] == spec_.in, ConfigError,
                  describe() << " needs " << spec_.in << " input channels (CxHxW), got " << per_sample_text(x));
    const std::int64_t h = window_output_size(x[2], spec_.kernel, spec_.stride, spec_.pad);
    const std::int64_t w = window_output_size(x[3], spec_.kernel, spec_.stride, spec_.pad);
    SHOAL_REQUIRE(x[2] + 2 * spec_.pad >= spec_.kernel && x[3] + 2 * spec_.pad >= spec_.kernel, ConfigError,
                  describe() << ": input " << per_sample_text(x) << " is smaller than its " << spec_.kernel << "x"
                             << spec_.kernel << " window");
    return Shape{x[0], spec_.out, h, w};
  }

  std::int64_t macs(const Shape& x) const override {
    return output_shape(x).numel() * (spec_.in / spec_.groups) * spec_.kernel * spec_.kernel;
  }

  void declare(ParameterSet& set, const std::string& prefix) override {
    std::int64_t fan_in = spec_.in / spec_.groups * spec_.kernel * spec_.kernel;
    weight_ = set.add_parameter(prefix + "weight", Shape{spec_.out, spec_.in / spec_.groups, spec_.kernel, spec_.kernel},
                                spec_.weight_init.value_or(default_init(fan_in)));
    params_.push_back(weight_);
    if (spec_.bias) {
      bias_ = set.add_parameter(prefix + "bias", Shape{spec_.out}, spec_.bias_init.value_or(default_init(fan_in)));
      params_.push_back(bias_);
    }
  }

  const Tensor& forward(LayerContext& ctx, const Tensor& x) override {
    x_ = x;
    Tensor& y = ensure(ctx.backend, y_, output_shape(x.shape()));
    ctx.backend.conv2d_forward(x, weight_->value, spec_.bias ? &bias_->value : nullptr, y, params_conv_);
    return y;
  }

  const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool need_dx) override {
    ctx.backend.conv2d_backward_weights(x_, dy, weight_->grad, spec_.bias ? &bias_->grad : nullptr, params_conv_);
    if (!need_dx) return dx_ = Tensor();
    Tensor& dx = ensure(ctx.backend, dx_, x_.shape());
    ctx.backend.conv2d_backward_data(dy, weight_->value, dx, params_conv_);
    return dx;
  }

 private:
  ConvSpec spec_;
  Conv2dParams params_conv_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
  Tensor x_, y_, dx_;
};

class Linear final : public Layer {
 public:
  explicit Linear(const LinearSpec& spec) : spec_(spec) {}
  LayerSpec spec() const override {
    LayerSpec s;
    s.kind = LayerSpec::linear, s.in = spec_.in, s.out = spec_.out, s.bias = spec_.bias;
    return s;
  }
  std::string describe() const override {
    return "linear " + std::to_string(spec_.in) + "->" + std::to_string(spec_.out) + (spec_.bias ? "" : " no bias");
  }
  Shape output_shape(const Shape& x) const override {
    SHOAL_REQUIRE(x.rank() >= 1 && x.numel() == x[0] * spec_.in, ConfigError,
                  describe() << " needs " << spec_.in << " input values per sample, got " << per_sample_text(x));
    return Shape{x[0], spec_.out};
  }
  std::int64_t macs(const Shape& x) const override { return x[0] * spec_.in * spec_.out; }
  void declare(ParameterSet& set, const std::string& prefix) override {
    weight_ = set.add_parameter(prefix + "weight", Shape{spec_.out, spec_.in},
                                spec_.weight_init.value_or(default_init(spec_.in)));
    params_ = {weight_};
    if (spec_.bias) {
      bias_ = set.add_parameter(prefix + "bias", Shape{spec_.out}, spec_.bias_init.value_or(default_init(spec_.in)));
      params_.push_back(bias_);
    }
  }
  const Tensor& forward(LayerContext& ctx, const Tensor& x) override {
    x_ = x;
    Tensor& y = ensure(ctx.backend, y_, output_shape(x.shape()));
    ctx.backend.linear_forward(x, weight_->value, spec_.bias ? &bias_->value : nullptr, y);
    return y;
  }
  const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool need_dx) override {
    ctx.backend.linear_backward_weights(x_, dy, weight_->grad, spec_.bias ? &bias_->grad : nullptr);
    if (!need_dx) return dx_ = Tensor();
    Tensor& dx = ensure(ctx.backend, dx_, x_.shape());
    ctx.backend.linear_backward_data(dy, weight_->value, dx);
    return dx;
  }

 private:
  LinearSpec spec_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
  Tensor x_, y_, dx_;
};

class Relu final : public Layer {
 public:
  std::string describe() const override { return "relu"; }
  LayerSpec spec() const override { return LayerSpec{LayerSpec::relu}; }
  Shape output_shape(const Shape& x) const override { return x; }
  const Tensor& forward(LayerContext& ctx, const Tensor& x) override {
    Tensor& y = ensure(ctx.backend, y_, x.shape());
    ctx.backend.relu_forward(x, y);
    return y;
  }
  const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool need_dx) override {
    if (!need_dx) return dx_ = Tensor();
    Tensor& dx = ensure(ctx.backend, dx_, y_.shape());
    ctx.backend.relu_backward(y_, dy, dx);
    return dx;
  }

 private:
  Tensor y_, dx_;
};

class Clip final : public Layer {
 public:
  Clip(float lo, float hi) : lo_(lo), hi_(hi) {}
  LayerSpec spec() const override {
    LayerSpec s;
    s.kind = LayerSpec::clip, s.lo = lo_, s.hi = hi_;
    return s;
  }
  std::string describe() const override {
    if (lo_ == 0.f && hi_ == 6.f) return "relu6";
    std::ostringstream d;
    d << "clip " << lo_ << ".." << hi_;
    return d.str();
  }
  Shape output_shape(const Shape& x) const override { return x; }
  const Tensor& forward(LayerContext& ctx, const Tensor& x) override {
    Tensor& y = ensure(ctx.backend, y_, x.shape());
    ctx.backend.clip_forward(x, y, lo_, hi_);
    return y;
  }
  const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool need_dx) override {
    if (!need_dx) return dx_ = Tensor();
    Tensor& dx = ensure(ctx.backend, dx_, y_.shape());
    ctx.backend.clip_backward(y_, dy, dx, lo_, hi_);
    return dx;
  }

 private:
  float lo_, hi_;
  Tensor y_, dx_;
};

class Identity final : public Layer {
 public:
  std::string describe() const override { return "identity"; }
  LayerSpec spec() const override { return LayerSpec{LayerSpec::identity}; }
  Shape output_shape(const Shape& x) const override { return x; }
  const Tensor& forward(LayerContext&, const Tensor& x) override { return y_ = x; }
  const Tensor& backward(LayerContext&, const Tensor& dy, bool need_dx) override {
    return dx_ = need_dx ? dy : Tensor();
  }

 private:
  Tensor y_, dx_;
};

class Pool final : public Layer {
 public:
  Pool(PoolParams p, bool global) : p_(p), global_(global) {}
  LayerSpec spec() const override {
    LayerSpec s;
    if (global_) return LayerSpec{LayerSpec::global_avg_pool};
    s.kind = p_.kind == PoolKind::max ? LayerSpec::max_pool : LayerSpec::avg_pool;
    s.kernel = p_.kernel, s.stride = p_.stride, s.pad = p_.pad;
    return s;
  }
  std::string describe() const override {
    if (global_) return "global average pool";
    return std::string(p_.kind == PoolKind::max ? "max" : "average") + " pool " + std::to_string(p_.kernel) + "x" +
           std::to_string(p_.kernel) + " stride " + std::to_string(p_.stride) +
           (p_.pad != 0 ? " pad " + std::to_string(p_.pad) : std::string());
  }
  PoolParams params_for(const Shape& x) const {
    PoolParams p = p_;
    if (global_) p.kernel = p.stride = static_cast<int>(x[2]);
    return p;
  }
  Shape output_shape(const Shape& x) const override {
    SHOAL_REQUIRE(x.rank() == 4, ConfigError, describe() << " needs a CxHxW input, got " << per_sample_text(x));
    SHOAL_REQUIRE(!global_ || x[2] == x[3], ConfigError,
                  "global pooling needs square inputs, got " << per_sample_text(x));
    PoolParams p = params_for(x);
    const std::int64_t h = window_output_size(x[2], p.kernel, p.stride, p.pad);
    const std::int64_t w = window_output_size(x[3], p.kernel, p.stride, p.pad);
    SHOAL_REQUIRE(x[2] + 2 * p.pad >= p.kernel && x[3] + 2 * p.pad >= p.kernel, ConfigError,
                  describe() << ": input " << per_sample_text(x) << " is smaller than its window");
    return Shape{x[0], x[1], h, w};
  }
  const Tensor& forward(LayerContext& ctx, const Tensor& x) override {
    x_ = x;
    Tensor& y = ensure(ctx.backend, y_, output_shape(x.shape()));
    ctx.backend.pool_forward(x, y, workspace_, params_for(x.shape()), ctx.training);
    return y;
  }
  const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool need_dx) override {
    if (!need_dx) return dx_ = Tensor();
    Tensor& dx = ensure(ctx.backend, dx_, x_.shape());
    ctx.backend.pool_backward(x_, y_, dy, workspace_, dx, params_for(x_.shape()));
    return dx;
  }

 private:
  PoolParams p_;
  bool global_;
  Tensor x_, y_, dx_, workspace_;
};

class BatchNorm final : public Layer {
 public:
  BatchNorm(std::int64_t channels, float momentum, float eps, float gamma)
      : channels_(channels), momentum_(momentum), eps_(eps), gamma_init_(gamma) {}
  LayerSpec spec() const override {
    LayerSpec s;
    s.kind = LayerSpec::batch_norm, s.in = s.out = channels_, s.eps = eps_, s.momentum = momentum_;
    return s;
  }
  std::string describe() const override { return "batch norm " + std::to_string(channels_); }
  Shape output_shape(const Shape& x) const override {
    SHOAL_REQUIRE((x.rank() == 2 || x.rank() == 4) && x[1] == channels_, ConfigError,
                  describe() << " needs " << channels_ << " channels, got " << per_sample_text(x));
    return x;
  }
  void declare(ParameterSet& set, const std::string& prefix) override {
    gamma_ = set.add_parameter(prefix + "gamma", Shape{channels_}, Initializer{Initializer::constant, 1, gamma_init_});
    beta_ = set.add_parameter(prefix + "beta", Shape{channels_}, Initializer{Initializer::constant, 1, 0.f});
    running_mean_ = set.add_buffer(prefix + "running_mean", Shape{channels_}, 0.f);
    running_var_ = set.add_buffer(prefix + "running_var", Shape{channels_}, 1.f);
    params_ = {gamma_, beta_};
  }
  const Tensor& forward(LayerContext& ctx, const Tensor& x) override {
    x_ = x;
    Tensor& y = ensure(ctx.backend, y_, output_shape(x.shape()));
    synced_ = ctx.training && ctx.sum_across_ranks;
    if (synced_) {
      sync_forward(ctx.sum_across_ranks, x, y);
    } else if (ctx.training) {
      ctx.backend.batch_norm_forward_training(x, gamma_->value, beta_->value, y, running_mean_->value,
                                              running_var_->value, saved_mean_, saved_var_, momentum_, eps_);
    } else {
      ctx.backend.batch_norm_forward_inference(x, gamma_->value, beta_->value, running_mean_->value,
                                               running_var_->value, y, eps_);
    }
    return y;
  }
  const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool /*need_dx*/) override {
    // The input gradient comes out of the same call as the parameter gradients.
    Tensor& dx = ensure(ctx.backend, dx_, x_.shape());
    if (synced_) {
      sync_backward(ctx.sum_across_ranks, dy, dx);
      return dx;
    }
    ctx.backend.batch_norm_backward(x_, dy, gamma_->value, saved_mean_, saved_var_, dx, gamma_->grad, beta_->grad,
                                    eps_);
    return dx;
  }

 private:
  // Synchronised batch norm: the statistics of the global batch, summed across ranks (mean
  // first, then the centred sum of squares, for accuracy), so every rank normalises exactly
  // as one process holding every rank's samples would. Host tensors only for now.
  struct Dims {
    std::int64_t n, c, hw;
  };
  Dims dims(const Tensor& x) const {
    SHOAL_REQUIRE(x.is_cpu(), DeviceError,
                  "sync.batch_norm = sync needs host tensors (the CPU backend) in this release");
    const Shape& s = x.shape();
    return Dims{s[0], s[1], s.rank() == 4 ? s[2] * s[3] : 1};
  }
  void sync_forward(const SumAcrossRanks& sum, const Tensor& x, Tensor& y) {
    const Dims d = dims(x);
    const float* xs = x.data<float>();
    std::vector<float> buf(static_cast<std::size_t>(d.c + 1));
    for (std::int64_t c = 0; c < d.c; ++c) {
      double s1 = 0;
      for (std::int64_t n = 0; n < d.n; ++n)
        for (std::int64_t i = 0, base = (n * d.c + c) * d.hw; i < d.hw; ++i) s1 += xs[base + i];
      buf[static_cast<std::size_t>(c)] = static_cast<float>(s1);
    }
    buf[static_cast<std::size_t>(d.c)] = static_cast<float>(d.n * d.hw);
    sum(buf);
    count_ = buf[static_cast<std::size_t>(d.c)];
    if (saved_mean_.numel() != d.c) saved_mean_ = Tensor::zeros(Shape{d.c});
    if (saved_var_.numel() != d.c) saved_var_ = Tensor::zeros(Shape{d.c});
    float* mean = saved_mean_.data<float>();
    float* var = saved_var_.data<float>();
    for (std::int64_t c = 0; c < d.c; ++c) mean[c] = buf[static_cast<std::size_t>(c)] / count_;
    for (std::int64_t c = 0; c < d.c; ++c) {
      double s2 = 0;
      for (std::int64_t n = 0; n < d.n; ++n)
        for (std::int64_t i = 0, base = (n * d.c + c) * d.hw; i < d.hw; ++i) {
          double v = xs[base + i] - mean[c];
          s2 += v * v;
        }
      buf[static_cast<std::size_t>(c)] = static_cast<float>(s2);
    }
    sum(std::span<float>(buf.data(), static_cast<std::size_t>(d.c)));
    const float* g = gamma_->value.data<float>();
    const float* b = beta_->value.data<float>();
    float* ys = y.data<float>();
    float* rm = running_mean_->value.data<float>();
    float* rv = running_var_->value.data<float>();
    const float unbias = count_ > 1 ? count_ / (count_ - 1) : 1.f;
    for (std::int64_t c = 0; c < d.c; ++c) {
      var[c] = buf[static_cast<std::size_t>(c)] / count_;
      const float invstd = 1.f / std::sqrt(var[c] + eps_);
      for (std::int64_t n = 0; n < d.n; ++n)
        for (std::int64_t i = 0, base = (n * d.c + c) * d.hw; i < d.hw; ++i)
          ys[base + i] = g[c] * (xs[base + i] - mean[c]) * invstd + b[c];
      rm[c] = (1 - momentum_) * rm[c] + momentum_ * mean[c];
      rv[c] = (1 - momentum_) * rv[c] + momentum_ * var[c] * unbias;
    }
  }
  void sync_backward(const SumAcrossRanks& sum, const Tensor& dy, Tensor& dx) {
    const Dims d = dims(x_);
    const float* xs = x_.data<float>();
    const float* gs = dy.data<float>();
    const float* mean = saved_mean_.data<float>();
    const float* var = saved_var_.data<float>();
    const float* g = gamma_->value.data<float>();
    float* dgamma = gamma_->grad.data<float>();
    float* dbeta = beta_->grad.data<float>();
    std::vector<float> buf(static_cast<std::size_t>(2 * d.c));
    for (std::int64_t c = 0; c < d.c; ++c) {
      const float invstd = 1.f / std::sqrt(var[c] + eps_);
      double sdy = 0, sdyx = 0;
      for (std::int64_t n = 0; n < d.n; ++n)
        for (std::int64_t i = 0, base = (n * d.c + c) * d.hw; i < d.hw; ++i) {
          sdy += gs[base + i];
          sdyx += gs[base + i] * (xs[base + i] - mean[c]) * invstd;
        }
      // This rank's share of the parameter gradients: the all-reduce of gradients adds the rest.
      dbeta[c] = static_cast<float>(sdy);
      dgamma[c] = static_cast<float>(sdyx);
      buf[static_cast<std::size_t>(c)] = dbeta[c];
      buf[static_cast<std::size_t>(d.c + c)] = dgamma[c];
    }
    sum(buf);
    float* out = dx.data<float>();
    for (std::int64_t c = 0; c < d.c; ++c) {
      const float invstd = 1.f / std::sqrt(var[c] + eps_);
      const float mdy = buf[static_cast<std::size_t>(c)] / count_;
      const float mdyx = buf[static_cast<std::size_t>(d.c + c)] / count_;
      for (std::int64_t n = 0; n < d.n; ++n)
        for (std::int64_t i = 0, base = (n * d.c + c) * d.hw; i < d.hw; ++i) {
          const float xhat = (xs[base + i] - mean[c]) * invstd;
          out[base + i] = g[c] * invstd * (gs[base + i] - mdy - xhat * mdyx);
        }
    }
  }

  std::int64_t channels_;
  float momentum_, eps_, gamma_init_;
  Parameter *gamma_ = nullptr, *beta_ = nullptr, *running_mean_ = nullptr, *running_var_ = nullptr;
  Tensor x_, y_, dx_, saved_mean_, saved_var_;
  bool synced_ = false;
  float count_ = 0;
};

class Dropout final : public Layer {
 public:
  Dropout(float p, std::uint64_t salt) : p_(p), salt_(salt) {}
  LayerSpec spec() const override {
    LayerSpec s;
    s.kind = LayerSpec::dropout, s.p = p_;
    return s;
  }
  std::string describe() const override { return "dropout " + std::to_string(p_).substr(0, 4); }
  Shape output_shape(const Shape& x) const override { return x; }
  const Tensor& forward(LayerContext& ctx, const Tensor& x) override {
    active_ = ctx.training && p_ > 0.f;
    if (!active_) return passthrough_ = x;
    Tensor& y = ensure(ctx.backend, y_, x.shape());
    const std::uint64_t per_sample = x.shape()[0] > 0 ? static_cast<std::uint64_t>(x.numel() / x.shape()[0]) : 0;
    ctx.backend.dropout_forward(x, y, mask_, p_, hash_combine(ctx.seed, salt_),
                                static_cast<std::uint64_t>(ctx.sample_offset) * per_sample);
    return y;
  }
  const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool need_dx) override {
    if (!need_dx) return dx_ = Tensor();
    if (!active_) return passthrough_ = dy;
    Tensor& dx = ensure(ctx.backend, dx_, dy.shape());
    ctx.backend.dropout_backward(dy, mask_, dx);
    return dx;
  }

 private:
  float p_;
  std::uint64_t salt_;
  bool active_ = false;
  Tensor y_, dx_, mask_, passthrough_;
};

class Flatten final : public Layer {
 public:
  std::string describe() const override { return "flatten"; }
  LayerSpec spec() const override { return LayerSpec{LayerSpec::flatten}; }
  Shape output_shape(const Shape& x) const override { return Shape{x[0], x.numel() / x[0]}; }
  const Tensor& forward(LayerContext&, const Tensor& x) override {
    in_shape_ = x.shape();
    return y_ = x.reshaped(output_shape(x.shape()));
  }
  const Tensor& backward(LayerContext&, const Tensor& dy, bool need_dx) override {
    if (!need_dx) return dx_ = Tensor();
    return dx_ = dy.reshaped(in_shape_);
  }

 private:
  Shape in_shape_;
  Tensor y_, dx_;
};

}  // namespace

std::unique_ptr<Layer> conv2d(const ConvSpec& spec) { return std::make_unique<Conv2d>(spec); }
std::unique_ptr<Layer> conv2d(std::int64_t in, std::int64_t out, int kernel, int stride, int pad, bool bias) {
  ConvSpec spec;
  spec.in = in, spec.out = out, spec.kernel = kernel, spec.stride = stride, spec.pad = pad, spec.bias = bias;
  return conv2d(spec);
}
std::unique_ptr<Layer> linear(const LinearSpec& spec) { return std::make_unique<Linear>(spec); }
std::unique_ptr<Layer> linear(std::int64_t in, std::int64_t out) { return linear(LinearSpec{in, out, true, {}, {}}); }
std::unique_ptr<Layer> relu() { return std::make_unique<Relu>(); }
std::unique_ptr<Layer> clip(float lo, float hi) { return std::make_unique<Clip>(lo, hi); }
std::unique_ptr<Layer> identity() { return std::make_unique<Identity>(); }
std::unique_ptr<Layer> max_pool(int kernel, int stride, int pad) {
  return std::make_unique<Pool>(PoolParams{PoolKind::max, kernel, stride, pad}, false);
}
std::unique_ptr<Layer> avg_pool(int kernel, int stride, int pad) {
  return std::make_unique<Pool>(PoolParams{PoolKind::average, kernel, stride, pad}, false);
}
std::unique_ptr<Layer> global_avg_pool() {
  return std::make_unique<Pool>(PoolParams{PoolKind::average, 1, 1, 0}, true);
}
std::unique_ptr<Layer> batch_norm(std::int64_t channels, float momentum, float eps, float gamma) {
  return std::make_unique<BatchNorm>(channels, momentum, eps, gamma);
}
std::unique_ptr<Layer> dropout(float p, std::uint64_t salt) { return std::make_unique<Dropout>(p, salt); }
std::unique_ptr<Layer> flatten() { return std::make_unique<Flatten>(); }

}  // namespace shoal
