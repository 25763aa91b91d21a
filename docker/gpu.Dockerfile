# Shoal's GPU image: NVIDIA's CUDA 13 + cuDNN runtime image (Ubuntu 24.04), with the binary
# built on Debian 12 against NVIDIA's toolkit, cuDNN and NCCL (taken from NVIDIA's devel image)
# and carried with the Debian libraries it links (docker/image-steps.sh bundle). Open MPI comes
# from the runtime image's own packages (mpirun and libmpi.so.40 must match; 4.1 keeps its ABI).
# Runs as the unprivileged user shoal (10001).
#   docker build -f docker/gpu.Dockerfile -t shoal-gpu .
# Not built or run by this project's checks yet (no Docker engine and no GPU on its machines);
# docker/prove-cpu-image.sh checks the bundle's completeness on a fresh Debian 12 root.
ARG CUDA_VERSION=13.0.0
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu24.04 AS cuda

FROM debian:12 AS build
COPY --from=cuda /usr/local/cuda /usr/local/cuda
# NVIDIA's images keep cuDNN and NCCL in the system directories: beside the toolkit here,
# where Shoal's CMake looks for them.
COPY --from=cuda /usr/include/x86_64-linux-gnu/cudnn*.h /usr/include/nccl*.h /usr/local/cuda/include/
COPY --from=cuda /usr/lib/x86_64-linux-gnu/libcudnn* /usr/lib/x86_64-linux-gnu/libnccl* /usr/local/cuda/lib64/
COPY . /src
WORKDIR /src
RUN docker/image-steps.sh cuda-layout /usr/local/cuda
RUN docker/image-steps.sh build && docker/image-steps.sh bundle /opt/shoal

ARG CUDA_VERSION
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu24.04
# mpirun, and ssh for an MPIJob (k8s/mpijob): its workers run sshd as the user shoal, its
# launcher's mpirun starts the ranks through ssh (docker/sshd_config, docker/ssh_config).
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openmpi-bin \
    openssh-server openssh-client \
    && rm -rf /var/lib/apt/lists/*
COPY docker/sshd_config /etc/ssh/shoal_sshd_config
COPY docker/ssh_config /etc/ssh/ssh_config.d/shoal.conf
COPY --from=build /opt/shoal /opt/shoal
COPY --from=build /usr/share/datasets/fashion-mnist /usr/share/datasets/fashion-mnist
COPY examples /opt/shoal/examples
COPY docker/image-steps.sh /opt/shoal/image-steps.sh
RUN /opt/shoal/image-steps.sh user
# The carried libraries first; NVIDIA's driver libraries where the container toolkit mounts them.
ENV PATH=/opt/shoal/bin:$PATH \
    LD_LIBRARY_PATH=/opt/shoal/lib:/usr/local/nvidia/lib:/usr/local/nvidia/lib64
USER 10001:10001
WORKDIR /home/shoal
ENTRYPOINT ["shoal"]
CMD ["version"]
