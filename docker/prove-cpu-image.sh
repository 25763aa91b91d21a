#!/usr/bin/env bash
# Runs the CPU image's steps (docker/cpu.Dockerfile) without a Docker engine: each stage in a
# fresh Debian 12 root (a minbase debootstrap chroot, as ../shared/tools/fresh-machine.sh
# makes), with exactly the Dockerfile's commands, then trains a short job in the runtime root
# as the image's user (10001). Also checks the GPU image's bundle (docker/image-steps.sh bundle
# of this checkout's build/shoal, when it was built with CUDA): in a third fresh root holding
# only the bundle, Open MPI and the CUDA libraries (which NVIDIA's base image provides), the
# binary starts and trains on the CPU.
#   sudo docker/prove-cpu-image.sh          (root; the network that apt needs; ~20 min)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=${SHOAL_IMAGE_PROOF_DIR:-/tmp/shoal-image-proof}
base=$work/debian12
[[ $(id -u) -eq 0 ]] || { echo "prove-cpu-image: needs root (debootstrap, chroot)" >&2; exit 1; }

if [[ ! -x $base/bin/bash ]]; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  echo "== a minbase Debian 12 root (debootstrap)"
  debootstrap --variant=minbase bookworm "$base" http://deb.debian.org/debian >"$work.debootstrap.log" 2>&1
fi

mounted=()
unmount_all() { for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done; }
trap unmount_all EXIT
fresh_root() {  # a copy of the base with the mounts a build needs
  local root=$1
  rm -rf --one-file-system "$root"
  cp -a "$base" "$root"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
    rm -f "$root/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/"
  fi
  mount --bind /dev "$root/dev" && mounted+=("$root/dev")
  mount -t devpts devpts "$root/dev/pts" && mounted+=("$root/dev/pts")
  mount -t proc proc "$root/proc" && mounted+=("$root/proc")
  mount -t tmpfs tmpfs "$root/dev/shm" && mounted+=("$root/dev/shm")
}
in_root() {  # in_root ROOT DIR USER COMMAND...
  local root=$1 dir=$2 user=$3
  shift 3
  chroot --userspec="$user" "$root" /usr/bin/env -i HOME=/home/shoal PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    LD_LIBRARY_PATH="${LD_LIBRARY_PATH_IN_ROOT:-}" bash -c "cd $dir && $*"
}

echo "== build stage (FROM debian:12): COPY . /src; RUN docker/image-steps.sh build -DSHOAL_CUDA=OFF"
fresh_root "$work/build"
mkdir -p "$work/build/src"
git -C "$src" archive HEAD | tar -x -C "$work/build/src"
in_root "$work/build" /src 0:0 docker/image-steps.sh build -DSHOAL_CUDA=OFF

echo "== runtime stage (FROM debian:12-slim): RUN docker/image-steps.sh runtime-debian; COPY the binary, examples, ssh configs"
fresh_root "$work/runtime"
mkdir -p "$work/runtime/opt/shoal"
cp "$work/build/src/docker/image-steps.sh" "$work/runtime/opt/shoal/image-steps.sh"
in_root "$work/runtime" / 0:0 /opt/shoal/image-steps.sh runtime-debian
install -m 0755 "$work/build/src/build/shoal" "$work/build/src/build/shoal-main" "$work/runtime/usr/local/bin/"
cp -r "$work/build/src/examples" "$work/runtime/opt/shoal/examples"
install -m 0644 "$work/build/src/docker/sshd_config" "$work/runtime/etc/ssh/shoal_sshd_config"
install -m 0644 "$work/build/src/docker/ssh_config" "$work/runtime/etc/ssh/ssh_config.d/shoal.conf"

echo "== the image, as its user 10001: shoal version, then a local job"
in_root "$work/runtime" /home/shoal 10001:10001 shoal version
in_root "$work/runtime" /home/shoal 10001:10001 shoal launch --local /opt/shoal/examples/fashion_mnist_async.ini \
  --model=mlp --train.epochs=1 --data.train_limit=6000 --checkpoint.dir=/home/shoal/ckpt | tail -3
in_root "$work/runtime" /home/shoal 10001:10001 shoal keys generate /home/shoal/keys --servers 2 --workers 2
echo "== the image serves: shoal export, shoal predict, shoal serve (ready, then SIGTERM drains and exits 0)"
in_root "$work/runtime" /home/shoal 10001:10001 "shoal export /home/shoal/ckpt -o /home/shoal/model.onnx && \
  shoal predict /home/shoal/model.onnx --data /opt/shoal/examples/fashion_mnist_async.ini --limit 200 | tail -1"
in_root "$work/runtime" /home/shoal 10001:10001 '
  shoal serve /home/shoal/model.onnx --serve.port=18099 --serve.host=127.0.0.1 >serve.out 2>serve.err & pid=$!
  for i in $(seq 100); do grep -q "on port" serve.out 2>/dev/null && break; sleep 0.1; done
  exec 3<>/dev/tcp/127.0.0.1/18099
  printf "GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" >&3
  head -1 <&3
  kill -TERM $pid; wait $pid; echo "shoal serve exited $?"'

if ldd "$src/build/shoal-main" 2>/dev/null | grep -q libcudart; then
  echo "== the GPU image's bundle: a fresh root with only the bundle, Open MPI and CUDA's libraries"
  fresh_root "$work/bundle"
  (cd "$src" && docker/image-steps.sh bundle "$work/bundle/opt/shoal")
  cp "$src/docker/image-steps.sh" "$work/bundle/opt/shoal/image-steps.sh"
  in_root "$work/bundle" / 0:0 "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openmpi-bin >/dev/null && /opt/shoal/image-steps.sh user"
  mkdir -p "$work/bundle/usr/local/cuda"
  cp -a "$(readlink -f /usr/local/cuda)/lib" "$work/bundle/usr/local/cuda/lib"  # NVIDIA's base image has these
  mkdir -p "$work/bundle/usr/share/datasets"
  cp -r /usr/share/datasets/fashion-mnist "$work/bundle/usr/share/datasets/"
  cp -r "$src/examples" "$work/bundle/opt/shoal/examples"
  LD_LIBRARY_PATH_IN_ROOT=/opt/shoal/lib:/usr/local/cuda/lib in_root "$work/bundle" /home/shoal 10001:10001 \
    "/opt/shoal/bin/shoal version && /opt/shoal/bin/shoal launch --local /opt/shoal/examples/fashion_mnist_async.ini \
     --model=mlp --train.epochs=1 --data.train_limit=6000 --device=cpu | tail -2"
else
  echo "== (the GPU bundle is checked when build/shoal was built with CUDA)"
fi
echo "== the CPU image's steps built and ran on a fresh Debian 12"
