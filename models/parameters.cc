#include "models/parameters.h"

#include <cmath>

#include "base/error.h"
#include "compute/rng.h"

namespace shoal {

Parameter* ParameterSet::add_parameter(const std::string& name, const Shape& shape, Initializer init) {
  SHOAL_ASSERT(!values_.defined() || values_.numel() == 0, "parameter " << name << " declared after allocate()");
  SHOAL_ASSERT(find(name) == nullptr, "parameter " << name << " declared twice");
  auto p = std::make_unique<Parameter>();
  p->name = name;
  p->shape = shape;
  p->init = init;
  p->offset = parameter_elements_;
  parameter_elements_ += shape.numel();
  parameters_.push_back(std::move(p));
  return parameters_.back().get();
}

Parameter* ParameterSet::add_buffer(const std::string& name, const Shape& shape, float fill) {
  auto p = std::make_unique<Parameter>();
  p->name = name;
  p->shape = shape;
  p->init = Initializer{Initializer::constant, 1, fill};
  p->offset = buffer_elements_;
  buffer_elements_ += shape.numel();
  buffers_.push_back(std::move(p));
  return buffers_.back().get();
}

std::vector<ElementRange> ParameterSet::bias_and_norm_ranges() const {
  std::vector<ElementRange> out;
  for (const auto& p : parameters_) {
    if (p->shape.rank() != 1) continue;
    if (!out.empty() && out.back().end == p->offset) {
      out.back().end += p->shape.numel();
    } else {
      out.push_back(ElementRange{p->offset, p->offset + p->shape.numel()});
    }
  }
  return out;
}

const Parameter* ParameterSet::find(const std::string& name) const {
  for (const auto& p : parameters_)
    if (p->name == name) return p.get();
  for (const auto& p : buffers_)
    if (p->name == name) return p.get();
  return nullptr;
}

void ParameterSet::allocate(Backend& backend, std::uint64_t seed) {
  values_ = backend.allocate(Shape{parameter_elements_});
  grads_ = backend.allocate(Shape{parameter_elements_});
  buffer_values_ = backend.allocate(Shape{buffer_elements_});
  auto fill = [&](Parameter& p, Tensor& arena, Tensor* grad_arena) {
    p.value = arena.flat_slice(p.offset, p.shape.numel()).reshaped(p.shape);
    if (grad_arena != nullptr) p.grad = grad_arena->flat_slice(p.offset, p.shape.numel()).reshaped(p.shape);
    std::vector<float> host(static_cast<std::size_t>(p.shape.numel()));
    if (p.init.kind == Initializer::uniform_fan_in) {
      Rng rng(hash_combine(seed, hash_string(p.name)));
      double bound = 1.0 / std::sqrt(static_cast<double>(p.init.fan_in));
      for (auto& v : host) v = static_cast<float>((2 * rng.uniform() - 1) * bound);
    } else if (p.init.kind == Initializer::normal) {
      Rng rng(hash_combine(seed, hash_string(p.name)));
      for (auto& v : host) v = static_cast<float>(rng.normal() * p.init.stddev);
    } else {
      for (auto& v : host) v = p.init.value;
    }
    backend.copy_from_host(host.data(), p.value);
  };
  for (auto& p : parameters_) fill(*p, values_, &grads_);
  for (auto& p : buffers_) fill(*p, buffer_values_, nullptr);
}

}  // namespace shoal
