#!/usr/bin/env python3
"""The Kubernetes job of k8s/overlays/cpu, simulated on this host: every pod of every StatefulSet
is a network namespace with its own address on one bridge, its own host name
(shoal-worker-1) and an /etc/hosts that resolves every pod as the headless Services do
(shoal-ps-0.shoal-ps and shoal-ps-0.shoal-ps.default.svc.cluster.local). Each pod runs the
command line and environment of its container in the rendered manifests (the pod-index label
given as the downward API gives it); volume mounts are directories of the test (the ConfigMap's
job.ini, the Secret's keys from `shoal keys generate`, the shared checkpoint claim), and the
job is made small with SHOAL_* variables, as an overlay's patch would. The pods start at once
(podManagementPolicy: Parallel); the test waits for every /readyz as the readiness probes do,
deletes worker-1 mid-run (SIGTERM, as the kubelet does), starts it again as the StatefulSet
would, and checks that it rejoins, that the job trains every sample of every epoch to the end,
and that every pod then stays (cluster.on_job_end = wait) until it is deleted.

  statefulset_sim_test.py SHOAL_BINARY SOURCE_DIR

Exit 77 (skipped, with the reason) without root, `ip`, `unshare`, kubectl, Python's yaml, or
where network namespaces cannot be made (a chroot without /sys).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

SHOAL, SOURCE = sys.argv[1], sys.argv[2]
NAMESPACE = "default"
SUBNET = "10.78.0"
TAG = str(os.getpid())
# The job, made small (an overlay would patch the ConfigMap or the env the same way).
SMALL = {"SHOAL_MODEL": "mlp", "SHOAL_TRAIN_EPOCHS": "4", "SHOAL_DATA_TRAIN_LIMIT": "20000",
         "SHOAL_CHECKPOINT_EVERY_SECONDS": "0", "SHOAL_CHECKPOINT_EVERY_STEPS": "100"}


def skip(reason):
    print("SKIP: StatefulSet simulation skipped: " + reason)
    sys.exit(77)


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


if os.geteuid() != 0:
    skip("it needs root (to make network namespaces)")
for tool in ("ip", "unshare", "kubectl"):
    if shutil.which(tool) is None:
        skip(f"no `{tool}` on the PATH")
try:
    import yaml
except ImportError:
    skip("Python's yaml module is missing (python3-yaml)")


def run(argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.returncode}: {r.stderr.strip()}")
    return r


class Pod:
    def __init__(self, statefulset, ordinal, index, container, service):
        self.name = f"{statefulset}-{ordinal}"
        self.ordinal, self.container, self.service = ordinal, container, service
        self.netns = f"shoalsim{TAG}p{index}"
        self.address = f"{SUBNET}.{10 + index}"
        self.fqdn = f"{self.name}.{service}.{NAMESPACE}.svc.cluster.local"
        self.proc, self.lines, self.starts = None, [], 0

    def hosts_line(self):
        return f"{self.address}\t{self.fqdn} {self.name}.{self.service} {self.name}\n"

    def output(self):
        return "".join(self.lines)


class Cluster:
    """The bridge and one namespace per pod; removed on exit."""

    def __init__(self, pods):
        self.pods, self.hub = pods, f"shoalsim{TAG}hub"
        self.made = []

    def __enter__(self):
        try:
            run(["ip", "netns", "add", self.hub])
            self.made.append(self.hub)
            run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
            run(["ip", "-n", self.hub, "addr", "add", f"{SUBNET}.1/24", "dev", "br0"])
            run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
            hosts = "127.0.0.1\tlocalhost\n" + "".join(p.hosts_line() for p in self.pods)
            for i, pod in enumerate(self.pods):
                run(["ip", "netns", "add", pod.netns])
                self.made.append(pod.netns)
                hub_end, pod_end = f"sh{TAG}h{i}"[-15:], f"sh{TAG}p{i}"[-15:]
                run(["ip", "-n", self.hub, "link", "add", hub_end, "type", "veth", "peer", "name", pod_end,
                     "netns", pod.netns])
                run(["ip", "-n", self.hub, "link", "set", hub_end, "master", "br0", "up"])
                run(["ip", "-n", pod.netns, "link", "set", pod_end, "name", "eth0"])
                run(["ip", "-n", pod.netns, "addr", "add", f"{pod.address}/24", "dev", "eth0"])
                run(["ip", "-n", pod.netns, "link", "set", "eth0", "up"])
                run(["ip", "-n", pod.netns, "link", "set", "lo", "up"])
                # `ip netns exec` binds /etc/netns/NAME/hosts over /etc/hosts: the headless
                # Services' names, as cluster DNS would answer them.
                os.makedirs(f"/etc/netns/{pod.netns}", exist_ok=True)
                with open(f"/etc/netns/{pod.netns}/hosts", "w") as f:
                    f.write(hosts)
            run(["ip", "netns", "exec", self.pods[0].netns, "ip", "link", "show", "eth0"])
        except Exception as e:  # noqa: BLE001 — any failure here means: no namespaces on this host
            self.__exit__(None, None, None)
            skip(f"cannot make network namespaces here: {e}")
        return self

    def __exit__(self, *exc):
        for pod in self.pods:
            if pod.proc and pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait()
        for ns in reversed(self.made):
            run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)

    def in_hub(self, argv):
        return run(["ip", "netns", "exec", self.hub] + argv, check=False)


def render():
    out = run(["kubectl", "kustomize", os.path.join(SOURCE, "k8s", "overlays", "cpu")])
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def main():
    objects = render()
    sets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "StatefulSet"}
    job_ini = next(o for o in objects if o["kind"] == "ConfigMap")["data"]["job.ini"]
    pods = []
    for name in ("shoal-coordinator", "shoal-ps", "shoal-worker"):
        spec = sets[name]["spec"]
        for ordinal in range(int(spec["replicas"])):
            pods.append(Pod(name, ordinal, len(pods), spec["template"]["spec"]["containers"][0],
                            spec["serviceName"]))

    work = tempfile.mkdtemp(prefix="shoal-sim-")
    try:
        run_job(pods, job_ini, sets, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_job(pods, job_ini, sets, work):
    # Volumes: the mount paths of the manifests, as directories of the test.
    volumes = {}
    keys = os.path.join(work, "keys")
    gen = run([SHOAL, "keys", "generate", keys, "--servers", str(sets["shoal-ps"]["spec"]["replicas"]),
               "--workers", str(sets["shoal-worker"]["spec"]["replicas"])], check=False)
    if gen.returncode != 0:
        fail("shoal keys generate: " + gen.stderr)
    for pod in pods:
        pod_volumes = {v["name"]: v for v in sets[pod.name.rsplit("-", 1)[0]]["spec"]["template"]["spec"]["volumes"]}
        for m in pod.container.get("volumeMounts", []):
            v = pod_volumes[m["name"]]
            if "configMap" in v:
                path = os.path.join(work, "configmap")
            elif "secret" in v:
                path = keys
            elif "persistentVolumeClaim" in v:
                path = os.path.join(work, "claim-" + v["persistentVolumeClaim"]["claimName"])
            else:
                continue  # an emptyDir (/dev/shm): the host's is fine
            os.makedirs(path, exist_ok=True)
            volumes[m["mountPath"]] = path
    # Longest first: /etc/shoal-keys before /etc/shoal.
    order = sorted(volumes, key=len, reverse=True)

    def mounted(text):
        for mount in order:
            text = text.replace(mount, volumes[mount])
        return text

    with open(os.path.join(work, "configmap", "job.ini"), "w") as f:
        f.write(mounted(job_ini))

    def command(pod):
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": work}
        # A sanitizer build's settings (tests/sanitizers/run.sh) reach the pods too.
        env.update({k: v for k, v in os.environ.items() if k.endswith("SAN_OPTIONS")})
        for e in pod.container.get("env", []):
            if "value" in e:
                env[e["name"]] = mounted(str(e["value"]))
            elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == \
                    "metadata.labels['apps.kubernetes.io/pod-index']":
                env[e["name"]] = str(pod.ordinal)
            else:
                fail(f"{pod.name}: env {e['name']} comes from something the simulation does not give")
        env.update(SMALL)
        args = [mounted(a) for a in pod.container["args"]]
        argv = ["ip", "netns", "exec", pod.netns, "unshare", "--uts", "sh", "-c",
                f'hostname {pod.name} && exec "$@"', "sh", SHOAL] + args
        return argv, env

    def start(pod):
        argv, env = command(pod)
        pod.starts += 1
        pod.lines.append(f"--- start {pod.starts}\n")
        pod.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        proc = pod.proc

        def read():
            for line in proc.stdout:
                pod.lines.append(line)
        threading.Thread(target=read, daemon=True).start()

    def wait_for(what, predicate, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for p in pods:
                if p.proc.poll() not in (None, 0):
                    fail(f"{p.name} exited {p.proc.returncode} while waiting for {what}:\n{p.output()[-4000:]}")
            time.sleep(0.05)
        fail(f"timed out waiting for {what}:\n" + "\n".join(f"== {p.name}\n{p.output()[-1500:]}" for p in pods))

    with Cluster(pods) as cluster:
        def ready(pod):
            r = cluster.in_hub(["python3", "-c",
                                "import urllib.request,sys\n"
                                f"sys.exit(0 if urllib.request.urlopen('http://{pod.address}:9400/readyz',"
                                "timeout=2).status == 200 else 1)"])
            return r.returncode == 0

        for pod in pods:  # Parallel: every pod at once
            start(pod)
        wait_for("every pod's readiness probe (/readyz)", lambda: all(ready(p) for p in pods))
        print("every pod ready: " + ", ".join(p.name for p in pods))
        ps0 = next(p for p in pods if p.name == "shoal-ps-0")
        if "shoal-ps-0.shoal-ps.default.svc.cluster.local" not in next(
                p for p in pods if p.name == "shoal-coordinator-0").output():
            fail("the coordinator did not register ps-0 at its FQDN:\n" + ps0.output()[-2000:])

        worker1 = next(p for p in pods if p.name == "shoal-worker-1")
        wait_for("worker-1 to train", lambda: "training epoch" in worker1.output())
        worker1.proc.send_signal(signal.SIGTERM)  # kubectl delete pod: the kubelet's SIGTERM
        try:
            code = worker1.proc.wait(60)  # terminationGracePeriodSeconds
        except subprocess.TimeoutExpired:
            fail("worker-1 did not exit within its grace period:\n" + worker1.output()[-3000:])
        if code != 0:
            fail(f"worker-1 exited {code} on SIGTERM:\n{worker1.output()[-3000:]}")
        print("worker-1 deleted (SIGTERM, exit 0); the StatefulSet starts it again")
        start(worker1)
        wait_for("the new worker-1 to rejoin and train",
                 lambda: "training epoch" in worker1.output().rsplit("--- start 2", 1)[-1])
        print("worker-1 rejoined and trains")

        coordinator = next(p for p in pods if p.name == "shoal-coordinator-0")
        waiting = "the job is over; waiting for SIGTERM"
        wait_for("the job's end", lambda: waiting in coordinator.output(), timeout=300)
        out = coordinator.output()
        epochs = re.findall(r"epoch (\d+)/(\d+) .*?\| +(\d+)/(\d+) samples done", out)
        if len(epochs) != int(SMALL["SHOAL_TRAIN_EPOCHS"]) or any(done != total for _, _, done, total in epochs):
            fail("not every sample of every epoch was trained:\n" + out[-3000:])
        # cluster.on_job_end = wait: the pods stay (a StatefulSet would restart any that exits)
        # until the job is deleted.
        wait_for("every pod to wait after the job's end", lambda: all(waiting in p.output() for p in pods))
        for pod in pods:
            if pod.proc.poll() is not None:
                fail(f"{pod.name} exited after the job's end:\n{pod.output()[-2000:]}")
        for pod in pods:  # kubectl delete -k: SIGTERM to every pod
            pod.proc.send_signal(signal.SIGTERM)
        for pod in pods:
            try:
                code = pod.proc.wait(30)
            except subprocess.TimeoutExpired:
                fail(f"{pod.name} did not exit on SIGTERM after the job ended:\n{pod.output()[-2000:]}")
            if code != 0:
                fail(f"{pod.name} exited {code}:\n{pod.output()[-2000:]}")
        final = re.search(r"final test accuracy: ([\d.]+)%", out)
        print(f"the job ended: {len(epochs)} epochs, every sample trained, final accuracy {final.group(1)}%; "
              "every pod waited until deleted, then exited 0")
    print("PASS")


main()
