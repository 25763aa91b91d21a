// The metrics registry's text format and the HTTP status endpoint, over loopback with
// cpp-httplib's client. Also built under ThreadSanitizer: scrapes race the role's updates.
#include "core/telemetry.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/status_server.h"

namespace shoal {
namespace {

TEST(Telemetry, RendersEveryTypeInTheTextFormat) {
  MetricsRegistry m;
  m.counter("shoal_bytes_total", "bytes sent", {{"server", "ps.0"}}).add(1024);
  m.counter("shoal_bytes_total", "bytes sent", {{"server", "ps.1"}}).add(0.5);
  m.gauge("shoal_loss", "the loss").set(-0.25);
  Histogram& h = m.histogram("shoal_seconds", "round trips", {0.1, 1});
  h.observe(0.05);
  h.observe(0.1);  // on a bound: counted in it (le is "less or equal")
  h.observe(3);
  EXPECT_EQ(m.render(),
            "# HELP shoal_bytes_total bytes sent\n"
            "# TYPE shoal_bytes_total counter\n"
            "shoal_bytes_total{server=\"ps.0\"} 1024\n"
            "shoal_bytes_total{server=\"ps.1\"} 0.5\n"
            "# HELP shoal_loss the loss\n"
            "# TYPE shoal_loss gauge\n"
            "shoal_loss -0.25\n"
            "# HELP shoal_seconds round trips\n"
            "# TYPE shoal_seconds histogram\n"
            "shoal_seconds_bucket{le=\"0.1\"} 2\n"
            "shoal_seconds_bucket{le=\"1\"} 2\n"
            "shoal_seconds_bucket{le=\"+Inf\"} 3\n"
            "shoal_seconds_sum 3.15\n"
            "shoal_seconds_count 3\n");
}

TEST(Telemetry, EscapesLabelValuesAndHelp) {
  struct Case {
    std::string value, rendered;
  };
  const std::vector<Case> cases{{"plain", "{k=\"plain\"}"},
                                {"a\"b", "{k=\"a\\\"b\"}"},
                                {"back\\slash", "{k=\"back\\\\slash\"}"},
                                {"two\nlines", "{k=\"two\\nlines\"}"},
                                {"", "{k=\"\"}"}};
  for (const auto& c : cases) EXPECT_EQ(render_labels({{"k", c.value}}), c.rendered) << c.value;
  MetricsRegistry m;
  m.gauge("g", "a\\b\nc").set(1);
  EXPECT_NE(m.render().find("# HELP g a\\\\b\\nc\n"), std::string::npos) << m.render();
}

TEST(Telemetry, TheSameNameAndLabelsAreTheSameMetricAndAClashIsRefused) {
  MetricsRegistry m;
  Counter& a = m.counter("c_total", "help", {{"x", "1"}});
  EXPECT_EQ(&a, &m.counter("c_total", "help", {{"x", "1"}}));
  EXPECT_NE(&a, &m.counter("c_total", "help", {{"x", "2"}}));
  EXPECT_THROW(m.gauge("c_total", "help"), InternalError);               // another type
  EXPECT_THROW(m.counter("c_total", "other help"), InternalError);       // another help
  EXPECT_THROW(m.counter("bad-name", "help"), InternalError);            // not a metric name
  EXPECT_THROW(m.counter("ok", "help", {{"__x", "1"}}), InternalError);  // reserved label
  EXPECT_THROW(a.add(-1), InternalError);                                // counters only go up
  EXPECT_THROW(Histogram({1, 1}), InternalError);                        // bounds must increase
}

TEST(Telemetry, NonFiniteValuesAreSpelledAsPrometheusReadsThem) {
  MetricsRegistry m;
  m.gauge("inf", "h").set(1.0 / 0.0);
  m.gauge("nan", "h").set(0.0 / 0.0);
  m.gauge("small", "h").set(1e-300);
  const std::string text = m.render();
  EXPECT_NE(text.find("inf +Inf\n"), std::string::npos) << text;
  EXPECT_NE(text.find("nan NaN\n"), std::string::npos) << text;
  EXPECT_NE(text.find("small 1e-300\n"), std::string::npos) << text;
}

TEST(StatusServer, ServesHealthReadinessAndMetricsAndRefusesTheRest) {
  Telemetry t;
  Counter& steps = t.metrics.counter("shoal_steps_total", "steps");
  StatusServer server(t, "127.0.0.1", 0, Logger("test", LogLevel::warn));
  ASSERT_GT(server.port(), 0);
  httplib::Client client("127.0.0.1", server.port());
  client.set_connection_timeout(5);
  client.set_read_timeout(5);

  auto health = client.Get("/healthz");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);
  auto ready = client.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);
  t.ready = true;
  EXPECT_EQ(client.Get("/readyz")->status, 200);

  steps.add(3);
  auto metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(metrics->body.find("shoal_steps_total 3\n"), std::string::npos) << metrics->body;

  EXPECT_EQ(client.Get("/nothing")->status, 404);
  EXPECT_EQ(client.Post("/metrics", "x", "text/plain")->status, 405);
  EXPECT_EQ(client.Delete("/healthz")->status, 405);
}

TEST(StatusServer, APortInUseIsAConfigErrorThatNamesIt) {
  Telemetry t;
  StatusServer first(t, "127.0.0.1", 0, Logger("test", LogLevel::warn));
  try {
    StatusServer second(t, "127.0.0.1", first.port(), Logger("test", LogLevel::warn));
    FAIL() << "two servers listened on one port";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.port " + std::to_string(first.port())), std::string::npos)
        << e.what();
  }
  // Not an address of this host (TEST-NET-1): cannot bind.
  EXPECT_THROW(StatusServer(t, "192.0.2.1", 0, Logger("test", LogLevel::warn)), ConfigError);
}

TEST(StatusServer, ScrapesWhileTheRoleUpdatesAndStopsPromptly) {
  Telemetry t;
  Counter& c = t.metrics.counter("shoal_c_total", "c");
  Histogram& h = t.metrics.histogram("shoal_h", "h", latency_buckets());
  std::atomic<bool> done{false};
  struct Joiner {
    std::atomic<bool>& done;
    std::thread thread;
    ~Joiner() {
      done = true;
      thread.join();
    }
  };
  Joiner role{done, std::thread([&] {
                for (int i = 0; !done.load(); ++i) {
                  c.add();
                  h.observe(1e-4 * (i % 100));
                  if (i % 64 == 0) t.metrics.gauge("shoal_g", "g", {{"i", std::to_string(i % 512)}}).set(i);
                }
              })};
  {
    StatusServer server(t, "127.0.0.1", 0, Logger("test", LogLevel::warn));
    httplib::Client client("127.0.0.1", server.port());
    client.set_read_timeout(5);
    double last = -1;
    for (int i = 0; i < 20; ++i) {
      auto r = client.Get("/metrics");
      ASSERT_TRUE(r) << httplib::to_string(r.error());
      auto at = r->body.find("\nshoal_c_total ");
      ASSERT_NE(at, std::string::npos) << r->body;
      const double seen = std::stod(r->body.substr(at + 15));
      EXPECT_GE(seen, last);  // a counter never goes back between scrapes
      last = seen;
    }
  }  // the destructor stops the server with a client's keep-alive connection still open
}

}  // namespace
}  // namespace shoal
