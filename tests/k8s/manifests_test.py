#!/usr/bin/python3
"""The Kubernetes manifests (k8s/), rendered as `kubectl kustomize` renders them, checked for
what a Shoal job needs, in each of its three deployments: the Indexed Jobs (k8s/jobs), the
JobSet (k8s/jobset) and the StatefulSets (k8s/base), every overlay of each.

  - every overlay renders; every pod resolves its peers (headless Services, or the JobSet's);
    the job file and the shared checkpoint claim are mounted; each role mounts its own Secret
    of keys (shoal-keys-coordinator, -ps, -worker) where auth.keys points;
  - every container's command line and environment (env, envFrom, the downward API as each
    kind of pod gets it), with the job file from the rendered ConfigMap, is a configuration
    `shoal config` accepts, whose cluster.servers and cluster.workers are the deployment's pod
    counts, and whose rank is the pod's;
  - Jobs (plain and the JobSet's): Indexed, restartPolicy Never, a podFailurePolicy that fails
    the Job on exactly the exit codes docs/checkpoint-format.md says not to restart, ignores
    disruptions, and counts the rest against backoffLimitPerIndex; processes that exit at the
    job's end (cluster.on_job_end = exit); the JobSet succeeds with its coordinator and fails
    on a Job failed by that policy; the StatefulSets wait instead (they restart what exits);
  - every pod template of every rendered object (training and serving) meets Kubernetes'
    "restricted" Pod Security Standard (tests/k8s/pod_security.py), and every container puts
    its last log lines in its termination message on failure;
  - spot pods stop within GKE's 15 s; no memory-backed /dev/shm for asynchronous workers; no
    port declared that nothing listens on; a coordinator disruption budget that protects it;
    Filestore claims at the tier's minimum; MIG partitions that GKE offers;
  - the GPU and MIG overlays ask for GPUs where GKE and the GPU Operator give them; the gcsfuse
    overlay mounts a bucket of tar shards read-only in every pod.

The serving manifests (k8s/serving: `shoal serve` as a Deployment, Service, HorizontalPodAutoscaler
and PodDisruptionBudget; its queue-depth overlay (k8s/serving-queue-depth); the KServe InferenceService; the Cloud Run
Service) are checked for what serving needs: the probes on the v2 health paths at the port the
server listens on, a restricted security context, a grace period longer than the drain, an
autoscaler aimed at the Deployment, a disruption budget that lets a drain proceed, the model
path on a mounted volume, and the platform's own conventions (KServe's container name and
PROTOCOL, Cloud Run's PORT and 10 s stop). KServe publishes no types or schema that this
project has, so its structure is checked here, field by field.

    tests/k8s/manifests_test.py SHOAL_BINARY SOURCE_DIR
"""
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

try:
    import yaml
except ImportError:
    print("SKIPPED: Python's yaml module is missing (Debian: python3-yaml; launch/setup-debian.sh installs it)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pod_security  # noqa: E402
import workloads  # noqa: E402
from workloads import by_kind  # noqa: E402

SHOAL = sys.argv[1] if len(sys.argv) > 1 else "build/shoal"
SOURCE = sys.argv[2] if len(sys.argv) > 2 else "."
# Every overlay of every deployment: (path under k8s/, the kind of its workloads).
DEPLOYMENTS = {
    "jobs/overlays/cpu": "Job", "jobs/overlays/gke-gpu": "Job", "jobs/overlays/gke-mig": "Job",
    "jobs/overlays/gpu-operator-mig": "Job",
    "jobset/overlays/cpu": "JobSet", "jobset/overlays/gke-gpu": "JobSet",
    "overlays/cpu": "StatefulSet", "overlays/gke-gpu": "StatefulSet", "overlays/gke-mig": "StatefulSet",
    "overlays/gke-gcsfuse": "StatefulSet",
}
# The serving manifests, for the checks every pod template gets.
OTHER_RENDERED = ["serving", "serving-queue-depth"]
# (Not Cloud Run's Service: Cloud Run is no Kubernetes cluster, admits no such fields, and
# runs every container in its own sandbox.)
OTHER_FILES = [("serving", "kserve", "inferenceservice.yaml")]
# GKE's MIG partition sizes by accelerator (docs/deploy-gke.md, "MIG").
GKE_MIG_PARTITIONS = {
    "nvidia-tesla-a100": {"1g.5gb": 7, "2g.10gb": 3, "3g.20gb": 2, "7g.40gb": 1},
    "nvidia-a100-80gb": {"1g.10gb": 7, "2g.20gb": 3, "3g.40gb": 2, "7g.80gb": 1},
    "nvidia-h100-80gb": {"1g.10gb": 7, "1g.20gb": 4, "2g.20gb": 3, "3g.40gb": 2, "7g.80gb": 1},
}
SPOT_GRACE_SECONDS = 15  # GKE's share of a spot VM's 30 s notice for ordinary pods


def render(deployment):
    return render_dir(os.path.join(SOURCE, "k8s", deployment))


@functools.lru_cache(maxsize=None)
def rendered(path):
    try:
        return yaml.safe_dump_all(workloads.render(path))
    except RuntimeError as e:
        raise AssertionError(str(e))


def render_dir(path):
    """The objects `kubectl kustomize path` renders (rendered once per run; a fresh copy each call)."""
    return [d for d in yaml.safe_load_all(rendered(path)) if d]


def load(*path):
    with open(os.path.join(SOURCE, *path)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def permanent_exit_codes():
    """The codes docs/checkpoint-format.md's "Exit codes for supervisors" says not to restart
    (other than 0): what a Job's podFailurePolicy must fail on."""
    with open(os.path.join(SOURCE, "docs", "checkpoint-format.md")) as f:
        text = f.read().split("### Exit codes for supervisors", 1)[1].split("\n### ", 1)[0]
    codes = set()
    for row in re.findall(r"^\| ([\d, +n]+) \| [^|]+ \| (.+?) \|$", text, re.M):
        numbers = {int(n) for n in re.findall(r"\b\d+\b", row[0]) if "+" not in row[0]}
        if row[1].startswith("no"):
            codes |= numbers
    codes.discard(0)
    return codes


def job_specs(objects):
    """(where, Job spec) of every Job, plain or a JobSet's replicated Job."""
    for o in objects:
        if o["kind"] == "Job":
            yield f"Job {o['metadata']['name']}", o["spec"]
        elif o["kind"] == "JobSet":
            for job in o["spec"]["replicatedJobs"]:
                yield f"JobSet {o['metadata']['name']} {job['name']}", job["template"]["spec"]


def is_spot(pod_spec):
    return (pod_spec.get("nodeSelector", {}).get("cloud.google.com/gke-spot") == "true"
            or any(t.get("key") == "cloud.google.com/gke-spot" for t in pod_spec.get("tolerations", [])))


def shoal_config(args, env, job_ini):
    """`shoal config` of a container's args (the job file from the rendered ConfigMap) and env."""
    with tempfile.TemporaryDirectory() as tmp:
        job_file = os.path.join(tmp, "job.ini")
        with open(job_file, "w") as f:
            f.write(job_ini)
        args = [job_file if a == "/etc/shoal/job.ini" else a for a in args]
        full = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        full.update(env)
        return subprocess.run([SHOAL, "config"] + args[1:], env=full, capture_output=True, text=True)


def setting(described, key):
    m = re.search(rf"^ *{re.escape(key)} += (\S*)", described, re.M)
    return m.group(1) if m else None


class Manifests(unittest.TestCase):
    def test_every_deployment_renders_a_consistent_job(self):
        for deployment, kind in DEPLOYMENTS.items():
            with self.subTest(deployment=deployment):
                objects = render(deployment)
                for o in objects:
                    self.assertTrue(o.get("apiVersion") and o.get("kind") and o.get("metadata", {}).get("name"), o)
                self.assertEqual(sorted({o["kind"] for o in objects if o["kind"] in ("Job", "JobSet", "StatefulSet")}),
                                 [kind], "one kind of workload per deployment")
                services, maps = by_kind(objects, "Service"), by_kind(objects, "ConfigMap")
                claim = by_kind(objects, "PersistentVolumeClaim")["shoal-checkpoints"]
                self.assertEqual(claim["spec"]["accessModes"], ["ReadWriteMany"], "every pod writes its part")
                self.assertEqual(len(by_kind(objects, "PodDisruptionBudget")), 3)
                pods = workloads.shoal_pods(objects)
                self.assertEqual([p.role for p in pods][:1], ["coordinator"])
                self.assertEqual(sum(p.role == "coordinator" for p in pods), 1)
                for pod in pods:
                    where = f"{deployment} {pod.name}"
                    labels = pod.labels
                    if kind == "StatefulSet":
                        set_spec = pod.owner["spec"]
                        self.assertEqual(set_spec["podManagementPolicy"], "Parallel", where)
                        self.assertNotIn("volumeClaimTemplates", set_spec, f"{where}: kustomize v2's commonLabels bug")
                    if kind != "JobSet":  # the JobSet makes its own headless Service
                        service = services[pod.subdomain]
                        self.assertEqual(service["spec"]["clusterIP"], "None", where)
                        self.assertTrue(service["spec"]["publishNotReadyAddresses"], where)
                        for k, v in service["spec"]["selector"].items():
                            self.assertEqual(labels.get(k), v, f"{where}: its Service selects other pods")
                    else:
                        network = pod.owner["spec"]["network"]
                        self.assertTrue(network["enableDNSHostnames"], where)
                        self.assertIs(network.get("publishNotReadyAddresses", True), True, where)
                    self.assertTrue(pod.spec["securityContext"]["runAsNonRoot"], where)
                    volumes = {v["name"]: v for v in pod.spec["volumes"]}
                    self.assertIn(volumes["job"]["configMap"]["name"], maps, f"{where}: the job's ConfigMap")
                    self.assertEqual(volumes["checkpoints"]["persistentVolumeClaim"]["claimName"], "shoal-checkpoints")
                    for source in pod.container.get("envFrom", []):
                        self.assertIn(source["configMapRef"]["name"], maps, f"{where}: envFrom a ConfigMap that exists")
                workers = [p for p in pods if p.role == "worker"]
                spec, container = workers[0].spec, workers[0].container
                limits = container.get("resources", {}).get("limits", {})
                if "gke-" in deployment:
                    self.assertEqual(limits["nvidia.com/gpu"], 1)
                    self.assertIn("cloud.google.com/gke-accelerator", spec["nodeSelector"])
                    self.assertEqual(claim["spec"].get("storageClassName"), "standard-rwx", "Filestore on GKE")
                if "gke-" in deployment or "gpu-operator" in deployment:
                    self.assertTrue(container["image"].startswith("shoal-gpu"), container["image"])
                else:
                    self.assertTrue(container["image"].startswith("shoal-cpu"), container["image"])
                if deployment.endswith("gke-gpu"):
                    self.assertEqual(spec["nodeSelector"]["cloud.google.com/gke-spot"], "true")
                    self.assertIn("cloud.google.com/gke-spot", [t["key"] for t in spec["tolerations"]])
                if deployment.endswith("gpu-operator-mig"):
                    # The GPU Operator's mixed strategy: the slice's profile is the resource's name.
                    [resource] = [r for r in limits if r.startswith("nvidia.com/")]
                    self.assertRegex(resource, r"^nvidia\.com/mig-\d+g\.\d+gb$")
                    self.assertEqual(limits[resource], 1)
                if deployment.endswith("gke-mig"):
                    # GKE's device plugin: one nvidia.com/gpu per slice, on nodes labelled with
                    # a partition size GKE offers for that accelerator.
                    partitions = GKE_MIG_PARTITIONS[spec["nodeSelector"]["cloud.google.com/gke-accelerator"]]
                    self.assertIn(spec["nodeSelector"]["cloud.google.com/gke-gpu-partition-size"], partitions)
                if deployment.endswith("gke-gcsfuse"):
                    # Every process reads the data (the coordinator and servers: the index and
                    # shape), from the bucket mounted read-only by the Cloud Storage FUSE CSI
                    # driver, as a service account that exists.
                    accounts = by_kind(objects, "ServiceAccount")
                    for pod in pods:
                        self.assertEqual(pod.template["metadata"]["annotations"]["gke-gcsfuse/volumes"], "true")
                        self.assertIn(pod.spec["serviceAccountName"], accounts, pod.name)
                        data = {v["name"]: v for v in pod.spec["volumes"]}["data"]["csi"]
                        self.assertEqual(data["driver"], "gcsfuse.csi.storage.gke.io", pod.name)
                        self.assertTrue(data["readOnly"], pod.name)
                        mounts = {m["mountPath"]: m for m in pod.container["volumeMounts"]}
                        self.assertTrue(mounts["/data"]["readOnly"], pod.name)
                        self.assertEqual(workloads.container_env(pod.container, objects, pod)["SHOAL_DATA_FORMAT"],
                                         "tar", pod.name)

    def test_every_container_runs_a_configuration_shoal_accepts(self):
        # Every pod's command line and environment, as its controller and the kubelet give them:
        # a setting a manifest names wrongly fails here, not in a pod; the job's size is the
        # deployment's pod counts; each rank is its pod's; each role has its own keys.
        for deployment, kind in DEPLOYMENTS.items():
            objects = render(deployment)
            job_ini = by_kind(objects, "ConfigMap")
            job_ini = next(m for m in job_ini.values() if "job.ini" in m.get("data", {}))["data"]["job.ini"]
            pods = workloads.shoal_pods(objects)
            counts = {role: sum(p.role == role for p in pods) for role in workloads.ROLES}
            coordinator = pods[0]
            for pod in pods:
                with self.subTest(deployment=deployment, pod=pod.name):
                    container = pod.container
                    self.assertEqual(container["args"][0], pod.role)
                    env = workloads.container_env(container, objects, pod)
                    out = shoal_config(container["args"], env, job_ini)
                    self.assertEqual(out.returncode, 0, f"{deployment}/{pod.name}: {out.stderr}")
                    described = out.stdout
                    for key in env:
                        if key.startswith("SHOAL_"):
                            self.assertIn(f"(env {key})", described, f"{key} is not used")
                    # cluster.servers and cluster.workers are this deployment's pod counts.
                    self.assertEqual(int(setting(described, "cluster.servers")), counts["ps"],
                                     f"{deployment}: cluster.servers is not the servers' pod count")
                    self.assertEqual(int(setting(described, "cluster.workers")), counts["worker"],
                                     f"{deployment}: cluster.workers is not the workers' pod count")
                    if pod.role != "coordinator":
                        self.assertEqual(int(setting(described, "node.rank")), pod.index, "the rank is the pod's")
                        self.assertEqual(setting(described, "cluster.coordinator"),
                                         f"tcp://{coordinator.fqdn}:7600", "the coordinator's pod, by its name")
                    # Jobs and JobSets complete when every process exits 0 at the job's end; a
                    # StatefulSet would restart them: its processes wait.
                    self.assertEqual(setting(described, "cluster.on_job_end"),
                                     "wait" if kind == "StatefulSet" else "exit", deployment)
                    # The probes reach the port the process serves its status on.
                    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                    self.assertEqual(ports.get("metrics"), int(setting(described, "metrics.port")), "metrics port")
                    self.assertEqual(container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "metrics"})
                    self.assertEqual(container["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "metrics"})
                    # The keys auth.keys names are the role's own Secret, mounted read-only.
                    keys = setting(described, "auth.keys")
                    self.assertTrue(keys, "auth.keys is not set")
                    volume, mount = workloads.volume_of(pod.spec, container, keys)
                    self.assertIsNotNone(volume, f"auth.keys ({keys}) is not mounted")
                    self.assertEqual(volume["secret"]["secretName"], f"shoal-keys-{pod.role}",
                                     "each role mounts only its own keys")
                    self.assertTrue(mount["readOnly"])

    def test_jobs_end_as_jobs_and_fail_on_permanent_errors(self):
        permanent = permanent_exit_codes()
        self.assertEqual(permanent, {2, 3, 5, 7, 8, 9, 10}, "docs/checkpoint-format.md's table, as parsed")
        for deployment, kind in DEPLOYMENTS.items():
            if kind == "StatefulSet":
                continue
            objects = render(deployment)
            specs = list(job_specs(objects))
            self.assertEqual(len(specs), 3, deployment)
            for where, spec in specs:
                with self.subTest(deployment=deployment, job=where):
                    self.assertEqual(spec["completionMode"], "Indexed", "ranks are completion indexes")
                    self.assertEqual(spec["parallelism"], spec["completions"], "every rank at once")
                    self.assertEqual(spec["template"]["spec"]["restartPolicy"], "Never",
                                     "a podFailurePolicy needs restartPolicy Never")
                    self.assertGreaterEqual(spec["backoffLimitPerIndex"], 1, "a crash starts its index again")
                    self.assertEqual(spec.get("maxFailedIndexes"), 0, "an index out of retries fails the Job")
                    self.assertEqual(spec.get("podReplacementPolicy", "Failed"), "Failed", "never two pods of a rank")
                    rules = spec["podFailurePolicy"]["rules"]
                    fail = [r for r in rules if r["action"] == "FailJob"]
                    self.assertEqual(len(fail), 1)
                    self.assertEqual(fail[0]["onExitCodes"]["operator"], "In")
                    self.assertEqual(fail[0]["onExitCodes"].get("containerName"), "shoal")
                    self.assertEqual(set(fail[0]["onExitCodes"]["values"]), permanent,
                                     "FailJob on exactly the codes not to restart")
                    ignore = [r for r in rules if r["action"] == "Ignore"]
                    self.assertEqual([c["type"] for r in ignore for c in r.get("onPodConditions", [])],
                                     ["DisruptionTarget"], "preemption and eviction are not counted")
                    self.assertFalse([r for r in rules if r["action"] == "Count" or
                                      (r.get("onExitCodes", {}).get("operator") == "NotIn")],
                                     "every other failure is counted by default")
                    for c in spec["template"]["spec"]["containers"]:
                        self.assertEqual(c.get("terminationMessagePolicy"), "FallbackToLogsOnError",
                                         "the error line as the termination message")
            for jobset in by_kind(objects, "JobSet").values():
                spec = jobset["spec"]
                self.assertEqual(spec["successPolicy"], {"operator": "All", "targetReplicatedJobs": ["coordinator"]})
                rules = spec["failurePolicy"]["rules"]
                self.assertEqual(rules[0]["action"], "FailJobSet")
                self.assertEqual(rules[0]["onJobFailureReasons"], ["PodFailurePolicy"],
                                 "a Job failed by a permanent exit code fails the set")
                self.assertGreaterEqual(spec["failurePolicy"].get("maxRestarts", 0), 1)
                self.assertEqual(spec["coordinator"]["replicatedJob"], "coordinator")

    def test_every_pod_template_meets_the_restricted_pod_security_standard(self):
        # The check itself catches each kind of mistake.
        good = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
                                                                "capabilities": {"drop": ["ALL"]}}}],
                "volumes": [{"name": "v", "emptyDir": {}}]}
        self.assertEqual(pod_security.violations(good), [])
        planted = {"hostPath": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
                   "allowPrivilegeEscalation": {"containers": [{"name": "c", "securityContext": {
                       "capabilities": {"drop": ["ALL"]}}}]},
                   "drop: must include ALL": {"containers": [{"name": "c", "securityContext": {
                       "allowPrivilegeEscalation": False}}]},
                   "seccompProfile": {"securityContext": {"runAsNonRoot": True}},
                   "runAsNonRoot": {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
                   "hostNetwork": {"hostNetwork": True},
                   "privileged": {"containers": [dict(good["containers"][0], securityContext=dict(
                       good["containers"][0]["securityContext"], privileged=True))]},
                   "SYS_ADMIN": {"containers": [dict(good["containers"][0], securityContext=dict(
                       good["containers"][0]["securityContext"], capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}))]}}
        for word, change in planted.items():
            bad = dict(good, **change)
            self.assertTrue(any(word in p for p in pod_security.violations(bad)), f"{word}: {pod_security.violations(bad)}")
        checked = 0
        sources = [(d, render(d)) for d in DEPLOYMENTS] + [(d, render(d)) for d in OTHER_RENDERED]
        sources += [("/".join(p), load("k8s", *p)) for p in OTHER_FILES]
        for source, objects in sources:
            for o in objects:
                for where, meta, spec in workloads.pod_templates(o):
                    checked += 1
                    with self.subTest(source=source, template=where):
                        self.assertEqual(pod_security.violations(spec, meta), [])
        self.assertGreaterEqual(checked, 3 * len(DEPLOYMENTS) + 3)

    def test_what_gke_and_the_nodes_allow(self):
        for deployment, kind in DEPLOYMENTS.items():
            with self.subTest(deployment=deployment):
                objects = render(deployment)
                pods = workloads.shoal_pods(objects)
                for pod in pods:
                    grace = pod.spec.get("terminationGracePeriodSeconds", 30)
                    if is_spot(pod.spec):
                        # A spot VM's pods get 15 s of its 30 s notice: asking for more is a lie.
                        self.assertLessEqual(grace, SPOT_GRACE_SECONDS, f"{pod.name}: spot")
                    else:
                        self.assertGreaterEqual(grace, 20, f"{pod.name}: room for the SIGTERM checkpoint")
                    # Asynchronous workers never use NCCL: no memory-backed /dev/shm counting
                    # against their memory.
                    for v in pod.spec["volumes"]:
                        self.assertNotEqual(v.get("emptyDir", {}).get("medium"), "Memory", f"{pod.name}: {v['name']}")
                    # On failure, the last log lines (Shoal's error) are the termination message.
                    self.assertEqual(pod.container.get("terminationMessagePolicy"), "FallbackToLogsOnError", pod.name)
                    # Workers listen on nothing but their status port.
                    if pod.role == "worker":
                        self.assertEqual([p["name"] for p in pod.container["ports"]], ["metrics"], pod.name)
                for service in by_kind(objects, "Service").values():
                    if service["spec"]["selector"].get("app.kubernetes.io/component") == "worker":
                        self.assertEqual([p["name"] for p in service["spec"]["ports"]], ["metrics"])
                # The coordinator's budget protects it: one replica, no voluntary eviction.
                budget = next(b for b in by_kind(objects, "PodDisruptionBudget").values()
                              if b["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/component": "coordinator"})
                self.assertTrue(budget["spec"].get("maxUnavailable") == 0 or budget["spec"].get("minAvailable", 0) >= 1,
                                budget["spec"])
                # Under Jobs a drained server exits 0 and its index counts as done: no eviction.
                servers = by_kind(objects, "PodDisruptionBudget")["shoal-ps"]["spec"]
                self.assertEqual(servers["maxUnavailable"], 1 if kind == "StatefulSet" else 0, deployment)
                # Filestore's Basic HDD tier (standard-rwx) starts at 1 TiB.
                claim = by_kind(objects, "PersistentVolumeClaim")["shoal-checkpoints"]
                if claim["spec"].get("storageClassName") == "standard-rwx":
                    self.assertIn(claim["spec"]["resources"]["requests"]["storage"], ("1Ti", "1024Gi"))

    def test_the_mpijob_example_launches_a_sync_job_shoal_accepts(self):
        path = os.path.join(SOURCE, "k8s", "mpijob", "sync-mpijob.yaml")
        with open(path) as f:
            objects = [d for d in yaml.safe_load_all(f) if d is not None]
        job = by_kind(objects, "ConfigMap")["shoal-sync-job"]["data"]["job.ini"]
        mpijob = by_kind(objects, "MPIJob")["shoal-sync"]
        self.assertEqual(mpijob["apiVersion"], "kubeflow.org/v2beta1")
        specs = mpijob["spec"]["mpiReplicaSpecs"]
        command = specs["Launcher"]["template"]["spec"]["containers"][0]["command"]
        ranks = int(command[command.index("-np") + 1])
        self.assertEqual(ranks, specs["Worker"]["replicas"] * mpijob["spec"]["slotsPerWorker"])
        worker = specs["Worker"]["template"]["spec"]["containers"][0]
        self.assertEqual(worker["resources"]["limits"]["nvidia.com/gpu"], 1)
        shoal_args = command[command.index("shoal") + 1:]
        self.assertEqual(shoal_args[0], "worker")
        with tempfile.TemporaryDirectory() as tmp:
            job_file = os.path.join(tmp, "job.ini")
            with open(job_file, "w") as f:
                f.write(job)
            args = [job_file if a == "/etc/shoal/job.ini" else a for a in shoal_args[1:]]
            env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
            out = subprocess.run([SHOAL, "config"] + args, env=env, capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertRegex(out.stdout, r"strategy +?= sync ")
            self.assertRegex(out.stdout, rf"cluster\.workers +?= {ranks} ", "the job's ranks are mpirun's")


# `shoal serve`'s defaults (docs/serving.md): the port when neither --port nor PORT is given,
# and the drain after SIGTERM.
SERVE_PORT, SERVE_DRAIN_SECONDS = 8080, 10
# KServe's predictor implementations: one of these instead of `containers` is not a custom predictor.
KSERVE_RUNTIMES = {"model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx",
                   "pmml", "lightgbm", "paddle", "huggingface"}


def serve_options(args):
    """`shoal serve MODEL --key=value --key value ...` -> {"key": "value"}."""
    options, i = {}, 2
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise AssertionError(f"{args}: {a!r} is not an option (one MODEL only)")
        if "=" in a:
            key, value = a[2:].split("=", 1)
        else:
            key, value = a[2:], args[i + 1]
            i += 1
        options[key] = value
        i += 1
    return options


def model_mount(container):
    """The volume mount the model path (args[1]) lies on, or None."""
    path = container["args"][1]
    for m in container.get("volumeMounts", []):
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"):
            return m
    return None


class Serving(unittest.TestCase):
    """k8s/serving (and its overlay k8s/serving-queue-depth), k8s/serving/kserve, k8s/serving/cloudrun."""

    def check_serve_container(self, container, where):
        """What every `shoal serve` container needs; returns (its options, the port it listens on)."""
        args = container["args"]
        self.assertEqual(args[0], "serve", f"{where}: the image's entrypoint is `shoal`: the args start with the command")
        self.assertTrue(args[1].startswith("/"), f"{where}: MODEL is an absolute path: {args}")
        options = serve_options(args)
        port = int(options.get("serve.port", SERVE_PORT))
        self.assertEqual(options.get("serve.host", "0.0.0.0"), "0.0.0.0", f"{where}: reachable from outside the pod")
        self.assertEqual([p["containerPort"] for p in container["ports"]], [port], f"{where}: the port it listens on")
        names = {p.get("name"): p["containerPort"] for p in container["ports"]}

        def probed_port(probe):
            p = probe["httpGet"]["port"]
            return names[p] if isinstance(p, str) else p

        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/v2/health/live", where)
        self.assertEqual(probed_port(container["livenessProbe"]), port, where)
        if "readinessProbe" in container:
            self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/v2/health/ready", where)
            self.assertEqual(probed_port(container["readinessProbe"]), port, where)
        if "startupProbe" in container:
            self.assertIn(container["startupProbe"]["httpGet"]["path"], ["/v2/health/live", "/v2/health/ready"], where)
            self.assertEqual(probed_port(container["startupProbe"]), port, where)
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            if kind in container:  # an answer may take as long as the period, never longer
                probe = container[kind]
                self.assertLessEqual(probe.get("timeoutSeconds", 1), probe.get("periodSeconds", 10), f"{where}: {kind}")
        self.assertIn("cpu", container["resources"]["limits"], f"{where}: the CPU quota serve sizes its threads by")
        self.assertIn("memory", container["resources"]["limits"], where)
        return options, port

    def check_restricted(self, pod, container, where):
        """Kubernetes' `restricted` Pod Security Standard, and a read-only root filesystem."""
        self.assertTrue(pod["securityContext"]["runAsNonRoot"], where)
        self.assertNotEqual(pod["securityContext"].get("runAsUser"), 0, where)
        self.assertEqual(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", where)
        sc = container["securityContext"]
        self.assertIs(sc["allowPrivilegeEscalation"], False, where)
        self.assertEqual(sc["capabilities"], {"drop": ["ALL"]}, where)
        self.assertIs(sc["readOnlyRootFilesystem"], True, where)
        self.assertFalse(sc.get("privileged", False), where)
        # With the root read-only, /tmp is a volume of its own.
        self.assertIn("/tmp", [m["mountPath"] for m in container["volumeMounts"]], where)

    def test_the_deployment_service_autoscaler_and_budget(self):
        objects = render_dir(os.path.join(SOURCE, "k8s", "serving"))
        self.assertEqual(sorted((o["kind"], o["metadata"]["name"]) for o in objects),
                         [("Deployment", "shoal-serve"), ("HorizontalPodAutoscaler", "shoal-serve"),
                          ("PodDisruptionBudget", "shoal-serve"), ("Service", "shoal-serve")])
        deployment = by_kind(objects, "Deployment")["shoal-serve"]
        template = deployment["spec"]["template"]
        pod, labels = template["spec"], template["metadata"]["labels"]
        for k, v in deployment["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(labels.get(k), v, "the Deployment selects its own pods")
        [container] = pod["containers"]
        self.assertTrue(container["image"].startswith("shoal-cpu"), container["image"])
        options, port = self.check_serve_container(container, "Deployment")
        self.assertIn("readinessProbe", container)
        self.assertIn("startupProbe", container)
        self.check_restricted(pod, container, "Deployment")
        self.assertIs(pod.get("automountServiceAccountToken"), False, "it needs no API access")
        # The model: the training job's checkpoint claim (k8s/common), read-only, followed.
        mount = model_mount(container)
        self.assertIsNotNone(mount, f"{container['args'][1]} is on no volume")
        self.assertTrue(mount["readOnly"])
        claim = {v["name"]: v for v in pod["volumes"]}[mount["name"]]["persistentVolumeClaim"]
        self.assertEqual(claim["claimName"], "shoal-checkpoints", "the claim of k8s/common")
        self.assertTrue(claim["readOnly"])
        for kind in ("requests", "limits"):
            self.assertIn("cpu", container["resources"][kind], kind)
            self.assertIn("memory", container["resources"][kind], kind)
        # SIGTERM comes after the preStop pause; the drain must end before SIGKILL.
        drain = float(options.get("serve.drain_seconds", SERVE_DRAIN_SECONDS))
        pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        self.assertGreater(pod["terminationGracePeriodSeconds"], pause + drain,
                           f"grace {pod['terminationGracePeriodSeconds']} s, preStop {pause} s, drain {drain} s")
        annotations = template["metadata"]["annotations"]
        self.assertEqual(annotations["prometheus.io/scrape"], "true")
        self.assertEqual(int(annotations["prometheus.io/port"]), port)
        self.assertEqual(annotations["prometheus.io/path"], "/metrics")
        # The Service: port 80 to the server's port, named http, selecting these pods.
        service = by_kind(objects, "Service")["shoal-serve"]
        self.assertNotEqual(service["spec"].get("clusterIP"), "None", "one load-balanced address, not headless")
        for k, v in service["spec"]["selector"].items():
            self.assertEqual(labels.get(k), v, "the Service selects other pods")
        [sp] = service["spec"]["ports"]
        target = sp["targetPort"]
        if isinstance(target, str):
            target = {p.get("name"): p["containerPort"] for p in container["ports"]}[target]
        self.assertEqual((sp["name"], sp["port"], target), ("http", 80, port))
        # The autoscaler: the Deployment, on the CPU utilization of its requests, 2 pods at least.
        hpa = by_kind(objects, "HorizontalPodAutoscaler")["shoal-serve"]
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        self.assertEqual(hpa["spec"]["scaleTargetRef"],
                         {"apiVersion": deployment["apiVersion"], "kind": "Deployment", "name": "shoal-serve"})
        [metric] = hpa["spec"]["metrics"]
        self.assertEqual((metric["type"], metric["resource"]["name"], metric["resource"]["target"]["type"]),
                         ("Resource", "cpu", "Utilization"))
        self.assertTrue(0 < metric["resource"]["target"]["averageUtilization"] <= 100)
        low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
        self.assertGreaterEqual(low, 2)
        self.assertGreaterEqual(high, low)
        # The budget protects something and still lets a drain proceed: fewer than the pods there are.
        replicas = [low] + ([deployment["spec"]["replicas"]] if "replicas" in deployment["spec"] else [])
        pdb = by_kind(objects, "PodDisruptionBudget")["shoal-serve"]
        self.assertIsInstance(pdb["spec"]["minAvailable"], int, "a count, not a percentage")
        self.assertGreaterEqual(pdb["spec"]["minAvailable"], 1)
        self.assertLess(pdb["spec"]["minAvailable"], min(replicas), "a node drain could never evict a pod")
        for k, v in pdb["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(labels.get(k), v, "the budget covers other pods")

    def test_the_queue_depth_overlay_scales_on_the_custom_metric(self):
        objects = render_dir(os.path.join(SOURCE, "k8s", "serving-queue-depth"))
        hpa = by_kind(objects, "HorizontalPodAutoscaler")["shoal-serve"]
        metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
        self.assertEqual(sorted(metrics), ["Pods", "Resource"], "CPU and the queue")
        self.assertEqual(metrics["Resource"]["resource"]["name"], "cpu")
        pods = metrics["Pods"]["pods"]
        self.assertEqual(pods["metric"]["name"], "shoal_serve_queue_depth")
        self.assertEqual(pods["target"]["type"], "AverageValue")
        # Below the queue's bound: pods are added before requests are refused.
        container = by_kind(objects, "Deployment")["shoal-serve"]["spec"]["template"]["spec"]["containers"][0]
        queue = serve_options(container["args"]).get("serve.queue")
        if queue is not None:
            self.assertLess(float(pods["target"]["averageValue"]), int(queue))
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], "shoal-serve")
        self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2, "the rest of hpa.yaml is kept")

    def test_the_kserve_inference_service_is_a_v2_custom_predictor(self):
        [isvc] = load("k8s", "serving", "kserve", "inferenceservice.yaml")
        self.assertEqual((isvc["apiVersion"], isvc["kind"]), ("serving.kserve.io/v1beta1", "InferenceService"))
        self.assertRegex(isvc["metadata"]["name"], r"^[a-z]([-a-z0-9]*[a-z0-9])?$", "a DNS label (KServe's rule)")
        self.assertEqual(sorted(isvc["spec"]), ["predictor"])
        predictor = isvc["spec"]["predictor"]
        self.assertFalse(set(predictor) & KSERVE_RUNTIMES, "a custom container, not a built-in runtime")
        [container] = predictor["containers"]
        self.assertEqual(container["name"], "kserve-container", "the container KServe reads PROTOCOL and STORAGE_URI from")
        env = env_of(container)
        self.assertEqual(env["PROTOCOL"], "v2", "the Open Inference Protocol")
        options, port = self.check_serve_container(container, "InferenceService")
        self.assertEqual(port, 8080, "KServe routes to 8080")
        self.assertIn("readinessProbe", container)
        # KServe's storage initializer puts STORAGE_URI at /mnt/models (a pvc:// is mounted there).
        self.assertRegex(env["STORAGE_URI"], r"^(pvc|gs|s3|https?)://")
        self.assertTrue(container["args"][1] == "/mnt/models" or container["args"][1].startswith("/mnt/models/"))
        self.check_restricted(predictor, container, "InferenceService")
        volumes = {v["name"] for v in predictor.get("volumes", [])}
        for m in container["volumeMounts"]:
            self.assertIn(m["name"], volumes)
        drain = float(options.get("serve.drain_seconds", SERVE_DRAIN_SECONDS))
        self.assertGreater(predictor.get("terminationGracePeriodSeconds", 30), drain, "Kubernetes' default grace")
        # Scaling: KServe's fields, consistent with the server's own queue.
        self.assertLessEqual(predictor["minReplicas"], predictor["maxReplicas"])
        self.assertIn(predictor["scaleMetric"], ["cpu", "memory", "concurrency", "rps"])
        if "serve.queue" in options:
            self.assertLessEqual(predictor["containerConcurrency"], int(options["serve.queue"]))
        if predictor["scaleMetric"] == "concurrency":
            self.assertLessEqual(predictor["scaleTarget"], predictor["containerConcurrency"])

    def test_the_cloud_run_service(self):
        [service] = load("k8s", "serving", "cloudrun", "service.yaml")
        self.assertEqual((service["apiVersion"], service["kind"]), ("serving.knative.dev/v1", "Service"))
        template = service["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        low = int(annotations["autoscaling.knative.dev/minScale"])
        high = int(annotations["autoscaling.knative.dev/maxScale"])
        self.assertTrue(0 <= low <= high, (low, high))
        spec = template["spec"]
        [container] = spec["containers"]
        options, port = self.check_serve_container(container, "Cloud Run")
        # Cloud Run sets PORT to the containerPort (and reserves the name): the server reads it.
        self.assertNotIn("serve.port", options, "Cloud Run's PORT decides")
        self.assertNotIn("PORT", [e["name"] for e in container.get("env", [])])
        [p] = container["ports"]
        self.assertIn(p.get("name", "http1"), ["http1", "h2c"], "Cloud Run's port names")
        # Cloud Run has no readiness probe of Kubernetes' kind: the startup probe gates traffic.
        startup = container["startupProbe"]
        self.assertEqual(startup["httpGet"]["path"], "/v2/health/ready")
        self.assertLessEqual(startup.get("initialDelaySeconds", 0) + startup["failureThreshold"] * startup["periodSeconds"],
                             240, "Cloud Run's limit on a startup probe")
        # SIGTERM, then SIGKILL 10 s later (Cloud Run's container runtime contract).
        self.assertLess(float(options.get("serve.drain_seconds", SERVE_DRAIN_SECONDS)), 10)
        self.assertLessEqual(spec["containerConcurrency"], int(options["serve.queue"]),
                             "Cloud Run routes no more requests to an instance than it queues")
        mount = model_mount(container)
        self.assertIsNotNone(mount, f"{container['args'][1]} is on no volume")
        csi = {v["name"]: v for v in spec["volumes"]}[mount["name"]]["csi"]
        self.assertEqual(csi["driver"], "gcsfuse.run.googleapis.com")
        self.assertTrue(csi["readOnly"])
        self.assertEqual(annotations["run.googleapis.com/execution-environment"], "gen2")

    def test_every_serve_command_line_is_a_configuration_shoal_accepts(self):
        # `shoal serve MODEL --serve.KEY=VALUE ...`: the options are settings (docs/configuration.md),
        # which `shoal config` checks as it does the training pods' (a typo fails here, not in a pod).
        table = subprocess.run([SHOAL, "config", "--markdown"], capture_output=True, text=True).stdout
        if "`serve.max_batch`" not in table:
            self.skipTest("this build of shoal has no serve.* settings yet")
        containers = {
            "k8s/serving": by_kind(render_dir(os.path.join(SOURCE, "k8s", "serving")), "Deployment")["shoal-serve"]
            ["spec"]["template"]["spec"]["containers"][0],
            "kserve": load("k8s", "serving", "kserve", "inferenceservice.yaml")[0]["spec"]["predictor"]["containers"][0],
            "cloudrun": load("k8s", "serving", "cloudrun", "service.yaml")[0]["spec"]["template"]["spec"]["containers"][0]}
        with tempfile.TemporaryDirectory() as tmp:
            job_file = os.path.join(tmp, "empty.ini")
            open(job_file, "w").close()
            for where, container in containers.items():
                with self.subTest(manifest=where):
                    options = serve_options(container["args"])
                    for key in options:
                        self.assertTrue(key.startswith("serve.") or f"`{key}`" in table, f"{where}: --{key}")
                    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_") and k != "PORT"}
                    env.update({k: v for k, v in env_of(container).items() if k.startswith("SHOAL_")})
                    out = subprocess.run([SHOAL, "config", job_file] + container["args"][2:], env=env,
                                         capture_output=True, text=True)
                    self.assertEqual(out.returncode, 0, f"{where}: {out.stderr}")
                    for key, value in options.items():
                        self.assertRegex(out.stdout, rf"(?m)^ *{re.escape(key)} += .*\(command line\)", f"{where}: --{key}")

def env_of(container, pod_index="0"):
    """The container's environment as the kubelet gives it (the pod-index label as `pod_index`)."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == \
                "metadata.labels['apps.kubernetes.io/pod-index']":
            env[e["name"]] = pod_index
        else:
            raise AssertionError(f"{e['name']}: a source the test does not know")
    return env


if __name__ == "__main__":
    if shutil.which("kubectl") is None:
        print("SKIPPED: kubectl is not installed (Debian: kubernetes-client; launch/setup-debian.sh installs it)")
        sys.exit(77)
    unittest.main(argv=[sys.argv[0], "-v"])
