#!/usr/bin/env bash
# Installs what Shoal needs from Debian 12 (bookworm), if anything is missing. Idempotent and
# quiet when everything is present. Why each package is needed: docs/dependencies.md.
#   launch/setup-debian.sh          build + run + test dependencies
#   launch/setup-debian.sh --bench  also the benchmark peers (PyTorch, iperf3)
#   launch/setup-debian.sh --build  only what building and running needs (container images)
set -euo pipefail

packages=(
  g++ cmake ninja-build pkg-config ccache         # toolchain
  libdnnl-dev                                     # oneDNN: CPU backend
  libboost-program-options-dev                    # configuration
  zlib1g-dev                                      # gzip IDX files
  libzmq3-dev cppzmq-dev                          # transport (ZeroMQ)
  capnproto libcapnp-dev                          # wire protocol (Cap'n Proto)
  libopenmpi-dev openmpi-bin                      # sync strategy and mpirun launch
  libgloo-dev                                     # sync strategy without mpirun (Gloo, TCP)
  libcpp-httplib-dev                              # tests: an HTTP client (the test build needs it)
  nlohmann-json3-dev libsimdjson-dev              # shoal serve: JSON replies, request parsing (HTTP: Boost.Beast)
  libturbojpeg0-dev libspng-dev                   # image data sets: JPEG and PNG decoding
  libyaml-cpp-dev                                 # model files (YAML)
  libonnx-dev libprotobuf-dev                     # ONNX export and import (libonnx-dev does not pull in protobuf's headers)
  libgtest-dev                                    # tests (the build configures them)
  dataset-fashion-mnist                           # the main job's data
)
test_packages=(
  iproute2                                        # tests: network namespaces (a pulled link)
  python3-yaml                                    # tests: the Kubernetes manifests
  python3-prometheus-client                       # tests: /metrics read by Prometheus' parser
  python3-opencv                                  # tests: ONNX exports run by OpenCV's DNN module
  openssh-server openssh-client                   # tests: the MPIJob's workers' sshd and its launcher's ssh
  python3-jsonschema                              # tests: JobSet and MPIJob objects against their CRD schemas
)
tests=true
[[ "${1:-}" == "--build" ]] && tests=false
$tests && packages+=("${test_packages[@]}")
if [[ "${1:-}" == "--bench" ]]; then
  # Benchmark peers. Without an optimised BLAS, Debian's PyTorch falls back to the reference
  # BLAS and runs 10x slower: the comparison would flatter Shoal.
  packages+=(python3-torch python3-numpy libopenblas0-pthread iperf3 python3-torchvision python3-pil
            wrk python3-flask gunicorn)  # bench/serve_throughput.py: wrk, and the Flask peer
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if $tests; then
  # tests: `kubectl kustomize` renders the manifests (k8s/). Debian's is kubernetes-client; a
  # kubectl from elsewhere (Google's repository) serves as well and must not be replaced.
  command -v kubectl >/dev/null || missing+=(kubernetes-client)
  # tests: the Kubernetes API types check (tests/k8s/api_types_test.py) runs the TypeScript
  # compiler on node; an existing node and npm serve as well.
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
fi
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The tests run sshd themselves, in network namespaces. Installing openssh-server on a machine
# that runs systemd also enables and starts a system ssh daemon on port 22: when this script
# installed it, that daemon is stopped and disabled again, so the machine listens on nothing new.
if [[ " ${missing[*]} " == *" openssh-server "* && -d /run/systemd/system ]]; then
  $sudo systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
  echo "setup: openssh-server is installed for the tests only; its system service is left disabled"
fi
echo "setup: done"
