// `shoal serve MODEL`: a trained model behind KServe v2 and TF Serving REST (serve/protocol.h),
// with dynamic batching (serve/batcher.h), Prometheus metrics and health, on the event-driven
// HTTP server (http/server.h). MODEL is an .onnx file or a checkpoint: a ckpt-<step> directory is
// served as it is; a checkpoint.dir is followed — each new checkpoint LATEST names is loaded,
// verified and swapped in while requests go on (each finishes on the model it started with).
//
// Paths (NAME: serve.name, else the model's name):
//   GET  /v2/health/live  /v2/health/ready  /v2  /v2/models/NAME  /v2/models/NAME/ready
//   POST /v2/models/NAME/infer
//   GET  /v1/models/NAME              POST /v1/models/NAME:predict
//   GET  /healthz  /readyz  /metrics
// Codes: 400 a request that does not fit (the error names the field), 404 another model or path,
// 405 another method, 413 a body over serve.max_body_mib, 429 the queue is full (Retry-After),
// 503 not ready (draining), 504 not started within serve.timeout_seconds.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "base/log.h"
#include "config/config.h"
#include "http/server.h"
#include "serve/batcher.h"
#include "telemetry/telemetry.h"

namespace shoal {

class ModelServer {
 public:
  // Loads the model (ConfigError, CheckpointError naming the file) and starts listening.
  ModelServer(const JobConfig& config, const std::string& model_path, Logger log);
  ~ModelServer();
  ModelServer(const ModelServer&) = delete;
  ModelServer& operator=(const ModelServer&) = delete;

  int port() const { return http_->port(); }
  const std::string& model_name() const { return name_; }
  // SIGTERM: not ready from now on, no new connections; then waits until every request taken
  // is answered, at most until `deadline`. True when all were.
  bool drain(std::chrono::steady_clock::time_point deadline);

 private:
  void handle(http::Request&& req, http::Responder respond);
  void infer(http::Request&& req, http::Responder respond, bool tf);
  void follow_checkpoints();
  std::shared_ptr<InferenceModel> load(const std::string& path) const;

  JobConfig config_;
  std::string model_path_;
  Logger log_;
  Telemetry telemetry_;
  std::string name_;
  std::atomic<bool> ready_{false};
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<http::Server> http_;
  // Following a checkpoint.dir.
  bool follow_ = false;
  std::string served_checkpoint_;
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread follower_;
};

}  // namespace shoal
