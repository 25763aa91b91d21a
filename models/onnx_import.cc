// ONNX import (models/onnx.h): each supported ONNX node becomes one Shoal node named as the ONNX
// node; each weight a parameter named NODE.weight, NODE.bias, NODE.gamma, NODE.beta (and the
// buffers NODE.running_mean, NODE.running_var), as the model files name them.
#include <onnx/onnx_pb.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "base/error.h"
#include "models/onnx.h"

namespace shoal {
namespace {

constexpr const char* kSupported =
    "Conv, Gemm, BatchNormalization, Relu, Clip, MaxPool, AveragePool, GlobalAveragePool, Flatten, Reshape (as a "
    "flatten), Add, Sum, Concat, Dropout, Identity, Constant and Softmax on the output";

// A constant: an initializer or a Constant node's value, as floats (and as integers for int64).
struct Constant {
  std::vector<std::int64_t> dims;
  std::vector<float> floats;
  std::vector<std::int64_t> ints;
  bool is_int = false;
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
  }
};

class Importer {
 public:
  Importer(const std::string& bytes, const std::string& origin) : origin_(origin) {
    // Parsing never crashes on hostile bytes; protobuf refuses what is not a message.
    SHOAL_REQUIRE(!bytes.empty(), ConfigError, origin_ << ": the file is empty, not an ONNX model");
    SHOAL_REQUIRE(proto_.ParseFromString(bytes), ConfigError,
                  origin_ << ": not an ONNX model (the bytes do not parse as an ONNX ModelProto; truncated?)");
    SHOAL_REQUIRE(proto_.has_graph() && proto_.graph().node_size() > 0, ConfigError,
                  origin_ << ": not an ONNX model (no graph, or a graph without nodes)");
  }

  ImportedModel run();

 private:
  void walk(std::int64_t classes);
  std::int64_t logits_classes();
  ImportedModel finish();
  static std::string stem(const std::string& path) {
    std::string s = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
    return s.size() > 5 && s.compare(s.size() - 5, 5, ".onnx") == 0 ? s.substr(0, s.size() - 5) : s;
  }
  std::map<std::string, std::string> props_;

 private:
  [[noreturn]] void fail_node(const onnx::NodeProto& n, const std::string& what) const {
    SHOAL_THROW(ConfigError, origin_ << ": node '" << n.name() << "': " << what);
  }
  Constant read_tensor(const onnx::TensorProto& t, const std::string& where) const;
  const Constant* constant(const std::string& name) const {
    auto it = constants_.find(name);
    return it == constants_.end() ? nullptr : &it->second;
  }
  const Constant& need_constant(const onnx::NodeProto& n, int input, const char* what) const;
  // The Shoal node a tensor comes from (kInput for the graph's input).
  std::string source(const onnx::NodeProto& n, int input) const;
  std::string unique_name(const onnx::NodeProto& n);
  void check_inputs(const onnx::NodeProto& n, int min, int max) const;
  static const onnx::AttributeProto* attr(const onnx::NodeProto& n, const std::string& name) {
    for (const auto& a : n.attribute())
      if (a.name() == name) return &a;
    return nullptr;
  }
  std::int64_t attr_int(const onnx::NodeProto& n, const std::string& name, std::int64_t fallback) const {
    const auto* a = attr(n, name);
    if (a == nullptr) return fallback;
    if (a->type() != onnx::AttributeProto::INT) fail_node(n, "attribute " + name + " is not an integer");
    return a->i();
  }
  float attr_float(const onnx::NodeProto& n, const std::string& name, float fallback) const {
    const auto* a = attr(n, name);
    if (a == nullptr) return fallback;
    if (a->type() != onnx::AttributeProto::FLOAT) fail_node(n, "attribute " + name + " is not a float");
    return a->f();
  }
  std::vector<std::int64_t> attr_ints(const onnx::NodeProto& n, const std::string& name) const {
    const auto* a = attr(n, name);
    if (a == nullptr) return {};
    if (a->type() != onnx::AttributeProto::INTS) fail_node(n, "attribute " + name + " is not a list of integers");
    return std::vector<std::int64_t>(a->ints().begin(), a->ints().end());
  }
  // kernel_shape, strides, pads and dilations of a Conv or pool: square windows, equal strides,
  // the same padding on every side, no dilation.
  struct Window {
    int kernel = 0, stride = 1, pad = 0;
  };
  Window window(const onnx::NodeProto& n, std::optional<std::int64_t> kernel_from_weight) const;
  void add_layer(const onnx::NodeProto& n, std::unique_ptr<Layer> layer, const std::string& input);
  void weights(const std::string& node, const std::string& which, std::vector<float> values) {
    weights_[node + "." + which] = std::move(values);
  }

  std::string origin_;
  onnx::ModelProto proto_;
  int opset_ = 1;
  std::map<std::string, Constant> constants_;
  std::map<std::string, std::string> tensors_;  // ONNX tensor -> Shoal node (or kInput)
  std::set<std::string> names_;                 // Shoal node names in use
  std::map<std::string, std::string> softmax_outputs_;  // a Softmax's output -> its input
  std::map<std::string, std::vector<float>> weights_;  // parameter or buffer name -> values
  std::unique_ptr<Model> model_;
  std::uint64_t dropouts_ = 0;
};

Constant Importer::read_tensor(const onnx::TensorProto& t, const std::string& where) const {
  Constant c;
  std::int64_t count = 1;
  for (auto d : t.dims()) {
    SHOAL_REQUIRE(d >= 0 && d < (std::int64_t{1} << 40) && count * std::max<std::int64_t>(d, 1) < (std::int64_t{1} << 40),
                  ConfigError, origin_ << ": " << where << " has a bad shape");
    c.dims.push_back(d);
    count *= d;
  }
  SHOAL_REQUIRE(t.data_location() != onnx::TensorProto::EXTERNAL && t.external_data_size() == 0, ConfigError,
                origin_ << ": " << where << " keeps its data in an external file; Shoal imports self-contained models");
  const std::size_t n = static_cast<std::size_t>(count);
  if (t.data_type() == onnx::TensorProto::FLOAT) {
    if (t.has_raw_data()) {
      SHOAL_REQUIRE(t.raw_data().size() == n * sizeof(float), ConfigError,
                    origin_ << ": " << where << " holds " << t.raw_data().size() << " bytes, its shape needs "
                            << n * sizeof(float));
      c.floats.resize(n);
      if (n > 0) std::memcpy(c.floats.data(), t.raw_data().data(), n * sizeof(float));
    } else {
      SHOAL_REQUIRE(static_cast<std::size_t>(t.float_data_size()) == n, ConfigError,
                    origin_ << ": " << where << " holds " << t.float_data_size() << " values, its shape needs " << n);
      c.floats.assign(t.float_data().begin(), t.float_data().end());
    }
    return c;
  }
  if (t.data_type() == onnx::TensorProto::INT64) {
    c.is_int = true;
    if (t.has_raw_data()) {
      SHOAL_REQUIRE(t.raw_data().size() == n * sizeof(std::int64_t), ConfigError,
                    origin_ << ": " << where << " holds " << t.raw_data().size() << " bytes, its shape needs "
                            << n * sizeof(std::int64_t));
      c.ints.resize(n);
      if (n > 0) std::memcpy(c.ints.data(), t.raw_data().data(), n * sizeof(std::int64_t));
    } else {
      SHOAL_REQUIRE(static_cast<std::size_t>(t.int64_data_size()) == n, ConfigError,
                    origin_ << ": " << where << " holds " << t.int64_data_size() << " values, its shape needs " << n);
      c.ints.assign(t.int64_data().begin(), t.int64_data().end());
    }
    for (auto v : c.ints) c.floats.push_back(static_cast<float>(v));
    return c;
  }
  SHOAL_THROW(ConfigError, origin_ << ": " << where << " is of ONNX data type " << t.data_type()
                                   << "; Shoal imports float (and int64 shape) tensors");
}

const Constant& Importer::need_constant(const onnx::NodeProto& n, int input, const char* what) const {
  const std::string& name = n.input(input);
  const Constant* c = constant(name);
  if (c == nullptr) {
    if (tensors_.count(name) != 0)
      fail_node(n, std::string("its ") + what + " '" + name + "' is computed in the graph; Shoal imports it only as an initializer");
    fail_node(n, std::string("its ") + what + " '" + name + "' is missing (no initializer or Constant of that name)");
  }
  return *c;
}

std::string Importer::source(const onnx::NodeProto& n, int input) const {
  const std::string& name = n.input(input);
  auto it = tensors_.find(name);
  if (it != tensors_.end()) return it->second;
  if (softmax_outputs_.count(name) != 0)
    fail_node(n, "reads the output of a Softmax; Shoal imports a Softmax only on the model's output");
  if (constant(name) != nullptr)
    fail_node(n, n.op_type() + " of the constant '" + name + "' is not supported (Shoal layers read activations)");
  fail_node(n, "input '" + name + "' is produced by no earlier node and is not the graph's input");
}

void Importer::check_inputs(const onnx::NodeProto& n, int min, int max) const {
  if (n.input_size() < min || n.input_size() > max)
    fail_node(n, n.op_type() + " with " + std::to_string(n.input_size()) + " inputs (Shoal imports " +
                     (min == max ? std::to_string(min) : std::to_string(min) + " to " + std::to_string(max)) + ")");
  for (int i = 0; i < min; ++i)
    if (n.input(i).empty()) fail_node(n, n.op_type() + " without its input " + std::to_string(i + 1));
}

std::string Importer::unique_name(const onnx::NodeProto& n) {
  std::string base = n.name();
  if (base.empty() || base == Model::kInput) base = n.op_type() + "_" + std::to_string(names_.size());
  std::string name = base;
  for (int i = 1; names_.count(name) != 0; ++i) name = base + "_" + std::to_string(i);
  names_.insert(name);
  return name;
}

Importer::Window Importer::window(const onnx::NodeProto& n, std::optional<std::int64_t> kernel_from_weight) const {
  Window w;
  const std::string auto_pad = attr(n, "auto_pad") ? attr(n, "auto_pad")->s() : "NOTSET";
  if (auto_pad != "NOTSET" && auto_pad != "VALID")
    fail_node(n, "auto_pad " + auto_pad + " is not supported (Shoal pads explicitly: write pads)");
  auto k = attr_ints(n, "kernel_shape");
  if (k.empty() && kernel_from_weight) k = {*kernel_from_weight, *kernel_from_weight};
  if (k.size() != 2 || k[0] != k[1] || k[0] < 1 || k[0] > 1 << 16)
    fail_node(n, n.op_type() + " with kernel_shape " + nlohmann::json(k).dump() + ": Shoal has square 2-D windows");
  w.kernel = static_cast<int>(k[0]);
  auto s = attr_ints(n, "strides");
  if (!s.empty() && (s.size() != 2 || s[0] != s[1] || s[0] < 1 || s[0] > 1 << 16))
    fail_node(n, "strides " + nlohmann::json(s).dump() + ": Shoal strides equally in both directions");
  if (!s.empty()) w.stride = static_cast<int>(s[0]);
  auto p = attr_ints(n, "pads");
  if (!p.empty()) {
    if (p.size() != 4 || p[0] != p[1] || p[0] != p[2] || p[0] != p[3] || p[0] < 0 || p[0] > 1 << 16)
      fail_node(n, "pads " + nlohmann::json(p).dump() + ": Shoal pads every side equally");
    w.pad = static_cast<int>(p[0]);
  }
  for (auto d : attr_ints(n, "dilations"))
    if (d != 1) fail_node(n, "dilations other than 1 are not supported");
  if (attr_int(n, "ceil_mode", 0) != 0) fail_node(n, "ceil_mode 1 is not supported (Shoal rounds output sizes down)");
  return w;
}

void Importer::add_layer(const onnx::NodeProto& n, std::unique_ptr<Layer> layer, const std::string& input) {
  const std::string name = unique_name(n);
  try {
    model_->add(name, std::move(layer), input);
  } catch (const ConfigError& error) {
    fail_node(n, error.what());
  }
  tensors_[n.output(0)] = name;
}

ImportedModel Importer::run() {
  // The class count is known once the graph is built; a model is then built again with it.
  walk(1);
  const std::int64_t classes = logits_classes();
  if (classes != 1) {
    constants_.clear(), tensors_.clear(), names_.clear(), softmax_outputs_.clear(), weights_.clear();
    dropouts_ = 0;
    walk(classes);
    logits_classes();
  }
  return finish();
}

void Importer::walk(std::int64_t classes) {
  for (const auto& o : proto_.opset_import())
    if (o.domain().empty() || o.domain() == "ai.onnx") opset_ = static_cast<int>(o.version());
  const onnx::GraphProto& g = proto_.graph();

  for (int i = 0; i < g.initializer_size(); ++i) {
    const auto& t = g.initializer(i);
    SHOAL_REQUIRE(!t.name().empty(), ConfigError, origin_ << ": initializer " << i << " has no name");
    constants_[t.name()] = read_tensor(t, "initializer '" + t.name() + "'");
  }
  // The input: the graph's inputs that are not initializers (older files list those too).
  std::vector<const onnx::ValueInfoProto*> inputs;
  for (const auto& in : g.input())
    if (constants_.count(in.name()) == 0) inputs.push_back(&in);
  if (inputs.size() != 1) {
    std::string names;
    for (const auto* in : inputs) names += (names.empty() ? "'" : ", '") + in->name() + "'";
    SHOAL_THROW(ConfigError, origin_ << ": the graph has " << inputs.size() << " inputs" << (names.empty() ? "" : " (")
                                     << names << (names.empty() ? "" : ")")
                                     << "; Shoal models take one, a float image batch [N, C, H, W]");
  }
  const onnx::ValueInfoProto& input = *inputs[0];
  std::vector<std::int64_t> sample;
  {
    const auto& type = input.type();
    SHOAL_REQUIRE(type.has_tensor_type() && type.tensor_type().elem_type() == onnx::TensorProto::FLOAT, ConfigError,
                  origin_ << ": the input '" << input.name() << "' is not a float tensor");
    const auto& shape = type.tensor_type().shape();
    std::string dims;
    for (const auto& d : shape.dim())
      dims += (dims.empty() ? "" : ", ") + (d.has_dim_value() ? std::to_string(d.dim_value()) : d.dim_param().empty() ? "?" : d.dim_param());
    SHOAL_REQUIRE(shape.dim_size() == 4, ConfigError,
                  origin_ << ": the input '" << input.name() << "' has rank " << shape.dim_size() << " ([" << dims
                          << "]); Shoal imports models of an image batch [N, C, H, W]");
    for (int i = 1; i < 4; ++i) {
      const auto& d = shape.dim(i);
      SHOAL_REQUIRE(d.has_dim_value() && d.dim_value() >= 1 && d.dim_value() <= (1 << 20), ConfigError,
                    origin_ << ": the input '" << input.name() << "' is [" << dims
                            << "]; Shoal needs C, H and W fixed (only N may vary)");
      sample.push_back(d.dim_value());
    }
  }
  for (const auto& p : proto_.metadata_props()) props_[p.key()] = p.value();
  std::string name = props_.count("shoal.name") ? props_["shoal.name"] : g.name();
  if (name.empty()) name = stem(origin_);
  model_ = std::make_unique<Model>(name, Shape(sample), classes);
  tensors_[input.name()] = Model::kInput;
  names_.insert(Model::kInput);

  // ReLU6 as Shoal exports it (onnx_export.cc): Sub(Relu(x), Relu(Sub(x, c))), c a positive
  // scalar, each intermediate read once, is clip(x, 0, c): one layer, its three helpers skipped.
  std::map<std::string, const onnx::NodeProto*> producer;
  std::map<std::string, int> reads;
  for (const auto& n : g.node()) {
    for (const auto& o : n.output()) producer[o] = &n;
    for (const auto& i : n.input()) ++reads[i];
  }
  auto made_by = [&](const std::string& tensor, const char* op) -> const onnx::NodeProto* {
    auto it = producer.find(tensor);
    return it != producer.end() && it->second->op_type() == op && it->second->domain().empty() ? it->second : nullptr;
  };
  std::set<const onnx::NodeProto*> fused;
  std::map<const onnx::NodeProto*, std::pair<const onnx::NodeProto*, float>> relu6;  // the last Sub -> (Relu(x), c)
  for (const auto& n : g.node()) {
    if (n.op_type() != "Sub" || !n.domain().empty() || n.input_size() != 2) continue;
    const onnx::NodeProto* low = made_by(n.input(0), "Relu");
    const onnx::NodeProto* high = made_by(n.input(1), "Relu");
    if (low == nullptr || high == nullptr || low->input_size() != 1 || high->input_size() != 1) continue;
    const onnx::NodeProto* shifted = made_by(high->input(0), "Sub");
    if (shifted == nullptr || shifted->input_size() != 2 || shifted->input(0) != low->input(0)) continue;
    const Constant* c = constant(shifted->input(1));
    if (c == nullptr || c->numel() != 1 || c->floats.empty() || !(c->floats[0] > 0)) continue;
    if (reads[n.input(0)] != 1 || reads[n.input(1)] != 1 || reads[high->input(0)] != 1) continue;
    fused.insert(low);
    fused.insert(high);
    fused.insert(shifted);
    relu6[&n] = {low, c->floats[0]};
  }

  for (const auto& n : g.node()) {
    const std::string& op = n.op_type();
    if (fused.count(&n) != 0) continue;
    if (auto it = relu6.find(&n); it != relu6.end()) {
      add_layer(n, clip(0.f, it->second.second), source(*it->second.first, 0));
      continue;
    }
    if (!n.domain().empty() && n.domain() != "ai.onnx")
      fail_node(n, "op " + n.domain() + "." + op + " is not supported; Shoal imports " + kSupported);
    if (n.output_size() < 1 || n.output(0).empty()) fail_node(n, op + " without an output");
    if (op == "Constant") {
      const auto* v = attr(n, "value");
      if (v == nullptr || v->type() != onnx::AttributeProto::TENSOR)
        fail_node(n, "a Constant other than a tensor `value` is not supported");
      constants_[n.output(0)] = read_tensor(v->t(), "node '" + n.name() + "'");
      continue;
    }
    if (op == "Identity" && n.input_size() == 1 && constant(n.input(0)) != nullptr) {
      constants_[n.output(0)] = *constant(n.input(0));
      continue;
    }
    if (op == "Conv") {
      check_inputs(n, 2, 3);
      const std::string x = source(n, 0);
      const Constant& w = need_constant(n, 1, "weight");
      if (w.dims.size() != 4 || w.dims[2] != w.dims[3]) fail_node(n, "the weight must be [out, in/groups, k, k]");
      const std::int64_t group = attr_int(n, "group", 1);
      if (group < 1 || w.dims[0] % group != 0) fail_node(n, "group " + std::to_string(group) + " does not divide the output channels");
      Window win = window(n, w.dims[2]);
      if (win.kernel != w.dims[2]) fail_node(n, "kernel_shape does not match the weight's shape");
      ConvSpec spec;
      spec.in = w.dims[1] * group, spec.out = w.dims[0], spec.kernel = win.kernel, spec.stride = win.stride;
      spec.pad = win.pad, spec.groups = static_cast<int>(group);
      spec.bias = n.input_size() == 3 && !n.input(2).empty();
      std::vector<float> bias;
      if (spec.bias) {
        const Constant& b = need_constant(n, 2, "bias");
        if (b.numel() != spec.out) fail_node(n, "the bias holds " + std::to_string(b.numel()) + " values for " + std::to_string(spec.out) + " channels");
        bias = b.floats;
      }
      std::vector<float> weight = w.floats;
      add_layer(n, conv2d(spec), x);
      const std::string& name = tensors_[n.output(0)];
      weights(name, "weight", std::move(weight));
      if (spec.bias) weights(name, "bias", std::move(bias));
    } else if (op == "Gemm") {
      check_inputs(n, 2, 3);
      const std::string x = source(n, 0);
      if (attr_int(n, "transA", 0) != 0) fail_node(n, "Gemm with transA = 1 is not supported");
      const float alpha = attr_float(n, "alpha", 1.f), beta = attr_float(n, "beta", 1.f);
      const Constant& w = need_constant(n, 1, "weight");
      if (w.dims.size() != 2) fail_node(n, "the weight must be 2-D");
      const bool trans_b = attr_int(n, "transB", 0) != 0;
      const std::int64_t out = trans_b ? w.dims[0] : w.dims[1], in = trans_b ? w.dims[1] : w.dims[0];
      std::vector<float> weight(static_cast<std::size_t>(out * in));
      for (std::int64_t o = 0; o < out; ++o)
        for (std::int64_t i = 0; i < in; ++i)
          weight[static_cast<std::size_t>(o * in + i)] =
              alpha * w.floats[static_cast<std::size_t>(trans_b ? o * in + i : i * out + o)];
      LinearSpec spec;
      spec.in = in, spec.out = out;
      spec.bias = n.input_size() == 3 && !n.input(2).empty();
      std::vector<float> bias;
      if (spec.bias) {
        const Constant& b = need_constant(n, 2, "bias");
        if (b.numel() != out && b.numel() != 1)
          fail_node(n, "the bias C holds " + std::to_string(b.numel()) + " values for " + std::to_string(out) + " outputs");
        bias.resize(static_cast<std::size_t>(out));
        for (std::int64_t o = 0; o < out; ++o) bias[static_cast<std::size_t>(o)] = beta * b.floats[b.numel() == 1 ? 0 : static_cast<std::size_t>(o)];
      }
      if (model_->shape_of(x).rank() != 1) fail_node(n, "Gemm of a " + dims_text(model_->shape_of(x)) + " input: flatten it first");
      add_layer(n, linear(spec), x);
      const std::string& name = tensors_[n.output(0)];
      weights(name, "weight", std::move(weight));
      if (spec.bias) weights(name, "bias", std::move(bias));
    } else if (op == "BatchNormalization") {
      check_inputs(n, 5, 5);
      if (n.output_size() > 1) {
        for (int i = 1; i < n.output_size(); ++i)
          if (!n.output(i).empty()) fail_node(n, "BatchNormalization in training form (with its statistics as outputs) is not supported");
      }
      if (attr_int(n, "training_mode", 0) != 0) fail_node(n, "BatchNormalization with training_mode = 1 is not supported");
      const std::string x = source(n, 0);
      const std::int64_t channels = model_->shape_of(x).rank() >= 1 ? model_->shape_of(x)[0] : 0;
      const char* what[4] = {"scale", "bias", "mean", "var"};
      std::vector<float> arrays[4];
      for (int i = 0; i < 4; ++i) {
        const Constant& c = need_constant(n, i + 1, what[i]);
        if (c.numel() != channels)
          fail_node(n, std::string("the ") + what[i] + " holds " + std::to_string(c.numel()) + " values for " + std::to_string(channels) + " channels");
        arrays[i] = c.floats;
      }
      const float eps = attr_float(n, "epsilon", 1e-5f), momentum = attr_float(n, "momentum", 0.9f);
      add_layer(n, batch_norm(channels, 1.f - momentum, eps), x);
      const std::string& name = tensors_[n.output(0)];
      weights(name, "gamma", std::move(arrays[0]));
      weights(name, "beta", std::move(arrays[1]));
      weights(name, "running_mean", std::move(arrays[2]));
      weights(name, "running_var", std::move(arrays[3]));
    } else if (op == "Relu") {
      check_inputs(n, 1, 1);
      add_layer(n, relu(), source(n, 0));
    } else if (op == "Clip") {
      check_inputs(n, 1, 3);
      float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
      if (opset_ < 11) {
        lo = attr_float(n, "min", lo), hi = attr_float(n, "max", hi);
      } else {
        if (n.input_size() > 1 && !n.input(1).empty()) {
          const Constant& c = need_constant(n, 1, "min");
          if (c.numel() != 1) fail_node(n, "min is not a scalar");
          lo = c.floats[0];
        }
        if (n.input_size() > 2 && !n.input(2).empty()) {
          const Constant& c = need_constant(n, 2, "max");
          if (c.numel() != 1) fail_node(n, "max is not a scalar");
          hi = c.floats[0];
        }
      }
      add_layer(n, clip(lo, hi), source(n, 0));
    } else if (op == "MaxPool" || op == "AveragePool") {
      check_inputs(n, 1, 1);
      for (int i = 1; i < n.output_size(); ++i)
        if (!n.output(i).empty()) fail_node(n, "MaxPool's Indices output is not supported");
      if (attr_int(n, "storage_order", 0) != 0) fail_node(n, "storage_order 1 is not supported");
      Window w = window(n, std::nullopt);
      if (2 * w.pad > w.kernel) fail_node(n, "pads larger than half the kernel are not supported");
      if (op == "AveragePool" && w.pad > 0 && attr_int(n, "count_include_pad", 0) != 0)
        fail_node(n, "AveragePool with count_include_pad = 1 and padding is not supported (Shoal's average pooling "
                     "excludes the padding: count_include_pad = 0)");
      add_layer(n, op == "MaxPool" ? max_pool(w.kernel, w.stride, w.pad) : avg_pool(w.kernel, w.stride, w.pad),
                source(n, 0));
    } else if (op == "GlobalAveragePool") {
      check_inputs(n, 1, 1);
      add_layer(n, global_avg_pool(), source(n, 0));
    } else if (op == "Flatten") {
      check_inputs(n, 1, 1);
      if (attr_int(n, "axis", 1) != 1) fail_node(n, "Flatten with an axis other than 1 is not supported");
      add_layer(n, flatten(), source(n, 0));
    } else if (op == "Reshape") {
      check_inputs(n, 2, 2);
      const std::string x = source(n, 0);
      const Constant& shape = need_constant(n, 1, "shape");
      const std::int64_t features = model_->shape_of(x).numel();
      const bool flat = shape.is_int && shape.ints.size() == 2 &&
                        ((shape.ints[0] == 0 || shape.ints[0] == -1) && (shape.ints[1] == -1 || shape.ints[1] == features)) &&
                        !(shape.ints[0] == -1 && shape.ints[1] == -1);
      if (!flat) fail_node(n, "a Reshape other than to [N, " + std::to_string(features) + "] (a flatten) is not supported");
      add_layer(n, flatten(), x);
    } else if (op == "Add" || op == "Sum" || op == "Concat") {
      check_inputs(n, op == "Add" ? 2 : 1, op == "Add" ? 2 : 1 << 16);
      std::vector<std::string> ins;
      for (int i = 0; i < n.input_size(); ++i) ins.push_back(source(n, i));
      const std::string name = unique_name(n);
      if (op == "Concat") {
        const std::int64_t rank = static_cast<std::int64_t>(model_->shape_of(ins[0]).rank()) + 1;
        std::int64_t axis = attr_int(n, "axis", 1);
        if (axis < 0) axis += rank;
        if (axis != 1) fail_node(n, "Concat along an axis other than the channels (1) is not supported");
      }
      if (ins.size() == 1) {
        names_.erase(name);
        add_layer(n, identity(), ins[0]);
        continue;
      }
      try {
        model_->add_merge(name, op == "Concat" ? Merge::concat : Merge::add, ins);
      } catch (const ConfigError& error) {
        fail_node(n, error.what());
      }
      tensors_[n.output(0)] = name;
    } else if (op == "Dropout") {
      check_inputs(n, 1, 3);
      for (int i = 1; i < n.output_size(); ++i)
        if (!n.output(i).empty() && tensors_.count(n.output(i)) == 0) {
          // The mask output: allowed while nothing reads it (checked when a node asks for it).
        }
      float p = attr_float(n, "ratio", 0.5f);
      if (opset_ >= 12 && n.input_size() > 1 && !n.input(1).empty()) {
        const Constant& c = need_constant(n, 1, "ratio");
        if (c.numel() != 1) fail_node(n, "ratio is not a scalar");
        p = c.floats[0];
      }
      if (!(p >= 0.f && p < 1.f)) fail_node(n, "ratio " + std::to_string(p) + " is outside [0, 1)");
      add_layer(n, dropout(p, ++dropouts_), source(n, 0));
    } else if (op == "Identity") {
      check_inputs(n, 1, 1);
      add_layer(n, identity(), source(n, 0));
    } else if (op == "Softmax") {
      check_inputs(n, 1, 1);
      source(n, 0);
      softmax_outputs_[n.output(0)] = n.input(0);
    } else {
      fail_node(n, "op " + op + " is not supported; Shoal imports " + kSupported);
    }
  }
}

// The graph's output (not counting a Softmax of it) becomes the model's last node; returns its
// width, the class count.
std::int64_t Importer::logits_classes() {
  const onnx::GraphProto& g = proto_.graph();
  std::vector<std::string> outputs, probabilities;
  for (const auto& o : g.output())
    (softmax_outputs_.count(o.name()) != 0 ? probabilities : outputs).push_back(o.name());
  if (outputs.empty() && probabilities.size() == 1) outputs.push_back(softmax_outputs_[probabilities[0]]);
  if (outputs.size() != 1) {
    std::string names;
    for (const auto& o : outputs) names += (names.empty() ? "'" : ", '") + o + "'";
    SHOAL_THROW(ConfigError, origin_ << ": the graph has " << outputs.size() << " outputs besides probabilities ("
                                     << names << "); Shoal models have one, the logits [N, classes]");
  }
  auto it = tensors_.find(outputs[0]);
  SHOAL_REQUIRE(it != tensors_.end() && it->second != Model::kInput, ConfigError,
                origin_ << ": the graph's output '" << outputs[0] << "' is produced by no node Shoal imported");
  std::string last = model_->graph().back().name;
  if (it->second != last) {  // the output is not the last node: an identity after it makes it so
    std::string name = "logits";
    for (int i = 1; names_.count(name) != 0; ++i) name = "logits_" + std::to_string(i);
    names_.insert(name);
    model_->add(name, identity(), it->second);
    last = name;
  }
  const Shape shape = model_->shape_of(last);
  SHOAL_REQUIRE(shape.rank() == 1, ConfigError,
                origin_ << ": the graph's output '" << outputs[0] << "' is " << dims_text(shape)
                        << " per sample; Shoal models output logits [N, classes] (flatten them)");
  return shape[0];
}

ImportedModel Importer::finish() {
  ImportedModel out;
  ModelMeta& meta = out.meta;
  meta.name = model_->name();
  meta.input = model_->sample_shape();
  meta.classes = model_->classes();
  meta.normalize = false;
  if (props_.count("shoal.input") != 0) {
    auto number = [&](const char* key) -> std::int64_t {
      const std::string& v = props_[key];
      try {
        std::size_t used = 0;
        const long long x = std::stoll(v, &used);
        if (used == v.size()) return x;
      } catch (const std::exception&) {
      }
      SHOAL_THROW(ConfigError, origin_ << ": metadata " << key << " = '" << v << "' is not a whole number");
    };
    auto floats = [&](const char* key) {
      std::vector<float> values;
      std::stringstream in(props_[key]);
      std::string item;
      while (std::getline(in, item, ',')) {
        try {
          values.push_back(std::stof(item));
        } catch (const std::exception&) {
          SHOAL_THROW(ConfigError, origin_ << ": metadata " << key << " = '" << props_[key] << "' is not a list of numbers");
        }
      }
      return values;
    };
    const std::string input_text = dims_text(model_->sample_shape());
    SHOAL_REQUIRE(props_["shoal.input"] == input_text, ConfigError,
                  origin_ << ": metadata shoal.input = " << props_["shoal.input"] << " but the graph's input is "
                          << input_text);
    if (props_.count("shoal.classes")) {
      SHOAL_REQUIRE(number("shoal.classes") == meta.classes, ConfigError,
                    origin_ << ": metadata shoal.classes = " << props_["shoal.classes"] << " but the graph's output has "
                            << meta.classes);
    }
    if (props_.count("shoal.class_names") && !props_["shoal.class_names"].empty()) {
      auto names = nlohmann::json::parse(props_["shoal.class_names"], nullptr, false);
      SHOAL_REQUIRE(names.is_array(), ConfigError, origin_ << ": metadata shoal.class_names is not a JSON array");
      for (const auto& v : names) {
        SHOAL_REQUIRE(v.is_string(), ConfigError, origin_ << ": metadata shoal.class_names holds a non-string");
        meta.class_names.push_back(v.get<std::string>());
      }
    }
    if (props_.count("shoal.resize")) meta.resize = number("shoal.resize");
    meta.normalize = props_.count("shoal.normalize") == 0 || props_["shoal.normalize"] == "true";
    if (props_.count("shoal.mean")) meta.mean = floats("shoal.mean");
    if (props_.count("shoal.stddev")) meta.stddev = floats("shoal.stddev");
    if (props_.count("shoal.step")) meta.step = number("shoal.step");
  }

  model_->declare();
  const ParameterSet& params = model_->params();
  out.values.resize(static_cast<std::size_t>(params.parameter_count()));
  std::int64_t buffer_elements = 0;
  for (const auto& b : params.buffers()) buffer_elements += b->shape.numel();
  out.buffers.resize(static_cast<std::size_t>(buffer_elements));
  auto place = [&](const Parameter& p, std::vector<float>& arena) {
    auto it = weights_.find(p.name);
    SHOAL_ASSERT(it != weights_.end() && static_cast<std::int64_t>(it->second.size()) == p.shape.numel(),
                 "no values for " << p.name);
    std::copy(it->second.begin(), it->second.end(), arena.begin() + p.offset);
  };
  for (const auto& p : params.parameters()) place(*p, out.values);
  for (const auto& b : params.buffers()) place(*b, out.buffers);
  model_->set_initial_values(out.values, out.buffers);
  out.model = std::move(model_);
  return out;
}

}  // namespace

ImportedModel import_onnx(const std::string& bytes, const std::string& origin) { return Importer(bytes, origin).run(); }

}  // namespace shoal
