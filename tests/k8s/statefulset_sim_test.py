#!/usr/bin/env python3
"""The Kubernetes job of k8s/overlays/cpu (StatefulSets), simulated on this host with
tests/k8s/podsim.py: every pod of every StatefulSet a network namespace with its host name and
the headless Services' names, running its container's command line and environment from the
rendered manifests; the job is made small with SHOAL_* variables, as an overlay's patch would.
The pods start at once (podManagementPolicy: Parallel); the test waits for every /readyz as the
readiness probes do, deletes worker-1 mid-run (SIGTERM, as the kubelet does), starts it again as
the StatefulSet would, and checks that it rejoins, that the job trains every sample of every
epoch to the end, and that every pod then stays (cluster.on_job_end = wait) until it is deleted.

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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import podsim  # noqa: E402
from podsim import fail  # noqa: E402

WHAT = "StatefulSet simulation"
SHOAL, SOURCE = sys.argv[1], sys.argv[2]
# The job, made small (an overlay would patch the ConfigMap or the env the same way).
SMALL = {"SHOAL_MODEL": "mlp", "SHOAL_TRAIN_EPOCHS": "4", "SHOAL_DATA_TRAIN_LIMIT": "20000",
         "SHOAL_CHECKPOINT_EVERY_SECONDS": "0", "SHOAL_CHECKPOINT_EVERY_STEPS": "100"}


def main():
    podsim.require(WHAT)
    import workloads
    objects = workloads.render(os.path.join(SOURCE, "k8s", "overlays", "cpu"))
    work = tempfile.mkdtemp(prefix="shoal-sim-")
    try:
        run_job(podsim.Deployment(SHOAL, objects, work, SMALL, str(os.getpid()), "10.78.0"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_job(d):
    pods = d.pods
    print(f"keys: {d.keys_how}")
    with podsim.Cluster(pods, str(os.getpid()), "10.78.0", WHAT) as cluster:
        for pod in pods:  # Parallel: every pod at once
            d.start(pod)
        d.wait_for("every pod's readiness probe (/readyz)", lambda: all(cluster.ready(p) for p in pods))
        print("every pod ready: " + ", ".join(p.name for p in pods))
        ps0, coordinator = d.pod("shoal-ps-0"), d.pod("shoal-coordinator-0")
        if ps0.fqdn not in coordinator.output():
            fail(f"the coordinator did not register ps-0 at its FQDN ({ps0.fqdn}):\n" + ps0.output()[-2000:])

        worker1 = d.pod("shoal-worker-1")
        d.wait_for("worker-1 to train", lambda: "training epoch" in worker1.output())
        worker1.proc.send_signal(signal.SIGTERM)  # kubectl delete pod: the kubelet's SIGTERM
        try:
            code = worker1.proc.wait(60)  # terminationGracePeriodSeconds
        except subprocess.TimeoutExpired:
            fail("worker-1 did not exit within its grace period:\n" + worker1.output()[-3000:])
        if code != 0:
            fail(f"worker-1 exited {code} on SIGTERM:\n{worker1.output()[-3000:]}")
        print("worker-1 deleted (SIGTERM, exit 0); the StatefulSet starts it again")
        d.start(worker1)
        d.wait_for("the new worker-1 to rejoin and train", lambda: "training epoch" in worker1.output(2))
        print("worker-1 rejoined and trains")

        waiting = "the job is over; waiting for SIGTERM"
        d.wait_for("the job's end", lambda: waiting in coordinator.output(), timeout=300)
        out = coordinator.output()
        epochs = re.findall(r"epoch (\d+)/(\d+) .*?\| +(\d+)/(\d+) samples done", out)
        if len(epochs) != int(SMALL["SHOAL_TRAIN_EPOCHS"]) or any(done != total for _, _, done, total in epochs):
            fail("not every sample of every epoch was trained:\n" + out[-3000:])
        # cluster.on_job_end = wait: the pods stay (a StatefulSet would restart any that exits)
        # until the job is deleted.
        d.wait_for("every pod to wait after the job's end", lambda: all(waiting in p.output() for p in pods))
        for pod in pods:
            if not pod.running():
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
