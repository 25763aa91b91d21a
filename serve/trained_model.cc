#include "serve/trained_model.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "base/error.h"
#include "checkpoint/checkpoint.h"
#include "config/config.h"
#include "data/source.h"
#include "models/model_file.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  SHOAL_REQUIRE(in, ConfigError, what << " '" << path << "' cannot be read");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct Layout {
  std::string model;
  Shape input;
  std::int64_t classes = 0;
  std::vector<std::string> class_names;
  std::vector<std::string> tensors;  // the "param ..." and "buffer ..." lines, in order
};

Shape parse_dims(const std::string& text, const std::string& where) {
  std::vector<std::int64_t> dims;
  std::istringstream in(text);
  std::string part;
  while (std::getline(in, part, 'x')) {
    try {
      std::size_t used = 0;
      const long long v = std::stoll(part, &used);
      SHOAL_REQUIRE(used == part.size() && v > 0, CheckpointError, where << ": '" << text << "' is not a shape");
      dims.push_back(v);
    } catch (const std::logic_error&) {
      SHOAL_THROW(CheckpointError, where << ": '" << text << "' is not a shape");
    }
  }
  SHOAL_REQUIRE(!dims.empty() && dims.size() <= 3, CheckpointError, where << ": '" << text << "' is not a shape");
  return Shape(dims);
}

Layout parse_layout(const std::string& dir) {
  const std::string path = dir + "/" + checkpoint_file::kLayout;
  std::istringstream in(read_whole_file(path));
  Layout layout;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    const std::string where = path + " line " + std::to_string(n);
    const auto space = line.find(' ');
    const std::string key = line.substr(0, space);
    const std::string rest = space == std::string::npos ? "" : line.substr(space + 1);
    if (key == "model") {
      layout.model = rest;
    } else if (key == "input") {
      layout.input = parse_dims(rest, where);
    } else if (key == "classes") {
      try {
        layout.classes = std::stoll(rest);
      } catch (const std::logic_error&) {
        SHOAL_THROW(CheckpointError, where << ": '" << rest << "' is not a class count");
      }
    } else if (key == "class") {
      const auto sp = rest.find(' ');
      SHOAL_REQUIRE(sp != std::string::npos && rest.substr(0, sp) == std::to_string(layout.class_names.size()),
                    CheckpointError, where << ": expected 'class " << layout.class_names.size() << " <name>'");
      layout.class_names.push_back(rest.substr(sp + 1));
    } else if (key == "param" || key == "buffer") {
      layout.tensors.push_back(line);
    }
  }
  SHOAL_REQUIRE(!layout.model.empty() && layout.input.rank() > 0 && layout.classes > 0, CheckpointError,
                path << ": no model, input or classes line (a checkpoint of an older Shoal?)");
  SHOAL_REQUIRE(layout.class_names.empty() || static_cast<std::int64_t>(layout.class_names.size()) == layout.classes,
                CheckpointError,
                path << ": " << layout.class_names.size() << " class names for " << layout.classes << " classes");
  return layout;
}

// The model's own "param"/"buffer" lines, as the coordinator writes them into `layout`.
std::vector<std::string> tensor_lines(const ParameterSet& params) {
  std::vector<std::string> out;
  auto shape = [](const Shape& s) {
    std::string text;
    for (std::size_t i = 0; i < s.rank(); ++i) text += (i ? "x" : "") + std::to_string(s[i]);
    return s.rank() == 0 ? std::string("1") : text;
  };
  for (const auto& p : params.parameters())
    out.push_back("param " + p->name + " " + std::to_string(p->offset) + " " +
                  std::to_string(p->offset + p->shape.numel()) + " " + shape(p->shape));
  for (const auto& b : params.buffers())
    out.push_back("buffer " + b->name + " " + std::to_string(b->offset) + " " +
                  std::to_string(b->offset + b->shape.numel()) + " " + shape(b->shape));
  return out;
}

TrainedModel load_checkpoint(const std::string& dir, const Logger& log) {
  const Manifest manifest = verify_checkpoint(dir);
  const Layout layout = parse_layout(dir);
  TrainedModel out;
  out.source = dir;

  // The job's configuration: the model file and the evaluation transform.
  SettingsRegistry registry;
  const std::string ini = dir + "/" + checkpoint_file::kJobIni;
  SHOAL_REQUIRE(manifest.find(checkpoint_file::kJobIni) != nullptr, CheckpointError,
                dir << ": no job.ini, so the model's evaluation transform is unknown");
  const JobConfig config = load_config({ini}, {}, registry).config;

  out.model = build_model(layout.model, layout.input, layout.classes);
  out.model->declare();
  const std::vector<std::string> lines = tensor_lines(out.model->params());
  SHOAL_REQUIRE(lines == layout.tensors, CheckpointError,
                dir << "/layout lists other tensors than model '" << layout.model
                    << "' has now (was its model file changed since?)");

  const std::int64_t n = out.model->params().parameter_count();
  out.values.resize(static_cast<std::size_t>(n));
  read_range(dir, list_ranges(dir, manifest), checkpoint_file::kValues, 0, n, out.values.data());
  std::int64_t buffer_count = 0;
  for (const auto& b : out.model->params().buffers()) buffer_count += b->shape.numel();
  out.buffers.resize(static_cast<std::size_t>(buffer_count));
  if (buffer_count > 0) {
    SHOAL_REQUIRE(manifest.find(checkpoint_file::kBuffers) != nullptr, CheckpointError,
                  dir << ": the model has batch-norm statistics and the checkpoint has no buffers file");
    const std::string bytes = read_whole_file(dir + "/" + checkpoint_file::kBuffers);
    SHOAL_REQUIRE(bytes.size() == out.buffers.size() * sizeof(float), CheckpointError,
                  dir << "/buffers: " << bytes.size() << " bytes, the model has " << buffer_count << " buffer values");
    std::memcpy(out.buffers.data(), bytes.data(), bytes.size());
  }

  ModelMeta& meta = out.meta;
  meta.name = layout.model;
  meta.input = layout.input;
  meta.classes = layout.classes;
  meta.class_names = layout.class_names;
  meta.step = manifest.step;
  meta.resize = config.data.resize;
  meta.normalize = config.data.normalize;
  if (!config.data.mean.empty()) {
    meta.mean.assign(config.data.mean.begin(), config.data.mean.end());
    meta.stddev.assign(config.data.stddev.begin(), config.data.stddev.end());
  } else {
    // The job measured them from its training set: so does this, the same way.
    SHOAL_LOG(log, info, "data.mean/std were measured by the job: measuring them again from " << config.data.dir);
    DataSources data = open_data(config.data, log);
    meta.mean = data.train->normalization().mean;
    meta.stddev = data.train->normalization().stddev;
  }
  return out;
}

}  // namespace

std::string checkpoint_dir_named_by(const std::string& path) {
  std::error_code ec;
  SHOAL_REQUIRE(fs::is_directory(path, ec), CheckpointError, "'" << path << "' is not a directory");
  const fs::path p = fs::path(path).lexically_normal();
  const std::string base = p.has_filename() ? p.filename().string() : p.parent_path().filename().string();
  if (fs::exists(p / checkpoint_file::kManifest, ec) || parse_checkpoint_name(base)) return path;
  std::string reasons;
  auto picked = find_resumable(path, [&](const std::string& where, const std::string& why) {
    reasons += "; passed over " + where + ": " + why;
  });
  SHOAL_REQUIRE(picked, CheckpointError, "no usable checkpoint in '" << path << "'" << reasons);
  return *picked;
}

std::string newest_checkpoint_name(const std::string& root) {
  try {
    if (auto latest = read_latest(root)) return *latest;
  } catch (const CheckpointError&) {
    // A LATEST being replaced or damaged: the next look decides.
  }
  return {};
}

TrainedModel load_trained_model(const std::string& path, const Logger& log) {
  if (is_onnx_path(path)) {
    ImportedModel imported = import_onnx(read_file(path, "model"), path);
    TrainedModel out;
    out.model = std::move(imported.model);
    out.values = std::move(imported.values);
    out.buffers = std::move(imported.buffers);
    out.meta = std::move(imported.meta);
    out.source = path;
    return out;
  }
  return load_checkpoint(checkpoint_dir_named_by(path), log);
}

}  // namespace shoal
