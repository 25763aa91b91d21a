// ONNX export (models/onnx.h): one ONNX node per Shoal node, named as the Shoal node; each
// parameter an initializer named as the parameter.
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/error.h"
#include "models/onnx.h"

namespace shoal {

const char* const kMetaKeys[9] = {"shoal.name",   "shoal.input",     "shoal.classes", "shoal.class_names", "shoal.resize",
                                  "shoal.normalize", "shoal.mean", "shoal.stddev", "shoal.step"};

bool is_onnx_path(const std::string& path) {
  return path.size() > 5 && path.compare(path.size() - 5, 5, ".onnx") == 0;
}

namespace {

// The IR version of the ONNX release that introduced each opset (onnx/docs/Versioning.md).
int ir_version_for(int opset) { return opset <= 11 ? 6 : opset <= 14 ? 7 : 8; }

std::string float_list(const std::vector<float>& values) {
  std::string out;
  char buf[32];
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(values[i]));
    out += (i > 0 ? "," : "") + std::string(buf);
  }
  return out;
}

class Writer {
 public:
  Writer(onnx::GraphProto& graph, int opset) : graph_(graph), opset_(opset) {}

  onnx::NodeProto* node(const std::string& op, const std::string& name, const std::vector<std::string>& inputs,
                        const std::string& output) {
    onnx::NodeProto* n = graph_.add_node();
    n->set_op_type(op);
    n->set_name(name);
    for (const auto& in : inputs) n->add_input(in);
    n->add_output(output);
    return n;
  }
  static void ints(onnx::NodeProto* n, const std::string& name, const std::vector<std::int64_t>& values) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (auto v : values) a->add_ints(v);
  }
  static void integer(onnx::NodeProto* n, const std::string& name, std::int64_t value) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(value);
  }
  static void real(onnx::NodeProto* n, const std::string& name, float value) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(value);
  }
  // A float initializer (raw little-endian data, as exporters write it).
  void tensor(const std::string& name, const std::vector<std::int64_t>& dims, const float* data) {
    onnx::TensorProto* t = graph_.add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    std::int64_t count = 1;
    for (auto d : dims) t->add_dims(d), count *= d;
    t->set_raw_data(std::string(reinterpret_cast<const char*>(data), static_cast<std::size_t>(count) * sizeof(float)));
  }
  void scalar(const std::string& name, float value) { tensor(name, {}, &value); }
  int opset() const { return opset_; }

 private:
  onnx::GraphProto& graph_;
  int opset_;
};

void set_value_info(onnx::ValueInfoProto* v, const std::string& name, const std::vector<std::int64_t>& dims) {
  v->set_name(name);
  auto* type = v->mutable_type()->mutable_tensor_type();
  type->set_elem_type(onnx::TensorProto::FLOAT);
  auto* shape = type->mutable_shape();
  shape->add_dim()->set_dim_param("batch");
  for (auto d : dims) shape->add_dim()->set_dim_value(d);
}

void add_meta(onnx::ModelProto& proto, const std::string& key, const std::string& value) {
  auto* p = proto.add_metadata_props();
  p->set_key(key);
  p->set_value(value);
}

}  // namespace

std::string export_onnx(const Model& model, const float* values, const float* buffers, const ModelMeta& given,
                        const ExportOptions& options) {
  ModelMeta meta = given;  // unset fields: the model's own
  if (meta.name.empty()) meta.name = model.name();
  if (meta.input.rank() == 0) meta.input = model.sample_shape();
  if (meta.classes == 0) meta.classes = model.classes();
  SHOAL_REQUIRE(options.opset >= 11 && options.opset <= 17, ConfigError,
                "ONNX opset " << options.opset << " is not supported: Shoal exports opsets 11 to 17");
  const int opset = options.opset;
  onnx::ModelProto proto;
  proto.set_ir_version(ir_version_for(opset));
  proto.set_producer_name("shoal");
  proto.set_model_version(meta.step);
  auto* op = proto.add_opset_import();
  op->set_domain("");
  op->set_version(opset);
  onnx::GraphProto& graph = *proto.mutable_graph();
  graph.set_name(meta.name.empty() ? model.name() : meta.name);
  Writer w(graph, opset);

  const auto nodes = model.graph();
  SHOAL_REQUIRE(!nodes.empty(), ConfigError, "model " << model.name() << " has no layers to export");
  const std::string last = nodes.back().name;
  auto tensor_of = [&](const std::string& node) { return node == last ? std::string("logits") : node; };
  const ParameterSet& params = model.params();
  auto param = [&](const Layer& layer, std::size_t i) -> const Parameter& { return *layer.parameters().at(i); };
  auto write_param = [&](const Parameter& p) {
    w.tensor(p.name, p.shape.dims(), values + p.offset);
    return p.name;
  };
  auto write_buffer = [&](const std::string& name) {
    const Parameter* b = params.find(name);
    SHOAL_ASSERT(b != nullptr, "no buffer " << name);
    w.tensor(b->name, b->shape.dims(), buffers + b->offset);
    return b->name;
  };

  for (const auto& n : nodes) {
    std::vector<std::string> inputs;
    for (const auto& in : n.inputs) inputs.push_back(in == Model::kInput ? std::string("input") : tensor_of(in));
    const std::string out = tensor_of(n.name);
    if (n.layer == nullptr) {
      if (n.merge == Merge::add) {
        w.node(inputs.size() == 2 ? "Add" : "Sum", n.name, inputs, out);
      } else {
        Writer::integer(w.node("Concat", n.name, inputs, out), "axis", 1);
      }
      continue;
    }
    const Layer& layer = *n.layer;
    const LayerSpec s = layer.spec();
    switch (s.kind) {
      case LayerSpec::conv: {
        std::vector<std::string> in{inputs[0], write_param(param(layer, 0))};
        if (s.bias) in.push_back(write_param(param(layer, 1)));
        onnx::NodeProto* c = w.node("Conv", n.name, in, out);
        Writer::ints(c, "kernel_shape", {s.kernel, s.kernel});
        Writer::ints(c, "strides", {s.stride, s.stride});
        Writer::ints(c, "pads", {s.pad, s.pad, s.pad, s.pad});
        Writer::ints(c, "dilations", {1, 1});
        Writer::integer(c, "group", s.groups);
        break;
      }
      case LayerSpec::linear: {
        std::string x = inputs[0];
        if (model.shape_of(n.inputs[0]).rank() != 1) {  // Shoal's linear reads a sample flattened; Gemm needs 2-D
          x = n.name + "/flatten";
          Writer::integer(w.node("Flatten", x, {inputs[0]}, x), "axis", 1);
        }
        std::vector<std::string> in{x, write_param(param(layer, 0))};
        if (s.bias) in.push_back(write_param(param(layer, 1)));
        onnx::NodeProto* g = w.node("Gemm", n.name, in, out);
        Writer::real(g, "alpha", 1.f);
        Writer::real(g, "beta", 1.f);
        Writer::integer(g, "transB", 1);
        break;
      }
      case LayerSpec::batch_norm: {
        std::vector<std::string> in{inputs[0], write_param(param(layer, 0)), write_param(param(layer, 1)),
                                    write_buffer(n.name + ".running_mean"), write_buffer(n.name + ".running_var")};
        onnx::NodeProto* b = w.node("BatchNormalization", n.name, in, out);
        Writer::real(b, "epsilon", s.eps);
        Writer::real(b, "momentum", 1.f - s.momentum);  // ONNX: running = running * momentum + batch * (1 - momentum)
        break;
      }
      case LayerSpec::relu: w.node("Relu", n.name, inputs, out); break;
      case LayerSpec::clip: {
        if (s.lo == 0 && s.hi > 0 && std::isfinite(s.hi)) {
          // ReLU6 and the like as Relu(x) - Relu(x - hi): OpenCV 4.6 reads no Clip of opset 11 and
          // later (min and max became inputs there), and every runtime has Relu and Sub. Exact
          // for x <= 2 hi (Sterbenz), within half an ulp of x above. Import reads it back as a clip.
          const std::string shifted = n.name + "/shifted", low = n.name + "/low", high = n.name + "/high";
          w.scalar(n.name + ".max", s.hi);
          w.node("Sub", shifted, {inputs[0], n.name + ".max"}, shifted);
          w.node("Relu", low, {inputs[0]}, low);
          w.node("Relu", high, {shifted}, high);
          w.node("Sub", n.name, {low, high}, out);
          break;
        }
        w.scalar(n.name + ".min", s.lo);
        w.scalar(n.name + ".max", s.hi);
        w.node("Clip", n.name, {inputs[0], n.name + ".min", n.name + ".max"}, out);
        break;
      }
      case LayerSpec::identity: w.node("Identity", n.name, inputs, out); break;
      case LayerSpec::flatten: Writer::integer(w.node("Flatten", n.name, inputs, out), "axis", 1); break;
      case LayerSpec::global_avg_pool: w.node("GlobalAveragePool", n.name, inputs, out); break;
      case LayerSpec::max_pool:
      case LayerSpec::avg_pool: {
        onnx::NodeProto* p = w.node(s.kind == LayerSpec::max_pool ? "MaxPool" : "AveragePool", n.name, inputs, out);
        Writer::ints(p, "kernel_shape", {s.kernel, s.kernel});
        Writer::ints(p, "strides", {s.stride, s.stride});
        Writer::ints(p, "pads", {s.pad, s.pad, s.pad, s.pad});
        // Shoal's average pooling divides by the window's cells inside the input.
        if (s.kind == LayerSpec::avg_pool) Writer::integer(p, "count_include_pad", 0);
        break;
      }
      case LayerSpec::dropout: {
        if (opset >= 12) {  // the ratio became an input in opset 12
          w.scalar(n.name + ".ratio", s.p);
          w.node("Dropout", n.name, {inputs[0], n.name + ".ratio"}, out);
        } else {
          Writer::real(w.node("Dropout", n.name, inputs, out), "ratio", s.p);
        }
        break;
      }
      case LayerSpec::other:
        SHOAL_THROW(ConfigError, "model " << model.name() << ": layer '" << n.name << "' (" << layer.describe()
                                          << ") cannot be exported to ONNX");
    }
  }

  set_value_info(graph.add_input(), "input", model.sample_shape().dims());
  const Shape out_shape = model.shape_of(last);
  SHOAL_REQUIRE(out_shape.rank() == 1, ConfigError,
                "model " << model.name() << ": its output '" << last << "' is " << dims_text(out_shape)
                         << " per sample; ONNX export needs logits of [N, classes]");
  set_value_info(graph.add_output(), "logits", out_shape.dims());
  if (options.probabilities) {
    Writer::integer(w.node("Softmax", "softmax", {"logits"}, "probabilities"), "axis", 1);
    set_value_info(graph.add_output(), "probabilities", out_shape.dims());
  }

  add_meta(proto, "shoal.name", meta.name);
  add_meta(proto, "shoal.input", dims_text(meta.input));
  add_meta(proto, "shoal.classes", std::to_string(meta.classes));
  add_meta(proto, "shoal.class_names", nlohmann::json(meta.class_names).dump());
  add_meta(proto, "shoal.resize", std::to_string(meta.resize));
  add_meta(proto, "shoal.normalize", meta.normalize ? "true" : "false");
  add_meta(proto, "shoal.mean", float_list(meta.mean));
  add_meta(proto, "shoal.stddev", float_list(meta.stddev));
  add_meta(proto, "shoal.step", std::to_string(meta.step));

  try {
    onnx::checker::check_model(proto);
  } catch (const std::exception& error) {
    SHOAL_THROW(InternalError, "model " << model.name() << ": the ONNX checker refused the export: " << error.what());
  }
  std::string bytes;
  SHOAL_REQUIRE(proto.SerializeToString(&bytes), InternalError,
                "model " << model.name() << ": the ONNX model could not be serialised (over 2 GiB?)");
  return bytes;
}

}  // namespace shoal
