#!/usr/bin/env bash
# The sanitizer stages of the test suite (tests/run.sh runs them after the plain build):
#   asan  AddressSanitizer + UndefinedBehaviorSanitizer: the unit tests, the in-process
#         cluster tests, the collectives and the short multi-process tests, sync jobs included
#         and the data layer (decoders and tar reader fed damaged bytes, the input pipeline)
#         (not the accuracy runs, the model-file example's three trainings, two epochs of
#         `cnn` and a step of resnet50, nor the equivalence and same-seed runs: pure
#         arithmetic, nor
#         the manifest checks, which run only `shoal config`, nor the peak-memory comparison,
#         which the sanitizer's own memory would blur, nor, for CI's time, the StatefulSet
#         simulation (its restarts are the Elastic tests' here), the Prometheus scrape of a
#         training job (the status server is under both sanitizers in shoal_telemetry_tests)
#         and `shoal serve` over HTTP (its server, batcher and parsers are in
#         shoal_serve_tests, under both), nor the ONNX runtime comparisons and round trips
#         (arithmetic and other runtimes; the ONNX import's refusals and damaged files stay));
#   tsan  ThreadSanitizer: the in-process cluster tests (every role a thread, faults injected)
#         the collectives (Gloo worlds, ranks as threads) and the parameter server under
#         concurrent clients (its chunk store hands buffers between threads), and the status
#         endpoint scraped while its metrics are updated, and CURVE sockets with their ZAP
#         handler thread (auth.keys), and the fault injection's held messages, and the parameter
#         servers' client against servers on threads of their own, and the input pipeline's
#         decode threads (BatchLoader).
# A sanitizer report anywhere (a test, or a `shoal` child process it started) fails the stage:
# reports go to files under build-<stage>/reports, and any file there is a failure.
#   tests/sanitizers/run.sh [asan] [tsan]     (default: both)
set -euo pipefail
cd "$(dirname "$0")/../.."
stages=("$@")
[[ ${#stages[@]} -eq 0 ]] && stages=(asan tsan)
here=$(pwd)/tests/sanitizers
# ccache: paths relative to the checkout, so a clone elsewhere (CI's) reuses the objects.
export CCACHE_BASEDIR=$(pwd) CCACHE_NOHASHDIR=1

configure() {  # DIR FLAGS
  local dir=$1 flags=$2
  if [[ ! -f $dir/build.ninja ]]; then
    # -g1: line tables and function names, all a sanitizer report's stacks need; full debug
    # information doubled these builds' compile and link time. -O1, as the sanitizers' own
    # documentation suggests: it compiled config.cc under ASan+UBSan in 27 s where -O2 took
    # 35 s, and these two builds are most of CI's time.
    cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHOAL_CUDA=OFF \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
      -DCMAKE_CXX_FLAGS="$flags -fno-omit-frame-pointer" -DCMAKE_C_FLAGS="$flags" \
      -DCMAKE_EXE_LINKER_FLAGS="$flags" >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; exit 1; }
  fi
}

check_reports() {  # DIR
  local reports
  reports=$(find "$1/reports" -type f 2>/dev/null | head -20)
  if [[ -n $reports ]]; then
    echo "sanitizer reports:"
    for f in $reports; do echo "--- $f"; head -60 "$f"; done
    return 1
  fi
}

for stage in "${stages[@]}"; do
  dir=build-$stage
  case $stage in
    asan)
      configure "$dir" "-fsanitize=address,undefined -fno-sanitize-recover=undefined"
      cmake --build "$dir" --target shoal shoal_unit_tests shoal_process_tests shoal_inproc_cluster_tests \
        shoal_collective_tests shoal_sync_process_tests shoal_sync_steps shoal_sync_tests shoal_ps_concurrency_tests \
        shoal_telemetry_tests shoal_comm_tests shoal_checkpoint_tests shoal_cuda_module_tests shoal_ps_client_tests \
        shoal_data_tests shoal_serve_tests shoal_onnx_tests
      rm -rf "$dir/reports" && mkdir -p "$dir/reports"
      export ASAN_OPTIONS="log_path=$here/../../$dir/reports/asan:exitcode=66:detect_leaks=1"
      export LSAN_OPTIONS="suppressions=$here/lsan.supp"
      export UBSAN_OPTIONS="log_path=$here/../../$dir/reports/ubsan:print_stacktrace=1:halt_on_error=1"
      # Jobs under mpirun: Open MPI's runtime keeps allocations past MPI_Finalize in components
      # it has already unloaded, which LeakSanitizer can neither name nor suppress. They run
      # with every address and UB check, without leak detection; the Gloo jobs keep it. (The
      # launcher's world-restart test has an mpi case: it runs here too.)
      mpi_tests='^SyncLaunch\.|^SyncFailure\.Mpi|^MultiHost\.|^SyncCheckpoint\.LauncherRestarts'
      ctest --test-dir "$dir" --output-on-failure -j "$(nproc)" --timeout 900 \
        -E "^Accuracy\.|^ImageMemory\.|^ModelFileJobs\.TheWorkedExample|^Trainer\.LossFallsOnRealData|^ModelFiles\.ResNet50|SameSeedGivesTheSameMetrics|SameSeedSameRun|^SyncEquivalence\.|^K8s\.(Manifests|ApiTypes|StatefulSetSimulation|JobSimulation|CrdSchemas|MpiJob|MpiJobSsh)$|^Serve\.Http$|^MetricsEndpoint\.|^Onnx\.(Zoo|ExportImportExport|ATorch|JobsWith)|$mpi_tests"
      ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" \
        ctest --test-dir "$dir" --output-on-failure -j 1 --timeout 900 -R "$mpi_tests"
      check_reports "$dir"
      ;;
    tsan)
      configure "$dir" "-fsanitize=thread"
      cmake --build "$dir" --target shoal_inproc_cluster_tests shoal_collective_tests shoal_ps_concurrency_tests \
        shoal_telemetry_tests shoal_comm_tests shoal_ps_client_tests shoal_data_tests shoal_serve_tests
      rm -rf "$dir/reports" && mkdir -p "$dir/reports"
      export TSAN_OPTIONS="log_path=$here/../../$dir/reports/tsan:exitcode=66:halt_on_error=0:second_deadlock_stack=1:suppressions=$here/tsan.supp"
      ctest --test-dir "$dir" --output-on-failure -j 1 --timeout 900 -R '^Inproc|^FaultInjection\.|^GlooCollective\.|^Work\.|^ChunkStore\.|^UpdatePool\.|^Telemetry\.|^StatusServer\.|^Auth\.|^PsClient\.|^BatchLoader\.|^ServeBatcher\.|^ServeProtocol\.'
      check_reports "$dir"
      ;;
    *)
      echo "unknown sanitizer stage '$stage' (asan, tsan)" >&2
      exit 2
      ;;
  esac
  echo "sanitizer stage $stage: no reports"
done
