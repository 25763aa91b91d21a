"""Pods of a rendered Shoal deployment simulated on this host, for the Kubernetes simulations
(statefulset_sim_test.py, jobs_sim_test.py): every pod is a network namespace with its own
address on one bridge, its own host name (shoal-worker-1) and an /etc/hosts that resolves every
pod as its headless Service would (shoal-ps-1.shoal-ps and ...svc.cluster.local). A pod runs its
container's command line and environment from the rendered manifests (tests/k8s/workloads.py:
env, envFrom, the downward API as its kind of pod gets it); volume mounts are directories of the
test: the ConfigMap's job.ini, each role's Secret of keys (`shoal keys generate --per-role`),
the shared checkpoint claim. Its output is kept, and its termination message is made as the
kubelet makes it for `terminationMessagePolicy: FallbackToLogsOnError`.
"""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import workloads

NAMESPACE = "default"
PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
# FallbackToLogsOnError: the last 80 lines or 2048 bytes of the log, whichever is less.
MESSAGE_LINES, MESSAGE_BYTES = 80, 2048


def skip(what, reason):
    print(f"SKIP: {what} skipped: {reason}")
    sys.exit(77)


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def require(what):
    """Exit 77, naming the reason, where namespaces cannot be made here."""
    if os.geteuid() != 0:
        skip(what, "it needs root (to make network namespaces)")
    for tool in ("ip", "unshare", "kubectl"):
        if shutil.which(tool) is None:
            skip(what, f"no `{tool}` on the PATH")
    try:
        import yaml  # noqa: F401
    except ImportError:
        skip(what, "Python's yaml module is missing (python3-yaml)")


def run(argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.returncode}: {r.stderr.strip()}")
    return r


def plug(hub, netns, address, hub_end, pod_end):
    """Joins network namespace `netns` to the bridge br0 of namespace `hub` by a veth pair: the
    pod's end is its eth0 with `address`/24, and its loopback is up."""
    hub_end, pod_end = hub_end[-15:], pod_end[-15:]  # interface names: 15 characters at most
    run(["ip", "-n", hub, "link", "add", hub_end, "type", "veth", "peer", "name", pod_end, "netns", netns])
    run(["ip", "-n", hub, "link", "set", hub_end, "master", "br0", "up"])
    run(["ip", "-n", netns, "link", "set", pod_end, "name", "eth0"])
    run(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])


class Pod:
    """A pod (workloads.ShoalPod) as a network namespace, and the processes started in it."""

    def __init__(self, shoal_pod, slot, tag, subnet):
        self.k8s = shoal_pod
        self.name, self.role, self.index = shoal_pod.name, shoal_pod.role, shoal_pod.index
        self.container = shoal_pod.container
        self.netns = f"shoalsim{tag}p{slot}"
        self.address = f"{subnet}.{10 + slot}"
        self.fqdn = f"{shoal_pod.fqdn}.{NAMESPACE}.svc.cluster.local"
        self.proc, self.lines, self.starts, self.exits = None, [], 0, []
        self.extra_env = {}

    def hosts_line(self):
        return f"{self.address}\t{self.fqdn} {self.k8s.fqdn} {self.name}\n"

    def output(self, run=None):
        """Everything the pod printed, or only its run-th start's (1, 2, ...)."""
        text = "".join(self.lines)
        if run is None:
            return text
        return text.split(f"--- start {run}\n", 1)[-1].split(f"--- start {run + 1}\n", 1)[0]

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self):
        """The container's exit code as the kubelet reports it: 128 + n for signal n."""
        code = self.proc.returncode
        return 128 - code if code < 0 else code

    def termination_message(self):
        """FallbackToLogsOnError: the tail of the last run's log, when it failed."""
        self.reader.join(10)  # every line the process wrote
        if self.exit_code() == 0:
            return ""
        tail = "".join(self.output(self.starts).splitlines(keepends=True)[-MESSAGE_LINES:])
        return tail.encode()[-MESSAGE_BYTES:].decode(errors="replace")


class Cluster:
    """The bridge and one namespace per pod; removed on exit."""

    def __init__(self, pods, tag, subnet, what):
        self.pods, self.hub, self.subnet, self.what = pods, f"shoalsim{tag}hub", subnet, what
        self.tag, self.made = tag, []

    def __enter__(self):
        try:
            run(["ip", "netns", "add", self.hub])
            self.made.append(self.hub)
            run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
            run(["ip", "-n", self.hub, "addr", "add", f"{self.subnet}.1/24", "dev", "br0"])
            run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
            hosts = "127.0.0.1\tlocalhost\n" + "".join(p.hosts_line() for p in self.pods)
            for i, pod in enumerate(self.pods):
                run(["ip", "netns", "add", pod.netns])
                self.made.append(pod.netns)
                plug(self.hub, pod.netns, pod.address, f"sh{self.tag}h{i}", f"sh{self.tag}p{i}")
                # `ip netns exec` binds /etc/netns/NAME/hosts over /etc/hosts: the headless
                # Services' names, as cluster DNS would answer them.
                os.makedirs(f"/etc/netns/{pod.netns}", exist_ok=True)
                with open(f"/etc/netns/{pod.netns}/hosts", "w") as f:
                    f.write(hosts)
            run(["ip", "netns", "exec", self.pods[0].netns, "ip", "link", "show", "eth0"])
        except Exception as e:  # noqa: BLE001 — any failure here means: no namespaces on this host
            self.__exit__(None, None, None)
            skip(self.what, f"cannot make network namespaces here: {e}")
        return self

    def __exit__(self, *exc):
        for pod in self.pods:
            if pod.running():
                pod.proc.kill()
                pod.proc.wait()
        for ns in reversed(self.made):
            run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)

    def ready(self, pod):
        """The readiness probe: GET /readyz on the pod's metrics port answers 200."""
        r = run(["ip", "netns", "exec", self.hub, "python3", "-c",
                 "import urllib.request,sys\n"
                 f"sys.exit(0 if urllib.request.urlopen('http://{pod.address}:9400/readyz',"
                 "timeout=2).status == 200 else 1)"], check=False)
        return r.returncode == 0


def role_keys(shoal, directory, servers, workers):
    """The job's keys, one folder per role as the Secrets shoal-keys-<role> hold them:
    `shoal keys generate --per-role` where this build has it, else the flat files copied into
    role folders (a worker's with server.key too: this build cannot read server.pub). Returns
    ({role: folder}, how)."""
    usage = run([shoal, "keys"], check=False).stderr
    per_role = "--per-role" in usage
    argv = [shoal, "keys", "generate", directory, "--servers", str(servers), "--workers", str(workers)]
    gen = run(argv + (["--per-role"] if per_role else []), check=False)
    if gen.returncode != 0:
        fail("shoal keys generate: " + gen.stderr)
    folders = {role: os.path.join(directory, role) for role in workloads.ROLES}
    if per_role:
        return folders, "shoal keys generate --per-role"
    for role, folder in folders.items():
        os.makedirs(folder)
        mine = {"coordinator": ["coordinator.key"], "ps": [f"ps.{i}.key" for i in range(servers)],
                "worker": [f"worker.{i}.key" for i in range(workers)]}[role]
        for name in ["members", "server.key"] + mine:
            shutil.copy(os.path.join(directory, name), folder)
    return folders, "the flat keys copied into role folders (this shoal has no --per-role yet)"


class Deployment:
    """The rendered objects, the pods as namespaces' processes, their volumes (directories of
    `work`), and how to start, stop and watch them."""

    def __init__(self, shoal, objects, work, small_env, tag, subnet):
        self.shoal, self.objects, self.work, self.small_env = shoal, objects, work, small_env
        self.pods = [Pod(p, i, tag, subnet) for i, p in enumerate(workloads.shoal_pods(objects))]
        counts = {role: sum(p.role == role for p in self.pods) for role in workloads.ROLES}
        self.keys, self.keys_how = role_keys(shoal, os.path.join(work, "keys"), counts["ps"], counts["worker"])
        self.volumes = {}  # pod name -> {mountPath: host directory}
        for pod in self.pods:
            volumes = {v["name"]: v for v in pod.k8s.spec["volumes"]}
            mine = {}
            for m in pod.container.get("volumeMounts", []):
                v = volumes[m["name"]]
                if "configMap" in v:  # each pod its own copy: paths in it are the pod's
                    path = os.path.join(work, "configmap-" + pod.name)
                elif "secret" in v:
                    path = self.keys[v["secret"]["secretName"].rsplit("-", 1)[1]]
                elif "persistentVolumeClaim" in v:
                    path = os.path.join(work, "claim-" + v["persistentVolumeClaim"]["claimName"])
                else:
                    continue  # an emptyDir: the host's is fine
                os.makedirs(path, exist_ok=True)
                mine[m["mountPath"]] = path
            self.volumes[pod.name] = mine
        job_ini = next(m for m in workloads.by_kind(objects, "ConfigMap").values()
                       if "job.ini" in m.get("data", {}))["data"]["job.ini"]
        for pod in self.pods:
            with open(os.path.join(work, "configmap-" + pod.name, "job.ini"), "w") as f:
                f.write(self.mounted(pod, job_ini))

    def mounted(self, pod, text):
        """Paths in the pod's file system as the test's directories (longest mount first)."""
        mine = self.volumes[pod.name]
        for mount in sorted(mine, key=len, reverse=True):
            text = text.replace(mount, mine[mount])
        return text

    def pod(self, name):
        return next(p for p in self.pods if p.name == name)

    def command(self, pod):
        env = {"PATH": PATH, "HOME": self.work}
        # A sanitizer build's settings (tests/sanitizers/run.sh) reach the pods too.
        env.update({k: v for k, v in os.environ.items() if k.endswith("SAN_OPTIONS")})
        env.update({k: self.mounted(pod, v) for k, v in workloads.container_env(pod.container, self.objects,
                                                                                 pod.k8s).items()})
        env.update(self.small_env)
        env.update(pod.extra_env)
        args = [self.mounted(pod, a) for a in pod.container["args"]]
        argv = ["ip", "netns", "exec", pod.netns, "unshare", "--uts", "sh", "-c",
                f'hostname {pod.name} && exec "$@"', "sh", self.shoal] + args
        return argv, env

    def start(self, pod):
        argv, env = self.command(pod)
        pod.starts += 1
        pod.kill_at = None
        pod.lines.append(f"--- start {pod.starts}\n")
        pod.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        proc = pod.proc

        def read():
            for line in proc.stdout:
                pod.lines.append(line)
        pod.reader = threading.Thread(target=read, daemon=True)
        pod.reader.start()

    def stop(self, pod, grace):
        """The kubelet stopping a pod: SIGTERM now, SIGKILL once the grace period is over (by
        reap(), which the caller's loop calls)."""
        if pod.running() and getattr(pod, "kill_at", None) is None:
            pod.proc.send_signal(signal.SIGTERM)
            pod.kill_at = time.monotonic() + grace

    def reap(self):
        """SIGKILL for the pods stopped whose grace period is over."""
        for pod in self.pods:
            if pod.running() and getattr(pod, "kill_at", None) is not None and time.monotonic() > pod.kill_at:
                pod.proc.kill()

    def wait_for(self, what, predicate, timeout=120, allowed_exits=(None, 0)):
        """Poll until predicate(); fail on a timeout or a pod exiting with a code not allowed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for p in self.pods:
                if p.proc is not None and p.proc.poll() not in allowed_exits:
                    fail(f"{p.name} exited {p.proc.returncode} while waiting for {what}:\n{p.output()[-4000:]}")
            time.sleep(0.05)
        fail(f"timed out waiting for {what}:\n" + self.outputs())

    def outputs(self, chars=1500):
        return "\n".join(f"== {p.name}\n{p.output()[-chars:]}" for p in self.pods)
