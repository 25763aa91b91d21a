# Shoal's CPU image: Debian 12, built with the project's own setup and build scripts, run as
# the unprivileged user shoal (10001). docker/prove-cpu-image.sh runs these very steps on a fresh
# Debian 12 root (no Docker engine needed) and trains a job with the result.
#   docker build -f docker/cpu.Dockerfile -t shoal-cpu .
FROM debian:12 AS build
COPY . /src
WORKDIR /src
RUN docker/image-steps.sh build -DSHOAL_CUDA=OFF

FROM debian:12-slim
COPY docker/image-steps.sh /opt/shoal/image-steps.sh
RUN /opt/shoal/image-steps.sh runtime-debian
# shoal (the entry: blocks SIGINT/SIGTERM, then runs shoal-main beside it) and the program.
COPY --from=build /src/build/shoal /src/build/shoal-main /usr/local/bin/
COPY examples /opt/shoal/examples
# ssh for an MPIJob (k8s/mpijob): the workers' sshd, run as the user shoal, and the launcher's client.
COPY docker/sshd_config /etc/ssh/shoal_sshd_config
COPY docker/ssh_config /etc/ssh/ssh_config.d/shoal.conf
USER 10001:10001
WORKDIR /home/shoal
ENTRYPOINT ["shoal"]
CMD ["version"]
