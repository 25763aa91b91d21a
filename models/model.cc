#include "models/model.h"

#include <iomanip>
#include <sstream>

#include "base/error.h"

namespace shoal {

Model::Model(std::string name, Shape sample_shape, std::int64_t classes)
    : name_(std::move(name)), sample_shape_(std::move(sample_shape)), classes_(classes) {}

void Model::add(const std::string& name, std::unique_ptr<Layer> layer) {
  SHOAL_ASSERT(!declared_, "layer added after its parameters were declared");
  layer_names_.push_back(name);
  layers_.push_back(std::move(layer));
}

void Model::declare() {
  SHOAL_ASSERT(!declared_, "model declared twice");
  for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i]->declare(params_, layer_names_[i] + ".");
  declared_ = true;
}

void Model::build(Backend& backend, std::uint64_t seed) {
  SHOAL_ASSERT(!built_, "model built twice");
  if (!declared_) declare();
  params_.allocate(backend, seed);
  built_ = true;
}

const Tensor& Model::forward(LayerContext& ctx, const Tensor& x) {
  SHOAL_ASSERT(built_, "forward before build");
  const Tensor* h = &x;
  for (auto& layer : layers_) h = &layer->forward(ctx, *h);
  return *h;
}

void Model::backward(LayerContext& ctx, const Tensor& dlogits, const GradientsReady& ready) {
  const Tensor* g = &dlogits;
  for (std::size_t i = layers_.size(); i-- > 0;) {
    g = &layers_[i]->backward(ctx, *g, i > 0);
    if (ready && !layers_[i]->parameters().empty()) ready(layers_[i]->parameters());
  }
}

std::string Model::summary() const {
  std::ostringstream out;
  Shape s = sample_shape_;
  std::vector<std::int64_t> dims{1};
  dims.insert(dims.end(), s.dims().begin(), s.dims().end());
  Shape shape(dims);
  out << "model " << name_ << ", input " << sample_shape_.str() << ", " << classes_ << " classes\n";
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    shape = layers_[i]->output_shape(shape);
    std::int64_t count = 0;
    for (const auto* p : layers_[i]->parameters()) count += p->shape.numel();
    std::vector<std::int64_t> out_dims(shape.dims().begin() + 1, shape.dims().end());
    out << "  " << std::left << std::setw(10) << layer_names_[i] << std::setw(44) << layers_[i]->describe() << " -> "
        << std::setw(14) << Shape(out_dims).str() << std::right << std::setw(10) << count << " params\n";
  }
  out << "  parameters: " << params_.parameters().size() << " tensors, " << params_.parameter_count() << " values ("
      << std::fixed << std::setprecision(2) << params_.parameter_count() * 4.0 / (1 << 20) << " MiB)";
  return out.str();
}

std::unique_ptr<Model> build_model(const std::string& name, const Shape& sample_shape, std::int64_t classes) {
  SHOAL_REQUIRE(sample_shape.rank() == 3, ConfigError, "model input must be C x H x W, got " << sample_shape.str());
  const std::int64_t c = sample_shape[0], h = sample_shape[1], w = sample_shape[2];
  auto m = std::make_unique<Model>(name, sample_shape, classes);
  if (name == "mlp") {
    m->add("flatten", flatten());
    m->add("fc1", linear(c * h * w, 256));
    m->add("relu1", relu());
    m->add("fc2", linear(256, 128));
    m->add("relu2", relu());
    m->add("fc3", linear(128, classes));
  } else if (name == "cnn" || name == "cnn_bn") {
    SHOAL_REQUIRE(h % 4 == 0 && w % 4 == 0, ConfigError,
                  "model " << name << " needs H and W divisible by 4, got " << sample_shape.str());
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
  } else if (name == "resnet20") {
    SHOAL_REQUIRE(h % 4 == 0 && w % 4 == 0 && h == w, ConfigError,
                  "resnet20 needs square inputs with sides divisible by 4, got " << sample_shape.str());
    m->add("conv1", conv2d(c, 16, 3, 1, 1, false));
    m->add("bn1", batch_norm(16));
    m->add("relu1", relu());
    std::int64_t in = 16;
    const std::int64_t widths[] = {16, 32, 64};
    for (int stage = 0; stage < 3; ++stage) {
      for (int b = 0; b < 3; ++b) {
        int stride = (stage > 0 && b == 0) ? 2 : 1;
        m->add("layer" + std::to_string(stage + 1) + "." + std::to_string(b), basic_block(in, widths[stage], stride));
        in = widths[stage];
      }
    }
    m->add("pool", global_avg_pool());
    m->add("flatten", flatten());
    m->add("fc", linear(64, classes));
  } else {
    SHOAL_THROW(ConfigError, "model = '" << name << "' is not one of: mlp, cnn, cnn_bn, resnet20");
  }
  return m;
}

}  // namespace shoal
