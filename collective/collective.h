// Collectives for synchronous data-parallel training: all-reduce and broadcast on contiguous
// float buffers, over Open MPI, Gloo or NCCL (sync.backend). Every operation is asynchronous and
// returns a handle (as c10d's Work): wait with a deadline, abort, and the error that ended it.
// Operations run in the order they were issued, on the backend's own thread (MPI, Gloo) or
// stream (NCCL), so the caller keeps computing while they progress.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"

namespace shoal {

enum class ReduceOp { sum, average };

// The world a process belongs to: its rank, how many ranks, its rank among those on this host.
struct WorldInfo {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;  // ranks on this host
};

// One collective operation in flight. Thread-safe.
class Work {
 public:
  explicit Work(std::string what) : what_(std::move(what)) {}
  const std::string& what() const { return what_; }  // "all-reduce of 1024 floats (bucket 3)"

  // Waits until the operation ends or `deadline` passes; false on the deadline. Throws the
  // error that ended the operation.
  bool wait_until(std::chrono::steady_clock::time_point deadline);
  // Waits at most `timeout` (TimeoutError naming the operation after it), calling `watch`
  // every 10 ms (it throws to end the wait: the job failed, a stop request).
  void wait(std::chrono::duration<double> timeout, const std::function<void()>& watch = {});
  bool done() const;
  // The error that ended it (null while running or after success).
  std::exception_ptr error() const;
  // Ends the wait of everyone waiting on it with `why` (the backend may still be busy with it).
  void abort(const std::string& why);

  // For backends: the operation finished (error null) or failed.
  void finish(std::exception_ptr error = nullptr);

 private:
  std::string what_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};
using WorkHandle = std::shared_ptr<Work>;

class Collective {
 public:
  virtual ~Collective() = default;
  virtual const WorldInfo& world() const = 0;
  int rank() const { return world().rank; }
  int size() const { return world().size; }
  virtual std::string describe() const = 0;  // "gloo (tcp on lo) rank 0 of 2"

  // In place on `data` (host memory for mpi and gloo, device memory for nccl). The buffer must
  // stay valid and untouched until the operation ends.
  virtual WorkHandle all_reduce(std::span<float> data, ReduceOp op, std::string what) = 0;
  virtual WorkHandle broadcast(std::span<float> data, int root, std::string what) = 0;
  // Fails every queued and running operation with `why`, and every later one at once. The
  // collective is unusable afterwards (a new world is formed to go on).
  virtual void abort(const std::string& why) = 0;
  // A blocking convenience: issue, then wait with `timeout`.
  void all_reduce_now(std::span<float> data, ReduceOp op, std::chrono::duration<double> timeout, std::string what,
                      const std::function<void()>& watch = {});
};

// A collective whose operations run one after another on a thread of its own (MPI, Gloo:
// their calls block). Subclasses turn each operation into a blocking call. The thread and the
// calls own what they use (shared pointers, handles by value): after an abort, a call blocked
// on a dead peer may outlive the collective, so it must not touch the collective itself.
class ThreadedCollective : public Collective {
 public:
  using Call = std::function<void()>;
  ~ThreadedCollective() override;
  WorkHandle all_reduce(std::span<float> data, ReduceOp op, std::string what) override;
  WorkHandle broadcast(std::span<float> data, int root, std::string what) override;
  void abort(const std::string& why) override;

 protected:
  ThreadedCollective();
  // Starts the thread; call at the end of the subclass's constructor.
  void start();
  // Stops the thread: waits for queued operations to finish, unless aborted (then a thread
  // stuck in a call is left behind, detached, and its operations failed).
  void stop();
  // The blocking calls, run on the thread.
  virtual Call all_reduce_call(std::span<float> data, ReduceOp op) = 0;
  virtual Call broadcast_call(std::span<float> data, int root) = 0;
  // Called from abort() on the caller's thread: make a blocked call return (e.g. close the
  // connections). May do nothing.
  virtual void interrupt() {}

 private:
  struct Op {
    WorkHandle work;
    Call run;
  };
  struct Shared {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<Op> queue;
    std::optional<std::string> aborted;
    bool stopping = false, busy = false;
    WorkHandle running;
  };
  WorkHandle enqueue(std::string what, Call run);
  static void loop(std::shared_ptr<Shared> s);

  std::shared_ptr<Shared> s_;
  std::thread thread_;
};

// A key-value store every rank can reach, for forming a world (Gloo's rendezvous, NCCL's
// unique id): the coordinator serves one to every process of a sync job.
class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  virtual void set(const std::string& key, const std::vector<char>& value) = 0;
  // The value, or nothing while the key is absent.
  virtual std::optional<std::vector<char>> try_get(const std::string& key) = 0;
  // Polls until the key is present; TimeoutError naming the key after `timeout`.
  std::vector<char> get(const std::string& key, std::chrono::duration<double> timeout);
};

// Thrown by a collective whose peer failed (a connection closed, an operation of the world
// ended with an error): the world is broken.
class CollectiveError : public Error {
 public:
  explicit CollectiveError(const std::string& message) : Error(message, ExitCode::peer_lost) {}
};

}  // namespace shoal
