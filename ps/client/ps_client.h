// A worker's client of the parameter servers: one connection per server of the partition table,
// pushes of gradient chunks (sent zero-copy from the caller's buffer, each asking for its
// chunks' new values back), pulls of the parameters, the worker's clock the servers' staleness
// bound counts in, and every wait with a deadline. AsyncPsStrategy (worker/async_ps.h) trains
// with it; bench/ps_bandwidth.cc measures it alone.
//
// At most `max_in_flight` pushes per server are unanswered. A server answers a connection's
// messages in order, so a pull sent after a clock's pushes carries their updates. The caller
// must leave a pushed buffer untouched until await_parameters returns: ZeroMQ may still be
// sending from it until every push is answered.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "base/log.h"
#include "comm/partition.h"
#include "comm/transport.h"
#include "base/error.h"
#include "telemetry/telemetry.h"

namespace shoal {

using Seconds = std::chrono::duration<double>;

struct PsClientOptions {
  int max_in_flight = 8;  // per server
  Seconds request_timeout{60.0};
  Seconds startup_timeout{120.0};  // pulls refused as "not ready" are retried this long
  // Called at least every 10 ms of every wait; throws to end it (the job failed, the
  // coordinator is gone), so a worker waiting on a dead server hears the job's end at once.
  std::function<void()> watch;
  // Called with the new clock each time it moves (the heartbeat carries it: progress the
  // coordinator can see, cluster.stall_seconds).
  std::function<void(std::uint64_t)> on_clock;
  // Per server: bytes pushed and pulled, and the round trips of pushes and pulls.
  MetricsRegistry* metrics = nullptr;
};

// Where a push's frames are read from, without a copy: key k's gradients are the
// table().chunks[k].numel floats at `values + table().chunks[k].offset`. `owner` keeps the
// buffer alive while ZeroMQ still holds a frame of it.
struct PushSource {
  const float* values = nullptr;
  std::shared_ptr<const void> owner;
};

class PsClient {
 public:
  // Where pulled chunks are written: the table's every element at its offset. Asked for at each
  // reply that carries values, so the caller can first wait until the buffer is free (a GPU
  // strategy's last upload from it).
  using PullTarget = std::function<float*()>;

  PsClient(Network& network, const PartitionTable& table, std::string worker_id, Logger log, PsClientOptions options,
           PullTarget pull_target);

  const PartitionTable& table() const { return table_; }
  std::size_t servers() const { return links_.size(); }
  // The index of the server that owns `key`.
  std::size_t owner(std::uint32_t key) const { return owner_[key]; }
  std::uint64_t clock() const { return clock_; }

  // Pushes `keys` (all owned by `server`) at the current clock, in as few messages as
  // kCoalesceBytes allows; each message asks for its chunks back (pullAfter). Waits for room in
  // the in-flight window first.
  void push(std::size_t server, const std::vector<std::uint32_t>& keys, const PushSource& source);
  // No data at this clock: an empty push to every server, so workers that have data are not
  // held back.
  void push_idle();
  // Moves the clock on and asks every server that this clock's pushes did not ask for its
  // parameters: a server that got no push (an idle step) is asked now.
  void advance_clock();
  // Pulls what no push asked for and waits until every push and pull is answered (the pulled
  // values written to the pull target). `interrupt`, when set, runs first at every turn of the
  // wait and may throw to end it.
  void await_parameters(const std::function<void()>& interrupt = {});
  // This worker is done: it stops taking part in the servers' clocks (best effort, bounded).
  void leave();
  // A new partition table (a parameter server was restarted elsewhere): drops every connection
  // and what was in flight on it and connects to the table's servers. The clock goes on.
  void retarget(Network& network, const PartitionTable& table);

 private:
  struct Link {
    std::string id, address;
    std::unique_ptr<ClientSocket> socket;
    std::vector<std::uint32_t> keys;
    int in_flight = 0;
    std::optional<std::uint64_t> pull_id;  // outstanding pull of every chunk
    // Pushes that asked for their chunks back (pullAfter): request id -> chunks still owed.
    std::map<std::uint64_t, std::size_t> push_pulls;
    std::set<std::uint32_t> pulled;  // chunks of the next parameters received so far
    bool pull_bounded = true;
    bool asked = false;  // this clock's pushes asked for every chunk back: no pull needed
    std::chrono::steady_clock::time_point retry_at{};
    // Round trips: when each push (by request id) and the outstanding pull were sent.
    std::map<std::uint64_t, std::chrono::steady_clock::time_point> push_sent;
    std::chrono::steady_clock::time_point pull_sent{};
    Counter* push_bytes = nullptr;  // null without options.metrics
    Counter* pull_bytes = nullptr;
    Histogram* push_seconds = nullptr;
    Histogram* pull_seconds = nullptr;
    void push_answered(std::uint64_t request_id);
  };

  void connect(Network& network);
  // A send waits at most the request timeout for room, watching the job meanwhile (a server
  // that died leaves its queue full).
  std::chrono::milliseconds send_timeout() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(options_.request_timeout);
  }
  void send_pull(Link& link, bool bounded);
  // One push message of `keys`, answered with their values for the next clock once applied.
  void send_push(std::size_t server, const std::vector<std::uint32_t>& keys, const PushSource& source);
  // Handles replies until `done()` holds; throws TimeoutError at the deadline.
  template <typename Done>
  void pump_until(Done done, const char* waiting_for, const std::function<void()>& interrupt = {});
  void handle_reply(Link& link, Incoming& in);

  PartitionTable table_;
  std::string id_;
  Logger log_;
  PsClientOptions options_;
  PullTarget pull_target_;
  std::vector<Link> links_;
  std::vector<std::size_t> owner_;  // key -> link
  std::uint64_t clock_ = 0;
  std::uint64_t next_request_ = 1;
};

}  // namespace shoal
