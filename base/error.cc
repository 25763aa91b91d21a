#include "base/error.h"

#include <kj/exception.h>

#include <new>

namespace shoal {

const char* exit_code_name(ExitCode code) {
  switch (code) {
    case ExitCode::ok:
      return "success";
    case ExitCode::internal:
      return "internal error";
    case ExitCode::usage:
      return "bad configuration";
    case ExitCode::data:
      return "bad dataset";
    case ExitCode::io:
      return "I/O error";
    case ExitCode::checkpoint:
      return "checkpoint error";
    case ExitCode::timeout:
      return "timeout";
    case ExitCode::device:
      return "device unavailable";
    case ExitCode::protocol:
      return "protocol error";
    case ExitCode::diverged:
      return "training diverged";
    case ExitCode::peer_lost:
      return "peer lost";
  }
  return "unknown";
}

bool exit_code_from_int(int value, ExitCode* code) {
  if (value < 0 || value > static_cast<int>(ExitCode::peer_lost)) return false;
  *code = static_cast<ExitCode>(value);
  return true;
}

Failure failure_of(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return Failure{e.code(), e.what()};
  } catch (const kj::Exception& e) {
    return Failure{ExitCode::protocol, std::string("malformed message: ") + e.getDescription().cStr()};
  } catch (const std::bad_alloc&) {
    return Failure{ExitCode::internal, "out of memory"};
  } catch (const std::exception& e) {
    return Failure{ExitCode::internal, std::string("internal error: ") + e.what()};
  } catch (...) {
    return Failure{ExitCode::internal, "internal error: an exception of unknown type"};
  }
}

}  // namespace shoal
