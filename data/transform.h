// Image transforms, torchvision's vocabulary: resize of the shorter side + centre crop
// (evaluation), random resized crop (scale and ratio ranges) and horizontal flip (training),
// then normalisation by per-channel mean and std into CHW floats. A transform is planned as a
// crop rectangle in the source image, an output size and a flip — so a JPEG can be decoded at a
// DCT scale just large enough for the crop — and rendered by one separable resampling pass
// (triangle filter, widened when shrinking, as PIL's bilinear). Random choices come from an Rng
// seeded by (seed, epoch, sample): a run is reproducible bit for bit and sync ranks agree.
#pragma once

#include <cstdint>

#include "compute/rng.h"
#include "data/dataset.h"
#include "data/image.h"
#include "data/spec.h"

namespace shoal {

struct TransformPlan {
  double x = 0, y = 0, w = 0, h = 0;  // the crop, in source pixels
  std::int64_t out_h = 0, out_w = 0;
  bool flip = false;
};

// The plan for one sample of a src_h x src_w image: training (rng given) or evaluation.
// spec.size == 0 keeps the image as it is (the caller checks that it has the data set's size).
TransformPlan plan_transform(const DataSpec& spec, bool train, std::int64_t src_h, std::int64_t src_w, Rng* rng);

// The smallest decoded size (height, width) the plan can be rendered from without enlarging
// the crop, for an image of src_h x src_w: what a JPEG may be DCT-scaled down to.
void min_decode_size(const TransformPlan& plan, std::int64_t src_h, std::int64_t src_w, std::int64_t* min_h,
                     std::int64_t* min_w);

// Renders the plan (made for a src_h x src_w image) from `image`, which may be a scaled-down
// decode of it, into out[channels][out_h][out_w], normalised.
void render_transform(const Image& image, const TransformPlan& plan, std::int64_t src_h, std::int64_t src_w,
                      const Normalization& norm, float* out);

// The random generator of one sample's training transform.
inline Rng sample_rng(std::uint64_t seed, std::int64_t epoch, std::int64_t sample) {
  return Rng(hash_combine(hash_combine(seed ^ 0x5452414e53464f52ULL, static_cast<std::uint64_t>(epoch)),
                          static_cast<std::uint64_t>(sample)));
}

}  // namespace shoal
