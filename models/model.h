// A model: a directed acyclic graph of named nodes over one ParameterSet. A node is a layer
// reading one earlier node (or the model's input), or a merge of several: an element-wise sum
// (residual connections) or a concatenation along the channels. The last node added is the
// output (the logits). Models come from model files (models/model_file.h) and the zoo, which
// is a set of model files built into the binary.
//
// Backward runs the nodes in reverse order; a node read by several others receives the sum of
// their gradients. It reports each node's parameters as soon as their gradients are final, so
// a strategy can start communicating them while backward goes on.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/layer.h"
#include "models/parameters.h"

namespace shoal {

using GradientsReady = std::function<void(const std::vector<Parameter*>&)>;

enum class Merge { none, add, concat };

// One row of `shoal model show`.
struct NodeSummary {
  std::string name, describe;
  Shape output;  // per sample
  std::int64_t parameters = 0;
  std::int64_t macs = 0;  // multiply-adds per sample
};

class Model {
 public:
  // The name a node uses to read the model's input.
  static constexpr const char* kInput = "input";

  Model(std::string name, Shape sample_shape, std::int64_t classes);

  // Adds a node reading `input` (a node's name or kInput; empty: the node added last, or the
  // input for the first). Returns the node's output shape per sample. Throws ConfigError for a
  // duplicate or unknown name and when the input's shape does not fit the layer.
  Shape add(const std::string& name, std::unique_ptr<Layer> layer, const std::string& input = "");
  // Adds a merge of two or more nodes: add needs equal shapes, concat equal shapes but dim 1.
  Shape add_merge(const std::string& name, Merge kind, const std::vector<std::string>& inputs);
  // Output shape per sample (C, H, W or features) of a node or of kInput.
  Shape shape_of(const std::string& node) const;
  bool has_node(const std::string& node) const;

  // Declares every parameter and buffer: names, shapes and offsets, no memory (the layout the
  // coordinator partitions and records in checkpoints). Again is a no-op; build() declares if needed.
  void declare();
  // Declares every parameter, allocates the arenas and initialises them from `seed`, or with
  // the values given to set_initial_values().
  void build(Backend& backend, std::uint64_t seed);
  // Makes build() start from these arenas (parameters, then buffers, in declaration order; an
  // imported ONNX model's weights) instead of the seeded initialisation. The sizes are checked
  // when build() lays out the arenas.
  void set_initial_values(std::vector<float> values, std::vector<float> buffers);
  bool has_initial_values() const { return has_initial_; }

  // A read-only view of the graph, one entry per node in the order they were added (inputs come
  // first): what an exporter needs besides each layer's spec() and parameters().
  struct GraphNode {
    std::string name;
    const Layer* layer = nullptr;     // null for a merge
    Merge merge = Merge::none;
    std::vector<std::string> inputs;  // node names, or kInput
  };
  std::vector<GraphNode> graph() const;

  const Tensor& forward(LayerContext& ctx, const Tensor& x);
  void backward(LayerContext& ctx, const Tensor& dlogits, const GradientsReady& ready = {});

  const std::string& name() const { return name_; }
  const Shape& sample_shape() const { return sample_shape_; }
  std::int64_t classes() const { return classes_; }
  ParameterSet& params() { return params_; }
  const ParameterSet& params() const { return params_; }
  std::vector<NodeSummary> nodes() const;  // after declare()
  std::int64_t macs() const;               // multiply-adds of one sample's forward pass
  std::int64_t activation_floats_per_sample() const;  // every node's output, summed
  std::string summary() const;             // a table: node, layer, output shape, parameters, multiply-adds

 private:
  struct Node {
    std::string name;
    std::unique_ptr<Layer> layer;  // null for a merge
    Merge merge = Merge::none;
    std::vector<int> inputs;  // node indices, -1: the model's input
    Shape shape;              // output with a batch of one
    // Per step.
    const Tensor* out = nullptr;
    const Tensor* grad = nullptr;
    Tensor sum, grad_sum;        // merge outputs; gradients summed from several readers
    std::vector<Tensor> splits;  // concat's gradient, one part per input
  };
  int index_of(const std::string& name) const;  // -1 for kInput; throws for unknown names
  const Shape& node_shape(int index) const;
  void add_gradient(Backend& backend, int index, const Tensor& g);

  std::string name_;
  Shape sample_shape_;  // C, H, W
  std::int64_t classes_;
  Shape input_shape_;  // [1, C, H, W]
  std::vector<Node> nodes_;
  ParameterSet params_;
  bool declared_ = false, built_ = false;
  bool has_initial_ = false;
  std::vector<float> initial_values_, initial_buffers_;
};

}  // namespace shoal
