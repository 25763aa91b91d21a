#!/usr/bin/env python3
"""The Job deployments of k8s/ simulated on this host (tests/k8s/podsim.py: a network namespace
per pod, with its host name, its peers' names and its container's command line and
environment from the rendered manifests), under an emulation of the Job controller and the
JobSet controller that applies the rendered policies to the pods' real exit codes:

  - Job: completionMode Indexed, a pod per index, started again on failure as
    podFailurePolicy (its first matching rule: FailJob, Ignore, Count) and backoffLimitPerIndex
    / maxFailedIndexes decide (at once, or after a pod-failure backoff doubling per counted
    failure of the index, where a run asks for it: the real controller's starts at 10 s); complete when every
    index has exited 0; when it fails, its running pods are stopped (SIGTERM, then SIGKILL after
    terminationGracePeriodSeconds).
  - JobSet: its replicated Jobs as above; failurePolicy's first rule matching a failed Job's
    reason (FailJobSet) fails the set and stops every pod; successPolicy (its target Jobs
    complete) completes it and stops what still runs.

Three runs, each a few seconds to a few tens of seconds:

  1. k8s/jobset/overlays/cpu with a permanent error in one index (SHOAL_TRAIN_BATCH_SIZE=0 for
     ps index 1, as a wrong patch would set it): that pod exits 2, its termination message is
     Shoal's error line, the ps Job fails by its podFailurePolicy, the JobSet fails at once by
     its rule, every pod is stopped and none is started again.
  2. k8s/jobs/overlays/cpu, the job made small: kill -9 of worker index 1 mid-run (exit 137, a
     retryable failure) starts only that index again; it rejoins, every sample of every epoch
     is trained, every process exits 0 at the job's end and each Job completes, every pod
     released.
  3. k8s/jobs/overlays/cpu, as small: kill -9 of the coordinator's process mid-run, once the
     job's live state (checkpoint.dir/coordinator-state, on the shared checkpoint claim) is
     past a checkpoint. Exit 137 is counted against backoffLimitPerIndex: only the
     coordinator's index is started again after a pod-failure backoff (4 s here, 10 s in the real
     controller; either is longer than cluster.dead_after_seconds, so the servers and workers
     work on through cluster.coordinator_grace_seconds). The new coordinator takes the job over, every server
     and worker registers again with it, none is restarted, every sample of every epoch is
     trained once and each Job completes.

  jobs_sim_test.py SHOAL_BINARY SOURCE_DIR

Exit 77 (skipped, with the reason) without root, `ip`, `unshare`, kubectl, Python's yaml, or
where network namespaces cannot be made (a chroot without /sys).
"""
import configparser
import os
import re
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import podsim  # noqa: E402
from podsim import fail  # noqa: E402

WHAT = "Job simulation"
SHOAL, SOURCE = sys.argv[1], sys.argv[2]
TAG = str(os.getpid())
# The job, made small, as an overlay's patch would (2 epochs of 8000 samples).
SMALL = {"SHOAL_MODEL": "mlp", "SHOAL_TRAIN_EPOCHS": "2", "SHOAL_DATA_TRAIN_LIMIT": "8000",
         "SHOAL_CHECKPOINT_EVERY_SECONDS": "0", "SHOAL_CHECKPOINT_EVERY_STEPS": "50",
         "SHOAL_CLUSTER_STARTUP_TIMEOUT_SECONDS": "60"}


def matches(rule, pod, code):
    """Does a podFailurePolicy rule match this failed pod (its container's exit code)?"""
    if "onExitCodes" in rule:
        req = rule["onExitCodes"]
        if req.get("containerName") not in (None, pod.container["name"]):
            return False
        return (code in req["values"]) == (req["operator"] == "In")
    conditions = {c["type"] for c in rule.get("onPodConditions", [])}
    return bool(conditions & pod.conditions)


class Job:
    """One Indexed Job: its pods by index, and the Job controller's decisions."""

    def __init__(self, deployment, name, spec, pods):
        self.d, self.name, self.spec = deployment, name, spec
        self.pods = {p.index: p for p in pods}
        self.failures = {i: 0 for i in self.pods}  # counted failures per index
        self.succeeded, self.failed_indexes = set(), set()
        self.state, self.reason, self.handled = None, None, set()
        self.grace = spec["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        # The controller's pod-failure backoff before a counted failure's replacement (the real
        # one: 10 s, doubling per failure of the index, at most 6 min); 0: at once (the runs that
        # do not depend on it, shorter).
        self.backoff = 0.0
        self.replace_at = {}  # index -> when its replacement pod is created

    def start(self):
        for pod in self.pods.values():
            pod.conditions = set()
            self.d.start(pod)

    def replace(self, index, delay=0.0):
        """A new pod for the index (in the simulation: the process started again in its
        namespace, same name and address), now or once `delay` has passed."""
        if delay > 0:
            self.replace_at[index] = time.monotonic() + delay
            return
        pod = self.pods[index]
        pod.conditions = set()
        self.d.start(pod)

    def step(self):
        """React to pods that have exited since the last step."""
        for index, at in list(self.replace_at.items()):
            if self.state:
                del self.replace_at[index]
            elif time.monotonic() >= at:
                del self.replace_at[index]
                self.replace(index)
        for index, pod in self.pods.items():
            if pod.running() or (index, pod.starts) in self.handled:
                continue
            self.handled.add((index, pod.starts))
            code = pod.exit_code()
            pod.exits.append(code)
            if self.state:  # stopped by its Job's (or its JobSet's) end
                continue
            if code == 0:
                self.succeeded.add(index)
                if len(self.succeeded) == len(self.pods):
                    self.state, self.reason = "Complete", "every index succeeded"
                continue
            action = next((r["action"] for r in self.spec.get("podFailurePolicy", {}).get("rules", [])
                           if matches(r, pod, code)), "Count")
            if action == "FailJob":
                self.fail("PodFailurePolicy", f"{pod.name} exited {code}: its container's exit code matches "
                                              f"a FailJob rule")
            elif action == "Ignore":
                self.replace(index)
            else:  # Count (and FailIndex, not used by the manifests, would be one past the limit)
                self.failures[index] += 1
                if self.failures[index] > self.spec.get("backoffLimitPerIndex", 6):
                    self.failed_indexes.add(index)
                    if len(self.failed_indexes) > self.spec.get("maxFailedIndexes", len(self.pods)):
                        self.fail("MaxFailedIndexesExceeded", f"index {index} failed {self.failures[index]} times")
                else:
                    self.replace(index, min(self.backoff * 2 ** (self.failures[index] - 1), 360) if self.backoff else 0)

    def fail(self, reason, message):
        self.state, self.reason = "Failed", f"{reason}: {message}"
        self.failure_reason = reason
        self.stop()

    def stop(self):
        for pod in self.pods.values():
            self.d.stop(pod, self.grace)


class JobSet:
    """A JobSet's policies over its Jobs (plain Jobs: none, each Job ends on its own)."""

    def __init__(self, spec, jobs):
        self.spec, self.jobs, self.state, self.reason = spec, jobs, None, None

    def step(self):
        if self.state or self.spec is None:
            return
        for job in self.jobs.values():
            if job.state == "Failed":
                rule = next((r for r in self.spec.get("failurePolicy", {}).get("rules", [])
                             if not r.get("onJobFailureReasons") or job.failure_reason in r["onJobFailureReasons"]),
                            None)
                if rule is None or rule["action"] != "FailJobSet":
                    fail(f"Job {job.name} failed ({job.reason}): the JobSet would "
                         f"{rule['action'] if rule else 'RestartJobSet'}, which this simulation does not do")
                self.state, self.reason = "Failed", f"rule {rule['name']}: Job {job.name} failed ({job.reason})"
                self.delete_jobs()
                return
        success = self.spec.get("successPolicy", {"operator": "All", "targetReplicatedJobs": []})
        targets = [j for name, j in self.jobs.items() if name in (success.get("targetReplicatedJobs") or self.jobs)]
        done = [j.state == "Complete" for j in targets]
        if all(done) if success["operator"] == "All" else any(done):
            self.state, self.reason = "Completed", "successPolicy: " + ", ".join(j.name for j in targets)
            self.delete_jobs()

    def delete_jobs(self):
        """The JobSet's end: its Jobs are deleted (no more restarts), their pods stopped."""
        for job in self.jobs.values():
            job.state = job.state or "Deleted"
            job.stop()


def controllers(d):
    """The Jobs of the deployment (plain, or a JobSet's), each with its pods; and the set."""
    import workloads
    jobs, jobset = {}, None
    for o in d.objects:
        if o["kind"] == "Job":
            jobs[o["metadata"]["name"]] = Job(d, o["metadata"]["name"], o["spec"],
                                              [p for p in d.pods if p.k8s.owner is o])
        elif o["kind"] == "JobSet":
            jobset = o["spec"]
            for rj in o["spec"]["replicatedJobs"]:
                mine = [p for p in d.pods if p.k8s.owner is o and p.name.startswith(f"{o['metadata']['name']}-{rj['name']}-")]
                jobs[rj["name"]] = Job(d, f"{o['metadata']['name']}-{rj['name']}-0", rj["template"]["spec"], mine)
    assert sum(len(j.pods) for j in jobs.values()) == len(d.pods) and workloads.ROLES
    return jobs, JobSet(jobset, jobs)


def run(d, jobs, jobset, until, timeout, during=None):
    """Drive the controllers until until() or the timeout; during() is called every step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in jobs.values():
            job.step()
        jobset.step()
        d.reap()
        if during:
            during()
        if until():
            return
        time.sleep(0.05)
    fail(f"timed out after {timeout} s:\n" + "\n".join(f"Job {j.name}: {j.state} {j.reason}" for j in jobs.values())
         + "\n" + d.outputs())


def deployment(overlay, work, subnet, smaller=None):
    import workloads
    objects = workloads.render(os.path.join(SOURCE, "k8s", overlay))
    return podsim.Deployment(SHOAL, objects, work, {**SMALL, **(smaller or {})}, TAG, subnet)


def permanent_error_fails_the_jobset_once(work):
    d = deployment("jobset/overlays/cpu", work, "10.79.0")
    print(f"keys: {d.keys_how}")
    jobs, jobset = controllers(d)
    bad = d.pod("shoal-ps-0-1")
    bad.extra_env = {"SHOAL_TRAIN_BATCH_SIZE": "0"}
    began = time.monotonic()
    with podsim.Cluster(d.pods, TAG, "10.79.0", WHAT):
        for job in jobs.values():
            job.start()
        run(d, jobs, jobset, lambda: jobset.state and not any(p.running() for p in d.pods), timeout=60)
        took = time.monotonic() - began
    if jobset.state != "Failed" or "PermanentError" not in jobset.reason:
        fail(f"the JobSet did not fail by its PermanentError rule: {jobset.state} {jobset.reason}")
    if jobs["ps"].failure_reason != "PodFailurePolicy" or bad.exits != [2]:
        fail(f"the ps Job did not fail by its podFailurePolicy on exit 2: {jobs['ps'].reason}, exits {bad.exits}")
    message = bad.termination_message()
    last = message.strip().splitlines()[-1] if message.strip() else ""
    if not last.startswith("shoal: error: train.batch_size = 0 is out of range"):
        fail(f"the termination message does not end with Shoal's error line:\n{message}")
    restarted = [p.name for p in d.pods if p.starts != 1]
    if restarted:
        fail(f"pods started again after a permanent error: {restarted}")
    print(f"1. JobSet, SHOAL_TRAIN_BATCH_SIZE=0 in ps index 1: it exited 2, the ps Job failed "
          f"(PodFailurePolicy), the JobSet failed ({jobset.reason.split(':')[0]}), all {len(d.pods)} pods stopped "
          f"(exits {', '.join(f'{p.name} {p.exits[-1]}' for p in d.pods)}), none started again, in {took:.1f} s")
    print(f"   termination message of {bad.name}: {last}")


def retryable_failure_restarts_only_its_index(work):
    d = deployment("jobs/overlays/cpu", work, "10.80.0")
    print(f"keys: {d.keys_how}")
    jobs, jobset = controllers(d)
    worker1, coordinator = d.pod("shoal-worker-1"), d.pod("shoal-coordinator-0")
    killed = []
    began = time.monotonic()

    def kill_worker1_once_training():
        if not killed and worker1.running() and "training epoch" in worker1.output(1):
            # kill -9 of the container's process (`ip netns exec`, unshare and sh exec it)
            worker1.proc.send_signal(signal.SIGKILL)
            killed.append(time.monotonic())

    with podsim.Cluster(d.pods, TAG, "10.80.0", WHAT):
        for job in jobs.values():
            job.start()
        # Until every Job has ended and every pod stopped (or one Job failed: the test then fails).
        run(d, jobs, jobset, lambda: (all(j.state for j in jobs.values()) or any(j.state == "Failed" for j in jobs.values()))
            and not any(p.running() for p in d.pods), timeout=240, during=kill_worker1_once_training)
        took = time.monotonic() - began
    states = {j.name: j.state for j in jobs.values()}
    if set(states.values()) != {"Complete"}:
        fail(f"not every Job completed: {states}\n" + d.outputs())
    if not killed or worker1.exits != [137, 0] or worker1.starts != 2:
        fail(f"worker index 1 was not killed once (exit 137) and started again: exits {worker1.exits}")
    others = {p.name: p.exits for p in d.pods if p is not worker1}
    if any(exits != [0] for exits in others.values()):
        fail(f"another pod was restarted or did not exit 0: {others}")
    if "training epoch" not in worker1.output(2):
        fail("the new worker-1 did not rejoin and train:\n" + worker1.output(2)[-3000:])
    out = coordinator.output()
    epochs = re.findall(r"epoch (\d+)/(\d+) .*?\| +(\d+)/(\d+) samples done", out)
    if len(epochs) != int(SMALL["SHOAL_TRAIN_EPOCHS"]) or any(done != total for _, _, done, total in epochs):
        fail("not every sample of every epoch was trained:\n" + out[-3000:])
    print(f"2. Indexed Jobs, kill -9 of worker index 1 {killed[0] - began:.1f} s in: it exited 137 (counted: "
          f"{jobs['shoal-worker'].failures[1]} of backoffLimitPerIndex "
          f"{jobs['shoal-worker'].spec['backoffLimitPerIndex']}), only that index started again and rejoined; "
          f"{len(epochs)} epochs, every sample trained; every process exited 0 and every Job completed, "
          f"in {took:.1f} s")


def job_settings(d):
    """The rendered job.ini (the ConfigMap shoal-job) as a ConfigParser; its first keys (before
    any section) under [job]."""
    import workloads
    text = next(m for m in workloads.by_kind(d.objects, "ConfigMap").values()
                if "job.ini" in m.get("data", {}))["data"]["job.ini"]
    ini = configparser.ConfigParser()
    ini.read_string("[job]\n" + text)
    return ini


def coordinator_killed_is_replaced_and_takes_the_job_over(work):
    # Half the data (2 epochs of 4000 samples, 4 shards each): the backoff is 4 s of the run.
    d = deployment("jobs/overlays/cpu", work, "10.81.0", {"SHOAL_DATA_TRAIN_LIMIT": "4000"})
    jobs, jobset = controllers(d)
    coordinator = d.pod("shoal-coordinator-0")
    members = [p for p in d.pods if p is not coordinator]
    # Failover needs an async job with checkpoint.dir, on a volume every pod mounts.
    ini = job_settings(d)
    checkpoints = ini.get("checkpoint", "dir", fallback="")
    if ini.get("job", "strategy", fallback="") != "async" or not checkpoints:
        fail(f"the rendered job.ini is not an async job with checkpoint.dir (strategy "
             f"{ini.get('job', 'strategy', fallback=None)!r}, checkpoint.dir {checkpoints!r}): no coordinator failover")
    claims = {p.name: d.volumes[p.name].get(checkpoints) for p in d.pods}
    if None in claims.values() or len(set(claims.values())) != 1:
        fail(f"not every pod mounts one shared volume at checkpoint.dir = {checkpoints}: {claims}")
    claim = claims[coordinator.name]
    env = d.command(coordinator)[1]
    if "SHOAL_CHECKPOINT_DIR" in env or f"dir = {claim}" not in open(
            os.path.join(work, "configmap-" + coordinator.name, "job.ini")).read():
        fail(f"the coordinator's checkpoint.dir is not the claim {claim}")
    state, latest = os.path.join(claim, "coordinator-state"), os.path.join(claim, "LATEST")
    # The Job controller's first pod-failure backoff is 10 s; 4 s is past cluster.dead_after_seconds
    # (3 s) too, so the members still work on through the grace, for less of the suite's time.
    jobs["shoal-coordinator"].backoff = 4.0
    killed, back = [], {}  # back: member -> when it had registered again
    began = time.monotonic()

    def kill_coordinator_once_training():
        for p in members:
            if killed and p.name not in back and "registered again with the restarted coordinator" in p.output():
                back[p.name] = time.monotonic()
        # Once a checkpoint is there and the live position is past it (a shard done since): the
        # takeover must go on from the live position, not from the checkpoint.
        if killed or not coordinator.running():
            return
        try:
            with open(latest) as f:
                cut = re.fullmatch(r"ckpt-(\d+)\n?", f.read())
            with open(state) as f:
                step = re.search(r"^step (\d+)$", f.read(), re.M)
        except OSError:
            return
        if cut and step and int(step.group(1)) > int(cut.group(1)):
            coordinator.proc.send_signal(signal.SIGKILL)  # kill -9 of the container's process
            killed.append((time.monotonic(), int(step.group(1)), int(cut.group(1))))

    with podsim.Cluster(d.pods, TAG, "10.81.0", WHAT):
        for job in jobs.values():
            job.start()
        run(d, jobs, jobset, lambda: (all(j.state for j in jobs.values()) or any(j.state == "Failed" for j in jobs.values()))
            and not any(p.running() for p in d.pods), timeout=240, during=kill_coordinator_once_training)
        took = time.monotonic() - began
    states = {j.name: j.state for j in jobs.values()}
    if not killed:
        fail(f"the coordinator was not killed: the job ended ({states}) before {state} had a step past the "
             f"checkpoint {latest} names (files in the claim: {sorted(os.listdir(claim))})\n"
             + coordinator.output()[-3000:])
    if set(states.values()) != {"Complete"}:
        fail(f"not every Job completed: {states}\n" + d.outputs())
    if coordinator.exits != [137, 0] or coordinator.starts != 2:
        fail(f"the coordinator was not killed once (exit 137) and started again: exits {coordinator.exits}")
    others = {p.name: p.exits for p in members}
    if any(exits != [0] for exits in others.values()):
        fail(f"a server or worker was restarted or did not exit 0: {others}\n" + d.outputs())
    new = coordinator.output(2)
    took_over = next((line for line in new.splitlines() if "took the job over" in line), None)
    servers = sum(p.role == "ps" for p in d.pods)
    if (took_over is None or f"{servers} server(s) kept their state" not in took_over
            or "from the live position" not in took_over):
        fail("the new coordinator did not take the job over from the live position, the servers' state kept:\n"
             + new[-3000:])
    for p in members:
        out = p.output()
        if out.count("registered again with the restarted coordinator") != 1:
            fail(f"{p.name} did not register again with the restarted coordinator once:\n" + out[-3000:])
        if "working on with what this process holds" not in out:
            fail(f"{p.name} did not work on through cluster.coordinator_grace_seconds:\n" + out[-3000:])
    epochs = re.findall(r"epoch (\d+)/(\d+) .*?\| +(\d+)/(\d+) samples done, (\d+) processed", coordinator.output())
    if (sorted(int(e) for e, *_ in epochs) != list(range(1, int(SMALL["SHOAL_TRAIN_EPOCHS"]) + 1))
            or any(not done == total == processed for _, _, done, total, processed in epochs)):
        fail("not every sample of every epoch was trained once:\n" + coordinator.output()[-3000:])
    job = jobs["shoal-coordinator"]
    print(f"3. Indexed Jobs, checkpoint.dir {checkpoints} on the shared claim in every pod; kill -9 of the "
          f"coordinator {killed[0][0] - began:.1f} s in (live position at step {killed[0][1]}, checkpoint at "
          f"{killed[0][2]}): it exited 137 "
          f"(counted: {job.failures[0]} of backoffLimitPerIndex {job.spec['backoffLimitPerIndex']}), only its index "
          f"started again after a {job.backoff:.0f} s backoff; the servers and workers worked on and registered again "
          f"({min(back.values()) - killed[0][0]:.1f} to {max(back.values()) - killed[0][0]:.1f} s after the kill), "
          f"none restarted; {len(epochs)} epochs, every sample trained once; every process exited 0 and every Job "
          f"completed, in {took:.1f} s")
    print(f"   {took_over.strip()}")


def main():
    podsim.require(WHAT)
    for run_one in (permanent_error_fails_the_jobset_once, retryable_failure_restarts_only_its_index,
                    coordinator_killed_is_replaced_and_takes_the_job_over):
        work = tempfile.mkdtemp(prefix="shoal-jobsim-")
        try:
            run_one(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("PASS")


main()
