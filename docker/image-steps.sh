#!/usr/bin/env bash
# The steps of Shoal's container images, one per stage, so that the Dockerfiles
# (docker/cpu.Dockerfile, docker/gpu.Dockerfile) and the check that runs them on a fresh
# Debian 12 root without a Docker engine (docker/prove-cpu-image.sh) run exactly the same ones.
#
#   docker/image-steps.sh build [CMAKE ARGS]  in the source tree: the project's own
#                                             launch/setup-debian.sh (--build: no test tools)
#                                             and launch/build.sh, building `shoal` alone
#   docker/image-steps.sh bundle DEST         the binary and every shared library it needs
#                                             that neither glibc, the CUDA base image nor
#                                             Open MPI provides, into DEST/bin and DEST/lib
#   docker/image-steps.sh runtime-debian      on Debian 12: the runtime packages, the data
#                                             set, and the unprivileged user `shoal` (10001)
#   docker/image-steps.sh user                the unprivileged user alone (the GPU image)
#   docker/image-steps.sh cuda-layout [DIR]   NVIDIA's cuDNN copied into DIR (/usr/local/cuda):
#                                             the plain header and library names it reaches
#                                             through /etc/alternatives in NVIDIA's image
set -euo pipefail

# What the binary needs at run time on Debian 12 (docs/dependencies.md): the libraries behind
# its -dev packages, mpirun for jobs launched by mpirun, and the quickstart's data set.
# libonnx1 and libprotobuf32: ONNX's library (libonnx-dev) behind `shoal export` and the .onnx
# models `shoal serve` loads. (The GPU image needs no list: `bundle` carries what ldd finds.)
# openssh-server and openssh-client: an MPIJob's workers run sshd and its launcher's mpirun
# reaches them with ssh (docker/sshd_config, docker/ssh_config, k8s/mpijob).
runtime_packages=(
  libzmq5 libcapnp-0.9.2 libdnnl2 libboost-program-options1.74.0 libgomp1 libstdc++6 zlib1g
  libopenmpi3 openmpi-bin libgloo0 libturbojpeg0 libspng0 libyaml-cpp0.7
  libonnx1 libprotobuf32 libsimdjson14
  openssh-server openssh-client
  dataset-fashion-mnist
)

add_user() {
  # The manifests run every container as 10001:10001 (runAsNonRoot). A real shell: sshd runs
  # the commands of mpirun's remote starts (an MPIJob's orted) with the user's login shell.
  getent group shoal >/dev/null || groupadd --gid 10001 shoal
  getent passwd shoal >/dev/null || useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash shoal
}

case "${1:-}" in
  build)
    shift
    launch/setup-debian.sh --build
    SHOAL_TARGETS=shoal launch/build.sh "$@"  # the entry and shoal-main (and the CUDA module)
    build/shoal version
    ;;
  bundle)
    dest=${2:?usage: image-steps.sh bundle DEST}
    mkdir -p "$dest/bin" "$dest/lib"
    # shoal (the entry, static: blocks SIGINT/SIGTERM, then runs shoal-main beside it) and the program.
    install -m 0755 build/shoal build/shoal-main "$dest/bin/"
    # The CUDA module (when built), beside the binary: where a process that uses a GPU loads it.
    binaries=(build/shoal-main)
    if [[ -f build/libshoal_cuda.so ]]; then
      install -m 0644 build/libshoal_cuda.so "$dest/bin/libshoal_cuda.so"
      binaries+=(build/libshoal_cuda.so)
    fi
    # Every library ldd resolves, except glibc's own (the base image's), CUDA's (NVIDIA's base
    # image has them) and Open MPI's (the image installs its mpirun with the matching library).
    ldd "${binaries[@]}" | awk '$3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
      case "$(basename "$lib")" in
        libc.so.*|libm.so.*|libdl.so.*|libpthread.so.*|librt.so.*|ld-linux*|libresolv.so.*) continue ;;
        libcuda*|libcudnn*|libcublas*|libnccl*|libcudart*) continue ;;
        libmpi.so.*|libmpi_cxx.so.*|libopen-pal.so.*|libopen-rte.so.*|libhwloc.so.*|libevent*) continue ;;
      esac
      cp -L "$lib" "$dest/lib/"
    done
    ;;
  runtime-debian)
    export DEBIAN_FRONTEND=noninteractive
    # openssh-server's scripts would start a system sshd where an init runs (a build root):
    # services are not started during the image's build.
    no_services=false
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && no_services=true
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${runtime_packages[@]}" >/dev/null
    ! $no_services || rm -f /usr/sbin/policy-rc.d
    rm -rf /var/lib/apt/lists/*
    add_user
    ;;
  user)
    add_user
    ;;
  cuda-layout)
    # NVIDIA's packages name cuDNN's headers cudnn*_v9.h and point cudnn.h, libcudnn.so, ... at
    # them through /etc/alternatives, which a COPY into another stage does not bring along (the
    # links dangle there, or are missing): make the plain names beside the versioned files.
    cuda=${2:-/usr/local/cuda}
    for h in "$cuda"/include/cudnn*_v[0-9]*.h; do
      [[ -e $h ]] || continue
      plain=${h%_v[0-9]*.h}.h
      [[ -e $plain ]] || ln -sfn "$(basename "$h")" "$plain"
    done
    for l in "$cuda"/lib64/libcudnn*.so.[0-9] "$cuda"/lib64/libnccl.so.[0-9]; do
      [[ -e $l ]] || continue
      plain=${l%.[0-9]}
      [[ -e $plain ]] || ln -sfn "$(basename "$l")" "$plain"
    done
    ;;
  *)
    sed -n '2,16p' "$0" >&2
    exit 2
    ;;
esac
