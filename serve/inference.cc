#include "serve/inference.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "base/error.h"
#include "data/image.h"
#include "data/spec.h"
#include "data/transform.h"
#include "compute/devices/devices.h"

namespace shoal {

namespace {
constexpr std::int64_t kSamplesPerThread = 4;  // batches smaller than this run on one thread
}

InferenceModel::InferenceModel(TrainedModel trained, const BackendOptions& options)
    : backend_(make_backend(options)), model_(std::move(trained.model)), meta_(std::move(trained.meta)),
      source_(std::move(trained.source)) {
  model_->build(*backend_, 0);
  ParameterSet& params = model_->params();
  SHOAL_REQUIRE(params.values().numel() == static_cast<std::int64_t>(trained.values.size()) &&
                    params.buffer_values().numel() == static_cast<std::int64_t>(trained.buffers.size()),
                InternalError, source_ << ": weights do not fit the model");
  if (!trained.values.empty()) backend_->copy_from_host(trained.values.data(), params.values());
  if (!trained.buffers.empty()) backend_->copy_from_host(trained.buffers.data(), params.buffer_values());
  sample_size_ = model_->sample_shape().numel();
}

std::string InferenceModel::class_name(std::int64_t c) const {
  if (c >= 0 && c < static_cast<std::int64_t>(meta_.class_names.size())) return meta_.class_names[static_cast<std::size_t>(c)];
  return std::to_string(c);
}

void InferenceModel::predict(const float* x, std::int64_t n, float* out) {
  const Shape& s = model_->sample_shape();
  std::vector<std::int64_t> dims{n};
  for (std::size_t i = 0; i < s.rank(); ++i) dims.push_back(s[i]);
  // A few samples: one thread. Waking the others for each of a small model's layers cost more
  // than it saved (resnet20, one sample: 3.7 ms on two threads, 1.0 ms on one).
  backend_->limit_threads(n < kSamplesPerThread ? 1 : 1 << 30);
  Tensor input = backend_->allocate(Shape(dims));
  backend_->copy_from_host(x, input);
  LayerContext ctx{*backend_};
  ctx.training = false;
  const Tensor& logits = model_->forward(ctx, input);
  backend_->copy_to_host(logits, out);
}

namespace {

Normalization normalization_of(const ModelMeta& meta, std::int64_t channels) {
  Normalization norm;
  if (meta.normalize && !meta.mean.empty()) {
    norm.mean = meta.mean;
    norm.stddev = meta.stddev;
  } else {
    norm.mean.assign(static_cast<std::size_t>(channels), 0.f);
    norm.stddev.assign(static_cast<std::size_t>(channels), 1.f);
  }
  return norm;
}

void image_dims(const ModelMeta& meta, std::int64_t* c, std::int64_t* h, std::int64_t* w) {
  SHOAL_REQUIRE(meta.input.rank() == 3 && (meta.input[0] == 1 || meta.input[0] == 3), ConfigError,
                "model '" << meta.name << "' takes " << dims_text(meta.input)
                          << ", not images (1 or 3 channels x height x width)");
  *c = meta.input[0];
  *h = meta.input[1];
  *w = meta.input[2];
}

}  // namespace

void preprocess_image(std::span<const std::uint8_t> bytes, const ModelMeta& meta, const std::string& what, float* out) {
  std::int64_t c = 0, h = 0, w = 0;
  image_dims(meta, &c, &h, &w);
  const ImageHeader header = read_image_header(bytes, what);
  DataSpec spec;
  spec.format = DataFormat::folder;
  spec.channels = c;
  if (h == w) {
    spec.size = h;  // the shorter side to `resize` (0: the size), then the centre crop
    spec.resize = meta.resize;
  } else {
    SHOAL_REQUIRE(header.height == h && header.width == w, DataError,
                  what << ": image is " << header.width << "x" << header.height << ", the model takes " << w << "x" << h);
  }
  const TransformPlan plan = plan_transform(spec, false, header.height, header.width, nullptr);
  std::int64_t min_h = 0, min_w = 0;
  min_decode_size(plan, header.height, header.width, &min_h, &min_w);
  const Image image = decode_image(bytes, static_cast<int>(c), what, min_h, min_w);
  render_transform(image, plan, header.height, header.width, normalization_of(meta, c), out);
}

void preprocess_pixels(const std::uint8_t* pixels, const ModelMeta& meta, float* out) {
  std::int64_t c = 0, h = 0, w = 0;
  image_dims(meta, &c, &h, &w);
  const Normalization norm = normalization_of(meta, c);
  for (std::int64_t ch = 0; ch < c; ++ch) {
    // As the data layer normalises (gather_batch, render_transform), to the last bit.
    const float sd = norm.stddev[static_cast<std::size_t>(ch)];
    const float scale = 1.f / (255.f * sd), shift = norm.mean[static_cast<std::size_t>(ch)] / sd;
    for (std::int64_t i = 0; i < h * w; ++i) {
      const std::int64_t at = ch * h * w + i;
      out[at] = static_cast<float>(pixels[at]) * scale - shift;
    }
  }
}

std::vector<float> softmax(const float* logits, std::int64_t classes) {
  std::vector<float> p(static_cast<std::size_t>(classes));
  const float top = *std::max_element(logits, logits + classes);
  double sum = 0;
  for (std::int64_t c = 0; c < classes; ++c) sum += p[static_cast<std::size_t>(c)] = std::exp(logits[c] - top);
  for (float& v : p) v = static_cast<float>(v / sum);
  return p;
}

std::vector<std::pair<std::int64_t, float>> top_k(const std::vector<float>& probabilities, std::int64_t k) {
  std::vector<std::int64_t> order(probabilities.size());
  std::iota(order.begin(), order.end(), 0);
  k = std::clamp<std::int64_t>(k, 0, static_cast<std::int64_t>(order.size()));
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](std::int64_t a, std::int64_t b) {
    const float pa = probabilities[static_cast<std::size_t>(a)], pb = probabilities[static_cast<std::size_t>(b)];
    return pa != pb ? pa > pb : a < b;
  });
  std::vector<std::pair<std::int64_t, float>> out;
  for (std::int64_t i = 0; i < k; ++i) out.emplace_back(order[static_cast<std::size_t>(i)], probabilities[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])]);
  return out;
}

}  // namespace shoal
