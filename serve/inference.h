// A trained model ready to answer: built on a backend with its weights, run in inference mode
// (batch norm on its running statistics, dropout off), and the evaluation transform that turns an
// encoded image into its input — the same decode and transform training evaluated with, so a
// prediction here equals `shoal predict`'s and the job's own evaluation.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "compute/backend.h"
#include "serve/trained_model.h"

namespace shoal {

class InferenceModel {
 public:
  InferenceModel(TrainedModel trained, const BackendOptions& options);
  InferenceModel(const InferenceModel&) = delete;
  InferenceModel& operator=(const InferenceModel&) = delete;

  const ModelMeta& meta() const { return meta_; }
  const std::string& source() const { return source_; }
  std::int64_t sample_size() const { return sample_size_; }  // floats per input sample
  std::int64_t classes() const { return meta_.classes; }
  // The class's name, or its index as text when the model names none.
  std::string class_name(std::int64_t c) const;

  // Logits of n samples (n * sample_size() floats) into out (n * classes()). One caller at a
  // time (the batcher's thread).
  void predict(const float* x, std::int64_t n, float* out);

 private:
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  ModelMeta meta_;
  std::string source_;
  std::int64_t sample_size_ = 0;
};

// The model's evaluation transform of one encoded JPEG or PNG into `out` (the model's
// C x H x W floats). DataError naming `what` for bytes that are not a whole image.
void preprocess_image(std::span<const std::uint8_t> bytes, const ModelMeta& meta, const std::string& what, float* out);
// Raw pixels (C x H x W bytes, 0..255) through the normalisation alone.
void preprocess_pixels(const std::uint8_t* pixels, const ModelMeta& meta, float* out);

// Softmax of one row of logits.
std::vector<float> softmax(const float* logits, std::int64_t classes);
// The k largest (class, probability) of a row of probabilities, largest first (ties: lower class first).
std::vector<std::pair<std::int64_t, float>> top_k(const std::vector<float>& probabilities, std::int64_t k);

}  // namespace shoal
