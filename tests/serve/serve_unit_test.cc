// The pieces of `shoal serve` alone: the protocol parsers fed hostile bodies (every outcome a
// reply or a BadRequest, never a crash), base64, and the batcher under concurrent clients and a
// model swap (also built under ThreadSanitizer).
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "data/image.h"
#include "models/model_file.h"
#include "serve/batcher.h"
#include "serve/inference.h"
#include "serve/protocol.h"

namespace shoal {
namespace {

ModelMeta fashion_meta() {
  ModelMeta meta;
  meta.name = "cnn";
  meta.input = Shape{1, 28, 28};
  meta.classes = 10;
  meta.mean = {0.286f};
  meta.stddev = {0.353f};
  return meta;
}

std::string b64(const std::vector<std::uint8_t>& bytes) {
  static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    std::uint32_t v = static_cast<std::uint32_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<std::uint32_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) v |= bytes[i + 2];
    out += a[v >> 18 & 63];
    out += a[v >> 12 & 63];
    out += i + 1 < bytes.size() ? a[v >> 6 & 63] : '=';
    out += i + 2 < bytes.size() ? a[v & 63] : '=';
  }
  return out;
}

std::vector<std::uint8_t> gray_png(std::uint8_t seed) {
  Image image;
  image.width = 28;
  image.height = 28;
  image.channels = 1;
  image.pixels.resize(28 * 28);
  for (std::size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = static_cast<std::uint8_t>(i * 7 + seed);
  return encode_png(image);
}

TEST(ServeProtocol, Base64DecodesRfc4648AndRefusesTheRest) {
  auto text = [](const std::vector<std::uint8_t>& v) { return std::string(v.begin(), v.end()); };
  EXPECT_EQ(text(base64_decode("", "f")), "");
  EXPECT_EQ(text(base64_decode("Zg==", "f")), "f");
  EXPECT_EQ(text(base64_decode("Zm8=", "f")), "fo");
  EXPECT_EQ(text(base64_decode("Zm9v", "f")), "foo");
  EXPECT_EQ(text(base64_decode("Zm9vYmFy", "f")), "foobar");
  EXPECT_EQ(base64_decode("-_8=", "f"), (std::vector<std::uint8_t>{0xfb, 0xff}));  // URL-safe alphabet
  for (const char* bad : {"Zg=", "Z===", "Zg=a", "=Zg=", "Zm 9", "Zm9v\n", "Zg==Zg==", "****"})
    EXPECT_THROW(base64_decode(bad, "data[0]"), BadRequest) << bad;
  try {
    base64_decode("abc", "inputs[0].data[2]");
    FAIL();
  } catch (const BadRequest& e) {
    EXPECT_NE(std::string(e.what()).find("inputs[0].data[2]"), std::string::npos) << e.what();
  }
}

TEST(ServeProtocol, EveryEncodingOfOneImageGivesTheSameInput) {
  const ModelMeta meta = fashion_meta();
  const std::vector<std::uint8_t> png = gray_png(3);
  const Image decoded = decode_image(png, 1, "x", 0, 0);
  std::string pixels = "[";
  for (std::size_t i = 0; i < decoded.pixels.size(); ++i) pixels += (i ? "," : "") + std::to_string(decoded.pixels[i]);
  pixels += "]";
  const V2Request bytes = parse_v2_request(
      R"({"inputs":[{"name":"input","datatype":"BYTES","shape":[1],"data":[")" + b64(png) + R"("]}]})", "", meta);
  const V2Request u8 = parse_v2_request(
      R"({"inputs":[{"name":"input","datatype":"UINT8","shape":[1,1,28,28],"data":)" + pixels + "}]}", "", meta);
  const TfRequest tf = parse_tf_request(R"({"instances":[{"b64":")" + b64(png) + R"("}]})", meta);
  ASSERT_EQ(bytes.input.n, 1);
  ASSERT_EQ(bytes.input.x.size(), 784u);
  EXPECT_EQ(bytes.input.x, u8.input.x);  // the PNG through the transform = its pixels normalised
  EXPECT_EQ(bytes.input.x, tf.input.x);
  EXPECT_NEAR(bytes.input.x[5], (decoded.pixels[5] / 255.f - 0.286f) / 0.353f, 1e-5);
}

// Valid bodies of every form, then thousands of mutations of them: each is parsed or refused
// with a BadRequest; nothing else escapes.
TEST(ServeProtocol, MutatedBodiesAreParsedOrRefusedNeverCrash) {
  const ModelMeta meta = fashion_meta();
  std::string floats = "[";
  for (int i = 0; i < 784; ++i) floats += (i ? "," : "") + std::to_string(i % 7) + ".5";
  floats += "]";
  const std::string png = b64(gray_png(9));
  std::string binary_head = R"({"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,28,28],"parameters":{"binary_data_size":3136}}]})";
  const std::vector<std::pair<std::string, std::string>> v2_seeds = {
      {R"({"id":"a","inputs":[{"name":"input","datatype":"FP32","shape":[1,1,28,28],"data":)" + floats + R"(}],"outputs":[{"name":"label"}]})", ""},
      {R"({"inputs":[{"name":"input","datatype":"BYTES","shape":[2],"data":[")" + png + R"(",{"b64":")" + png + R"("}]}]})", ""},
      {binary_head + std::string(3136, '\x01'), std::to_string(binary_head.size())},
  };
  const std::vector<std::string> tf_seeds = {
      R"({"instances":[)" + floats + "," + floats + "]}",
      R"({"inputs":{"image":[{"b64":")" + png + R"("}]}})",
  };
  std::mt19937 rng(7);
  auto mutate = [&](std::string s) {
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !s.empty(); ++e) {
      const std::size_t at = rng() % s.size();
      switch (rng() % 4) {
        case 0: s[at] = static_cast<char>(rng() % 256); break;
        case 1: s.erase(at, 1 + rng() % 8); break;
        case 2: s.insert(at, 1, "{}[]\",:0-9e"[rng() % 11]); break;
        default: s.resize(at); break;
      }
    }
    return s;
  };
  int parsed = 0, refused = 0;
  for (int i = 0; i < 3000; ++i) {
    try {
      if (i % 2 == 0) {
        const auto& [body, head] = v2_seeds[static_cast<std::size_t>(i / 2) % v2_seeds.size()];
        V2Request r = parse_v2_request(mutate(body), head, meta);
        EXPECT_EQ(r.input.x.size(), static_cast<std::size_t>(r.input.n) * 784);
      } else {
        TfRequest r = parse_tf_request(mutate(tf_seeds[static_cast<std::size_t>(i / 2) % tf_seeds.size()]), meta);
        EXPECT_EQ(r.input.x.size(), static_cast<std::size_t>(r.input.n) * 784);
      }
      ++parsed;
    } catch (const BadRequest&) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 1000);
  EXPECT_GT(parsed, 10);  // some mutations (a changed digit) are still valid requests
}

std::shared_ptr<InferenceModel> mlp(std::uint64_t seed) {
  TrainedModel t;
  t.model = build_model("mlp", Shape{1, 28, 28}, 10);
  t.model->declare();
  std::mt19937 rng(static_cast<std::uint32_t>(seed));
  std::normal_distribution<float> normal(0.f, 0.05f);
  t.values.resize(static_cast<std::size_t>(t.model->params().parameter_count()));
  for (float& v : t.values) v = normal(rng);
  t.meta = fashion_meta();
  t.meta.step = static_cast<std::int64_t>(seed);
  BackendOptions cpu;
  cpu.device = Device::cpu();
  cpu.threads = 1;
  return std::make_shared<InferenceModel>(std::move(t), cpu);
}

// Eight clients submit at once while the model is swapped: every request is answered, with its
// own number of rows, by the model current when it was submitted (some by the new one).
TEST(ServeBatcher, ConcurrentClientsAndASwapEachGetTheirOwnRowsFromTheirModel) {
  MetricsRegistry metrics;
  auto first = mlp(1), second = mlp(2);
  Batcher batcher(BatcherOptions{16, 500, 1024}, first, metrics);
  constexpr int kClients = 8, kEach = 25;
  std::atomic<int> wrong{0}, done{0}, from_second{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < kEach; ++i) {
        const std::int64_t n = 1 + (c + i) % 3;
        std::vector<float> x(static_cast<std::size_t>(n * 784));
        for (std::size_t k = 0; k < x.size(); ++k) x[k] = static_cast<float>((k * 31 + static_cast<std::size_t>(c * 7 + i)) % 97) / 97.f;
        std::promise<InferenceResult> answer;
        InferenceJob job;
        job.input = x;
        job.n = n;
        job.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        job.done = [&answer](InferenceResult&& r) { answer.set_value(std::move(r)); };
        if (!batcher.submit(job)) {
          ++wrong;
          continue;
        }
        InferenceResult r = answer.get_future().get();
        if (r.status != InferenceResult::Status::ok || r.logits.size() != static_cast<std::size_t>(n * 10)) {
          ++wrong;
          continue;
        }
        if (r.model == second) ++from_second;
        ++done;
      }
    });
  }
  while (done.load() < kClients * kEach / 3) std::this_thread::yield();
  batcher.set_model(second);
  for (auto& t : clients) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(done.load(), kClients * kEach);
  EXPECT_GT(from_second.load(), 0);
  EXPECT_TRUE(batcher.wait_idle(std::chrono::steady_clock::now() + std::chrono::seconds(10)));
  EXPECT_EQ(batcher.depth(), 0);
}

TEST(ServeBatcher, BatchedRowsEqualTheModelAlone) {
  MetricsRegistry metrics;
  auto model = mlp(5);
  std::vector<float> x(3 * 784);
  for (std::size_t k = 0; k < x.size(); ++k) x[k] = static_cast<float>(k % 13) / 13.f;
  std::vector<float> alone(30);
  model->predict(x.data(), 3, alone.data());
  Batcher batcher(BatcherOptions{64, 200000, 16, true}, model, metrics);  // gathers until all three are in
  std::vector<std::promise<InferenceResult>> answers(3);
  for (int i = 0; i < 3; ++i) {
    InferenceJob job;
    job.input.assign(x.begin() + i * 784, x.begin() + (i + 1) * 784);
    job.n = 1;
    job.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    job.done = [&answers, i](InferenceResult&& r) { answers[static_cast<std::size_t>(i)].set_value(std::move(r)); };
    ASSERT_TRUE(batcher.submit(job));
  }
  for (int i = 0; i < 3; ++i) {
    InferenceResult r = answers[static_cast<std::size_t>(i)].get_future().get();
    ASSERT_EQ(r.status, InferenceResult::Status::ok);
    for (int c = 0; c < 10; ++c) EXPECT_NEAR(r.logits[static_cast<std::size_t>(c)], alone[static_cast<std::size_t>(i * 10 + c)], 1e-5);
  }
}

// A lone request does not wait for company that is not coming: with max_delay a whole 5 s, it is
// answered long before (the gather waits only while requests arrive together).
TEST(ServeBatcher, ALoneRequestRunsAtOnce) {
  MetricsRegistry metrics;
  Batcher batcher(BatcherOptions{64, 5'000'000, 16}, mlp(3), metrics);
  for (int i = 0; i < 3; ++i) {
    std::promise<InferenceResult> answer;
    InferenceJob job;
    job.input.assign(784, 0.5f);
    job.n = 1;
    job.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    job.done = [&answer](InferenceResult&& r) { answer.set_value(std::move(r)); };
    ASSERT_TRUE(batcher.submit(job));
    auto future = answer.get_future();
    ASSERT_EQ(future.wait_for(std::chrono::milliseconds(2500)), std::future_status::ready) << "request " << i;
    EXPECT_EQ(future.get().status, InferenceResult::Status::ok);
  }
}

}  // namespace
}  // namespace shoal
