#include "serve/server.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "base/error.h"
#include "checkpoint/checkpoint.h"
#include "compute/devices/device_select.h"
#include "models/onnx.h"
#include "serve/protocol.h"
#include "serve/trained_model.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;

http::Response json_response(int status, std::string body) {
  http::Response r;
  r.status = status;
  r.content_type = "application/json";
  r.body = std::move(body);
  return r;
}

// A name usable in a URL path segment: the model file's stem, letters, digits, '-', '_' and '.'.
std::string url_name(const std::string& model) {
  std::string base = fs::path(model).filename().string();
  for (const char* ext : {".onnx", ".yaml", ".yml"}) {
    const std::size_t n = std::strlen(ext);
    if (base.size() > n && base.compare(base.size() - n, n, ext) == 0) base.resize(base.size() - n);
  }
  std::string out;
  for (char c : base) out += std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ? c : '_';
  return out.empty() ? "model" : out;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

std::shared_ptr<InferenceModel> ModelServer::load(const std::string& path) const {
  const DeviceChoice device = choose_device(config_.device, config_.node_local_rank);
  BackendOptions options;
  options.device = device.device;
  options.threads = static_cast<int>(config_.threads);
  options.tf32 = config_.cuda_tf32;
  return std::make_shared<InferenceModel>(load_trained_model(path, log_), options);
}

ModelServer::ModelServer(const JobConfig& config, const std::string& model_path, Logger log)
    : config_(config), model_path_(model_path), log_(std::move(log)) {
  std::error_code ec;
  // A checkpoint.dir (not a ckpt-<step> directory, no MANIFEST of its own) is followed.
  follow_ = !is_onnx_path(model_path) && fs::is_directory(model_path, ec) &&
            checkpoint_dir_named_by(model_path) != model_path;
  std::shared_ptr<InferenceModel> model = load(model_path);
  if (follow_) served_checkpoint_ = fs::path(model->source()).filename().string();
  name_ = config_.serve.name.empty() ? url_name(model->meta().name) : config_.serve.name;
  SHOAL_LOG(log_, info,
            "serving " << model->source() << " as '" << name_ << "': input " << dims_text(model->meta().input) << ", "
                       << model->classes() << " classes, step " << model->meta().step);
  telemetry_.metrics.gauge("shoal_serve_model_step", "the step of the checkpoint being served", {{"model", name_}})
      .set(static_cast<double>(model->meta().step));
  BatcherOptions bo;
  bo.max_batch = config_.serve.max_batch;
  bo.max_delay_us = config_.serve.max_delay_us;
  bo.queue_limit = config_.serve.queue;
  bo.always_wait = config_.serve.always_wait;
  batcher_ = std::make_unique<Batcher>(bo, std::move(model), telemetry_.metrics);

  http::ServerOptions ho;
  ho.host = config_.serve.host;
  ho.port = static_cast<int>(config_.serve.port);
  ho.threads = static_cast<int>(config_.serve.http_threads);
  ho.max_body = static_cast<std::size_t>(config_.serve.max_body_mib) << 20;
  ho.request_timeout_s = 30;
  ho.idle_timeout_s = 60;
  ho.what = "serve.port";
  http_ = std::make_unique<http::Server>(ho, [this](http::Request&& req, http::Responder respond) {
    handle(std::move(req), std::move(respond));
  }, log_);
  ready_ = true;
  telemetry_.ready = true;
  SHOAL_LOG(log_, info, "listening on http://" << ho.host << ":" << http_->port() << " (KServe v2: /v2/models/" << name_
                                               << "/infer, TF Serving: /v1/models/" << name_ << ":predict)");
  if (follow_) follower_ = std::thread([this] { follow_checkpoints(); });
}

ModelServer::~ModelServer() {
  {
    std::lock_guard lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (follower_.joinable()) follower_.join();
  // The batcher answers what still waits; then the HTTP side goes, after its answers.
  batcher_.reset();
  http_.reset();
}

bool ModelServer::drain(std::chrono::steady_clock::time_point deadline) {
  ready_ = false;
  telemetry_.ready = false;
  http_->stop_accepting();
  while (std::chrono::steady_clock::now() < deadline) {
    if (http_->pending_responses() == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return http_->pending_responses() == 0;
}

void ModelServer::follow_checkpoints() {
  const auto every = std::chrono::duration<double>(config_.serve.poll_seconds);
  std::unique_lock lock(stop_mu_);
  while (!stop_cv_.wait_for(lock, every, [&] { return stopping_; })) {
    const std::string latest = newest_checkpoint_name(model_path_);
    if (latest.empty() || latest == served_checkpoint_) continue;
    lock.unlock();
    try {
      const std::string dir = (fs::path(model_path_) / latest).string();
      std::shared_ptr<InferenceModel> next = load(dir);
      batcher_->set_model(next);
      telemetry_.metrics.gauge("shoal_serve_model_step", "the step of the checkpoint being served", {{"model", name_}})
          .set(static_cast<double>(next->meta().step));
      telemetry_.metrics.counter("shoal_serve_model_swaps_total", "checkpoints swapped in", {{"model", name_}}).add();
      SHOAL_LOG(log_, info, "swapped in " << dir << " (step " << next->meta().step << ")");
    } catch (const std::exception& e) {
      SHOAL_LOG(log_, warn, "not swapping in " << latest << ": " << e.what() << " (still serving " << served_checkpoint_ << ")");
    }
    lock.lock();
    served_checkpoint_ = latest;  // a bad one is not retried until LATEST names another
  }
}

void ModelServer::handle(http::Request&& req, http::Responder respond) {
  const auto started = std::chrono::steady_clock::now();
  // Every answer is counted by path kind and code.
  http::Responder counted([this, respond, started](http::Response&& r) {
    telemetry_.metrics
        .counter("shoal_serve_requests_total", "HTTP requests answered, by model and status code",
                 {{"model", name_}, {"code", std::to_string(r.status)}})
        .add();
    telemetry_.metrics
        .histogram("shoal_serve_request_seconds", "seconds from a request's arrival to its answer", latency_buckets(),
                   {{"model", name_}})
        .observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    respond(std::move(r));
  });
  const std::string& path = req.path;
  const bool get = req.method == "GET" || req.method == "HEAD", post = req.method == "POST";
  const std::string v2_model = "/v2/models/" + name_, v1_model = "/v1/models/" + name_;
  auto method_not_allowed = [&](const char* allow) {
    http::Response r = json_response(405, json_error(req.method + " is not allowed on " + path + " (" + allow + ")"));
    r.headers.emplace_back("Allow", allow);
    counted(std::move(r));
  };
  auto ready_answer = [&] {
    const bool ready = ready_.load();
    counted(json_response(ready ? 200 : 503, ready ? "{\"ready\": true}" : "{\"ready\": false}"));
  };

  if (path == "/v2/health/live" || path == "/healthz") {
    if (!get) return method_not_allowed("GET, HEAD");
    return counted(json_response(200, "{\"live\": true}"));
  }
  if (path == "/v2/health/ready" || path == "/readyz" || path == v2_model + "/ready") {
    if (!get) return method_not_allowed("GET, HEAD");
    return ready_answer();
  }
  if (path == "/metrics") {
    if (!get) return method_not_allowed("GET, HEAD");
    http::Response r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = telemetry_.metrics.render();
    return counted(std::move(r));
  }
  if (path == "/v2") {
    if (!get) return method_not_allowed("GET, HEAD");
    return counted(json_response(
        200, "{\"name\": \"shoal\", \"version\": \"" SHOAL_VERSION "\", \"extensions\": [\"binary_tensor_data\"]}"));
  }
  const std::shared_ptr<InferenceModel> model = batcher_->model();
  if (path == v2_model || (starts_with(path, v2_model + "/versions/") && path.find("/infer") == std::string::npos)) {
    if (!get) return method_not_allowed("GET, HEAD");
    return counted(json_response(200, v2_model_metadata(model->meta(), name_)));
  }
  if (path == v2_model + "/infer" || (starts_with(path, v2_model + "/versions/") && path.ends_with("/infer"))) {
    if (!post) return method_not_allowed("POST");
    return infer(std::move(req), counted, false);
  }
  if (path == v1_model || path == v1_model + "/metadata") {
    if (!get) return method_not_allowed("GET, HEAD");
    return counted(json_response(200, path.ends_with("/metadata") ? v2_model_metadata(model->meta(), name_)
                                                                   : tf_model_status(model->meta())));
  }
  if (path == v1_model + ":predict" || (starts_with(path, v1_model + "/versions/") && path.ends_with(":predict"))) {
    if (!post) return method_not_allowed("POST");
    return infer(std::move(req), counted, true);
  }
  if (starts_with(path, "/v2/models/") || starts_with(path, "/v1/models/"))
    return counted(json_response(404, json_error("no such model or path: " + path + "; this server serves '" + name_ + "'")));
  counted(json_response(404, json_error("not found: " + path + " (KServe v2 under /v2, TF Serving under /v1/models/" +
                                        name_ + ", /healthz, /readyz, /metrics)")));
}

void ModelServer::infer(http::Request&& req, http::Responder respond, bool tf) {
  if (!ready_.load()) return respond(json_response(503, json_error("not ready: the server is shutting down")));
  std::shared_ptr<InferenceModel> model = batcher_->model();
  // Parsed here, on an HTTP thread: the batcher's thread only runs the model.
  auto v2 = std::make_shared<V2Request>();
  auto tfr = std::make_shared<TfRequest>();
  try {
    if (tf)
      *tfr = parse_tf_request(req.body, model->meta());
    else
      *v2 = parse_v2_request(req.body, req.header("Inference-Header-Content-Length"), model->meta());
  } catch (const BadRequest& e) {
    return respond(json_response(400, json_error(e.what())));
  }
  ParsedInput& input = tf ? tfr->input : v2->input;
  InferenceJob job;
  job.n = input.n;
  job.input = std::move(input.x);
  job.deadline = std::chrono::steady_clock::now() +
                 std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                     std::chrono::duration<double>(config_.serve.timeout_seconds));
  const std::string name = name_;
  const double timeout = config_.serve.timeout_seconds;
  job.done = [respond, v2, tfr, tf, name, timeout, n = job.n](InferenceResult&& r) {
    if (r.status == InferenceResult::Status::expired)
      return respond(json_response(504, json_error("not started within serve.timeout_seconds = " +
                                                   std::to_string(timeout) + " (the server is overloaded)")));
    if (r.status == InferenceResult::Status::failed)
      return respond(json_response(500, json_error("inference failed: " + r.error)));
    ReplyContext reply{&r.model->meta(), name, &r.logits, n};
    if (tf) return respond(json_response(200, tf_reply(*tfr, reply)));
    std::size_t json_length = 0;
    http::Response res = json_response(200, v2_reply(*v2, reply, &json_length));
    if (json_length > 0) {
      res.content_type = "application/octet-stream";
      res.headers.emplace_back("Inference-Header-Content-Length", std::to_string(json_length));
    }
    respond(std::move(res));
  };
  if (!batcher_->submit(job)) {
    http::Response r = json_response(429, json_error("the queue is full (serve.queue = " + std::to_string(config_.serve.queue) +
                                                     " requests): retry later"));
    r.headers.emplace_back("Retry-After", "1");
    respond(std::move(r));
  }
}

}  // namespace shoal
