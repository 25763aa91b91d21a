// Checkpoint files on disk (docs/checkpoint-format.md). A checkpoint is a directory
// `ckpt-<step>/` under `checkpoint.dir`, holding:
//   - range files `params.<begin>-<end>`: one element range [begin, end) of the model's flat
//     parameter arena: the values, then one array per optimizer slot ("velocity", "adam_m",
//     "adam_v"), and the optimizer's update count per chunk. Ranges are of the named layout
//     (`layout` lists every parameter's name, shape and element range), not of a server or a
//     rank, so a checkpoint restores into a job with any number of servers or workers;
//   - text files the coordinator writes (`position`: the data position; `job.ini`: the
//     configuration; `layout`), and `buffers` (batch-norm running statistics);
//   - `MANIFEST`, written last: every other file with its size and CRC-32C.
// Every file is written to a temporary name, fsynced and renamed, then the directory fsynced.
// `LATEST` in the root names the newest complete checkpoint and is replaced the same way.
// A checkpoint without a MANIFEST, or one whose files do not match it, is not used.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace shoal {

// The checkpoint's file names, beside the range files (docs/checkpoint-format.md).
namespace checkpoint_file {
inline constexpr char kManifest[] = "MANIFEST";
inline constexpr char kLatest[] = "LATEST";
inline constexpr char kPosition[] = "position";  // the coordinator's data position
inline constexpr char kLayout[] = "layout";      // every parameter and buffer with its range
inline constexpr char kJobIni[] = "job.ini";     // the job's configuration
inline constexpr char kBuffers[] = "buffers";    // batch-norm running statistics
inline constexpr char kTrainer[] = "trainer";    // sync jobs: the trainer's step and schedule
inline constexpr char kValues[] = "values";      // the parameters' array in a range file
}  // namespace checkpoint_file


// CRC-32C (Castagnoli, reflected, as iSCSI and ext4 use it) of `size` bytes, continuing from
// `crc` (0 to start): crc32c("123456789") == 0xE3069283.
std::uint32_t crc32c(const void* data, std::size_t size, std::uint32_t crc = 0);
// The two implementations crc32c picks from, for tests and the benchmark: the portable
// slice-by-8 tables, and the SSE4.2 crc32 instruction (only where crc32c_hardware_available()).
std::uint32_t crc32c_portable(const void* data, std::size_t size, std::uint32_t crc = 0);
std::uint32_t crc32c_hardware(const void* data, std::size_t size, std::uint32_t crc = 0);
bool crc32c_hardware_available();

struct FileEntry {
  std::string name;  // relative to the checkpoint directory, no '/'
  std::uint64_t size = 0;
  std::uint32_t crc = 0;
};

// The pieces of one file, written in order (no concatenation copy).
using Pieces = std::vector<std::pair<const void*, std::size_t>>;

// Writes dir/name through a temporary name in dir, fsyncs it, renames it over dir/name and
// fsyncs dir. Returns the file's entry. Throws IoError naming the path and the system's reason.
// The pieces must not change during the call: the CRC is computed from them just before each
// write, so bytes changed in between would leave a file that fails verification.
FileEntry write_file_atomic(const std::string& dir, const std::string& name, const Pieces& pieces);
FileEntry write_file_atomic(const std::string& dir, const std::string& name, const std::string& text);
// A whole file; throws CheckpointError naming the path when it cannot be read.
std::string read_whole_file(const std::string& path);

std::string checkpoint_name(std::int64_t step);                              // "ckpt-<step>"
std::optional<std::int64_t> parse_checkpoint_name(const std::string& name);  // nullopt if not one

struct Manifest {
  int format = 1;
  std::int64_t step = 0;
  std::vector<FileEntry> files;
  const FileEntry* find(const std::string& name) const;
};
// Writes ckpt_dir/MANIFEST (atomically): call it after every other file is durable.
void write_manifest(const std::string& ckpt_dir, const Manifest& manifest);
// Parses ckpt_dir/MANIFEST; throws CheckpointError naming the file and the bad line.
Manifest read_manifest(const std::string& ckpt_dir);
// Reads the manifest and checks every file it lists (present, size, CRC-32C); throws
// CheckpointError naming the first bad file and what is wrong with it.
Manifest verify_checkpoint(const std::string& ckpt_dir);
// One file of a manifest (present, size, CRC-32C), as verify_checkpoint checks each; throws
// CheckpointError naming the file and what is wrong with it.
void verify_file(const std::string& ckpt_dir, const FileEntry& entry);

// root/LATEST holds the name of the newest complete checkpoint ("ckpt-40\n").
void write_latest(const std::string& root, const std::string& name);
std::optional<std::string> read_latest(const std::string& root);  // nullopt: no LATEST file

// The checkpoint to resume from (its directory): the one LATEST names if it verifies, else
// the newest ckpt-* (by step) that does. Each one passed over is reported to `rejected` with
// the reason (the file and what is wrong). nullopt when root holds no usable checkpoint.
std::optional<std::string> find_resumable(
    const std::string& root, const std::function<void(const std::string& dir, const std::string& why)>& rejected);

// Removes every ckpt-* directory under root but the newest `keep` complete ones (with a
// MANIFEST) and the one LATEST names; also removes incomplete ones older than the newest
// complete one (a writer that died). Returns the names removed.
std::vector<std::string> prune_checkpoints(const std::string& root, int keep);

// --- Range files -------------------------------------------------------------------------
// One element range [begin, end) of the parameter arena with its optimizer state.
struct RangeWrite {
  std::int64_t begin = 0, end = 0;
  std::vector<std::string> slots;  // optimizer slot names, after "values"
  // arrays[0] is the values, arrays[1 + s] slot s: each as pieces (pointer, element count) in
  // element order that add up to end - begin.
  std::vector<std::vector<std::pair<const float*, std::int64_t>>> arrays;
  // The optimizer's update count per chunk: (first element of the chunk, updates), ascending,
  // the first at `begin`.
  std::vector<std::pair<std::int64_t, std::int64_t>> updates;
};
std::string range_file_name(std::int64_t begin, std::int64_t end);  // "params.<begin>-<end>"
FileEntry write_range_file(const std::string& ckpt_dir, const RangeWrite& range);

struct RangeInfo {
  std::string file;
  std::int64_t begin = 0, end = 0;
  std::vector<std::string> slots;
  std::vector<std::pair<std::int64_t, std::int64_t>> updates;
};
// The range files a manifest lists, by begin; throws CheckpointError if a header is bad or
// they overlap.
std::vector<RangeInfo> list_ranges(const std::string& ckpt_dir, const Manifest& manifest);
// Elements [begin, end) of `array` ("values" or a slot name) into out, from whichever range
// files cover them. Throws CheckpointError if a part is not covered or a file lacks the slot.
void read_range(const std::string& ckpt_dir, const std::vector<RangeInfo>& ranges, const std::string& array,
                std::int64_t begin, std::int64_t end, float* out);
// The update count of the chunk that holds `element` (0 if no range covers it).
std::int64_t updates_at(const std::vector<RangeInfo>& ranges, std::int64_t element);

}  // namespace shoal
