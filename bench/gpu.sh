#!/usr/bin/env bash
# The GPU check, for a machine WITH an NVIDIA GPU (docs/gpu-testing.md):
#   1. builds Shoal (launch/build.sh into ./build), or uses the binaries in $SHOAL_BUILD;
#   2. runs the GPU test suite (shoal_gpu_tests, shoal_gpu_process_tests) and stops if any test
#      fails, or if a GPU test skipped (shoal could not see the GPU);
#   3. prints one markdown table: training samples/s of `cnn` and `resnet20` at batch 256 with
#      Shoal (device = cuda) and with PyTorch eager (and torch.compile) on the same GPU, model,
#      batch and data, medians of interleaved runs, ratio Shoal / PyTorch (target 1.2x)
#      (bench/gpu_torch_peer.py says exactly what is timed on each side).
# Without a GPU it exits 1 at once, saying so.
#
#   bench/gpu.sh                               # build here, test, benchmark
#   SHOAL_BUILD=build SHOAL_LIBS=libs bench/gpu.sh   # binaries built elsewhere
#   bench/gpu.sh --collect-libs DIR            # on the BUILD machine: copy the .so files to carry
#
# Environment:
#   SHOAL_BUILD=dir  use the binaries already in dir (dir/shoal, dir/tests/shoal_gpu_tests,
#                    dir/tests/shoal_gpu_process_tests) instead of building ./build.
#   SHOAL_LIBS=dir   prepended to LD_LIBRARY_PATH for Shoal's binaries only (PyTorch keeps its
#                    own libraries): for a GPU machine without Debian's libzmq, capnp/kj,
#                    boost_program_options, Open MPI, oneDNN, gloo's deps, ... Fill dir on the
#                    build machine with `bench/gpu.sh --collect-libs dir` and carry it along.
#                    CUDA's own libraries (cudart, cuBLAS, cuDNN, NCCL) are not copied: when the
#                    machine has no CUDA toolkit, this script adds the ones of the PyTorch wheel
#                    (site-packages/nvidia/*/lib) after SHOAL_LIBS.
#   SHOAL_DATA_DIR=dir  Fashion-MNIST's four .gz files (default /usr/share/datasets/fashion-mnist);
#                    shoal reads this variable as data.dir, the tests and PyTorch use it too.
#   RUNS=5 MODELS=cnn,resnet20 BATCH=256 TF32=true COMPILE=1 PYTHON=python3
#
# SHOAL_BUILD and SHOAL_LIBS are read and then removed from the environment: shoal takes every
# SHOAL_* variable as a setting and refuses one that names none.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

die() { echo "bench/gpu.sh: $*" >&2; exit 1; }

build_dir=${SHOAL_BUILD:-}
libs=${SHOAL_LIBS:-}
unset SHOAL_BUILD SHOAL_LIBS
PYTHON=${PYTHON:-python3}

# ---- --collect-libs DIR: the shared libraries Shoal's binaries need, minus glibc and CUDA ------
if [[ ${1:-} == --collect-libs ]]; then
  out=${2:?usage: bench/gpu.sh --collect-libs DIR}
  dir=${build_dir:-build}
  mkdir -p "$out"
  for bin in "$dir/shoal" "$dir/tests/shoal_gpu_tests" "$dir/tests/shoal_gpu_process_tests"; do
    [[ -x $bin ]] || die "$bin not built (build first: launch/build.sh)"
    ldd "$bin" | awk '/=> \// {print $3}'
  done | sort -u | while read -r lib; do
    case $(basename "$lib") in
      # glibc (must match the machine's loader), the driver, and CUDA's libraries (from the
      # machine's toolkit or the PyTorch wheel; cuDNN alone is ~1 GiB).
      libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libresolv.so* | libutil.so*) ;;
      libcuda.so* | libcudart.so* | libcublas*.so* | libcudnn*.so* | libnccl.so* | libnvrtc*.so* | libnvJitLink*.so*) ;;
      *) cp -L "$lib" "$out/" ;;
    esac
  done
  echo "copied $(ls "$out" | wc -l) libraries ($(du -sh "$out" | cut -f1)) into $out:"
  ls "$out"
  exit 0
fi

# ---- a GPU, or stop ----------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null; then
  die "no nvidia-smi: this is not a machine with an NVIDIA GPU and driver (the GPU tests and the GPU benchmark need one)"
fi
gpus=$(nvidia-smi -L 2>&1 || true)
grep -q '^GPU [0-9]' <<<"$gpus" || die "nvidia-smi shows no GPU: $gpus"
echo "$gpus"

# ---- build, or the given binaries --------------------------------------------------------------
if [[ -z $build_dir ]]; then
  launch/build.sh
  build_dir=build
fi
build_dir=$(cd "$build_dir" && pwd)
for bin in shoal shoal-main tests/shoal_gpu_tests tests/shoal_gpu_process_tests; do
  [[ -x $build_dir/$bin ]] || die "$build_dir/$bin is missing (a build with the CUDA parts ON builds it)"
done

# The library path for Shoal's binaries: SHOAL_LIBS, then CUDA's libraries from the PyTorch wheel
# if the binaries cannot find them otherwise.
shoal_ld=${libs:+$(cd "$libs" && pwd)}
missing() { LD_LIBRARY_PATH=$shoal_ld${shoal_ld:+${LD_LIBRARY_PATH:+:}}${LD_LIBRARY_PATH:-} ldd "$build_dir/shoal-main" | grep 'not found' || true; }
if [[ -n $(missing) ]]; then
  wheel=$("$PYTHON" - <<'EOF' 2>/dev/null || true
import glob, os
try:
    import nvidia
    dirs = sorted({d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))})
    print(":".join(dirs))
except ImportError:
    pass
EOF
)
  [[ -n $wheel ]] && shoal_ld=$shoal_ld${shoal_ld:+:}$wheel
fi
[[ -z $(missing) ]] || die "shoal cannot load these libraries (carry them with SHOAL_LIBS=dir, see the header):
$(missing)"
with_libs() { LD_LIBRARY_PATH=$shoal_ld${shoal_ld:+${LD_LIBRARY_PATH:+:}}${LD_LIBRARY_PATH:-} "$@"; }

version=$(with_libs "$build_dir/shoal" version) || die "shoal version failed: $version"
echo "$version"
grep -q '^GPU 0: ' <<<"$version" || die "shoal sees no GPU although nvidia-smi does (build without CUDA, or driver older than the CUDA runtime?): $version"

if [[ -n ${SHOAL_DATA_DIR:-} ]]; then
  export SHOAL_DATA_DIR
  data=$SHOAL_DATA_DIR
else
  data=/usr/share/datasets/fashion-mnist
fi
[[ -f $data/train-images-idx3-ubyte.gz ]] || die "Fashion-MNIST not found in $data (set SHOAL_DATA_DIR)"

# ---- the GPU test suite ------------------------------------------------------------------------
# Skips allowed on a GPU machine: the tests for machines without one, and the 2-GPU job on one.
allowed_skips='^(CudaUnavailable|GpuUnavailable)\.|TwoRankSyncJobOverNcclOnTwoGpus'
logs=$(mktemp -d)
# The process tests start this shoal on these example job files (the paths built into them are
# the build machine's).
export GPU_TEST_SHOAL_BINARY=$build_dir/shoal GPU_TEST_SOURCE_DIR=$root
for suite in shoal_gpu_tests shoal_gpu_process_tests; do
  echo "== $suite"
  if ! with_libs "$build_dir/tests/$suite" --gtest_color=no 2>&1 | tee "$logs/$suite.log" | grep -E '^\[ +(OK|FAILED|SKIPPED) +\]'; then
    :
  fi
  grep -q '^\[  PASSED  \]' "$logs/$suite.log" || die "$suite did not finish (log: $logs/$suite.log)"
  if grep -q '^\[  FAILED  \]' "$logs/$suite.log"; then
    die "$suite: tests failed (full log: $logs/$suite.log)"
  fi
  skipped=$(grep -E '^\[  SKIPPED \] [A-Za-z]' "$logs/$suite.log" | grep -v ' listed below' | sed 's/^\[  SKIPPED \] //; s/ (.*//' |
              sort -u | grep -Ev "$allowed_skips" || true)
  [[ -z $skipped ]] || die "$suite: GPU tests skipped on a GPU machine (log: $logs/$suite.log):
$skipped"
done
echo "GPU tests passed (logs: $logs)"

# ---- the benchmark -----------------------------------------------------------------------------
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "PyTorch sees no CUDA GPU")' ||
  die "PyTorch with CUDA is needed for the comparison"
compile_flag=()
[[ ${COMPILE:-1} == 1 ]] || compile_flag=(--no-compile)
"$PYTHON" "$root/bench/gpu_torch_peer.py" compare --shoal "$build_dir/shoal" --shoal-ld-path "$shoal_ld" \
  --runs "${RUNS:-5}" --models "${MODELS:-cnn,resnet20}" --batch "${BATCH:-256}" --tf32 "${TF32:-true}" \
  --data "$data" "${compile_flag[@]}"
