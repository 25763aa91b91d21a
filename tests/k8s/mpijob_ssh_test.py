#!/usr/bin/env python3
"""The MPIJob of k8s/mpijob/sync-mpijob.yaml started on this host as the Kubeflow MPI Operator
(v2beta1, Open MPI) starts it: over ssh, with a real sshd.

Every pod is a network namespace on one bridge with its own address, host name (a UTS
namespace), PID namespace (its command is PID 1, as in a container) and mount namespace. In
that mount namespace the pod gets what the image and the kubelet give it:

  - the image's user, made by the image's own step (`docker/image-steps.sh user`, on an overlay
    of /etc and an empty /home), and the image's ssh configuration: docker/sshd_config and
    docker/ssh_config installed where docker/gpu.Dockerfile's COPY lines put them;
  - an /etc/hosts that resolves every pod as the MPIJob's headless Service does;
  - the volumes of its container's volumeMounts, at their mount paths: the ConfigMap's files
    and the keys' Secret (from `shoal keys generate`) as the kubelet lays them out (read-only,
    ..data links, defaultMode, group fsGroup), the claim (which must be in the file) as one
    directory shared by the pods, an emptyDir in memory as a tmpfs; plus what the operator adds:
    its ssh Secret at sshAuthMountPath (id_rsa, id_rsa.pub, authorized_keys from an ECDSA P-521
    key in PEM, the operator's kind) and, in the launcher, /etc/mpi/hostfile (each worker's
    name with `slots=slotsPerWorker`);
  - the container's command, run as the pod's runAsUser/runAsGroup with fsGroup as a
    supplementary group, no new privileges (allowPrivilegeEscalation: false) and no
    capabilities (drop ALL), with the image's environment plus the operator's variables.

The workers run their command (sshd in the foreground with the image's sshd_config); once each
accepts connections on its port (the readiness probe), an ssh check from a launcher pod logs in
to worker 0 (and fails with another key), then the launcher runs its command (mpirun ... shoal
worker /etc/shoal/job.ini) with a small job's settings appended. The test checks the job ends
with exit 0 and its final accuracy, that every worker pod ran a rank, that the claim holds a
complete checkpoint written by the pods' user, and that each worker pod ends on SIGTERM (the
kubelet's deletion) within its terminationGracePeriodSeconds.

  mpijob_ssh_test.py SHOAL_BINARY SOURCE_DIR

Exit 77 (skipped, with the reason) without root, `ip`, `unshare`, `setpriv`, sshd, ssh,
ssh-keygen, mpirun, Python's yaml, overlayfs, or where network namespaces cannot be made.
"""
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import podsim  # noqa: E402

SHOAL, SOURCE = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
MANIFEST = os.path.join(SOURCE, "k8s", "mpijob", "sync-mpijob.yaml")
DOCKERFILE = os.path.join(SOURCE, "docker", "gpu.Dockerfile")  # the MPIJob's image: shoal-gpu
NAMESPACE = "default"
SUBNET = "10.79.0"
TAG = str(os.getpid())
# The job, made small (the ranks' command line, as an edited launcher command would).
SMALL = ["--model=mlp", "--train.epochs=1", "--data.train_limit=4096", "--data.test_limit=1000",
         "--threads=1"]
JOB_SECONDS = 45


def skip(reason):
    print("SKIP: MPIJob over ssh skipped: " + reason)
    sys.exit(77)


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


if os.geteuid() != 0:
    skip("it needs root (network, mount and PID namespaces)")
for tool in ("ip", "unshare", "setpriv", "ssh", "ssh-keygen", "mpirun"):
    if shutil.which(tool) is None:
        skip(f"no `{tool}` on the PATH")
try:
    import yaml
except ImportError:
    skip("Python's yaml module is missing (python3-yaml)")
with open("/proc/filesystems") as f:
    if not re.search(r"\boverlay$", f.read(), re.M):
        skip("the kernel has no overlayfs (the pods' /etc is an overlay)")


def run(argv, check=True, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.returncode}: {r.stderr.strip()}")
    return r


def by_kind(objects, kind):
    return {o["metadata"]["name"]: o for o in objects if o.get("kind") == kind}


def dockerfile_copy(source):
    """Where docker/gpu.Dockerfile's COPY puts SOURCE (the image's path of the repo's file)."""
    with open(DOCKERFILE) as f:
        for line in f:
            m = re.match(r"COPY\s+(\S+)\s+(\S+)\s*$", line.strip())
            if m and m.group(1) == source:
                return m.group(2)
    fail(f"{DOCKERFILE} does not COPY {source} into the image")


class Pod:
    def __init__(self, role, index, hostname, spec):
        self.role, self.hostname, self.spec = role, hostname, spec
        self.container = spec["containers"][0]
        self.netns = f"shoalmpi{TAG}p{index}"
        self.address = f"{SUBNET}.{10 + index}"
        self.index = index
        self.proc, self.log = None, None

    def service_names(self, job):
        # The operator's hostfile names pods NAME.JOB.NAMESPACE.svc; the kubelet's /etc/hosts
        # and cluster DNS also answer the .cluster.local form and the short names.
        base = f"{self.hostname}.{job}.{NAMESPACE}.svc"
        return [base + ".cluster.local", base, f"{self.hostname}.{job}", self.hostname]

    def init_pid(self):
        """The pod's PID 1, as this host sees it (the child of `unshare --fork`)."""
        if self.proc is None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                children = f.read().split()
            return int(children[0]) if children else None
        except OSError:
            return None

    def output(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class Cluster:
    """The bridge (in a namespace of its own) and a namespace per pod; all removed on exit."""

    def __init__(self, pods):
        self.pods, self.hub, self.made = pods, f"shoalmpi{TAG}hub", []

    def __enter__(self):
        try:
            run(["ip", "netns", "add", self.hub])
            self.made.append(self.hub)
            run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
            run(["ip", "-n", self.hub, "addr", "add", f"{SUBNET}.1/24", "dev", "br0"])
            run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
            for pod in self.pods:
                run(["ip", "netns", "add", pod.netns])
                self.made.append(pod.netns)
                podsim.plug(self.hub, pod.netns, pod.address, f"sm{TAG}h{pod.index}", f"sm{TAG}p{pod.index}")
            run(["ip", "netns", "exec", self.pods[0].netns, "ip", "link", "show", "eth0"])
        except Exception as e:  # noqa: BLE001 — any failure here means: no namespaces on this host
            self.__exit__(None, None, None)
            skip(f"cannot make network namespaces here: {e}")
        return self

    def __exit__(self, *exc):
        for pod in self.pods:
            kill_pod(pod, signal.SIGKILL)
        for ns in reversed(self.made):
            run(["ip", "netns", "del", ns], check=False)

    def reachable(self, pod, port):
        """The kubelet's tcpSocket probe, from the bridge's namespace."""
        r = run(["ip", "netns", "exec", self.hub, "bash", "-c", f"exec 3<>/dev/tcp/{pod.address}/{port}"],
                check=False, timeout=5)
        return r.returncode == 0


def kill_pod(pod, sig):
    """Signal the pod's PID 1 (SIGKILL ends its whole PID namespace); returns its exit code."""
    if pod.proc is None or pod.proc.poll() is not None:
        return pod.proc.returncode if pod.proc else None
    pid = pod.init_pid()
    if pid is not None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    if sig == signal.SIGKILL:
        pod.proc.kill()
        pod.proc.wait()
    return None


def kubelet_volume(path, files, mode, fs_group, item_modes=None):
    """A Secret or ConfigMap volume as the kubelet's atomic writer lays it out in PATH: the
    files in a timestamped folder, ..data pointing at it, and a link per key. Owned by root,
    group fsGroup (when set, with group read added)."""
    stamp = "..2026_01_01_00_00_00.000000001"
    os.makedirs(os.path.join(path, stamp))
    for name, data in files.items():
        p = os.path.join(path, stamp, name)
        with open(p, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        m = (item_modes or {}).get(name, mode)
        if fs_group is not None:
            m |= 0o440
            os.chown(p, 0, fs_group)
        os.chmod(p, m)
        os.symlink(os.path.join("..data", name), os.path.join(path, name))
    os.symlink(stamp, os.path.join(path, "..data"))
    if fs_group is not None:
        os.chown(os.path.join(path, stamp), 0, fs_group)
        os.chmod(os.path.join(path, stamp), 0o2755)


def main():
    with open(MANIFEST) as f:
        objects = [d for d in yaml.safe_load_all(f) if d]
    mpijob = by_kind(objects, "MPIJob")["shoal-sync"]
    config_maps, claims = by_kind(objects, "ConfigMap"), by_kind(objects, "PersistentVolumeClaim")
    spec = mpijob["spec"]
    job = mpijob["metadata"]["name"]
    if spec.get("mpiImplementation", "OpenMPI") != "OpenMPI":
        fail("the simulation starts Open MPI jobs; the MPIJob names " + spec["mpiImplementation"])
    slots = int(spec.get("slotsPerWorker", 1))
    ssh_path = spec.get("sshAuthMountPath", "/root/.ssh")
    launcher_spec = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    worker_replicas = int(spec["mpiReplicaSpecs"]["Worker"]["replicas"])
    worker_spec = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    worker_command = worker_spec["containers"][0].get("command")
    if not worker_command:
        fail("the Worker has no command: the operator would run `/usr/sbin/sshd -De` as the image's "
             "user, with the system sshd_config (port 22, host keys only root can read)")
    if not os.access(worker_command[0], os.X_OK):
        skip(f"{worker_command[0]} (the Worker's command) is not installed here (openssh-server)")

    sshd_config = dockerfile_copy("docker/sshd_config")
    ssh_config = dockerfile_copy("docker/ssh_config")
    if sshd_config not in worker_command:
        fail(f"the Worker's command {worker_command} does not run the image's sshd_config {sshd_config}")
    with open(os.path.join(SOURCE, "docker", "sshd_config")) as f:
        port = int(re.search(r"^Port\s+(\d+)", f.read(), re.M).group(1))

    pods = [Pod("launcher", 0, f"{job}-launcher", launcher_spec)]
    pods += [Pod("worker", 1 + i, f"{job}-worker-{i}", worker_spec) for i in range(worker_replicas)]
    workers = pods[1:]

    work = tempfile.mkdtemp(prefix="shoal-mpijob-")
    os.chmod(work, 0o755)
    made_mount_points = []
    try:
        with Cluster(pods) as cluster:
            run_job(cluster, pods, workers, job, slots, ssh_path, config_maps, claims, sshd_config, ssh_config,
                    port, work, made_mount_points)
    finally:
        for p in reversed(made_mount_points):
            try:
                os.rmdir(p)
            except OSError:
                pass
        shutil.rmtree(work, ignore_errors=True)


def run_job(cluster, pods, workers, job, slots, ssh_path, config_maps, claims, sshd_config, ssh_config, port,
            work, made_mount_points):
    t0 = time.monotonic()
    # The operator's ssh Secret: an ECDSA P-521 key in PEM ("EC PRIVATE KEY") under the name
    # id_rsa, its public half as id_rsa.pub and authorized_keys (no comment).
    keygen = os.path.join(work, "operator-key")
    run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "521", "-m", "PEM", "-N", "", "-C", "", "-f", keygen])
    with open(keygen) as f:
        private = f.read()
    if not private.startswith("-----BEGIN EC PRIVATE KEY-----"):
        fail("ssh-keygen did not write the operator's key format (PEM, EC PRIVATE KEY)")
    with open(keygen + ".pub") as f:
        public = " ".join(f.read().split()[:2]) + "\n"
    # Another key, to check that sshd refuses it (mounted in the check's pod at /run/stranger).
    stranger = os.path.join(work, "stranger")
    os.makedirs(stranger)
    run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "521", "-m", "PEM", "-N", "", "-C", "", "-f",
         os.path.join(stranger, "id")])
    os.chmod(os.path.join(stranger, "id"), 0o644)

    # The user's Secret of CURVE keys: for every rank (the job's cluster.workers = -np).
    launcher_command = pods[0].container["command"]
    ranks = int(launcher_command[launcher_command.index("-np") + 1])
    curve = os.path.join(work, "curve-keys")
    gen = run([SHOAL, "keys", "generate", curve, "--servers", "0", "--workers", str(ranks)], check=False)
    if gen.returncode != 0:
        fail("shoal keys generate: " + gen.stderr)
    hostfile = "".join(f"{w.service_names(job)[1]} slots={slots}\n" for w in workers)
    hosts = "127.0.0.1\tlocalhost\n" + "".join(f"{p.address}\t{' '.join(p.service_names(job))}\n" for p in pods)
    with open(os.path.join(work, "hosts"), "w") as f:
        f.write(hosts)

    claim_dirs = {}
    for pod in pods:
        pod.log = os.path.join(work, f"{pod.hostname}.log")
        sc = pod.spec.get("securityContext", {})
        uid, gid, fs_group = sc.get("runAsUser"), sc.get("runAsGroup"), sc.get("fsGroup")
        if uid is None or uid == 0:
            fail(f"{pod.hostname}: no non-root runAsUser in the pod's securityContext")
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        mounts = []  # (kind, mount path, staged folder or option)
        stage = os.path.join(work, "volumes", pod.hostname)
        for m in pod.container.get("volumeMounts", []):
            v = volumes.get(m["name"])
            if v is None:
                fail(f"{pod.hostname}: volumeMount {m['name']} names no volume of the pod")
            src = os.path.join(stage, m["name"])
            if "configMap" in v:
                name = v["configMap"]["name"]
                if name not in config_maps:
                    fail(f"{pod.hostname}: ConfigMap {name} is not in {MANIFEST}")
                kubelet_volume(src, config_maps[name]["data"], v["configMap"].get("defaultMode", 0o644), fs_group)
                mounts.append(("tmpfs-ro", m["mountPath"], src))
            elif "secret" in v:
                files = {}
                for name in sorted(os.listdir(curve)):
                    with open(os.path.join(curve, name), "rb") as f:
                        files[name] = f.read()
                kubelet_volume(src, files, v["secret"].get("defaultMode", 0o644), fs_group)
                mounts.append(("tmpfs-ro", m["mountPath"], src))
            elif "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                if claim not in claims:
                    fail(f"{pod.hostname}: the claim {claim} is not in {MANIFEST}: `kubectl apply -f` of the "
                         "file leaves the worker pods Pending")
                if "ReadWriteMany" not in claims[claim]["spec"]["accessModes"]:
                    fail(f"the claim {claim} is mounted by {len(workers)} pods on different nodes: ReadWriteMany")
                path = claim_dirs.setdefault(claim, os.path.join(work, "claim-" + claim))
                if not os.path.isdir(path):
                    os.makedirs(path)
                    if fs_group is not None:  # the kubelet gives the volume's root to fsGroup
                        os.chown(path, 0, fs_group)
                        os.chmod(path, 0o2775)
                mounts.append(("bind", m["mountPath"], path))
            elif "emptyDir" in v:
                mounts.append(("tmpfs", m["mountPath"], "mode=1777"))
            else:
                fail(f"{pod.hostname}: volume {m['name']} is of a kind the simulation does not give")
        # What the operator adds to the first container: its ssh Secret, and the launcher's hostfile.
        src = os.path.join(stage, "ssh-auth")
        kubelet_volume(src, {"id_rsa": private, "id_rsa.pub": public, "authorized_keys": public},
                       0o600 if ssh_path == "/root/.ssh" else 0o644, fs_group)
        mounts.append(("tmpfs-ro", ssh_path, src))
        env = {}
        if pod.role == "launcher":
            src = os.path.join(stage, "mpi-job-config")
            kubelet_volume(src, {"hostfile": hostfile, "discover_hosts.sh": "#!/bin/sh\n" + "".join(
                f"echo {line.split()[0]}:{slots}\n" for line in hostfile.splitlines())},
                0o644, fs_group, {"hostfile": 0o444, "discover_hosts.sh": 0o555})
            mounts.append(("tmpfs-ro", "/etc/mpi", src))
            env.update({"K_MPI_JOB_ROLE": "launcher", "OMPI_MCA_orte_keep_fqdn_hostnames": "true",
                        "OMPI_MCA_orte_default_hostfile": "/etc/mpi/hostfile",
                        "OMPI_MCA_plm_rsh_args": "-o ConnectionAttempts=10",
                        "OMPI_MCA_orte_set_default_slots": str(slots),
                        "NVIDIA_VISIBLE_DEVICES": "", "NVIDIA_DRIVER_CAPABILITIES": ""})
        else:
            env["K_MPI_JOB_ROLE"] = "worker"
        for e in pod.container.get("env", []):
            if "value" not in e:
                fail(f"{pod.hostname}: env {e['name']} comes from something the simulation does not give")
            env[e["name"]] = str(e["value"])
        for _, path, _ in mounts:  # mount points outside the pod's own /etc, /home, /tmp, /dev
            top = "/" + path.strip("/").split("/")[0]
            if top not in ("/etc", "/home", "/tmp", "/dev", "/var") and not os.path.exists(path):
                os.makedirs(path)
                made_mount_points.append(path)
        pod.mounts, pod.env, pod.ids = mounts, env, (uid, gid if gid is not None else uid, fs_group)

    def script(pod, command, extra_env=None):
        """The pod's PID 1: as root, the image and the kubelet's part; then the container."""
        uid, gid, fs_group = pod.ids
        sc = pod.container.get("securityContext", {})
        scratch = os.path.join(work, "root-" + pod.hostname + "-" + str(time.monotonic_ns()))
        os.makedirs(scratch)
        lines = ["set -eu", f"hostname {shlex.quote(pod.hostname)}",
                 f"mount -t tmpfs -o mode=0700 tmpfs {scratch}", f"mkdir {scratch}/upper {scratch}/work",
                 f"mount -t overlay overlay -o lowerdir=/etc,upperdir={scratch}/upper,workdir={scratch}/work /etc",
                 "mount -t tmpfs -o mode=0755 tmpfs /home",
                 "mount -t tmpfs -o mode=0755 tmpfs /var/log",
                 # The image: its user (the Dockerfile's RUN) and its ssh configuration (COPY).
                 f"{shlex.quote(os.path.join(SOURCE, 'docker', 'image-steps.sh'))} user >/dev/null",
                 f"install -D -m 0644 {shlex.quote(os.path.join(SOURCE, 'docker', 'sshd_config'))} {sshd_config}",
                 f"install -D -m 0644 {shlex.quote(os.path.join(SOURCE, 'docker', 'ssh_config'))} {ssh_config}",
                 # The kubelet: /etc/hosts and the volumes.
                 f"cat {work}/hosts >/etc/hosts"]
        for kind, path, src in pod.mounts:
            q = shlex.quote(path)
            if kind == "tmpfs-ro":
                lines += [f"mkdir -p {q}", f"mount -t tmpfs -o mode=0755 tmpfs {q}",
                          f"cp -a {shlex.quote(src)}/. {q}/", f"mount -o remount,ro {q}"]
            elif kind == "bind":
                lines += [f"mkdir -p {q}", f"mount --bind {shlex.quote(src)} {q}"]
            else:
                lines += [f"mkdir -p {q}", f"mount -t tmpfs -o {src} tmpfs {q}"]
        # The pod's own /tmp last: the test's folder (the volumes' sources) is in the host's.
        lines.append("mount -t tmpfs -o mode=1777 tmpfs /tmp")
        home = f"$(getent passwd {uid} | cut -d: -f6)"
        lines.append(f'cd "{home}"')
        priv = ["setpriv", f"--reuid={uid}", f"--regid={gid}"]
        priv += [f"--groups={fs_group}"] if fs_group is not None else ["--clear-groups"]
        if sc.get("allowPrivilegeEscalation") is False:
            priv.append("--no-new-privs")
        if "ALL" in sc.get("capabilities", {}).get("drop", []):
            priv += ["--inh-caps=-all", "--bounding-set=-all"]
        # The image's environment (docker/gpu.Dockerfile's ENV: /opt/shoal/bin is the build
        # folder here), what the runtime sets, and the operator's and the container's variables.
        env = {"PATH": f"{os.path.dirname(SHOAL)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LD_LIBRARY_PATH": "/opt/shoal/lib:/usr/local/nvidia/lib:/usr/local/nvidia/lib64",
               "HOSTNAME": pod.hostname}
        env.update(pod.env)
        env.update(extra_env or {})
        env_words = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
        lines.append(f'exec {" ".join(priv)} env -i HOME="{home}" {env_words} '
                     + " ".join(shlex.quote(a) for a in command))
        path = os.path.join(work, f"{pod.hostname}-{time.monotonic_ns()}.sh")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(pod, command, log=None):
        out = open(log or pod.log, "w")
        return subprocess.Popen(["ip", "netns", "exec", pod.netns, "unshare", "--mount", "--uts", "--pid", "--fork",
                                 "--mount-proc", "--propagation", "private", "bash", script(pod, command)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    # The workers: their command (sshd in the foreground), then readiness on the ssh port.
    for w in workers:
        w.proc = start(w, w.container["command"] + w.container.get("args", []))
    deadline = time.monotonic() + 30
    for w in workers:
        while not cluster.reachable(w, port):
            if w.proc.poll() is not None:
                fail(f"{w.hostname}'s command ended ({w.proc.returncode}) before accepting connections on "
                     f"{port}:\n{w.output()}")
            if time.monotonic() > deadline:
                fail(f"{w.hostname} does not accept connections on {port} (its readiness probe):\n{w.output()}")
            time.sleep(0.1)
    print(f"{len(workers)} worker pods run sshd as uid {workers[0].ids[0]} and accept connections on port {port} "
          f"({time.monotonic() - t0:.1f} s)")

    # An ssh login from a launcher pod, with the operator's options: the image's user, the
    # session's PATH (without the image's: why the launcher's mpirun forwards it with -x); a key
    # not in authorized_keys is refused.
    target = workers[0].service_names(job)[1]
    check = pods[0]
    check_log = os.path.join(work, "ssh-check.log")
    probe = ("ssh -o ConnectionAttempts=10 {t} 'echo user=$(id -un) uid=$(id -u) host=$(hostname) path=$PATH'; "
             "echo login=$?; ssh -F /dev/null -p {p} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
             "-o BatchMode=yes -i /run/stranger/id {t} true 2>&1; echo stranger=$?").format(t=target, p=port)
    check.mounts.append(("tmpfs-ro", "/run/stranger", stranger))
    p = start(check, ["bash", "-c", probe], log=check_log)
    check.mounts.pop()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        fail("the ssh check did not end in 30 s:\n" + open(check_log).read())
    out = open(check_log, errors="replace").read()
    if "login=0" not in out or f"user=shoal uid={workers[0].ids[0]} host={workers[0].hostname}" not in out:
        fail(f"ssh from the launcher pod to {target} as the image's user failed:\n{out}\n--- {workers[0].hostname}:\n"
             + workers[0].output())
    if "stranger=0" in out or "Permission denied" not in out:
        fail(f"sshd let in a key that is not the job's:\n{out}")
    session_path = re.search(r"path=(\S*)", out).group(1)
    if os.path.dirname(SHOAL) in session_path.split(":"):
        fail(f"the ssh session's PATH has the image's bin folder ({session_path}): the check proves nothing")
    print(f"ssh: the launcher logs in to {target} as shoal (session PATH {session_path}); another key is refused")

    # The launcher: its command, with the small job's settings.
    launcher = pods[0]
    command = launcher.container["command"] + launcher.container.get("args", []) + SMALL
    started = time.monotonic()
    launcher.proc = start(launcher, command)
    try:
        code = launcher.proc.wait(timeout=JOB_SECONDS)
    except subprocess.TimeoutExpired:
        kill_pod(launcher, signal.SIGKILL)
        fail(f"the launcher did not end in {JOB_SECONDS} s:\n{launcher.output()[-6000:]}")
    out = launcher.output()
    job_seconds = time.monotonic() - started
    if code != 0:
        fail(f"the launcher's mpirun exited {code}:\n{out[-8000:]}\n--- {workers[0].hostname}:\n"
             + workers[0].output()[-3000:])
    if "final test accuracy" not in out:
        fail("the job ended without its final accuracy:\n" + out[-6000:])
    print(f"the launcher's `{' '.join(launcher.container['command'][:2])} ... shoal worker` ended 0 in "
          f"{job_seconds:.1f} s: {re.search(r'.*final test accuracy.*', out).group(0).strip()}")

    # Every worker pod ran its slots' ranks, over MPI: a rank's log names its pod's host name.
    for w in workers:
        found = re.findall(rf"\[worker\.\d+ {re.escape(w.hostname)}:\d+\] registered as worker\.\d+; all-reduce "
                           r"over mpi \(Open MPI, rank \d+ of (\d+)\)", out)
        if len(found) != slots or any(int(n) != ranks for n in found):
            fail(f"{w.hostname} ran {len(found)} rank(s) of the {ranks}-rank world, not slotsPerWorker = {slots}:\n"
                 + out[-6000:])

    # The claim holds a complete checkpoint, written by the pods' user.
    claim = next(iter(claim_dirs.values()), None)
    if claim is None:
        fail("no claim mounted: the checkpoints would die with their pod")
    latest = os.path.join(claim, "LATEST")
    if not os.path.isfile(latest):
        fail(f"no checkpoint in the claim: {sorted(os.listdir(claim))}\n{out[-4000:]}")
    with open(latest) as f:
        ckpt = os.path.join(claim, f.read().strip())
    if not os.path.isfile(os.path.join(ckpt, "MANIFEST")):
        fail(f"{ckpt} has no MANIFEST: {os.listdir(ckpt) if os.path.isdir(ckpt) else 'missing'}")
    owners = {os.stat(os.path.join(ckpt, n)).st_uid for n in os.listdir(ckpt)}
    if owners != {workers[0].ids[0]}:
        fail(f"{ckpt}'s files are owned by {owners}, not the pods' user {workers[0].ids[0]}")
    print(f"the claim holds {os.path.basename(ckpt)} ({len(os.listdir(ckpt))} files, MANIFEST last), owned by uid "
          f"{workers[0].ids[0]}")

    # The operator deletes the workers (cleanPodPolicy): SIGTERM to each pod's PID 1, sshd.
    for w in workers:
        if w.proc.poll() is not None:
            fail(f"{w.hostname}'s sshd ended ({w.proc.returncode}) before its pod was deleted:\n{w.output()}")
    grace = int(workers[0].spec.get("terminationGracePeriodSeconds", 30))
    ended = time.monotonic()
    for w in workers:
        kill_pod(w, signal.SIGTERM)
    for w in workers:
        try:
            w.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            fail(f"{w.hostname}'s sshd did not end within terminationGracePeriodSeconds ({grace} s) of SIGTERM")
    print(f"SIGTERM ended every worker pod's sshd in {time.monotonic() - ended:.2f} s (grace {grace} s); "
          f"the whole simulation took {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
