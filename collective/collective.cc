#include "collective/collective.h"

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

ThreadedCollective::ThreadedCollective() : s_(std::make_shared<Shared>()) {}

ThreadedCollective::~ThreadedCollective() {
  // Subclasses call stop() in their destructor (their calls must not start on a half-
  // destroyed object); this is the backstop.
  if (thread_.joinable()) thread_.detach();
}

void ThreadedCollective::start() { thread_ = std::thread(&ThreadedCollective::loop, s_); }

void ThreadedCollective::stop() {
  if (!thread_.joinable()) return;
  bool stuck;
  {
    std::unique_lock lock(s_->mutex);
    s_->stopping = true;
    s_->cv.notify_all();
    // After an abort the call in progress was interrupted (Gloo: connections closed) and
    // usually returns at once; one blocked on a dead peer may not return before its timeout.
    if (s_->aborted) s_->cv.wait_for(lock, std::chrono::seconds(2), [this] { return !s_->busy; });
    stuck = s_->busy;
  }
  if (stuck) {
    // The thread and its call own what they use; they end on their own (or with the process).
    thread_.detach();
  } else {
    thread_.join();
  }
}

WorkHandle ThreadedCollective::enqueue(std::string what, Call run) {
  auto work = std::make_shared<Work>(std::move(what));
  {
    std::lock_guard lock(s_->mutex);
    if (s_->aborted) {
      work->abort(*s_->aborted);
      return work;
    }
    s_->queue.push_back(Op{work, std::move(run)});
  }
  s_->cv.notify_all();
  return work;
}

WorkHandle ThreadedCollective::all_reduce(std::span<float> data, ReduceOp op, std::string what) {
  return enqueue(std::move(what), all_reduce_call(data, op));
}

WorkHandle ThreadedCollective::broadcast(std::span<float> data, int root, std::string what) {
  SHOAL_REQUIRE(root >= 0 && root < size(), InternalError, "broadcast root " << root << " outside the world");
  return enqueue(std::move(what), broadcast_call(data, root));
}

void ThreadedCollective::abort(const std::string& why) {
  std::deque<Op> dropped;
  WorkHandle running;
  {
    std::lock_guard lock(s_->mutex);
    if (s_->aborted) return;
    s_->aborted = why;
    dropped.swap(s_->queue);
    running = s_->running;
  }
  s_->cv.notify_all();
  for (auto& op : dropped) op.work->abort(why);
  if (running) running->abort(why);
  interrupt();
}

void ThreadedCollective::loop(std::shared_ptr<Shared> s) {
  while (true) {
    Op op;
    {
      std::unique_lock lock(s->mutex);
      s->cv.wait(lock, [&] { return s->stopping || !s->queue.empty(); });
      if (s->queue.empty() || s->aborted) return;  // stopping, nothing left (or nothing that can succeed)
      op = std::move(s->queue.front());
      s->queue.pop_front();
      s->running = op.work;
      s->busy = true;
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
    op.run = nullptr;  // releases what the call held
    {
      std::lock_guard lock(s->mutex);
      s->running.reset();
      s->busy = false;
      s->cv.notify_all();
      // After a failure nothing later can succeed: the ranks no longer agree on the order.
      if (error && !s->aborted) {
        s->aborted = failure_of(error).message;
        for (auto& queued : s->queue) queued.work->abort(*s->aborted);
        s->queue.clear();
      }
    }
    op.work->finish(error);
  }
}

}  // namespace shoal
