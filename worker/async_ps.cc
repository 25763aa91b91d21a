#include "worker/async_ps.h"

#include <algorithm>

#include "base/error.h"

namespace shoal {
namespace {

// The table, once checked against the model it is to train (before any connection is made).
const PartitionTable& matching(const PartitionTable& table, Model& model) {
  SHOAL_REQUIRE(model.params().parameter_count() == table.total_elements, ProtocolError,
                "the partition table covers " << table.total_elements << " values but the model has "
                                              << model.params().parameter_count());
  return table;
}

}  // namespace

AsyncPsStrategy::AsyncPsStrategy(Network& network, const PartitionTable& table, std::string worker_id, Backend& backend,
                                 Model& model, Logger log, AsyncPsOptions options)
    : backend_(backend),
      model_(model),
      log_(log),
      stop_(options.stop),
      pushed_from_(table.chunks.size()),
      staged_(!model.params().values().is_cpu() || options.stage_through_host),
      client_(network, matching(table, model), std::move(worker_id), std::move(log), std::move(options.client),
              [this] { return pull_target(); }) {
  if (staged_) {
    host_values_ = backend_.allocate_host(model.params().values().shape());
    host_grads_ = backend_.allocate_host(model.params().grads().shape());
  }
}

void AsyncPsStrategy::retarget(Network& network, const PartitionTable& table) {
  // Nothing may still read the arena or the mirrors through the old connections.
  for (auto& copy : copies_) copy.landed->wait();
  copies_.clear();
  if (upload_) {
    upload_->wait();
    upload_.reset();
  }
  client_.retarget(network, table);
  pushed_from_ = table.chunks.size();
  fresh_ = false;  // pull everything before the next step
  ready_offset_ = 0;
  SHOAL_LOG(log_, info,
            "partition table version " << table.version << ": reconnected to " << client_.servers()
                                       << " servers; pulling the parameters again at step " << client_.clock());
}

float* AsyncPsStrategy::pull_target() {
  if (!staged_) return model_.params().values().data<float>();
  if (upload_) {  // the last upload must have left the mirror before it is overwritten
    upload_->wait();
    upload_.reset();
  }
  return host_values_.data<float>();
}

PushSource AsyncPsStrategy::push_source() const {
  const Tensor& arena = staged_ ? host_grads_ : model_.params().grads();
  return PushSource{arena.data<float>(), arena.storage()};
}

void AsyncPsStrategy::await_parameters() {
  if (fresh_) return;
  client_.await_parameters([this] {
    if (stop_ != nullptr && stop_->load()) throw StopRequested{};
  });
  fresh_ = true;
  if (staged_) upload_ = backend_.copy_from_host_async(host_values_.raw(), model_.params().values());
}

void AsyncPsStrategy::begin_step(Model& /*model*/, std::int64_t /*step*/) {
  await_parameters();
  pushed_from_ = client_.table().chunks.size();
  ready_offset_ = client_.table().total_elements;
}

void AsyncPsStrategy::gradients_ready(Model& /*model*/, const std::vector<Parameter*>& params) {
  const std::vector<ChunkSpan>& chunks = client_.table().chunks;
  for (const Parameter* p : params) ready_offset_ = std::min(ready_offset_, p->offset);
  std::size_t from = pushed_from_;
  while (from > 0 && chunks[from - 1].offset >= ready_offset_) --from;
  if (from == pushed_from_) return;
  std::vector<std::vector<std::uint32_t>> per_server(client_.servers());
  for (std::size_t k = from; k < pushed_from_; ++k)
    per_server[client_.owner(static_cast<std::uint32_t>(k))].push_back(static_cast<std::uint32_t>(k));
  const std::size_t end = pushed_from_;
  pushed_from_ = from;
  if (staged_) {
    const std::int64_t first = chunks[from].offset;
    const std::int64_t last = chunks[end - 1].offset + chunks[end - 1].numel;
    auto landed = backend_.copy_to_host_async(model_.params().grads().flat_slice(first, last - first),
                                              host_grads_.data<float>() + first);
    copies_.push_back(StagedCopy{std::move(landed), std::move(per_server)});
    push_staged(false);
    return;
  }
  push_to_servers(per_server);
}

void AsyncPsStrategy::push_to_servers(const std::vector<std::vector<std::uint32_t>>& per_server) {
  const PushSource source = push_source();
  for (std::size_t s = 0; s < per_server.size(); ++s) client_.push(s, per_server[s], source);
}

void AsyncPsStrategy::push_staged(bool all) {
  while (!copies_.empty() && (all || copies_.front().landed->ready())) {
    copies_.front().landed->wait();
    StagedCopy copy = std::move(copies_.front());
    copies_.pop_front();
    push_to_servers(copy.per_server);
  }
}

void AsyncPsStrategy::end_step(Model& model, std::int64_t /*step*/, float /*lr*/) {
  ready_offset_ = 0;
  gradients_ready(model, {});
  push_staged(true);
  finish_step();
}

void AsyncPsStrategy::finish_step() {
  fresh_ = false;
  client_.advance_clock();
}

void AsyncPsStrategy::idle_step() {
  client_.push_idle();
  finish_step();
}

void AsyncPsStrategy::leave() { client_.leave(); }

std::string AsyncPsStrategy::describe() const {
  return "parameter servers (" + std::to_string(client_.table().servers.size()) + " servers, " +
         std::to_string(client_.table().chunks.size()) + " chunks)";
}

}  // namespace shoal
