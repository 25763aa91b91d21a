// Checkpoint files (checkpoint/checkpoint.h) in real temporary directories: CRC-32C, atomic writes,
// the MANIFEST, verification, fallback to an older checkpoint, pruning, and range files, whose
// headers are fuzzed because a checkpoint on disk is external input.
#include "checkpoint/checkpoint.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>

#include "base/error.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

// What `call` throws as a CheckpointError ("" when it throws nothing).
template <typename F>
std::string checkpoint_error(F&& call) {
  try {
    call();
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

void flip_bit(const std::string& path, std::size_t byte, int bit) {
  std::string bytes = read_file(path);
  ASSERT_LT(byte, bytes.size()) << path;
  bytes[byte] = static_cast<char>(bytes[byte] ^ (1 << bit));
  write_file(path, bytes);
}

// ---------------------------------------------------------------------------------------------
// CRC-32C

TEST(Crc32c, KnownVectors) {
  // RFC 3720 (iSCSI), appendix B.4, and the customary check value.
  std::string zeros(32, '\0'), ones(32, '\xff'), up(32, '\0'), down(32, '\0');
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<char>(i);
    down[i] = static_cast<char>(31 - i);
  }
  struct Vector {
    std::string data;
    std::uint32_t crc;
  };
  std::vector<Vector> vectors = {{"123456789", 0xE3069283u}, {"", 0u},          {zeros, 0x8A9136AAu},
                                 {ones, 0x62A8AB43u},        {up, 0x46DD794Eu}, {down, 0x113FDB5Cu}};
  for (const auto& v : vectors) {
    EXPECT_EQ(crc32c(v.data.data(), v.data.size()), v.crc) << std::hex << v.crc;
    EXPECT_EQ(crc32c_portable(v.data.data(), v.data.size()), v.crc);
    if (crc32c_hardware_available()) {
      EXPECT_EQ(crc32c_hardware(v.data.data(), v.data.size()), v.crc);
    }
  }
  // Continuing from a previous CRC is the CRC of the concatenation.
  EXPECT_EQ(crc32c("56789", 5, crc32c("1234", 4)), 0xE3069283u);
}

TEST(Crc32c, HardwareAndPortableAgreeOnOddLengthsAndAlignments) {
  if (!crc32c_hardware_available()) GTEST_SKIP() << "this CPU has no SSE4.2 crc32 instruction";
  std::mt19937_64 rng(20261125);
  std::vector<unsigned char> data(200000 + 64);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  // Lengths around the three-stream block sizes (3 x 8192 and 3 x 256 bytes) and odd ones.
  std::vector<std::size_t> lengths = {0, 1, 7, 8, 9, 15, 767, 768, 769, 24575, 24576, 24577, 24576 + 768 + 13, 200000};
  for (int i = 0; i < 200; ++i) lengths.push_back(rng() % 100000);
  for (std::size_t length : lengths)
    for (std::size_t offset : {0, 1, 3, 7, 8, 13}) {
      const unsigned char* p = data.data() + offset;
      std::uint32_t seed = static_cast<std::uint32_t>(rng());
      ASSERT_EQ(crc32c_hardware(p, length, seed), crc32c_portable(p, length, seed))
          << "length " << length << ", offset " << offset;
    }
  // Split anywhere, the two halves continue into the same CRC.
  for (int i = 0; i < 50; ++i) {
    std::size_t split = rng() % 200000;
    EXPECT_EQ(crc32c_hardware(data.data() + split, 200000 - split, crc32c_portable(data.data(), split)),
              crc32c_portable(data.data(), 200000));
  }
}

// ---------------------------------------------------------------------------------------------
// Atomic writes

TEST(CheckpointFiles, AtomicWriteRoundTripsPiecesAndLeavesNoTemporary) {
  TempDir dir;
  std::string big(1300000, '\0');  // more than one write batch
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + i / 251);
  std::string a = "header|", empty, c = "|tail";
  FileEntry e = write_file_atomic(
      dir.path(), "data.bin",
      Pieces{{a.data(), a.size()}, {empty.data(), 0}, {big.data(), big.size()}, {c.data(), c.size()}});
  std::string whole = a + big + c;
  EXPECT_EQ(read_file(dir.file("data.bin")), whole);
  EXPECT_EQ(read_whole_file(dir.file("data.bin")), whole);
  EXPECT_EQ(e.name, "data.bin");
  EXPECT_EQ(e.size, whole.size());
  EXPECT_EQ(e.crc, crc32c(whole.data(), whole.size()));
  // Replacing it leaves the new contents and nothing else.
  FileEntry t = write_file_atomic(dir.path(), "data.bin", std::string("short\n"));
  EXPECT_EQ(read_file(dir.file("data.bin")), "short\n");
  EXPECT_EQ(t.size, 6u);
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"data.bin"});
}

TEST(CheckpointFiles, AtomicWriteFailureNamesThePathAndTheReason) {
  TempDir dir;
  try {
    write_file_atomic(dir.file("no-such-dir"), "x", std::string("1"));
    FAIL() << "no error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.file("no-such-dir") + "/x"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos) << e.what();
  }
  EXPECT_NE(checkpoint_error([&] { read_whole_file(dir.file("absent")); }).find(dir.file("absent")), std::string::npos);
}

TEST(CheckpointFiles, CheckpointNames) {
  EXPECT_EQ(checkpoint_name(40), "ckpt-40");
  EXPECT_EQ(parse_checkpoint_name("ckpt-40"), 40);
  EXPECT_EQ(parse_checkpoint_name("ckpt-0"), 0);
  for (const char* bad : {"ckpt-", "ckpt--1", "ckpt-+1", "ckpt-007", "ckpt-4x", "ckpt-99999999999999999999", "ckpt-4 ",
                          "xckpt-4", "LATEST"})
    EXPECT_EQ(parse_checkpoint_name(bad), std::nullopt) << bad;
}

// ---------------------------------------------------------------------------------------------
// MANIFEST

TEST(Manifest, RoundTrips) {
  TempDir root;
  std::string dir = root.file("ckpt-12");
  fs::create_directory(dir);
  Manifest m;
  m.step = 12;
  m.files = {{"position", 10, 0x01234567u}, {"params.0-100", 1234, 0xfedcba98u}, {"job.ini", 0, 0}};
  write_manifest(dir, m);
  Manifest r = read_manifest(dir);
  EXPECT_EQ(r.format, 1);
  EXPECT_EQ(r.step, 12);
  ASSERT_EQ(r.files.size(), 3u);
  for (const auto& f : m.files) {
    const FileEntry* g = r.find(f.name);
    ASSERT_NE(g, nullptr) << f.name;
    EXPECT_EQ(g->size, f.size);
    EXPECT_EQ(g->crc, f.crc);
  }
  EXPECT_EQ(r.find("absent"), nullptr);
  std::string text = read_file(dir + "/MANIFEST");
  EXPECT_EQ(text.substr(0, 27), "shoal-checkpoint 1\nstep 12\n");
  EXPECT_NE(text.find("\nfedcba98 1234 params.0-100\n"), std::string::npos) << text;
}

// `body` with the closing line a writer adds.
std::string sealed(const std::string& body) {
  char line[32];
  std::snprintf(line, sizeof(line), "crc32c %08x\n", crc32c(body.data(), body.size()));
  return body + line;
}

TEST(Manifest, MalformedOnesAreRejectedNamingTheFileAndTheLine) {
  const std::string head = "shoal-checkpoint 1\nstep 7\n";
  const std::string good = head + "0000abcd 5 position\n";
  std::string tampered = sealed(good);
  tampered.replace(tampered.find(" 5 "), 3, " 6 ");  // a size edited after sealing
  struct Case {
    const char* what;
    std::string text;
    std::string message;
  };
  std::vector<Case> cases = {
      {"empty", "", "too short"},
      {"not a manifest", sealed("hello\nstep 7\n"), "line 1: expected 'shoal-checkpoint 1'"},
      {"newer format", sealed("shoal-checkpoint 2\nstep 7\n"), "format version 2 is not supported"},
      {"no step", sealed("shoal-checkpoint 1\nsteps 7\n"), "line 2: expected 'step <step number>'"},
      {"negative step", sealed("shoal-checkpoint 1\nstep -7\n"), "line 2"},
      {"step with a leading zero", sealed("shoal-checkpoint 1\nstep 07\n"), "line 2"},
      {"step of another directory", sealed("shoal-checkpoint 1\nstep 8\n"), "says step 8 but the directory is ckpt-7"},
      {"bad crc", sealed(head + "0000abcg 5 position\n"), "line 3: expected '<crc32c"},
      {"short crc", sealed(head + "abcd 5 position\n"), "line 3"},
      {"upper-case crc", sealed(head + "0000ABCD 5 position\n"), "line 3"},
      {"bad size", sealed(head + "0000abcd 5x position\n"), "line 3"},
      {"huge size", sealed(head + "0000abcd 99999999999999999999 position\n"), "line 3"},
      {"extra field", sealed(head + "0000abcd 5 position x\n"), "line 3"},
      {"two spaces", sealed(head + "0000abcd  5 position\n"), "line 3"},
      {"blank line", sealed(good + "\n"), "line 4"},
      {"path outside", sealed(head + "0000abcd 5 ../position\n"), "bad file name '../position'"},
      {"dot dot", sealed(head + "0000abcd 5 ..\n"), "bad file name '..'"},
      {"sub-directory", sealed(head + "0000abcd 5 a/b\n"), "bad file name 'a/b'"},
      {"hidden", sealed(head + "0000abcd 5 .position.tmp.1\n"), "bad file name"},
      {"control byte", sealed(head + "0000abcd 5 pos\x01tion\n"), "'pos\\x01tion'"},
      {"carriage return", sealed(head + "0000abcd 5 position\r\n"), "bad file name"},
      {"itself", sealed(head + "0000abcd 5 MANIFEST\n"), "bad file name"},
      {"listed twice", sealed(good + "0000abcd 5 position\n"), "line 4: file position is listed twice"},
      {"no closing line", good, "no closing 'crc32c' line"},
      {"truncated closing line", sealed(good).substr(0, sealed(good).size() - 3), "does not end with a newline"},
      {"edited after sealing", tampered, "checksum mismatch"},
      {"bad closing line", good + "crc32c xyz\n", "expected 'crc32c <8 lowercase hex digits>'"},
      {"text after the closing line", sealed(good) + "0000abcd 5 layout\n", "line 5: text after the closing"},
  };
  TempDir root;
  std::string dir = root.file("ckpt-7");
  fs::create_directory(dir);
  write_file(dir + "/MANIFEST", sealed(good));
  ASSERT_EQ(read_manifest(dir).files.size(), 1u) << "the unedited manifest is good";
  for (const auto& c : cases) {
    write_file(dir + "/MANIFEST", c.text);
    std::string error = checkpoint_error([&] { read_manifest(dir); });
    EXPECT_NE(error.find(dir + "/MANIFEST"), std::string::npos) << c.what << ": " << error;
    EXPECT_NE(error.find(c.message), std::string::npos) << c.what << ": " << error;
  }
  fs::remove(dir + "/MANIFEST");
  EXPECT_NE(checkpoint_error([&] { read_manifest(dir); }).find("no MANIFEST"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Whole checkpoints

// A checkpoint ckpt-<step> under root: a range file of 1000 elements with a velocity slot, a
// position file and the MANIFEST (unless `complete` is false: a writer that died).
std::string make_checkpoint(const std::string& root, std::int64_t step, bool complete = true) {
  std::string dir = root + "/" + checkpoint_name(step);
  fs::create_directories(dir);
  std::vector<float> values(1000), velocity(1000);
  for (int i = 0; i < 1000; ++i) {
    values[i] = static_cast<float>(step) + 0.001f * static_cast<float>(i);
    velocity[i] = -values[i];
  }
  RangeWrite range;
  range.begin = 0;
  range.end = 1000;
  range.slots = {"velocity"};
  range.arrays = {{{values.data(), 1000}}, {{velocity.data(), 1000}}};
  range.updates = {{0, step}};
  Manifest m;
  m.step = step;
  m.files.push_back(write_range_file(dir, range));
  m.files.push_back(write_file_atomic(dir, "position", "step " + std::to_string(step) + "\n"));
  if (complete) write_manifest(dir, m);
  return dir;
}

TEST(Checkpoint, VerifyDetectsATruncatedLongerMissingOrFlippedFile) {
  TempDir root;
  std::string dir = make_checkpoint(root.path(), 30);
  Manifest m = verify_checkpoint(dir);
  EXPECT_EQ(m.step, 30);
  EXPECT_EQ(m.files.size(), 2u);
  const std::string file = dir + "/params.0-1000", original = read_file(file);

  write_file(file, original.substr(0, original.size() - 1));
  std::string error = checkpoint_error([&] { verify_checkpoint(dir); });
  EXPECT_NE(error.find(file + ": truncated"), std::string::npos) << error;

  write_file(file, original + "x");
  error = checkpoint_error([&] { verify_checkpoint(dir); });
  EXPECT_NE(error.find(file + ": " + std::to_string(original.size() + 1) + " bytes, longer than"), std::string::npos)
      << error;

  for (std::size_t byte : {std::size_t{0}, std::size_t{100}, original.size() / 2, original.size() - 1}) {
    write_file(file, original);
    flip_bit(file, byte, static_cast<int>(byte % 8));
    error = checkpoint_error([&] { verify_checkpoint(dir); });
    EXPECT_NE(error.find(file + ": checksum mismatch"), std::string::npos) << byte << ": " << error;
    EXPECT_NE(error.find("the file was changed or corrupted"), std::string::npos) << error;
  }

  write_file(file, original);
  fs::remove(dir + "/position");
  error = checkpoint_error([&] { verify_checkpoint(dir); });
  EXPECT_NE(error.find(dir + "/position: missing"), std::string::npos) << error;
}

struct Rejection {
  std::string dir, why;
};

std::optional<std::string> resumable(const std::string& root, std::vector<Rejection>* rejected) {
  return find_resumable(root, [&](const std::string& dir, const std::string& why) { rejected->push_back({dir, why}); });
}

TEST(Checkpoint, ResumesFromLatestOrFallsBackToTheNewestThatVerifies) {
  TempDir root;
  std::vector<Rejection> rejected;
  EXPECT_EQ(resumable(root.path(), &rejected), std::nullopt) << "an empty root";
  EXPECT_EQ(resumable(root.file("absent"), &rejected), std::nullopt) << "no root at all";
  EXPECT_TRUE(rejected.empty());

  make_checkpoint(root.path(), 10);
  make_checkpoint(root.path(), 20);
  make_checkpoint(root.path(), 30, /*complete=*/false);  // its writer died
  write_latest(root.path(), "ckpt-20");
  EXPECT_EQ(read_file(root.file("LATEST")), "ckpt-20\n");
  EXPECT_EQ(read_latest(root.path()), "ckpt-20");
  EXPECT_EQ(resumable(root.path(), &rejected), root.file("ckpt-20"));
  EXPECT_TRUE(rejected.empty());

  // LATEST's checkpoint corrupt: the previous one, and why each newer one was passed over.
  flip_bit(root.file("ckpt-20/params.0-1000"), 5000, 3);
  EXPECT_EQ(resumable(root.path(), &rejected), root.file("ckpt-10"));
  ASSERT_EQ(rejected.size(), 2u);
  EXPECT_EQ(rejected[0].dir, root.file("ckpt-20"));
  EXPECT_NE(rejected[0].why.find(root.file("ckpt-20/params.0-1000") + ": checksum mismatch"), std::string::npos)
      << rejected[0].why;
  EXPECT_EQ(rejected[1].dir, root.file("ckpt-30"));
  EXPECT_NE(rejected[1].why.find("no MANIFEST"), std::string::npos) << rejected[1].why;

  // LATEST naming a directory that is gone, or holding junk.
  rejected.clear();
  write_latest(root.path(), "ckpt-40");
  EXPECT_EQ(resumable(root.path(), &rejected), root.file("ckpt-10"));
  ASSERT_FALSE(rejected.empty());
  EXPECT_EQ(rejected[0].dir, root.file("ckpt-40"));
  EXPECT_NE(rejected[0].why.find("LATEST names ckpt-40 but there is no such directory"), std::string::npos);
  rejected.clear();
  write_file(root.file("LATEST"), "  ckpt-10 \n\n");  // whitespace is trimmed
  EXPECT_EQ(read_latest(root.path()), "ckpt-10");
  write_file(root.file("LATEST"), "../elsewhere\n");
  EXPECT_NE(checkpoint_error([&] { read_latest(root.path()); }).find("'../elsewhere' is not a checkpoint name"),
            std::string::npos);
  EXPECT_EQ(resumable(root.path(), &rejected), root.file("ckpt-10"));
  ASSERT_FALSE(rejected.empty());
  EXPECT_EQ(rejected[0].dir, root.file("LATEST"));

  // Nothing usable left.
  rejected.clear();
  flip_bit(root.file("ckpt-10/position"), 0, 0);
  EXPECT_EQ(resumable(root.path(), &rejected), std::nullopt);
  EXPECT_EQ(rejected.size(), 4u);  // LATEST, ckpt-30, ckpt-20, ckpt-10
}

TEST(Checkpoint, PruneKeepsTheNewestCompleteOnesAndLatests) {
  TempDir root;
  make_checkpoint(root.path(), 0, /*complete=*/false);  // a writer that died long ago
  for (int step = 1; step <= 6; ++step) make_checkpoint(root.path(), step);
  make_checkpoint(root.path(), 7, /*complete=*/false);  // perhaps being written now
  write_latest(root.path(), "ckpt-2");
  write_file(root.file("notes.txt"), "not a checkpoint");
  fs::create_directory(root.file("ckpt-backup"));

  std::vector<std::string> removed = prune_checkpoints(root.path(), 2);
  EXPECT_EQ(removed, (std::vector<std::string>{"ckpt-0", "ckpt-1", "ckpt-3", "ckpt-4"}));
  EXPECT_EQ(names_in(root.path()),
            (std::vector<std::string>{"LATEST", "ckpt-2", "ckpt-5", "ckpt-6", "ckpt-7", "ckpt-backup", "notes.txt"}));
  EXPECT_TRUE(prune_checkpoints(root.path(), 2).empty()) << "nothing more to do";

  // keep 0 still keeps LATEST's; a finished ckpt-9 makes every older incomplete one removable.
  make_checkpoint(root.path(), 8, /*complete=*/false);
  make_checkpoint(root.path(), 9);
  removed = prune_checkpoints(root.path(), 0);
  EXPECT_EQ(removed, (std::vector<std::string>{"ckpt-5", "ckpt-6", "ckpt-7", "ckpt-8", "ckpt-9"}));
  EXPECT_TRUE(fs::exists(root.file("ckpt-2/MANIFEST")));
  EXPECT_THROW(prune_checkpoints(root.path(), -1), ConfigError);
}

// ---------------------------------------------------------------------------------------------
// Range files

float value_at(int array, std::int64_t element) {
  return static_cast<float>(element) * 0.5f + static_cast<float>(array) * 100000.0f;
}

// Writes [begin, end) with `slots`, each array from pieces of at most `piece` elements.
FileEntry write_test_range(const std::string& dir, std::int64_t begin, std::int64_t end,
                           const std::vector<std::string>& slots, std::int64_t piece,
                           std::vector<std::pair<std::int64_t, std::int64_t>> updates,
                           std::vector<std::vector<float>>* storage) {
  RangeWrite range;
  range.begin = begin;
  range.end = end;
  range.slots = slots;
  range.updates = std::move(updates);
  storage->clear();
  storage->resize(1 + slots.size());
  for (std::size_t a = 0; a <= slots.size(); ++a) {
    auto& data = (*storage)[a];
    for (std::int64_t e = begin; e < end; ++e) data.push_back(value_at(static_cast<int>(a), e));
    range.arrays.emplace_back();
    for (std::int64_t at = 0; at < end - begin; at += piece)
      range.arrays.back().emplace_back(data.data() + at, std::min(piece, end - begin - at));
  }
  return write_range_file(dir, range);
}

TEST(RangeFiles, AdjacentRangesReadBackAcrossTheBoundary) {
  TempDir root;
  std::string dir = root.file("ckpt-5");
  fs::create_directory(dir);
  std::vector<std::vector<float>> storage;
  Manifest m;
  m.step = 5;
  m.files.push_back(write_test_range(dir, 0, 1000, {"adam_m", "adam_v"}, 300, {{0, 7}, {400, 9}, {800, 11}}, &storage));
  m.files.push_back(write_test_range(dir, 1000, 2500, {"adam_m", "adam_v"}, 512, {{1000, 4}}, &storage));
  m.files.push_back(write_file_atomic(dir, "position", std::string("0\n")));
  write_manifest(dir, m);
  Manifest read = verify_checkpoint(dir);

  std::vector<RangeInfo> ranges = list_ranges(dir, read);
  ASSERT_EQ(ranges.size(), 2u);
  EXPECT_EQ(ranges[0].file, "params.0-1000");
  EXPECT_EQ(ranges[0].begin, 0);
  EXPECT_EQ(ranges[0].end, 1000);
  EXPECT_EQ(ranges[1].file, "params.1000-2500");
  EXPECT_EQ(ranges[1].slots, (std::vector<std::string>{"adam_m", "adam_v"}));
  EXPECT_EQ(ranges[0].updates.size(), 3u);
  // A header of 48 + 2 x 7 name bytes + 3 x 16 update bytes = 110, padded to 128.
  EXPECT_EQ(fs::file_size(dir + "/params.0-1000"), 128u + 3 * 1000 * 4);

  const std::vector<std::pair<std::int64_t, std::int64_t>> spans = {{990, 1010},  {0, 2500}, {999, 1000}, {1000, 1001},
                                                                    {1234, 1235}, {37, 37},  {2000, 2500}};
  int index = 0;
  for (const char* array : {"values", "adam_m", "adam_v"}) {
    for (auto [begin, end] : spans) {
      std::vector<float> out(static_cast<std::size_t>(end - begin) + 1, -1.0f);
      read_range(dir, ranges, array, begin, end, out.data());
      for (std::int64_t e = begin; e < end; ++e)
        ASSERT_EQ(out[static_cast<std::size_t>(e - begin)], value_at(index, e)) << array << " element " << e;
      EXPECT_EQ(out.back(), -1.0f) << "nothing written past the end";
    }
    ++index;
  }
  std::vector<float> out(100);
  EXPECT_NE(checkpoint_error([&] {
              read_range(dir, ranges, "velocity", 950, 1050, out.data());
            }).find(dir + "/params.0-1000: has no optimizer slot 'velocity' (its slots: adam_m, adam_v)"),
            std::string::npos);
  EXPECT_NE(checkpoint_error([&] {
              read_range(dir, ranges, "values", 2450, 2550, out.data());
            }).find("elements [2500, 2550) of 'values' are in no range file"),
            std::string::npos);

  EXPECT_EQ(updates_at(ranges, 0), 7);
  EXPECT_EQ(updates_at(ranges, 399), 7);
  EXPECT_EQ(updates_at(ranges, 400), 9);
  EXPECT_EQ(updates_at(ranges, 999), 11);
  EXPECT_EQ(updates_at(ranges, 1000), 4);
  EXPECT_EQ(updates_at(ranges, 2499), 4);
  EXPECT_EQ(updates_at(ranges, 2500), 0);

  // A reader of one range touches only the file that covers it.
  fs::remove(dir + "/params.1000-2500");
  std::vector<float> first(1000);
  read_range(dir, ranges, "adam_v", 0, 1000, first.data());
  EXPECT_EQ(first[999], value_at(2, 999));
}

// A destination 1-31 bytes ahead of its source modulo 4096 is read through an aligned buffer
// (the kernel's copy is slow there): the same values either way, at every alignment.
TEST(RangeFiles, ReadsIntoAnyAlignment) {
  TempDir root;
  std::vector<std::vector<float>> storage;
  Manifest m;
  m.files.push_back(write_test_range(root.path(), 0, 300000, {"velocity"}, 65536, {{0, 1}}, &storage));
  auto ranges = list_ranges(root.path(), m);
  const std::int64_t begin = 1000, end = 250000;  // 1 MB, more than a bounce buffer
  std::unique_ptr<char, decltype(&std::free)> base(static_cast<char*>(std::aligned_alloc(4096, 2 << 20)), &std::free);
  for (int array : {0, 1}) {
    // The header is 128 bytes; then values, then velocity, 300000 floats each.
    const std::size_t source = 128 + (static_cast<std::size_t>(array) * 300000 + begin) * 4;
    for (std::size_t ahead : {0, 4, 16, 28, 32, 4092}) {
      float* out = reinterpret_cast<float*>(base.get() + (source + ahead) % 4096);
      std::fill(out, out + (end - begin), 0.0f);
      read_range(root.path(), ranges, array == 0 ? "values" : "velocity", begin, end, out);
      for (std::int64_t e = begin; e < end; ++e)
        ASSERT_EQ(out[e - begin], value_at(array, e)) << "ahead " << ahead << ", element " << e;
    }
  }
}

TEST(RangeFiles, RangesWithAGapOrAnOverlapOrAMisnamedFile) {
  TempDir root;
  std::string dir = root.path();
  std::vector<std::vector<float>> storage;
  Manifest m;
  m.files.push_back(write_test_range(dir, 0, 100, {}, 100, {{0, 1}}, &storage));
  m.files.push_back(write_test_range(dir, 200, 300, {}, 100, {{200, 1}}, &storage));
  auto ranges = list_ranges(dir, m);
  std::vector<float> out(300);
  EXPECT_NE(checkpoint_error([&] {
              read_range(dir, ranges, "values", 50, 250, out.data());
            }).find("elements [100, 250) of 'values' are in no range file"),
            std::string::npos);
  read_range(dir, ranges, "values", 200, 300, out.data());
  EXPECT_EQ(out[0], value_at(0, 200));

  m.files.push_back(write_test_range(dir, 50, 150, {}, 100, {{50, 1}}, &storage));
  EXPECT_NE(checkpoint_error([&] { list_ranges(dir, m); }).find("params.0-100 and params.50-150 overlap"),
            std::string::npos);

  m.files.pop_back();
  fs::rename(dir + "/params.200-300", dir + "/params.200-301");
  m.files.back().name = "params.200-301";
  EXPECT_NE(checkpoint_error([&] {
              list_ranges(dir, m);
            }).find("params.200-301: bad range-file header: it holds elements [200, 300)"),
            std::string::npos);
}

// A fixed-seed fuzz of the header: every corruption is a CheckpointError naming the file, never
// a crash, a hang or a huge allocation (the ASan build runs this too).
class RangeHeaderFuzz : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::vector<float>> storage;
    FileEntry e =
        write_test_range(dir_.path(), 100, 164, {"velocity", "adam_m"}, 20, {{100, 3}, {120, 5}, {150, 8}}, &storage);
    name_ = e.name;
    original_ = read_file(dir_.file(name_));
    std::memcpy(&header_bytes_, original_.data() + 12, 4);
    ASSERT_EQ(header_bytes_, 128u);
  }
  // list_ranges of `bytes` as the file: "" if it was accepted, else the CheckpointError.
  std::string check(const std::string& bytes) {
    // A new file each time: ext4 flushes a file rewritten in place through O_TRUNC on close.
    fs::remove(dir_.file(name_));
    write_file(dir_.file(name_), bytes);
    Manifest m;
    m.files.push_back({name_, bytes.size(), 0});
    try {
      auto ranges = list_ranges(dir_.path(), m);
      EXPECT_EQ(ranges.size(), 1u);
      EXPECT_LT(ranges[0].begin, ranges[0].end);
      return "";
    } catch (const CheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find(dir_.file(name_)), std::string::npos) << e.what();
      return e.what();
    }
  }
  static void reseal(std::string& bytes, std::uint32_t header_bytes) {
    header_bytes = std::min<std::uint32_t>(header_bytes, static_cast<std::uint32_t>(bytes.size()));
    if (header_bytes < 20) return;
    std::uint32_t crc = crc32c(bytes.data() + 20, header_bytes - 20);
    std::memcpy(bytes.data() + 16, &crc, 4);
  }
  template <typename T>
  std::string with_field(std::size_t offset, T value) {
    std::string bytes = original_;
    std::memcpy(bytes.data() + offset, &value, sizeof(T));
    reseal(bytes, header_bytes_);
    return bytes;
  }

  TempDir dir_;
  std::string name_, original_;
  std::uint32_t header_bytes_ = 0;
};

TEST_F(RangeHeaderFuzz, EachBadFieldIsNamed) {
  EXPECT_EQ(check(original_), "");
  struct Case {
    const char* what;
    std::string bytes;
    std::string message;
  };
  std::string magic = original_;
  magic[0] = 'X';
  std::string bad_crc = original_;
  bad_crc[16] ^= 1;
  std::string longer_header = with_field<std::uint32_t>(12, 192);
  reseal(longer_header, 192);
  std::vector<Case> cases = {
      {"magic", magic, "no SHOALRNG magic"},
      {"version", with_field<std::uint32_t>(8, 2), "format version 2 is not supported"},
      {"header length not aligned", with_field<std::uint32_t>(12, 100), "header length 100"},
      {"header length past the file", with_field<std::uint32_t>(12, 0xFFFFFFC0u), "header length 4294967232"},
      {"header length zero", with_field<std::uint32_t>(12, 0), "header length 0"},
      {"header checksum", bad_crc, "bad range-file header: checksum mismatch"},
      {"slot count", with_field<std::uint32_t>(20, 0xFFFFFFFFu), "4294967295 optimizer slots"},
      {"negative begin", with_field<std::int64_t>(24, -1), "element range [-1, 164)"},
      {"end before begin", with_field<std::int64_t>(32, 50), "element range [100, 50)"},
      {"huge end", with_field<std::int64_t>(32, INT64_MAX), "make more than 2^64"},
      {"update-run count", with_field<std::uint32_t>(40, 0xFFFFFFFFu), "4294967295 update runs"},
      {"no update runs", with_field<std::uint32_t>(40, 0), "0 update runs"},
      {"reserved", with_field<std::uint32_t>(44, 1), "reserved field is 1"},
      {"slot name length", with_field<std::uint8_t>(48, 255), "runs past its end"},
      {"slot name", with_field<char>(49, '/'), "slot name '/elocity' is not valid"},
      {"first update run", with_field<std::int64_t>(64, 99), "update run 0"},
      {"unordered update runs", with_field<std::int64_t>(80, 160), "update run 2"},
      {"negative updates", with_field<std::int64_t>(72, -3), "update run 0"},
      {"padding", with_field<char>(127, 1), "padding is not zero"},
      {"fewer slots", with_field<std::uint32_t>(20, 1), "update run 0"},
      {"longer header", longer_header, "header length 192 does not match its fields (128)"},
      {"longer range", with_field<std::int64_t>(32, 165), "make 908"},
      {"trailing bytes", original_ + "x", "the file is 897 bytes"},
      {"empty", "", "0 bytes, too short for a header"},
  };
  for (const auto& c : cases) {
    std::string error = check(c.bytes);
    EXPECT_NE(error.find(c.message), std::string::npos) << c.what << ": " << error;
  }
}

TEST_F(RangeHeaderFuzz, RandomCorruptionIsACheckpointErrorNeverACrash) {
  std::mt19937_64 rng(7);
  int accepted = 0;
  for (int i = 0; i < 2000; ++i) {
    std::string bytes = original_;
    switch (i % 4) {
      case 0:  // a flipped bit anywhere in the header: the checksum or a check catches it
        bytes[rng() % header_bytes_] ^= static_cast<char>(1 << (rng() % 8));
        EXPECT_NE(check(bytes), "") << i;
        break;
      case 1:  // cut short anywhere
        bytes.resize(rng() % bytes.size());
        EXPECT_NE(check(bytes), "") << i;
        break;
      case 2:    // random bytes over random fields, resealed so that the field checks see them
      case 3: {  // ... at the fixed fields, where the counts and lengths are
        int n = 1 + static_cast<int>(rng() % 4);
        for (int k = 0; k < n; ++k) {
          std::size_t at = 20 + rng() % ((i % 4 == 2 ? header_bytes_ : 48) - 20);
          bytes[at] = static_cast<char>(rng());
        }
        reseal(bytes, header_bytes_);
        accepted += check(bytes).empty();
        break;
      }
    }
  }
  // Some resealed changes are harmless (an update count, a letter of a slot name); most are not.
  EXPECT_LT(accepted, 500);
}

}  // namespace
}  // namespace shoal
