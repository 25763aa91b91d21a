#include "models/layer.h"

#include <cmath>

#include "base/error.h"
#include "compute/rng.h"

namespace shoal {

Tensor& Layer::ensure(Backend& backend, Tensor& t, const Shape& shape) {
  if (!t.defined() || !(t.shape() == shape)) t = backend.allocate(shape);
  return t;
}

namespace {

class Conv2d final : public Layer {
 public:
  Conv2d(std::int64_t in, std::int64_t out, int kernel, int stride, int pad, bool bias)
      : in_(in), out_(out), kernel_(kernel), params_conv_{stride, pad}, has_bias_(bias) {}

  std::string describe() const override {
    return "conv " + std::to_string(in_) + "->" + std::to_string(out_) + " " + std::to_string(kernel_) + "x" +
           std::to_string(kernel_) + " stride " + std::to_string(params_conv_.stride) + " pad " +
           std::to_string(params_conv_.pad);
  }

  Shape output_shape(const Shape& x) const override {
    SHOAL_ASSERT(x.rank() == 4 && x[1] == in_, describe() << " got input " << x.str());
    return Shape{x[0], out_, window_output_size(x[2], kernel_, params_conv_.stride, params_conv_.pad),
                 window_output_size(x[3], kernel_, params_conv_.stride, params_conv_.pad)};
  }

  void declare(ParameterSet& set, const std::string& prefix) override {
    std::int64_t fan_in = in_ * kernel_ * kernel_;
    weight_ = set.add_parameter(prefix + "weight", Shape{out_, in_, kernel_, kernel_},
                                Initializer{Initializer::uniform_fan_in, fan_in, 0});
    params_.push_back(weight_);
    if (has_bias_) {
      bias_ = set.add_parameter(prefix + "bias", Shape{out_}, Initializer{Initializer::uniform_fan_in, fan_in, 0});
      params_.push_back(bias_);
    }
  }

  const Tensor& forward(LayerContext& ctx, const Tensor& x) override {
    x_ = x;
    Tensor& y = ensure(ctx.backend, y_, output_shape(x.shape()));
    ctx.backend.conv2d_forward(x, weight_->value, has_bias_ ? &bias_->value : nullptr, y, params_conv_);
    return y;
  }

  const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool need_dx) override {
    ctx.backend.conv2d_backward_weights(x_, dy, weight_->grad, has_bias_ ? &bias_->grad : nullptr, params_conv_);
    if (!need_dx) return dx_ = Tensor();
    Tensor& dx = ensure(ctx.backend, dx_, x_.shape());
    ctx.backend.conv2d_backward_data(dy, weight_->value, dx, params_conv_);
    return dx;
  }

 private:
  std::int64_t in_, out_;
  int kernel_;
  Conv2dParams params_conv_;
  bool has_bias_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
  Tensor x_, y_, dx_;
};

class Linear final : public Layer {
 public:
  Linear(std::int64_t in, std::int64_t out) : in_(in), out_(out) {}
  std::string describe() const override { return "linear " + std::to_string(in_) + "->" + std::to_string(out_); }
  Shape output_shape(const Shape& x) const override {
    SHOAL_ASSERT(x.numel() == x[0] * in_, describe() << " got input " << x.str());
    return Shape{x[0], out_};
  }
  void declare(ParameterSet& set, const std::string& prefix) override {
    weight_ = set.add_parameter(prefix + "weight", Shape{out_, in_}, Initializer{Initializer::uniform_fan_in, in_, 0});
    bias_ = set.add_parameter(prefix + "bias", Shape{out_}, Initializer{Initializer::uniform_fan_in, in_, 0});
    params_ = {weight_, bias_};
  }
  const Tensor& forward(LayerContext& ctx, const Tensor& x) override {
    x_ = x;
    Tensor& y = ensure(ctx.backend, y_, output_shape(x.shape()));
    ctx.backend.linear_forward(x, weight_->value, &bias_->value, y);
    return y;
  }
  const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool need_dx) override {
    ctx.backend.linear_backward_weights(x_, dy, weight_->grad, &bias_->grad);
    if (!need_dx) return dx_ = Tensor();
    Tensor& dx = ensure(ctx.backend, dx_, x_.shape());
    ctx.backend.linear_backward_data(dy, weight_->value, dx);
    return dx;
  }

 private:
  std::int64_t in_, out_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
  Tensor x_, y_, dx_;
};

class Relu final : public Layer {
 public:
  std::string describe() const override { return "relu"; }
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

class Pool final : public Layer {
 public:
  Pool(PoolParams p, bool global) : p_(p), global_(global) {}
  std::string describe() const override {
    if (global_) return "global average pool";
    return std::string(p_.kind == PoolKind::max ? "max" : "average") + " pool " + std::to_string(p_.kernel) + "x" +
           std::to_string(p_.kernel) + " stride " + std::to_string(p_.stride);
  }
  PoolParams params_for(const Shape& x) const {
    PoolParams p = p_;
    if (global_) p.kernel = p.stride = static_cast<int>(x[2]);
    return p;
  }
  Shape output_shape(const Shape& x) const override {
    SHOAL_ASSERT(x.rank() == 4, describe() << " got input " << x.str());
    SHOAL_ASSERT(!global_ || x[2] == x[3], "global pooling needs square inputs, got " << x.str());
    PoolParams p = params_for(x);
    return Shape{x[0], x[1], window_output_size(x[2], p.kernel, p.stride, p.pad),
                 window_output_size(x[3], p.kernel, p.stride, p.pad)};
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
  BatchNorm(std::int64_t channels, float momentum, float eps) : channels_(channels), momentum_(momentum), eps_(eps) {}
  std::string describe() const override { return "batch norm " + std::to_string(channels_); }
  Shape output_shape(const Shape& x) const override {
    SHOAL_ASSERT((x.rank() == 2 || x.rank() == 4) && x[1] == channels_, describe() << " got input " << x.str());
    return x;
  }
  void declare(ParameterSet& set, const std::string& prefix) override {
    gamma_ = set.add_parameter(prefix + "gamma", Shape{channels_}, Initializer{Initializer::constant, 1, 1.f});
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
  float momentum_, eps_;
  Parameter *gamma_ = nullptr, *beta_ = nullptr, *running_mean_ = nullptr, *running_var_ = nullptr;
  Tensor x_, y_, dx_, saved_mean_, saved_var_;
  bool synced_ = false;
  float count_ = 0;
};

class Dropout final : public Layer {
 public:
  Dropout(float p, std::uint64_t salt) : p_(p), salt_(salt) {}
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

class BasicBlock final : public Layer {
 public:
  BasicBlock(std::int64_t in, std::int64_t out, int stride) : in_(in), out_(out), stride_(stride) {
    main_.push_back(conv2d(in, out, 3, stride, 1, false));
    main_.push_back(batch_norm(out));
    main_.push_back(relu());
    main_.push_back(conv2d(out, out, 3, 1, 1, false));
    main_.push_back(batch_norm(out));
    if (stride != 1 || in != out) {
      shortcut_.push_back(conv2d(in, out, 1, stride, 0, false));
      shortcut_.push_back(batch_norm(out));
    }
  }
  std::string describe() const override {
    return "basic block " + std::to_string(in_) + "->" + std::to_string(out_) + " stride " + std::to_string(stride_) +
           (shortcut_.empty() ? "" : " (projection shortcut)");
  }
  Shape output_shape(const Shape& x) const override {
    Shape s = x;
    for (const auto& l : main_) s = l->output_shape(s);
    return s;
  }
  void declare(ParameterSet& set, const std::string& prefix) override {
    const char* main_names[] = {"conv1.", "bn1.", "relu.", "conv2.", "bn2."};
    for (std::size_t i = 0; i < main_.size(); ++i) main_[i]->declare(set, prefix + main_names[i]);
    const char* short_names[] = {"shortcut.conv.", "shortcut.bn."};
    for (std::size_t i = 0; i < shortcut_.size(); ++i) shortcut_[i]->declare(set, prefix + short_names[i]);
    for (auto* group : {&main_, &shortcut_})
      for (const auto& l : *group) params_.insert(params_.end(), l->parameters().begin(), l->parameters().end());
  }
  const Tensor& forward(LayerContext& ctx, const Tensor& x) override {
    const Tensor* h = &x;
    for (auto& l : main_) h = &l->forward(ctx, *h);
    const Tensor* s = &x;
    for (auto& l : shortcut_) s = &l->forward(ctx, *s);
    Tensor& sum = ensure(ctx.backend, sum_, h->shape());
    ctx.backend.add(*h, *s, sum);
    return out_relu_.forward(ctx, sum);
  }
  const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool need_dx) override {
    const Tensor& dsum = out_relu_.backward(ctx, dy, true);
    const Tensor* g = &dsum;
    for (std::size_t i = main_.size(); i-- > 0;) g = &main_[i]->backward(ctx, *g, i > 0 || need_dx);
    const Tensor* gs = &dsum;
    for (std::size_t i = shortcut_.size(); i-- > 0;) gs = &shortcut_[i]->backward(ctx, *gs, i > 0 || need_dx);
    if (!need_dx) return dx_ = Tensor();
    Tensor& dx = ensure(ctx.backend, dx_, g->shape());
    ctx.backend.add(*g, *gs, dx);
    return dx;
  }

 private:
  std::int64_t in_, out_;
  int stride_;
  std::vector<std::unique_ptr<Layer>> main_, shortcut_;
  Relu out_relu_;
  Tensor sum_, dx_;
};

}  // namespace

std::unique_ptr<Layer> conv2d(std::int64_t in, std::int64_t out, int kernel, int stride, int pad, bool bias) {
  return std::make_unique<Conv2d>(in, out, kernel, stride, pad, bias);
}
std::unique_ptr<Layer> linear(std::int64_t in, std::int64_t out) { return std::make_unique<Linear>(in, out); }
std::unique_ptr<Layer> relu() { return std::make_unique<Relu>(); }
std::unique_ptr<Layer> max_pool(int kernel, int stride) {
  return std::make_unique<Pool>(PoolParams{PoolKind::max, kernel, stride, 0}, false);
}
std::unique_ptr<Layer> global_avg_pool() {
  return std::make_unique<Pool>(PoolParams{PoolKind::average, 1, 1, 0}, true);
}
std::unique_ptr<Layer> batch_norm(std::int64_t channels, float momentum, float eps) {
  return std::make_unique<BatchNorm>(channels, momentum, eps);
}
std::unique_ptr<Layer> dropout(float p, std::uint64_t salt) { return std::make_unique<Dropout>(p, salt); }
std::unique_ptr<Layer> flatten() { return std::make_unique<Flatten>(); }
std::unique_ptr<Layer> basic_block(std::int64_t in, std::int64_t out, int stride) {
  return std::make_unique<BasicBlock>(in, out, stride);
}

}  // namespace shoal
