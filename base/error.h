// Typed errors for the whole library and the macros that raise them.
// Library code never aborts on bad input: it throws one of these, and `main` turns it into a
// one-line message and a documented exit code (see docs/configuration.md, "Exit codes").
#pragma once

#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>

namespace shoal {

// Exit codes are part of the CLI contract: 1-127 are permanent failures, so that Kubernetes
// does not restart a job whose configuration is wrong.
enum class ExitCode : int {
  ok = 0,
  internal = 1,
  usage = 2,  // bad command line or configuration
  data = 3,   // a dataset file is missing, truncated or corrupt
  io = 4,     // a file or socket could not be read or written
  checkpoint = 5,
  timeout = 6,
  device = 7,      // the requested device or library is not available
  protocol = 8,    // a peer sent something we cannot accept
  diverged = 9,    // training diverged: the loss or a gradient is not finite
  peer_lost = 10,  // a process the job cannot go on without died or left (a server, every worker)
};

// The name of a code for messages ("timeout", "peer lost"); "unknown" for anything else.
const char* exit_code_name(ExitCode code);
// A code received from a peer (e.g. in a job-end message), checked: nothing outside the
// table above is accepted. Returns false for an unknown code.
bool exit_code_from_int(int value, ExitCode* code);

class Error : public std::runtime_error {
 public:
  Error(const std::string& what, ExitCode code) : std::runtime_error(what), code_(code) {}
  ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

#define SHOAL_DEFINE_ERROR(Name, Code)                                      \
  class Name : public Error {                                               \
   public:                                                                  \
    explicit Name(const std::string& what) : Error(what, ExitCode::Code) {} \
  }

SHOAL_DEFINE_ERROR(ConfigError, usage);
SHOAL_DEFINE_ERROR(DataError, data);
SHOAL_DEFINE_ERROR(IoError, io);
SHOAL_DEFINE_ERROR(CheckpointError, checkpoint);
SHOAL_DEFINE_ERROR(TimeoutError, timeout);
SHOAL_DEFINE_ERROR(DeviceError, device);
SHOAL_DEFINE_ERROR(ProtocolError, protocol);
SHOAL_DEFINE_ERROR(InternalError, internal);
SHOAL_DEFINE_ERROR(DivergedError, diverged);

#undef SHOAL_DEFINE_ERROR

// This process is no longer part of the job: the job failed (the error carries the job's exit
// code), the coordinator or a parameter server dropped this process (declared it dead while it
// was unreachable), or the coordinator is gone. There is nobody left to say goodbye to.
class DetachedError : public Error {
 public:
  using Error::Error;
};

namespace detail {
std::string where(const char* file, int line);
}  // namespace detail

// What an exception that reached a thread or process boundary means: the exit code and a
// one-line message. Every boundary (main, the heartbeat thread, a role run as a thread in a
// test) goes through this, so nothing escapes as std::terminate: Shoal's errors keep their
// kind, Cap'n Proto's kj::Exception (a malformed field read lazily) becomes a protocol error,
// std::bad_alloc "out of memory", anything else an internal error.
struct Failure {
  ExitCode code = ExitCode::internal;
  std::string message;
};
Failure failure_of(std::exception_ptr error);

}  // namespace shoal

// SHOAL_THROW(ConfigError, "key " << k << " out of range") builds the message with <<.
#define SHOAL_THROW(ErrorType, message)         \
  do {                                          \
    std::ostringstream shoal_msg_;              \
    shoal_msg_ << message;                      \
    throw ::shoal::ErrorType(shoal_msg_.str()); \
  } while (0)

// SHOAL_REQUIRE(cond, ErrorType, message): for checks on external input.
#define SHOAL_REQUIRE(cond, ErrorType, message)   \
  do {                                            \
    if (!(cond)) SHOAL_THROW(ErrorType, message); \
  } while (0)

// SHOAL_ASSERT(cond, message): an internal invariant; the message carries file:line because a
// failure here is our bug, not the user's.
#define SHOAL_ASSERT(cond, message)                                                         \
  do {                                                                                      \
    if (!(cond))                                                                            \
      SHOAL_THROW(InternalError, ::shoal::detail::where(__FILE__, __LINE__)                 \
                                     << ": internal check failed: " #cond ": " << message); \
  } while (0)
