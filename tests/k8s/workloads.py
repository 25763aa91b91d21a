"""What the Kubernetes tests share about rendered manifests: rendering a kustomization, finding
the pod templates of any workload kind (StatefulSet, Job, JobSet, MPIJob, Deployment, ...),
the pods a deployment of Shoal makes (their names, ranks and host names, as the controllers
name them), and a container's environment as the kubelet gives it (env, envFrom, the downward
API, $(VAR) references).

    import workloads
    objects = workloads.render("k8s/jobs/overlays/cpu")
    for pod in workloads.shoal_pods(objects): print(pod.name, pod.role, pod.index, pod.fqdn)
"""
import re
import shutil
import subprocess

ROLES = ("coordinator", "ps", "worker")
# The downward API's fields the manifests use, and what each pod gets for them.
POD_INDEX_LABEL = "metadata.labels['apps.kubernetes.io/pod-index']"
JOB_INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
JOBSET_COORDINATOR_ANNOTATION = "metadata.annotations['jobset.sigs.k8s.io/coordinator']"


def render(path, kubectl=None):
    """The objects `kubectl kustomize PATH` renders (RuntimeError with kubectl's words if it fails)."""
    import yaml
    kubectl = kubectl or shutil.which("kubectl")
    out = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(objects, kind):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_templates(obj):
    """(where, template metadata, pod spec) for every pod template of the object, of any kind
    that has them; nothing for other kinds."""
    kind, name = obj.get("kind"), obj.get("metadata", {}).get("name")
    spec = obj.get("spec") or {}
    label = f"{kind} {name}"
    if kind == "Pod":
        yield label, obj.get("metadata", {}), spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"):
        yield label, spec["template"].get("metadata", {}), spec["template"]["spec"]
    elif kind == "CronJob":
        template = spec["jobTemplate"]["spec"]["template"]
        yield label, template.get("metadata", {}), template["spec"]
    elif kind == "JobSet":
        for job in spec["replicatedJobs"]:
            template = job["template"]["spec"]["template"]
            yield f"{label} {job['name']}", template.get("metadata", {}), template["spec"]
    elif kind == "MPIJob":
        for role, replica in spec["mpiReplicaSpecs"].items():
            yield f"{label} {role}", replica["template"].get("metadata", {}), replica["template"]["spec"]
    elif kind == "Service" and obj.get("apiVersion", "").startswith("serving.knative.dev/"):
        template = spec["template"]
        yield label, template.get("metadata", {}), template["spec"]
    elif kind == "InferenceService":
        for component, pod in spec.items():  # predictor, transformer, explainer: PodSpec inlined
            yield f"{label} {component}", obj.get("metadata", {}), pod


class ShoalPod:
    """One pod of a Shoal deployment as its controller would make it."""

    def __init__(self, owner, role, index, name, subdomain, template, annotations):
        self.owner, self.role, self.index = owner, role, index
        self.name, self.subdomain = name, subdomain
        self.template, self.spec = template, template["spec"]
        self.container = self.spec["containers"][0]
        self.annotations = annotations

    @property
    def fqdn(self):
        return f"{self.name}.{self.subdomain}"

    @property
    def labels(self):
        return self.template.get("metadata", {}).get("labels", {})


def role_of(template):
    role = template.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")
    if role not in ROLES:
        raise AssertionError(f"a pod template without app.kubernetes.io/component in {ROLES}: {role}")
    return role


def shoal_pods(objects):
    """Every pod of the Shoal job the objects deploy: StatefulSets (pod <set>-<ordinal>, host
    name under the set's serviceName), Indexed Jobs (pod <job>-<index> under the template's
    subdomain) or a JobSet (pod <jobset>-<job>-<n>-<index> under the JobSet's subdomain, every
    pod annotated with the coordinator's name). In role order: coordinator, ps, worker."""
    pods = []
    for o in objects:
        kind, name, spec = o["kind"], o["metadata"]["name"], o.get("spec", {})
        if kind == "StatefulSet":
            for i in range(int(spec["replicas"])):
                pods.append(ShoalPod(o, role_of(spec["template"]), i, f"{name}-{i}", spec["serviceName"],
                                     spec["template"], {}))
        elif kind == "Job":
            for i in range(int(spec["completions"])):
                pods.append(ShoalPod(o, role_of(spec["template"]), i, f"{name}-{i}",
                                     spec["template"]["spec"].get("subdomain"), spec["template"],
                                     {"batch.kubernetes.io/job-completion-index": str(i)}))
        elif kind == "JobSet":
            subdomain = spec.get("network", {}).get("subdomain", name)
            coordinator = spec.get("coordinator")
            members = []
            for job in spec["replicatedJobs"]:
                for j in range(int(job.get("replicas", 1))):
                    template = job["template"]["spec"]["template"]
                    for i in range(int(job["template"]["spec"]["completions"])):
                        members.append((job["name"], j, i, ShoalPod(
                            o, role_of(template), i, f"{name}-{job['name']}-{j}-{i}", subdomain, template,
                            {"batch.kubernetes.io/job-completion-index": str(i)})))
            if coordinator:
                chosen = [p for r, j, i, p in members if (r, j, i) == (coordinator["replicatedJob"],
                                                                      coordinator.get("jobIndex", 0),
                                                                      coordinator.get("podIndex", 0))]
                for *_, p in members:
                    p.annotations["jobset.sigs.k8s.io/coordinator"] = f"{chosen[0].name}.{subdomain}"
            pods += [p for *_, p in members]
    return sorted(pods, key=lambda p: (ROLES.index(p.role), p.index))


def container_env(container, objects, pod):
    """{name: value} of the container in `pod` as the kubelet sets it: envFrom ConfigMaps of the
    rendered objects first, then env in order, $(NAME) expanded from what is already defined
    (Kubernetes' rule: an unknown reference stays as written); the downward API's fields the
    manifests use (the StatefulSet's pod-index label, the Job's completion index, the JobSet's
    coordinator), from `pod` (a ShoalPod)."""
    maps = by_kind(objects, "ConfigMap")
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" not in source:
            raise AssertionError(f"envFrom {source}: a source the tests do not know")
        data = maps[source["configMapRef"]["name"]].get("data", {})
        env.update({source.get("prefix", "") + k: str(v) for k, v in data.items()})
    fields = {POD_INDEX_LABEL: str(pod.index) if pod.owner["kind"] == "StatefulSet" else None}
    for key, value in pod.annotations.items():
        fields[f"metadata.annotations['{key}']"] = value
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(e["value"]))
            continue
        path = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if fields.get(path) is None:
            raise AssertionError(f"{pod.name}: env {e['name']} comes from {e.get('valueFrom')}, which this "
                                 f"kind of pod ({pod.owner['kind']}) does not get")
        env[e["name"]] = fields[path]
    return env


def volume_of(pod_spec, container, mount_path):
    """The volume mounted at mount_path in the container, or None."""
    for m in container.get("volumeMounts", []):
        if m["mountPath"] == mount_path:
            return {v["name"]: v for v in pod_spec.get("volumes", [])}[m["name"]], m
    return None, None
