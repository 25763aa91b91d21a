// Parameter state as range files, the one writer and reader of it: a parameter server writes
// and restores its key range, rank 0 of a sync job writes the whole arena and every rank restores
// it, both through these two calls. State is host memory: the values of elements [begin, end) of
// the model's flat parameter arena, one array per optimizer slot over the same elements, and the
// optimizer's update count per chunk.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/checkpoint.h"

namespace shoal {

struct StateToWrite {
  std::int64_t begin = 0, end = 0;
  // The values as pieces (pointer, element count) in element order adding up to end - begin.
  std::vector<std::pair<const float*, std::int64_t>> values;
  // Each optimizer slot by name, end - begin contiguous elements.
  std::vector<std::pair<std::string, const float*>> slots;
  // (first element of a chunk, its update count), ascending, the first at begin.
  std::vector<std::pair<std::int64_t, std::int64_t>> updates;
};
FileEntry write_state(const std::string& ckpt_dir, const StateToWrite& state);

// Elements [begin, end) of the values into `values` and of each named slot into its pointer, from
// whichever range files of `ranges` cover them; returns the update count of the chunk at begin.
// CheckpointError naming the file when a part is not covered or a file lacks a slot.
std::int64_t read_state(const std::string& ckpt_dir, const std::vector<RangeInfo>& ranges, std::int64_t begin,
                        std::int64_t end, float* values, const std::vector<std::pair<std::string, float*>>& slots);

}  // namespace shoal
