// The coordinator's checkpoint driver: when a checkpoint is due, and the life of one once begun
// (docs/checkpoint-format.md): drain (the coordinator decides when the job is drained: async,
// no shard leased and every worker at a step boundary; sync, every rank at the epoch boundary)
// -> cut (the directory made, the data position fixed, every server ordered to snapshot its
// shard) -> files (each server, and the worker holding the buffers or the sync state, reports
// the files it wrote) -> the coordinator's own files and the MANIFEST, last. A checkpoint that
// cannot complete is abandoned: training goes on and the next is tried one liveness period later.
//
// Its collaborators are passed in: the clock (tests step it by hand) and the interface that
// reaches the servers. It keeps no socket and no membership, so it is tested without a cluster
// (tests/coordinator/checkpoint_driver_test.cc).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "base/log.h"
#include "checkpoint/checkpoint.h"
#include "coordinator/membership.h"
#include "telemetry/metrics_file.h"

namespace shoal {

// Reaches the servers of the job for a checkpoint's cut.
class SnapshotOrders {
 public:
  virtual ~SnapshotOrders() = default;
  // Orders `server` to copy its shard now and write it as checkpoint `step` into `dir` in the
  // background. Throws Error when it does not take the order in time.
  virtual void order_snapshot(const std::string& server, std::int64_t step, const std::string& dir) = 0;
};

struct CheckpointSettings {
  std::string root;          // checkpoint.dir ("" : checkpoints are off)
  int keep = 3;              // checkpoint.keep
  std::int64_t every_steps = 0;
  double every_seconds = 0;
  double request_timeout_seconds = 60;  // a drain, and (twice) the files, must come within it
  double retry_after_seconds = 10;      // after an abandoned checkpoint (one liveness period)
  double on_term_older_than_seconds = 0;
  std::uint64_t seed = 0;  // recorded in the position file
};

class CheckpointDriver {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using ClockFn = std::function<TimePoint()>;

  // One checkpoint from its beginning to its MANIFEST.
  struct InProgress {
    std::int64_t step = 0;
    std::string name, dir;
    bool draining = true;  // then: cut, files being written
    TimePoint started, snapshotted;
    std::string position;           // the data position at the cut
    std::set<std::string> waiting;  // servers (and "buffers") whose files are not reported yet
    std::vector<FileEntry> files;
    double copy_seconds = 0, write_seconds = 0;
    std::string buffers_holder;    // the worker told to write its part (buffers; sync: the whole state)
    std::int64_t sync_epoch = -1;  // sync: cut after this epoch, before any rank trains the next
  };
  // How the last checkpoint that ended, ended (a job stopping on SIGTERM says so).
  struct Outcome {
    bool written = false;
    std::string what;  // written: its name; abandoned: why
  };

  // `layout` and `job_ini` are the coordinator's own files of every checkpoint.
  CheckpointDriver(CheckpointSettings settings, std::string layout, std::string job_ini, Logger log,
                   MetricsWriter& metrics, ClockFn clock = std::chrono::steady_clock::now);

  bool enabled() const { return !settings_.root.empty(); }
  // The job starts now (checkpoint age and every_seconds count from here until the first one).
  void start();
  // The job resumed from the complete checkpoint `dir` of `step`.
  void restored(std::int64_t step, const std::string& dir);

  // Whether a checkpoint is due at global step `steps` (every_steps or every_seconds since the
  // newest, nothing in progress, not retrying too early, something new since the newest).
  bool due(std::int64_t steps) const;
  // Whether the newest checkpoint is older than checkpoint.on_term_older_than (or there is none).
  bool stale_for_term() const;
  void begin(std::int64_t steps, std::int64_t sync_epoch = -1);
  const InProgress* current() const { return current_ ? &*current_ : nullptr; }
  bool draining() const { return current_ && current_->draining; }
  // A liveness period has passed since the last abandoned checkpoint (or none was abandoned).
  bool retry_wait_over() const { return clock_() >= retry_at_; }
  // Draining for longer than cluster.request_timeout_seconds.
  bool drain_overdue() const;

  // The cut, once the coordinator found the job drained at step `steps`: names the checkpoint
  // and makes its directory, records the position (`position_body` follows the step and seed
  // lines), orders every server's snapshot, and waits for files from each of `servers` and,
  // with `buffers`, from the worker told to write. False when there is nothing to take (the
  // newest complete checkpoint is of this step: recorded as the newest) or it was abandoned.
  bool cut(std::int64_t steps, const std::string& position_body, const std::vector<std::string>& servers,
           SnapshotOrders* orders, bool buffers);

  // The worker that writes the buffers (sync: the whole state): needed while one is awaited
  // and none was told yet.
  bool wants_buffers_holder() const;
  void set_buffers_holder(const std::string& worker);
  void worker_gone(const std::string& worker);  // if it held the buffers, ask another

  // `who` (a server id, or "buffers") reports the files of checkpoint `step`. Returns why the
  // report is refused ("" when taken): no such checkpoint waits for it, or a bad file name.
  std::string files_reported(const std::string& who, std::int64_t step, std::vector<FileEntry> files,
                             double copy_seconds, double write_seconds);

  // Completes the checkpoint when every file is in (the coordinator's files, then MANIFEST and
  // LATEST, then older ones pruned), or abandons it when files are overdue. Returns whether
  // the checkpoint in progress ended (see last_outcome()).
  bool poll();
  void abandon(const std::string& why);

  std::int64_t newest_step() const { return newest_step_; }  // -1: none
  const std::string& newest_dir() const { return newest_dir_; }
  TimePoint newest_time() const { return newest_time_; }  // when it was cut (the job's start if none)
  const Outcome& last_outcome() const { return outcome_; }

 private:
  void finish();

  CheckpointSettings settings_;
  std::string layout_, job_ini_;
  Logger log_;
  MetricsWriter& metrics_;
  ClockFn clock_;
  TimePoint job_started_{};
  std::optional<InProgress> current_;
  std::int64_t newest_step_ = -1;
  std::string newest_dir_;
  TimePoint newest_time_{};
  TimePoint retry_at_{};
  Outcome outcome_;
};

}  // namespace shoal
