#include "checkpoint/state_io.h"

namespace shoal {

FileEntry write_state(const std::string& ckpt_dir, const StateToWrite& state) {
  RangeWrite range;
  range.begin = state.begin;
  range.end = state.end;
  range.arrays.push_back(state.values);
  for (const auto& [name, data] : state.slots) {
    range.slots.push_back(name);
    range.arrays.push_back({{data, state.end - state.begin}});
  }
  range.updates = state.updates;
  return write_range_file(ckpt_dir, range);
}

std::int64_t read_state(const std::string& ckpt_dir, const std::vector<RangeInfo>& ranges, std::int64_t begin,
                        std::int64_t end, float* values, const std::vector<std::pair<std::string, float*>>& slots) {
  read_range(ckpt_dir, ranges, checkpoint_file::kValues, begin, end, values);
  for (const auto& [name, out] : slots) read_range(ckpt_dir, ranges, name, begin, end, out);
  return updates_at(ranges, begin);
}

}  // namespace shoal
