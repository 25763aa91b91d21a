#include "core/collective.h"

namespace shoal {

bool Work::wait_until(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  if (!cv_.wait_until(lock, deadline, [this] { return done_; })) return false;
  if (error_) std::rethrow_exception(error_);
  return true;
}

void Work::wait(std::chrono::duration<double> timeout, const std::function<void()>& watch) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(timeout);
  while (true) {
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) break;
    if (wait_until(std::min(deadline, now + std::chrono::milliseconds(10)))) return;
    if (watch) watch();
  }
  if (wait_until(deadline)) return;
  SHOAL_THROW(TimeoutError, what_ << " did not finish within " << timeout.count()
                                  << " s (sync.timeout_seconds): a rank is not taking part");
}

bool Work::done() const {
  std::lock_guard lock(mutex_);
  return done_;
}

std::exception_ptr Work::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

void Work::finish(std::exception_ptr error) {
  {
    std::lock_guard lock(mutex_);
    if (done_) return;  // aborted first: the abort is what the waiters saw
    done_ = true;
    error_ = std::move(error);
  }
  cv_.notify_all();
}

void Work::abort(const std::string& why) {
  finish(std::make_exception_ptr(CollectiveError(what_ + " aborted: " + why)));
}

void Collective::all_reduce_now(std::span<float> data, ReduceOp op, std::chrono::duration<double> timeout,
                                std::string what, const std::function<void()>& watch) {
  all_reduce(data, op, std::move(what))->wait(timeout, watch);
}

std::vector<char> RendezvousStore::get(const std::string& key, std::chrono::duration<double> timeout) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(timeout);
  auto pause = std::chrono::milliseconds(1);
  while (true) {
    if (auto value = try_get(key)) return std::move(*value);
    SHOAL_REQUIRE(std::chrono::steady_clock::now() < deadline, TimeoutError,
                  "rendezvous key '" << key << "' was not published within " << timeout.count()
                                     << " s: a rank did not join the world");
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
}

ThreadedCollective::~ThreadedCollective() {
  // Subclasses call stop() in their destructor (their calls must not run on a half-destroyed
  // object); this is the backstop.
  if (thread_.joinable()) thread_.detach();
}

void ThreadedCollective::start() { thread_ = std::thread(&ThreadedCollective::loop, this); }

void ThreadedCollective::stop() {
  if (!thread_.joinable()) return;
  bool stuck;
  {
    std::unique_lock lock(mutex_);
    stopping_ = true;
    cv_.notify_all();
    // After an abort the call in progress was interrupted (Gloo: connections closed) and
    // returns at once; one blocked on a dead peer may never return (MPI).
    if (aborted_) cv_.wait_for(lock, std::chrono::seconds(2), [this] { return !busy_; });
    stuck = busy_;
  }
  if (stuck) {
    // A call blocked on a dead peer may never return; it holds no pointer the process still
    // needs once the world is abandoned, so the thread is left to the process's exit.
    thread_.detach();
  } else {
    thread_.join();
  }
}

WorkHandle ThreadedCollective::enqueue(std::string what, std::function<void()> run) {
  auto work = std::make_shared<Work>(std::move(what));
  {
    std::lock_guard lock(mutex_);
    if (aborted_) {
      work->abort(*aborted_);
      return work;
    }
    queue_.push_back(Op{work, std::move(run)});
  }
  cv_.notify_all();
  return work;
}

WorkHandle ThreadedCollective::all_reduce(std::span<float> data, ReduceOp op, std::string what) {
  return enqueue(std::move(what), [this, data, op] { run_all_reduce(data, op); });
}

WorkHandle ThreadedCollective::broadcast(std::span<float> data, int root, std::string what) {
  SHOAL_REQUIRE(root >= 0 && root < size(), InternalError, "broadcast root " << root << " outside the world");
  return enqueue(std::move(what), [this, data, root] { run_broadcast(data, root); });
}

void ThreadedCollective::abort(const std::string& why) {
  std::deque<Op> dropped;
  WorkHandle running;
  {
    std::lock_guard lock(mutex_);
    if (aborted_) return;
    aborted_ = why;
    dropped.swap(queue_);
    running = running_;
  }
  cv_.notify_all();
  for (auto& op : dropped) op.work->abort(why);
  if (running) running->abort(why);
  interrupt();
}

void ThreadedCollective::loop() {
  while (true) {
    Op op;
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty() || aborted_) return;  // stopping, nothing left (or nothing that can succeed)
      op = std::move(queue_.front());
      queue_.pop_front();
      running_ = op.work;
      busy_ = true;
    }
    std::exception_ptr error;
    try {
      op.run();
    } catch (const Error&) {
      error = std::current_exception();
    } catch (const std::exception& e) {
      // A backend's own exception (gloo::IoException: a peer closed its connection): the
      // world is broken.
      error = std::make_exception_ptr(CollectiveError(op.work->what() + " failed: " + e.what()));
    } catch (...) {
      error = std::make_exception_ptr(CollectiveError(op.work->what() + " failed"));
    }
    {
      std::lock_guard lock(mutex_);
      running_.reset();
      busy_ = false;
      cv_.notify_all();
      // After a failure nothing later can succeed: the ranks no longer agree on the order.
      if (error && !aborted_) {
        aborted_ = failure_of(error).message;
        for (auto& queued : queue_) queued.work->abort(*aborted_);
        queue_.clear();
      }
    }
    op.work->finish(error);
  }
}

}  // namespace shoal
