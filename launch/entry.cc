// `shoal`, the command users and supervisors start: it blocks SIGINT and SIGTERM, then executes
// `shoal-main` (the program, beside it) with the same arguments and environment.
//
// Why: a signal mask survives execve, and the program's dynamic loader maps some forty shared
// libraries (oneDNN, Open MPI, Gloo, ZeroMQ, OpenSSL through httplib, ...) for about 20 ms
// before `main` can block anything. A SIGTERM in that window — a supervisor stopping a worker
// it has just started, a spot VM's notice — took the default action and killed the process
// with 143 instead of the clean "left the job" exit 0. This file is linked statically with
// nothing but libc, so the mask is set within microseconds of exec, and the program finds the
// signals already blocked: a stop request from its first instruction on (docs/architecture.md,
// "Start-up and signals"). Commands that do not stop on request unblock them at once.
//
// Plain C library calls only: no allocation, no C++ runtime, nothing that could fail before
// the mask is set.
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigprocmask(SIG_BLOCK, &stop, nullptr);

  static const char kProgram[] = "shoal-main";
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - sizeof(kProgram));
  if (n <= 0) {
    fprintf(stderr, "shoal: error: cannot find this executable (/proc/self/exe): %s\n", strerror(errno));
    return 4;  // ExitCode::io
  }
  path[n] = '\0';
  // `shoal serve` shares its cores between the HTTP threads and the model's: OpenMP threads that
  // spin between parallel regions (libgomp's default) took a third of the CPU from request
  // parsing (docs/benchmarks.md, "Serving throughput"). libgomp reads this when it loads, so it
  // is set here, before the program starts; a user's own setting wins.
  if (argc > 1 && strcmp(argv[1], "serve") == 0) setenv("OMP_WAIT_POLICY", "passive", 0);
  char* slash = strrchr(path, '/');
  memcpy(slash != nullptr ? slash + 1 : path, kProgram, sizeof(kProgram));
  execv(path, argv);
  fprintf(stderr, "shoal: error: cannot run %s (installed beside shoal): %s\n", path, strerror(errno));
  return 4;  // ExitCode::io
}
