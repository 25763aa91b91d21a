// ONNX export and import (models/onnx.h): every zoo model exported at opsets 11 and 17, checked
// by ONNX's checker and run by OpenCV's DNN module (tests/models/onnx_opencv_run.py) and ONNX
// Runtime (npm's onnxruntime-node, installed once into the build tree; onnx_ort_run.js) against
// Shoal's own CPU forward pass; export -> import -> export byte for byte; a CNN exported by
// torch.onnx.export imported and predicting as PyTorch does; the refusals (one line naming the
// file, never a crash); build_model of a .onnx path; and real jobs (async and sync) started from
// an ONNX file's weights on every process.
#include <onnx/onnx_pb.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "checkpoint/checkpoint.h"
#include "compute/devices/devices.h"
#include "compute/rng.h"
#include "models/model_file.h"
#include "models/onnx.h"
#include "tests/support/host_copy.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;
using testing::read_file;
using testing::TempDir;
using testing::to_host;
using testing::write_file;

const std::string kSource = SHOAL_SOURCE_DIR;
const std::string kShoal = SHOAL_BINARY;
const std::string kOrtDir = SHOAL_ONNXRUNTIME_DIR;  // npm installs onnxruntime-node here, once
constexpr int kBatch = 8;
constexpr std::int64_t kClasses = 10;

struct ZooCase {
  const char* name;
  Shape input;
};
const std::vector<ZooCase>& zoo_cases() {
  static const std::vector<ZooCase> cases = {
      {"mlp", Shape{1, 28, 28}},          {"cnn", Shape{1, 28, 28}},      {"cnn_bn", Shape{1, 28, 28}},
      {"resnet20", Shape{3, 32, 32}},     {"resnet18", Shape{3, 32, 32}}, {"mobilenet_v2", Shape{3, 32, 32}},
      {"resnet50", Shape{3, 32, 32}},
  };
  return cases;
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string write_floats(const std::string& path, const std::vector<float>& v) {
  write_file(path, std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)));
  return path;
}
std::vector<float> read_floats(const std::string& path) {
  const std::string bytes = read_file(path);
  std::vector<float> v(bytes.size() / sizeof(float));
  if (!v.empty()) std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
  return v;
}

// The test's criterion: the largest difference relative to the largest logit (at least 1).
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0, scale = 1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(a[i])));
  }
  return diff / scale;
}

// A batch of "real-ish" images: smooth patterns in pixel/255 units, normalised as the data
// pipeline does (mean 0.5, stddev 0.25), with a little noise.
std::vector<float> images(const Shape& sample, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<float> x(static_cast<std::size_t>(kBatch * sample.numel()));
  const std::int64_t c = sample[0], h = sample[1], w = sample[2];
  for (std::int64_t n = 0; n < kBatch; ++n)
    for (std::int64_t k = 0; k < c; ++k)
      for (std::int64_t i = 0; i < h; ++i)
        for (std::int64_t j = 0; j < w; ++j) {
          const double pixel = 0.5 + 0.4 * std::sin(0.3 * (n + 1) * i + 0.2 * (k + 1) * j + n) * std::cos(0.15 * j * (k + 1));
          x[static_cast<std::size_t>(((n * c + k) * h + i) * w + j)] =
              static_cast<float>((pixel + 0.05 * rng.normal() - 0.5) / 0.25);
        }
  return x;
}

std::unique_ptr<Backend> cpu() { return make_backend(BackendOptions{Device::cpu(), 2}); }

std::vector<float> forward(Backend& b, Model& model, const std::vector<float>& x) {
  std::vector<std::int64_t> dims{kBatch};
  for (auto d : model.sample_shape().dims()) dims.push_back(d);
  Tensor input = b.allocate(Shape(dims));
  b.copy_from_host(x.data(), input);
  LayerContext ctx{b, false, 0};
  return to_host(b, model.forward(ctx, input));
}

// A zoo model built with random weights, non-trivial batch-norm parameters and running
// statistics, its export at both opsets, a batch and Shoal's logits for it (inference mode).
struct Prepared {
  std::string name;
  Shape input;
  std::vector<float> values, buffers, x, logits;
  std::map<int, std::string> files;  // opset -> .onnx path
  std::string bytes11;
};

TempDir& work_dir() {
  static TempDir dir;
  return dir;
}

std::unique_ptr<Model> random_model(Backend& b, const std::string& name, const Shape& input, std::uint64_t seed,
                                    std::vector<float>* values, std::vector<float>* buffers) {
  auto model = build_model(name, input, kClasses);
  model->build(b, seed);
  ParameterSet& params = model->params();
  *values = to_host(b, params.values());
  *buffers = to_host(b, params.buffer_values());
  Rng rng(seed + 1);
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (const auto& p : params.parameters()) {
    float* v = values->data() + p->offset;
    if (ends_with(p->name, ".gamma"))
      for (std::int64_t i = 0; i < p->shape.numel(); ++i) v[i] = static_cast<float>(0.5 + rng.uniform());
    if (ends_with(p->name, ".beta") || ends_with(p->name, ".bias"))
      for (std::int64_t i = 0; i < p->shape.numel(); ++i) v[i] = static_cast<float>(0.1 * rng.normal());
  }
  for (const auto& p : params.buffers()) {
    float* v = buffers->data() + p->offset;
    const bool var = ends_with(p->name, "running_var");
    for (std::int64_t i = 0; i < p->shape.numel(); ++i)
      v[i] = static_cast<float>(var ? 0.5 + 1.5 * rng.uniform() : 0.3 * rng.normal());
  }
  b.copy_from_host(values->data(), params.values());
  if (!buffers->empty()) b.copy_from_host(buffers->data(), params.buffer_values());
  return model;
}

ModelMeta meta_for(const std::string& name, const Shape& input) {
  ModelMeta meta;
  meta.name = name;
  meta.input = input;
  meta.classes = kClasses;
  for (int i = 0; i < kClasses; ++i) meta.class_names.push_back("class \"" + std::to_string(i) + "\"");
  meta.normalize = true;
  meta.mean.assign(static_cast<std::size_t>(input[0]), 0.5f);
  meta.stddev.assign(static_cast<std::size_t>(input[0]), 0.25f);
  meta.step = 1234;
  return meta;
}

const Prepared& prepared(const ZooCase& c) {
  static std::map<std::string, Prepared> cache;
  auto it = cache.find(c.name);
  if (it != cache.end()) return it->second;
  Prepared p;
  p.name = c.name;
  p.input = c.input;
  auto b = cpu();
  auto model = random_model(*b, c.name, c.input, 42, &p.values, &p.buffers);
  p.x = images(c.input, 7);
  p.logits = forward(*b, *model, p.x);
  for (int opset : {11, 17}) {
    ExportOptions options;
    options.opset = opset;
    const std::string bytes = export_onnx(*model, p.values.data(), p.buffers.data(), meta_for(c.name, c.input), options);
    if (opset == 11) p.bytes11 = bytes;
    p.files[opset] = work_dir().file(std::string(c.name) + "-" + std::to_string(opset) + ".onnx");
    write_file(p.files[opset], bytes);
  }
  write_floats(work_dir().file(std::string(c.name) + ".input.f32"), p.x);
  return cache.emplace(c.name, std::move(p)).first->second;
}

// ---- the runtimes ------------------------------------------------------------------------------

struct RuntimeResult {
  int exit_code = 0;  // 0 ran, 77 skipped, else failed
  std::string output;
  std::vector<float> logits;
};

// A program on the PATH (the test processes are started with execve), or empty.
std::string which(const std::string& tool) {
  auto r = testing::run({"/bin/sh", "-c", "command -v " + tool}, {}, 10s);
  std::string path = r.output.substr(0, r.output.find('\n'));
  return r.exit_code == 0 && !path.empty() && path[0] == '/' ? path : std::string();
}

RuntimeResult run_runtime(const std::string& runtime, const Prepared& p, int opset) {
  const std::string in = work_dir().file(p.name + ".input.f32");
  const std::string out = work_dir().file(p.name + "-" + std::to_string(opset) + "." + runtime + ".f32");
  std::remove(out.c_str());
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
  if (runtime == "opencv") {
    argv = {"/usr/bin/python3", kSource + "/tests/models/onnx_opencv_run.py"};
  } else {
    argv = {which("node"), kSource + "/tests/models/onnx_ort_run.js"};
    env["NODE_PATH"] = kOrtDir + "/node_modules";
  }
  argv.insert(argv.end(), {p.files.at(opset), in, out, std::to_string(kBatch)});
  for (auto d : p.input.dims()) argv.push_back(std::to_string(d));
  auto r = testing::run(argv, env, 300s);
  RuntimeResult result{r.exit_code, r.output, {}};
  if (r.exit_code == 0) result.logits = read_floats(out);
  return result;
}

// onnxruntime-node, installed once into the build tree as tests/k8s/api_types_test.py installs
// its packages (--ignore-scripts: its install script fetches optional GPU binaries). Empty when
// installed, else why not (the tests then skip, saying so).
std::string ort_unavailable() {
  static const std::string why = [] {
    if (is_file(kOrtDir + "/node_modules/onnxruntime-node/package.json")) {
      if (which("node").empty()) return std::string("no `node` on the PATH (launch/setup-debian.sh installs nodejs)");
      return std::string();
    }
    if (which("node").empty()) return std::string("no `node` on the PATH (launch/setup-debian.sh installs nodejs and npm)");
    const std::string npm = which("npm");
    if (npm.empty()) return std::string("no `npm` on the PATH (launch/setup-debian.sh installs nodejs and npm)");
    auto r = testing::run({npm, "install", "--prefix", kOrtDir, "--ignore-scripts", "--no-audit", "--no-fund",
                           "--loglevel=error", "onnxruntime-node", "--fetch-retries=1", "--fetch-retry-mintimeout=2000",
                           "--fetch-retry-maxtimeout=5000"},
                          {}, 300s);
    if (r.exit_code != 0 || !is_file(kOrtDir + "/node_modules/onnxruntime-node/package.json"))
      return "npm could not install onnxruntime-node (is the npm registry reachable?): " +
             r.output.substr(0, std::min<std::size_t>(r.output.size(), 300));
    return std::string();
  }();
  return why;
}

// `known`: models a runtime is known not to read, with the words of its refusal; such a model is
// reported (not failed) when the runtime refuses it so, and compared as any other when it runs.
void zoo_against(const std::string& runtime, const std::vector<int>& opsets, const std::vector<int>& optional_opsets,
                 const std::map<std::string, std::string>& known = {}) {
  if (runtime == "ort") {
    const std::string why = ort_unavailable();
    if (!why.empty()) GTEST_SKIP() << "ONNX Runtime unavailable: " << why;
  }
  for (const auto& c : zoo_cases()) {
    const Prepared& p = prepared(c);
    std::vector<int> all = opsets;
    all.insert(all.end(), optional_opsets.begin(), optional_opsets.end());
    for (int opset : all) {
      SCOPED_TRACE(std::string(c.name) + " opset " + std::to_string(opset));
      const bool optional = std::find(optional_opsets.begin(), optional_opsets.end(), opset) != optional_opsets.end();
      RuntimeResult r = run_runtime(runtime, p, opset);
      if (r.exit_code == 77) GTEST_SKIP() << r.output;
      auto k = known.find(c.name);
      if (r.exit_code != 0 && k != known.end() && r.output.find(k->second) != std::string::npos) {
        std::printf("%-13s opset %d  %-6s  not run (known limitation): %s\n", c.name, opset, runtime.c_str(),
                    k->second.c_str());
        continue;
      }
      if (r.exit_code != 0 && optional) {
        std::printf("%-13s opset %d  %-6s  not run: %s", c.name, opset, runtime.c_str(), r.output.c_str());
        continue;
      }
      ASSERT_EQ(r.exit_code, 0) << r.output;
      const double diff = relative_difference(p.logits, r.logits);
      std::printf("%-13s opset %d  %-6s  max |difference| / max(1, max |logit|) = %.3g\n", c.name, opset,
                  runtime.c_str(), diff);
      EXPECT_LE(diff, 1e-5) << r.output;
    }
  }
}

// ---- the tests ---------------------------------------------------------------------------------

TEST(Onnx, ZooExportsPassTheCheckerAndCarryTheirMetadata) {
  for (const auto& c : zoo_cases()) {
    SCOPED_TRACE(c.name);
    const Prepared& p = prepared(c);  // export_onnx ran onnx::checker::check_model on both opsets
    onnx::ModelProto proto;
    ASSERT_TRUE(proto.ParseFromString(read_file(p.files.at(17))));
    EXPECT_EQ(proto.opset_import(0).version(), 17);
    EXPECT_EQ(proto.graph().input(0).name(), "input");
    EXPECT_EQ(proto.graph().input(0).type().tensor_type().shape().dim(0).dim_param(), "batch");
    EXPECT_EQ(proto.graph().output(0).name(), "logits");
    std::map<std::string, std::string> props;
    for (const auto& kv : proto.metadata_props()) props[kv.key()] = kv.value();
    for (const char* key : kMetaKeys) EXPECT_EQ(props.count(key), 1u) << key;
    EXPECT_EQ(props["shoal.input"], dims_text(c.input));
    EXPECT_EQ(props["shoal.classes"], "10");
    ImportedModel back = import_onnx(read_file(p.files.at(11)), p.files.at(11));
    const ModelMeta want = meta_for(c.name, c.input);
    EXPECT_EQ(back.meta.name, want.name);
    EXPECT_EQ(back.meta.input, want.input);
    EXPECT_EQ(back.meta.classes, want.classes);
    EXPECT_EQ(back.meta.class_names, want.class_names);
    EXPECT_EQ(back.meta.normalize, want.normalize);
    EXPECT_EQ(back.meta.mean, want.mean);
    EXPECT_EQ(back.meta.stddev, want.stddev);
    EXPECT_EQ(back.meta.step, want.step);
  }
  auto b = cpu();
  auto model = build_model("mlp", Shape{1, 28, 28}, kClasses);
  model->build(*b, 1);
  auto values = to_host(*b, model->params().values());
  for (int opset : {10, 18}) {
    ExportOptions options;
    options.opset = opset;
    try {
      export_onnx(*model, values.data(), nullptr, ModelMeta{}, options);
      ADD_FAILURE() << "opset " << opset << " accepted";
    } catch (const ConfigError& error) {
      EXPECT_NE(std::string(error.what()).find("opset " + std::to_string(opset)), std::string::npos) << error.what();
    }
  }
  ExportOptions with_softmax;
  with_softmax.probabilities = true;
  onnx::ModelProto proto;
  ASSERT_TRUE(proto.ParseFromString(export_onnx(*model, values.data(), nullptr, ModelMeta{}, with_softmax)));
  ASSERT_EQ(proto.graph().output_size(), 2);
  EXPECT_EQ(proto.graph().output(1).name(), "probabilities");
}

TEST(Onnx, ZooModelsRunInOnnxRuntimeAsInShoal) { zoo_against("ort", {11, 17}, {}); }

// OpenCV 4.6 (Debian 12) takes Clip only in its opset <= 10 form (min/max attributes); the
// export writes ReLU6 as Relu(x) - Relu(x - 6), so mobilenet_v2 runs there too.
TEST(Onnx, ZooModelsRunInOpenCvAsInShoal) { zoo_against("opencv", {11, 17}, {}); }

TEST(Onnx, ExportImportExportIsByteIdenticalAndPredictsTheSame) {
  for (const auto& c : zoo_cases()) {
    SCOPED_TRACE(c.name);
    const Prepared& p = prepared(c);
    ImportedModel back = import_onnx(p.bytes11, c.name);
    ASSERT_EQ(back.values.size(), p.values.size());
    ASSERT_EQ(back.buffers.size(), p.buffers.size());
    EXPECT_EQ(std::memcmp(back.values.data(), p.values.data(), p.values.size() * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(back.buffers.data(), p.buffers.data(), p.buffers.size() * sizeof(float)), 0);
    auto b = cpu();
    back.model->build(*b, 999);  // the seed is not used: the model starts from the file's values
    EXPECT_EQ(to_host(*b, back.model->params().values()), p.values);
    const std::vector<float> logits = forward(*b, *back.model, p.x);
    EXPECT_EQ(logits, p.logits);
    const std::string again = export_onnx(*back.model, back.values.data(), back.buffers.data(), back.meta);
    EXPECT_TRUE(again == p.bytes11) << "the second export differs (" << again.size() << " vs " << p.bytes11.size()
                                    << " bytes)";
  }
}

TEST(Onnx, ATorchExportedCnnImportsAndPredictsAsTorchDoes) {
  TempDir dir;
  for (int opset : {11, 13}) {
    SCOPED_TRACE("opset " + std::to_string(opset));
    auto r = testing::run({"/usr/bin/python3", kSource + "/tests/models/onnx_torch_export.py", dir.path(),
                           std::to_string(opset)},
                          {}, 300s);
    if (r.exit_code == 77) GTEST_SKIP() << r.output;
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::string path = dir.file("torch_cnn.onnx");
    ImportedModel imported = import_onnx(read_file(path), path);
    EXPECT_EQ(imported.meta.input, (Shape{3, 16, 16}));
    EXPECT_EQ(imported.meta.classes, 10);
    auto b = cpu();
    imported.model->build(*b, 1);
    const std::vector<float> x = read_floats(dir.file("input.f32")), want = read_floats(dir.file("logits.f32"));
    const std::vector<float> got = forward(*b, *imported.model, x);
    const double diff = relative_difference(want, got);
    std::printf("torch.onnx.export'ed CNN (opset %d): max |difference| / max(1, max |logit|) = %.3g\n", opset, diff);
    EXPECT_LE(diff, 1e-5) << imported.model->summary();
    // Trainable: a training step's forward and backward run.
    std::vector<std::int64_t> dims{kBatch, 3, 16, 16};
    Tensor input = b->allocate(Shape(dims));
    b->copy_from_host(x.data(), input);
    LayerContext ctx{*b, true, 1};
    const Tensor& logits = imported.model->forward(ctx, input);
    Tensor dlogits = b->allocate(logits.shape());
    std::vector<float> ones(static_cast<std::size_t>(logits.numel()), 0.01f);
    b->copy_from_host(ones.data(), dlogits);
    imported.model->backward(ctx, dlogits);
  }
}

// Each refusal is a ConfigError of one line naming the file; never a crash.
TEST(Onnx, RefusalsAreOneLineErrorsNamingTheFileAndTheProblem) {
  const Prepared& p = prepared(zoo_cases()[1]);  // cnn
  onnx::ModelProto good;
  ASSERT_TRUE(good.ParseFromString(p.bytes11));
  auto bytes = [](const onnx::ModelProto& m) { return m.SerializeAsString(); };
  auto node = [](onnx::ModelProto& m, const std::string& name) -> onnx::NodeProto& {
    for (auto& n : *m.mutable_graph()->mutable_node())
      if (n.name() == name) return n;
    throw std::runtime_error("no node " + name);
  };
  struct Case {
    const char* what;
    std::string bytes;
    std::vector<std::string> expect;  // substrings of the message
  };
  std::vector<Case> cases;
  {
    onnx::ModelProto m = good;
    node(m, "relu1").set_op_type("Resize");
    node(m, "relu1").set_name("Resize_3");
    cases.push_back({"an unsupported op", bytes(m),
                     {"node 'Resize_3': op Resize is not supported; Shoal imports Conv, Gemm, BatchNormalization"}});
  }
  {
    onnx::ModelProto m = good;
    node(m, "relu2").set_op_type("LSTM");
    cases.push_back({"an LSTM", bytes(m), {"node 'relu2': op LSTM is not supported"}});
  }
  cases.push_back({"truncated bytes", p.bytes11.substr(0, p.bytes11.size() / 2), {"not an ONNX model"}});
  {
    Rng rng(3);
    std::string garbage(4096, '\0');
    for (auto& ch : garbage) ch = static_cast<char>(rng.uniform() * 256);
    cases.push_back({"garbage", garbage, {"not an ONNX model"}});
  }
  cases.push_back({"an empty file", "", {"empty"}});
  {
    onnx::ModelProto m = good;
    auto* inits = m.mutable_graph()->mutable_initializer();
    for (int i = 0; i < inits->size(); ++i)
      if (inits->Get(i).name() == "conv2.weight") inits->DeleteSubrange(i, 1);
    cases.push_back({"a missing initializer", bytes(m), {"node 'conv2'", "weight 'conv2.weight' is missing"}});
  }
  {
    onnx::ModelProto m = good;
    auto* shape = m.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
    shape->mutable_dim()->DeleteSubrange(2, 2);
    cases.push_back({"a rank-2 input", bytes(m), {"input 'input' has rank 2", "[N, C, H, W]"}});
  }
  {
    onnx::ModelProto m = good;
    *m.mutable_graph()->add_input() = m.graph().input(0);
    m.mutable_graph()->mutable_input(1)->set_name("mask");
    cases.push_back({"two inputs", bytes(m), {"2 inputs ('input', 'mask')", "Shoal models take one"}});
  }
  {
    onnx::ModelProto m = good;
    onnx::NodeProto& pool = node(m, "pool1");
    pool.set_op_type("AveragePool");
    auto* a = pool.add_attribute();
    a->set_name("count_include_pad"), a->set_type(onnx::AttributeProto::INT), a->set_i(1);
    for (auto& at : *pool.mutable_attribute())
      if (at.name() == "pads") at.clear_ints(), at.add_ints(1), at.add_ints(1), at.add_ints(1), at.add_ints(1);
    cases.push_back({"count_include_pad", bytes(m), {"node 'pool1'", "count_include_pad = 1"}});
  }
  {
    onnx::ModelProto m = good;
    auto* t = m.mutable_graph()->mutable_initializer(0);
    t->set_raw_data(t->raw_data().substr(0, 12));
    cases.push_back({"a short initializer", bytes(m), {"holds 12 bytes"}});
  }
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    try {
      import_onnx(c.bytes, "bad.onnx");
      ADD_FAILURE() << "accepted";
    } catch (const ConfigError& error) {
      const std::string message = error.what();
      std::printf("%-22s -> %s\n", c.what, message.c_str());
      EXPECT_EQ(message.rfind("bad.onnx: ", 0), 0u) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      for (const auto& e : c.expect) EXPECT_NE(message.find(e), std::string::npos) << message;
    }
  }
  // Every truncation and a flipped byte here and there: built or refused with a ConfigError.
  Rng rng(11);
  int refused = 0, built = 0;
  for (int i = 0; i < 300; ++i) {
    std::string damaged = p.bytes11;
    if (i % 2 == 0) {
      damaged.resize(static_cast<std::size_t>(rng.uniform() * static_cast<double>(damaged.size())));
    } else {
      for (int k = 0; k < 4; ++k) {
        // Damage the structure (the first bytes and the tail hold the graph's nodes and names).
        const std::size_t at = k % 2 == 0 ? static_cast<std::size_t>(rng.uniform() * 2000)
                                          : damaged.size() - 1 - static_cast<std::size_t>(rng.uniform() * 2000);
        damaged[at] = static_cast<char>(rng.uniform() * 256);
      }
    }
    try {
      import_onnx(damaged, "damaged.onnx");
      ++built;
    } catch (const ConfigError& error) {
      ++refused;
      EXPECT_NE(std::string(error.what()).find("damaged.onnx"), std::string::npos) << error.what();
    }
  }
  std::printf("300 damaged copies: %d refused, %d imported\n", refused, built);
}

TEST(Onnx, BuildModelOfAnOnnxPathChecksTheJobsShapeAndClasses) {
  const Prepared& p = prepared(zoo_cases()[1]);  // cnn, 1x28x28, 10 classes
  const std::string path = p.files.at(11);
  auto model = build_model(path, Shape{1, 28, 28}, kClasses);
  auto b = cpu();
  model->build(*b, 5);
  EXPECT_EQ(to_host(*b, model->params().values()), p.values);
  EXPECT_TRUE(is_model_path("x.onnx"));
  struct Case {
    Shape shape;
    std::int64_t classes;
  } cases[] = {{Shape{3, 32, 32}, kClasses}, {Shape{1, 28, 28}, 5}};
  for (const auto& c : cases) {
    try {
      build_model(path, c.shape, c.classes);
      ADD_FAILURE() << "accepted";
    } catch (const ConfigError& error) {
      const std::string message = error.what();
      std::printf("%s\n", message.c_str());
      EXPECT_NE(message.find(path), std::string::npos) << message;
      EXPECT_NE(message.find("takes 1x28x28 inputs and has 10 classes"), std::string::npos) << message;
      EXPECT_NE(message.find("the job's data is " + dims_text(c.shape) + " with " + std::to_string(c.classes) +
                             " classes"),
                std::string::npos)
          << message;
    }
  }
  EXPECT_THROW(build_model(work_dir().file("missing.onnx"), Shape{1, 28, 28}, kClasses), ConfigError);
}

// A job with `model = FILE.onnx` starts from the file's weights on every process: with a
// learning rate too small to move a weight, the checkpoint written by the parameter servers
// (async) and by rank 0 (sync) holds exactly the file's values, which differ from the job's
// seeded initialisation.
TEST(Onnx, JobsWithAnOnnxModelStartFromItsWeightsOnEveryProcess) {
  auto b = cpu();
  std::vector<float> values, buffers;
  auto model = random_model(*b, "cnn", Shape{1, 28, 28}, 4242, &values, &buffers);
  TempDir dir;
  const std::string file = dir.file("start.onnx");
  write_file(file, export_onnx(*model, values.data(), buffers.data(), meta_for("cnn", Shape{1, 28, 28})));
  struct Case {
    const char* what;
    std::string ini;
  } cases[] = {{"async", kSource + "/examples/fashion_mnist_async.ini"},
               {"sync", kSource + "/examples/fashion_mnist_sync.ini"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string ckpt = dir.file(std::string("ckpt-") + c.what);
    auto r = testing::run({kShoal, "launch", c.ini, "--local", "--model=" + file, "--train.epochs=1",
                           "--data.train_limit=512", "--data.test_limit=128", "--optimizer.lr=1e-30",
                           "--optimizer.weight_decay=0", "--lr.warmup_epochs=0", "--checkpoint.dir=" + ckpt,
                           "--checkpoint.every_steps=2", "--progress=off"},
                          {}, 600s);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto latest = read_latest(ckpt);
    ASSERT_TRUE(latest.has_value()) << r.output;
    const std::string at = ckpt + "/" + *latest;
    Manifest manifest = verify_checkpoint(at);
    EXPECT_GT(manifest.step, 0);
    auto ranges = list_ranges(at, manifest);
    std::vector<float> saved(values.size());
    read_range(at, ranges, "values", 0, static_cast<std::int64_t>(values.size()), saved.data());
    EXPECT_EQ(std::memcmp(saved.data(), values.data(), values.size() * sizeof(float)), 0)
        << "the job did not start from the ONNX file's weights";
    std::printf("%s job from start.onnx: checkpoint %s holds the file's %zu values\n", c.what, latest->c_str(),
                values.size());
  }
}

}  // namespace
}  // namespace shoal
