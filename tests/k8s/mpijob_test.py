#!/usr/bin/env python3
"""k8s/mpijob/sync-mpijob.yaml read as the cluster and the MPI Operator would read it, without
either:

  - the MPIJob against the upstream CRD's OpenAPI schema (../shared/schemas/kubeflow.org_mpijobs.yaml,
    through tests/k8s/crd_schema.py: unknown or misspelt fields at any depth, types, enums), and
    the values the schema leaves open checked by hand against the operator's source
    (launcherCreationPolicy, replica restartPolicy);
  - every pod template against the "restricted" Pod Security Standard (tests/k8s/pod_security.py),
    with terminationGracePeriodSeconds within GKE's 15 s for spot pods and the termination
    message falling back to the log;
  - the parts that must agree for the job to start: the Worker's command runs sshd in the
    foreground with the sshd_config the images copy (docker/*.Dockerfile), on a port above 1024
    (no capabilities) that is the readiness probe's and the ssh client's; the keys where both
    look (sshAuthMountPath is the image user's ~/.ssh); -np = replicas x slotsPerWorker =
    cluster.workers; the launcher forwards PATH and LD_LIBRARY_PATH to the ranks (an ssh
    session has neither); and every claim, ConfigMap the pods mount is in the file.

The start itself (sshd, ssh, mpirun, the ranks) is tests/k8s/mpijob_ssh_test.py.

  mpijob_test.py SOURCE_DIR

Exit 77 (skipped, with the reason) where ../shared/schemas is absent or Python's yaml or
jsonschema module is missing.
"""
import configparser
import copy
import os
import re
import sys

SOURCE = os.path.abspath(sys.argv[1])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
CRD = os.path.join(SOURCE, "..", "shared", "schemas", "kubeflow.org_mpijobs.yaml")
MANIFEST = os.path.join(SOURCE, "k8s", "mpijob", "sync-mpijob.yaml")
SPOT_GRACE_SECONDS = 15


def skip(reason):
    print("SKIP: MPIJob schema check skipped: " + reason)
    sys.exit(77)


if not os.path.isfile(CRD):
    skip(f"the MPIJob CRD is not at {os.path.normpath(CRD)} (../shared/schemas beside the checkout)")
import crd_schema  # noqa: E402
import pod_security  # noqa: E402

try:
    crd_schema.validate({}, CRD)
except crd_schema.MissingDependency as e:
    skip(str(e))
import yaml  # noqa: E402  (crd_schema found it)

failures = []


def check(ok, message):
    if not ok:
        failures.append(message)
    return ok


def config_value(text, key):
    """The first value of KEY in an ssh configuration ("Key value" or "Key=value"; the first wins)."""
    m = re.search(rf"^\s*{re.escape(key)}(?:\s*=\s*|\s+)(\S+)", text, re.M | re.I)
    return m.group(1) if m else None


with open(MANIFEST) as f:
    objects = [d for d in yaml.safe_load_all(f) if d]
kinds = {}
for o in objects:
    kinds.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
mpijobs = kinds.get("MPIJob", {})
check(len(mpijobs) == 1, f"one MPIJob in {MANIFEST}, found {len(mpijobs)}")
mpijob = next(iter(mpijobs.values()))
spec = mpijob["spec"]

# The schema: the validator catches planted mistakes, then the file's MPIJob passes it.
planted = {"slotPerWorker": lambda m: m["spec"].update(slotPerWorker=1),
           "comand": lambda m: m["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
           .update(comand=["x"]),
           "slotsPerWorker": lambda m: m["spec"].update(slotsPerWorker="1"),
           "mpiImplementation": lambda m: m["spec"].update(mpiImplementation="OpenMP"),
           "apiVersion": lambda m: m.update(apiVersion="kubeflow.org/v1")}
for word, change in planted.items():
    bad = copy.deepcopy(mpijob)
    change(bad)
    errors = crd_schema.validate(bad, CRD)
    check(any(word in e for e in errors), f"the schema check misses a planted mistake ({word}): {errors}")
errors = crd_schema.validate(mpijob, CRD)
check(errors == [], "the MPIJob does not match the CRD's schema:\n  " + "\n  ".join(errors))
# Open in the schema, known to the operator (pkg/apis/kubeflow/v2beta1: types.go, constants.go).
check(spec.get("launcherCreationPolicy", "AtStartup") in ("AtStartup", "WaitForWorkersReady"),
      f"launcherCreationPolicy {spec.get('launcherCreationPolicy')} is not one the operator knows")
for role, replica in spec["mpiReplicaSpecs"].items():
    check(role in ("Launcher", "Worker"), f"mpiReplicaSpecs.{role}: the operator knows Launcher and Worker")
    check(replica.get("restartPolicy", "Never") in ("Always", "OnFailure", "Never", "ExitCode"),
          f"{role}.restartPolicy {replica.get('restartPolicy')} is not one the operator knows")
    check("restartPolicy" not in replica["template"]["spec"],
          f"{role}: the operator overrides the pod template's restartPolicy (set the replica's)")

# Pod Security (restricted), the grace period and the termination message, on every template.
launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
worker = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
for role, pod in (("Launcher", launcher), ("Worker", worker)):
    problems = pod_security.violations(pod, spec["mpiReplicaSpecs"][role]["template"].get("metadata"))
    check(problems == [], f"{role}: not admitted under the restricted Pod Security Standard: {problems}")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace <= SPOT_GRACE_SECONDS, f"{role}: terminationGracePeriodSeconds {grace} > GKE's {SPOT_GRACE_SECONDS} s")
    for c in pod["containers"]:
        check(c.get("terminationMessagePolicy") == "FallbackToLogsOnError",
              f"{role}/{c['name']}: terminationMessagePolicy is not FallbackToLogsOnError")
    check(pod.get("securityContext", {}).get("runAsUser") == 10001,
          f"{role}: runAsUser is not the images' user shoal (10001, docker/image-steps.sh)")

# The worker's sshd and the images' ssh configuration.
images = {}
for name in ("cpu.Dockerfile", "gpu.Dockerfile"):
    with open(os.path.join(SOURCE, "docker", name)) as f:
        images[name] = dict(re.findall(r"^COPY\s+(docker/\S+)\s+(\S+)\s*$", f.read(), re.M))
for name, copies in images.items():
    check("docker/sshd_config" in copies and "docker/ssh_config" in copies,
          f"docker/{name} does not copy docker/sshd_config and docker/ssh_config into the image")
sshd_config_path = images["gpu.Dockerfile"].get("docker/sshd_config")
check(images["cpu.Dockerfile"].get("docker/sshd_config") == sshd_config_path,
      "the two images put sshd_config in different places")
client_path = images["gpu.Dockerfile"].get("docker/ssh_config", "")
check(re.fullmatch(r"/etc/ssh/ssh_config\.d/[^/]+\.conf", client_path) is not None,
      f"ssh_config goes to {client_path}, which /etc/ssh/ssh_config does not include")
with open(os.path.join(SOURCE, "docker", "sshd_config")) as f:
    sshd_config = f.read()
with open(os.path.join(SOURCE, "docker", "ssh_config")) as f:
    ssh_config = f.read()
sshd_port = int(config_value(sshd_config, "Port") or 22)
check(sshd_port > 1024, f"sshd listens on {sshd_port}: below 1025 it needs CAP_NET_BIND_SERVICE, which the pods drop")
check(int(config_value(ssh_config, "Port") or 22) == sshd_port, "the ssh client dials another port than sshd's")
check(config_value(sshd_config, "UsePAM") == "no", "sshd_config: PAM needs root")

w = worker["containers"][0]
command = w.get("command", []) + w.get("args", [])
check(command[:1] == ["/usr/sbin/sshd"], f"the Worker's command is not sshd: {command}")
check(any(re.fullmatch(r"-[A-Za-z]*D[A-Za-z]*", a) for a in command[1:]),
      "the Worker's sshd does not stay in the foreground (-D): the pod would end at once")
check("-f" in command and command[command.index("-f") + 1:][:1] == [sshd_config_path],
      f"the Worker's sshd does not read the images' sshd_config ({sshd_config_path}): {command}")
ports = {p.get("name"): p["containerPort"] for p in w.get("ports", [])}
probe_port = w.get("readinessProbe", {}).get("tcpSocket", {}).get("port")
check(ports.get(probe_port, probe_port) == sshd_port,
      f"the Worker's readiness probe (port {probe_port}) is not sshd's port {sshd_port}")
if spec.get("launcherCreationPolicy") == "WaitForWorkersReady":
    check("readinessProbe" in w, "WaitForWorkersReady without a readiness probe: ready before sshd listens")

# The keys: the operator mounts its Secret at sshAuthMountPath; ssh and sshd look in the
# image user's ~/.ssh (docker/image-steps.sh: /home/shoal).
ssh_path = spec.get("sshAuthMountPath", "/root/.ssh")
check(ssh_path == "/home/shoal/.ssh", f"sshAuthMountPath {ssh_path} is not the image user's ~/.ssh")
for key in ("HostKey", "AuthorizedKeysFile"):
    value = config_value(sshd_config, key) or ""
    check(value.startswith(ssh_path + "/"), f"sshd_config's {key} {value} is not in the operator's Secret ({ssh_path})")

# Ranks: -np = Worker replicas x slotsPerWorker = cluster.workers; PATH and LD_LIBRARY_PATH forwarded.
launch = launcher["containers"][0].get("command", []) + launcher["containers"][0].get("args", [])
check(launch[:1] == ["mpirun"], f"the launcher does not run mpirun: {launch}")
np_ = int(launch[launch.index("-np") + 1]) if "-np" in launch else None
slots = spec.get("slotsPerWorker", 1)
check(np_ == spec["mpiReplicaSpecs"]["Worker"]["replicas"] * slots,
      f"-np {np_} is not Worker replicas x slotsPerWorker ({spec['mpiReplicaSpecs']['Worker']['replicas']} x {slots})")
gpus = w.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
check(gpus is None or int(gpus) == slots, f"slotsPerWorker {slots} is not the worker pod's GPUs ({gpus}): a rank per GPU")
forwarded = {launch[i + 1] for i, a in enumerate(launch[:-1]) if a == "-x"}
check({"PATH", "LD_LIBRARY_PATH"} <= forwarded,
      f"the launcher's mpirun forwards {sorted(forwarded)}: an ssh session has neither the image's PATH "
      "(/opt/shoal/bin) nor its LD_LIBRARY_PATH (/opt/shoal/lib)")
job = configparser.ConfigParser()
job.read_string("[top]\n" + kinds["ConfigMap"]["shoal-sync-job"]["data"]["job.ini"])
check(job.get("cluster", "workers", fallback=None) == str(np_), f"cluster.workers of job.ini is not -np {np_}")

# Everything the pods mount is in the file (besides the keys' Secret, which the user makes).
for role, pod in (("Launcher", launcher), ("Worker", worker)):
    for v in pod.get("volumes", []):
        if "persistentVolumeClaim" in v:
            name = v["persistentVolumeClaim"]["claimName"]
            claim = kinds.get("PersistentVolumeClaim", {}).get(name)
            if check(claim is not None, f"{role}: the claim {name} is not in {MANIFEST}"):
                check("ReadWriteMany" in claim["spec"]["accessModes"], f"the claim {name}: pods on several nodes")
                if claim["spec"].get("storageClassName") == "standard-rwx":
                    check(claim["spec"]["resources"]["requests"]["storage"] in ("1Ti", "1024Gi"),
                          f"the claim {name}: Filestore's basic HDD tier starts at 1 TiB")
        if "configMap" in v:
            check(v["configMap"]["name"] in kinds.get("ConfigMap", {}),
                  f"{role}: the ConfigMap {v['configMap']['name']} is not in {MANIFEST}")
checkpoints = job.get("checkpoint", "dir", fallback=None)
mounted = {m["mountPath"]: m["name"] for m in w.get("volumeMounts", [])}
claims = {v["name"] for v in worker.get("volumes", []) if "persistentVolumeClaim" in v}
check(checkpoints is not None and mounted.get(checkpoints) in claims,
      f"checkpoint.dir {checkpoints} is not a claim the workers mount: the checkpoints would die with their pods")

if failures:
    print("FAIL:\n- " + "\n- ".join(failures))
    sys.exit(1)
print(f"the MPIJob {mpijob['metadata']['name']} matches the CRD's schema ({crd_schema.served_versions(CRD)[0]}; "
      f"{len(planted)} planted mistakes caught), both pod templates meet the restricted Pod Security Standard, and "
      f"its sshd, ssh, keys, ranks and volumes agree")
