#!/usr/bin/python3
"""The Kubernetes manifests (k8s/), rendered as `kubectl kustomize` renders them, checked for
what a Shoal job needs: every overlay renders; every StatefulSet has its headless Service that
publishes not-ready addresses, starts its pods in parallel, and mounts the job's ConfigMap and
the shared checkpoint volume; the GPU and MIG overlays ask for GPUs where GKE gives them; the
gcsfuse overlay mounts a bucket of tar shards read-only in every pod; and
every container's command line and SHOAL_* environment, with the job file from the rendered
ConfigMap, is a configuration `shoal config` accepts (a renamed setting or a typo in a manifest
fails here, not in a pod).

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

SHOAL = sys.argv[1] if len(sys.argv) > 1 else "build/shoal"
SOURCE = sys.argv[2] if len(sys.argv) > 2 else "."
OVERLAYS = ["cpu", "gke-gpu", "gke-mig", "gke-gcsfuse"]


def render(overlay):
    return render_dir(os.path.join(SOURCE, "k8s", "overlays", overlay))


def render_dir(path):
    kubectl = shutil.which("kubectl")
    out = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def load(*path):
    with open(os.path.join(SOURCE, *path)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def by_kind(objects, kind):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


class Manifests(unittest.TestCase):
    def test_every_overlay_renders_a_consistent_job(self):
        for overlay in OVERLAYS:
            with self.subTest(overlay=overlay):
                objects = render(overlay)
                for o in objects:
                    self.assertTrue(o.get("apiVersion") and o.get("kind") and o.get("metadata", {}).get("name"), o)
                sets, services = by_kind(objects, "StatefulSet"), by_kind(objects, "Service")
                maps, claims = by_kind(objects, "ConfigMap"), by_kind(objects, "PersistentVolumeClaim")
                self.assertEqual(sorted(sets), ["shoal-coordinator", "shoal-ps", "shoal-worker"])
                self.assertEqual(len(by_kind(objects, "PodDisruptionBudget")), 3)
                claim = claims["shoal-checkpoints"]
                self.assertEqual(claim["spec"]["accessModes"], ["ReadWriteMany"], "every pod writes its part")
                for name, s in sets.items():
                    spec, pod = s["spec"], s["spec"]["template"]["spec"]
                    self.assertEqual(spec["podManagementPolicy"], "Parallel", name)
                    self.assertNotIn("volumeClaimTemplates", spec, f"{name}: kustomize v2's commonLabels bug")
                    service = services[spec["serviceName"]]
                    self.assertEqual(service["spec"]["clusterIP"], "None", name)
                    self.assertTrue(service["spec"]["publishNotReadyAddresses"], name)
                    labels = spec["template"]["metadata"]["labels"]
                    for k, v in service["spec"]["selector"].items():
                        self.assertEqual(labels.get(k), v, f"{name}: its Service selects other pods")
                    self.assertGreaterEqual(pod["terminationGracePeriodSeconds"], 20, "room for the SIGTERM checkpoint")
                    self.assertTrue(pod["securityContext"]["runAsNonRoot"], name)
                    volumes = {v["name"]: v for v in pod["volumes"]}
                    self.assertIn(volumes["job"]["configMap"]["name"], maps, f"{name}: the job's ConfigMap")
                    self.assertEqual(volumes["checkpoints"]["persistentVolumeClaim"]["claimName"], "shoal-checkpoints")
                workers = sets["shoal-worker"]["spec"]["template"]["spec"]
                container = workers["containers"][0]
                if overlay.startswith("gke-"):
                    self.assertEqual(container["resources"]["limits"]["nvidia.com/gpu"], 1)
                    self.assertIn("cloud.google.com/gke-accelerator", workers["nodeSelector"])
                    self.assertTrue(container["image"].startswith("shoal-gpu"), container["image"])
                    self.assertEqual(claim["spec"].get("storageClassName"), "standard-rwx", "Filestore on GKE")
                else:
                    self.assertTrue(container["image"].startswith("shoal-cpu"), container["image"])
                if overlay == "gke-gpu":
                    self.assertEqual(workers["nodeSelector"]["cloud.google.com/gke-spot"], "true")
                    self.assertIn("cloud.google.com/gke-spot", [t["key"] for t in workers["tolerations"]])
                if overlay == "gke-gcsfuse":
                    # Every process reads the data (the coordinator and servers: the index and
                    # shape), from the bucket mounted read-only by the Cloud Storage FUSE CSI
                    # driver, as a service account that exists.
                    accounts = by_kind(objects, "ServiceAccount")
                    for name, s in sets.items():
                        pod = s["spec"]["template"]
                        self.assertEqual(pod["metadata"]["annotations"]["gke-gcsfuse/volumes"], "true", name)
                        self.assertIn(pod["spec"]["serviceAccountName"], accounts, name)
                        data = {v["name"]: v for v in pod["spec"]["volumes"]}["data"]["csi"]
                        self.assertEqual(data["driver"], "gcsfuse.csi.storage.gke.io", name)
                        self.assertTrue(data["readOnly"], name)
                        mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
                        self.assertTrue(mounts["/data"]["readOnly"], name)
                        self.assertEqual(env_of(pod["spec"]["containers"][0])["SHOAL_DATA_FORMAT"], "tar", name)
                if overlay == "gke-mig":
                    self.assertIn("cloud.google.com/gke-gpu-partition-size", workers["nodeSelector"])
                    self.assertEqual(int(sets["shoal-worker"]["spec"]["replicas"]),
                                     int(env_of(container)["SHOAL_CLUSTER_WORKERS"]))

    def test_every_container_runs_a_configuration_shoal_accepts(self):
        for overlay in OVERLAYS:
            objects = render(overlay)
            job = next(iter(by_kind(objects, "ConfigMap").values()))["data"]["job.ini"]
            with tempfile.TemporaryDirectory() as tmp:
                job_file = os.path.join(tmp, "job.ini")
                with open(job_file, "w") as f:
                    f.write(job)
                for name, s in by_kind(objects, "StatefulSet").items():
                    with self.subTest(overlay=overlay, statefulset=name):
                        container = s["spec"]["template"]["spec"]["containers"][0]
                        args = [job_file if a == "/etc/shoal/job.ini" else a for a in container["args"]]
                        self.assertIn(args[0], ["coordinator", "ps", "worker"])
                        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
                        env.update(env_of(container, pod_index="1"))
                        out = subprocess.run([SHOAL, "config"] + args[1:], env=env, capture_output=True, text=True)
                        self.assertEqual(out.returncode, 0, f"{overlay}/{name}: {out.stderr}")
                        described = out.stdout
                        for key, value in env_of(container, pod_index="1").items():
                            self.assertIn(f"(env {key})", described, f"{key} is not used")
                        if name == "shoal-ps":
                            self.assertRegex(described, r"node\.rank +?= 1 ")
                        # The probes reach the port the process serves its status on.
                        port = re.search(r"^ *metrics\.port += (-?\d+) ", described, re.M)
                        self.assertIsNotNone(port, described)
                        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                        self.assertEqual(ports.get("metrics"), int(port.group(1)), f"{name}: metrics port")
                        # The keys auth.keys names are the Secret's, mounted read-only.
                        keys = re.search(r"^ *auth\.keys += (\S+) ", described, re.M)
                        self.assertIsNotNone(keys, f"{name}: auth.keys is not set")
                        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
                        self.assertIn(keys.group(1), mounts, f"{name}: auth.keys is not mounted")
                        volumes = {v["name"]: v for v in s["spec"]["template"]["spec"]["volumes"]}
                        volume = volumes[mounts[keys.group(1)]["name"]]
                        self.assertEqual(volume["secret"]["secretName"], "shoal-keys", name)
                        self.assertTrue(mounts[keys.group(1)]["readOnly"], name)
                        self.assertEqual(container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "metrics"})
                        self.assertEqual(container["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "metrics"})

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
        # The model: the training job's checkpoint claim (k8s/base), read-only, followed.
        mount = model_mount(container)
        self.assertIsNotNone(mount, f"{container['args'][1]} is on no volume")
        self.assertTrue(mount["readOnly"])
        claim = {v["name"]: v for v in pod["volumes"]}[mount["name"]]["persistentVolumeClaim"]
        self.assertEqual(claim["claimName"], "shoal-checkpoints", "the claim of k8s/base")
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
