#include "models/model.h"

#include <iomanip>
#include <sstream>

#include "base/error.h"

namespace shoal {

Model::Model(std::string name, Shape sample_shape, std::int64_t classes)
    : name_(std::move(name)), sample_shape_(std::move(sample_shape)), classes_(classes) {
  std::vector<std::int64_t> dims{1};
  dims.insert(dims.end(), sample_shape_.dims().begin(), sample_shape_.dims().end());
  input_shape_ = Shape(dims);
}

int Model::index_of(const std::string& name) const {
  if (name == kInput) return -1;
  for (std::size_t i = 0; i < nodes_.size(); ++i)
    if (nodes_[i].name == name) return static_cast<int>(i);
  SHOAL_THROW(ConfigError, "model " << name_ << ": no layer named '" << name << "' before this one");
}

bool Model::has_node(const std::string& node) const {
  if (node == kInput) return true;
  for (const auto& n : nodes_)
    if (n.name == node) return true;
  return false;
}

const Shape& Model::node_shape(int index) const { return index < 0 ? input_shape_ : nodes_[index].shape; }

Shape Model::shape_of(const std::string& node) const {
  const Shape& s = node_shape(index_of(node));
  return Shape(std::vector<std::int64_t>(s.dims().begin() + 1, s.dims().end()));
}

Shape Model::add(const std::string& name, std::unique_ptr<Layer> layer, const std::string& input) {
  SHOAL_ASSERT(!declared_, "layer added after its parameters were declared");
  SHOAL_REQUIRE(name != kInput && !has_node(name), ConfigError,
                "model " << name_ << ": two layers are named '" << name << "'");
  Node node;
  node.name = name;
  node.inputs = {input.empty() ? static_cast<int>(nodes_.size()) - 1 : index_of(input)};
  node.shape = layer->output_shape(node_shape(node.inputs[0]));
  node.layer = std::move(layer);
  nodes_.push_back(std::move(node));
  return shape_of(name);
}

Shape Model::add_merge(const std::string& name, Merge kind, const std::vector<std::string>& inputs) {
  SHOAL_ASSERT(!declared_ && kind != Merge::none, "bad merge");
  SHOAL_REQUIRE(name != kInput && !has_node(name), ConfigError,
                "model " << name_ << ": two layers are named '" << name << "'");
  const char* what = kind == Merge::add ? "add" : "concat";
  SHOAL_REQUIRE(inputs.size() >= 2, ConfigError, what << " '" << name << "' needs two or more inputs");
  Node node;
  node.name = name;
  node.merge = kind;
  for (const auto& in : inputs) node.inputs.push_back(index_of(in));
  Shape shape = node_shape(node.inputs[0]);
  for (std::size_t i = 1; i < inputs.size(); ++i) {
    const Shape& other = node_shape(node.inputs[i]);
    bool fits = other.rank() == shape.rank();
    for (std::size_t d = 0; fits && d < shape.rank(); ++d)
      fits = other[d] == shape[d] || (kind == Merge::concat && d == 1);
    SHOAL_REQUIRE(fits, ConfigError,
                  what << " '" << name << "': input '" << inputs[i] << "' is " << per_sample_text(other) << " but '"
                       << inputs[0] << "' is " << per_sample_text(node_shape(node.inputs[0]))
                       << (kind == Merge::add ? " (an add needs equal shapes)"
                                              : " (a concat needs equal shapes but for the channels)"));
    if (kind == Merge::concat) shape[1] += other[1];
  }
  node.shape = shape;
  nodes_.push_back(std::move(node));
  return shape_of(name);
}

void Model::declare() {
  if (declared_) return;  // an imported model comes declared
  SHOAL_REQUIRE(!nodes_.empty(), ConfigError, "model " << name_ << " has no layers");
  for (auto& n : nodes_)
    if (n.layer) n.layer->declare(params_, n.name + ".");
  declared_ = true;
}

void Model::build(Backend& backend, std::uint64_t seed) {
  SHOAL_ASSERT(!built_, "model built twice");
  if (!declared_) declare();
  params_.allocate(backend, seed);
  if (has_initial_) {
    SHOAL_REQUIRE(static_cast<std::int64_t>(initial_values_.size()) == params_.values().numel() &&
                      static_cast<std::int64_t>(initial_buffers_.size()) == params_.buffer_values().numel(),
                  ConfigError,
                  "model " << name_ << ": the initial values hold " << initial_values_.size() << " parameters and "
                           << initial_buffers_.size() << " buffer values, the model has "
                           << params_.values().numel() << " and " << params_.buffer_values().numel());
    if (!initial_values_.empty()) backend.copy_from_host(initial_values_.data(), params_.values());
    if (!initial_buffers_.empty()) backend.copy_from_host(initial_buffers_.data(), params_.buffer_values());
    std::vector<float>().swap(initial_values_);  // the arenas hold them now
    std::vector<float>().swap(initial_buffers_);
  }
  built_ = true;
}

void Model::set_initial_values(std::vector<float> values, std::vector<float> buffers) {
  SHOAL_ASSERT(!built_, "initial values set after build()");
  initial_values_ = std::move(values);
  initial_buffers_ = std::move(buffers);
  has_initial_ = true;
}

std::vector<Model::GraphNode> Model::graph() const {
  std::vector<GraphNode> out;
  for (const auto& n : nodes_) {
    GraphNode g;
    g.name = n.name;
    g.layer = n.layer.get();
    g.merge = n.merge;
    for (int in : n.inputs) g.inputs.push_back(in < 0 ? std::string(kInput) : nodes_[in].name);
    out.push_back(std::move(g));
  }
  return out;
}

const Tensor& Model::forward(LayerContext& ctx, const Tensor& x) {
  SHOAL_ASSERT(built_, "forward before build");
  auto input = [&](int i) -> const Tensor& { return i < 0 ? x : *nodes_[i].out; };
  for (auto& n : nodes_) {
    if (n.layer) {
      n.out = &n.layer->forward(ctx, input(n.inputs[0]));
      continue;
    }
    std::vector<std::int64_t> dims = n.shape.dims();
    dims[0] = x.shape()[0];
    if (!n.sum.defined() || !(n.sum.shape() == Shape(dims))) n.sum = ctx.backend.allocate(Shape(dims));
    if (n.merge == Merge::add) {
      ctx.backend.add(input(n.inputs[0]), input(n.inputs[1]), n.sum);
      for (std::size_t i = 2; i < n.inputs.size(); ++i) ctx.backend.add(n.sum, input(n.inputs[i]), n.sum);
    } else {
      std::vector<const Tensor*> parts;
      for (int i : n.inputs) parts.push_back(&input(i));
      ctx.backend.concat_channels(parts, n.sum);
    }
    n.out = &n.sum;
  }
  return *nodes_.back().out;
}

// Node `index` is read by several nodes: the first gradient is used as it is, later ones are
// summed into the node's own buffer.
void Model::add_gradient(Backend& backend, int index, const Tensor& g) {
  if (index < 0) return;
  Node& n = nodes_[index];
  if (n.grad == nullptr) {
    n.grad = &g;
    return;
  }
  if (n.grad != &n.grad_sum) {
    if (!n.grad_sum.defined() || !(n.grad_sum.shape() == g.shape())) n.grad_sum = backend.allocate(g.shape());
    backend.add(*n.grad, g, n.grad_sum);
    n.grad = &n.grad_sum;
    return;
  }
  backend.add(n.grad_sum, g, n.grad_sum);
}

void Model::backward(LayerContext& ctx, const Tensor& dlogits, const GradientsReady& ready) {
  for (auto& n : nodes_) n.grad = nullptr;
  nodes_.back().grad = &dlogits;
  for (std::size_t i = nodes_.size(); i-- > 0;) {
    Node& n = nodes_[i];
    if (n.grad == nullptr) continue;  // nothing downstream reads it
    const Tensor& g = *n.grad;
    if (n.layer) {
      const bool need_dx = n.inputs[0] >= 0;
      const Tensor& dx = n.layer->backward(ctx, g, need_dx);
      if (need_dx) add_gradient(ctx.backend, n.inputs[0], dx);
      if (ready && !n.layer->parameters().empty()) ready(n.layer->parameters());
    } else if (n.merge == Merge::add) {
      for (int in : n.inputs) add_gradient(ctx.backend, in, g);
    } else {
      n.splits.resize(n.inputs.size());
      std::vector<Tensor*> parts;
      for (std::size_t k = 0; k < n.inputs.size(); ++k) {
        std::vector<std::int64_t> dims = node_shape(n.inputs[k]).dims();
        dims[0] = g.shape()[0];
        if (!n.splits[k].defined() || !(n.splits[k].shape() == Shape(dims)))
          n.splits[k] = ctx.backend.allocate(Shape(dims));
        parts.push_back(&n.splits[k]);
      }
      ctx.backend.split_channels(g, parts);
      for (std::size_t k = 0; k < n.inputs.size(); ++k) add_gradient(ctx.backend, n.inputs[k], n.splits[k]);
    }
  }
}

std::vector<NodeSummary> Model::nodes() const {
  std::vector<NodeSummary> rows;
  for (const auto& n : nodes_) {
    NodeSummary row;
    row.name = n.name;
    row.output = Shape(std::vector<std::int64_t>(n.shape.dims().begin() + 1, n.shape.dims().end()));
    if (n.layer) {
      row.describe = n.layer->describe();
      for (const auto* p : n.layer->parameters()) row.parameters += p->shape.numel();
      row.macs = n.layer->macs(node_shape(n.inputs[0]));
    } else {
      row.describe = n.merge == Merge::add ? "add" : "concat";
      for (int in : n.inputs) row.describe += std::string(" ") + (in < 0 ? kInput : nodes_[in].name.c_str());
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

std::int64_t Model::macs() const {
  std::int64_t total = 0;
  for (const auto& n : nodes_)
    if (n.layer) total += n.layer->macs(node_shape(n.inputs[0]));
  return total;
}

std::int64_t Model::activation_floats_per_sample() const {
  std::int64_t total = 0;
  for (const auto& n : nodes_) total += n.shape.numel();
  return total;
}

namespace {
std::string grouped(std::int64_t v) {  // 11689512 -> "11,689,512"
  std::string digits = std::to_string(v), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}
}  // namespace

std::string Model::summary() const {
  std::ostringstream out;
  auto rows = nodes();
  std::size_t name_w = 5, desc_w = 5;
  for (const auto& r : rows) name_w = std::max(name_w, r.name.size()), desc_w = std::max(desc_w, r.describe.size());
  out << "model " << name_ << ", input " << dims_text(sample_shape_) << ", " << classes_ << " classes\n";
  out << "  " << std::left << std::setw(static_cast<int>(name_w)) << "layer" << "  " << std::setw(static_cast<int>(desc_w))
      << "kind" << "  " << std::setw(12) << "output" << std::right << std::setw(12) << "parameters" << std::setw(16)
      << "multiply-adds" << "\n";
  for (const auto& r : rows)
    out << "  " << std::left << std::setw(static_cast<int>(name_w)) << r.name << "  "
        << std::setw(static_cast<int>(desc_w)) << r.describe << "  " << std::setw(12) << dims_text(r.output)
        << std::right << std::setw(12) << grouped(r.parameters) << std::setw(16) << grouped(r.macs) << "\n";
  out << "  total: " << grouped(params_.parameter_count()) << " parameters in " << params_.parameters().size()
      << " tensors (" << std::fixed << std::setprecision(2) << params_.parameter_count() * 4.0 / (1 << 20)
      << " MiB), " << grouped(macs()) << " multiply-adds per sample";
  return out.str();
}

}  // namespace shoal
