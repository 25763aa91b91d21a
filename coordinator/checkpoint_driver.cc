#include "coordinator/checkpoint_driver.h"

#include <cstdio>
#include <filesystem>

#include "base/error.h"

namespace shoal {
CheckpointDriver::CheckpointDriver(CheckpointSettings settings, std::string layout, std::string job_ini, Logger log,
                                   MetricsWriter& metrics, ClockFn clock)
    : settings_(std::move(settings)),
      layout_(std::move(layout)),
      job_ini_(std::move(job_ini)),
      log_(std::move(log)),
      metrics_(metrics),
      clock_(std::move(clock)) {}

void CheckpointDriver::start() {
  job_started_ = clock_();
  newest_time_ = job_started_;
}

void CheckpointDriver::restored(std::int64_t step, const std::string& dir) {
  newest_step_ = step;
  newest_dir_ = dir;
}

bool CheckpointDriver::due(std::int64_t steps) const {
  const TimePoint now = clock_();
  if (!enabled() || current_ || now < retry_at_) return false;
  if (steps == newest_step_) return false;  // nothing new since the last one
  const std::int64_t since = steps - std::max<std::int64_t>(newest_step_, 0);
  if (settings_.every_steps > 0 && since >= settings_.every_steps) return true;
  return settings_.every_seconds > 0 && now - newest_time_ >= seconds_to_duration(settings_.every_seconds);
}

bool CheckpointDriver::stale_for_term() const {
  return newest_step_ < 0 || clock_() - newest_time_ > seconds_to_duration(settings_.on_term_older_than_seconds);
}

void CheckpointDriver::begin(std::int64_t steps, std::int64_t sync_epoch) {
  InProgress c;
  c.step = steps;
  c.started = clock_();
  c.sync_epoch = sync_epoch;
  if (sync_epoch < 0)
    SHOAL_LOG(log_, info,
              "checkpoint at step " << c.step << "+: draining (no new shard until every worker is at a step "
                                    << "boundary)");
  current_ = std::move(c);
}

bool CheckpointDriver::drain_overdue() const {
  return current_ && current_->draining && clock_() - current_->started > seconds_to_duration(settings_.request_timeout_seconds);
}

bool CheckpointDriver::cut(std::int64_t steps, const std::string& position_body,
                           const std::vector<std::string>& servers, SnapshotOrders* orders, bool buffers) {
  // Named at the cut: the shards finished while the job drained count.
  InProgress& c = *current_;
  c.step = steps;
  c.name = checkpoint_name(c.step);
  c.dir = (std::filesystem::path(settings_.root) / c.name).string();
  std::error_code ec;
  if (std::filesystem::exists(c.dir + "/" + checkpoint_file::kManifest, ec)) {
    newest_step_ = c.step;  // already complete (a job resumed at this step)
    outcome_ = Outcome{true, c.name};
    current_.reset();
    return false;
  }
  std::filesystem::remove_all(c.dir, ec);  // an attempt at this step that never completed
  std::filesystem::create_directories(c.dir, ec);
  if (ec) {
    abandon("cannot create checkpoint directory " + c.dir + ": " + ec.message());
    return false;
  }
  c.position = "format 1\nstep " + std::to_string(c.step) + "\nseed " + std::to_string(settings_.seed) + "\n" +
               position_body;
  const TimePoint ordered = clock_();
  for (const auto& id : servers) {
    try {
      orders->order_snapshot(id, c.step, c.dir);
    } catch (const Error& e) {
      abandon(id + " did not take its snapshot: " + e.what());
      return false;
    }
    c.waiting.insert(id);
  }
  if (buffers) c.waiting.insert("buffers");
  c.draining = false;
  c.snapshotted = clock_();
  if (c.sync_epoch >= 0)
    SHOAL_LOG(log_, info,
              "checkpoint " << c.name << ": cut after epoch " << c.sync_epoch << " (step " << c.step
                            << "); rank 0 writes the state");
  else
    SHOAL_LOG(log_, info,
              "checkpoint " << c.name << ": cut at step " << c.step << "; training stalled "
                            << static_cast<long long>(1000 * seconds_between(c.started, c.snapshotted))
                            << " ms (drain " << static_cast<long long>(1000 * seconds_between(c.started, ordered))
                            << " ms, snapshots " << static_cast<long long>(1000 * seconds_between(ordered, c.snapshotted))
                            << " ms); the servers write in the background");
  return true;
}

bool CheckpointDriver::wants_buffers_holder() const {
  return current_ && !current_->draining && current_->waiting.count("buffers") && current_->buffers_holder.empty();
}

void CheckpointDriver::set_buffers_holder(const std::string& worker) { current_->buffers_holder = worker; }

void CheckpointDriver::worker_gone(const std::string& worker) {
  if (current_ && current_->buffers_holder == worker) current_->buffers_holder.clear();
}

std::string CheckpointDriver::files_reported(const std::string& who, std::int64_t step, std::vector<FileEntry> files,
                                             double copy_seconds, double write_seconds) {
  if (!current_ || current_->draining || step != current_->step || !current_->waiting.count(who))
    return "no checkpoint at step " + std::to_string(step) + " waits for files from " +
           (who == "buffers" ? std::string("a worker (buffers)") : who);
  InProgress& c = *current_;
  const std::size_t had = c.files.size();
  for (auto& file : files) {
    const std::string& name = file.name;
    const bool ours = name == checkpoint_file::kManifest || name == checkpoint_file::kPosition ||
                      name == checkpoint_file::kLayout || name == checkpoint_file::kJobIni;
    if (name.empty() || name.find('/') != std::string::npos || name[0] == '.' || ours || c.files.size() > 65536) {
      c.files.resize(had);  // none of a refused report counts
      return "bad checkpoint file name '" + name + "'";
    }
    c.files.push_back(std::move(file));
  }
  c.copy_seconds = std::max(c.copy_seconds, copy_seconds);
  c.write_seconds = std::max(c.write_seconds, write_seconds);
  c.waiting.erase(who);
  return "";
}

bool CheckpointDriver::poll() {
  if (!current_ || current_->draining) return false;
  if (current_->waiting.empty()) {
    finish();
    return true;
  }
  if (clock_() - current_->snapshotted > 2 * seconds_to_duration(settings_.request_timeout_seconds)) {
    std::string missing;
    for (const auto& w : current_->waiting) missing += " " + w;
    abandon("no files from" + missing);
    return true;
  }
  return false;
}

void CheckpointDriver::abandon(const std::string& why) {
  const std::string name = current_->name.empty() ? "at step " + std::to_string(current_->step) : current_->name;
  SHOAL_LOG(log_, error, "checkpoint " << name << " abandoned: " << why << "; training goes on");
  current_.reset();
  newest_time_ = clock_();
  // Not again at once (every_steps would be due at once): one liveness period first.
  retry_at_ = newest_time_ + seconds_to_duration(settings_.retry_after_seconds);
  outcome_ = Outcome{false, why};
}

void CheckpointDriver::finish() {
  InProgress& c = *current_;
  const TimePoint now = clock_();
  std::vector<std::string> removed;
  try {
    Manifest m;
    m.step = c.step;
    m.files = c.files;
    m.files.push_back(write_file_atomic(c.dir, checkpoint_file::kPosition, c.position));
    m.files.push_back(write_file_atomic(c.dir, checkpoint_file::kLayout, layout_));
    m.files.push_back(write_file_atomic(c.dir, checkpoint_file::kJobIni, job_ini_));
    write_manifest(c.dir, m);  // last: from now on the checkpoint is complete
    write_latest(settings_.root, c.name);
    removed = prune_checkpoints(settings_.root, settings_.keep);
  } catch (const Error& e) {
    return abandon(e.what());
  }
  std::uint64_t bytes = 0;
  for (const auto& f : c.files) bytes += f.size;
  const double stall = seconds_between(c.started, c.snapshotted), total = seconds_between(c.snapshotted, now);
  char line[300];
  std::snprintf(line, sizeof(line),
                "checkpoint %s written: %.1f MB; training stalled %.0f ms (server copy %.0f ms); the servers wrote "
                "in %.2f s (%.2f GB/s)%s",
                c.name.c_str(), static_cast<double>(bytes) / 1e6, 1000 * stall, 1000 * c.copy_seconds, c.write_seconds,
                c.write_seconds > 0 ? static_cast<double>(bytes) / c.write_seconds / 1e9 : 0.0,
                removed.empty() ? "" : (", removed " + std::to_string(removed.size()) + " older").c_str());
  SHOAL_LOG(log_, info, line);
  metrics_.write({{"event", std::string("checkpoint")},
                  {"step", c.step},
                  {"name", c.name},
                  {"bytes", static_cast<std::int64_t>(bytes)},
                  {"stall_seconds", stall},
                  {"copy_seconds", c.copy_seconds},
                  {"write_seconds", c.write_seconds},
                  {"complete_seconds", total},
                  {"elapsed", seconds_between(job_started_, now)}});
  newest_step_ = c.step;
  newest_time_ = c.started;
  newest_dir_ = c.dir;
  outcome_ = Outcome{true, c.name};
  current_.reset();
}

}  // namespace shoal
