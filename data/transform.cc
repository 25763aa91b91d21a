#include "data/transform.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "base/error.h"

namespace shoal {
namespace {

// A centred crop of aspect out_w/out_h covering as much of the image as possible after its
// shorter side is scaled to `resize` and its centre `size` x `size` is kept.
TransformPlan center_plan(const DataSpec& spec, std::int64_t src_h, std::int64_t src_w) {
  TransformPlan p;
  p.out_h = p.out_w = spec.size;
  const double resize = static_cast<double>(spec.resize > 0 ? spec.resize : spec.size);
  const double scale = resize / static_cast<double>(std::min(src_h, src_w));  // source -> resized
  p.w = std::min(static_cast<double>(src_w), static_cast<double>(spec.size) / scale);
  p.h = std::min(static_cast<double>(src_h), static_cast<double>(spec.size) / scale);
  p.x = (static_cast<double>(src_w) - p.w) / 2;
  p.y = (static_cast<double>(src_h) - p.h) / 2;
  return p;
}

// torchvision's RandomResizedCrop: ten tries at an area fraction and a log-uniform aspect
// ratio that fit, then a centre crop clamped to the ratio range.
TransformPlan random_resized_plan(const DataSpec& spec, std::int64_t src_h, std::int64_t src_w, Rng& rng) {
  TransformPlan p;
  p.out_h = p.out_w = spec.size;
  const double area = static_cast<double>(src_h * src_w);
  const double log_lo = std::log(spec.crop_ratio_min), log_hi = std::log(spec.crop_ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * (spec.crop_scale_min + rng.uniform() * (spec.crop_scale_max - spec.crop_scale_min));
    const double ratio = std::exp(log_lo + rng.uniform() * (log_hi - log_lo));
    const double w = std::round(std::sqrt(target * ratio)), h = std::round(std::sqrt(target / ratio));
    if (w > 0 && h > 0 && w <= static_cast<double>(src_w) && h <= static_cast<double>(src_h)) {
      p.w = w;
      p.h = h;
      p.y = static_cast<double>(rng.below(static_cast<std::uint64_t>(src_h - static_cast<std::int64_t>(h)) + 1));
      p.x = static_cast<double>(rng.below(static_cast<std::uint64_t>(src_w - static_cast<std::int64_t>(w)) + 1));
      return p;
    }
  }
  const double in_ratio = static_cast<double>(src_w) / static_cast<double>(src_h);
  p.w = static_cast<double>(src_w);
  p.h = static_cast<double>(src_h);
  if (in_ratio < spec.crop_ratio_min) {
    p.h = std::round(p.w / spec.crop_ratio_min);
  } else if (in_ratio > spec.crop_ratio_max) {
    p.w = std::round(p.h * spec.crop_ratio_max);
  }
  p.x = (static_cast<double>(src_w) - p.w) / 2;
  p.y = (static_cast<double>(src_h) - p.h) / 2;
  return p;
}

// Resampling weights along one axis: output i covers source [x0 + i*step, x0 + (i+1)*step).
struct Taps {
  std::vector<std::int32_t> first, count;
  std::vector<float> weights;  // `support` per output
  int support = 0;
};

Taps make_taps(double x0, double extent, std::int64_t in_size, std::int64_t out_size) {
  Taps t;
  const double step = extent / static_cast<double>(out_size);
  const double filter_scale = std::max(1.0, step);  // widen the triangle when shrinking (antialias)
  const double radius = filter_scale;               // triangle of half-width 1, scaled
  t.support = static_cast<int>(std::ceil(radius)) * 2 + 1;
  t.first.resize(static_cast<std::size_t>(out_size));
  t.count.resize(static_cast<std::size_t>(out_size));
  t.weights.assign(static_cast<std::size_t>(out_size * t.support), 0.f);
  for (std::int64_t i = 0; i < out_size; ++i) {
    const double center = x0 + (static_cast<double>(i) + 0.5) * step;
    std::int64_t lo = static_cast<std::int64_t>(std::floor(center - radius + 0.5));
    std::int64_t hi = static_cast<std::int64_t>(std::floor(center + radius + 0.5));
    lo = std::max<std::int64_t>(lo, 0);
    hi = std::min<std::int64_t>(hi, in_size);
    if (hi - lo > t.support) hi = lo + t.support;
    if (hi <= lo) {  // a crop at the very edge: the nearest pixel
      lo = std::clamp<std::int64_t>(static_cast<std::int64_t>(center), 0, in_size - 1);
      hi = lo + 1;
    }
    double total = 0;
    float* w = t.weights.data() + i * t.support;
    for (std::int64_t j = lo; j < hi; ++j) {
      double d = (static_cast<double>(j) + 0.5 - center) / filter_scale;
      double v = std::max(0.0, 1.0 - std::fabs(d));
      w[j - lo] = static_cast<float>(v);
      total += v;
    }
    if (total <= 0) {
      w[0] = 1.f;
      total = 1;
      hi = lo + 1;
    }
    for (std::int64_t j = 0; j < hi - lo; ++j) w[j] = static_cast<float>(w[j] / total);
    t.first[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(lo);
    t.count[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(hi - lo);
  }
  return t;
}

}  // namespace

TransformPlan plan_transform(const DataSpec& spec, bool train, std::int64_t src_h, std::int64_t src_w, Rng* rng) {
  TransformPlan p;
  if (spec.size <= 0) {
    p.w = static_cast<double>(src_w);
    p.h = static_cast<double>(src_h);
    p.out_h = src_h;
    p.out_w = src_w;
  } else if (train && spec.train_crop == TrainCrop::random_resized) {
    p = random_resized_plan(spec, src_h, src_w, *rng);
  } else {
    p = center_plan(spec, src_h, src_w);
  }
  if (train && spec.flip) p.flip = rng->uniform() < 0.5;
  return p;
}

void min_decode_size(const TransformPlan& plan, std::int64_t src_h, std::int64_t src_w, std::int64_t* min_h,
                     std::int64_t* min_w) {
  *min_w = static_cast<std::int64_t>(std::ceil(static_cast<double>(plan.out_w) * static_cast<double>(src_w) / plan.w));
  *min_h = static_cast<std::int64_t>(std::ceil(static_cast<double>(plan.out_h) * static_cast<double>(src_h) / plan.h));
}

void render_transform(const Image& image, const TransformPlan& plan, std::int64_t src_h, std::int64_t src_w,
                      const Normalization& norm, float* out) {
  const std::int64_t C = image.channels, H = image.height, W = image.width;
  const double sx = static_cast<double>(W) / static_cast<double>(src_w), sy = static_cast<double>(H) / static_cast<double>(src_h);
  const std::int64_t oh = plan.out_h, ow = plan.out_w, plane = oh * ow;
  std::vector<float> scale(static_cast<std::size_t>(C)), shift(static_cast<std::size_t>(C));
  for (std::int64_t c = 0; c < C; ++c) {
    scale[c] = 1.f / (255.f * norm.stddev[c]);
    shift[c] = norm.mean[c] / norm.stddev[c];
  }
  // The identity (no crop, no resize): a straight copy.
  if (plan.x == 0 && plan.y == 0 && plan.w == static_cast<double>(W) && plan.h == static_cast<double>(H) && oh == H &&
      ow == W) {
    for (std::int64_t y = 0; y < H; ++y)
      for (std::int64_t x = 0; x < W; ++x) {
        const std::uint8_t* p = image.pixels.data() + (y * W + x) * C;
        const std::int64_t ox = plan.flip ? W - 1 - x : x;
        for (std::int64_t c = 0; c < C; ++c) out[c * plane + y * ow + ox] = p[c] * scale[c] - shift[c];
      }
    return;
  }
  Taps tx = make_taps(plan.x * sx, plan.w * sx, W, ow);
  Taps ty = make_taps(plan.y * sy, plan.h * sy, H, oh);
  // Horizontal pass over the rows the vertical taps touch.
  const std::int64_t row0 = ty.first.front();
  std::int64_t row1 = 0;
  for (std::int64_t i = 0; i < oh; ++i) row1 = std::max<std::int64_t>(row1, ty.first[i] + ty.count[i]);
  std::vector<float> mid(static_cast<std::size_t>((row1 - row0) * ow * C));
  for (std::int64_t y = row0; y < row1; ++y) {
    const std::uint8_t* src = image.pixels.data() + y * W * C;
    float* dst = mid.data() + (y - row0) * ow * C;
    for (std::int64_t i = 0; i < ow; ++i) {
      const float* w = tx.weights.data() + i * tx.support;
      const std::uint8_t* p = src + static_cast<std::int64_t>(tx.first[i]) * C;
      const int n = tx.count[i];
      if (C == 3) {
        float r = 0, g = 0, b = 0;
        for (int k = 0; k < n; ++k) {
          r += w[k] * p[3 * k];
          g += w[k] * p[3 * k + 1];
          b += w[k] * p[3 * k + 2];
        }
        dst[3 * i] = r;
        dst[3 * i + 1] = g;
        dst[3 * i + 2] = b;
      } else {
        for (std::int64_t c = 0; c < C; ++c) {
          float s = 0;
          for (int k = 0; k < n; ++k) s += w[k] * p[k * C + c];
          dst[i * C + c] = s;
        }
      }
    }
  }
  // Vertical pass, normalised, into CHW (mirrored if flipped).
  std::vector<float> acc(static_cast<std::size_t>(ow * C));
  for (std::int64_t j = 0; j < oh; ++j) {
    const float* w = ty.weights.data() + j * ty.support;
    const int n = ty.count[j];
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int k = 0; k < n; ++k) {
      const float* row = mid.data() + (ty.first[j] + k - row0) * ow * C;
      const float wk = w[k];
      for (std::int64_t i = 0; i < ow * C; ++i) acc[i] += wk * row[i];
    }
    for (std::int64_t i = 0; i < ow; ++i) {
      const std::int64_t ox = plan.flip ? ow - 1 - i : i;
      for (std::int64_t c = 0; c < C; ++c) {
        // Rounded and clamped to the pixel range first, as an 8-bit resize would store it.
        float v = std::clamp(std::nearbyint(acc[i * C + c]), 0.f, 255.f);
        out[c * plane + j * ow + ox] = v * scale[c] - shift[c];
      }
    }
  }
}

}  // namespace shoal
