// The versioned chunk store and the parameter server's zero-copy pull replies, with a real
// ParameterServer in a thread and clients in other threads over inproc:// — where a pull reply's
// frame is the server's own buffer, so a buffer written while a reply still holds it would show
// up here as changed bytes. Also built and run under ThreadSanitizer (tests/sanitizers/run.sh),
// which checks the holds that hand buffers between threads.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "coordinator/partitioner.h"
#include "compute/devices/devices.h"
#include "checkpoint/checkpoint.h"
#include "compute/rng.h"
#include "ps/chunk_store.h"
#include "ps/parameter_server.h"
#include "ps/update_pool.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;
using K = wire::Envelope::Body;

std::vector<float> bytes_of(const zmq::message_t& frame) {
  std::vector<float> v(frame.size() / sizeof(float));
  std::memcpy(v.data(), frame.data(), frame.size());
  return v;
}

TEST(ChunkStore, AHeldFrameKeepsItsBytesAndUpdatesMoveToAFreeBuffer) {
  ChunkStore store;
  std::vector<float> initial(1000, 1.f);
  store.add(initial.data(), 1000);
  EXPECT_EQ(store.version(0), 0u);
  {
    zmq::message_t held = store.frame(0);
    EXPECT_EQ(held.data(), store.values(0).raw()) << "a pull frame is the buffer itself, not a copy";
    Tensor& next = store.writable(0);
    EXPECT_NE(next.raw(), held.data()) << "the held buffer must not be written";
    EXPECT_EQ(next.data<float>()[999], 1.f) << "the new version starts from the current values";
    next.data<float>()[0] = 5.f;
    EXPECT_EQ(bytes_of(held), initial) << "the held frame still shows version 0";
    EXPECT_EQ(store.version(0), 1u);
    EXPECT_EQ(store.buffer_count(0), 2u);
    EXPECT_EQ(store.stats().moved, 1u);
  }
  // Nobody holds anything now: updates go in place, no new buffer.
  const void* current = store.values(0).raw();
  EXPECT_EQ(store.writable(0).raw(), current);
  EXPECT_EQ(store.stats().moved, 1u);
  // A snapshot holds every chunk at one moment; a released one frees its buffers for reuse.
  ChunkStore::Snapshot snap = store.snapshot();
  store.writable(0).data<float>()[0] = 7.f;
  EXPECT_EQ(snap.values(0)[0], 5.f);
  EXPECT_EQ(snap.version(0), 2u);
  EXPECT_EQ(store.values(0).data<float>()[0], 7.f);
  snap.release();
  zmq::message_t again = store.frame(0);
  store.writable(0);
  EXPECT_EQ(store.buffer_count(0), 2u) << "the buffer the snapshot released is reused";
  again.rebuild();  // released
  {
    // A burst of readers: each update finds its buffer held and takes another.
    std::vector<zmq::message_t> burst;
    for (int i = 0; i < 4; ++i) {
      burst.push_back(store.frame(0));
      store.writable(0);
    }
    EXPECT_EQ(store.buffer_count(0), 5u);
  }
  store.writable(0);
  EXPECT_EQ(store.buffer_count(0), 2u) << "after the burst, one spare is kept, the rest given back";
}

TEST(UpdatePool, RunsEveryIndexOnceOnSeveralThreadsAndRethrows) {
  UpdatePool pool(3);
  for (int round = 0; round < 50; ++round) {
    std::vector<std::atomic<int>> calls(37);
    std::mutex mutex;
    std::set<std::thread::id> threads;
    pool.run(37, [&](std::int64_t i) {
      ++calls[static_cast<std::size_t>(i)];
      std::lock_guard<std::mutex> lock(mutex);
      threads.insert(std::this_thread::get_id());
    });
    for (auto& c : calls) ASSERT_EQ(c.load(), 1);
    ASSERT_GE(threads.size(), 1u);
  }
  std::atomic<int> done{0};
  EXPECT_THROW(pool.run(20,
                        [&](std::int64_t i) {
                          if (i == 3) throw std::runtime_error("boom");
                          ++done;
                        }),
               std::runtime_error);
  EXPECT_LT(done.load(), 20);
  pool.run(5, [&](std::int64_t) { ++done; });  // still usable after a failure
}

// A server in its own thread, with `threads` update threads, for `workers` workers.
class ServerThread {
 public:
  ServerThread(std::int64_t elements, std::int64_t chunk, int workers, int threads) {
    backend_ = make_backend(BackendOptions{Device::cpu(), 1});
    server_ = std::make_unique<ParameterServer>(network, address, *backend_, Logger("ps", LogLevel::error));
    table = make_partition(elements, chunk, {ServerRange{"ps.0", address, 0, 0}});
    for (int w = 0; w < workers; ++w) table.live_workers.push_back("worker." + std::to_string(w));
    ServerOptions options;
    options.staleness = 1 << 20;
    options.threads = threads;
    options.optimizer.momentum = 0;
    options.schedule.base_lr = 0.5f;  // with gradients of 2^-10, every update subtracts 2^-11 exactly
    std::vector<float> initial(static_cast<std::size_t>(elements), 1.f);
    server_->start("ps.0", table, 0, initial.data(), options);
    thread_ = std::thread([this] {
      while (!stop_) {
        server_->serve(2ms);
        // As the role's loop does: a checkpoint written in the background is handed over here.
        if (auto written = server_->take_written_checkpoint()) {
          std::lock_guard<std::mutex> lock(mutex_);
          written_.push_back(*written);
        }
      }
    });
  }
  ~ServerThread() { stop(); }
  // Only once the thread is stopped.
  const ParameterServer& server() {
    stop();
    return *server_;
  }
  void stop() {
    if (!stop_.exchange(true)) thread_.join();
  }
  std::vector<CheckpointReport> written() {
    std::lock_guard<std::mutex> lock(mutex_);
    return written_;
  }

  Network network;
  const std::string address = "inproc://ps-concurrency";
  PartitionTable table;

 private:
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<ParameterServer> server_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::vector<CheckpointReport> written_;
};

constexpr float kGradient = 1.f / 1024;
constexpr float kStep = 1.f / 2048;  // lr 0.5 x kGradient

// Pushes kGradient for every chunk (with the pull for the next step when `pull_after`).
void push_all(ClientSocket& socket, const PartitionTable& table, const std::string& id, std::uint64_t request,
              std::uint64_t clock, bool pull_after) {
  Outgoing m(id, request);
  auto p = m.body().initPush();
  p.setClock(clock);
  p.setPullAfter(pull_after);
  auto list = p.initChunks(static_cast<unsigned>(table.chunks.size()));
  for (std::size_t k = 0; k < table.chunks.size(); ++k) {
    list[static_cast<unsigned>(k)].setKey(static_cast<std::uint32_t>(k));
    list[static_cast<unsigned>(k)].setNumel(static_cast<std::uint32_t>(table.chunks[k].numel));
    zmq::message_t frame(static_cast<std::size_t>(table.chunks[k].numel) * sizeof(float));
    std::vector<float> g(static_cast<std::size_t>(table.chunks[k].numel), kGradient);
    std::memcpy(frame.data(), g.data(), frame.size());
    m.add_payload(std::move(frame));
  }
  socket.send(m);
}

TEST(InprocPs, PullReplyFramesAreNeverWrittenWhileHeld) {
  ServerThread s(/*elements=*/4096, /*chunk=*/1024, /*workers=*/1, /*threads=*/1);
  ClientSocket c(s.network, s.address, Logger("c", LogLevel::off));
  std::uint64_t request = 1;
  auto pull = [&] {
    Outgoing m("worker.0", request++);
    m.body().initPull().setBounded(false);
    c.send(m);
    std::vector<Incoming> replies;
    std::size_t chunks = 0;
    while (chunks < s.table.chunks.size()) {
      auto in = c.receive(5000ms);
      if (!in) ADD_FAILURE() << "no pull reply";
      if (!in) break;
      if (in->kind() != K::PULL_REPLY) continue;
      chunks += in->payloads().size();
      replies.push_back(std::move(*in));
    }
    return replies;
  };
  std::vector<Incoming> held = pull();
  ASSERT_FALSE(held.empty());
  std::vector<std::vector<float>> seen;
  for (auto& r : held)
    for (auto& f : r.payloads()) seen.push_back(bytes_of(f));
  // 50 updates while the first reply is held; each pushed gradient is acknowledged after it is applied.
  for (std::uint64_t step = 0; step < 50; ++step) {
    push_all(c, s.table, "worker.0", request++, step, false);
    bool acked = false;
    while (!acked) {
      auto in = c.receive(5000ms);
      ASSERT_TRUE(in) << "no push acknowledgement";
      acked = in->kind() == K::PUSH_ACK;
    }
  }
  std::vector<Incoming> fresh = pull();
  ASSERT_FALSE(fresh.empty());
  EXPECT_EQ(static_cast<const float*>(fresh[0].payloads()[0].data())[0], 1.f - 50 * kStep);
  std::size_t i = 0;
  for (auto& r : held)
    for (auto& f : r.payloads()) EXPECT_EQ(bytes_of(f), seen[i++]) << "a held reply frame changed under updates";
  held.clear();
  fresh.clear();
  const ParameterServer& server = s.server();
  EXPECT_GT(server.store().stats().moved, 0u) << "updates found their buffer held and moved";
  EXPECT_LE(server.store().stats().buffers, 3 * s.table.chunks.size()) << "buffers are reused, not piled up";
}

// Workers in threads push and pull as fast as they can, each holding some replies across
// later updates (as a slow reader would). Every reply must be self-consistent (all its chunks
// at one count of updates, since every push carries every chunk and a batch is applied whole
// before pulls are answered), never go back in time, and never change while held; at the end
// every push was applied exactly once. The server spreads chunks over 2 update threads.
TEST(InprocPs, ConcurrentPushesAndPullsKeepVersionsAndHolds) {
#ifdef __SANITIZE_THREAD__
  // ThreadSanitizer sees a race the first time two threads touch a location unordered; what
  // more steps add is wall time (each step frees large message buffers, and unmapping them under
  // TSan costs a TLB shootdown: 150 steps took 67 s here, half of it in the kernel).
  constexpr int kWorkers = 4, kSteps = 40;
#else
  constexpr int kWorkers = 4, kSteps = 150;
#endif
  ServerThread s(/*elements=*/8 * 20000, /*chunk=*/20000, kWorkers, /*threads=*/2);
  std::vector<std::thread> workers;
  std::vector<std::string> failures(kWorkers);
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      const std::string id = "worker." + std::to_string(w);
      ClientSocket c(s.network, s.address, Logger("c", LogLevel::off));
      Rng rng(static_cast<std::uint64_t>(w) + 1);
      struct Held {
        Incoming reply;
        std::vector<std::vector<float>> bytes;
      };
      std::deque<Held> held;
      float last = 2.f;
      std::uint64_t request = 1;
      auto fail = [&](const std::string& why) {
        if (failures[static_cast<std::size_t>(w)].empty()) failures[static_cast<std::size_t>(w)] = why;
      };
      for (int step = 0; step < kSteps && failures[static_cast<std::size_t>(w)].empty(); ++step) {
        push_all(c, s.table, id, request++, static_cast<std::uint64_t>(step), /*pull_after=*/true);
        std::size_t chunks = 0;
        float value = -1;
        while (chunks < s.table.chunks.size()) {
          auto in = c.receive(10000ms);
          if (!in) return fail("no pull reply at step " + std::to_string(step));
          if (in->kind() != K::PULL_REPLY) return fail("unexpected " + std::string(kind_name(in->kind())));
          Held h{std::move(*in), {}};
          for (auto& f : h.reply.payloads()) {
            h.bytes.push_back(bytes_of(f));
            for (float x : h.bytes.back())
              if (x != h.bytes.front().front()) return fail("a reply mixes versions");
          }
          if (value < 0) value = h.bytes.front().front();
          if (h.bytes.front().front() != value) return fail("one pull's chunks at different versions");
          chunks += h.reply.payloads().size();
          if (rng.below(4) == 0) held.push_back(std::move(h));  // read later, after more updates
        }
        if (value > last) return fail("a pull went back in time");
        last = value;
        while (held.size() > 3 || (!held.empty() && rng.below(3) == 0)) {
          for (std::size_t f = 0; f < held.front().bytes.size(); ++f)
            if (bytes_of(held.front().reply.payloads()[f]) != held.front().bytes[f])
              return fail("a held reply frame changed under later updates");
          held.pop_front();
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  for (int w = 0; w < kWorkers; ++w) EXPECT_EQ(failures[static_cast<std::size_t>(w)], "") << "worker." << w;
  std::vector<float> values(static_cast<std::size_t>(s.table.total_elements));
  const ParameterServer& server = s.server();
  server.read_values(values.data());
  const float expected = 1.f - kWorkers * kSteps * kStep;  // exact: multiples of 2^-11 above 0
  for (std::size_t i = 0; i < values.size(); i += 997) ASSERT_EQ(values[i], expected) << "element " << i;
  EXPECT_EQ(server.stats().updates, static_cast<std::uint64_t>(kWorkers * kSteps) * s.table.chunks.size());
  EXPECT_GT(server.store().stats().moved, 0u) << "some updates found their buffer held";
}

// A checkpoint's snapshot while a worker keeps pushing: the server acknowledges the order once it
// holds its chunks, writes the range file on its own thread while updates go on into other
// buffers, and the file holds one consistent cut: every chunk at the same number of updates
// (each push carries every chunk), the values of exactly that many updates. Run under TSan too.
TEST(InprocPs, SnapshotIsOneCutWrittenInTheBackgroundWhileUpdatesGoOn) {
  constexpr int kSteps = 200;
  ServerThread s(/*elements=*/8 * 20000, /*chunk=*/20000, /*workers=*/1, /*threads=*/2);
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("shoal-snapshot-" + std::to_string(getpid()))).string();
  std::filesystem::create_directories(dir);
  std::atomic<int> pushed{0};
  std::atomic<bool> ordered{false};
  std::string failure;
  std::thread worker([&] {
    ClientSocket c(s.network, s.address, Logger("c", LogLevel::off));
    for (int step = 0; step < kSteps; ++step) {
      // A quarter in, the snapshot order goes out before the next push: the server reads it
      // within a message or two (fair queueing) while the pushes go on.
      while (step == kSteps / 4 && !ordered) std::this_thread::yield();
      push_all(c, s.table, "worker.0", static_cast<std::uint64_t>(step) + 1, static_cast<std::uint64_t>(step), false);
      bool acked = false;
      while (!acked) {
        auto in = c.receive(10000ms);
        if (!in) {
          failure = "no push acknowledgement";
          return;
        }
        acked = in->kind() == K::PUSH_ACK;
      }
      pushed = step + 1;
    }
  });
  while (pushed < kSteps / 4) std::this_thread::sleep_for(1ms);
  ClientSocket coordinator(s.network, s.address, Logger("c", LogLevel::off));
  Outgoing order("coordinator", 7);
  auto snapshot = order.body().initSnapshot();
  snapshot.setStep(42);
  snapshot.setDir(dir);
  coordinator.send(order);
  ordered = true;
  auto ack = coordinator.receive(10000ms);
  ASSERT_TRUE(ack);
  ASSERT_EQ(ack->kind(), K::ACK) << (ack->kind() == K::ERROR ? ack->envelope().getBody().getError().getMessage().cStr()
                                                             : kind_name(ack->kind()));
  worker.join();
  ASSERT_EQ(failure, "");
  std::vector<CheckpointReport> written;
  for (int i = 0; i < 1000 && written.empty(); ++i) {
    written = s.written();
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_EQ(written.size(), 1u) << "the server reports the file it wrote";
  ASSERT_EQ(written[0].files.size(), 1u);
  EXPECT_EQ(written[0].step, 42);
  Manifest m;
  m.step = 42;
  m.files = written[0].files;
  auto ranges = list_ranges(dir, m);
  ASSERT_EQ(ranges.size(), 1u);
  const std::int64_t updates = updates_at(ranges, 0);
  EXPECT_GE(updates, kSteps / 4);
  EXPECT_LT(updates, kSteps) << "the cut was taken while the worker was still pushing";
  for (const auto& c : s.table.chunks) EXPECT_EQ(updates_at(ranges, c.offset), updates) << "one cut for every chunk";
  std::vector<float> values(static_cast<std::size_t>(s.table.total_elements));
  read_range(dir, ranges, "values", 0, s.table.total_elements, values.data());
  const float expected = 1.f - static_cast<float>(updates) * kStep;
  for (std::size_t i = 0; i < values.size(); i += 331) ASSERT_EQ(values[i], expected) << "element " << i;
  std::string bytes = read_whole_file(dir + "/" + written[0].files[0].name);
  EXPECT_EQ(crc32c(bytes.data(), bytes.size()), written[0].files[0].crc);
  // Training went on past the cut, into other buffers.
  std::vector<float> now(values.size());
  s.server().read_values(now.data());
  EXPECT_EQ(now[0], 1.f - kSteps * kStep);
  // (Whether an update found the snapshot still held, and moved, depends on how fast the writer
  // was: under TSan it usually finishes first. The file's one cut above holds either way.)
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shoal
