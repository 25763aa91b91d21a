#include "models/model_file.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "base/error.h"
#include "models/onnx.h"

namespace shoal {
namespace {

// A value in a model file: a number, a yes/no flag or a word ("kaiming_normal").
struct Value {
  enum Kind { number, flag, word } kind = word;
  double num = 0;
  bool yes = false;
  std::string text;
};
using Vars = std::map<std::string, Value>;

Value number_value(double v) {
  Value out;
  out.kind = Value::number;
  out.num = v;
  return out;
}

std::optional<double> parse_number(const std::string& s) {
  double v = 0;
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, v);
  if (ec != std::errc() || ptr != end || !std::isfinite(v)) return std::nullopt;
  return v;
}

struct Option {
  const char* name;
  bool required;
};

struct OpSpec {
  const char* name;
  std::vector<Option> options;
};

const std::vector<OpSpec>& op_specs() {
  static const std::vector<OpSpec> specs = {
      {"conv",
       {{"out", false}, {"kernel", true}, {"stride", false}, {"pad", false}, {"groups", false}, {"depthwise", false},
        {"bias", false}, {"init", false}, {"std", false}, {"bias_init", false}, {"in", false}}},
      {"linear", {{"out", true}, {"bias", false}, {"init", false}, {"std", false}, {"bias_init", false}, {"in", false}}},
      {"batch_norm", {{"momentum", false}, {"eps", false}, {"gamma", false}}},
      {"relu", {}},
      {"relu6", {}},
      {"identity", {}},
      {"flatten", {}},
      {"global_avg_pool", {}},
      {"max_pool", {{"kernel", true}, {"stride", false}, {"pad", false}}},
      {"avg_pool", {{"kernel", true}, {"stride", false}, {"pad", false}}},
      {"dropout", {{"p", true}}},
      {"add", {}},
      {"concat", {}},
  };
  return specs;
}

const OpSpec* find_op(const std::string& name) {
  for (const auto& s : op_specs())
    if (name == s.name) return &s;
  return nullptr;
}

std::string op_list() {
  std::string out;
  for (const auto& s : op_specs()) out += (out.empty() ? "" : ", ") + std::string(s.name);
  return out;
}

const std::set<std::string> kEntryKeys = {"name", "op", "block", "from", "if", "repeat", "args", "first"};

class Reader {
 public:
  Reader(std::string origin, const YAML::Node& root, Model& model)
      : origin_(std::move(origin)), root_(root), model_(model) {}

  [[noreturn]] void fail(const YAML::Node& at, const std::string& message) const {
    std::ostringstream out;
    out << origin_;
    if (at.IsDefined() && at.Mark().line >= 0) out << ":" << at.Mark().line + 1;
    out << ": " << message;
    throw ConfigError(out.str());
  }

  void check_root() {
    if (!root_.IsMap()) fail(root_, "a model file is a map with a `layers:` list (docs/models.md)");
    for (const auto& kv : root_) {
      const std::string key = kv.first.Scalar();
      if (key != "name" && key != "input" && key != "classes" && key != "blocks" && key != "layers" &&
          key != "description")
        fail(kv.first, "unknown key '" + key + "' (name, description, input, classes, blocks, layers)");
    }
    if (!root_["layers"] || !root_["layers"].IsSequence() || root_["layers"].size() == 0)
      fail(root_, "needs a non-empty `layers:` list");
    if (root_["blocks"] && !root_["blocks"].IsMap()) fail(root_["blocks"], "`blocks:` is a map of block names");
  }

  void build() {
    check_root();
    Scope top;
    top.input = Model::kInput;
    top.vars["classes"] = number_value(static_cast<double>(model_.classes()));
    top.vars["in"] = number_value(static_cast<double>(model_.sample_shape()[0]));
    std::vector<std::string> stack;
    expand(root_["layers"], top, stack);
  }

 private:
  struct Scope {
    std::string prefix;  // "layer1.0."
    std::string input;   // the model node `input` names here
    Vars vars;
  };

  // ---- values ---------------------------------------------------------------------------------

  Value scalar(const YAML::Node& n, const Vars& vars, const std::string& what) const {
    if (!n.IsScalar()) fail(n, what + " must be a single value");
    const std::string& s = n.Scalar();
    if (!s.empty() && s[0] == '$') return expression(n, s, vars, what);
    Value v;
    if (s == "true" || s == "yes") {
      v.kind = Value::flag, v.yes = true;
    } else if (s == "false" || s == "no") {
      v.kind = Value::flag, v.yes = false;
    } else if (auto num = parse_number(s)) {
      v = number_value(*num);
    } else {
      v.text = s;
    }
    return v;
  }

  // "$out", "$width*4", "$in*$t": a variable, or a product of variables and numbers.
  Value expression(const YAML::Node& n, const std::string& s, const Vars& vars, const std::string& what) const {
    double product = 1;
    std::size_t start = 0;
    int terms = 0;
    while (start <= s.size()) {
      std::size_t star = s.find('*', start);
      std::string term = s.substr(start, star == std::string::npos ? std::string::npos : star - start);
      term.erase(0, term.find_first_not_of(' '));
      term.erase(term.find_last_not_of(' ') + 1);
      ++terms;
      if (!term.empty() && term[0] == '$') {
        auto it = vars.find(term.substr(1));
        if (it == vars.end()) {
          std::string known;
          for (const auto& kv : vars) known += (known.empty() ? "" : ", $") + kv.first;
          fail(n, what + ": '" + term + "' is not defined here (defined: $" + known + ")");
        }
        if (it->second.kind != Value::number) {
          if (star == std::string::npos && terms == 1) return it->second;  // a flag or a word as it is
          fail(n, what + ": '" + term + "' is not a number");
        }
        product *= it->second.num;
      } else if (auto num = parse_number(term)) {
        product *= *num;
      } else {
        fail(n, what + ": '" + s + "' is not a number, a $variable or a product of them");
      }
      if (star == std::string::npos) break;
      start = star + 1;
    }
    return number_value(product);
  }

  double number(const YAML::Node& entry, const char* key, const Vars& vars, std::optional<double> fallback,
                const std::string& who) const {
    const YAML::Node n = entry[key];
    if (!n) {
      if (!fallback) fail(entry, who + " needs `" + key + ":`");
      return *fallback;
    }
    Value v = scalar(n, vars, who + " " + key);
    if (v.kind != Value::number) fail(n, who + ": `" + key + ": " + n.Scalar() + "` is not a number");
    return v.num;
  }

  std::int64_t integer(const YAML::Node& entry, const char* key, const Vars& vars, std::optional<std::int64_t> fallback,
                       std::int64_t minimum, const std::string& who) const {
    std::optional<double> fb;
    if (fallback) fb = static_cast<double>(*fallback);
    double v = number(entry, key, vars, fb, who);
    if (v != std::floor(v) || v < static_cast<double>(minimum) || v > 1e9)
      fail(entry[key] ? entry[key] : entry,
           who + ": `" + key + "` must be a whole number >= " + std::to_string(minimum) + ", got " + format(v));
    return static_cast<std::int64_t>(v);
  }

  bool flag(const YAML::Node& entry, const char* key, const Vars& vars, bool fallback, const std::string& who) const {
    const YAML::Node n = entry[key];
    if (!n) return fallback;
    Value v = scalar(n, vars, who + " " + key);
    if (v.kind != Value::flag) fail(n, who + ": `" + key + "` must be true or false, got '" + n.Scalar() + "'");
    return v.yes;
  }

  static std::string format(double v) {
    std::ostringstream out;
    out << v;
    return out.str();
  }

  // ---- graphs -----------------------------------------------------------------------------------

  struct Entry {
    YAML::Node node;
    std::string name;
    std::vector<std::string> from;  // local names; empty: the previous entry (or the input)
    std::vector<std::size_t> deps;  // indices in the list
  };

  std::vector<Entry> read_entries(const YAML::Node& list) const {
    std::vector<Entry> entries;
    std::map<std::string, std::size_t> names;
    for (std::size_t i = 0; i < list.size(); ++i) {
      const YAML::Node node = list[i];
      if (!node.IsMap()) fail(node, "each layer is a map such as {name: conv1, op: conv, out: 32, kernel: 3}");
      Entry e;
      e.node = node;
      const bool has_op = static_cast<bool>(node["op"]), has_block = static_cast<bool>(node["block"]);
      if (has_op == has_block) fail(node, "each layer names either `op:` (" + op_list() + ") or `block:`");
      if (node["name"]) {
        if (!node["name"].IsScalar() || node["name"].Scalar().empty()) fail(node["name"], "`name:` must be a word");
        e.name = node["name"].Scalar();
      } else {
        e.name = (has_op ? node["op"] : node["block"]).Scalar() + "_" + std::to_string(i + 1);
      }
      if (e.name == Model::kInput) fail(node, "'input' names the block's (or model's) input: choose another name");
      if (auto [it, fresh] = names.emplace(e.name, i); !fresh)
        fail(node, "two layers are named '" + e.name + "' (the other is at line " +
                       std::to_string(entries[it->second].node.Mark().line + 1) + ")");
      if (const YAML::Node from = node["from"]) {
        if (from.IsScalar()) {
          e.from.push_back(from.Scalar());
        } else if (from.IsSequence()) {
          for (const auto& f : from) {
            if (!f.IsScalar()) fail(f, "`from:` lists layer names");
            e.from.push_back(f.Scalar());
          }
        } else {
          fail(from, "`from:` is a layer name or a list of them");
        }
      }
      entries.push_back(std::move(e));
    }
    // Dependencies: named layers of this list; `input` and a block's own numbered instances
    // ("layer1.0") resolve when expanded.
    for (std::size_t i = 0; i < entries.size(); ++i) {
      Entry& e = entries[i];
      if (e.from.empty()) {
        if (i > 0) e.deps.push_back(i - 1);
        continue;
      }
      for (const auto& f : e.from) {
        if (f == Model::kInput) continue;
        auto it = names.find(f);
        if (it == names.end()) it = names.find(f.substr(0, f.rfind('.')));
        if (it == names.end())
          fail(e.node["from"], "layer '" + e.name + "' reads '" + f + "', which is not defined in this list");
        e.deps.push_back(it->second);
      }
    }
    return entries;
  }

  // Kahn's order, in file order where there is a choice; a cycle is an error naming it.
  std::vector<std::size_t> order(const std::vector<Entry>& entries) const {
    const std::size_t n = entries.size();
    std::vector<int> waiting(n, 0);
    std::vector<std::vector<std::size_t>> readers(n);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t d : entries[i].deps) ++waiting[i], readers[d].push_back(i);
    std::set<std::size_t> ready;
    for (std::size_t i = 0; i < n; ++i)
      if (waiting[i] == 0) ready.insert(i);
    std::vector<std::size_t> out;
    while (!ready.empty()) {
      std::size_t i = *ready.begin();
      ready.erase(ready.begin());
      out.push_back(i);
      for (std::size_t r : readers[i])
        if (--waiting[r] == 0) ready.insert(r);
    }
    if (out.size() == n) return out;
    // Walk back from a stuck entry along stuck dependencies until one repeats.
    std::size_t at = 0;
    while (waiting[at] == 0) ++at;
    std::vector<std::size_t> path;
    std::vector<int> seen(n, -1);
    while (seen[at] < 0) {
      seen[at] = static_cast<int>(path.size());
      path.push_back(at);
      for (std::size_t d : entries[at].deps)
        if (waiting[d] > 0) {
          at = d;
          break;
        }
    }
    std::string cycle;
    for (std::size_t k = static_cast<std::size_t>(seen[at]); k < path.size(); ++k)
      cycle = entries[path[k]].name + (cycle.empty() ? "" : " -> ") + cycle;
    cycle = entries[at].name + " -> " + cycle;
    fail(entries[at].node, "the layers form a cycle: " + cycle);
  }

  // Adds the layers of `list` to the model; returns the model node of its last entry.
  std::string expand(const YAML::Node& list, const Scope& scope, std::vector<std::string>& stack) {
    std::vector<Entry> entries = read_entries(list);
    std::map<std::string, std::string> local;  // local name -> model node
    auto resolve = [&](const std::string& name) -> std::string {
      if (name == Model::kInput) return scope.input;
      return local.at(name);
    };
    for (std::size_t i : order(entries)) {
      const Entry& e = entries[i];
      std::vector<std::string> inputs;
      if (e.from.empty()) inputs.push_back(i == 0 ? scope.input : resolve(entries[i - 1].name));
      for (const auto& f : e.from) {
        auto it = local.find(f);
        if (f != Model::kInput && it == local.end())
          fail(e.node["from"], "layer '" + e.name + "' reads '" + f + "', which is not defined in this list");
        inputs.push_back(resolve(f));
      }
      if (const YAML::Node cond = e.node["if"]) {
        Value v = scalar(cond, scope.vars, "layer '" + e.name + "' if");
        if (v.kind != Value::flag) fail(cond, "`if:` must be true, false or a $flag, got '" + cond.Scalar() + "'");
        if (!v.yes) {  // a layer left out passes its (first) input through
          local[e.name] = inputs[0];
          continue;
        }
      }
      if (e.node["block"]) {
        expand_block(e, inputs, scope, stack, local);
      } else {
        local[e.name] = add_op(e, inputs, scope);
      }
    }
    return local.at(entries.back().name);
  }

  void expand_block(const Entry& e, const std::vector<std::string>& inputs, const Scope& scope,
                    std::vector<std::string>& stack, std::map<std::string, std::string>& local) {
    const YAML::Node& node = e.node;
    for (const auto& kv : node) {
      const std::string key = kv.first.Scalar();
      if (!kEntryKeys.count(key))
        fail(kv.first, "block layer '" + e.name + "': unknown key '" + key + "' (block arguments go under `args:`)");
    }
    if (inputs.size() != 1) fail(node, "block layer '" + e.name + "' reads one input");
    const std::string block = node["block"].Scalar();
    const YAML::Node& root = root_;  // const: a lookup must not insert
    const YAML::Node def = root["blocks"] ? root["blocks"][block] : YAML::Node(YAML::NodeType::Undefined);
    if (!def.IsDefined()) fail(node["block"], "layer '" + e.name + "' uses block '" + block + "', which `blocks:` does not define");
    if (std::find(stack.begin(), stack.end(), block) != stack.end()) {
      std::string chain;
      for (const auto& b : stack) chain += b + " -> ";
      fail(node["block"], "blocks form a cycle: " + chain + block);
    }
    if (!def.IsMap() || !def["layers"] || !def["layers"].IsSequence() || def["layers"].size() == 0)
      fail(def, "block '" + block + "' needs a non-empty `layers:` list");
    for (const auto& kv : def) {
      const std::string key = kv.first.Scalar();
      if (key != "args" && key != "layers" && key != "description")
        fail(kv.first, "block '" + block + "': unknown key '" + key + "' (args, layers, description)");
    }
    const YAML::Node params = def["args"];
    if (params && !params.IsMap()) fail(params, "block '" + block + "': `args:` is a map of names to defaults");
    const bool repeated = static_cast<bool>(node["repeat"]);
    const std::int64_t repeat = integer(node, "repeat", scope.vars, 1, 1, "block layer '" + e.name + "'");
    for (const char* key : {"args", "first"})
      if (node[key] && !node[key].IsMap()) fail(node[key], std::string("`") + key + ":` is a map of argument values");
    if (node["first"] && !repeated) fail(node["first"], "`first:` needs `repeat:`");

    stack.push_back(block);
    std::string input = inputs[0];
    for (std::int64_t k = 0; k < repeat; ++k) {
      Scope inner;
      inner.prefix = scope.prefix + e.name + (repeated ? "." + std::to_string(k) : "") + ".";
      inner.input = input;
      inner.vars["classes"] = scope.vars.at("classes");
      inner.vars["in"] = number_value(static_cast<double>(model_.shape_of(input)[0]));
      std::set<std::string> given;
      if (params)
        for (const auto& kv : params) {
          const std::string name = kv.first.Scalar();
          if (kv.second.IsScalar() && kv.second.Scalar() == "required") continue;
          inner.vars[name] = scalar(kv.second, scope.vars, "block '" + block + "' argument " + name);
        }
      auto apply = [&](const YAML::Node& values) {
        if (!values) return;
        for (const auto& kv : values) {
          const std::string name = kv.first.Scalar();
          if (!params || !params[name])
            fail(kv.first, "block '" + block + "' has no argument '" + name + "'");
          inner.vars[name] = scalar(kv.second, scope.vars, "layer '" + e.name + "' argument " + name);
          given.insert(name);
        }
      };
      apply(node["args"]);
      if (k == 0) apply(node["first"]);
      if (params)
        for (const auto& kv : params)
          if (kv.second.IsScalar() && kv.second.Scalar() == "required" && !given.count(kv.first.Scalar()))
            fail(node, "layer '" + e.name + "' uses block '" + block + "' without its required argument '" +
                           kv.first.Scalar() + "'");
      input = expand(def["layers"], inner, stack);
      if (repeated) local[e.name + "." + std::to_string(k)] = input;
    }
    stack.pop_back();
    local[e.name] = input;
  }

  // Initialisation of a weight or bias: `init: default | kaiming_normal | normal | zeros`.
  std::optional<Initializer> init_of(const YAML::Node& entry, const char* key, const Vars& vars, std::int64_t fan_out,
                                     const std::string& who) const {
    const YAML::Node n = entry[key];
    if (!n) return std::nullopt;
    const std::string kind = scalar(n, vars, who + " " + key).text;
    if (kind == "default") return std::nullopt;
    if (kind == "zeros") return Initializer{Initializer::constant, 1, 0.f, 0.f};
    if (kind == "kaiming_normal")
      return Initializer{Initializer::normal, 1, 0.f, static_cast<float>(std::sqrt(2.0 / static_cast<double>(fan_out)))};
    if (kind == "normal") {
      const double sd = number(entry, "std", vars, std::nullopt, who + " (init: normal)");
      if (!(sd > 0)) fail(entry["std"], who + ": `std` must be > 0");
      return Initializer{Initializer::normal, 1, 0.f, static_cast<float>(sd)};
    }
    fail(n, who + ": `" + key + ": " + n.Scalar() + "` is not one of default, kaiming_normal, normal, zeros");
  }

  std::string add_op(const Entry& e, const std::vector<std::string>& inputs, const Scope& scope) {
    const YAML::Node& node = e.node;
    const std::string op = node["op"].Scalar();
    const OpSpec* spec = find_op(op);
    if (spec == nullptr) fail(node["op"], "unknown layer kind '" + op + "' (" + op_list() + ")");
    const std::string full = scope.prefix + e.name;
    const std::string who = op + " '" + full + "'";
    for (const auto& kv : node) {
      const std::string key = kv.first.Scalar();
      if (kEntryKeys.count(key) && key != "repeat" && key != "args" && key != "first") continue;
      bool known = false;
      for (const auto& o : spec->options) known = known || key == o.name;
      if (!known) {
        std::string options;
        for (const auto& o : spec->options) options += (options.empty() ? "" : ", ") + std::string(o.name);
        fail(kv.first, who + ": unknown option '" + key + "'" +
                           (options.empty() ? " (it takes none)" : " (it takes " + options + ")"));
      }
    }
    const Vars& v = scope.vars;
    try {
      if (op == "add" || op == "concat") {
        if (inputs.size() < 2) fail(node, who + " needs `from:` with two or more layers");
        model_.add_merge(full, op == "add" ? Merge::add : Merge::concat, inputs);
        return full;
      }
      if (inputs.size() != 1) fail(node["from"], who + " reads one input");
      const Shape in = model_.shape_of(inputs[0]);
      std::unique_ptr<Layer> layer;
      if (op == "conv") {
        if (in.rank() != 3)
          fail(node, who + ": needs a CxHxW input, but '" + inputs[0] + "' gives " + dims_text(in));
        ConvSpec c;
        c.in = in[0];
        check_in(node, v, in[0], inputs[0], in, who);
        const bool depthwise = flag(node, "depthwise", v, false, who);
        c.groups = static_cast<int>(integer(node, "groups", v, depthwise ? c.in : 1, 1, who));
        c.out = integer(node, "out", v, depthwise ? std::optional<std::int64_t>(c.in) : std::nullopt, 1, who);
        c.kernel = static_cast<int>(integer(node, "kernel", v, std::nullopt, 1, who));
        c.stride = static_cast<int>(integer(node, "stride", v, 1, 1, who));
        c.pad = static_cast<int>(integer(node, "pad", v, 0, 0, who));
        c.bias = flag(node, "bias", v, true, who);
        if (c.in % c.groups != 0 || c.out % c.groups != 0)
          fail(node, who + ": groups " + std::to_string(c.groups) + " must divide its " + std::to_string(c.in) +
                         " input and " + std::to_string(c.out) + " output channels");
        check_size(node, static_cast<double>(c.out) * static_cast<double>(c.in / c.groups) * c.kernel * c.kernel, who);
        c.weight_init = init_of(node, "init", v, c.out * c.kernel * c.kernel, who);
        c.bias_init = init_of(node, "bias_init", v, c.out, who);
        layer = conv2d(c);
      } else if (op == "linear") {
        LinearSpec l;
        l.in = in.numel();
        check_in(node, v, l.in, inputs[0], in, who);
        l.out = integer(node, "out", v, std::nullopt, 1, who);
        l.bias = flag(node, "bias", v, true, who);
        check_size(node, static_cast<double>(l.in) * static_cast<double>(l.out), who);
        l.weight_init = init_of(node, "init", v, l.out, who);
        l.bias_init = init_of(node, "bias_init", v, l.out, who);
        layer = linear(l);
      } else if (op == "batch_norm") {
        const double momentum = number(node, "momentum", v, 0.1, who), eps = number(node, "eps", v, 1e-5, who);
        if (!(momentum >= 0 && momentum <= 1)) fail(node["momentum"], who + ": momentum must lie in [0, 1]");
        if (!(eps > 0)) fail(node["eps"], who + ": eps must be > 0");
        layer = batch_norm(in[0], static_cast<float>(momentum), static_cast<float>(eps),
                           static_cast<float>(number(node, "gamma", v, 1.0, who)));
      } else if (op == "relu") {
        layer = relu();
      } else if (op == "relu6") {
        layer = clip(0.f, 6.f);
      } else if (op == "identity") {
        layer = identity();
      } else if (op == "flatten") {
        layer = flatten();
      } else if (op == "global_avg_pool") {
        layer = global_avg_pool();
      } else if (op == "max_pool" || op == "avg_pool") {
        const int kernel = static_cast<int>(integer(node, "kernel", v, std::nullopt, 1, who));
        const int stride = static_cast<int>(integer(node, "stride", v, kernel, 1, who));
        const int pad = static_cast<int>(integer(node, "pad", v, 0, 0, who));
        if (2 * pad > kernel) fail(node["pad"], who + ": pad must be at most half the kernel");
        layer = op == "max_pool" ? max_pool(kernel, stride, pad) : avg_pool(kernel, stride, pad);
      } else if (op == "dropout") {
        const double p = number(node, "p", v, std::nullopt, who);
        if (!(p >= 0 && p < 1)) fail(node["p"], who + ": p must lie in [0, 1)");
        // Masks from (seed, step, sample) and the layer's place among the model's dropout layers
        // (1, 2, ...): the first is the salt the C++ cnn_bn used, so its runs are unchanged.
        layer = dropout(static_cast<float>(p), ++dropouts_);
      }
      model_.add(full, std::move(layer), inputs[0]);
    } catch (const ConfigError& error) {
      const std::string message = error.what();
      if (message.rfind(origin_, 0) == 0) throw;  // already names the place
      fail(node, message.rfind(who, 0) == 0 ? message : who + ": " + message);
    }
    return full;
  }

  void check_size(const YAML::Node& node, double weights, const std::string& who) const {
    if (weights > 1e11) fail(node, who + " would hold " + format(weights) + " weights (more than 1e11)");
  }

  // `in: N`, optional: the input channels (conv) or values (linear) the layer expects.
  void check_in(const YAML::Node& node, const Vars& v, std::int64_t actual, const std::string& from, const Shape& shape,
                const std::string& who) const {
    if (!node["in"]) return;
    const std::int64_t expected = integer(node, "in", v, std::nullopt, 1, who);
    if (expected != actual)
      fail(node["in"], who + " expects " + std::to_string(expected) + " inputs (in: " + std::to_string(expected) +
                           ") but '" + from + "' gives " + dims_text(shape));
  }

  std::string origin_;
  YAML::Node root_;
  Model& model_;
  std::uint64_t dropouts_ = 0;
};

YAML::Node parse(const std::string& text, const std::string& origin) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& error) {
    std::ostringstream out;
    out << origin;
    if (error.mark.line >= 0) out << ":" << error.mark.line + 1;
    out << ": not valid YAML: " << error.msg;
    throw ConfigError(out.str());
  }
}

std::string stem(const std::string& path) {
  std::string base = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
  return base.substr(0, base.find('.'));
}

}  // namespace

ModelFileInfo read_model_info(const std::string& text, const std::string& origin) {
  YAML::Node root = parse(text, origin);
  ModelFileInfo info;
  info.name = origin.rfind("zoo:", 0) == 0 ? origin.substr(4) : stem(origin);
  if (!root.IsMap()) return info;
  try {
    if (root["name"] && root["name"].IsScalar()) info.name = root["name"].Scalar();
    if (root["input"] && root["input"].IsScalar()) {
      std::vector<std::int64_t> dims;
      std::stringstream in(root["input"].Scalar());
      std::string part;
      while (std::getline(in, part, 'x')) {
        auto v = parse_number(part);
        SHOAL_REQUIRE(v && *v >= 1 && *v == std::floor(*v), ConfigError,
                      origin << ":" << root["input"].Mark().line + 1 << ": `input:` is CxHxW, such as 3x224x224");
        dims.push_back(static_cast<std::int64_t>(*v));
      }
      SHOAL_REQUIRE(dims.size() == 3, ConfigError,
                    origin << ":" << root["input"].Mark().line + 1 << ": `input:` is CxHxW, such as 3x224x224");
      info.input = Shape(dims);
    }
    if (root["classes"]) info.classes = root["classes"].as<std::int64_t>();
  } catch (const YAML::Exception& error) {
    throw ConfigError(origin + ":" + std::to_string(error.mark.line + 1) + ": " + error.msg);
  }
  return info;
}

std::unique_ptr<Model> build_model_from_text(const std::string& text, const std::string& origin,
                                             const Shape& sample_shape, std::int64_t classes) {
  SHOAL_REQUIRE(sample_shape.rank() == 3, ConfigError, "model input must be C x H x W, got " << sample_shape.str());
  SHOAL_REQUIRE(classes >= 1, ConfigError, "a model needs at least one class, got " << classes);
  ModelFileInfo info = read_model_info(text, origin);
  auto model = std::make_unique<Model>(info.name, sample_shape, classes);
  try {
    Reader(origin, parse(text, origin), *model).build();
  } catch (const YAML::Exception& error) {
    throw ConfigError(origin + ":" + std::to_string(error.mark.line + 1) + ": " + error.msg);
  }
  return model;
}

bool is_model_path(const std::string& model) {
  auto ends_with = [&](const std::string& suffix) {
    return model.size() > suffix.size() && model.compare(model.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return model.find('/') != std::string::npos || ends_with(".yaml") || ends_with(".yml") || is_onnx_path(model);
}

std::pair<std::string, std::string> model_source(const std::string& model) {
  SHOAL_REQUIRE(!is_onnx_path(model), ConfigError,
                model << " is an ONNX model, not a model file (YAML): build_model() imports it (docs/models.md, ONNX)");
  if (is_model_path(model)) {
    std::ifstream in(model, std::ios::binary);
    SHOAL_REQUIRE(in, ConfigError, "model = " << model << ": cannot read the model file");
    std::ostringstream text;
    text << in.rdbuf();
    return {text.str(), model};
  }
  const std::string* text = zoo_text(model);
  if (text == nullptr) {
    std::string names;
    for (const auto& n : zoo_names()) names += (names.empty() ? "" : ", ") + n;
    SHOAL_THROW(ConfigError, "model = '" << model << "' is not in the zoo (" << names
                                         << ") nor a model file (a path ending .yaml)");
  }
  return {*text, "zoo:" + model};
}

std::unique_ptr<Model> build_model(const std::string& model, const Shape& sample_shape, std::int64_t classes) {
  if (is_onnx_path(model)) {
    std::ifstream in(model, std::ios::binary);
    SHOAL_REQUIRE(in, ConfigError, "model = " << model << ": cannot read the ONNX file");
    std::ostringstream bytes;
    bytes << in.rdbuf();
    ImportedModel imported = import_onnx(bytes.str(), model);
    SHOAL_REQUIRE(imported.model->sample_shape() == sample_shape && imported.model->classes() == classes, ConfigError,
                  model << ": the model takes " << dims_text(imported.model->sample_shape()) << " inputs and has "
                        << imported.model->classes() << " classes, but the job's data is " << dims_text(sample_shape)
                        << " with " << classes << " classes");
    return std::move(imported.model);  // starts from the file's weights (Model::set_initial_values)
  }
  auto [text, origin] = model_source(model);
  return build_model_from_text(text, origin, sample_shape, classes);
}

}  // namespace shoal
