#include "comm/fault_injection.h"

namespace shoal {

void FaultPlan::add(FaultRule rule) {
  std::lock_guard<std::mutex> lock(mutex_);
  rules_.push_back(Entry{std::move(rule), 0});
}

std::optional<FaultPlan::Match> FaultPlan::match(wire::Envelope::Body::Which kind, const std::string& sender) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (std::size_t i = 0; i < rules_.size(); ++i) {
    Entry& e = rules_[i];
    if (e.released || e.rule.kind != kind || sender.rfind(e.rule.sender, 0) != 0) continue;
    if (e.rule.count >= 0 && e.applied >= e.rule.count) continue;
    ++e.applied;
    return Match{i, e.rule};
  }
  return std::nullopt;
}

int FaultPlan::applied(std::size_t rule) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return rule < rules_.size() ? rules_[rule].applied : 0;
}

void FaultPlan::release(std::size_t rule) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (rule < rules_.size()) rules_[rule].released = true;
}

bool FaultPlan::released(std::size_t rule) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return rule < rules_.size() && rules_[rule].released;
}

}  // namespace shoal
