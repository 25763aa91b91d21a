#include "ps/parameter_server.h"
#include "base/cpus.h"
#include "checkpoint/state_io.h"
#include "compute/devices/devices.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <thread>

#include "coordinator/client/control_client.h"
#include "base/error.h"

namespace shoal {

ParameterServer::ParameterServer(Network& network, const std::string& bind_address, Backend& backend, Logger log)
    : socket_(network, bind_address, log), backend_(backend), log_(std::move(log)) {}

ParameterServer::~ParameterServer() {
  if (writer_ && writer_->thread.joinable()) writer_->thread.join();
}

void ParameterServer::start(const std::string& id, const PartitionTable& table, std::size_t index, const float* initial,
                            const ServerOptions& options) {
  id_ = id;
  options_ = options;
  optimizer_ = std::make_unique<Optimizer>(options.optimizer);
  optimizer_->exclude_from_decay(options.no_decay);
  if (options.threads > 1) pool_ = std::make_unique<UpdatePool>(options.threads);
  const ServerRange& range = table.servers.at(index);
  first_key_ = range.first_key;
  SHOAL_ASSERT(chunks_.empty(), id << " was started twice");
  std::vector<RangeInfo> ranges;
  if (!table.restore.empty()) ranges = list_ranges(table.restore, read_manifest(table.restore));
  std::vector<float> restored;
  for (std::uint32_t key = range.first_key; key < range.end_key; ++key) {
    ChunkState c;
    c.key = key;
    c.span = table.chunks[key];
    c.state = optimizer_->make_state(backend_, c.span.numel);
    const std::int64_t begin = c.span.offset, end = begin + c.span.numel;
    if (ranges.empty()) {
      store_.add(initial + begin, c.span.numel);
    } else {
      try {
        restored.resize(static_cast<std::size_t>(c.span.numel));
        std::vector<std::pair<std::string, float*>> slots;
        for (int k = 0; k < optimizer_->slot_count(); ++k)
          slots.emplace_back(optimizer_->slot_name(k), c.state.slots[static_cast<std::size_t>(k)].data<float>());
        c.state.updates = read_state(table.restore, ranges, begin, end, restored.data(), slots);
        store_.add(restored.data(), c.span.numel);
      } catch (const CheckpointError& e) {
        SHOAL_THROW(CheckpointError, id << " cannot restore elements [" << begin << ", " << end << ") from "
                                        << table.restore << ": " << e.what()
                                        << " (was it written with another optimizer?)");
      }
    }
    if (options.staleness == 0) c.sum = backend_.allocate(Shape{c.span.numel});
    chunks_.push_back(std::move(c));
  }
  if (!ranges.empty()) SHOAL_LOG(log_, info, "restored " << chunks_.size() << " chunks from " << table.restore);
  set_live_workers(table.live_workers);
  // The workers of the table count from the table's clock (0 when the job starts; the slowest
  // live clock when this server was restarted into a running job): a worker ahead of it says so
  // with its first pull. Workers that join later count once heard from.
  for (const auto& w : live_) clocks_[w] = table.start_clock;
  started_ = true;
}

void ParameterServer::set_live_workers(const std::vector<std::string>& workers) {
  const std::set<std::string> listed(workers.begin(), workers.end());
  listed_ = listed;
  // A worker that left stays out while the coordinator still lists it (a list made before it
  // heard the leave); once a list omits it, a later list that has it again means it rejoined.
  // (A new process that rejoined before any list omitted it is recognised by its connection:
  // rejoined_from_new_connection.)
  std::erase_if(left_, [&](const auto& entry) { return !listed.count(entry.first); });
  std::set<std::string> live;
  for (const auto& w : listed)
    if (!left_.count(w)) live.insert(w);
  if (live == live_) return;
  for (const auto& w : live_)
    if (!live.count(w)) SHOAL_LOG(log_, info, w << " no longer takes part in clocks");
  for (const auto& w : live) {
    if (live_.count(w)) continue;
    // (Re)joined: its clock is the one its first message carries, not what an earlier
    // incarnation of this id reached.
    clocks_.erase(w);
    pulled_.erase(w);
  }
  live_ = std::move(live);
  known_.insert(live_.begin(), live_.end());
  try_finish_steps();
  retry_parked();
}

bool ParameterServer::rejoined_from_new_connection(const std::string& worker, const std::string& peer) {
  // The worker left, and its id (the same rank, restarted by its supervisor or a StatefulSet)
  // speaks again over another connection, i.e. from a new process, while the coordinator lists
  // it live: the leave and the rejoin both fell between two of our heartbeats.
  auto it = left_.find(worker);
  if (it == left_.end() || it->second == peer || !listed_.count(worker)) return false;
  SHOAL_LOG(log_, info, worker << " rejoined from a new process");
  left_.erase(it);
  return true;
}

void ParameterServer::read_values(float* arena) const {
  for (std::size_t i = 0; i < chunks_.size(); ++i)
    std::memcpy(arena + chunks_[i].span.offset, store_.values(i).raw(), store_.values(i).bytes());
}

ParameterServer::ChunkState* ParameterServer::find_chunk(std::uint32_t key) {
  if (key < first_key_ || key >= first_key_ + chunks_.size()) return nullptr;
  return &chunks_[key - first_key_];
}

void ParameterServer::error_reply(const std::string& peer, std::uint64_t request_id, wire::ErrorCode code,
                                  const std::string& message) {
  Outgoing out(id_, request_id);
  auto err = out.body().initError();
  err.setCode(code);
  err.setMessage(message);
  socket_.send(peer, out);
}

std::uint64_t ParameterServer::slowest_clock() const {
  // A worker that joined and was not heard from yet does not count: a joiner holds nobody back
  // (it starts at the slowest live clock, which its first pull or push tells).
  std::uint64_t slowest = UINT64_MAX;
  for (const auto& w : live_) {
    auto it = clocks_.find(w);
    if (it != clocks_.end()) slowest = std::min(slowest, it->second);
  }
  return slowest;
}

bool ParameterServer::pull_ready(std::uint64_t clock) const {
  if (options_.staleness == 0) {
    for (const auto& c : chunks_)
      if (c.applied < clock) return false;
    return true;
  }
  std::uint64_t slowest = slowest_clock();
  return slowest == UINT64_MAX || clock <= slowest + static_cast<std::uint64_t>(options_.staleness);
}

void ParameterServer::answer_pull(const ParkedPull& pull) {
  std::uint64_t clock = UINT64_MAX;
  for (const auto& c : chunks_) clock = std::min(clock, c.applied);
  std::vector<std::size_t> all;
  const std::vector<std::size_t>* which = &pull.chunks;
  if (which->empty()) {
    for (std::size_t i = 0; i < chunks_.size(); ++i) all.push_back(i);
    which = &all;
  }
  if (options_.lr_staleness != LrStaleness::none) {
    auto& pulled = pulled_[pull.worker];
    pulled.resize(chunks_.size());
    for (std::size_t i : *which) pulled[i] = chunks_[i].applied;
  }
  // Large chunks go one per message, so the worker copies chunk k while chunk k + 1 is on the
  // wire; small ones share a message, so a small model costs one message, not one per chunk.
  // Every frame is the chunk's current buffer itself, held until ZeroMQ is done with it.
  for (std::size_t first = 0; first < which->size();) {
    std::size_t end = first + 1;
    std::int64_t bytes = chunks_[(*which)[first]].span.numel * 4;
    while (end < which->size() && bytes + chunks_[(*which)[end]].span.numel * 4 <= kCoalesceBytes)
      bytes += chunks_[(*which)[end++]].span.numel * 4;
    Outgoing out(id_, pull.request_id);
    auto reply = out.body().initPullReply();
    reply.setClock(clock);
    auto list = reply.initChunks(static_cast<unsigned>(end - first));
    for (std::size_t j = first; j < end; ++j) {
      const std::size_t i = (*which)[j];
      list[static_cast<unsigned>(j - first)].setKey(chunks_[i].key);
      list[static_cast<unsigned>(j - first)].setNumel(static_cast<std::uint32_t>(chunks_[i].span.numel));
      out.add_payload(store_.frame(i));
      stats_.pull_bytes += static_cast<std::uint64_t>(chunks_[i].span.numel) * sizeof(float);
    }
    socket_.send(pull.peer, out);
    first = end;
  }
  ++stats_.pulls;
}

void ParameterServer::apply(ChunkState& chunk, const Tensor& grad, float scale) {
  float lr = scale * options_.schedule.at(static_cast<std::int64_t>(chunk.state.updates));
  optimizer_->apply(backend_, store_.writable(static_cast<std::size_t>(&chunk - chunks_.data())), grad, chunk.state,
                    lr, chunk.span.offset);
}

void ParameterServer::apply_updates() {
  if (updates_.empty()) return;
  // Each chunk's updates in arrival order; different chunks at once.
  std::vector<std::vector<const Update*>> per_chunk(chunks_.size());
  std::vector<std::size_t> touched;
  for (const Update& u : updates_) {
    if (per_chunk[u.chunk].empty()) touched.push_back(u.chunk);
    per_chunk[u.chunk].push_back(&u);
  }
  const auto n = static_cast<std::int64_t>(touched.size());
  // Chunks are the unit of parallelism: one chunk (or no pool) runs on this thread.
  auto apply_chunk = [&](std::int64_t t) {
    for (const Update* u : per_chunk[touched[static_cast<std::size_t>(t)]]) apply(chunks_[u->chunk], u->grad, u->scale);
  };
  stats_.updates += updates_.size();
  if (n == 1 || !pool_) {
    for (std::int64_t t = 0; t < n; ++t) apply_chunk(t);
  } else {
    pool_->run(n, apply_chunk);
  }
  updates_.clear();
}

void ParameterServer::take_snapshot() {
  SnapshotOrder order = std::move(*snapshot_order_);
  snapshot_order_.reset();
  if (writer_) {
    error_reply(order.peer, order.request_id, wire::ErrorCode::NOT_READY,
                id_ + " is still writing the checkpoint of step " + std::to_string(writer_->step));
    return;
  }
  const auto started = std::chrono::steady_clock::now();
  auto w = std::make_unique<Writer>();
  w->step = order.step;
  Outgoing ack(id_, order.request_id);
  ack.body().setAck();
  if (chunks_.empty()) {  // more servers than chunks: this one owns nothing, and writes nothing
    socket_.send(order.peer, ack);
    w->done = true;
    writer_ = std::move(w);
    return;
  }
  // The values are held, not copied: updates go on into other buffers. The optimizer state is
  // updated in place, so it is copied now (the only copy pushes wait for).
  w->values = store_.snapshot();
  StateToWrite r;
  r.begin = chunks_.front().span.offset;
  r.end = chunks_.back().span.offset + chunks_.back().span.numel;
  for (std::size_t i = 0; i < chunks_.size(); ++i) {
    r.values.emplace_back(w->values.values(i), w->values.numel(i));
    r.updates.emplace_back(chunks_[i].span.offset, chunks_[i].state.updates);
  }
  for (int k = 0; k < optimizer_->slot_count(); ++k) {
    Tensor copy = Tensor::zeros(Shape{r.end - r.begin});
    for (const auto& c : chunks_) {
      const Tensor& slot = c.state.slots[static_cast<std::size_t>(k)];
      std::memcpy(copy.data<float>() + (c.span.offset - r.begin), slot.data<float>(), slot.bytes());
    }
    r.slots.emplace_back(optimizer_->slot_name(k), copy.data<float>());
    w->slots.push_back(std::move(copy));
  }
  w->copy_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  socket_.send(order.peer, ack);
  Writer* writer = w.get();
  w->thread = std::thread([writer, r = std::move(r), dir = order.dir] {
    const auto begin = std::chrono::steady_clock::now();
    try {
      writer->file = write_state(dir, r);
    } catch (...) {
      writer->error = std::current_exception();
    }
    writer->write_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    writer->done.store(true, std::memory_order_release);
  });
  writer_ = std::move(w);
}

std::optional<CheckpointReport> ParameterServer::take_written_checkpoint() {
  if (!writer_ || !writer_->done.load(std::memory_order_acquire)) return std::nullopt;
  if (writer_->thread.joinable()) writer_->thread.join();
  std::unique_ptr<Writer> w = std::move(writer_);
  if (w->error) std::rethrow_exception(w->error);
  if (!w->file) return CheckpointReport{w->step, {}, 0, 0};
  char line[200];
  std::snprintf(line, sizeof(line),
                "checkpoint of step %lld: %s (%.2f MB) written in %.3f s; pushes waited %.2f ms for the copy",
                static_cast<long long>(w->step), w->file->name.c_str(), static_cast<double>(w->file->size) / 1e6,
                w->write_seconds, 1000 * w->copy_seconds);
  SHOAL_LOG(log_, info, line);
  return CheckpointReport{w->step, {*w->file}, w->copy_seconds, w->write_seconds};
}

void ParameterServer::finish_batch() {
  apply_updates();
  if (snapshot_order_) take_snapshot();
  batch_.clear();  // no frame of the batch is read after this
  for (const Ack& a : acks_) {
    Outgoing out(id_, a.request_id);
    out.body().initPushAck().setClock(a.clock);
    socket_.send(a.peer, out);
  }
  acks_.clear();
  try_finish_steps();
  retry_parked();
}

void ParameterServer::try_finish_steps() {
  if (options_.staleness != 0 || live_.empty()) return;
  for (auto& c : chunks_) {
    bool all = std::all_of(live_.begin(), live_.end(), [&](const std::string& w) { return c.pushed.count(w) > 0; });
    if (!all || c.pushed.empty()) continue;
    if (c.contributors > 0) {
      backend_.scale(c.sum, 1.f / static_cast<float>(c.contributors));
      apply(c, c.sum);
      ++stats_.updates;
    }
    ++c.applied;  // with no data: every worker was idle for this step
    c.pushed.clear();
    c.contributors = 0;
  }
}

void ParameterServer::retry_parked() {
  auto now = std::chrono::steady_clock::now();
  for (auto it = parked_.begin(); it != parked_.end();) {
    if (!live_.count(it->worker)) {
      error_reply(it->peer, it->request_id, wire::ErrorCode::UNKNOWN_SENDER,
                  it->worker + " no longer takes part in this job");
      it = parked_.erase(it);
    } else if (pull_ready(it->clock)) {
      answer_pull(*it);
      it = parked_.erase(it);
    } else if (now > it->deadline) {
      error_reply(it->peer, it->request_id, wire::ErrorCode::TIMEOUT,
                  "pull for step " + std::to_string(it->clock) + " waited " +
                      std::to_string(options_.pull_timeout.count()) + " ms for the slowest worker (clock " +
                      std::to_string(slowest_clock()) + ")");
      ++stats_.pull_timeouts;
      it = parked_.erase(it);
    } else {
      if (!it->counted) ++stats_.parked;
      it->counted = true;
      ++it;
    }
  }
}

Tensor ParameterServer::float_view(zmq::message_t& frame, std::int64_t numel) {
  // ZeroMQ may deliver small messages at any byte offset of a shared receive buffer; reading
  // floats there is undefined behaviour (UBSan reported it), so such a frame is copied.
  if (reinterpret_cast<std::uintptr_t>(frame.data()) % alignof(float) == 0)
    return Tensor::borrow(frame.data(), Shape{numel}, DType::f32);
  Tensor aligned = Tensor::zeros(Shape{numel});
  std::memcpy(aligned.raw(), frame.data(), static_cast<std::size_t>(numel) * sizeof(float));
  return aligned;
}

void ParameterServer::handle_push(Incoming& in) {
  const std::string worker = in.sender();
  auto push = in.envelope().getBody().getPush();
  auto chunks = push.getChunks();
  const std::uint64_t clock = push.getClock();
  // Check the whole message before changing anything.
  std::set<std::uint32_t> seen;
  std::vector<Tensor> grads(chunks.size());
  for (unsigned i = 0; i < chunks.size(); ++i) {
    ChunkState* c = find_chunk(chunks[i].getKey());
    std::string problem;
    if (c == nullptr)
      problem = "chunk key " + std::to_string(chunks[i].getKey()) + " is not owned by " + id_;
    else if (c->span.numel != chunks[i].getNumel())
      problem = "chunk key " + std::to_string(c->key) + " has " + std::to_string(c->span.numel) + " values, not " +
                std::to_string(chunks[i].getNumel());
    else if (!seen.insert(c->key).second)
      problem = "chunk key " + std::to_string(c->key) + " pushed twice in one message";
    else if (options_.staleness == 0 && clock != c->applied)
      problem = "push for step " + std::to_string(clock) + " but chunk " + std::to_string(c->key) + " is at step " +
                std::to_string(c->applied);
    if (problem.empty()) {
      // A NaN or infinity would poison the model for every worker: refuse it whole.
      grads[i] = float_view(in.payloads()[i], c->span.numel);
      if (!backend_.all_finite(grads[i]))
        problem = "chunk key " + std::to_string(c->key) + " carries a non-finite gradient (NaN or infinity)";
    }
    if (!problem.empty()) {
      socket_.reject("bad push", problem + " (from " + worker + ")");
      error_reply(in.peer, in.request_id(), wire::ErrorCode::BAD_REQUEST, problem);
      return;
    }
  }
  const auto pulled = pulled_.find(worker);
  std::vector<std::size_t> indices;  // of the pushed chunks, in chunks_
  for (unsigned i = 0; i < chunks.size(); ++i) {
    ChunkState& c = *find_chunk(chunks[i].getKey());
    const std::size_t index = static_cast<std::size_t>(&c - chunks_.data());
    indices.push_back(index);
    const Tensor& grad = grads[i];
    if (options_.staleness == 0) {
      if (c.contributors == 0)
        backend_.copy(grad, c.sum);
      else
        backend_.axpy(1.f, grad, c.sum);
      ++c.contributors;
      c.pushed.insert(worker);
      continue;
    }
    // Updates other gradients made to this chunk since this worker pulled it (the updates
    // still queued in this batch count too: they land first).
    std::uint64_t stale = 0;
    if (pulled != pulled_.end() && index < pulled->second.size()) stale = c.applied - pulled->second[index];
    if (staleness_histogram_ != nullptr) staleness_histogram_->observe(static_cast<double>(stale));
    float scale = options_.lr_staleness == LrStaleness::inverse ? 1.f / static_cast<float>(1 + stale) : 1.f;
    updates_.push_back(Update{index, grad, scale});
    ++c.applied;
  }
  if (options_.staleness == 0 && chunks.size() == 0)
    for (auto& c : chunks_) c.pushed.insert(worker);  // an idle step: no data, but the clock moves
  auto& worker_clock = clocks_[worker];
  worker_clock = std::max(worker_clock, clock + 1);
  ++stats_.pushes;
  for (unsigned i = 0; i < chunks.size(); ++i) stats_.push_bytes += std::uint64_t{chunks[i].getNumel()} * sizeof(float);
  if (push.getPullAfter()) {
    // The push asks for its chunks back, as a pull for the next step would; the reply is its
    // acknowledgement. An idle push (no chunks) asks for every chunk.
    parked_.push_back(ParkedPull{in.peer, worker, in.request_id(), clock + 1,
                                 std::chrono::steady_clock::now() + options_.pull_timeout, false, std::move(indices)});
    return;
  }
  // Acknowledged once the batch is applied: until then the frames may be the worker's own
  // memory (inproc://), which it must not reuse.
  acks_.push_back(Ack{in.peer, in.request_id(), clock});
}

void ParameterServer::handle_pull(Incoming& in) {
  // Answered at the end of the batch, after the updates that came before it; an unbounded pull
  // (evaluation) is ready at once.
  auto pull = in.envelope().getBody().getPull();
  if (pull.getBounded()) {
    // A pull for step c follows the worker's pushes of every step before c on this connection.
    auto& clock = clocks_[in.sender()];
    clock = std::max<std::uint64_t>(clock, pull.getClock());
  }
  parked_.push_back(ParkedPull{in.peer,
                               in.sender(),
                               in.request_id(),
                               pull.getBounded() ? pull.getClock() : 0,
                               std::chrono::steady_clock::now() + options_.pull_timeout,
                               false,
                               {}});
}

void ParameterServer::handle(Incoming& in) {
  using K = wire::Envelope::Body;
  if (!started_) {
    error_reply(in.peer, in.request_id(), wire::ErrorCode::NOT_READY, id_ + " has no partition table yet");
    return;
  }
  const std::string sender = in.sender();
  if (in.kind() == K::SNAPSHOT && sender == "coordinator") {
    // Taken at the end of this batch, after its updates.
    auto order = in.envelope().getBody().getSnapshot();
    if (order.getDir().size() == 0) {
      error_reply(in.peer, in.request_id(), wire::ErrorCode::BAD_REQUEST, "a snapshot order without a directory");
      return;
    }
    snapshot_order_ =
        SnapshotOrder{in.peer, in.request_id(), static_cast<std::int64_t>(order.getStep()), order.getDir().cStr()};
    return;
  }
  if (!live_.count(sender) && rejoined_from_new_connection(sender, in.peer))
    set_live_workers(std::vector<std::string>(listed_.begin(), listed_.end()));
  if (!live_.count(sender)) {
    // Not (or no longer) a worker of this job: an unknown id, a worker that left or died.
    bool ever = known_.count(sender) > 0;
    socket_.reject(ever ? "sender not live" : "unknown sender",
                   kind_name(in.kind()) + std::string(" from '") + sender + "'");
    error_reply(in.peer, in.request_id(), wire::ErrorCode::UNKNOWN_SENDER,
                sender + " is not a live worker of this job");
    return;
  }
  switch (in.kind()) {
    case K::PUSH:
      handle_push(in);
      break;
    case K::PULL:
      handle_pull(in);
      break;
    case K::LEAVE: {
      left_[sender] = in.peer;
      live_.erase(sender);
      SHOAL_LOG(log_, debug, sender << " left");
      Outgoing out(id_, in.request_id());
      out.body().setAck();
      socket_.send(in.peer, out);
      break;
    }
    default:
      socket_.reject("unexpected message kind", kind_name(in.kind()) + std::string(" from ") + sender);
      error_reply(in.peer, in.request_id(), wire::ErrorCode::BAD_REQUEST,
                  std::string("a parameter server does not handle ") + kind_name(in.kind()));
  }
}

void ParameterServer::serve(std::chrono::milliseconds timeout) {
  auto in = socket_.receive(timeout);
  for (std::size_t taken = 0; in;) {
    // Kept until the end of the batch at a fixed address: updates read its frames in place.
    batch_.push_back(std::make_unique<Incoming>(std::move(*in)));
    try {
      handle(*batch_.back());
    } catch (const kj::Exception& e) {
      socket_.reject("malformed field", e.getDescription().cStr());
    }
    if (++taken == kMaxBatch) break;
    in = socket_.try_receive();
  }
  finish_batch();
}

std::uint64_t ParameterServer::clock() const {
  std::uint64_t applied = 0;
  for (const auto& c : chunks_) applied = std::max(applied, c.applied);
  return applied;
}

std::string ParameterServer::advertised(const std::string& endpoint, const std::string& advertise,
                                        const std::string& fqdn) {
  for (const char* any : {"tcp://0.0.0.0:", "tcp://*:"}) {
    if (endpoint.rfind(any, 0) == 0) {
      const std::string host = advertise.empty() ? fqdn : advertise;
      const bool bracketed = host.size() > 2 && host.front() == '[' && host.back() == ']';
      const bool plain = !host.empty() && host.find_first_of(" /:[]\t\n") == std::string::npos;
      SHOAL_REQUIRE(plain || bracketed, ConfigError,
                    "node.advertise = '" << host << "' is not a host name or address (an IPv6 address in [brackets])");
      return "tcp://" + host + ":" + endpoint.substr(std::strlen(any));
    }
  }
  return endpoint;
}

ServerOptions server_options(const JobConfig& config, const PartitionTable& table) {
  ServerOptions options;
  options.staleness = config.staleness;
  options.pull_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(config.request_timeout_seconds * 1000));
  options.optimizer = config.optimizer;
  options.lr_staleness = config.lr_staleness;
  options.threads =
      config.threads > 0 ? static_cast<int>(config.threads) : usable_cpus();
  // The trainer's schedule, to the step (compute/lr_schedule.h).
  options.schedule = make_lr_schedule(config.lr_schedule_settings(), table.steps_per_epoch, config.epochs);
  return options;
}

}  // namespace shoal
