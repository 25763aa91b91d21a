#!/usr/bin/python3
"""The Kubernetes manifests (k8s/), rendered as `kubectl kustomize` renders them, checked for
what a Shoal job needs: every overlay renders; every StatefulSet has its headless Service that
publishes not-ready addresses, starts its pods in parallel, and mounts the job's ConfigMap and
the shared checkpoint volume; the GPU and MIG overlays ask for GPUs where GKE gives them; the
gcsfuse overlay mounts a bucket of tar shards read-only in every pod; and
every container's command line and SHOAL_* environment, with the job file from the rendered
ConfigMap, is a configuration `shoal config` accepts (a renamed setting or a typo in a manifest
fails here, not in a pod).

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
    kubectl = shutil.which("kubectl")
    out = subprocess.run([kubectl, "kustomize", os.path.join(SOURCE, "k8s", "overlays", overlay)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize k8s/overlays/{overlay} failed: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


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
