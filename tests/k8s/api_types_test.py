#!/usr/bin/env python3
"""Every object of every rendered overlay of k8s/ (the StatefulSets, the Indexed Jobs, the
JobSet's Job templates, the MPIJob's pod templates) checked against the Kubernetes API types,
without a cluster: each object becomes a TypeScript object
literal typed with its kind's interface from the npm package kubernetes-models, and the
TypeScript compiler checks it. The serving manifests too: k8s/serving rendered (with and
without its queue-depth overlay, k8s/serving-queue-depth), the Cloud Run Service against the Knative types of
@kubernetes-models/knative, and the KServe InferenceService, for which no types are published:
its metadata as an ObjectMeta, its predictor (less KServe's own scaling fields) as the PodSpec it
inlines. Object literals get TypeScript's excess-property check at every
depth, so an unknown or misspelt field anywhere fails, as do a wrong type, a missing required
field and a value outside an enum. Planted misspellings check that the check can fail.

  api_types_test.py SOURCE_DIR WORK_DIR

The packages are installed (npm ci, from tests/k8s/api-types/package-lock.json) into WORK_DIR
once. Exit 77 (skipped, with the reason) without kubectl, node and npm, Python's yaml, or when
the npm registry cannot be reached.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

SOURCE, WORK = sys.argv[1], sys.argv[2]
# Every overlay of the three deployments (tests/k8s/manifests_test.py: DEPLOYMENTS).
OVERLAYS = ["overlays/cpu", "overlays/gke-gpu", "overlays/gke-mig", "overlays/gke-gcsfuse",
            "jobs/overlays/cpu", "jobs/overlays/gke-gpu", "jobs/overlays/gke-mig", "jobs/overlays/gpu-operator-mig",
            "jobset/overlays/cpu", "jobset/overlays/gke-gpu"]
# kind -> (module of kubernetes-models, interface)
TYPES = {
    ("v1", "Service"): ("kubernetes-models/v1/Service", "IService"),
    ("v1", "ConfigMap"): ("kubernetes-models/v1/ConfigMap", "IConfigMap"),
    ("v1", "Secret"): ("kubernetes-models/v1/Secret", "ISecret"),
    ("v1", "PersistentVolumeClaim"): ("kubernetes-models/v1/PersistentVolumeClaim", "IPersistentVolumeClaim"),
    ("v1", "ServiceAccount"): ("kubernetes-models/v1/ServiceAccount", "IServiceAccount"),
    ("apps/v1", "StatefulSet"): ("kubernetes-models/apps/v1/StatefulSet", "IStatefulSet"),
    ("apps/v1", "Deployment"): ("kubernetes-models/apps/v1/Deployment", "IDeployment"),
    ("batch/v1", "Job"): ("kubernetes-models/batch/v1/Job", "IJob"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"):
        ("kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler", "IHorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"): ("kubernetes-models/policy/v1/PodDisruptionBudget", "IPodDisruptionBudget"),
    # Cloud Run's YAML (k8s/serving/cloudrun/service.yaml).
    ("serving.knative.dev/v1", "Service"): ("@kubernetes-models/knative/serving.knative.dev/v1/Service", "IService"),
}
POD_TEMPLATE = ("kubernetes-models/v1/PodTemplateSpec", "IPodTemplateSpec")
JOB_TEMPLATE = ("kubernetes-models/batch/v1/JobTemplateSpec", "IJobTemplateSpec")
POD_SPEC = ("kubernetes-models/v1/PodSpec", "IPodSpec")
OBJECT_META = ("@kubernetes-models/apimachinery/apis/meta/v1/ObjectMeta", "IObjectMeta")
# KServe's ComponentExtensionSpec (serving.kserve.io/v1beta1): the predictor's fields beside the
# PodSpec it inlines.
KSERVE_EXTENSION = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
                    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
                    "labels", "annotations", "deploymentStrategy", "autoScaling"}


def skip(reason):
    print("SKIP: Kubernetes API type check skipped: " + reason)
    sys.exit(77)


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


try:
    import yaml
except ImportError:
    skip("Python's yaml module is missing (python3-yaml)")
for tool in ("kubectl", "node", "npm"):
    if shutil.which(tool) is None:
        skip(f"no `{tool}` on the PATH (launch/setup-debian.sh installs kubernetes-client, nodejs and npm)")


def install():
    """kubernetes-models and typescript, as locked, in WORK (reused while the lock is unchanged)."""
    lock_src = os.path.join(SOURCE, "tests", "k8s", "api-types", "package-lock.json")
    os.makedirs(WORK, exist_ok=True)
    lock = open(lock_src).read()
    stamp = os.path.join(WORK, "installed-lock.json")
    if os.path.exists(stamp) and open(stamp).read() == lock and os.path.isdir(os.path.join(WORK, "node_modules")):
        return
    for name in ("package.json", "package-lock.json"):
        shutil.copy(os.path.join(SOURCE, "tests", "k8s", "api-types", name), WORK)
    # One retry after at most 5 s: without a registry (no DNS, no route) npm's defaults spent
    # 71 s before giving up; a reachable registry answers in well under that.
    r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error",
                        "--fetch-retries=1", "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=5000"], cwd=WORK,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        # npm's own words: "npm ERR! code SELF_SIGNED_CERT_IN_CHAIN", "... request to ... failed".
        said = [l for l in r.stderr.splitlines() if " code " in l or "failed" in l or "ERR!" in l]
        skip("npm ci could not install the locked packages (is the npm registry reachable, and its "
             "certificate trusted?): " + " | ".join(said[:3] or r.stderr.strip().splitlines()[-1:] or ["?"]))
    with open(stamp, "w") as f:
        f.write(lock)


def rendered(path, where):
    out = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"kubectl kustomize {where}: {out.stderr}")
    return [(where, o) for o in yaml.safe_load_all(out.stdout) if o]


def loaded(*path):
    with open(os.path.join(SOURCE, "k8s", *path)) as f:
        return [("/".join(path), o) for o in yaml.safe_load_all(f) if o]


def documents():
    """(where, object) of every overlay, the MPIJob example and the serving manifests."""
    for overlay in OVERLAYS:
        yield from rendered(os.path.join(SOURCE, "k8s", overlay), overlay)
    yield from loaded("mpijob", "sync-mpijob.yaml")
    yield from rendered(os.path.join(SOURCE, "k8s", "serving"), "serving")
    yield from [t for t in rendered(os.path.join(SOURCE, "k8s", "serving-queue-depth"), "serving-queue-depth")
                if t[1]["kind"] == "HorizontalPodAutoscaler"]
    yield from loaded("serving", "cloudrun", "service.yaml")
    yield from loaded("serving", "kserve", "inferenceservice.yaml")


def typed(where, o):
    """(module, interface, value, label) for each part of `o` that has a type here."""
    label = f"{where}: {o.get('kind')} {o.get('metadata', {}).get('name')}"
    if o.get("kind") == "JobSet":  # a custom resource (tests/k8s/crd_schema_test.py checks it whole):
        for job in o["spec"]["replicatedJobs"]:  # its Job templates are Kubernetes' own type
            yield JOB_TEMPLATE + (job["template"], f"{label} {job['name']} template")
        return
    if o.get("kind") == "MPIJob":  # a custom resource: its pod templates are Kubernetes' own type
        for role, spec in o["spec"]["mpiReplicaSpecs"].items():
            yield POD_TEMPLATE + (spec["template"], f"{label} {role} template")
        return
    if o.get("kind") == "InferenceService":  # KServe's: no published types; its parts that are Kubernetes'
        if o.get("apiVersion") != "serving.kserve.io/v1beta1" or sorted(o) != ["apiVersion", "kind", "metadata", "spec"]:
            fail(f"{label}: not a serving.kserve.io/v1beta1 InferenceService of apiVersion, kind, metadata, spec")
        yield OBJECT_META + (o["metadata"], f"{label} metadata")
        for component, spec in o["spec"].items():
            if component not in ("predictor", "transformer", "explainer"):
                fail(f"{label}: spec.{component} is not a component of an InferenceService")
            yield POD_SPEC + ({k: v for k, v in spec.items() if k not in KSERVE_EXTENSION}, f"{label} {component}")
        return
    key = (o.get("apiVersion"), o.get("kind"))
    if key not in TYPES:
        fail(f"{label}: no API type known for {key}: add it to TYPES in {__file__}")
    yield TYPES[key] + (o, label)


def check(items, directory):
    """tsc's errors for the items, as (label, message)."""
    os.makedirs(directory, exist_ok=True)
    imports, lines, labels = {}, [], []
    for module, interface, value, label in items:
        alias = imports.setdefault((module, interface), f"T{len(imports)}")
        labels.append(label)
        lines.append(f"export const o{len(labels) - 1}: {alias} = {json.dumps(value)};")
    header = [f'import type {{ {i} as {a} }} from "{m}";' for (m, i), a in imports.items()]
    with open(os.path.join(directory, "manifests.ts"), "w") as f:
        f.write("\n".join(header + lines) + "\n")
    with open(os.path.join(directory, "tsconfig.json"), "w") as f:
        json.dump({"compilerOptions": {"strict": True, "noEmit": True, "module": "nodenext",
                                       "moduleResolution": "nodenext", "target": "es2020", "skipLibCheck": True,
                                       "typeRoots": [], "baseUrl": WORK, "paths": {"*": [WORK + "/node_modules/*"]}},
                   "files": ["manifests.ts"]}, f)
    r = subprocess.run(["node", os.path.join(WORK, "node_modules", "typescript", "bin", "tsc"), "-p", directory],
                       capture_output=True, text=True, timeout=300)
    errors = []
    for line in (r.stdout + r.stderr).splitlines():
        # manifests.ts(LINE,COL): error TS...: message
        if "): error TS" in line:
            number = int(line.split("(", 1)[1].split(",", 1)[0])
            index = number - 1 - len(header)
            errors.append((labels[index] if 0 <= index < len(labels) else "?", line.split(": ", 1)[1]))
        elif line.strip() and r.returncode != 0 and not line.startswith(" "):
            errors.append(("tsc", line))
    if r.returncode != 0 and not errors:
        errors.append(("tsc", f"exit {r.returncode}: {r.stdout}{r.stderr}"))
    return errors


install()
# The check can fail: a misspelt field deep in a pod template, and a wrong enum value.
planted = [POD_TEMPLATE + ({"spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicyy": "Always"}]}},
                           "planted misspelling"),
           TYPES[("apps/v1", "StatefulSet")] + ({"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                 "spec": {"selector": {}, "podManagementPolicy": "AllAtOnce",
                                                          "template": {}}}, "planted enum"),
           JOB_TEMPLATE + ({"spec": {"template": {}, "podFailurePolicy": {"rules": [
               {"action": "FailJobSet", "onExitCodes": {"operator": "In", "values": [2]}}]}}},
                           "planted Job enum"),
           TYPES[("serving.knative.dev/v1", "Service")] + ({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                                            "spec": {"template": {"spec": {
                                                                "containerConcurency": 8, "containers": []}}}},
                                                           "planted Knative misspelling")]
caught = check(planted, os.path.join(WORK, "planted"))
if not all(any(word in m for _, m in caught) for word in ("imagePullPolicyy", "AllAtOnce", "containerConcurency", "FailJobSet")):
    fail(f"the planted mistakes were not reported: {caught}")

items = [t for where, o in documents() for t in typed(where, o)]
errors = check(items, os.path.join(WORK, "manifests"))
if errors:
    fail("objects that are not valid Kubernetes API objects:\n" + "\n".join(f"  {l}: {m}" for l, m in errors))
print(f"{len(items)} objects of {len(OVERLAYS)} overlays (StatefulSets, Indexed Jobs, the JobSet's Job templates), the MPIJob and k8s/serving (Deployment, Service, "
      f"autoscalers, budget, the Cloud Run Service, the KServe InferenceService's metadata and predictor) match the "
      f"Kubernetes API types (kubernetes-models and its Knative package, strict: no unknown fields); "
      f"the planted mistakes were reported")
print("PASS")
