"""Kubernetes' Pod Security Standards, "restricted" level (which includes "baseline"), checked on
a pod template without a cluster: the rules of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ as the Pod Security
admission controller applies them to a pod.

    import pod_security, workloads
    for where, meta, spec in workloads.pod_templates(obj):
        problems = pod_security.violations(spec, meta)     # [] when the pod would be admitted

Each problem names the field and the rule. Every container kind counts: containers,
initContainers and ephemeralContainers.
"""

# Baseline: the only capabilities a container may add; restricted: NET_BIND_SERVICE alone.
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
# Restricted: the only volume types.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def containers(spec):
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(field) or []:
            yield f"{field}[{c.get('name')}]", c


def violations(spec, metadata=None):
    """["field: rule", ...] for each rule of the restricted standard the pod spec breaks."""
    problems = []
    pod_sc = spec.get("securityContext") or {}
    annotations = (metadata or {}).get("annotations") or {}

    # Baseline.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field}: host namespaces are not allowed")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("securityContext.windowsOptions.hostProcess: HostProcess pods are not allowed")
    for v in spec.get("volumes") or []:
        kind = next((k for k in v if k != "name"), None)
        if kind == "hostPath":
            problems.append(f"volumes[{v['name']}]: hostPath volumes are not allowed")
        elif kind not in RESTRICTED_VOLUMES:
            problems.append(f"volumes[{v['name']}]: volume type {kind} is not allowed (restricted: "
                            f"{', '.join(sorted(RESTRICTED_VOLUMES))})")
    for s in pod_sc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            problems.append(f"securityContext.sysctls: {s.get('name')} is not a safe sysctl")
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            problems.append(f"annotation {key}: AppArmor profile {value} is not allowed")

    def selinux(sc, where):
        opts = sc.get("seLinuxOptions") or {}
        if opts.get("type", "") not in SELINUX_TYPES or opts.get("user") or opts.get("role"):
            problems.append(f"{where}.seLinuxOptions: only the container types, no user or role")

    def apparmor(sc, where):
        profile = (sc.get("appArmorProfile") or {}).get("type")
        if profile not in (None, "RuntimeDefault", "Localhost"):
            problems.append(f"{where}.appArmorProfile: {profile} is not allowed")

    selinux(pod_sc, "securityContext")
    apparmor(pod_sc, "securityContext")

    # Restricted, pod level (a container may instead set each itself).
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_sc.get("runAsUser") == 0:
        problems.append("securityContext.runAsUser: 0 (root) is not allowed")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"securityContext.seccompProfile: {pod_seccomp} is not allowed")

    for where, c in containers(spec):
        sc = c.get("securityContext") or {}
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{where}: HostProcess containers are not allowed")
        if sc.get("privileged"):
            problems.append(f"{where}.securityContext.privileged: privileged containers are not allowed")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{where}.securityContext.procMount: only Default")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                problems.append(f"{where}.ports[{p.get('name')}]: hostPort is not allowed")
        selinux(sc, f"{where}.securityContext")
        apparmor(sc, f"{where}.securityContext")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}.securityContext.allowPrivilegeEscalation: must be false")
        if sc.get("runAsNonRoot") is False or not (pod_non_root or sc.get("runAsNonRoot") is True):
            problems.append(f"{where}: runAsNonRoot must be true (in the pod's or the container's securityContext)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}.securityContext.runAsUser: 0 (root) is not allowed")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp not in (None, "RuntimeDefault", "Localhost") or (seccomp is None and pod_seccomp is None):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost (pod or container)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}.securityContext.capabilities.drop: must include ALL")
        for cap in caps.get("add") or []:
            if cap != "NET_BIND_SERVICE":
                problems.append(f"{where}.securityContext.capabilities.add: {cap} (only NET_BIND_SERVICE)")
    return problems
