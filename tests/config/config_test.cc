// Configuration: sources and their precedence, and a table of bad inputs that must each be a
// ConfigError naming the key (and where the value came from).
#include "config/config.h"

#include <gtest/gtest.h>

#include "base/error.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using testing::TempDir;
using testing::write_file;

TEST(Config, DefaultsWithoutAnySource) {
  SettingsRegistry registry;
  LoadedConfig c = load_config({}, {}, registry);
  EXPECT_EQ(c.config.model, "cnn");
  EXPECT_EQ(c.config.batch_size, 64);
  EXPECT_EQ(c.config.optimizer.kind, OptimizerKind::sgd);
  EXPECT_TRUE(c.sources.empty());
}

TEST(Config, FileEnvironmentAndCommandLinePrecedence) {
  TempDir dir;
  write_file(dir.file("job.ini"),
             "model = mlp\n[train]\nepochs = 3\nbatch_size = 32\n[optimizer]\nname = adam\nlr = 0.002\n"
             "nesterov = true\n");
  SettingsRegistry registry;
  LoadedConfig c = load_config({dir.file("job.ini"), "--train.batch_size=128", "--threads", "1"},
                               {"SHOAL_TRAIN_BATCH_SIZE=256", "SHOAL_TRAIN_EPOCHS=5", "PATH=/bin"}, registry);
  EXPECT_EQ(c.config.model, "mlp");     // file
  EXPECT_EQ(c.config.epochs, 5);        // env beats file
  EXPECT_EQ(c.config.batch_size, 128);  // command line beats env and file
  EXPECT_EQ(c.config.threads, 1);
  EXPECT_EQ(c.config.optimizer.kind, OptimizerKind::adam);
  EXPECT_FLOAT_EQ(c.config.optimizer.lr, 0.002f);
  EXPECT_TRUE(c.config.optimizer.nesterov);
  EXPECT_EQ(c.sources["train.batch_size"], "command line");
  EXPECT_EQ(c.sources["train.epochs"], "env SHOAL_TRAIN_EPOCHS");
  EXPECT_EQ(c.sources["model"], "file " + dir.file("job.ini"));
  std::string described = c.describe(registry);
  EXPECT_NE(described.find("train.epochs"), std::string::npos);
  EXPECT_NE(described.find("(env SHOAL_TRAIN_EPOCHS)"), std::string::npos);
}

TEST(Config, BoolFlagWithoutValue) {
  SettingsRegistry registry;
  LoadedConfig c = load_config({"--optimizer.nesterov", "--data.normalize=off"}, {}, registry);
  EXPECT_TRUE(c.config.optimizer.nesterov);
  EXPECT_FALSE(c.config.data.normalize);
}

struct BadInput {
  const char* name;
  std::string file;               // job file content ("" = no file)
  std::vector<std::string> args;  // after the file
  std::vector<std::string> env;
  std::string must_mention;  // the error names this
};

void PrintTo(const BadInput& bad, std::ostream* os) { *os << bad.name; }

class ConfigErrors : public ::testing::TestWithParam<BadInput> {};

TEST_P(ConfigErrors, AreConfigErrorsNamingTheKey) {
  const BadInput& bad = GetParam();
  TempDir dir;
  std::vector<std::string> args;
  if (!bad.file.empty()) {
    write_file(dir.file("job.ini"), bad.file);
    args.push_back(dir.file("job.ini"));
  }
  args.insert(args.end(), bad.args.begin(), bad.args.end());
  SettingsRegistry registry;
  try {
    load_config(args, bad.env, registry);
    FAIL() << bad.name << ": no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(bad.must_mention), std::string::npos)
        << bad.name << ": '" << e.what() << "' does not mention '" << bad.must_mention << "'";
    EXPECT_EQ(e.code(), ExitCode::usage);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Table, ConfigErrors,
    ::testing::Values(BadInput{"unknown key in file", "[train]\nepochz = 3\n", {}, {}, "train.epochz"},
                      BadInput{"unknown section", "[trian]\nepochs = 3\n", {}, {}, "trian.epochs"},
                      BadInput{"unknown option", "", {"--train.epohcs=3"}, {}, "train.epohcs"},
                      BadInput{"unknown env", "", {}, {"SHOAL_TRAIN_EPOCHZ=3"}, "SHOAL_TRAIN_EPOCHZ"},
                      BadInput{"epochs zero", "[train]\nepochs = 0\n", {}, {}, "train.epochs"},
                      BadInput{"negative batch", "", {"--train.batch_size=-4"}, {}, "train.batch_size"},
                      BadInput{"not an integer", "[train]\nbatch_size = 6four\n", {}, {}, "train.batch_size"},
                      BadInput{"float as int", "", {"--train.epochs=2.5"}, {}, "train.epochs"},
                      BadInput{"lr zero", "[optimizer]\nlr = 0\n", {}, {}, "optimizer.lr"},
                      BadInput{"lr nan", "", {"--optimizer.lr=nan"}, {}, "optimizer.lr"},
                      BadInput{"momentum one", "", {}, {"SHOAL_OPTIMIZER_MOMENTUM=1"}, "optimizer.momentum"},
                      BadInput{
                          "env source named", "", {}, {"SHOAL_OPTIMIZER_MOMENTUM=1"}, "env SHOAL_OPTIMIZER_MOMENTUM"},
                      BadInput{"bad choice", "model = vgg16\n", {}, {}, "model"},
                      BadInput{"bad bool", "[optimizer]\nnesterov = maybe\n", {}, {}, "optimizer.nesterov"},
                      BadInput{"duplicate key", "[train]\nepochs = 3\nepochs = 4\n", {}, {}, "train.epochs"},
                      BadInput{"bad device", "", {"--device=tpu"}, {}, "device"},
                      BadInput{"threads too many", "", {"--threads=100000"}, {}, "threads"},
                      BadInput{"missing file", "", {"/nonexistent/job.ini"}, {}, "/nonexistent/job.ini"}),
    [](const ::testing::TestParamInfo<BadInput>& info) {
      std::string n = info.param.name;
      for (auto& c : n)
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      return n;
    });

// Kubernetes' service-link variables for Services named shoal-* are ignored, by name and value;
// a SHOAL_* name close to a setting's (a typo) is refused naming the setting; any other SHOAL_*
// name (a user's script's own, or a service link's shape with another value) is a warning.
TEST(Config, KubernetesServiceLinkVariablesAreIgnoredTyposRefusedAndOtherNamesWarned) {
  enum Outcome { ignored, refused, warned };
  struct Case {
    std::string name, value;
    Outcome outcome;
    std::string suggestion = "";
  };
  const std::vector<Case> cases{
      {"SHOAL_COORDINATOR_SERVICE_HOST", "10.96.0.12", ignored},
      {"SHOAL_COORDINATOR_SERVICE_PORT", "5555", ignored},
      {"SHOAL_COORDINATOR_SERVICE_PORT_CONTROL", "5555", ignored},
      {"SHOAL_COORDINATOR_PORT", "tcp://10.96.0.12:5555", ignored},
      {"SHOAL_COORDINATOR_PORT_5555_TCP", "tcp://10.96.0.12:5555", ignored},
      {"SHOAL_COORDINATOR_PORT_5555_TCP_PROTO", "tcp", ignored},
      {"SHOAL_COORDINATOR_PORT_5555_TCP_PORT", "5555", ignored},
      {"SHOAL_COORDINATOR_PORT_5555_TCP_ADDR", "10.96.0.12", ignored},
      {"SHOAL_SERVICE_HOST", "10.96.0.3", ignored},  // a Service named `shoal`
      {"SHOAL_PS_PORT", "tcp://[fd00::7]:6000", ignored},
      {"SHOAL_PS_SERVICE_HOST", "fd00::7", ignored},
      {"SHOAL_TRAIN_EPOCHZ", "3", refused, "SHOAL_TRAIN_EPOCHS"},  // typos
      {"SHOAL_TRIAN_EPOCHS", "3", refused, "SHOAL_TRAIN_EPOCHS"},
      {"SHOAL_TRAINEPOCHS", "3", refused, "SHOAL_TRAIN_EPOCHS"},
      {"SHOAL_OPTIMIZER_LR_", "0.1", refused, "SHOAL_OPTIMIZER_LR"},
      {"SHOAL_CHECKPOINT_EVERY_STEP", "10", refused, "SHOAL_CHECKPOINT_EVERY_STEPS"},
      {"SHOAL_HOME", "/opt/shoal", warned},  // a user's script's own
      {"SHOAL_RUN_ID", "exp-17", warned},
      {"SHOAL_COORDINATOR_PORT", "5555", warned},  // the shape of a service link, not its value
      {"SHOAL_COORDINATOR_SERVICE_HOST", "coordinator", warned},
      {"SHOAL_COORDINATOR_PORTS", "tcp://10.96.0.12:5555", warned},
  };
  SettingsRegistry registry;
  for (const auto& c : cases) {
    EXPECT_EQ(is_kubernetes_service_link(c.name, c.value), c.outcome == ignored) << c.name << "=" << c.value;
    const std::vector<std::string> env{c.name + "=" + c.value, "SHOAL_TRAIN_EPOCHS=5"};
    if (c.outcome != refused) {
      LoadedConfig loaded = load_config({}, env, registry);
      EXPECT_EQ(loaded.config.epochs, 5) << c.name;
      if (c.outcome == ignored) {
        EXPECT_TRUE(loaded.warnings.empty()) << c.name;
      } else {
        ASSERT_EQ(loaded.warnings.size(), 1u) << c.name;
        EXPECT_NE(loaded.warnings[0].find(c.name), std::string::npos) << loaded.warnings[0];
      }
    } else {
      try {
        load_config({}, env, registry);
        ADD_FAILURE() << c.name << "=" << c.value << " was accepted";
      } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find(c.name), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("did you mean " + c.suggestion + "?"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(Config, EveryKeyHasHelpAndEnvironmentName) {
  SettingsRegistry registry;
  for (const auto& s : registry.settings()) {
    EXPECT_FALSE(s.help.empty()) << s.key;
    EXPECT_NE(registry.help_text().find("--" + s.key), std::string::npos) << s.key;
    JobConfig defaults;
    // Every default survives a round trip through its own parser.
    JobConfig copy;
    EXPECT_NO_THROW(s.set(copy, s.get(defaults))) << s.key;
  }
  EXPECT_EQ(SettingsRegistry::env_name("train.batch_size"), "SHOAL_TRAIN_BATCH_SIZE");
}

}  // namespace
}  // namespace shoal
