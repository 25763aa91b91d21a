#include "serve/protocol.h"

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <simdjson.h>
#include <sstream>

#include "base/error.h"
#include "serve/inference.h"

namespace shoal {

using json = nlohmann::json;

namespace {

constexpr std::int64_t kMaxSamples = 4096;  // per request

std::string shape_text(const std::vector<std::int64_t>& dims) {
  std::string out = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + "]";
}

// [-1, C, H, W]: what the model takes, as the errors say it.
std::vector<std::int64_t> model_shape(const ModelMeta& meta, std::int64_t n = -1) {
  std::vector<std::int64_t> dims{n};
  for (std::size_t i = 0; i < meta.input.rank(); ++i) dims.push_back(meta.input[i]);
  return dims;
}

std::string class_name(const ModelMeta& meta, std::int64_t c) {
  return c >= 0 && c < static_cast<std::int64_t>(meta.class_names.size()) ? meta.class_names[static_cast<std::size_t>(c)]
                                                                          : std::to_string(c);
}

// The encoded images of a BYTES tensor or TF Serving's {"b64": ...}, through the evaluation transform.
void add_image(const std::vector<std::uint8_t>& bytes, const ModelMeta& meta, const std::string& field, ParsedInput* in) {
  const std::size_t size = static_cast<std::size_t>(meta.input.numel());
  in->x.resize(in->x.size() + size);
  try {
    preprocess_image(bytes, meta, field, in->x.data() + in->x.size() - size);
  } catch (const Error& e) {
    throw BadRequest(e.what());
  }
  ++in->n;
}

std::uint32_t read_u32le(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}

std::int64_t checked_count(const std::vector<std::int64_t>& shape, const std::string& field) {
  std::int64_t count = 1;
  for (std::int64_t d : shape) {
    if (d < 0 || d > (std::int64_t{1} << 31)) throw BadRequest(field + ": dimension " + std::to_string(d) + " is out of range");
    count *= d;
    if (count > (std::int64_t{1} << 34)) throw BadRequest(field + ": " + shape_text(shape) + " is too large");
  }
  return count;
}

}  // namespace

std::string json_error(const std::string& message) { return json{{"error", message}}.dump(-1, ' ', false, json::error_handler_t::replace); }

std::vector<std::uint8_t> base64_decode(const std::string& text, const std::string& field) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;  // '-' and '_': the URL-safe alphabet
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  if (text.size() % 4 != 0) throw BadRequest(field + ": base64 length " + std::to_string(text.size()) + " is not a multiple of 4");
  std::vector<std::uint8_t> out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; ++j) {
      const char c = text[i + static_cast<std::size_t>(j)];
      if (c == '=' && i + 4 == text.size() && j >= 2) {
        v[j] = 0;
        ++pad;
        continue;
      }
      v[j] = pad ? -1 : value(c);
      if (v[j] < 0) throw BadRequest(field + ": not base64 at character " + std::to_string(i + static_cast<std::size_t>(j)));
    }
    const std::uint32_t triple = static_cast<std::uint32_t>(v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3]);
    out.push_back(static_cast<std::uint8_t>(triple >> 16));
    if (pad < 2) out.push_back(static_cast<std::uint8_t>(triple >> 8 & 0xff));
    if (pad < 1) out.push_back(static_cast<std::uint8_t>(triple & 0xff));
  }
  return out;
}

SamplePrediction predict_sample(const float* logits, const ModelMeta& meta, std::int64_t k) {
  const std::vector<float> p = softmax(logits, meta.classes);
  SamplePrediction out;
  for (const auto& [c, prob] : top_k(p, k)) out.top.emplace_back(class_name(meta, c), prob);
  const auto best = top_k(p, 1);
  out.label = best.front().first;
  out.score = best.front().second;
  out.name = class_name(meta, out.label);
  return out;
}

// ---- KServe v2 ---------------------------------------------------------------------------

namespace {

namespace dom = simdjson::dom;

// The document's root, parsed with simdjson's DOM (a parser per thread: they are not shared).
dom::element parse_document(const char* data, std::size_t size, const char* what) {
  thread_local dom::parser parser;
  dom::element doc;
  if (const auto error = parser.parse(data, size, true).get(doc); error)
    throw BadRequest(std::string("malformed JSON in the ") + what + ": " + simdjson::error_message(error));
  return doc;
}

// A member of an object, or nullopt when absent.
std::optional<dom::element> member(dom::object object, std::string_view key) {
  dom::element value;
  if (object.at_key(key).get(value)) return std::nullopt;
  return value;
}

const char* type_name(dom::element e) {
  switch (e.type()) {
    case dom::element_type::ARRAY: return "an array";
    case dom::element_type::OBJECT: return "an object";
    case dom::element_type::STRING: return "a string";
    case dom::element_type::BOOL: return "a boolean";
    case dom::element_type::NULL_VALUE: return "null";
    default: return "a number";
  }
}

// Appends the numbers of a (possibly nested) array to out. The field's name is built only for
// an error: per element it cost more than the number.
void flatten_numbers(dom::element value, const std::string& field, const std::vector<std::size_t>& at,
                     std::vector<float>* out, std::size_t limit) {
  auto where = [&] {
    std::string f = field;
    for (std::size_t i : at) f += "[" + std::to_string(i) + "]";
    return f;
  };
  double v = 0;
  if (!value.get_double().get(v)) {
    if (out->size() >= limit) throw BadRequest(where() + ": more values than the shape holds (" + std::to_string(limit) + ")");
    out->push_back(static_cast<float>(v));
    return;
  }
  dom::array array;
  if (value.get_array().get(array))
    throw BadRequest(where() + ": expected a number or an array of numbers, got " + type_name(value));
  if (at.size() > 16) throw BadRequest(where() + ": nested deeper than 16 levels");
  std::vector<std::size_t> inner = at;
  inner.push_back(0);
  for (dom::element e : array) {
    double x = 0;
    if (!e.get_double().get(x)) {  // the common case, without recursion
      if (out->size() >= limit) {
        throw BadRequest(field + ": more values than the shape holds (" + std::to_string(limit) + ")");
      }
      out->push_back(static_cast<float>(x));
    } else {
      flatten_numbers(e, field, inner, out, limit);
    }
    ++inner.back();
  }
}

std::string as_string(dom::element e, const std::string& field, const char* expected) {
  std::string_view text;
  if (e.get_string().get(text)) throw BadRequest(field + ": expected " + expected + ", got " + type_name(e));
  return std::string(text);
}

}  // namespace

V2Request parse_v2_request(const std::string& body, const std::string& header_length, const ModelMeta& meta) {
  std::size_t json_size = body.size();
  if (!header_length.empty()) {
    std::size_t used = 0;
    unsigned long long v = 0;
    try {
      v = std::stoull(header_length, &used);
    } catch (const std::logic_error&) {
      used = 0;
    }
    if (used != header_length.size() || header_length[0] == '-' || v > body.size())
      throw BadRequest("Inference-Header-Content-Length: '" + header_length + "' is not a length within the body's " +
                       std::to_string(body.size()) + " bytes");
    json_size = static_cast<std::size_t>(v);
  }
  const dom::element root = parse_document(body.data(), json_size, "request");
  dom::object doc;
  if (root.get_object().get(doc)) throw BadRequest("the request must be a JSON object with \"inputs\"");
  V2Request req;
  if (auto id = member(doc, "id")) req.id = as_string(*id, "id", "a string");
  if (auto p = member(doc, "parameters")) {
    dom::object params;
    if (p->get_object().get(params)) throw BadRequest("parameters: expected an object");
    if (auto b = member(params, "binary_data_output")) {
      bool flag = false;
      if (b->get_bool().get(flag)) throw BadRequest("parameters.binary_data_output: expected true or false");
      req.binary_output = flag;
    }
  }
  if (auto outputs = member(doc, "outputs")) {
    dom::array list;
    if (outputs->get_array().get(list)) throw BadRequest("outputs: expected an array of {\"name\": ...}");
    std::size_t i = 0;
    for (dom::element o : list) {
      const std::string field = "outputs[" + std::to_string(i++) + "]";
      dom::object out;
      std::string_view name;
      if (o.get_object().get(out) || out.at_key("name").get_string().get(name))
        throw BadRequest(field + ": expected {\"name\": \"logits\" | \"probabilities\" | \"label\"}");
      if (name != "logits" && name != "probabilities" && name != "label")
        throw BadRequest(field + ".name: '" + std::string(name) +
                         "' is not an output of this model (logits, probabilities, label)");
      bool binary = false;
      if (auto p = member(out, "parameters"))
        if (!p->at_key("binary_data").get_bool().get(binary) && binary) req.binary_output = true;
      req.outputs.emplace_back(name);
    }
  }
  dom::array inputs;
  auto inputs_member = member(doc, "inputs");
  if (!inputs_member || inputs_member->get_array().get(inputs) || inputs.size() != 1)
    throw BadRequest("inputs: expected an array of one tensor {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": " +
                     shape_text(model_shape(meta)) + ", \"data\": [...]}");
  dom::object t;
  if (inputs.at(0).get_object().get(t)) throw BadRequest("inputs[0]: expected an object");
  std::string_view name;
  if (t.at_key("name").get_string().get(name) || name != "input") throw BadRequest("inputs[0].name: expected \"input\"");
  std::string_view datatype_view;
  if (t.at_key("datatype").get_string().get(datatype_view))
    throw BadRequest("inputs[0].datatype: expected \"FP32\", \"UINT8\" or \"BYTES\"");
  const std::string datatype(datatype_view);
  if (datatype != "FP32" && datatype != "UINT8" && datatype != "BYTES")
    throw BadRequest("inputs[0].datatype: '" + datatype + "' is not accepted; expected FP32 or UINT8 of shape " +
                     shape_text(model_shape(meta)) + ", or BYTES of shape [-1] (encoded JPEG or PNG images)");
  dom::array shape_array;
  if (t.at_key("shape").get_array().get(shape_array)) throw BadRequest("inputs[0].shape: expected an array of integers");
  std::vector<std::int64_t> shape;
  for (dom::element d : shape_array) {
    std::int64_t v = 0;
    if (!d.is_int64() || d.get_int64().get(v)) throw BadRequest("inputs[0].shape: expected an array of integers");
    shape.push_back(v);
  }
  const bool bytes = datatype == "BYTES";
  const std::vector<std::int64_t> want = bytes ? std::vector<std::int64_t>{-1} : model_shape(meta);
  bool fits = shape.size() == want.size() && !shape.empty() && shape[0] >= 1 && shape[0] <= kMaxSamples;
  for (std::size_t i = 1; fits && i < shape.size(); ++i) fits = shape[i] == want[i];
  if (!fits)
    throw BadRequest("inputs[0].shape: " + shape_text(shape) + " does not fit the model: expected " + shape_text(want) +
                     " (" + datatype + ", 1 to " + std::to_string(kMaxSamples) + " samples)");
  const std::int64_t n = shape[0];
  const std::int64_t count = checked_count(shape, "inputs[0].shape");

  // The binary extension: the tensor's bytes follow the JSON header.
  std::optional<dom::element> data = member(t, "data");
  std::optional<std::uint64_t> binary_size;
  if (auto p = member(t, "parameters")) {
    dom::object params;
    if (!p->get_object().get(params))
      if (auto size = member(params, "binary_data_size")) {
        std::uint64_t k = 0;
        if (size->get_uint64().get(k)) throw BadRequest("inputs[0].parameters.binary_data_size: expected a byte count");
        binary_size = k;
      }
  }
  const bool binary = binary_size.has_value();
  std::string_view blob;
  if (binary) {
    if (*binary_size != body.size() - json_size)
      throw BadRequest("inputs[0].parameters.binary_data_size: " + std::to_string(*binary_size) + " bytes, but " +
                       std::to_string(body.size() - json_size) + " follow the JSON header");
    blob = std::string_view(body).substr(json_size);
    if (data) throw BadRequest("inputs[0]: both data and parameters.binary_data_size");
  } else if (!data) {
    throw BadRequest("inputs[0].data: missing (or send it binary: parameters.binary_data_size)");
  }

  ParsedInput& in = req.input;
  const std::size_t size = static_cast<std::size_t>(meta.input.numel());
  if (datatype == "FP32") {
    if (binary) {
      if (blob.size() != static_cast<std::size_t>(count) * 4)
        throw BadRequest("inputs[0]: " + std::to_string(blob.size()) + " bytes of FP32 data, the shape " +
                         shape_text(shape) + " needs " + std::to_string(count * 4));
      in.x.resize(static_cast<std::size_t>(count));
      std::memcpy(in.x.data(), blob.data(), blob.size());  // little-endian, as this host
    } else {
      in.x.reserve(static_cast<std::size_t>(count));
      flatten_numbers(*data, "inputs[0].data", {}, &in.x, static_cast<std::size_t>(count));
      if (in.x.size() != static_cast<std::size_t>(count))
        throw BadRequest("inputs[0].data: " + std::to_string(in.x.size()) + " values, the shape " + shape_text(shape) +
                         " holds " + std::to_string(count));
    }
    for (float v : in.x)
      if (!std::isfinite(v)) throw BadRequest("inputs[0].data: a value is not finite");
    in.n = n;
  } else if (datatype == "UINT8") {
    std::vector<std::uint8_t> pixels;
    if (binary) {
      if (blob.size() != static_cast<std::size_t>(count))
        throw BadRequest("inputs[0]: " + std::to_string(blob.size()) + " bytes of UINT8 data, the shape " +
                         shape_text(shape) + " needs " + std::to_string(count));
      pixels.assign(blob.begin(), blob.end());
    } else {
      std::vector<float> values;
      values.reserve(static_cast<std::size_t>(count));
      flatten_numbers(*data, "inputs[0].data", {}, &values, static_cast<std::size_t>(count));
      if (values.size() != static_cast<std::size_t>(count))
        throw BadRequest("inputs[0].data: " + std::to_string(values.size()) + " values, the shape " +
                         shape_text(shape) + " holds " + std::to_string(count));
      pixels.reserve(values.size());
      for (float v : values) {
        if (!(v >= 0 && v <= 255) || v != std::floor(v)) throw BadRequest("inputs[0].data: UINT8 values are integers 0 to 255");
        pixels.push_back(static_cast<std::uint8_t>(v));
      }
    }
    in.x.resize(static_cast<std::size_t>(count));
    for (std::int64_t s = 0; s < n; ++s)
      preprocess_pixels(pixels.data() + static_cast<std::size_t>(s) * size, meta, in.x.data() + static_cast<std::size_t>(s) * size);
    in.n = n;
  } else {  // BYTES: encoded images
    if (binary) {
      std::size_t at = 0;
      for (std::int64_t s = 0; s < n; ++s) {
        const std::string field = "inputs[0] element " + std::to_string(s);
        if (blob.size() - at < 4) throw BadRequest(field + ": the binary data ends before its 4-byte length");
        const std::uint32_t len = read_u32le(reinterpret_cast<const std::uint8_t*>(blob.data() + at));
        at += 4;
        if (blob.size() - at < len) throw BadRequest(field + ": " + std::to_string(len) + " bytes announced, fewer follow");
        const auto* p = reinterpret_cast<const std::uint8_t*>(blob.data() + at);
        add_image(std::vector<std::uint8_t>(p, p + len), meta, field, &in);
        at += len;
      }
      if (at != blob.size()) throw BadRequest("inputs[0]: " + std::to_string(blob.size() - at) + " bytes after the last element");
    } else {
      dom::array list;
      if (data->get_array().get(list) || static_cast<std::int64_t>(list.size()) != n)
        throw BadRequest("inputs[0].data: expected " + std::to_string(n) + " base64 strings (encoded JPEG or PNG)");
      std::int64_t s = 0;
      for (dom::element e : list) {
        const std::string field = "inputs[0].data[" + std::to_string(s++) + "]";
        dom::element text = e;
        dom::object wrapped;
        if (!e.get_object().get(wrapped)) {
          if (wrapped.at_key("b64").get(text)) throw BadRequest(field + ": expected a base64 string of an encoded JPEG or PNG");
        }
        add_image(base64_decode(as_string(text, field, "a base64 string of an encoded JPEG or PNG"), field), meta, field,
                  &in);
      }
    }
  }
  return req;
}

std::string v2_reply(const V2Request& request, const ReplyContext& reply, std::size_t* json_length) {
  const ModelMeta& meta = *reply.meta;
  const std::int64_t n = reply.n, classes = meta.classes;
  const std::vector<float>& logits = *reply.logits;
  std::vector<std::string> names = request.outputs;
  if (names.empty()) names = {"logits", "probabilities", "label"};
  json doc{{"model_name", reply.model_name}, {"model_version", std::to_string(meta.step)}};
  if (!request.id.empty()) doc["id"] = request.id;
  json outputs = json::array();
  std::string binary;
  for (const std::string& name : names) {
    json out{{"name", name}};
    std::string bytes;
    if (name == "label") {
      out["datatype"] = "BYTES";
      out["shape"] = {n};
      json data = json::array();
      for (std::int64_t s = 0; s < n; ++s) {
        const std::string label = predict_sample(logits.data() + s * classes, meta, 1).name;
        data.push_back(label);
        const std::uint32_t len = static_cast<std::uint32_t>(label.size());
        const char le[4] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8 & 0xff),
                            static_cast<char>(len >> 16 & 0xff), static_cast<char>(len >> 24 & 0xff)};
        bytes.append(le, 4).append(label);
      }
      if (!request.binary_output) out["data"] = std::move(data);
    } else {
      out["datatype"] = "FP32";
      out["shape"] = {n, classes};
      std::vector<float> values = logits;
      if (name == "probabilities")
        for (std::int64_t s = 0; s < n; ++s) {
          const std::vector<float> p = softmax(logits.data() + s * classes, classes);
          std::copy(p.begin(), p.end(), values.begin() + s * classes);
        }
      if (request.binary_output)
        bytes.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
      else
        out["data"] = values;
    }
    if (request.binary_output) {
      out["parameters"] = {{"binary_data_size", bytes.size()}};
      binary += bytes;
    }
    outputs.push_back(std::move(out));
  }
  doc["outputs"] = std::move(outputs);
  std::string text = doc.dump(-1, ' ', false, json::error_handler_t::replace);
  if (request.binary_output) {
    *json_length = text.size();
    text += binary;
  }
  return text;
}

std::string v2_model_metadata(const ModelMeta& meta, const std::string& model_name) {
  json doc{{"name", model_name},
           {"versions", {std::to_string(meta.step)}},
           {"platform", "shoal"},
           {"inputs", {{{"name", "input"}, {"datatype", "FP32"}, {"shape", model_shape(meta)}}}},
           {"outputs",
            {{{"name", "logits"}, {"datatype", "FP32"}, {"shape", {-1, meta.classes}}},
             {{"name", "probabilities"}, {"datatype", "FP32"}, {"shape", {-1, meta.classes}}},
             {{"name", "label"}, {"datatype", "BYTES"}, {"shape", {-1}}}}}};
  json classes = json::array();
  for (std::int64_t c = 0; c < meta.classes; ++c) classes.push_back(class_name(meta, c));
  // Beside the protocol's fields: what else "input" takes, and the evaluation transform.
  doc["parameters"] = {{"input_also", "UINT8 of the same shape (pixels), or BYTES of shape [-1] (encoded JPEG or PNG)"},
                       {"class_names", classes},
                       {"resize", meta.resize},
                       {"normalize", meta.normalize},
                       {"mean", meta.mean},
                       {"std", meta.stddev}};
  return doc.dump(-1, ' ', false, json::error_handler_t::replace);
}

// ---- TF Serving REST ----------------------------------------------------------------------

namespace {

// One instance: numbers, {"b64": ...}, or an object holding one of those.
void add_instance(dom::element value, const ModelMeta& meta, const std::string& field, ParsedInput* in) {
  dom::element v = value;
  std::string where = field;
  dom::object object;
  if (!v.get_object().get(object) && !member(object, "b64")) {
    if (object.size() != 1) throw BadRequest(field + ": expected one named input, got " + std::to_string(object.size()));
    for (auto [key, inner] : object) {
      where += "." + std::string(key);
      v = inner;
    }
  }
  if (!v.get_object().get(object)) {
    auto b64 = member(object, "b64");
    if (!b64) throw BadRequest(where + ": expected numbers or {\"b64\": ...}");
    add_image(base64_decode(as_string(*b64, where + ".b64", "a base64 string"), where + ".b64"), meta, where, in);
    return;
  }
  const std::size_t size = static_cast<std::size_t>(meta.input.numel());
  const std::size_t before = in->x.size();
  flatten_numbers(v, where, {}, &in->x, before + size);
  if (in->x.size() - before != size)
    throw BadRequest(where + ": " + std::to_string(in->x.size() - before) + " values, the model takes " +
                     dims_text(meta.input) + " = " + std::to_string(size) + " per instance (or {\"b64\": ...})");
  for (std::size_t i = before; i < in->x.size(); ++i)
    if (!std::isfinite(in->x[i])) throw BadRequest(where + ": a value is not finite");
  ++in->n;
}

}  // namespace

TfRequest parse_tf_request(const std::string& body, const ModelMeta& meta) {
  const dom::element root = parse_document(body.data(), body.size(), "request");
  dom::object doc;
  if (root.get_object().get(doc)) throw BadRequest("the request must be a JSON object with \"instances\" or \"inputs\"");
  const auto instances = member(doc, "instances"), inputs = member(doc, "inputs");
  if (instances.has_value() == inputs.has_value())
    throw BadRequest("expected exactly one of \"instances\" (row form) and \"inputs\" (column form)");
  TfRequest req;
  req.columns = inputs.has_value();
  dom::element list = instances ? *instances : *inputs;
  std::string field = instances ? "instances" : "inputs";
  dom::object named;
  if (req.columns && !list.get_object().get(named)) {
    if (named.size() != 1) throw BadRequest("inputs: expected one named input, got " + std::to_string(named.size()));
    for (auto [key, inner] : named) {
      field += "." + std::string(key);
      list = inner;
    }
  }
  dom::array rows;
  if (list.get_array().get(rows) || rows.size() == 0 || static_cast<std::int64_t>(rows.size()) > kMaxSamples)
    throw BadRequest(field + ": expected a list of 1 to " + std::to_string(kMaxSamples) + " instances, each " +
                     dims_text(meta.input) + " numbers or {\"b64\": \"<JPEG or PNG>\"}");
  std::size_t i = 0;
  for (dom::element row : rows) add_instance(row, meta, field + "[" + std::to_string(i++) + "]", &req.input);
  return req;
}

std::string tf_reply(const TfRequest& request, const ReplyContext& reply) {
  const ModelMeta& meta = *reply.meta;
  const std::int64_t classes = meta.classes;
  json doc;
  if (request.columns) {
    json logits = json::array(), probs = json::array(), labels = json::array();
    for (std::int64_t s = 0; s < reply.n; ++s) {
      const float* l = reply.logits->data() + s * classes;
      logits.push_back(std::vector<float>(l, l + classes));
      probs.push_back(softmax(l, classes));
      labels.push_back(predict_sample(l, meta, 1).name);
    }
    doc["outputs"] = {{"logits", logits}, {"probabilities", probs}, {"label", labels}};
  } else {
    json predictions = json::array();
    for (std::int64_t s = 0; s < reply.n; ++s) {
      const float* l = reply.logits->data() + s * classes;
      predictions.push_back({{"logits", std::vector<float>(l, l + classes)},
                             {"probabilities", softmax(l, classes)},
                             {"label", predict_sample(l, meta, 1).name}});
    }
    doc["predictions"] = std::move(predictions);
  }
  return doc.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string tf_model_status(const ModelMeta& meta) {
  json doc{{"model_version_status",
            {{{"version", std::to_string(meta.step)},
              {"state", "AVAILABLE"},
              {"status", {{"error_code", "OK"}, {"error_message", ""}}}}}}};
  return doc.dump();
}

}  // namespace shoal
