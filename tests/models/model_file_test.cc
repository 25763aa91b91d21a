// Model files: the zoo read from its files against the C++ models they replaced (bit for bit),
// torchvision's parameter counts, gradients through merges and blocks, every kind of mistake
// in a file (one line naming the file and line), and a fuzz of the reader.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "base/error.h"
#include "compute/devices/devices.h"
#include "compute/rng.h"
#include "models/layer.h"
#include "models/model.h"
#include "models/model_file.h"
#include "tests/support/host_copy.h"

namespace shoal {
namespace {

using testing::to_host;

Tensor random_input(Backend& b, const Shape& s, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<float> host(static_cast<std::size_t>(s.numel()));
  for (auto& v : host) v = static_cast<float>(rng.normal());
  Tensor t = b.allocate(s);
  b.copy_from_host(host.data(), t);
  return t;
}

// ---- the models the zoo files replaced ----------------------------------------------------------
// models/model.cc before model files (commit 087f8c3), kept here as the reference the files
// must reproduce: the same layers, parameter names, declaration order, initialisation, dropout
// masks and arithmetic.

// The ResNet basic block as one composite layer, as it was.
class ReferenceBasicBlock final : public Layer {
 public:
  ReferenceBasicBlock(std::int64_t in, std::int64_t out, int stride) {
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
  std::string describe() const override { return "reference basic block"; }
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
    return out_relu_->forward(ctx, sum);
  }
  const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool need_dx) override {
    const Tensor& dsum = out_relu_->backward(ctx, dy, true);
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
  std::vector<std::unique_ptr<Layer>> main_, shortcut_;
  std::unique_ptr<Layer> out_relu_ = relu();
  Tensor sum_, dx_;
};

std::unique_ptr<Model> reference_model(const std::string& name, const Shape& sample, std::int64_t classes) {
  const std::int64_t c = sample[0], h = sample[1], w = sample[2];
  auto m = std::make_unique<Model>(name, sample, classes);
  if (name == "mlp") {
    m->add("flatten", flatten());
    m->add("fc1", linear(c * h * w, 256));
    m->add("relu1", relu());
    m->add("fc2", linear(256, 128));
    m->add("relu2", relu());
    m->add("fc3", linear(128, classes));
  } else if (name == "cnn" || name == "cnn_bn") {
    const bool bn = name == "cnn_bn";
    m->add("conv1", conv2d(c, 32, 3, 1, 1));
    if (bn) m->add("bn1", batch_norm(32));
    m->add("relu1", relu());
    m->add("pool1", max_pool(2, 2));
    m->add("conv2", conv2d(32, 64, 3, 1, 1));
    if (bn) m->add("bn2", batch_norm(64));
    m->add("relu2", relu());
    m->add("pool2", max_pool(2, 2));
    m->add("flatten", flatten());
    m->add("fc1", linear(64 * (h / 4) * (w / 4), 128));
    if (bn) m->add("bn3", batch_norm(128));
    m->add("relu3", relu());
    if (bn) m->add("drop", dropout(0.3f, 1));
    m->add("fc2", linear(128, classes));
  } else {  // resnet20
    m->add("conv1", conv2d(c, 16, 3, 1, 1, false));
    m->add("bn1", batch_norm(16));
    m->add("relu1", relu());
    std::int64_t in = 16;
    const std::int64_t widths[] = {16, 32, 64};
    for (int stage = 0; stage < 3; ++stage)
      for (int b = 0; b < 3; ++b) {
        m->add("layer" + std::to_string(stage + 1) + "." + std::to_string(b),
               std::make_unique<ReferenceBasicBlock>(in, widths[stage], (stage > 0 && b == 0) ? 2 : 1));
        in = widths[stage];
      }
    m->add("pool", global_avg_pool());
    m->add("flatten", flatten());
    m->add("fc", linear(64, classes));
  }
  return m;
}

// Three SGD steps on the same random batches: every parameter, buffer and logit, bit for bit.
TEST(ModelFiles, TheFourZooFilesTrainBitForBitAsTheModelsTheyReplaced) {
  struct Case {
    const char* name;
    Shape sample;
  } cases[] = {{"mlp", Shape{1, 28, 28}}, {"cnn", Shape{1, 28, 28}}, {"cnn_bn", Shape{3, 16, 16}},
               {"resnet20", Shape{3, 16, 16}}};
  auto backend = make_backend(BackendOptions{Device::cpu(), 2});
  Backend& b = *backend;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto file = build_model(c.name, c.sample, 10);
    auto reference = reference_model(c.name, c.sample, 10);
    file->build(b, 17);
    reference->build(b, 17);
    ASSERT_EQ(file->params().parameters().size(), reference->params().parameters().size());
    for (std::size_t i = 0; i < file->params().parameters().size(); ++i) {
      const Parameter& f = *file->params().parameters()[i];
      const Parameter& r = *reference->params().parameters()[i];
      EXPECT_EQ(f.name, r.name);
      EXPECT_EQ(f.shape, r.shape) << f.name;
      EXPECT_EQ(f.offset, r.offset) << f.name;
    }
    ASSERT_EQ(file->params().buffers().size(), reference->params().buffers().size());
    EXPECT_EQ(to_host(b, file->params().values()), to_host(b, reference->params().values())) << "initial values";

    std::vector<std::int32_t> labels{3, 1, 4, 1, 5, 9, 2, 6};
    Tensor y = b.allocate(Shape{8}, DType::i32);
    b.copy_from_host(labels.data(), y);
    std::vector<std::int64_t> dims{8};
    dims.insert(dims.end(), c.sample.dims().begin(), c.sample.dims().end());
    for (int step = 0; step < 3; ++step) {
      Tensor x = random_input(b, Shape(dims), 100 + step);
      std::vector<std::vector<float>> logits;
      for (Model* m : {file.get(), reference.get()}) {
        LayerContext ctx{b, true, 1000u + static_cast<std::uint64_t>(step)};
        const Tensor& z = m->forward(ctx, x);
        logits.push_back(to_host(b, z));
        Tensor dz = b.allocate(z.shape());
        b.softmax_cross_entropy(z, y, &dz, 1.f / 8);
        m->backward(ctx, dz);
        b.axpy(-0.05f, m->params().grads(), m->params().values());
      }
      EXPECT_EQ(logits[0], logits[1]) << "step " << step;
    }
    EXPECT_EQ(to_host(b, file->params().values()), to_host(b, reference->params().values()));
    EXPECT_EQ(to_host(b, file->params().grads()), to_host(b, reference->params().grads()));
    EXPECT_EQ(to_host(b, file->params().buffer_values()), to_host(b, reference->params().buffer_values()));
  }
}

TEST(ModelFiles, ZooParameterCountsAreTorchvisions) {
  struct Case {
    const char* name;
    std::int64_t params;
  } cases[] = {{"resnet18", 11689512}, {"resnet50", 25557032}, {"mobilenet_v2", 3504872}};
  for (const auto& c : cases) {
    auto m = build_model(c.name, Shape{3, 224, 224}, 1000);
    m->declare();
    EXPECT_EQ(m->params().parameter_count(), c.params) << c.name;
    const auto nodes = m->nodes();
    EXPECT_EQ(nodes.back().output, (Shape{1000})) << c.name;
  }
  // Their feature maps at 224: 7x7 before pooling (stride 32).
  auto r18 = build_model("resnet18", Shape{3, 224, 224}, 1000);
  EXPECT_EQ(r18->shape_of("layer4.1.out"), (Shape{512, 7, 7}));
  EXPECT_EQ(r18->shape_of("maxpool"), (Shape{64, 56, 56}));
  auto mb = build_model("mobilenet_v2", Shape{3, 224, 224}, 1000);
  EXPECT_EQ(mb->shape_of("head.relu"), (Shape{1280, 7, 7}));
  // Multiply-adds, counted by hand for one convolution and one linear layer.
  auto one = build_model_from_text(
      "layers:\n - {name: c, op: conv, out: 8, kernel: 3, stride: 2, pad: 1}\n - {name: f, op: linear, out: 5}\n",
      "mac.yaml", Shape{4, 10, 10}, 5);
  EXPECT_EQ(one->macs(), 8 * 5 * 5 * 4 * 9 + 8 * 5 * 5 * 5);
}

// resnet50 is built and takes a training step on the CPU: finite loss, every gradient finite
// and some non-zero, every tensor of parameters moved.
TEST(ModelFiles, ResNet50TakesATrainingStepOnTheCpu) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 2});
  Backend& b = *backend;
  auto model = build_model("resnet50", Shape{3, 64, 64}, 10);
  model->build(b, 1);
  EXPECT_EQ(model->params().parameter_count(), 25557032 - 2048 * 990 - 990);
  auto before = to_host(b, model->params().values());
  Tensor x = random_input(b, Shape{2, 3, 64, 64}, 5);
  std::vector<std::int32_t> labels{2, 7};
  Tensor y = b.allocate(Shape{2}, DType::i32);
  b.copy_from_host(labels.data(), y);
  LayerContext ctx{b, true, 1};
  const Tensor& z = model->forward(ctx, x);
  ASSERT_EQ(z.shape(), (Shape{2, 10}));
  Tensor dz = b.allocate(z.shape());
  LossStats loss = b.softmax_cross_entropy(z, y, &dz, 0.5f);
  EXPECT_TRUE(std::isfinite(loss.loss_sum));
  model->backward(ctx, dz);
  EXPECT_TRUE(b.all_finite(model->params().grads()));
  EXPECT_GT(b.sum_squares(model->params().grads()), 0);
  b.axpy(-0.1f, model->params().grads(), model->params().values());
  auto after = to_host(b, model->params().values());
  int unchanged = 0;
  for (const auto& p : model->params().parameters()) {
    bool moved = false;
    for (std::int64_t i = p->offset; i < p->offset + p->shape.numel() && !moved; ++i)
      moved = after[static_cast<std::size_t>(i)] != before[static_cast<std::size_t>(i)];
    if (!moved) ++unchanged, ADD_FAILURE() << p->name << " did not move";
  }
  EXPECT_EQ(unchanged, 0);
}

// Finite differences through an add (identity and projection), a concat, a depthwise
// convolution, relu6 and a repeated block.
TEST(ModelFiles, GradientsFlowThroughMergesAndBlocks) {
  const std::string text = R"(
blocks:
  mixed:
    args: {out: required}
    layers:
      - {name: a, op: conv, out: $out, kernel: 3, pad: 1}
      - {name: b, op: conv, from: input, depthwise: true, kernel: 3, pad: 1}
      - {name: b6, op: relu6}
      - {name: cat, op: concat, from: [a, b6]}
      - {name: mix, op: conv, out: $in, kernel: 1}
      - {name: sum, op: add, from: [mix, input]}
layers:
  - {name: stem, op: conv, out: 4, kernel: 3, pad: 1}
  - {name: blocks, block: mixed, repeat: 2, args: {out: 3}}
  - {name: pool, op: avg_pool, kernel: 2}
  - {name: fc, op: linear, out: $classes}
)";
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  Backend& b = *backend;
  auto model = build_model_from_text(text, "grad.yaml", Shape{2, 6, 6}, 5);
  model->build(b, 3);
  Tensor x = random_input(b, Shape{3, 2, 6, 6}, 9);
  Rng rng(4);
  std::vector<float> r(15);
  for (auto& v : r) v = static_cast<float>(rng.normal());
  Tensor dy = b.allocate(Shape{3, 5});
  b.copy_from_host(r.data(), dy);
  LayerContext ctx{b, true, 1};
  model->forward(ctx, x);
  std::vector<Parameter*> reported;
  model->backward(ctx, dy, [&](const std::vector<Parameter*>& ps) { reported.insert(reported.end(), ps.begin(), ps.end()); });
  EXPECT_EQ(reported.size(), model->params().parameters().size()) << "every parameter reported once";
  auto grads = to_host(b, model->params().grads());
  auto values = to_host(b, model->params().values());
  auto loss = [&]() {
    b.copy_from_host(values.data(), model->params().values());
    auto z = to_host(b, model->forward(ctx, x));
    double sum = 0;
    for (std::size_t i = 0; i < z.size(); ++i) sum += static_cast<double>(z[i]) * r[i];
    return sum;
  };
  // A small step: relu6 has kinks at 0 and 6, and a larger step moves many inputs across them.
  const double h = 1e-3;
  int failures = 0;
  for (const auto& p : model->params().parameters()) {
    for (int s = 0; s < 6; ++s) {
      auto i = static_cast<std::size_t>(p->offset) + static_cast<std::size_t>(rng.below(p->shape.numel()));
      const float saved = values[i];
      values[i] = saved + static_cast<float>(h);
      const double plus = loss();
      values[i] = saved - static_cast<float>(h);
      const double minus = loss();
      values[i] = saved;
      const double numeric = (plus - minus) / (2 * h);
      if (std::abs(numeric - grads[i]) > 2e-3 + 2e-2 * std::abs(numeric) && ++failures <= 3)
        ADD_FAILURE() << p->name << " element " << i << ": analytic " << grads[i] << " numeric " << numeric;
    }
  }
  EXPECT_EQ(failures, 0);
}

// Every mistake: a ConfigError of one line with the file, the line and what is wrong.
TEST(ModelFiles, MistakesAreOneLineNamingTheFileTheLineAndTheProblem) {
  struct Case {
    const char* what;
    const char* text;
    std::vector<const char*> expected;  // substrings of the message
  } cases[] = {
      {"unknown layer kind", "layers:\n  - {op: convolution, out: 8, kernel: 3}\n",
       {"bad.yaml:2:", "unknown layer kind 'convolution'", "conv, linear"}},
      {"unknown option", "layers:\n  - {op: conv, out: 8, kernel: 3}\n  - {name: p, op: max_pool, kernel: 2, strid: 2}\n",
       {"bad.yaml:3:", "max_pool 'p': unknown option 'strid'", "kernel, stride, pad"}},
      {"missing option", "layers:\n  - {name: c1, op: conv, out: 8}\n", {"bad.yaml:2:", "conv 'c1' needs `kernel:`"}},
      {"add of two shapes",
       "layers:\n  - {name: a, op: conv, out: 8, kernel: 3, pad: 1}\n  - {name: b, op: conv, out: 4, kernel: 3, pad: 1, "
       "from: input}\n  - {name: s, op: add, from: [a, b]}\n",
       {"bad.yaml:4:", "add 's'", "'b' is 4x6x6", "'a' is 8x6x6"}},
      {"declared input width", "layers:\n  - {name: c, op: conv, out: 8, kernel: 3}\n  - {name: f, op: linear, in: 100, out: 3}\n",
       {"bad.yaml:3:", "linear 'f' expects 100 inputs", "'c' gives 8x4x4"}},
      {"window larger than its input", "layers:\n  - {name: p, op: max_pool, kernel: 9}\n",
       {"bad.yaml:2:", "max_pool 'p'", "3x6x6 is smaller than its window"}},
      {"cycle", "layers:\n  - {name: a, op: relu, from: c}\n  - {name: b, op: relu}\n  - {name: c, op: relu}\n",
       {"bad.yaml:", "cycle", "a -> b -> c -> a"}},
      {"self loop", "layers:\n  - {name: a, op: relu, from: a}\n", {"bad.yaml:2:", "cycle: a -> a"}},
      {"duplicate name", "layers:\n  - {name: a, op: relu}\n  - {name: a, op: relu}\n",
       {"bad.yaml:3:", "two layers are named 'a'", "line 2"}},
      {"undefined block", "layers:\n  - {name: s, block: stage}\n", {"bad.yaml:2:", "block 'stage', which `blocks:` does not define"}},
      {"block cycle",
       "blocks:\n  x:\n    layers:\n      - {block: y}\n  y:\n    layers:\n      - {block: x}\nlayers:\n  - {block: x}\n",
       {"bad.yaml:", "blocks form a cycle: x -> y -> x"}},
      {"undefined reference", "layers:\n  - {name: a, op: relu}\n  - {name: s, op: add, from: [a, b]}\n",
       {"bad.yaml:3:", "reads 'b', which is not defined"}},
      {"required argument", "blocks:\n  b:\n    args: {out: required}\n    layers: [{op: conv, out: $out, kernel: 1}]\nlayers:\n  - {name: x, block: b}\n",
       {"bad.yaml:6:", "without its required argument 'out'"}},
      {"unknown argument", "blocks:\n  b:\n    args: {out: 4}\n    layers: [{op: conv, out: $out, kernel: 1}]\nlayers:\n  - {name: x, block: b, args: {width: 3}}\n",
       {"bad.yaml:6:", "block 'b' has no argument 'width'"}},
      {"undefined variable", "layers:\n  - {op: conv, out: $width, kernel: 1}\n", {"bad.yaml:2:", "'$width' is not defined"}},
      {"not a number", "layers:\n  - {op: conv, out: eight, kernel: 1}\n", {"bad.yaml:2:", "`out: eight` is not a number"}},
      {"fractional kernel", "layers:\n  - {op: conv, out: 8, kernel: 2.5}\n", {"bad.yaml:2:", "whole number"}},
      {"groups that do not divide", "layers:\n  - {op: conv, out: 8, kernel: 1, groups: 3}\n",
       {"bad.yaml:2:", "groups 3 must divide"}},
      {"a flag that is not one", "layers:\n  - {op: relu, if: maybe}\n", {"bad.yaml:2:", "`if:` must be true"}},
      {"dropout of one", "layers:\n  - {op: dropout, p: 1}\n", {"bad.yaml:2:", "p must lie in [0, 1)"}},
      {"op and block", "layers:\n  - {op: relu, block: b}\n", {"bad.yaml:2:", "either `op:`"}},
      {"no layers", "name: empty\n", {"bad.yaml", "needs a non-empty `layers:` list"}},
      {"unknown top-level key", "layer:\n  - {op: relu}\n", {"bad.yaml:1:", "unknown key 'layer'"}},
      {"not YAML", "layers: [ {op: relu\n", {"bad.yaml:", "not valid YAML"}},
      {"a list, not a map", "- {op: relu}\n", {"bad.yaml:1:", "a model file is a map"}},
      {"merge of one", "layers:\n  - {name: a, op: relu}\n  - {name: s, op: add, from: a}\n",
       {"bad.yaml:3:", "add 's' needs `from:` with two or more layers"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    try {
      build_model_from_text(c.text, "bad.yaml", Shape{3, 6, 6}, 10);
      ADD_FAILURE() << "accepted";
    } catch (const ConfigError& error) {
      const std::string message = error.what();
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      for (const char* part : c.expected) EXPECT_NE(message.find(part), std::string::npos) << message;
    }
  }
  EXPECT_THROW(build_model("resnet21", Shape{3, 32, 32}, 10), ConfigError);
  EXPECT_THROW(build_model("/nonexistent/model.yaml", Shape{3, 32, 32}, 10), ConfigError);
}

// Damaged copies of every zoo file: each is built or refused with a ConfigError, never a
// crash, a hang or another exception.
TEST(ModelFilesFuzz, DamagedZooFilesAreBuiltOrRefusedCleanly) {
  Rng rng(2026);
  const std::string alphabet = "{}[],:-$*# \n\tabcxyz0123456789.'\"";
  int refused = 0, built = 0;
  for (const auto& name : zoo_names()) {
    const std::string original = *zoo_text(name);
    for (int i = 0; i < 150; ++i) {
      std::string text = original;
      const int edits = 1 + static_cast<int>(rng.below(4));
      for (int e = 0; e < edits && !text.empty(); ++e) {
        const std::size_t at = rng.below(text.size());
        switch (rng.below(4)) {
          case 0:
            text[at] = alphabet[rng.below(alphabet.size())];
            break;
          case 1:
            text.erase(at, 1 + rng.below(12));
            break;
          case 2:
            text.insert(at, 1, alphabet[rng.below(alphabet.size())]);
            break;
          default:
            text.resize(at);
        }
      }
      try {
        build_model_from_text(text, name + ".yaml", Shape{3, 16, 16}, 10)->declare();
        ++built;
      } catch (const ConfigError&) {
        ++refused;
      }
    }
  }
  EXPECT_GT(refused, 100);
  std::printf("damaged zoo files: %d refused, %d still built\n", refused, built);
}

}  // namespace
}  // namespace shoal
