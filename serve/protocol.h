// The request and reply bodies `shoal serve` speaks, apart from HTTP and the model:
//   - KServe v2 / Open Inference Protocol: an `inputs` tensor named "input", FP32 or UINT8 of
//     shape [N, C, H, W] (the model's C x H x W), or BYTES of shape [N] holding encoded JPEG or
//     PNG images (base64 strings in JSON); data as JSON, flat or nested, or after the JSON header
//     with the binary tensor data extension (Inference-Header-Content-Length,
//     parameters.binary_data_size). Outputs "logits" and "probabilities" (FP32 [N, classes]) and
//     "label" (BYTES [N]: the class name), all unless `outputs` names some; binary outputs when
//     parameters.binary_data_output is true.
//   - TF Serving REST predict: `instances` (row form) or `inputs` (column form); an instance is
//     a nested array of the model's C x H x W numbers, {"b64": "<encoded image>"}, or an object
//     with one such value.
// Every problem is a BadRequest naming the field and what was expected; nothing here crashes on
// any body (tests/serve/protocol_test.cc feeds it malformed ones).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "models/onnx.h"

namespace shoal {

// A request that cannot be served as sent: answered 400 with {"error": what()}.
class BadRequest : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The samples of a request, through the model's evaluation transform: n x C x H x W floats.
struct ParsedInput {
  std::vector<float> x;
  std::int64_t n = 0;
};

// What the model computed, for one request.
struct ReplyContext {
  const ModelMeta* meta = nullptr;
  std::string model_name;  // as served (the URL's name)
  const std::vector<float>* logits = nullptr;  // n x classes
  std::int64_t n = 0;
};

struct V2Request {
  ParsedInput input;
  std::string id;                     // echoed
  std::vector<std::string> outputs;   // requested outputs (empty: all)
  bool binary_output = false;
};
// `body` is the whole request body; `header_length` the Inference-Header-Content-Length value
// ("" when absent: the body is all JSON).
V2Request parse_v2_request(const std::string& body, const std::string& header_length, const ModelMeta& meta);
// The reply body; *json_length is set for a binary reply (the Inference-Header-Content-Length),
// else left 0.
std::string v2_reply(const V2Request& request, const ReplyContext& reply, std::size_t* json_length);

struct TfRequest {
  ParsedInput input;
  bool columns = false;  // the `inputs` form: reply in `outputs`
};
TfRequest parse_tf_request(const std::string& body, const ModelMeta& meta);
std::string tf_reply(const TfRequest& request, const ReplyContext& reply);

// The metadata documents: GET /v2/models/NAME and GET /v1/models/NAME.
std::string v2_model_metadata(const ModelMeta& meta, const std::string& model_name);
std::string tf_model_status(const ModelMeta& meta);

// {"error": "<message>"}.
std::string json_error(const std::string& message);

// RFC 4648 base64 (padding required, no whitespace); BadRequest naming `field` otherwise.
std::vector<std::uint8_t> base64_decode(const std::string& text, const std::string& field);

// Per sample: the class with the highest logit, its softmax probability and the k best
// (class name, probability) — what `shoal predict` prints and the replies carry.
struct SamplePrediction {
  std::int64_t label = 0;
  std::string name;
  float score = 0;
  std::vector<std::pair<std::string, float>> top;
};
SamplePrediction predict_sample(const float* logits, const ModelMeta& meta, std::int64_t k);

}  // namespace shoal
